"""The ``xaikit`` command: ``xaikit build`` renders the Jupyter Book."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_book(source: Path = REPO / "book", config: Path = REPO / "_config.yml") -> int:
    """Render the book with Jupyter Book v1, warnings as errors, without executing notebooks."""
    command = [
        str(Path(sys.executable).with_name("jupyter-book")), "build", str(source),
        "--config", str(config), "--toc", str(source / "_toc.yml"), "--path-output", str(source),
        "--warningiserror", "--keep-going",
    ]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xaikit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="render the Jupyter Book (no execution; warnings are errors)")
    build.add_argument("--source", type=Path, default=REPO / "book", help="book source folder")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build_book(args.source)
    return 2


if __name__ == "__main__":
    sys.exit(main())
