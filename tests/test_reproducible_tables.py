"""Same inputs, same tables (issue 13): a reader re-running a page with the same parameters and seed gets
the same result CSVs, byte for byte on the CPU, and another seed gives other tables where the page samples.

The first smoke run of every notebook is `smoke_book` (tests/conftest.py), shared with test_notebooks.py;
this file adds one more run of every notebook with the same parameters and one run of each notebook that
takes a seed with that seed changed. Measurements of time are not results: pages write them with
`xaikit.report.save_timings` to ``_run/timings/``, outside the compared ``_run/results/``.
"""

import difflib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import papermill
import pytest
import torch

from xaikit.report import save_table, save_timings
from xaikit.runner import NOTEBOOKS, notebooks_in_book_order, run_notebook

NOTEBOOK_NAMES = notebooks_in_book_order()


def seed_parameters(name: str) -> dict[str, int]:
    """The notebook's seed parameters (`seed`, `image_seed`, ...), each set to its default + 1."""
    parameters = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    return {key: int(p["default"]) + 1 for key, p in parameters.items() if key == "seed" or key.endswith("_seed")}


SEEDED = {name: changed for name in NOTEBOOK_NAMES if (changed := seed_parameters(name))}


def result_csvs(output: Path, name: str) -> dict[str, bytes]:
    """The result CSVs notebook `name` wrote under `output`, by file name."""
    chapter, notebook = name.split("/")
    folder = output / "_run" / "results" / chapter
    return {path.name: path.read_bytes() for path in sorted(folder.glob(f"{notebook}*.csv"))
            if path.stem == notebook or path.stem.startswith(f"{notebook}-")}


def first_difference(first: bytes, second: bytes) -> str:
    diff = difflib.unified_diff(first.decode().splitlines(), second.decode().splitlines(), "first run", "second run", n=0, lineterm="")
    return "\n".join(line[:300] for line in list(diff)[:8])


def check_ran(runs, names) -> None:
    failures = {run.notebook: run.error[-2000:] for run in runs if not run.ok}
    assert failures == {}
    assert sorted(run.notebook for run in runs) == sorted(names)


@pytest.fixture(scope="module")
def first_run(smoke_book):
    work, runs, _, _ = smoke_book
    check_ran(runs, NOTEBOOK_NAMES)
    return work / "book"


@pytest.fixture(scope="module")
def later_runs(smoke_book, tmp_path_factory):
    """Every notebook again with the same (default) parameters ("same"), and each notebook with a seed
    parameter with that seed changed ("other seed"): {kind: {notebook: its output folder}}.

    The runs are independent, so they share the cores, the longest first (a page is mostly one busy
    thread, and two at once take about half the time of one after the other); each run has its own
    output folder, as two runs must not write one run record at the same time.
    """
    work = tmp_path_factory.mktemp("smoke-later")
    jobs = [("same", name, {}) for name in NOTEBOOK_NAMES] + [("other seed", name, changed) for name, changed in SEEDED.items()]
    first_seconds = {run.notebook: run.seconds for run in smoke_book[1]}
    jobs.sort(key=lambda job: -first_seconds.get(job[1], 0.0))
    outputs = {kind: {} for kind in ("same", "other seed")}
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1), mp_context=spawn) as pool:
        futures = []
        for index, (kind, name, parameters) in enumerate(jobs):
            outputs[kind][name] = work / f"{index:02d}" / "book"
            futures.append(pool.submit(run_notebook, name, "smoke", output_dir=outputs[kind][name], parameters=parameters))
        runs = [future.result() for future in futures]
    check_ran(runs, [name for _, name, _ in jobs])
    return outputs


def test_the_notebooks_that_sample_take_a_seed():
    """The seed test below is not empty: the pages that draw images say which draw with a seed parameter."""
    assert {"cdam/02_correctness", "cdam/03_class_discrimination", "tokentm/03_perturbation", "tokentm/01_maps"} <= set(SEEDED)


def test_the_pages_write_their_time_measurements_as_timings(first_run):
    """The speed and time tables (the grid search's settings x images per second too, the benchmark's cost and
    time per protocol) and the probe's training seconds are measured, so kept out of the results."""
    timings = sorted(p.relative_to(first_run / "_run" / "timings").as_posix() for p in (first_run / "_run" / "timings").rglob("*.csv"))
    assert timings == ["benchmark/01_benchmark-agreement-cost.csv", "benchmark/01_benchmark-cost.csv",
                       "benchmark/01_benchmark-time-per-protocol.csv", "cdam/00_linear_probe-history.csv", "foundations/03_attention_maps-speed.csv", "foundations/04_methods-costs.csv",
                       "tokentm/02_segmentation-time.csv", "vita/02_grid_search-speed.csv"]
    assert "train_seconds" not in pd.read_csv(first_run / "_run" / "results" / "cdam" / "00_linear_probe-history.csv").columns


@pytest.mark.skipif(torch.cuda.is_available(), reason="byte-for-byte equality is promised on the CPU")
@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_the_same_parameters_write_the_same_result_csvs(name, first_run, later_runs):
    first, second = result_csvs(first_run, name), result_csvs(later_runs["same"][name], name)
    assert first, f"{name} wrote no result CSV"
    assert sorted(second) == sorted(first)
    differing = {table: first_difference(first[table], second[table]) for table in first if first[table] != second[table]}
    assert differing == {}, "\n".join(f"{table}:\n{diff}" for table, diff in differing.items())


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_another_seed_writes_other_result_csvs(name, first_run, later_runs):
    first, other = result_csvs(first_run, name), result_csvs(later_runs["other seed"][name], name)
    assert first and other, f"{name} wrote no result CSV"
    assert [table for table in first if other.get(table) != first[table]], \
        f"{name}: {SEEDED[name]} changed none of its result CSVs ({sorted(first)})"


def test_timings_go_to_their_own_folder_beside_the_results(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(tmp_path / "_run"))
    monkeypatch.setenv("XAIKIT_NOTEBOOK", "foundations/03_attention_maps")
    speed = pd.DataFrame({"images / s": [212.9]}, index=pd.Index(["rollout"], name="method"))
    path = save_timings(speed, "speed")
    assert path == tmp_path / "_run" / "timings" / "foundations" / "03_attention_maps-speed.csv"
    assert pd.read_csv(path).to_dict("list") == {"method": ["rollout"], "images / s": [212.9]}
    assert save_table(speed, "speed") == tmp_path / "_run" / "results" / "foundations" / "03_attention_maps-speed.csv"
