"""What a hostile try-out of `xaikit run`, `xaikit build` and `xaikit bench` found (issue 13), and the README's
examples run as written.

The synthetic notebooks and books are those of tests/test_runner.py.
"""

import ast
import io
import os
import re
import shlex
import subprocess
import tokenize
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import papermill
import pytest
from test_runner import FakePapermill, fake, make_project, quiet, write_notebook  # noqa: F401  (fake: a fixture)

from xaikit import bench, cli, runner
from xaikit.runner import book_problems, read_record, record_path, report_failures, run_notebooks

REPO = Path(__file__).resolve().parents[1]


def as_the_repository(monkeypatch, root: Path, source: Path, book: Path) -> None:
    """Let the CLI see `root` as the repository, and work in it: notebooks `source`, book `book`, `root/_books/`."""
    monkeypatch.chdir(root)
    monkeypatch.setattr(cli, "run_notebooks", partial(run_notebooks, source=source, book=book, log=quiet))
    monkeypatch.setattr(runner, "NOTEBOOKS", source)
    monkeypatch.setattr(runner, "BOOKS", root / "_books")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The synthetic project of tests/test_runner.py, as the CLI sees it."""
    source, book = make_project(tmp_path)
    as_the_repository(monkeypatch, tmp_path, source, book)
    return tmp_path, source, book


def run_cli(words: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = cli.main(words)
    return status, capsys.readouterr().err


# --- data loss: a failed re-run keeps the last good page --------------------------------------------


def test_a_failed_rerun_keeps_the_last_good_page_byte_for_byte_and_says_how_to_put_it_back(tmp_path, fake):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    page, kept = out / "demo" / "01_ok.ipynb", out / "_run" / "previous" / "demo" / "01_ok.ipynb"
    good = page.read_bytes()
    good_entry = read_record(record_path(out, "smoke"))["notebooks"]["demo/01_ok"]
    fake.fail["demo/01_ok"] = ("ValueError", "n_images must be positive, got -3")
    for attempt in range(2):  # a second failure in a row keeps the same page
        runs = run_notebooks("smoke", source=source, output_dir=out, book=book, only="01", force=True,
                             parameters={"n": -3}, log=quiet)
        assert not runs[0].ok and not page.exists() and kept.read_bytes() == good, attempt
        assert runs[0].previous == kept.resolve()
        assert read_record(record_path(out, "smoke"))["notebooks"]["demo/01_ok"]["previous"] == good_entry
    messages = []
    assert report_failures(runs, log=messages.append) == 1
    restore = f"mv {kept.resolve()} {page.resolve()}"
    assert f"its last good page is kept at {kept.resolve()}" in messages[0] and messages[0].endswith(f"put back: {restore}")
    problems = book_problems(out)
    assert len(problems) == 1 and problems[0].startswith("demo/01_ok: failed (ValueError: n_images must be positive")
    assert problems[0].endswith(restore)
    subprocess.run(shlex.split(restore), check=True)  # the command as printed puts the good page back
    assert page.read_bytes() == good and not kept.exists() and book_problems(out) == []


def test_xaikit_build_refuses_while_the_good_page_is_only_kept(tmp_path, fake, monkeypatch, capsys):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    fake.fail["demo/03_ok"] = ("ValueError", "boom")
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="03", force=True, log=quiet)
    monkeypatch.setattr(runner, "NOTEBOOKS", source)
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("jupyter-book must not run"))
    assert run_cli(["build", "--source", str(out)], capsys)[0] == 1
    assert (out / "_run" / "previous" / "demo" / "03_ok.ipynb").is_file()


def test_a_later_success_replaces_the_kept_page_cleanly(tmp_path, fake):
    source, book = make_project(tmp_path)
    out = tmp_path / "out"
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    page, kept = out / "demo" / "01_ok.ipynb", out / "_run" / "previous" / "demo" / "01_ok.ipynb"
    fake.fail["demo/01_ok"] = ("ValueError", "boom")
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="01", force=True, log=quiet)
    assert kept.is_file()
    del fake.fail["demo/01_ok"]
    write_notebook(source / "demo" / "01_ok.ipynb", "fixed = 1")
    runs = run_notebooks("smoke", source=source, output_dir=out, book=book, only="01", log=quiet)
    entry = read_record(record_path(out, "smoke"))["notebooks"]["demo/01_ok"]
    assert runs[0].ok and runs[0].previous is None and "fixed = 1" in page.read_text()
    assert not kept.exists() and entry["ok"] and entry["previous"] is None and book_problems(out) == []


# --- --only with an empty pattern ------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["", "  "])
def test_an_empty_only_pattern_is_refused_not_run_on_every_notebook(project, fake, capsys, pattern):
    status, err = run_cli(["run", "--profile", "smoke", "--only", pattern], capsys)
    assert status == 2 and fake.calls == []
    assert "--only got an empty pattern" in err and "leave out --only to run every notebook" in err


def test_an_only_pattern_matching_nothing_is_an_error(project, fake, capsys):
    status, err = run_cli(["run", "--profile", "smoke", "--only", "no_such_notebook"], capsys)
    assert status == 2 and fake.calls == [] and "matches 'no_such_notebook'" in err and "demo/01_ok" in err


# --- following the README: its commands as written ------------------------------------------------------


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def test_the_readmes_xaikit_commands_work_as_written(tmp_path, monkeypatch, capsys):
    """The README's `xaikit run` then `xaikit build --source <relative path>`, in a folder laid out like the
    repository, on a one-notebook book named like the README's notebook (one real kernel, one real build)."""
    commands = [shlex.split(line, comments=True) for block in readme_blocks("bash") for line in block.splitlines()
                if line.startswith(("xaikit run ", "xaikit build "))]
    kinds = [words[1] for words in commands]
    assert "run" in kinds and "build" in kinds[kinds.index("run"):], kinds
    assert any(not Path(words[words.index("--source") + 1]).is_absolute() for words in commands if "--source" in words)
    name = "foundations/03_attention_maps"
    source, book = tmp_path / "notebooks", tmp_path / "book"
    write_notebook(source / f"{name}.ipynb", "print('attention maps')")
    (book / "_static").mkdir(parents=True)
    (book / "_static" / "favicon.png").write_bytes((REPO / "book" / "_static" / "favicon.png").read_bytes())
    (book / "references.bib").write_text((REPO / "book" / "references.bib").read_text())
    (book / "status.yml").write_text("chapters: []\n")
    (book / "intro.md").write_text("# Intro\n")
    (book / "_toc.yml").write_text(f"format: jb-book\nroot: intro\nchapters:\n  - file: {name}\n")
    as_the_repository(monkeypatch, tmp_path, source, book)
    for words in commands:
        assert cli.main(words[1:]) == 0, words
    built = tmp_path / "_books" / "paper" / "_build" / "html" / f"{name}.html"
    assert "attention maps" in built.read_text()


