"""Pages of the book generated at build time from one source file and the run records.

``book/status.yml`` lists every table and figure of the three papers (and every page of
the Foundations chapter) with the notebook that reproduces it. Nobody types a status:
`item_status` derives it from whether the notebook exists and from the run records
``<book>/_run/runs-<profile>.json`` that ``xaikit run`` writes:

==========  ==========================================================================
status      when
==========  ==========================================================================
not yet     no notebook yet, or no successful run of it recorded
demo done   the demo-profile record shows the notebook ran without error
paper done  a paper-profile record shows the notebook ran without error
==========  ==========================================================================

`write_generated_pages` writes, under ``<book>/_generated/`` (not kept in git):

* ``status.md``: the table of every paper item, included by the book's introduction;
* ``status-<chapter>.md``: one chapter's rows, included by the chapter's index page;
* ``environment.md``: versions, hardware and run times from the run records, included by
  the book's environment page.

The book's Sphinx extension ``book/_ext/xaikit_pages.py`` calls it before Sphinx reads
the sources, so every build shows the current state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import DataIntegrityError, InvalidParameterError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
STATUS_FILE = "status.yml"
GENERATED = "_generated"
RUN_DIR = "_run"
NOT_YET, DEMO_DONE, PAPER_DONE = "not yet", "demo done", "paper done"
STATUSES = (NOT_YET, DEMO_DONE, PAPER_DONE)
VERSION_KEYS = ("python", "torch", "timm", "grad-cam", "xaikit")


@dataclass(frozen=True)
class Item:
    """One row of the status source: a paper's table or figure (or a Foundations page)."""

    chapter: str
    chapter_title: str
    paper: str | None  # the bibliography key of the paper; None for the project's own chapters
    item: str
    what: str
    notebook: str | None  # chapter/NN_name, existing or planned


def load_items(path: Path) -> list[Item]:
    """The rows of the status source file, checked."""
    try:
        source = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataIntegrityError(f"cannot read the status source {path}: {err}") from err
    if not isinstance(source, dict) or not isinstance(source.get("chapters"), list):
        raise DataIntegrityError(f"{path} must hold a 'chapters:' list (see the comment at its top)")
    items = []
    for chapter in source["chapters"]:
        missing = [key for key in ("chapter", "title", "items") if key not in chapter]
        if missing:
            raise DataIntegrityError(f"{path}: a chapter lacks {', '.join(missing)}: {chapter!r}")
        for entry in chapter["items"]:
            if not entry.get("item") or not entry.get("what"):
                raise DataIntegrityError(f"{path}: every item of chapter {chapter['chapter']!r} needs 'item' and 'what'; got {entry!r}")
            if "status" in entry:
                raise DataIntegrityError(
                    f"{path}: item {entry['item']!r} of {chapter['chapter']!r} types a status; statuses are derived "
                    "from the run records, delete the 'status' key"
                )
            notebook = entry.get("notebook")
            if notebook is not None and (not isinstance(notebook, str) or notebook.count("/") != 1):
                raise DataIntegrityError(f"{path}: notebook must be 'chapter/NN_name' or absent; got {notebook!r}")
            items.append(Item(chapter["chapter"], chapter["title"], chapter.get("paper"), str(entry["item"]),
                              str(entry["what"]), notebook))
    return items


def load_run_records(run_dir: Path) -> dict[str, dict]:
    """profile -> run record, for every ``runs-<profile>.json`` in `run_dir` (none: empty)."""
    records = {}
    for path in sorted(Path(run_dir).glob("runs-*.json")):
        profile = path.stem.removeprefix("runs-")
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataIntegrityError(f"{path} is not a readable run record ({err}); re-run `xaikit run --profile {profile}`") from err
        if not isinstance(record, dict) or not isinstance(record.get("notebooks"), dict):
            raise DataIntegrityError(f"{path} has no 'notebooks' mapping; re-run `xaikit run --profile {profile}`")
        if record.get("profile", profile) != profile:
            raise DataIntegrityError(f"{path} holds the record of profile {record.get('profile')!r}, not {profile!r}")
        records[profile] = record
    return records


def ran_ok(records: dict[str, dict], profile: str, notebook: str) -> bool:
    entry = records.get(profile, {}).get("notebooks", {}).get(notebook)
    return bool(isinstance(entry, dict) and entry.get("ok") is True)


def item_status(notebook: str | None, records: dict[str, dict], notebooks: Path = NOTEBOOKS) -> str:
    """'not yet', 'demo done' or 'paper done' for a notebook, from the files and the run records."""
    if notebook is None or not (Path(notebooks) / f"{notebook}.ipynb").is_file():
        return NOT_YET
    if ran_ok(records, "paper", notebook):
        return PAPER_DONE
    if ran_ok(records, "demo", notebook):
        return DEMO_DONE
    return NOT_YET


