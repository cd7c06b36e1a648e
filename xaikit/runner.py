"""Executing the book's notebooks with papermill (``xaikit run``) and checking a book before it is rendered.

Notebooks live in ``notebooks/<chapter>/NN_<name>.ipynb``; they are executed in
book order (the order of ``book/_toc.yml``) into an output folder: the book's
source tree ``book/`` for the ``demo`` profile, ``_books/<profile>/`` for the
others (the book's sources are copied there, so ``xaikit build --source
_books/<profile>`` renders it). The published book never receives a smoke or
paper run.

Each notebook is executed into ``<output>/_run/partial/`` and moved into place
(``<output>/<chapter>/NN_<name>.ipynb``) only once it has run to the end and its
run banner is in, so an interrupted run never leaves a half-executed page. A
notebook that fails goes to ``<output>/_run/failed/`` for reading; its last good
page, if any, moves to ``<output>/_run/previous/`` (a failure never deletes a
page: `report_failures` says how to put it back). The run record
``<output>/_run/runs-<profile>.json`` (one entry per notebook, rewritten
atomically after each one) says how every page was made;
``xaikit build`` refuses a book whose record shows a notebook missing, failed or
executed with another profile than the others (`book_problems`).

A notebook whose source, parameters, profile and the xaikit package are
unchanged since its last successful run in that output folder is skipped
(``force=True`` re-runs it).
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import nbformat
import yaml

from .errors import InvalidParameterError
from .paths import check_output_folder
from .profiles import PROFILES, check_profile

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(__file__).resolve().parent
NOTEBOOKS = REPO / "notebooks"
BOOK = REPO / "book"
BOOKS = REPO / "_books"  # output folders of the smoke and paper profiles (git-ignored)
KERNEL = "python3"
PUBLISHED_PROFILE = "demo"  # the only profile executed into the published book
RUN_INFO_MIME = "application/vnd.xaikit.run-info+json"
BANNER_TAG = "xaikit-banner"
#: the tag that keeps a code cell's input open in the book (`_finish_page` collapses every other one)
SHOW_INPUT_TAG = "show-input"
#: tags that already say how a code cell's input shows (output tags such as hide-output do not)
INPUT_VISIBILITY_TAGS = frozenset({SHOW_INPUT_TAG, "hide-input", "remove-input", "hide-cell", "remove-cell"})
PREVIOUS = "previous"  # folder under _run/ keeping the last good page of a notebook whose latest run failed
# Not copied from the book's sources into another output folder: outputs of runs and builds.
NOT_BOOK_SOURCES = ("_build", "_run", "_generated", "*.ipynb", "__pycache__", ".ipynb_checkpoints")


@dataclass
class NotebookRun:
    notebook: str  # ``chapter/NN_name``
    ok: bool
    seconds: float
    peak_memory_mb: float
    output: Path  # the executed notebook: its page, or its copy under _run/failed
    error_class: str = ""
    error_message: str = ""
    skipped: bool = False  # unchanged since its last successful run
    previous: Path | None = None  # a failed run's last good page, kept under _run/previous
    restore: str = ""  # the command that puts `previous` back in place

    @property
    def error(self) -> str:
        return f"{self.error_class}: {self.error_message}" if self.error_class else ""


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
    available = sorted(p.relative_to(source).with_suffix("").as_posix() for p in source.glob("*/*.ipynb"))
    listed = [entry for entry in toc_entries(toc) if entry in available]
    return listed + [name for name in available if name not in listed]


def default_output_dir(profile: str) -> Path:
    """``book/`` for the demo profile, ``_books/<profile>/`` for the others."""
    return BOOK if check_profile(profile) == PUBLISHED_PROFILE else BOOKS / profile


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


# --- provenance: commit, versions, device, content hash ---------------------------------------


def git_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding xaikit; (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def versions() -> dict[str, str | None]:
    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    from .bookpages import VERSION_KEYS

    return {"python": platform.python_version(), **{name: version(name) for name in VERSION_KEYS if name != "python"}}


@lru_cache(maxsize=1)
def kernel_device() -> str:
    """The processor a notebook's kernel computes on: the GPU when torch sees one, else the CPU."""
    import torch

    from .train import hardware

    return hardware("cuda" if torch.cuda.is_available() else "cpu")


