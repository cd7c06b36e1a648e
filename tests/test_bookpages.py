"""xaikit.bookpages: status derived from notebooks and run records, the generated tables, the environment page."""

import json
from pathlib import Path

import pytest
import yaml

from xaikit.bookpages import (
    DEMO_DONE,
    NOT_RUN_YET,
    NOT_YET,
    PAPER_DONE,
    environment_section,
    item_status,
    load_items,
    load_run_records,
    load_verdicts,
    write_generated_pages,
)
from xaikit.errors import DataIntegrityError

ROOT = Path(__file__).resolve().parents[1]

STATUS = {
    "chapters": [
        {"chapter": "foundations", "title": "Foundations",
         "items": [{"item": "Foundations 1", "what": "anatomy", "notebook": "foundations/01_anatomy"}]},
        {"chapter": "tokentm", "title": "TokenTM", "paper": "wu2024tokentm",
         "items": [
             {"item": "Fig. 1", "what": "maps | qualitative", "notebook": "tokentm/01_maps", "claim": "TokenTM's maps are focused."},
             {"item": "Fig. 4", "what": "more maps", "notebook": "tokentm/01_maps", "claim": "TokenTM's maps beat the baselines'."},
             {"item": "Table 1", "what": "segmentation", "notebook": "tokentm/02_segmentation", "claim": "TokenTM segments best."},
             {"item": "Table 5", "what": "AOPC", "notebook": "tokentm/04_aopc", "claim": "TokenTM has the highest AOPC."},
             {"item": "Table 6", "what": "ablation", "claim": "Every part of TokenTM helps."},
         ]},
    ]
}


def entry(name, profile, ok=True, **extra):
    return {"notebook": name, "profile": profile, "ok": ok, "wall_seconds": 12.5, "peak_memory_mb": 812.4,
            "device": "CPU (2 threads)", "finished_at": "2026-01-02T03:04:05Z", "commit": "abc1234", "dirty": False,
            "versions": {"python": "3.11.9", "torch": "2.5.0", "timm": "1.0.9", "grad-cam": "1.5.4", "xaikit": "0.1.0"},
            "error_class": None if ok else "ValueError", "error_message": "" if ok else "boom",
            "run_info": {"models": ["demo-cifar10-vit"], "data": "cifar10", "sample": "4 images"}, **extra}


@pytest.fixture
def book(tmp_path):
    """A book source with a status file, two existing notebooks (one also rendered) and run records."""
    source, notebooks = tmp_path / "book", tmp_path / "notebooks"
    (source / "_run").mkdir(parents=True)
    (source / "status.yml").write_text(yaml.safe_dump(STATUS, allow_unicode=True))
    for name in ("foundations/01_anatomy", "tokentm/01_maps", "tokentm/02_segmentation"):
        (notebooks / name).parent.mkdir(parents=True, exist_ok=True)
        (notebooks / f"{name}.ipynb").write_text("{}")
    (source / "tokentm").mkdir()
    (source / "tokentm" / "01_maps.ipynb").write_text("{}")  # executed into the book
    demo = {"profile": "demo", "notebooks": {
        "foundations/01_anatomy": entry("foundations/01_anatomy", "demo"),
        "tokentm/01_maps": entry("tokentm/01_maps", "demo"),
        "tokentm/02_segmentation": entry("tokentm/02_segmentation", "demo", ok=False),
        "tokentm/04_aopc": entry("tokentm/04_aopc", "demo"),  # recorded, but the notebook file is gone
    }}
    paper = {"profile": "paper", "notebooks": {"tokentm/01_maps": entry("tokentm/01_maps", "paper", device="NVIDIA H100")}}
    (source / "_run" / "runs-demo.json").write_text(json.dumps(demo))
    (source / "_run" / "runs-paper.json").write_text(json.dumps(paper))
    return source, notebooks


def test_status_is_derived_from_notebooks_and_run_records(book):
    source, notebooks = book
    records = load_run_records(source / "_run")
    assert item_status("tokentm/01_maps", records, notebooks) == PAPER_DONE
    assert item_status("foundations/01_anatomy", records, notebooks) == DEMO_DONE
    assert item_status("tokentm/02_segmentation", records, notebooks) == NOT_YET  # exists, but its run failed
    assert item_status("tokentm/04_aopc", records, notebooks) == NOT_YET  # a record, but no notebook
    assert item_status(None, records, notebooks) == NOT_YET
    assert item_status("tokentm/01_maps", {}, notebooks) == NOT_YET  # no run record at all


