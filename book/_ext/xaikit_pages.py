"""Write the book's generated pages (status tables, environment) before Sphinx reads the sources.

The pages come from ``status.yml`` and the run records in ``_run/``
(`xaikit.bookpages.write_generated_pages`); the hand-written pages include them with
MyST ``{include}`` directives.
"""

from pathlib import Path


def _write_generated_pages(app, config) -> None:
    from xaikit.bookpages import write_generated_pages

    write_generated_pages(Path(app.srcdir))


def _link_the_repository(app, config) -> None:
    """The theme's repository button, when pyproject.toml records the project's public repository."""
    from xaikit.bookpages import repository_url

    url = repository_url()
    if url:
        config.html_theme_options = {**(config.html_theme_options or {}), "repository_url": url,
                                     "use_repository_button": True}


def setup(app):
    app.connect("config-inited", _link_the_repository)
    app.connect("config-inited", _write_generated_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
