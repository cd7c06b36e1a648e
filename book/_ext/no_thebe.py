"""Keep sphinx-thebe's scripts out of the pages: this book does not use thebe.

Jupyter Book always loads sphinx-thebe, whose `env-before-read-docs` handler
adds an inline `const THEBE_JS_URL = ...` script each time the event fires. It
fires more than once in a Jupyter Book build, so the browser reported a
SyntaxError (the const declared twice) on every page.
"""


def _disconnect_thebe(app):
    for listener in list(app.events.listeners.get("env-before-read-docs", [])):
        if getattr(listener.handler, "__name__", "") == "init_thebe_core":
            app.disconnect(listener.id)


def setup(app):
    app.connect("builder-inited", _disconnect_thebe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
