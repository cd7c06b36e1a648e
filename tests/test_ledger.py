"""The results ledger: keys, atomic unit files, resuming, failures, the local and the Ray executors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaikit import __version__
from xaikit.errors import InvalidParameterError
from xaikit.ledger import Ledger, LedgerError, Unit, shards, unit_key, xaikit_version


def square_work(spec: dict, calls_dir) -> pd.DataFrame:
    """A unit's work: the squares of its numbers; leaves one file per call so tests count the calls."""
    if calls_dir is not None:
        Path(calls_dir, f"{spec['n']}-{np.random.randint(1 << 30)}").touch()
    if spec.get("fail"):
        raise ValueError(f"unit {spec['n']} is told to fail")
    values = np.arange(spec["n"], spec["n"] + 3, dtype=float)
    return pd.DataFrame({"image": [f"i{int(v)}" for v in values], "metric": "square", "value": values**2})


def calls(folder: Path) -> list[int]:
    return sorted(int(path.name.split("-")[0]) for path in folder.iterdir())


def test_the_key_is_the_hash_of_the_canonical_specification():
    assert unit_key({"a": 1, "b": [1, 2]}) == unit_key({"b": (1, 2), "a": 1})
    assert unit_key({"a": 1}) != unit_key({"a": 2})
    assert len(unit_key({"a": 1})) == 24
    assert Unit({"b": (1, 2), "a": np.int64(1)}).spec == {"a": 1, "b": [1, 2]}


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {1: "not text"}])
def test_a_specification_json_cannot_hold_exactly_is_refused(bad):
    with pytest.raises(LedgerError, match="specification"):
        Unit(bad)


def test_a_ledger_unit_carries_the_xaikit_version(tmp_path):
    unit = Ledger(tmp_path).unit(method="cdam")
    assert unit.spec["method"] == "cdam" and unit.spec["xaikit_version"].startswith(f"{__version__}+src.")
    assert unit.spec["xaikit_version"] == xaikit_version() and len(unit.spec) == 2


def test_write_is_atomic_and_table_merges_units_with_their_specification(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    first, second = Unit({"n": 1, "settings": {"k": 2}}), Unit({"n": 2, "settings": {"k": 3}})
    ledger.write(first, square_work(first.spec, None))
    ledger.write(second, square_work(second.spec, None))
    assert sorted(p.name for p in (tmp_path / "ledger" / "units").iterdir()) == sorted(
        [f"{first.key}.parquet", f"{first.key}.json", f"{second.key}.parquet", f"{second.key}.json"]
    )  # no temporary file left behind
    table = ledger.table()
    assert len(table) == 6
    assert set(table.columns) == {"image", "metric", "value", "n", "settings", "key"}
    one = table[table.key == first.key]
    assert one.value.tolist() == [1.0, 4.0, 9.0] and set(one.settings) == {'{"k":2}'}
    assert ledger.table(n=2).value.tolist() == [4.0, 9.0, 16.0]
    assert ledger.table([second]).key.unique().tolist() == [second.key]
    assert json.loads((tmp_path / "ledger" / "units" / f"{first.key}.json").read_text()) == first.spec


def test_a_result_that_is_not_a_table_or_repeats_a_field_is_refused(tmp_path):
    ledger, unit = Ledger(tmp_path), Unit({"n": 1})
    with pytest.raises(LedgerError, match="must return a pandas DataFrame"):
        ledger.write(unit, [1, 2])
    with pytest.raises(LedgerError, match="repeat the specification"):
        ledger.write(unit, pd.DataFrame({"n": [1]}))
    assert not ledger.done(unit)


def test_a_rerun_computes_only_the_units_without_a_file(tmp_path):
    ledger, called = Ledger(tmp_path / "ledger"), tmp_path / "calls"
    called.mkdir()
    units = [Unit({"n": n}) for n in range(4)]
    first = ledger.run(units[:2], square_work, called, progress=False)
    assert (first.computed, first.skipped, first.failed) == (2, 0, [])
    second = ledger.run(units + [units[0]], square_work, called, progress=False)  # a repeated unit counts once
    assert (second.total, second.computed, second.skipped) == (4, 2, 2)
    assert calls(called) == [0, 1, 2, 3]
    assert len(ledger.table()) == 12
    timings = ledger.timings()
    assert sorted(timings.n) == [0, 1, 2, 3] and (timings.seconds > 0).all() and (timings.host != "").all()


def test_a_failed_unit_is_recorded_and_tried_again_on_the_next_run(tmp_path):
    ledger = Ledger(tmp_path)
    good, bad = Unit({"n": 1}), Unit({"n": 2, "fail": True})
    report = ledger.run([good, bad], square_work, progress=False)
    assert report.computed == 1 and [key for key, _ in report.failed] == [bad.key]
    assert "told to fail" in report.failed[0][1] and "failed units are recorded" in report.summary()
    [record] = ledger.failures()
    assert record["key"] == bad.key and record["error"] == "ValueError" and "square_work" in record["traceback"]
    # the next run tries it again; once it succeeds its failure record is gone
    ledger.write(bad, pd.DataFrame({"image": ["x"], "metric": ["m"], "value": [0.0]}))
    assert ledger.failures() == [] and not (tmp_path / "failed" / f"{bad.key}.json").exists()


def test_an_interrupted_run_keeps_what_finished_and_the_next_run_resumes(tmp_path, monkeypatch):
    ledger, called = Ledger(tmp_path / "ledger"), tmp_path / "calls"
    called.mkdir()
    units = [Unit({"n": n}) for n in range(5)]

    def interrupted_at_2(spec, context):
        if spec["n"] == 2:
            raise KeyboardInterrupt
        return square_work(spec, context)

    report = ledger.run(units, interrupted_at_2, called, progress=False)
    assert report.interrupted and report.computed == 2 and report.remaining == 3
    assert "run again" in report.summary()
    resumed = ledger.run(units, square_work, called, progress=False)
    assert (resumed.computed, resumed.skipped) == (3, 2)
    assert calls(called) == [0, 1, 2, 3, 4]


def test_bad_run_settings_name_the_fix(tmp_path):
    ledger = Ledger(tmp_path)
    with pytest.raises(InvalidParameterError, match="valid executors are local, ray"):
        ledger.run([], square_work, executor="dask")
    with pytest.raises(InvalidParameterError, match="executor='ray'"):
        ledger.run([], square_work, address="auto")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LedgerError, match="is a file"):
        Ledger(tmp_path / "file")


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    report_or_error = None
    with pytest.raises(LedgerError, match=r"pip install 'xaikit\[ray\]'"):
        report_or_error = Ledger(tmp_path).run([Unit({"n": 1})], square_work, executor="ray", progress=False)
    assert report_or_error is None