def test_every_path_on_the_command_line_is_read_from_the_callers_folder(tmp_path, monkeypatch):
    import xaikit.bookcheck

    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(cli, "run_notebooks", lambda profile, **kwargs: seen.update(run=kwargs["output_dir"]) or [])
    monkeypatch.setattr(cli, "build_book", lambda source: seen.update(build=source) or 0)
    monkeypatch.setattr(xaikit.bookcheck, "check_book",
                        lambda html: seen.update(check=html) or SimpleNamespace(problems=[], summary=lambda: ""))
    monkeypatch.setattr(bench, "run_from_args", lambda args: seen.update(bench=args.json_file) or 0)
    cli.main(["run", "--output-dir", "a/out"])
    cli.main(["build", "--source", "_books/smoke"])
    cli.main(["check-book", "--html", "../html"])
    cli.main(["bench", "--model", "m", "--batch-size", "1", "--json", "b.json"])
    assert seen == {"run": tmp_path / "a" / "out", "build": tmp_path / "_books" / "smoke",
                    "check": tmp_path.parent / "html", "bench": tmp_path / "b.json"}


# --- unclear errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["default", "custom"])
def test_builds_advice_for_a_missing_page_runs_into_that_folder_with_its_profile(project, fake, capsys, folder):
    root, source, book = project
    out = root / "_books" / "smoke" if folder == "default" else root / "custom"
    run_notebooks("smoke", source=source, output_dir=out, book=book, only="*0[12]_*", log=quiet)
    (problem,) = book_problems(out)
    advised = re.fullmatch(r"demo/03_ok: missing \(not executed\); run `(xaikit run [^`]*)`", problem).group(1)
    words = shlex.split(advised)
    assert words[words.index("--profile") + 1] == "smoke" and ("--output-dir" in words) == (folder == "custom")
    assert cli.main(words[1:]) == 0  # followed literally
    assert fake.calls[-1] == "demo/03_ok" and (out / "demo" / "03_ok.ipynb").is_file()
    assert not (book / "demo" / "03_ok.ipynb").exists()  # not into the demo book
    assert book_problems(out) == []