def package_hash(package: Path = PACKAGE) -> str:
    """sha256 over the xaikit package's source, data and weights (paths and contents, sorted by path)."""
    digest = hashlib.sha256()
    files = sorted(p for pattern in ("*.py", "*.json", "*.safetensors") for p in package.rglob(pattern) if "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def content_hash(notebook: Path, parameters: dict, package_digest: str) -> str:
    """What decides an executed notebook: its source, its parameters (profile included) and the package."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str).encode())
    digest.update(package_digest.encode())
    return digest.hexdigest()


# --- the run record ---------------------------------------------------------------------------


def record_path(output_dir: Path, profile: str) -> Path:
    return output_dir / "_run" / f"runs-{profile}.json"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def read_record(path: Path) -> dict:
    """The run record at `path`; an empty one when there is none yet."""
    if not path.is_file():
        return {"profile": path.stem.removeprefix("runs-"), "notebooks": {}}
    return json.loads(path.read_text())


def latest_entries(run_dir: Path) -> tuple[dict[str, dict], list[str]]:
    """The latest entry of each notebook over the run records in `run_dir`, and why any record is unreadable."""
    latest, problems = {}, []
    for path in sorted(run_dir.glob("runs-*.json")):
        try:
            entries = read_record(path)["notebooks"].values()
        except (ValueError, KeyError, AttributeError) as err:
            problems.append(f"{path}: unreadable run record ({err})")
            continue
        for entry in entries:
            if entry["notebook"] not in latest or entry["finished_at"] > latest[entry["notebook"]]["finished_at"]:
                latest[entry["notebook"]] = entry
    return latest, problems


def _save_entry(output_dir: Path, entry: dict, order: list[str]) -> None:
    """Merge `entry` into its profile's record (and timings CSV) and drop it from the other profiles' records.

    The notebook's page now comes from this run, so no other record may still describe it.
    """
    profile, name = entry["profile"], entry["notebook"]
    for other in sorted((output_dir / "_run").glob("runs-*.json")):
        if other != record_path(output_dir, profile):
            record = read_record(other)
            if record["notebooks"].pop(name, None) is not None:
                _write_atomically(other, json.dumps(record, indent=2) + "\n")
                _write_timings(output_dir, record)
    record = read_record(record_path(output_dir, profile))
    record["profile"] = profile
    record["notebooks"][name] = entry
    rank = {n: i for i, n in enumerate(order)}
    record["notebooks"] = dict(sorted(record["notebooks"].items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))
    _write_atomically(record_path(output_dir, profile), json.dumps(record, indent=2) + "\n")
    _write_timings(output_dir, record)


def _write_timings(output_dir: Path, record: dict) -> None:
    """``_run/timings-<profile>.csv``: wall time and peak memory of every notebook in the record."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["notebook", "profile", "ok", "wall_seconds", "peak_memory_mb"])
    for entry in record["notebooks"].values():
        writer.writerow([entry["notebook"], entry["profile"], entry["ok"], f"{entry['wall_seconds']:.1f}", f"{entry['peak_memory_mb']:.0f}"])
    _write_atomically(output_dir / "_run" / f"timings-{record['profile']}.csv", table.getvalue())


# --- executing one notebook -------------------------------------------------------------------


@contextmanager
def _kernel_environment(variables: dict[str, str]):
    """Set `variables` in os.environ (the kernel inherits it) and restore os.environ afterwards."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_info_of(notebook: nbformat.NotebookNode) -> dict | None:
    """The first `xaikit.report.run_info` output of an executed notebook (models, data, sample), if any."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if RUN_INFO_MIME in data:
                info = data[RUN_INFO_MIME]
                return dict(json.loads(info) if isinstance(info, str) else info)
    return None


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def run_command(name: str, profile: str, output_dir: Path, parameters: dict | None = None, force: bool = False) -> str:
    """The ``xaikit run`` command that executes notebook `name` with `profile` and `parameters` into `output_dir`."""
    words = ["xaikit", "run", "--profile", profile, "--only", name]
    if profile not in PROFILES or output_dir.resolve() != default_output_dir(profile).resolve():
        words += ["--output-dir", _display_path(output_dir)]
    for key, value in (parameters or {}).items():
        if key != "profile":
            shown = value if isinstance(value, str) and yaml.safe_load(value) == value else json.dumps(value)
            words += ["-p", key, shown]
    return shlex.join(words + ["--force"] * force)


def rerun_command(name: str, profile: str, parameters: dict, output_dir: Path) -> str:
    """The one command that re-runs notebook `name` as it was run."""
    return run_command(name, profile, output_dir, parameters, force=True)


#: folder of the rendered book holding a copy of every source notebook (`xaikit build` writes it)
SOURCE_COPIES = "_notebooks"


def source_link(name: str, shown: str) -> str:
    """An HTML link from page `name` (``chapter/notebook``) to its source notebook's copy in the rendered book."""
    href = "../" * name.count("/") + f"{SOURCE_COPIES}/{name}.ipynb"
    return f'<a href="{href}"><code>{shown}</code></a>'


def banner_markdown(entry: dict, source_notebook: Path, output_dir: Path) -> str:
    """The run banner: a MyST admonition saying how this page was made and how to make it again."""
    fields = [f"**profile** {entry['profile']}"]
    info = entry.get("run_info") or {}
    models = [str(m) for m in info.get("models") or []]
    if models:
        fields.append(f"**{'models' if len(models) > 1 else 'model'}** {', '.join(models)}")
    data = ", ".join(str(part) for part in (info.get("data"), info.get("sample")) if part)
    if data:
        fields.append(f"**data** {data}")
    commit = entry["commit"][:7] + (" (dirty)" if entry["dirty"] else "") if entry["commit"] else "unknown"
    fields += [
        f"**commit** {commit}",
        f"**device** {entry['device']}",
        f"**wall time** {entry['wall_seconds']:.1f} s",
        f"**date** {entry['finished_at'][:10]}",
        f"**source** {source_link(entry['notebook'], _display_path(source_notebook))}",
        f"re-run: `{rerun_command(entry['notebook'], entry['profile'], entry['parameters'], output_dir)}`",
    ]
    return "```{admonition} Run record\n:class: note\n" + " · ".join(fields) + "\n```"


def _tag_for_the_book(tags: list[str]) -> None:
    """Add the MyST-NB visibility tag of one code cell (see `_finish_page`) unless its input has one."""
    if "injected-parameters" in tags:
        wanted = "remove-cell"
    elif "parameters" in tags:
        wanted = "hide-cell"
    else:
        wanted = "hide-input"
    if wanted not in tags and not set(tags) & INPUT_VISIBILITY_TAGS:
        tags.append(wanted)


def _finish_page(notebook: nbformat.NotebookNode, entry: dict, source_notebook: Path, output_dir: Path) -> None:
    """Collapse the code cells; put the run banner after the title cell; stamp the metadata.

    Tags for the book (MyST-NB), so that notebooks need none of their own:

    - the notebook's own ``parameters`` cell gets ``hide-cell``: shown collapsed, so a reader
      who copies the cells below it has the names they use;
    - papermill's ``injected-parameters`` cell gets ``remove-cell``: it is raw code, and the
      banner states this run's parameters;
    - every other code cell gets ``hide-input`` (its code collapsed, its output shown) unless
      it carries ``show-input`` (one of the few calls a reader would copy, shown open) or a
      ``hide-*``/``remove-*`` tag of its own.
    """
    for cell in notebook.cells:
        if cell.cell_type == "code":
            _tag_for_the_book(cell.metadata.setdefault("tags", []))
    notebook.cells = [c for c in notebook.cells if BANNER_TAG not in c.metadata.get("tags", [])]
    banner = nbformat.v4.new_markdown_cell(banner_markdown(entry, source_notebook, output_dir), metadata={"tags": [BANNER_TAG]})
    title = next((i for i, c in enumerate(notebook.cells) if c.cell_type == "markdown"), -1)
    notebook.cells.insert(title + 1, banner)
    notebook.metadata["xaikit"] = {"notebook": entry["notebook"], "profile": entry["profile"], "content_hash": entry["content_hash"]}


def run_notebook(name: str, profile: str, *, source: Path = NOTEBOOKS, output_dir: Path, parameters: dict | None = None,
                 progress: bool = False, timeout_s: int | None = None, package_digest: str | None = None,
                 order: list[str] | None = None) -> NotebookRun:
    """Execute notebook `name` into `output_dir` and record the run in ``_run/runs-<profile>.json``.

    The page ``<output_dir>/<name>.ipynb`` appears only when the notebook ran to the end;
    a failed notebook goes to ``_run/failed/<name>.ipynb`` and its page to ``_run/previous/<name>.ipynb``.
    """
    import papermill

    injected = _injected_parameters(profile, parameters)
    source_notebook = source / f"{name}.ipynb"
    output_dir = _check_output_dir(profile, output_dir).resolve()
    run_dir = output_dir / "_run"
    page, partial, failed = output_dir / f"{name}.ipynb", run_dir / "partial" / f"{name}.ipynb", run_dir / "failed" / f"{name}.ipynb"
    kept = run_dir / PREVIOUS / f"{name}.ipynb"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    staged_results = run_dir / "partial" / f"results-{name.replace('/', '--')}"
    shutil.rmtree(staged_results, ignore_errors=True)
    error_class = error_message = ""
    started = time.monotonic()
    environment = {"XAIKIT_RUN_DIR": str(run_dir), "XAIKIT_NOTEBOOK": name, "XAIKIT_PROFILE": profile,
                   "XAIKIT_RESULTS_DIR": str(staged_results)}
    with _PeakMemory() as memory, _kernel_environment(environment):
        try:
            papermill.execute_notebook(
                str(source_notebook), str(partial), parameters=injected, kernel_name=KERNEL, progress_bar=progress,
                cwd=str(source_notebook.parent), execution_timeout=timeout_s,
            )
        except papermill.PapermillExecutionError as err:  # the failing cell's exception
            error_class, error_message = err.ename, err.evalue
        except Exception as err:  # the kernel died, a cell timed out, the notebook is unreadable ...
            error_class, error_message = type(err).__name__, str(err)
    seconds = time.monotonic() - started
    commit, dirty = git_state()
    entry = {
        "notebook": name,
        "profile": profile,
        "parameters": injected,
        "commit": commit,
        "dirty": dirty,
        "versions": versions(),
        "device": kernel_device(),
        "wall_seconds": round(seconds, 3),
        "peak_memory_mb": round(memory.peak_bytes / 2**20, 1),
        "ok": not error_class,
        "error_class": error_class or None,
        "error_message": error_message if error_class else None,
        "content_hash": content_hash(source_notebook, injected, package_digest or package_hash()),
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "output": (page if not error_class else failed).relative_to(output_dir).as_posix(),
        "run_info": None,
        "previous": None,
    }
    if error_class:
        # the page must not stand for its failed re-run, nor be lost with it
        entry["previous"] = _keep_previous_page(page, kept, latest_entries(run_dir)[0].get(name))
        _move_results(staged_results, run_dir / "failed" / "results", name)  # for reading; the good results stay
        if partial.exists():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, failed)
        else:
            entry["output"] = None
        result = NotebookRun(name, False, seconds, entry["peak_memory_mb"], failed, error_class, error_message)
        if kept.is_file():
            result.previous, result.restore = kept, restore_command(kept, page)
    else:
        notebook = nbformat.read(partial, as_version=4)
        entry["run_info"] = run_info_of(notebook)
        _finish_page(notebook, entry, source_notebook, output_dir)
        nbformat.write(notebook, partial)
        page.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, page)
        _move_results(staged_results, run_dir / "results", name)
        failed.unlink(missing_ok=True)
        _remove_results(run_dir / "failed" / "results", name)
        kept.unlink(missing_ok=True)  # replaced by this run's page
        result = NotebookRun(name, True, seconds, entry["peak_memory_mb"], page)
    _save_entry(output_dir, entry, order or [name])
    return result


