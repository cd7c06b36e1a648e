"""The ``xaikit`` command: ``xaikit run`` executes the notebooks, ``xaikit build`` renders the book."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .errors import XaikitError
from .paths import absolute
from .profiles import PROFILES
from .runner import book_problems, report_failures, run_notebooks

REPO = Path(__file__).resolve().parents[1]


def finish_html(html: Path) -> None:
    """Make the built HTML self-contained: MathJax (from the jupyter-server-mathjax wheel), a favicon, and a
    copy of every source notebook (under ``_notebooks/``, where the run banners link).

    MathJax goes into the output, not the book's own _static, where Jupyter Book
    would add every .js file to every page. Browsers ask the site root for
    favicon.ico on pages without a favicon link (the redirecting index.html).
    """
    import jupyter_server_mathjax

    from .runner import NOTEBOOKS, SOURCE_COPIES

    # the run banners link each page to its source notebook (the unexecuted one the page was run from)
    for notebook in NOTEBOOKS.glob("*/*.ipynb"):
        copy = html / SOURCE_COPIES / notebook.relative_to(NOTEBOOKS)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, copy)
    target = html / "_static" / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", target, dirs_exist_ok=True)
    shutil.copyfile(html / "_static" / "favicon.png", html / "favicon.ico")


def build_book(source: Path = REPO / "book", config: Path = REPO / "_config.yml") -> int:
    """Render the book with Jupyter Book v1, warnings as errors, without executing notebooks.

    Refuses (status 1, with the list) a book whose run record shows a notebook of the
    table of contents missing, failed, or executed with another profile than the others.
    """
    source = absolute(source)  # Jupyter Book resolves --toc against the book's folder, not against ours
    problems = book_problems(source)
    if problems:
        print(f"xaikit build: not rendering {source}:", *(f"  - {p}" for p in problems), sep="\n", file=sys.stderr)
        return 1
    # The generated pages (status tables, environment) are written by the book's own Sphinx
    # extension (book/_ext/xaikit_pages.py), so a plain `jupyter-book build` gets them too.
    command = [
        str(Path(sys.executable).with_name("jupyter-book")), "build", str(source),
        "--config", str(config), "--toc", str(source / "_toc.yml"), "--path-output", str(source),
        "--warningiserror", "--keep-going",
    ]
    print("$", " ".join(command), flush=True)
    status = subprocess.call(command)
    if status == 0:
        finish_html(source / "_build" / "html")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xaikit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebooks with papermill (demo: into book/; smoke, paper: into _books/<profile>/)")
    run.add_argument("--profile", default="demo", choices=PROFILES, help="smoke | demo | paper (default demo)")
    run.add_argument("--only", default=None, metavar="PATTERN", help="run only notebooks matching this glob or substring")
    run.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                     help="execute into DIR (default: book/ for demo, _books/<profile>/ otherwise; book/ takes only demo)")
    run.add_argument("--force", action="store_true", help="re-run notebooks that are unchanged since their last successful run")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a notebook parameter (VALUE read as YAML: 16, 0.5, true, text); repeatable")
    build = commands.add_parser("build", help="render the Jupyter Book (no execution; warnings are errors)")
    build.add_argument("--source", type=Path, default=REPO / "book",
                       help="book source folder (default book/; _books/<profile> for a smoke or paper run)")
    check = commands.add_parser("check-book", help="open every page of the built book in headless Chromium")
    check.add_argument("--html", type=Path, default=REPO / "book" / "_build" / "html", help="built HTML folder")
    from . import bench as bench_module

    bench = commands.add_parser(
        "bench", help="images per second of every method against one forward+backward of the same model and batch"
    )
    bench_module.add_arguments(bench)
    from . import benchmark as benchmark_module

    benchmark = commands.add_parser(
        "benchmark", help="every method under every protocol, on a resumable results ledger (local or Ray)"
    )
    benchmark_module.add_arguments(benchmark)
    args = parser.parse_args(argv)
    for key, value in vars(args).items():  # relative to the caller's folder, whichever folder a tool resolves against
        if isinstance(value, Path):
            setattr(args, key, absolute(value))
    if args.command == "bench":
        return bench_module.run_from_args(args)
    if args.command == "benchmark":
        return benchmark_module.run_from_args(args)
    if args.command == "check-book":
        from .bookcheck import check_book

        report = check_book(args.html)
        shown = report.problems[:40] + ([f"... and {len(report.problems) - 40} more"] if len(report.problems) > 40 else [])
        print("\n".join(shown + [report.summary()]))
        return 1 if report.problems else 0
    if args.command == "run":
        parameters = {name: yaml.safe_load(value) for name, value in args.parameter}
        try:
            runs = run_notebooks(args.profile, only=args.only, output_dir=args.output_dir, parameters=parameters, force=args.force)
        except XaikitError as err:
            print(f"xaikit run: {err}", file=sys.stderr)
            return 2
        return report_failures(runs)
    return build_book(args.source)


if __name__ == "__main__":
    sys.exit(main())