def test_builds_advice_for_a_folder_where_nothing_ran_names_the_folder_and_asks_for_the_profile(tmp_path):
    source, book = make_project(tmp_path)
    out = tmp_path / "copied"
    runner._copy_book_sources(book, out)
    assert book_problems(out, notebooks=source)[0] == (
        f"demo/01_ok: missing (not executed); run `xaikit run --profile PROFILE --only demo/01_ok --output-dir {out}` "
        "with PROFILE one of smoke, demo, paper")


@pytest.mark.parametrize("case", ["a folder", "under a file", "unwritable"])
def test_bench_checks_its_json_path_before_the_benchmark(tmp_path, monkeypatch, capsys, case):
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: pytest.fail("the benchmark ran before the path was checked"))
    (tmp_path / "a_file").write_text("")
    (tmp_path / "locked").mkdir()
    access = os.access  # root may write anywhere: the unwritable folder is simulated
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked" and access(path, mode))
    json_path, expected = {
        "a folder": (tmp_path, f"--json {tmp_path} is a folder; give a file name"),
        "under a file": (tmp_path / "a_file" / "bench.json", f"{tmp_path / 'a_file'} is a file, not a folder"),
        "unwritable": (tmp_path / "locked" / "bench.json", f"the folder {tmp_path / 'locked'} is not writable"),
    }[case]
    assert bench.main(["--model", "demo-shapes-vit", "--batch-size", "2", "--json", str(json_path)]) == 2
    assert expected in capsys.readouterr().err


def test_an_output_dir_naming_a_file_is_a_clear_error(project, fake, capsys):
    root, _, _ = project
    (root / "out.ipynb").write_text("{}")
    status, err = run_cli(["run", "--profile", "smoke", "--output-dir", "out.ipynb"], capsys)
    assert status == 2 and fake.calls == []
    assert f"--output-dir {root / 'out.ipynb'} is a file, not a folder; give a folder" in err
    assert "or leave out --output-dir" in err and (root / "out.ipynb").read_text() == "{}"


# --- the README's Python example -------------------------------------------------------------------


def trailing_comments(code: str) -> dict[int, str]:
    """line number -> the text of the comment ending that line."""
    return {token.start[0]: token.string.lstrip("# ").strip()
            for token in tokenize.generate_tokens(io.StringIO(code).readline) if token.type == tokenize.COMMENT}


#: comments of the example that state no output
NOT_OUTPUTS = {"any timm ViT name", "ViTA's astrocytes in block 0"}


def check_claim(comment: str, value, sizes: dict[str, int]) -> None:
    """Check what `comment` says `value` is: a shape ``(B, 3, H, W)`` (names are `sizes`) or a list
    ``['a', 'b', ..., 'z']: N methods`` (its first and last items and its length)."""
    shape = re.fullmatch(r"(?:[\w ]+ )?\(([\w, ]+)\)", comment)
    listing = re.fullmatch(r"(\[.*\])(?:: (\d+) \w+)?", comment)
    if shape:
        assert value.dim() == len(shape.group(1).split(",")), comment
        for size, name in zip(value.shape, (n.strip() for n in shape.group(1).split(","))):
            assert size == (int(name) if name.isdigit() else sizes[name]), (comment, name, size)
    elif listing:
        head, _, tail = listing.group(1).strip("[]").partition("...")
        first = [ast.literal_eval(item) for item in head.split(",") if item.strip()]
        last = [ast.literal_eval(item) for item in tail.split(",") if item.strip()]
        assert value[:len(first)] == first and (not last or value[-len(last):] == last), (comment, value)
        assert listing.group(2) is None or len(value) == int(listing.group(2)), (comment, len(value))
        assert "..." in listing.group(1) or value == first, (comment, value)
    else:
        assert comment in NOT_OUTPUTS, f"the README comment {comment!r} states no output this test can check"