def _result_files(results: Path, name: str) -> list[Path]:
    """The tables and verdicts notebook `name` (chapter/NN_name) wrote under `results`."""
    chapter, _, notebook = name.rpartition("/")
    folder = results / chapter
    return sorted(p for p in folder.glob(f"{glob.escape(notebook)}*") if p.is_file()
                  and (p.name == f"{notebook}.csv" or p.name.startswith(f"{notebook}-")))


def _remove_results(results: Path, name: str) -> None:
    for path in _result_files(results, name):
        path.unlink()


def _move_results(staged: Path, results: Path, name: str) -> None:
    """Replace notebook `name`'s files under `results` by what its run wrote into `staged`.

    A table an earlier run wrote and this run no longer writes goes too: the results are those of one run.
    """
    _remove_results(results, name)
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        target = results / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(staged, ignore_errors=True)


def _keep_previous_page(page: Path, kept: Path, latest: dict | None) -> dict | None:
    """Move `page` to `kept` (under ``_run/previous``); return the record entry of the good run that made it.

    `latest` is the notebook's latest record entry before this run. After a failure in a row the
    page is already kept: it stays, with the entry the earlier failure kept for it.
    """
    made_by = [e for e in (latest, (latest or {}).get("previous")) if e and e["ok"]]
    if page.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(page, kept)
        return next((e for e in made_by if e["content_hash"] == _page_hash(kept)), None)
    return (latest or {}).get("previous") if kept.is_file() else None