def test_generated_status_table_has_every_paper_item_once(book):
    source, notebooks = book
    written = write_generated_pages(source, notebooks=notebooks)
    assert {p.name for p in written} == {"status.md", "status-foundations.md", "status-tokentm.md", "environment.md",
                                         "glance-foundations.md", "glance-tokentm.md", "repository.md"}
    table = (source / "_generated" / "status.md").read_text().splitlines()
    assert table[0] == "| Paper | The paper's item | Shows | Claim | Notebook | Status | Demo verdict |"
    rows = table[2:]
    assert [row.split(" | ")[1] for row in rows] == ["Fig. 1", "Fig. 4", "Table 1", "Table 5", "Table 6"]  # papers only, in order
    by_item = {row.split(" | ")[1]: row for row in rows}
    assert by_item["Fig. 1"].endswith(f"| paper done | {NOT_RUN_YET} |") and "{doc}`tokentm/01_maps </tokentm/01_maps>`" in by_item["Fig. 1"]
    assert "maps \\| qualitative" in by_item["Fig. 1"]  # a '|' in the text does not break the table
    assert "| TokenTM's maps are focused. |" in by_item["Fig. 1"]
    assert by_item["Table 1"].endswith(f"| not yet | {NOT_RUN_YET} |") and "`tokentm/02_segmentation` (planned)" in by_item["Table 1"]
    assert by_item["Table 5"].endswith(f"| not yet | {NOT_RUN_YET} |")
    assert by_item["Table 6"].endswith(f"| – | not yet | {NOT_RUN_YET} |")
    chapter = (source / "_generated" / "status-foundations.md").read_text().splitlines()
    # no claim on any Foundations item: no claim or verdict columns there
    assert chapter[0] == "| Item | Shows | Notebook | Status |" and chapter[2].endswith("| demo done |")
    assert (source / "_generated" / "status-tokentm.md").read_text().startswith(
        "| The paper's item | Shows | Claim | Notebook | Status | Demo verdict |")


def test_every_item_of_the_books_status_file_is_in_the_generated_table(tmp_path):
    source = tmp_path / "book"
    source.mkdir()
    items = load_items(ROOT / "book" / "status.yml")
    write_generated_pages(source, status_file=ROOT / "book" / "status.yml")
    rows = (source / "_generated" / "status.md").read_text().splitlines()[2:]
    paper_items = [i for i in items if i.paper]
    assert [(row.split(" | ")[1], row.split(" | ")[2]) for row in rows] == [(i.item, i.what) for i in paper_items]
    assert all(row.endswith(f"| not yet | {NOT_RUN_YET} |") for row in rows)  # no run record: nothing is done, nothing judged
    assert [row.split(" | ")[3] for row in rows] == [i.claim.replace("|", "\\|") for i in paper_items]
    assert {i.chapter for i in paper_items} == {"tokentm", "cdam", "vita"}