def test_the_readmes_python_example_gives_the_outputs_its_comments_state(monkeypatch):
    """Run as written, with random weights (no hub) for the model it names, on two pictures of another size."""
    import PIL.Image
    import xaikit

    load_model = xaikit.load_model
    monkeypatch.setattr(xaikit, "load_model", lambda name: load_model(name, pretrained=False))
    rng = np.random.default_rng(0)
    pil_images = [PIL.Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)) for _ in range(2)]
    (example,) = readme_blocks("python")
    comments = trailing_comments(example)
    namespace = {"pil_images": pil_images}
    checked = 0
    for statement in ast.parse(example).body:
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), "README", "eval"), namespace)
        else:
            exec(compile(ast.Module([statement], []), "README", "exec"), namespace)
            value = namespace[statement.targets[0].id] if isinstance(statement, ast.Assign) else None
        if isinstance(statement, ast.With):  # the comment on the block's assignment states its value
            (inner,) = statement.body
            if inner.lineno in comments:
                embed = namespace["model"].patch_embed
                check_claim(comments[inner.lineno], namespace[inner.targets[0].id],
                            dict(zip(("B", "gh", "gw"), (len(pil_images), *embed.grid_size))))
                checked += 1
        if statement.lineno in comments:
            embed = namespace["model"].patch_embed  # the sizes the shapes name: the model's input and token grid
            sizes = dict(zip(("B", "H", "W", "gh", "gw"), (len(pil_images), *embed.img_size, *embed.grid_size)))
            check_claim(comments[statement.lineno], value, sizes)
            checked += comments[statement.lineno] not in NOT_OUTPUTS
    assert checked == 5  # the shapes of images, maps, pixels and the astrocytes' maps, and the list of methods
    assert namespace["images"].min() < 0  # "normalised": mean and std taken out, not pixels in [0, 1]


class WritesTables(FakePapermill):
    """The fake kernel also saves tables the way a notebook does (xaikit.report.save_table), before it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, str] = {}

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        import pandas as pd

        from xaikit.report import save_table

        for table, value in self.tables.items():
            save_table(pd.DataFrame({"method": ["gae"], "value": [value]}), table)
        super().__call__(input_path, output_path, parameters=parameters, **kwargs)


def test_a_failed_rerun_leaves_the_good_results_and_a_success_replaces_them_all(tmp_path, monkeypatch):
    fake = WritesTables()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    source, book = make_project(tmp_path, {"01_ok": "x = 1"})
    out = tmp_path / "out"
    results = out / "_run" / "results" / "demo"

    def tables() -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(results.glob("*"))}

    fake.tables = {"a": "good", "b": "good"}
    run_notebooks("smoke", source=source, output_dir=out, book=book, log=quiet)
    good = tables()
    assert sorted(good) == ["01_ok-a.csv", "01_ok-b.csv"] and all("good" in text for text in good.values())

    fake.tables, fake.fail["demo/01_ok"] = {"a": "half-done"}, ("ValueError", "boom")
    run_notebooks("smoke", source=source, output_dir=out, book=book, force=True, log=quiet)
    assert tables() == good  # the failed run neither overwrote nor deleted a good table
    assert "half-done" in (out / "_run" / "failed" / "results" / "demo" / "01_ok-a.csv").read_text()  # kept for reading

    del fake.fail["demo/01_ok"]
    fake.tables = {"a": "new"}
    run_notebooks("smoke", source=source, output_dir=out, book=book, force=True, log=quiet)
    assert list(tables()) == ["01_ok-a.csv"] and "new" in tables()["01_ok-a.csv"]  # b belonged to the older run
    assert not (out / "_run" / "failed" / "results" / "demo").exists() or not any((out / "_run" / "failed" / "results" / "demo").iterdir())
    assert not list((out / "_run" / "partial").glob("results-*"))
