"""A resumable results ledger: independent units of work, each written to disk as one Parquet file.

A *unit* is one combination of settings (model, image set, method, protocol, astrocytes on or off, a shard of
images, ...) given as a JSON-serialisable *specification*; its key is a hash of that specification, so the
same work always lands in the same file and changed settings never overwrite old results (HELM's "runs as
independent units written to disk, merged by a summary step").

* `Ledger.run` computes only the units without a file: an interrupted run loses at most the units in flight,
  a failed unit is recorded (``failed/<key>.json``: its exception and traceback) and tried again next time.
* Each unit's rows go to ``units/<key>.parquet`` with the specification beside it (``units/<key>.json``),
  both written atomically (a temporary file renamed into place), the Parquet file last: it marks the unit done.
* `Ledger.table` merges every unit into one long DataFrame, the specification's fields as columns.

Executors: ``local`` (in this process, the default) and ``ray`` (one Ray task per unit, one GPU per task
where the cluster has GPUs; ``address="auto"`` joins a running cluster). With Ray the driver, this process,
writes every file: the workers only compute, so the cluster needs no shared file system.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import InvalidParameterError, XaikitError
from .fileio import atomic_write

EXECUTORS = ("local", "ray")
KEY_LENGTH = 24
RAY_INSTALL = "pip install 'xaikit[ray]' (or: pip install 'ray>=2.9')"

Work = Callable[[dict, object], pd.DataFrame]


class LedgerError(XaikitError, RuntimeError):
    """A ledger folder, a unit's specification or a unit's result is not usable."""


def _check_json(value, where: str):
    """The value with tuples as lists; refuses what JSON cannot hold exactly (NaN, objects, non-text keys)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LedgerError(f"{where} is {value}: a unit's specification holds finite numbers only; use None for 'not set'")
        return float(value)
    if isinstance(value, Mapping):
        for name in value:
            if not isinstance(name, str):
                raise LedgerError(f"{where} has the key {name!r}: specification keys must be text")
        return {name: _check_json(item, f"{where}.{name}") for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_check_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        return _check_json(value.item(), where)
    raise LedgerError(
        f"{where} is a {type(value).__name__}: a unit's specification holds only text, numbers, booleans, None, "
        "lists and dicts (describe a model by its name and weights hash, images by their ids)"
    )


def canonical_json(spec: Mapping) -> str:
    """The one text of a specification: sorted keys, no spaces, tuples as lists."""
    return json.dumps(_check_json(dict(spec), "spec"), sort_keys=True, separators=(",", ":"), allow_nan=False)


def unit_key(spec: Mapping) -> str:
    """The unit's key: the first 24 hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Unit:
    """One unit of work: its specification and the key that names its file."""

    spec: dict
    key: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, Mapping):
            raise LedgerError(f"a unit's specification is a dict; got {type(self.spec).__name__}")
        object.__setattr__(self, "spec", json.loads(canonical_json(self.spec)))
        object.__setattr__(self, "key", unit_key(self.spec))


@dataclass
class RunReport:
    """What `Ledger.run` did: units computed now, found finished, failed (key, error), and whether it was stopped."""

    total: int
    computed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    executor: str = "local"

    @property
    def remaining(self) -> int:
        return self.total - self.computed - self.skipped

    def summary(self) -> str:
        text = (
            f"{self.total} units: {self.computed} computed now, {self.skipped} already in the ledger, "
            f"{len(self.failed)} failed ({self.executor} executor, {self.seconds:.1f} s)"
        )
        if self.interrupted:
            text += f"; stopped early: {self.remaining} units left, run again to compute them"
        elif self.failed:
            text += "; failed units are recorded under failed/ and tried again on the next run"
        return text


@functools.lru_cache(maxsize=1)
def xaikit_version() -> str:
    """The release and a hash of the package's sources (``0.1.0+src.<12 hex>``): a changed method between two
    releases never reuses the results of the old code."""
    from . import __version__
    from .runner import package_hash

    return f"{__version__}+src.{package_hash()[:12]}"


def _units(units: Iterable[Unit | Mapping]) -> list[Unit]:
    """Units in order, each once (the same specification twice is one unit)."""
    seen: dict[str, Unit] = {}
    for unit in units:
        unit = unit if isinstance(unit, Unit) else Unit(unit)
        seen.setdefault(unit.key, unit)
    return list(seen.values())


def _spec_columns(spec: Mapping) -> dict:
    """The specification's fields as table cells: scalars as they are, lists and dicts as canonical JSON text."""
    return {
        name: json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, (dict, list)) else value
        for name, value in spec.items()
    }


