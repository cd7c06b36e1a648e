"""`xaikit run` and the checks of `xaikit build` on tiny synthetic notebooks and books.

Tests of execution itself start real kernels (about a second each); tests of what the
runner does around execution (skipping, merging, interruption) replace papermill's
execution by its `prepare_only` mode, which writes the parameterised notebook unexecuted.
"""

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import papermill
import psutil
import pytest
from papermill.exceptions import PapermillExecutionError

from xaikit import cli, runner
from xaikit.errors import InvalidParameterError
from xaikit.runner import (
    BANNER_TAG, BOOK, BOOKS, RUN_INFO_MIME, book_problems, default_output_dir, read_record, record_path, report_failures,
    run_notebook, run_notebooks,
)

RUN_INFO = {"models": ["demo-cifar10-vit"], "data": "CIFAR-10 test", "sample": "6 images"}
CODE = {
    "01_ok": (
        "import json, os\nfrom IPython.display import display\n"
        f"display({{{RUN_INFO_MIME!r}: {RUN_INFO!r}}}, raw=True)\n"
        "print(json.dumps({k: os.environ.get(k) for k in ('XAIKIT_RUN_DIR', 'XAIKIT_NOTEBOOK', 'XAIKIT_PROFILE')}))"
    ),
    "02_fails": "raise ValueError('boom: the cause')",
    "03_ok": "y = 2",
}
RECORD_KEYS = {
    "notebook", "profile", "parameters", "commit", "dirty", "versions", "device", "wall_seconds", "peak_memory_mb", "ok",
    "error_class", "error_message", "content_hash", "finished_at", "output", "run_info", "previous",
}