def test_a_typed_status_is_refused(tmp_path):
    broken = {"chapters": [{"chapter": "x", "title": "X", "items": [{"item": "Fig. 1", "what": "w", "status": "paper done"}]}]}
    (tmp_path / "status.yml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DataIntegrityError, match="types a status"):
        load_items(tmp_path / "status.yml")


def test_a_corrupt_run_record_is_reported(tmp_path):
    (tmp_path / "runs-demo.json").write_text("{not json")
    with pytest.raises(DataIntegrityError, match="runs-demo.json"):
        load_run_records(tmp_path)


def test_environment_section_reads_versions_hardware_and_times(book):
    source, _ = book
    text = environment_section(load_run_records(source / "_run"))
    assert text.index("## Profile `demo`") < text.index("## Profile `paper`")
    assert "| foundations/01_anatomy | ok | demo-cifar10-vit | 12.5 | 812 | CPU (2 threads) | 2026-01-02T03:04:05Z |" in text
    assert "failed (ValueError)" in text and "NVIDIA H100" in text
    assert "| torch | 2.5.0 |" in text and "| commit | abc1234 |" in text
    assert "4 notebooks, 50 s in all." in text
    assert "No run record" in environment_section({})


# -- claims and verdicts ------------------------------------------------------------------------------------

IN_THE_DEMO_RUN = "2026-01-02T03:04:00.000000+00:00"  # within the fixture's runs: 12.5 s up to 03:04:05Z


def write_verdicts(source, notebook, verdicts):
    path = source / "_run" / "results" / f"{notebook}-verdicts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({item: {"recorded_at": IN_THE_DEMO_RUN, "run": "k1", **entry} for item, entry in verdicts.items()}))
    return path


def test_tables_show_the_claims_and_the_recorded_verdicts(book):
    source, notebooks = book
    write_verdicts(source, "tokentm/01_maps", {
        "Fig. 1": {"verdict": "holds", "evidence": "TokenTM 61.2 [59.0, 63.1] against GAE 55.0 [53.1, 57.2].", "profile": "demo"},
        "Fig. 4": {"verdict": "does not hold", "evidence": "GAE is better.", "profile": "paper"},
    })
    # the segmentation notebook's last demo run failed: what it recorded is not shown
    write_verdicts(source, "tokentm/02_segmentation", {"Table 1": {"verdict": "holds", "evidence": "x.", "profile": "demo"}})
    write_generated_pages(source, notebooks=notebooks)
    table = (source / "_generated" / "status.md").read_text().splitlines()
    assert table[0] == "| Paper | The paper's item | Shows | Claim | Notebook | Status | Demo verdict | Paper-profile verdict |"
    by_item = {row.split(" | ")[1]: row for row in table[2:]}
    assert by_item["Fig. 1"].endswith(
        f"| **holds**: TokenTM 61.2 [59.0, 63.1] against GAE 55.0 [53.1, 57.2]. | {NOT_RUN_YET} |")
    assert by_item["Fig. 4"].endswith(f"| {NOT_RUN_YET} | **does not hold**: GAE is better. |")
    assert by_item["Table 1"].endswith(f"| {NOT_RUN_YET} | {NOT_RUN_YET} |")
    chapter = (source / "_generated" / "status-tokentm.md").read_text()
    assert "**holds**: TokenTM 61.2" in chapter


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"Table 9": {"verdict": "holds", "evidence": "e.", "profile": "demo"}}, r"records a verdict on 'Table 9'.*'Fig. 1', 'Fig. 4'"),
        ({"Fig. 1": {"verdict": "holds mostly", "evidence": "e.", "profile": "demo"}}, "must hold a verdict"),
        ({"Fig. 1": {"verdict": "holds", "evidence": "", "profile": "demo"}}, "must hold a verdict"),
        ({"Fig. 1": {"verdict": "holds", "evidence": "e.", "profile": "demo", "recorded_at": "2025-12-31T00:00:00+00:00"}},
         "outside the notebook's last demo run"),
    ],
)
def test_a_bad_or_stale_verdict_file_is_an_error_naming_the_file(book, entry, message):
    source, notebooks = book
    path = write_verdicts(source, "tokentm/01_maps", entry)
    with pytest.raises(DataIntegrityError, match=message) as raised:
        write_generated_pages(source, notebooks=notebooks)
    assert str(path) in str(raised.value)


def test_a_verdict_file_of_a_notebook_without_items_is_an_error(book):
    source, _ = book
    path = write_verdicts(source, "tokentm/07_extra", {"Fig. 1": {"verdict": "holds", "evidence": "e.", "profile": "demo"}})
    with pytest.raises(DataIntegrityError, match="not an item of tokentm/07_extra") as raised:
        load_verdicts(source / "_run", load_items(source / "status.yml"), load_run_records(source / "_run"))
    assert str(path) in str(raised.value)