def restore_command(kept: Path, page: Path) -> str:
    """The shell command that puts the kept page of a failed notebook back in place."""
    return shlex.join(["mv", str(kept), str(page)])


def _check_output_dir(profile: str, output_dir: Path) -> Path:
    """`output_dir`, unless it is the published book and `profile` is not the demo profile, or cannot be a folder."""
    if check_profile(profile) != PUBLISHED_PROFILE and output_dir.resolve() == BOOK.resolve():
        raise InvalidParameterError(
            f"the {profile} profile never runs into the published book ({BOOK}); leave out --output-dir "
            f"(default {BOOKS / profile}) or give another folder"
        )
    check_output_folder(output_dir, "--output-dir", f", or leave out --output-dir (default {default_output_dir(profile)})")
    return output_dir


def _injected_parameters(profile: str, parameters: dict | None) -> dict:
    parameters = dict(parameters or {})
    if "profile" in parameters:
        raise InvalidParameterError("pass the profile as `profile` (--profile), not as a parameter")
    return {"profile": check_profile(profile), **parameters}


def _copy_book_sources(book: Path, output_dir: Path) -> None:
    """The book's own pages, table of contents and assets, so that the output folder renders as a book."""
    shutil.copytree(book, output_dir, ignore=shutil.ignore_patterns(*NOT_BOOK_SOURCES), dirs_exist_ok=True)


