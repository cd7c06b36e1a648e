"""Executing the book's notebooks with papermill (``xaikit run``).

Notebooks live in ``notebooks/<chapter>/NN_<name>.ipynb``; they are executed in
book order (the order of ``book/_toc.yml``) into the book's source tree
(``book/<chapter>/NN_<name>.ipynb``), which Jupyter Book then renders without
re-executing. A failure does not stop the run: the failed notebook, with its
error, is kept where it was written, and the run exits non-zero naming it.
"""

from __future__ import annotations

import csv
import fnmatch
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from .profiles import check_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
BOOK = REPO / "book"
KERNEL = "python3"


@dataclass
class NotebookRun:
    notebook: str  # path relative to the notebooks folder, without suffix
    ok: bool
    seconds: float
    peak_memory_mb: float
    output: Path
    error: str = ""


def toc_entries(toc: Path = BOOK / "_toc.yml") -> list[str]:
    """Every ``file:`` of the table of contents, in reading order."""

    def walk(node) -> list[str]:
        if isinstance(node, dict):
            found = [node["file"]] if "file" in node else []
            if "root" in node:
                found.insert(0, node["root"])
            return found + [f for key in ("chapters", "sections", "parts") for child in node.get(key, []) for f in walk(child)]
        return [f for child in node for f in walk(child)] if isinstance(node, list) else []

    return walk(yaml.safe_load(toc.read_text()))


def notebooks_in_book_order(source: Path = NOTEBOOKS, toc: Path = BOOK / "_toc.yml") -> list[str]:
    """Notebook names (``chapter/NN_name``) in the order the book shows them; unlisted ones last."""
    available = sorted(str(p.relative_to(source).with_suffix("")) for p in source.glob("*/*.ipynb"))
    listed = [entry for entry in toc_entries(toc) if entry in available]
    return listed + [name for name in available if name not in listed]


class _PeakMemory:
    """Samples the summed resident memory of this process's children (the kernel) in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for child in self._process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self._interval)

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell so that the book does not show it."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(notebook, path)


def run_notebook(name: str, profile: str, *, source: Path, dest: Path, parameters: dict | None = None,
                 progress: bool = False, timeout_s: int | None = None) -> NotebookRun:
    import papermill

    output = dest / f"{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    error = ""
    with _PeakMemory() as memory:
        try:
            papermill.execute_notebook(
                str(source / f"{name}.ipynb"), str(output), parameters={"profile": profile, **(parameters or {})},
                kernel_name=KERNEL, progress_bar=progress, cwd=str((source / name).parent), execution_timeout=timeout_s,
            )
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            error = f"{type(err).__name__}: {err}".strip()
    if output.exists():
        hide_injected_parameters(output)
    return NotebookRun(name, not error, time.monotonic() - started, memory.peak_bytes / 2**20, output, error)


def run_notebooks(profile: str = "demo", *, only: str | None = None, source: Path = NOTEBOOKS, dest: Path = BOOK,
                  parameters: dict | None = None, timings_csv: Path | None = None, log=print) -> list[NotebookRun]:
    """Execute the notebooks (those matching `only`) in book order; write the timings CSV."""
    check_profile(profile)
    names = [n for n in notebooks_in_book_order(source) if only is None or fnmatch.fnmatch(n, only) or only in n]
    if not names:
        raise SystemExit(f"no notebook under {source} matches {only!r}")
    runs = []
    for index, name in enumerate(names, start=1):
        log(f"[{index}/{len(names)}] {name} ({profile}) ...")
        run = run_notebook(name, profile, source=source, dest=dest, parameters=parameters, progress=sys.stderr.isatty())
        runs.append(run)
        status = "ok" if run.ok else "FAILED"
        log(f"[{index}/{len(names)}] {name}: {status} in {run.seconds:.1f} s, peak kernel memory {run.peak_memory_mb:.0f} MB")
    timings_csv = timings_csv or dest / "_run" / f"timings-{profile}.csv"
    timings_csv.parent.mkdir(parents=True, exist_ok=True)
    with timings_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["notebook", "profile", "ok", "wall_seconds", "peak_memory_mb"])
        for run in runs:
            writer.writerow([run.notebook, profile, run.ok, f"{run.seconds:.1f}", f"{run.peak_memory_mb:.0f}"])
    log(f"timings: {timings_csv}")
    return runs


def report_failures(runs: list[NotebookRun], log=print) -> int:
    """Exit status for `runs`: 0 when all succeeded, else 1 after listing the failures."""
    failed = [run for run in runs if not run.ok]
    for run in failed:
        first_line = run.error.splitlines()[0] if run.error else ""
        log(f"FAILED {run.notebook}: {first_line}\n  error notebook kept at {run.output}")
    return 1 if failed else 0