def test_a_paper_item_without_a_claim_is_refused(tmp_path):
    broken = {"chapters": [{"chapter": "x", "title": "X", "paper": "key", "items": [{"item": "Fig. 1", "what": "w"}]}]}
    (tmp_path / "status.yml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DataIntegrityError, match="Fig. 1.*has no 'claim'"):
        load_items(tmp_path / "status.yml")
    broken["chapters"][0]["items"][0]["claim"] = ["two", "sentences"]
    (tmp_path / "status.yml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DataIntegrityError, match="must be one sentence of text"):
        load_items(tmp_path / "status.yml")


def test_a_verdict_saved_by_a_notebook_run_reaches_the_books_table(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from xaikit.report import save_verdict

    source = tmp_path / "book"
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(source / "_run"))
    monkeypatch.setenv("XAIKIT_NOTEBOOK", "tokentm/03_perturbation")
    monkeypatch.setenv("XAIKIT_PROFILE", "demo")
    save_verdict("Tables 2–4", "does not hold", "GAE 71.8 [70.1, 73.4] is ahead of TokenTM 70.2 [68.5, 71.9].")
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {"profile": "demo", "notebooks": {"tokentm/03_perturbation": entry("tokentm/03_perturbation", "demo", finished_at=finished)}}
    (source / "_run" / "runs-demo.json").write_text(json.dumps(record))
    write_generated_pages(source, status_file=ROOT / "book" / "status.yml")
    rows = (source / "_generated" / "status-tokentm.md").read_text().splitlines()
    judged = [row for row in rows if row.startswith("| Tables 2–4 |")]
    assert judged and judged[0].endswith("| demo done | **does not hold**: GAE 71.8 [70.1, 73.4] is ahead of TokenTM 70.2 [68.5, 71.9]. |")
    assert all(row.endswith(f"| {NOT_RUN_YET} |") for row in rows[2:] if not row.startswith("| Tables 2–4 |"))


def test_the_glance_list_gives_claim_verdict_headline_and_the_tested_reason(book):
    source, notebooks = book
    write_verdicts(source, "tokentm/01_maps", {
        "Fig. 1": {"verdict": "holds", "evidence": "long evidence 1.", "headline": "TokenTM ahead by 1.3 [0.6, 1.9].",
                   "profile": "demo"},
        "Fig. 4": {"verdict": "does not hold", "evidence": "long evidence 4.", "headline": "Rollout is better.",
                   "reason": "On the correctly classified images alone Rollout is still better.", "profile": "demo"},
    })
    write_generated_pages(source, notebooks=notebooks)
    glance = (source / "_generated" / "glance-tokentm.md").read_text().split("\n\n")
    assert glance[0] == ("**The paper's Fig. 1** (page: {doc}`/tokentm/01_maps`). *The paper claims:* TokenTM's "
                         "maps are focused. *The demo:* **holds**. TokenTM ahead by 1.3 [0.6, 1.9].")
    assert glance[1].endswith("*The demo:* **does not hold**. Rollout is better. *Why:* On the correctly classified images "
                              "alone Rollout is still better.")
    assert glance[2].endswith(f"*The demo:* {NOT_RUN_YET}.")  # Table 1: its last demo run failed
    assert glance[4].startswith("**The paper's Table 6**") and "(" not in glance[4].split("*The paper claims")[0]
    assert "Foundations 1" not in (source / "_generated" / "glance-foundations.md").read_text()  # no claim, no line


def test_a_verdict_without_a_reason_says_the_reason_is_unknown(book):
    from xaikit.bookpages import UNKNOWN_REASON

    source, notebooks = book
    write_verdicts(source, "tokentm/01_maps", {
        "Fig. 4": {"verdict": "does not hold", "evidence": "GAE is better by 2.0 [1.0, 3.0].", "profile": "demo"}})
    write_generated_pages(source, notebooks=notebooks)
    glance = (source / "_generated" / "glance-tokentm.md").read_text()
    assert f"**does not hold**. GAE is better by 2.0 [1.0, 3.0]. *Why:* U{UNKNOWN_REASON[1:]}" in glance


def test_save_verdict_records_headline_and_reason_and_refuses_empty_ones(tmp_path, monkeypatch):
    from xaikit.errors import InvalidParameterError
    from xaikit.report import save_verdict

    monkeypatch.setenv("XAIKIT_RUN_DIR", str(tmp_path / "_run"))
    monkeypatch.setenv("XAIKIT_NOTEBOOK", "tokentm/03_perturbation")
    monkeypatch.setenv("XAIKIT_PROFILE", "demo")
    path = save_verdict("Tables 2–4", "does not hold", "e.", headline="h.", reason="the errors do not explain it.")
    recorded = json.loads(path.read_text())["Tables 2–4"]
    assert (recorded["headline"], recorded["reason"]) == ("h.", "the errors do not explain it.")
    with pytest.raises(InvalidParameterError, match="reason must be a non-empty sentence"):
        save_verdict("Tables 2–4", "does not hold", "e.", reason="  ")


def test_the_repository_link_comes_from_pyproject(tmp_path):
    from xaikit.bookpages import repository_section, repository_url
    from xaikit.errors import InvalidParameterError

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "xaikit"\n[project.urls]\nRepository = "https://example.org/xaikit"\n')
    assert repository_url(pyproject) == "https://example.org/xaikit"
    assert "[example.org/xaikit](https://example.org/xaikit)" in repository_section(repository_url(pyproject))
    pyproject.write_text('[project]\nname = "xaikit"\n')
    assert repository_url(pyproject) is None
    assert "without a public repository address" in repository_section(None)
    pyproject.write_text('[project]\nname = "xaikit"\n[project.urls]\nRepository = "git@host:x"\n')
    with pytest.raises(InvalidParameterError, match="http"):
        repository_url(pyproject)
