"""Pages of the book generated at build time from one source file and the run records.

``book/status.yml`` lists every table and figure of the three papers (and every page of
the Foundations chapter) with the notebook that reproduces it and, for the papers' items,
the claim the paper makes with it (``claim:``, one sentence). Nobody types a status:
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

Nor a verdict: the notebook judges each claim from its executed results (`xaikit.verdicts`) and
records the verdict with `xaikit.report.save_verdict` in
``<book>/_run/results/<chapter>/<notebook>-verdicts.json``; `load_verdicts` reads those files,
checks them against ``status.yml`` and the run records, and the tables show each claim with
the demo's verdict and its evidence ("not run yet" where none is recorded), and the
paper-profile verdict where a paper run recorded one.

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
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from .errors import DataIntegrityError, InvalidParameterError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
STATUS_FILE = "status.yml"
BOOK_STATUS = REPO / "book" / STATUS_FILE
# The demo's verdict on a paper's claim, recorded by the notebook (xaikit.report.save_verdict), never typed.
HOLDS, DOES_NOT_HOLD, UNTESTABLE = "holds", "does not hold", "cannot be tested on the demo"
VERDICTS = (HOLDS, DOES_NOT_HOLD, UNTESTABLE)
VERDICTS_SUFFIX = "-verdicts.json"
GENERATED = "_generated"
RUN_DIR = "_run"
NOT_YET, DEMO_DONE, PAPER_DONE = "not yet", "demo done", "paper done"
STATUSES = (NOT_YET, DEMO_DONE, PAPER_DONE)
# the software whose version can change a number in the book (numpy, scipy, scikit-image and OpenCV compute the
# scores and resize the CAM pictures)
VERSION_KEYS = ("python", "torch", "timm", "grad-cam", "numpy", "scipy", "scikit-image", "opencv-python-headless", "xaikit")
NOT_RUN_YET = "not run yet"  # the verdict cell of a claim no successful run has judged
# The profiles whose verdicts the tables show, one column each; the paper's only where a paper run recorded one.
VERDICT_COLUMNS = {"demo": "Demo verdict", "paper": "Paper-profile verdict"}
# A verdict must have been written while its run ran; slack for the whole seconds of ``finished_at``.
_CLOCK_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class Item:
    """One row of the status source: a paper's table or figure (or a Foundations page)."""

    chapter: str
    chapter_title: str
    paper: str | None  # the bibliography key of the paper; None for the project's own chapters
    item: str
    what: str
    notebook: str | None  # chapter/NN_name, existing or planned
    claim: str | None = None  # the paper's claim, one sentence; required for a paper's items


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
            claim = entry.get("claim")
            if claim is not None and (not isinstance(claim, str) or not claim.strip()):
                raise DataIntegrityError(f"{path}: the claim of item {entry['item']!r} must be one sentence of text; got {claim!r}")
            if chapter.get("paper") and claim is None:
                raise DataIntegrityError(
                    f"{path}: item {entry['item']!r} of {chapter['chapter']!r} has no 'claim': give the claim the paper makes "
                    "with it, in one sentence (e.g. 'TokenTM has the highest negative perturbation AUC on CIFAR-10')"
                )
            items.append(Item(chapter["chapter"], chapter["title"], chapter.get("paper"), str(entry["item"]),
                              str(entry["what"]), notebook, " ".join(claim.split()) if claim else None))
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


def _moment(text, what: str, path: Path) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise DataIntegrityError(f"{path}: {what} {text!r} is not an ISO time with a time zone; re-run the notebook with `xaikit run`")
    return moment


def _check_written_by_its_run(path: Path, item: str, entry: dict, run: dict, profile: str) -> None:
    """Refuse a verdict that the run recorded in ``runs-<profile>.json`` did not write (an earlier run's, or a typed one)."""
    recorded_at = _moment(entry.get("recorded_at"), f"the recorded_at of {item!r}", path)
    finished = _moment(run.get("finished_at"), f"the finished_at of {run.get('notebook')} in runs-{profile}.json", path)
    started = finished - timedelta(seconds=float(run.get("wall_seconds") or 0))
    if not started - _CLOCK_SLACK <= recorded_at <= finished + _CLOCK_SLACK:
        raise DataIntegrityError(
            f"{path}: the verdict on {item!r} was recorded at {entry['recorded_at']}, outside the notebook's last {profile} run "
            f"({started.isoformat(timespec='seconds')} to {run['finished_at']}), so that run did not write it: delete the "
            "file and re-run the notebook (`xaikit run --force --only ...`)"
        )