def run_notebooks(profile: str = "demo", *, only: str | None = None, source: Path = NOTEBOOKS, output_dir: Path | None = None,
                  book: Path = BOOK, parameters: dict | None = None, force: bool = False, package: Path = PACKAGE,
                  log=print) -> list[NotebookRun]:
    """Execute the notebooks (those matching `only`) in book order into `output_dir`.

    `output_dir` defaults to ``book/`` for the demo profile and ``_books/<profile>/`` for the
    others; the published ``book/`` takes no other profile. When it is not `book`, the book's
    sources are copied there first. Notebooks unchanged since their last successful run there
    are skipped unless `force`.
    """
    output_dir = _check_output_dir(profile, Path(output_dir) if output_dir is not None else default_output_dir(profile))
    injected = _injected_parameters(profile, parameters)
    order = notebooks_in_book_order(source, book / "_toc.yml")
    if only is not None and not only.strip():  # an unset shell variable: running everything is not what was asked
        raise InvalidParameterError(
            f"--only got an empty pattern ({only!r}); give a glob or part of a name, e.g. --only 'foundations/01*', "
            "or leave out --only to run every notebook"
        )
    names = [n for n in order if only is None or fnmatch.fnmatch(n, only) or only in n]
    if not names:
        raise InvalidParameterError(f"no notebook under {source} matches {only!r}; the notebooks are: {', '.join(order)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    if output_dir.resolve() != book.resolve():
        _copy_book_sources(book, output_dir)
    digest = package_hash(package)
    record = read_record(record_path(output_dir, profile))["notebooks"]
    runs = []
    for index, name in enumerate(names, start=1):
        previous = record.get(name)
        page = output_dir / f"{name}.ipynb"
        if not force and previous and previous["ok"] and previous["content_hash"] == content_hash(source / f"{name}.ipynb", injected, digest) \
                and _page_hash(page) == previous["content_hash"]:
            log(f"[{index}/{len(names)}] {name}: unchanged, skipped")
            runs.append(NotebookRun(name, True, previous["wall_seconds"], previous["peak_memory_mb"], page, skipped=True))
            continue
        log(f"[{index}/{len(names)}] {name} ({profile}) ...")
        run = run_notebook(name, profile, source=source, output_dir=output_dir, parameters=parameters,
                           progress=sys.stderr.isatty(), package_digest=digest, order=order)
        runs.append(run)
        status = "ok" if run.ok else f"FAILED ({run.error_class})"
        log(f"[{index}/{len(names)}] {name}: {status} in {run.seconds:.1f} s, peak kernel memory {run.peak_memory_mb:.0f} MB")
    log(f"run record: {record_path(output_dir, profile)}")
    return runs


def _page_hash(page: Path) -> str | None:
    """The content hash stamped into an executed page (None when there is no readable page)."""
    try:
        return json.loads(page.read_text()).get("metadata", {}).get("xaikit", {}).get("content_hash")
    except (OSError, ValueError):
        return None


def _kept_page_advice(kept: Path, restore: str) -> str:
    return (f"its last good page is kept at {kept}; `xaikit build` refuses the book until the notebook runs "
            f"without error or that page is put back: {restore}")


def report_failures(runs: list[NotebookRun], log=print) -> int:
    """Exit status for `runs`: 0 when all succeeded, else 1 after listing each failure's exception."""
    failed = [run for run in runs if not run.ok]
    for run in failed:
        message = run.error_message.strip().replace("\n", "\n  ")
        kept = f"\n  {_kept_page_advice(run.previous, run.restore)}" if run.previous else ""
        log(f"FAILED {run.notebook}: {run.error_class}: {message}\n  failed notebook kept at {run.output}{kept}")
    return 1 if failed else 0


# --- checking a book before rendering ---------------------------------------------------------


def book_problems(source: Path, notebooks: Path | None = None) -> list[str]:
    """Why the book in `source` must not be rendered: notebooks of its table of contents that are
    missing, failed, not made by ``xaikit run``, or executed with another profile than the others.

    A page of the table of contents is a notebook when `notebooks` (the unexecuted sources,
    default ``notebooks/``) or the run record has it, or when `source` holds it as ``.ipynb``.
    A notebook whose latest run failed passes only once its last good page, kept under
    ``_run/previous``, is put back (or a later run succeeds).
    """
    notebooks = notebooks or NOTEBOOKS
    toc = source / "_toc.yml"
    if not toc.is_file():
        return [f"{toc} is missing"]
    latest, problems = latest_entries(source / "_run")
    profiles, missing = {}, []
    for name in toc_entries(toc):
        page, failed, kept = (source / f"{name}.ipynb", source / "_run" / "failed" / f"{name}.ipynb",
                              source / "_run" / PREVIOUS / f"{name}.ipynb")
        is_notebook = page.is_file() or failed.is_file() or name in latest or (notebooks / f"{name}.ipynb").is_file()
        if not is_notebook or any((source / f"{name}{suffix}").is_file() for suffix in (".md", ".rst")):
            continue
        entry = latest.get(name)
        if entry and not entry["ok"] and page.is_file() and _page_hash(page) == (entry.get("previous") or {}).get("content_hash"):
            entry = entry["previous"]  # its last good page, put back by hand
        if (entry and not entry["ok"]) or (failed.is_file() and not page.is_file()):
            first_line = next(iter((entry.get("error_message") or "").strip().splitlines()), "") if entry else ""
            cause = f" ({entry['error_class']}: {first_line})" if entry else ""
            advice = f"; {_kept_page_advice(kept, restore_command(kept, page))}" if kept.is_file() and not page.is_file() else ""
            problems.append(f"{name}: failed{cause}; read {failed}{advice}")
        elif not page.is_file():
            missing.append(len(problems))
            problems.append(name)  # the advice follows below, once the book's profile is known
        elif entry is None:
            problems.append(f"{name}: not executed by `xaikit run` (no entry in {source / '_run'}/runs-*.json)")
        else:
            profiles[name] = _page_profile(page) or entry["profile"]
    usual = Counter(profiles.values()).most_common(1)[0][0] if profiles else None
    book_profile = (usual or _folder_profile(source, latest)) if missing else None
    for index in missing:
        problems[index] = _missing_page(problems[index], book_profile, source)
    if len(set(profiles.values())) > 1:
        problems += [f"{name}: executed with profile {p}, the others with {usual}" for name, p in profiles.items() if p != usual]
    return problems


def _folder_profile(source: Path, latest: dict[str, dict]) -> str | None:
    """The profile a book folder holds when none of its pages says: its records', its unfinished or failed
    notebooks' (papermill stamps their parameters), or its default folder's."""
    recorded = Counter(entry["profile"] for entry in latest.values()) or Counter(
        filter(None, map(_page_profile, sorted((source / "_run").rglob("*.ipynb")))))
    if recorded:
        return recorded.most_common(1)[0][0]
    return next((p for p in PROFILES if source.resolve() == default_output_dir(p).resolve()), None)


def _missing_page(name: str, profile: str | None, source: Path) -> str:
    """The problem of a page never executed, with the command that executes it into the book folder `source`."""
    if profile is None:  # nothing says which profile: the reader picks one
        return f"{name}: missing (not executed); run `{run_command(name, 'PROFILE', source)}` with PROFILE one of {', '.join(PROFILES)}"
    return f"{name}: missing (not executed); run `{run_command(name, profile, source)}`"


def _page_profile(page: Path) -> str | None:
    try:
        meta = json.loads(page.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return None
    return meta.get("xaikit", {}).get("profile") or meta.get("papermill", {}).get("parameters", {}).get("profile")