def write_notebook(path: Path, code: str, title: bool = True) -> None:
    cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}")] if title else []
    cells += [
        nbformat.v4.new_code_cell('profile: str = "demo"  # smoke | demo | paper\nn: int = 0  # a number', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def make_project(root: Path, code: dict[str, str] = CODE) -> tuple[Path, Path]:
    """notebooks/demo/<name>.ipynb for each of `code`, and a book listing them after an intro page."""
    source, book = root / "notebooks", root / "book"
    for name, text in code.items():
        write_notebook(source / "demo" / f"{name}.ipynb", text, title=name != "03_ok")
    book.mkdir(parents=True)
    (book / "intro.md").write_text("# Intro\n")
    (book / "_static").mkdir()
    (book / "_static" / "style.css").write_text("p {}\n")
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n" + "".join(f"  - file: demo/{name}\n" for name in code)
    )
    return source, book


class FakePapermill:
    """papermill.execute_notebook without a kernel: writes the parameterised notebook (prepare_only).

    `fail` maps a notebook name to the (ename, evalue) its "cell" raises; `interrupt` names
    notebooks whose execution is interrupted (KeyboardInterrupt) after the output was started.
    """

    def __init__(self) -> None:
        self.real = papermill.execute_notebook
        self.calls: list[str] = []
        self.fail: dict[str, tuple[str, str]] = {}
        self.interrupt: set[str] = set()

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        name = f"{Path(input_path).parent.name}/{Path(input_path).stem}"
        self.calls.append(name)
        self.real(input_path, output_path, parameters=parameters, prepare_only=True, progress_bar=False)
        if name in self.interrupt:
            raise KeyboardInterrupt
        if name in self.fail:
            raise PapermillExecutionError(2, 1, "x", *self.fail[name], [])


@pytest.fixture
def fake(monkeypatch):
    fake = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


def quiet(*_):
    pass


# --- real execution ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The three synthetic notebooks executed by real kernels in the smoke profile."""
    root = tmp_path_factory.mktemp("runner")
    source, book = make_project(root)
    os.environ["XAIKIT_PROFILE"] = "outer value"
    try:
        runs = run_notebooks("smoke", source=source, output_dir=root / "out", book=book, log=quiet)
        environment_after = os.environ.get("XAIKIT_PROFILE"), os.environ.get("XAIKIT_NOTEBOOK")
    finally:
        del os.environ["XAIKIT_PROFILE"]
    return root / "out", runs, environment_after


def test_a_failed_notebook_is_kept_apart_and_the_run_goes_on(executed):
    out, runs, _ = executed
    assert [(r.notebook, r.ok, r.skipped) for r in runs] == [("demo/01_ok", True, False), ("demo/02_fails", False, False), ("demo/03_ok", True, False)]
    assert not (out / "demo" / "02_fails.ipynb").exists()
    kept = nbformat.read(out / "_run" / "failed" / "demo" / "02_fails.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in kept.cells for o in c.get("outputs", []))
    assert runs[1].output == out.resolve() / "_run" / "failed" / "demo" / "02_fails.ipynb"
    assert not list((out / "_run" / "partial").rglob("*.ipynb"))


def test_the_failure_summary_and_the_record_name_the_cells_exception(executed):
    out, runs, _ = executed
    messages = []
    assert report_failures(runs, log=messages.append) == 1
    assert len(messages) == 1
    assert messages[0].startswith("FAILED demo/02_fails: ValueError: boom: the cause\n")
    assert "PapermillExecutionError" not in messages[0] and "02_fails.ipynb" in messages[0]
    entry = read_record(record_path(out, "smoke"))["notebooks"]["demo/02_fails"]
    assert (entry["ok"], entry["error_class"], entry["error_message"]) == (False, "ValueError", "boom: the cause")
    assert entry["output"] == "_run/failed/demo/02_fails.ipynb"
    assert report_failures([runs[0], runs[2]], log=messages.append) == 0


def test_the_run_record_says_how_each_page_was_made(executed):
    out, runs, _ = executed
    record = json.loads((out / "_run" / "runs-smoke.json").read_text())
    assert set(record) == {"profile", "notebooks"} and record["profile"] == "smoke"
    assert list(record["notebooks"]) == ["demo/01_ok", "demo/02_fails", "demo/03_ok"]
    for name, entry in record["notebooks"].items():
        assert set(entry) == RECORD_KEYS
        assert entry["notebook"] == name and entry["profile"] == "smoke"
        assert entry["parameters"] == {"profile": "smoke"}
        assert entry["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", entry["commit"])
        assert entry["dirty"] in (None, True, False) and (entry["dirty"] is None) == (entry["commit"] is None)
        assert set(entry["versions"]) == {"python", "torch", "timm", "grad-cam", "numpy", "scipy", "scikit-image",
                                          "opencv-python-headless", "xaikit"}
        assert entry["versions"]["numpy"] and entry["versions"]["scipy"]
        assert entry["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
        assert re.match(r"(CPU: .+, \d+ threads?|GPU: .+)$", entry["device"])
        assert isinstance(entry["wall_seconds"], float) and entry["wall_seconds"] > 0
        assert entry["peak_memory_mb"] > 20  # the kernel's memory was sampled
        assert re.fullmatch(r"[0-9a-f]{64}", entry["content_hash"])
        assert datetime.fromisoformat(entry["finished_at"].replace("Z", "+00:00")).tzinfo is not None
    entries = record["notebooks"]
    assert entries["demo/01_ok"]["output"] == "demo/01_ok.ipynb" and (out / "demo" / "01_ok.ipynb").is_file()
    assert entries["demo/01_ok"]["run_info"] == RUN_INFO and entries["demo/03_ok"]["run_info"] is None
    assert [e["ok"] for e in entries.values()] == [True, False, True]
    assert entries["demo/01_ok"]["error_class"] is None and entries["demo/01_ok"]["error_message"] is None
    timings = (out / "_run" / "timings-smoke.csv").read_text().splitlines()
    assert timings[0] == "notebook,profile,ok,wall_seconds,peak_memory_mb" and len(timings) == 4


def test_the_kernel_learns_where_to_write_and_the_environment_is_restored(executed):
    out, _, environment_after = executed
    notebook = nbformat.read(out / "demo" / "01_ok.ipynb", as_version=4)
    printed = next(o["text"] for c in notebook.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert json.loads(printed) == {
        "XAIKIT_RUN_DIR": str(out.resolve() / "_run"), "XAIKIT_NOTEBOOK": "demo/01_ok", "XAIKIT_PROFILE": "smoke",
    }
    assert environment_after == ("outer value", None)


def test_each_page_opens_with_a_run_banner(executed):
    out, _, _ = executed
    notebook = nbformat.read(out / "demo" / "01_ok.ipynb", as_version=4)
    entry = read_record(record_path(out, "smoke"))["notebooks"]["demo/01_ok"]
    title, banner = notebook.cells[:2]
    assert title.source == "# 01_ok" and banner.cell_type == "markdown" and banner.metadata.tags == [BANNER_TAG]
    lines = banner.source.splitlines()
    assert lines[:2] == ["```{admonition} Run record", ":class: note"] and lines[-1] == "```"
    text = lines[2]
    for expected in (
        "**profile** smoke", "**model** demo-cifar10-vit", "**data** CIFAR-10 test, 6 images",
        f"**commit** {entry['commit'][:7] if entry['commit'] else 'unknown'}", f"**device** {entry['device']}",
        f"**wall time** {entry['wall_seconds']:.1f} s", f"**date** {entry['finished_at'][:10]}",
        '**source** <a href="../_notebooks/demo/01_ok.ipynb"><code>', "01_ok.ipynb</code></a>",
        f"re-run: `xaikit run --profile smoke --only demo/01_ok --output-dir {out.resolve()} --force`",
    ):
        assert expected in text
    # the notebook's parameters cell is shown collapsed (a copied cell finds its names); papermill's is removed
    parameters, injected, code = [c for c in notebook.cells if c.cell_type == "code"]
    assert parameters.metadata.tags == ["parameters", "hide-cell"]
    assert injected.metadata.tags == ["injected-parameters", "remove-cell"]
    assert code.metadata.tags == ["hide-input"]  # every other code cell collapsed, its output shown
    assert notebook.metadata.xaikit == {"notebook": "demo/01_ok", "profile": "smoke", "content_hash": entry["content_hash"]}
    untitled = nbformat.read(out / "demo" / "03_ok.ipynb", as_version=4)  # no title cell: the banner comes first
    assert untitled.cells[0].metadata.tags == [BANNER_TAG] and "**model" not in untitled.cells[0].source


def test_code_cells_are_collapsed_unless_tagged_otherwise():
    cells = [nbformat.v4.new_markdown_cell("# Title")]
    cells += [nbformat.v4.new_code_cell("x = 1", metadata={"tags": tags}) for tags in (
        [], ["show-input"], ["remove-input"], ["hide-output"], ["remove-cell"], ["parameters"], ["parameters", "remove-cell"],
        ["injected-parameters"], ["hide-input"],
    )]
    notebook = nbformat.v4.new_notebook(cells=cells)
    entry = {"notebook": "demo/x", "profile": "smoke", "content_hash": "0", "parameters": {}, "commit": None, "device": "cpu",
             "wall_seconds": 1.0, "finished_at": "2026-01-01T00:00:00Z"}
    runner._finish_page(notebook, entry, Path("notebooks/demo/x.ipynb"), Path("book"))
    code = [c.metadata.tags for c in notebook.cells if c.cell_type == "code"]
    assert code == [
        ["hide-input"], ["show-input"], ["remove-input"], ["hide-output", "hide-input"], ["remove-cell"],
        ["parameters", "hide-cell"], ["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], ["hide-input"],
    ]
    assert [c.metadata.get("tags") for c in notebook.cells if c.cell_type == "markdown"] == [None, [BANNER_TAG]]


def test_a_killed_run_leaves_no_half_executed_page(tmp_path):
    """SIGKILL the runner while a notebook runs: nothing appears at the page's path."""
    started = tmp_path / "started"
    code = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(60)"
    source, book = make_project(tmp_path, {"01_slow": code})
    out = tmp_path / "out"
    # a forked runner: no second import of torch
    runner = multiprocessing.get_context("fork").Process(
        target=run_notebooks, args=("smoke",), kwargs={"source": source, "output_dir": out, "book": book, "log": quiet})
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and runner.is_alive(), "the notebook never started"
            time.sleep(0.1)
    finally:
        children = psutil.Process(runner.pid).children(recursive=True)
        os.kill(runner.pid, signal.SIGKILL)
        runner.join()
        for child in children:  # the kernel runs in its own session
            child.kill()
    assert (out / "_run" / "partial" / "demo" / "01_slow.ipynb").exists() and not (out / "demo" / "01_slow.ipynb").exists()
    assert book_problems(out, notebooks=source) == [
        f"demo/01_slow: missing (not executed); run `xaikit run --profile smoke --only demo/01_slow --output-dir {out}`"]


# --- around execution ---------------------------------------------------------------------------


def test_an_interrupted_rerun_keeps_the_previous_page_and_record(tmp_path, fake):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    page = out / "demo" / "01_ok.ipynb"
    before = page.read_bytes(), record_path(out, "smoke").read_bytes()
    write_notebook(source / "demo" / "01_ok.ipynb", "z = 3")  # edited: must run again
    fake.interrupt.add("demo/01_ok")
    with pytest.raises(KeyboardInterrupt):
        run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    assert (page.read_bytes(), record_path(out, "smoke").read_bytes()) == before
    assert "z = 3" in (out / "_run" / "partial" / "demo" / "01_ok.ipynb").read_text()  # the interrupted one stays apart


def test_a_failed_rerun_moves_the_page_aside_and_a_later_success_clears_the_failure(tmp_path, fake):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    page, failed = out / "demo" / "02_fails.ipynb", out / "_run" / "failed" / "demo" / "02_fails.ipynb"
    assert page.is_file() and not failed.exists()
    fake.fail["demo/02_fails"] = ("ValueError", "boom")
    runs = run_notebooks("smoke", source=source, output_dir=out, book=book, force=True, log=quiet)
    assert not page.exists() and failed.is_file() and [r.ok for r in runs] == [True, False, True]
    assert book_problems(out)[0].startswith(f"demo/02_fails: failed (ValueError: boom); read {failed.resolve()}; ")
    del fake.fail["demo/02_fails"]
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    assert page.is_file() and not failed.exists() and book_problems(out) == []


def test_only_merges_into_the_record_and_the_timings(tmp_path, fake):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    before = read_record(record_path(out, "smoke"))["notebooks"]
    runs = run_notebooks("smoke", only="*02*", source=source, output_dir=out, book=book, force=True, log=quiet)
    assert [r.notebook for r in runs] == ["demo/02_fails"] and fake.calls[-1] == "demo/02_fails"
    after = read_record(record_path(out, "smoke"))["notebooks"]
    assert list(after) == list(before) == ["demo/01_ok", "demo/02_fails", "demo/03_ok"]
    assert after["demo/01_ok"] == before["demo/01_ok"] and after["demo/02_fails"]["finished_at"] >= before["demo/02_fails"]["finished_at"]
    timings = (out / "_run" / "timings-smoke.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in timings] == ["notebook", "demo/01_ok", "demo/02_fails", "demo/03_ok"]
    assert not list((out / "_run").glob(".*.tmp"))  # written atomically, nothing left behind


def test_unchanged_notebooks_are_skipped(tmp_path, fake):
    source, book = make_project(tmp_path, {"01_a": "a = 1", "02_b": "b = 2"})
    package = tmp_path / "package"
    package.mkdir()
    (package / "module.py").write_text("x = 1\n")
    out = tmp_path / "out"

    def run(**kwargs):
        lines, start = [], len(fake.calls)
        run_notebooks("smoke", source=source, output_dir=out, book=book, package=package, log=lines.append, **kwargs)
        return fake.calls[start:], lines

    assert run()[0] == ["demo/01_a", "demo/02_b"]
    calls, lines = run()
    assert calls == [] and [line for line in lines if line.endswith("unchanged, skipped")] == [
        "[1/2] demo/01_a: unchanged, skipped", "[2/2] demo/02_b: unchanged, skipped"]
    write_notebook(source / "demo" / "02_b.ipynb", "b = 3")  # an edited notebook runs again, alone
    assert run()[0] == ["demo/02_b"]
    assert run(parameters={"n": 4})[0] == ["demo/01_a", "demo/02_b"]  # other parameters
    assert run(parameters={"n": 4})[0] == []
    (package / "module.py").write_text("x = 2\n")  # the package changed
    assert run(parameters={"n": 4})[0] == ["demo/01_a", "demo/02_b"]
    (out / "demo" / "01_a.ipynb").unlink()  # the page is gone
    assert run(parameters={"n": 4})[0] == ["demo/01_a"]
    assert run(parameters={"n": 4}, force=True)[0] == ["demo/01_a", "demo/02_b"]
    run_notebooks("demo", source=source, output_dir=out, book=book, package=package, only="01_a", parameters={"n": 4}, log=quiet)
    assert run(parameters={"n": 4})[0] == ["demo/01_a"]  # its page was overwritten by another profile's run


# --- output folders -----------------------------------------------------------------------------


def test_the_published_book_takes_only_the_demo_profile(tmp_path, fake):
    assert default_output_dir("demo") == BOOK
    assert default_output_dir("smoke") == BOOKS / "smoke" and default_output_dir("paper") == BOOKS / "paper"
    listing = sorted(p.relative_to(BOOK) for p in BOOK.rglob("*"))
    for profile in ("smoke", "paper"):
        with pytest.raises(InvalidParameterError, match="never runs into the published book"):
            run_notebooks(profile, output_dir=BOOK, log=quiet)
        with pytest.raises(InvalidParameterError, match="never runs into the published book"):
            run_notebook("foundations/01_anatomy", profile, output_dir=BOOK / "chapter" / "..")
        assert cli.main(["run", "--profile", profile, "--output-dir", str(BOOK)]) == 2
    assert fake.calls == [] and sorted(p.relative_to(BOOK) for p in BOOK.rglob("*")) == listing


def test_another_output_folder_gets_the_books_sources_but_no_outputs(tmp_path, fake):
    source, book = make_project(tmp_path)
    (book / "stray.ipynb").write_text("{}")
    for folder in ("_build", "_run"):
        (book / folder).mkdir()
        (book / folder / "old.txt").write_text("old")
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="01", log=quiet)
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "_run" not in p.parts)
    assert copied == ["_static/style.css", "_toc.yml", "demo/01_ok.ipynb", "intro.md"]


def test_the_cli_passes_its_flags_to_the_runner(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(cli, "run_notebooks", lambda profile, **kwargs: seen.update(profile=profile, **kwargs) or [])
    argv = ["run", "--profile", "smoke", "--only", "03", "--output-dir", str(tmp_path), "--force", "-p", "n", "16", "-p", "name", "abc"]
    assert cli.main(argv) == 0
    assert seen == {"profile": "smoke", "only": "03", "output_dir": tmp_path, "parameters": {"n": 16, "name": "abc"}, "force": True}


def test_the_rerun_command_carries_the_parameters(tmp_path, fake):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="03", parameters={"n": 16}, log=quiet)
    banner = nbformat.read(out / "demo" / "03_ok.ipynb", as_version=4).cells[0].source
    assert f"re-run: `xaikit run --profile smoke --only demo/03_ok --output-dir {out.resolve()} -p n 16 --force`" in banner
    with pytest.raises(InvalidParameterError, match="--profile"):
        run_notebooks("smoke", source=source, output_dir=out, book=book, parameters={"profile": "paper"}, log=quiet)


# --- checking a book before it is rendered ------------------------------------------------------


def test_build_refuses_a_book_with_missing_failed_or_mixed_notebooks(tmp_path, fake, monkeypatch, capsys):
    code = {"01_ok": "a = 1", "02_fails": "b = 2", "03_ok": "c = 3", "04_other_profile": "d = 4"}
    source, book = make_project(tmp_path, code)
    out = tmp_path / "out"
    fake.fail["demo/02_fails"] = ("ValueError", "boom")
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="*0[12]_*", log=quiet)
    run_notebooks("demo", source=source, output_dir=out, book=book, only="04", log=quiet)
    expected = [
        f"demo/02_fails: failed (ValueError: boom); read {(out / '_run' / 'failed' / 'demo' / '02_fails.ipynb').resolve()}",
        f"demo/03_ok: missing (not executed); run `xaikit run --profile smoke --only demo/03_ok --output-dir {out}`",
        "demo/04_other_profile: executed with profile demo, the others with smoke",
    ]
    assert book_problems(out, notebooks=source) == expected  # on a tie, the profile of the book's first notebook counts as usual
    monkeypatch.setattr(runner, "NOTEBOOKS", source)  # the notebooks `xaikit build` expects in the book
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("jupyter-book must not run"))
    capsys.readouterr()
    assert cli.build_book(out) == 1
    assert capsys.readouterr().err.splitlines() == [f"xaikit build: not rendering {out}:"] + [f"  - {line}" for line in expected]
    del fake.fail["demo/02_fails"]
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="*0[123]_*", log=quiet)
    assert book_problems(out) == [expected[2]]
    assert "demo/04_other_profile" not in read_record(record_path(out, "smoke"))["notebooks"]
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="04", log=quiet)
    assert book_problems(out) == []
    assert "demo/04_other_profile" not in read_record(record_path(out, "demo"))["notebooks"]  # now described by smoke only
    (out / "demo" / "05_by_hand.ipynb").write_text((out / "demo" / "01_ok.ipynb").read_text())
    with (out / "_toc.yml").open("a") as toc:
        toc.write("  - file: demo/05_by_hand\n")
    assert book_problems(out) == [f"demo/05_by_hand: not executed by `xaikit run` (no entry in {out / '_run'}/runs-*.json)"]


def test_the_rendered_book_holds_every_source_notebook_the_banners_link_to(tmp_path, monkeypatch):
    import xaikit.cli as cli
    import xaikit.runner as runner

    notebooks = tmp_path / "notebooks"
    (notebooks / "demo").mkdir(parents=True)
    (notebooks / "demo" / "01_ok.ipynb").write_text('{"cells": []}')
    html = tmp_path / "html"
    (html / "_static").mkdir(parents=True)
    (html / "_static" / "favicon.png").write_bytes(b"png")
    monkeypatch.setattr(runner, "NOTEBOOKS", notebooks)
    cli.finish_html(html)
    link = runner.source_link("demo/01_ok", "notebooks/demo/01_ok.ipynb")
    href = link.split('"')[1]
    assert (html / "demo" / href).resolve() == (html / "_notebooks" / "demo" / "01_ok.ipynb").resolve()
    assert (html / "_notebooks" / "demo" / "01_ok.ipynb").read_text() == '{"cells": []}'