def load_verdicts(run_dir: Path, items: list[Item], records: dict[str, dict]) -> dict[tuple[str, str, str], dict]:
    """(profile, notebook, item) -> ``{verdict, evidence, ...}`` for every verdict a successful run recorded.

    Reads every ``results/<chapter>/<notebook>-verdicts.json`` under `run_dir` (`xaikit.report.save_verdict`).
    A verdict whose notebook has no successful run of its profile in `records` is left out (its claim shows
    "not run yet"). Refused with the file's name: an unreadable file, a notebook or item that ``status.yml``
    does not have, an unknown verdict, an empty evidence, and a verdict recorded outside its run.
    """
    claims = {}
    for item in items:
        claims.setdefault(item.notebook, {})[item.item] = item.claim
    verdicts = {}
    for path in sorted((Path(run_dir) / "results").glob(f"*/*{VERDICTS_SUFFIX}")):
        notebook = f"{path.parent.name}/{path.name.removesuffix(VERDICTS_SUFFIX)}"
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataIntegrityError(f"{path} is not a readable verdict file ({err}): delete it and re-run {notebook}") from err
        if not isinstance(recorded, dict):
            raise DataIntegrityError(f"{path} must map each item to its verdict; delete it and re-run {notebook}")
        own = claims.get(notebook, {})
        for item, entry in recorded.items():
            if item not in own:
                raise DataIntegrityError(
                    f"{path} records a verdict on {item!r}, which is not an item of {notebook} in {STATUS_FILE} (its items: "
                    f"{', '.join(map(repr, own)) or 'none'}): name the item in the notebook's save_verdict call as "
                    f"{STATUS_FILE} names it, and re-run the notebook"
                )
            if not isinstance(entry, dict) or entry.get("verdict") not in VERDICTS or not str(entry.get("evidence") or "").strip():
                raise DataIntegrityError(
                    f"{path}: the entry of {item!r} must hold a verdict ({', '.join(map(repr, VERDICTS))}) and its evidence; "
                    f"got {entry!r}: record verdicts with xaikit.report.save_verdict, never by hand"
                )
            if own[item] is None:
                raise DataIntegrityError(f"{path} records a verdict on {item!r}, which has no claim in {STATUS_FILE}: add its claim")
            profile = entry.get("profile")
            if not isinstance(profile, str) or not ran_ok(records, profile, notebook):
                continue  # no successful run of its profile recorded: the claim shows "not run yet"
            _check_written_by_its_run(path, item, entry, records[profile]["notebooks"][notebook], profile)
            verdicts[(profile, notebook, item)] = entry
    return verdicts


def _verdict_cell(item: Item, profile: str, verdicts: dict) -> str:
    if item.claim is None:
        return "–"
    entry = verdicts.get((profile, item.notebook, item.item))
    return f"**{entry['verdict']}**: {entry['evidence']}" if entry else NOT_RUN_YET


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
                 with_chapter: bool = True, verdicts: dict | None = None) -> str:
    """A Markdown table of `items`: (paper,) item, what it shows, its claim, notebook, status, the demo's verdict.

    The claim and verdict columns appear when an item of the table has a claim; a paper-profile verdict
    column when a paper run recorded a verdict on one of them. `verdicts` comes from `load_verdicts`.
    """
    verdicts = verdicts or {}
    with_claims = any(item.claim for item in items)
    profiles = [p for p in VERDICT_COLUMNS if p == "demo" or any((p, i.notebook, i.item) in verdicts for i in items)]
    item_header = "The paper's item" if items and all(item.paper for item in items) else "Item"  # never the book's own
    header = (["Paper"] if with_chapter else []) + [item_header, "Shows"] + (["Claim"] if with_claims else []) + ["Notebook", "Status"]
    header += [VERDICT_COLUMNS[profile] for profile in profiles] if with_claims else []
    rows = []
    for item in items:
        chapter = [f"{{doc}}`{item.chapter_title} </{item.chapter}/index>`"] if with_chapter else []
        claim = [item.claim or "–"] if with_claims else []
        judged = [_verdict_cell(item, profile, verdicts) for profile in profiles] if with_claims else []
        rows.append(chapter + [item.item, item.what] + claim + [_notebook_cell(item.notebook, source),
                                                                item_status(item.notebook, records, notebooks)] + judged)
    return _table(header, rows)


UNKNOWN_REASON = "unknown: no experiment on the demo explains it."  # capitalised where printed


