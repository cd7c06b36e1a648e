"""Every notebook: well-formed parameters, runs in the smoke profile (outside the published book),
renders into a book, and stops in the paper profile with a clear message when the paper's data or
weights are missing. The runner itself is tested on synthetic notebooks in test_runner.py; the smoke run
(`smoke_book`, tests/conftest.py) is shared with test_reproducible_tables.py."""

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from xaikit.cli import build_book
from xaikit.runner import BANNER_TAG, NOTEBOOKS, notebooks_in_book_order, read_record, record_path, run_notebook, toc_entries

NOTEBOOK_NAMES = notebooks_in_book_order()


def parameters_cell(path: Path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path} needs exactly one cell tagged 'parameters'"
    return cells[0]


def check_parameters(path: Path) -> None:
    """The rules of a parameters cell: profile first, then typed literals, each with a # help comment."""
    cell = parameters_cell(path)
    assert cell.source.splitlines()[0] == 'profile: str = "demo"  # smoke | demo | paper', f"{path}: profile must come first"
    parameters = papermill.inspect_notebook(str(path))
    for parameter in parameters.values():
        assert parameter["inferred_type_name"] != "None", f"{path}: {parameter['name']} has no type annotation"
        assert parameter["help"], f"{path}: {parameter['name']} has no '# help' comment"
    code_lines = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")]
    assert len(code_lines) == len(parameters), f"{path}: every line of the parameters cell must be one parameter"


def test_there_are_notebooks_and_all_are_in_the_book():
    assert len(NOTEBOOK_NAMES) >= 3
    listed = toc_entries()
    assert [n for n in NOTEBOOK_NAMES if n not in listed] == []


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_parameters_are_typed_literals_with_help(name):
    check_parameters(NOTEBOOKS / f"{name}.ipynb")


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize(
    "edit",
    [
        lambda source: source.replace('profile: str = "demo"  # smoke | demo | paper\n', ""),  # no profile
        lambda source: source.replace("n_images: int = 0", "n_images = 0"),  # untyped
        lambda source: re.sub(r"(n_images: int = 0)\s*#.*", r"\1", source),  # no help
    ],
)
def test_the_parameter_rules_catch_broken_cells(tmp_path, edit):
    notebook = nbformat.read(NOTEBOOKS / "foundations/01_anatomy.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = edit(cell.source + "\n")
    nbformat.write(notebook, tmp_path / "broken.ipynb")
    with pytest.raises(AssertionError):
        check_parameters(tmp_path / "broken.ipynb")


def test_every_notebook_runs_in_the_smoke_profile(smoke_book):
    work, runs, _, _ = smoke_book
    failures = {run.notebook: run.error[-2000:] for run in runs if not run.ok}
    assert failures == {}
    assert sorted(run.notebook for run in runs) == sorted(NOTEBOOK_NAMES)
    timings = (work / "book" / "_run" / "timings-smoke.csv").read_text().splitlines()
    assert timings[0] == "notebook,profile,ok,wall_seconds,peak_memory_mb" and len(timings) == 1 + len(runs)
    assert all(float(line.split(",")[4]) > 50 for line in timings[1:])  # the kernel's memory was sampled
    record = read_record(record_path(work / "book", "smoke"))["notebooks"]
    assert sorted(record) == sorted(NOTEBOOK_NAMES) and all(entry["ok"] for entry in record.values())
    for run in runs:
        notebook = nbformat.read(run.output, as_version=4)
        injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "remove-cell" in injected[0].metadata.tags  # hidden in the book
        assert 'profile = "smoke"' in injected[0].source
        assert "**profile** smoke" in next(c.source for c in notebook.cells if BANNER_TAG in c.metadata.get("tags", []))


def test_the_smoke_runs_leave_the_published_book_alone(smoke_book):
    _, _, before, after = smoke_book
    assert after == before


def test_the_book_builds_from_the_smoke_outputs_and_renders_in_a_browser(smoke_book):
    work, _, _, _ = smoke_book
    assert build_book(work / "book") == 0  # warnings are errors
    html = work / "book" / "_build" / "html"
    for name in NOTEBOOK_NAMES:
        page = (html / f"{name}.html").read_text()
        assert 'profile = "smoke"' not in page  # the injected cell is not shown (a missing glue fails the build)
        text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
        assert "Run record" in text and f"xaikit run --profile smoke --only {name}" in text  # the run banner
    from xaikit.bookcheck import check_book, find_browser

    if find_browser() is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    report = check_book(html)
    assert report.problems == []
    assert len(report.pages) >= 1 + len(NOTEBOOK_NAMES) and report.images >= len(NOTEBOOK_NAMES)


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_paper_profile_says_what_is_missing(name, tmp_path, monkeypatch):
    """With no hub, no local weights and no ImageNet, the paper profile stops with a message saying
    what to download and where to put it (the kernel inherits this environment)."""
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # RFC 2606: never resolves
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("XAIKIT_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("XAIKIT_IMAGENET_VAL", str(tmp_path / "imagenet"))
    run = run_notebook(name, "paper", source=NOTEBOOKS, output_dir=tmp_path)
    assert not run.ok
    assert any(kind in run.error for kind in ("WeightsUnavailableError", "DataUnavailableError")), run.error[-2000:]
    assert "download" in run.error.lower() and "XAIKIT_" in run.error