def _cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def _notebook_cell(notebook: str | None, source: Path) -> str:
    if notebook is None:
        return "–"
    if (source / f"{notebook}.ipynb").is_file() or (source / f"{notebook}.md").is_file():
        return f"{{doc}}`{notebook} </{notebook}>`"
    return f"`{notebook}` (planned)"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) if not c.startswith("{doc}") else c for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def status_table(items: list[Item], records: dict[str, dict], source: Path, notebooks: Path = NOTEBOOKS,
                 with_chapter: bool = True) -> str:
    """A Markdown table of `items`: (paper,) item, what it shows, notebook, status."""
    header = (["Paper"] if with_chapter else []) + ["Item", "Shows", "Notebook", "Status"]
    rows = []
    for item in items:
        chapter = [f"{{doc}}`{item.chapter_title} </{item.chapter}/index>`"] if with_chapter else []
        rows.append(chapter + [item.item, item.what, _notebook_cell(item.notebook, source),
                               item_status(item.notebook, records, notebooks)])
    return _table(header, rows)


def _seconds(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def environment_section(records: dict[str, dict]) -> str:
    """Markdown: per profile, what ran where, how long, with which versions."""
    if not records:
        return ("No run record was found in `_run/`: the notebooks of this build were not executed by "
                "`xaikit run`, so there are no versions, hardware or run times to show.\n")
    order = sorted(records, key=lambda p: (["smoke", "demo", "paper"] + [p]).index(p))
    parts = []
    for profile in order:
        entries = records[profile]["notebooks"]
        parts.append(f"## Profile `{profile}`\n")
        rows = []
        for name, entry in entries.items():
            entry = entry if isinstance(entry, dict) else {}
            result = "ok" if entry.get("ok") is True else f"failed ({entry.get('error_class') or 'error'})"
            info = entry.get("run_info") or {}
            models = ", ".join(info.get("models", [])) if isinstance(info, dict) else ""
            memory = entry.get("peak_memory_mb")
            rows.append([name, result, models or "–", _seconds(entry.get("wall_seconds")),
                         f"{memory:.0f}" if isinstance(memory, (int, float)) else "–",
                         str(entry.get("device") or "–"), str(entry.get("finished_at") or "–")])
        parts.append(_table(["Notebook", "Result", "Models", "Wall time (s)", "Peak memory (MB)", "Device", "Finished (UTC)"], rows))
        total = sum(e.get("wall_seconds", 0) for e in entries.values() if isinstance(e, dict) and isinstance(e.get("wall_seconds"), (int, float)))
        parts.append(f"\n{len(entries)} notebook{'s' if len(entries) != 1 else ''}, {total:.0f} s in all.\n")
        versions = []
        for key in VERSION_KEYS:
            seen = sorted({str((e.get("versions") or {}).get(key)) for e in entries.values()
                           if isinstance(e, dict) and (e.get("versions") or {}).get(key) is not None})
            versions.append([key, ", ".join(seen) or "–"])
        commits = sorted({f"{str(e.get('commit'))[:12]}" + (" (with uncommitted changes)" if e.get("dirty") else "")
                          for e in entries.values() if isinstance(e, dict) and e.get("commit")})
        versions.append(["commit", ", ".join(commits) or "–"])
        parts.append("\n" + _table(["Software", "Version"], versions))
    return "\n".join(parts)


def write_generated_pages(source: Path, *, notebooks: Path = NOTEBOOKS, status_file: Path | None = None) -> list[Path]:
    """Write the status tables and the environment section under ``<source>/_generated``; return the paths."""
    source = Path(source)
    status_file = Path(status_file or source / STATUS_FILE)
    if not status_file.is_file():
        raise InvalidParameterError(f"no status source {status_file}: the book's source folder must hold {STATUS_FILE}")
    items = load_items(status_file)
    records = load_run_records(source / RUN_DIR)
    out = source / GENERATED
    out.mkdir(parents=True, exist_ok=True)
    pages = {
        "status.md": status_table([i for i in items if i.paper], records, source, notebooks),
        "environment.md": environment_section(records),
    }
    for chapter in dict.fromkeys(i.chapter for i in items):
        pages[f"status-{chapter}.md"] = status_table([i for i in items if i.chapter == chapter], records, source,
                                                     notebooks, with_chapter=False)
    written = []
    for name, text in pages.items():
        path = out / name
        if not path.is_file() or path.read_text() != text:  # unchanged files keep their time: no needless re-reads
            path.write_text(text)
        written.append(path)
    return written