def _paper_item(name: str) -> str:
    """"The paper's Table 1", "The paper's model (linear probe)": an item as the paper numbers it, never the book's."""
    first = name.split()[0].rstrip(".")
    return f"The paper's {name if first in _PAPER_PARTS else name[:1].lower() + name[1:]}"


_PAPER_PARTS = {"Table", "Tables", "Fig", "Figs", "Figure", "Figures"}


def glance_list(items: list[Item], source: Path, verdicts: dict, profile: str = "demo") -> str:
    """The results at a glance of a chapter: per claim, what the paper claims, what the demo shows, and why.

    One paragraph per item with a claim: the claim, the demo's verdict with its headline (the outcome and the
    deciding number with its interval, `xaikit.verdicts.Verdict.headline`), and, where the claim does not hold,
    the reason the page tested and what it showed, or that the reason is unknown. Everything but the claim comes
    from the verdict files the notebooks' runs wrote.
    """
    paragraphs = []
    for item in items:
        if item.claim is None:
            continue
        entry = verdicts.get((profile, item.notebook, item.item))
        page = _notebook_cell(item.notebook, source) if item.notebook else ""
        where = f" (page: {{doc}}`/{item.notebook}`)" if page.startswith("{doc}") else ""  # the page's title as the link
        text = f"**{_paper_item(item.item)}**{where}. *The paper claims:* {' '.join(item.claim.split())}"
        if entry is None:
            text += f" *The demo:* {NOT_RUN_YET}."
        else:
            shown = entry.get("headline") or entry["evidence"]
            text += f" *The demo:* **{entry['verdict']}**. {shown[:1].upper()}{shown[1:]}"
            if entry["verdict"] == DOES_NOT_HOLD:
                reason = entry.get("reason") or UNKNOWN_REASON
                text += f" *Why:* {reason[:1].upper()}{reason[1:]}"
        paragraphs.append(text)
    return "\n\n".join(paragraphs) + "\n" if paragraphs else "No claims of this chapter are listed yet.\n"


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


PYPROJECT = REPO / "pyproject.toml"


def repository_url(pyproject: Path = PYPROJECT) -> str | None:
    """The project's public repository, ``[project.urls] Repository`` of pyproject.toml (None when not set)."""
    import tomllib

    try:
        urls = tomllib.loads(Path(pyproject).read_text()).get("project", {}).get("urls", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    url = urls.get("Repository") or urls.get("repository")
    if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        raise InvalidParameterError(f"{pyproject}: [project.urls] Repository must be an http(s) address; got {url!r}")
    return url


def repository_section(url: str | None) -> str:
    """Where the book's code lives: a link to the repository, or, when none is recorded, what this copy holds."""
    if url:
        return (f"The code of this book, the `xaikit` library, its tests and the notebooks, is in the project's "
                f"repository, [{url.removeprefix('https://').removeprefix('http://')}]({url}): `make install` sets it up "
                "and `xaikit run` re-runs any page.\n")
    return ("The code of this book, the `xaikit` library, its tests and the notebooks, comes with the source it was "
            "built from (its README says how to install it with `make install` and re-run any page with `xaikit run`); "
            "this copy was built without a public repository address.\n")


def write_generated_pages(source: Path, *, notebooks: Path = NOTEBOOKS, status_file: Path | None = None) -> list[Path]:
    """Write the status tables and the environment section under ``<source>/_generated``; return the paths."""
    source = Path(source)
    status_file = Path(status_file or source / STATUS_FILE)
    if not status_file.is_file():
        raise InvalidParameterError(f"no status source {status_file}: the book's source folder must hold {STATUS_FILE}")
    items = load_items(status_file)
    records = load_run_records(source / RUN_DIR)
    verdicts = load_verdicts(source / RUN_DIR, items, records)
    out = source / GENERATED
    out.mkdir(parents=True, exist_ok=True)
    pages = {
        "status.md": status_table([i for i in items if i.paper], records, source, notebooks, verdicts=verdicts),
        "environment.md": environment_section(records),
        "repository.md": repository_section(repository_url()),
    }
    for chapter in dict.fromkeys(i.chapter for i in items):
        own = [i for i in items if i.chapter == chapter]
        pages[f"status-{chapter}.md"] = status_table(own, records, source, notebooks, with_chapter=False, verdicts=verdicts)
        pages[f"glance-{chapter}.md"] = glance_list(own, source, verdicts)
    written = []
    for name, text in pages.items():
        path = out / name
        if not path.is_file() or path.read_text() != text:  # unchanged files keep their time: no needless re-reads
            path.write_text(text)
        written.append(path)
    return written