def _error_record(unit: Unit, error: BaseException) -> dict:
    return {
        "key": unit.key, "spec": unit.spec, "error": type(error).__name__, "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _call_work(work: Work, spec: dict, context) -> pd.DataFrame:
    """Run one unit, timing it where it runs (module level, so Ray can send it to any worker): the seconds and
    the machine go into the result's ``attrs``, which the Parquet file keeps (`Ledger.timings`)."""
    start = time.perf_counter()
    frame = work(spec, context)
    if isinstance(frame, pd.DataFrame):
        frame.attrs.update(seconds=time.perf_counter() - start, host=socket.gethostname())
    return frame


def _ray_result(ray, ref) -> pd.DataFrame:
    """The task's DataFrame; a task's error re-raised as the worker's own exception, its traceback as a note."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if not isinstance(cause, Exception):
            raise
        cause.add_note(f"raised on a Ray worker:\n{getattr(err, 'traceback_str', '')}")
        raise cause from None


def import_ray():
    """Ray, or an error saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise LedgerError(f"the 'ray' executor needs Ray, which is not installed: {RAY_INSTALL}; "
                          "or use the 'local' executor") from err
    return ray


class Ledger:
    """The results of units of work under one folder; see the module's docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise LedgerError(f"the ledger folder {self.root} is a file; give a folder (it is created when missing)")
        self.units_dir = self.root / "units"
        self.failed_dir = self.root / "failed"

    def __repr__(self) -> str:
        return f"Ledger({str(self.root)!r})"

    # -- units ---------------------------------------------------------------------------------------

    def unit(self, **spec) -> Unit:
        """A unit of this specification, with the xaikit version added (results of another version are other units)."""
        return Unit({**spec, "xaikit_version": xaikit_version()})

    def result_path(self, unit: Unit | str) -> Path:
        return self.units_dir / f"{unit if isinstance(unit, str) else unit.key}.parquet"

    def done(self, unit: Unit | str) -> bool:
        return self.result_path(unit).is_file()

    def pending(self, units: Iterable[Unit | Mapping]) -> list[Unit]:
        """The units without a result file, in order."""
        return [unit for unit in _units(units) if not self.done(unit)]

    def write(self, unit: Unit, frame: pd.DataFrame) -> Path:
        """Write one unit's rows (and its specification beside them), atomically; clears its failure record."""
        if not isinstance(frame, pd.DataFrame):
            raise LedgerError(f"unit {unit.key}: the work returned a {type(frame).__name__}; it must return a pandas DataFrame")
        clash = sorted(set(frame.columns) & (set(unit.spec) | {"key"}))
        if clash:
            raise LedgerError(f"unit {unit.key}: the result's columns {clash} repeat the specification's fields; rename them")
        with atomic_write(self.units_dir / f"{unit.key}.json", "w") as handle:
            handle.write(json.dumps(unit.spec, indent=1, sort_keys=True) + "\n")
        path = self.result_path(unit)
        with atomic_write(path, "wb") as handle:
            frame.to_parquet(handle, index=False)
        (self.failed_dir / f"{unit.key}.json").unlink(missing_ok=True)
        return path

    def record_failure(self, unit: Unit, error: BaseException) -> Path:
        """Record a unit's exception (a finished result, if any, is left as it is)."""
        path = self.failed_dir / f"{unit.key}.json"
        with atomic_write(path, "w") as handle:
            handle.write(json.dumps(_error_record(unit, error), indent=1, default=str) + "\n")
        return path

    def failures(self) -> list[dict]:
        """The failure records of units that have no result yet."""
        if not self.failed_dir.is_dir():
            return []
        records = [json.loads(path.read_text()) for path in sorted(self.failed_dir.glob("*.json"))]
        return [record for record in records if not self.done(record["key"])]

    def spec(self, key: str) -> dict:
        path = self.units_dir / f"{key}.json"
        if not path.is_file():
            raise LedgerError(f"unit {key} has a result but no specification {path}: the ledger was edited by hand; "
                              f"delete {self.result_path(key)} and run again")
        return json.loads(path.read_text())

    def keys(self) -> list[str]:
        """The keys of every finished unit."""
        if not self.units_dir.is_dir():
            return []
        return sorted(path.stem for path in self.units_dir.glob("*.parquet"))

    def table(self, units: Iterable[Unit | Mapping] | None = None, **match) -> pd.DataFrame:
        """Every finished unit's rows with its specification's fields as columns (lists and dicts as JSON text)
        and ``key``; only `units` when given (those without a result are left out), only the units whose
        specification has the given field values (``table(protocol="segmentation")``)."""
        keys = self.keys() if units is None else [unit.key for unit in _units(units) if self.done(unit)]
        frames = []
        for key in keys:
            spec = self.spec(key)
            if any(spec.get(name) != value for name, value in match.items()):
                continue
            frame = pd.read_parquet(self.result_path(key))
            for name, value in {**_spec_columns(spec), "key": key}.items():
                frame[name] = value
            frames.append(frame)
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def timings(self, units: Iterable[Unit | Mapping] | None = None) -> pd.DataFrame:
        """One row per finished unit: its key, the seconds its work took where it ran, the machine, and its
        specification's fields (lists and dicts as JSON text)."""
        keys = self.keys() if units is None else [unit.key for unit in _units(units) if self.done(unit)]
        rows = []
        for key in keys:
            import pyarrow.parquet as pq

            metadata = pq.read_schema(self.result_path(key)).metadata or {}
            attrs = json.loads(metadata.get(b"PANDAS_ATTRS", b"{}"))
            rows.append({"key": key, "seconds": attrs.get("seconds", math.nan), "host": attrs.get("host", ""),
                         **_spec_columns(self.spec(key))})
        return pd.DataFrame(rows)

    # -- running ---------------------------------------------------------------------------------------

    def run(
        self,
        units: Iterable[Unit | Mapping],
        work: Work,
        context=None,
        *,
        executor: str = "local",
        address: str | None = None,
        progress: bool = True,
        max_in_flight: int | None = None,
        gpus_per_task: float | None = None,
        description: str = "units",
    ) -> RunReport:
        """Compute the units without a result: ``work(spec, context)`` returns each unit's DataFrame.

        `work` must be a module-level function (Ray sends it to the workers); `context` is anything picklable
        every unit shares (Ray puts it once into the object store). ``executor="ray"`` runs each unit as a Ray
        task: on the cluster at `address` (``"auto"``: the running cluster this machine belongs to), or on a
        local one started for this run when Ray is not yet initialised; one GPU per task where the cluster has
        GPUs (`gpus_per_task` overrides). A unit that raises is recorded under ``failed/`` and left for the
        next run; Ctrl-C stops the run after writing what has finished (``interrupted`` in the report).
        A progress bar with the time left shows when `progress` is true.
        """
        if executor not in EXECUTORS:
            raise InvalidParameterError(f"unknown executor {executor!r}; valid executors are {', '.join(EXECUTORS)}")
        if address is not None and executor != "ray":
            raise InvalidParameterError(f"address={address!r} is for the 'ray' executor; add executor='ray' or drop the address")
        if not callable(work):
            raise InvalidParameterError(f"work must be a function work(spec, context) -> DataFrame; got {type(work).__name__}")
        units = _units(units)
        todo = self.pending(units)
        report = RunReport(total=len(units), skipped=len(units) - len(todo), executor=executor)
        start = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=description, unit="unit", disable=not progress or not todo, dynamic_ncols=True)
        try:
            if executor == "local":
                for unit in todo:
                    self._finish(unit, report, lambda unit=unit: _call_work(work, unit.spec, context))
                    bar.update()
            elif todo:
                self._run_ray(todo, work, context, report, bar, address, max_in_flight, gpus_per_task)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            bar.close()
            report.seconds = time.perf_counter() - start
        return report

    def _finish(self, unit: Unit, report: RunReport, result: Callable[[], pd.DataFrame]) -> None:
        """Write the unit's result, or record why there is none."""
        try:
            self.write(unit, result())
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - every failure is recorded and retried, none stops the run
            self.record_failure(unit, error)
            report.failed.append((unit.key, f"{type(error).__name__}: {error}"))
        else:
            report.computed += 1

    def _run_ray(self, todo, work, context, report, bar, address, max_in_flight, gpus_per_task) -> None:
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
        try:
            resources = ray.cluster_resources()
            if gpus_per_task is None:
                gpus_per_task = 1 if resources.get("GPU", 0) >= 1 else 0
            limit = max_in_flight or max(2, 2 * int(resources.get("GPU", 0) or resources.get("CPU", 1)))
            task = ray.remote(_call_work).options(num_gpus=gpus_per_task, max_retries=0)
            work_ref, context_ref = ray.put(work), ray.put(context)
            queue = list(reversed(todo))
            in_flight: dict = {}
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < limit:
                        unit = queue.pop()
                        in_flight[task.remote(work_ref, unit.spec, context_ref)] = unit
                    ready, _ = ray.wait(list(in_flight), num_returns=1)
                    for ref in ready:
                        self._finish(in_flight.pop(ref), report, lambda ref=ref: _ray_result(ray, ref))
                        bar.update()
            except KeyboardInterrupt:
                for ref in in_flight:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started_here:
                ray.shutdown()


def shards(ids: Sequence, size: int) -> list[list]:
    """`ids` cut into consecutive shards of `size` (the last may be shorter)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InvalidParameterError(f"shard size must be a positive integer; got {size!r}")
    ids = list(ids)
    return [ids[start:start + size] for start in range(0, len(ids), size)]