def test_shards_cut_ids_in_order():
    assert shards(range(5), 2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(InvalidParameterError, match="positive integer"):
        shards([1], 0)


# -- the Ray executor, on the two-CPU cluster the test session starts --------------------------------


def test_the_ray_executor_gives_the_local_table_and_records_failures(ray_cluster, tmp_path):
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    units = [Unit({"n": n}) for n in range(4)]
    local, on_ray = Ledger(tmp_path / "local"), Ledger(tmp_path / "ray")
    local.run(units, square_work, progress=False)
    report = on_ray.run(units + [Unit({"n": 9, "fail": True})], square_work, executor="ray", progress=False)
    assert report.computed == 4 and len(report.failed) == 1
    [record] = on_ray.failures()
    assert record["error"] == "ValueError" and "Ray worker" in record["traceback"]
    columns = ["key", "image", "metric", "value"]
    pd.testing.assert_frame_equal(
        local.table().sort_values(columns)[columns].reset_index(drop=True),
        on_ray.table().sort_values(columns)[columns].reset_index(drop=True),
    )


def test_a_ray_run_stopped_halfway_recomputes_only_the_missing_units(ray_cluster, tmp_path, monkeypatch):
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ledger, called = Ledger(tmp_path / "ledger"), tmp_path / "calls"
    called.mkdir()
    units = [Unit({"n": n}) for n in range(6)]
    real_wait, waits = ray_cluster.wait, []

    def wait_then_ctrl_c(*args, **kwargs):  # Ctrl-C at the driver after three units came back
        waits.append(1)
        if len(waits) > 3:
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray_cluster, "wait", wait_then_ctrl_c)
    stopped = ledger.run(units, square_work, called, executor="ray", progress=False, max_in_flight=1)
    monkeypatch.setattr(ray_cluster, "wait", real_wait)
    assert stopped.interrupted and stopped.computed == 3
    finished_first = {ledger.spec(key)["n"] for key in ledger.keys()}
    assert finished_first == {0, 1, 2}
    resumed = ledger.run(units, square_work, called, executor="ray", progress=False)
    assert (resumed.computed, resumed.skipped) == (3, 3)
    assert set(ledger.keys()) == {unit.key for unit in units}
    # the units finished before the stop ran once; only the missing ones ran again (the one cancelled in
    # flight may have started before the stop)
    assert [calls(called).count(n) for n in (0, 1, 2)] == [1, 1, 1]
    assert {3, 4, 5} <= set(calls(called))
