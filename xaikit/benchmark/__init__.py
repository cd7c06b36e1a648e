"""One benchmark across the three papers: every method under every protocol its data allows, with and without
ViTA's astrocytic layer, on a resumable results ledger (`xaikit.ledger`) that runs locally or on a Ray cluster.

``run_benchmark(profile, out)`` plans the units (`units.plan`), computes the missing ones (`Ledger.run`) and
returns the ledger's long table; `summary` turns it into the summary table, the rank heat map and the agreement
between protocols. The command line: ``xaikit benchmark --profile demo --out DIR``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import InvalidParameterError, XaikitError
from ..ledger import EXECUTORS, Ledger, RunReport
from .units import DEFAULT_ASTROCYTES, PROFILES, Profile, RunContext, get_profile, higher_is_better, plan, run_unit

ASTROCYTE_FIELDS = ("k", "tau", "phi", "alpha", "beta")


@dataclass
class BenchmarkRun:
    """A finished (or stopped) benchmark run: its ledger, the run report and the table of the units planned."""

    ledger: Ledger
    report: RunReport
    table: pd.DataFrame
    profile: Profile
    astrocytes: dict | None
    astrocytes_source: str
    units: list = field(default_factory=list)


def vita_chapter_astrocytes(results: str | Path | None = None) -> tuple[dict, str]:
    """The astrocyte setting the ViTA chapter found best, and where it comes from.

    Reads ViTA 2's table of the best setting per CAM method and metric (``vita/02_grid_search-best.csv`` under
    the results folder, default ``<run folder>/results``, where `xaikit run` keeps every page's finished results) and takes the setting best for the most pairs
    (the first such row on a tie). Without that file: `DEFAULT_ASTROCYTES`, the setting ViTA 1 shows."""
    from ..report import run_dir

    path = Path(results) if results is not None else run_dir() / "results"
    path = path / "vita" / "02_grid_search-best.csv" if path.is_dir() else path
    if not path.is_file():
        return dict(DEFAULT_ASTROCYTES), "the setting ViTA 1 shows (no ViTA grid search results found)"
    best = pd.read_csv(path)
    settings = best[list(ASTROCYTE_FIELDS)].astype(str).agg(",".join, axis=1)
    counts = settings.value_counts(sort=False)
    chosen = best.loc[settings == counts.idxmax()].iloc[0]
    value = {name: (int(chosen[name]) if name == "k" else float(chosen[name])) for name in ASTROCYTE_FIELDS}
    return value, (f"the ViTA chapter's grid search: the setting best for {counts.max()} of its {len(best)} pairs of CAM "
                   "method and metric")


def run_benchmark(
    profile: str | Profile,
    out: str | Path,
    *,
    methods: Sequence[str] | str | None = None,
    protocols: Sequence[str] | str | None = None,
    astrocytes: Mapping | str | None = "vita",
    executor: str = "local",
    address: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> BenchmarkRun:
    """Run the benchmark of `profile` ("smoke", "demo", "paper", or a `Profile`) into the ledger at `out`.

    `astrocytes`: "vita" (the ViTA chapter's best setting, `vita_chapter_astrocytes`), "vita1" (the setting ViTA 1
    shows, whatever the chapter found), a dict of settings, or None (no astrocyte rows). Only the units missing
    from the ledger are computed; the returned table holds every unit of this plan that has a result."""
    import torch

    profile = get_profile(profile) if isinstance(profile, str) else profile
    if astrocytes == "vita":
        astrocytes, source = vita_chapter_astrocytes()
    elif astrocytes == "vita1":
        astrocytes, source = dict(DEFAULT_ASTROCYTES), "the setting ViTA 1 shows"
    elif isinstance(astrocytes, str):
        raise InvalidParameterError(f"astrocytes={astrocytes!r} is not known: give 'vita' (the ViTA chapter's best "
                                    "setting), 'vita1' (ViTA 1's setting), a dict of k, tau, phi, alpha, beta, or None")
    else:
        source = "given" if astrocytes else "none (astrocytes off)"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ledger = Ledger(out)
    units = plan(profile, ledger, methods=methods, protocols=protocols, astrocytes=astrocytes, device="cpu")
    context = RunContext(profile.tracks, profile.batch_size, device)
    report = ledger.run(units, run_unit, context, executor=executor, address=address, progress=progress,
                        description=f"benchmark ({profile.name})")
    return BenchmarkRun(ledger, report, ledger.table(units), profile, astrocytes, source, units)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES), help="smoke | demo | paper (default demo)")
    parser.add_argument("--methods", default="all", help="comma-separated registry names (default all)")
    parser.add_argument("--protocols", default="all", help="comma-separated protocol names (default all)")
    parser.add_argument("--executor", default="local", choices=EXECUTORS, help="local (default) or ray")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto': the running cluster this machine joined); default: a local one")
    parser.add_argument("--no-astrocytes", action="store_true", help="leave out the rows with ViTA's astrocytic layer")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the results ledger folder (resumed when it exists)")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        run = run_benchmark(args.profile, args.out, methods=args.methods, protocols=args.protocols,
                            astrocytes=None if args.no_astrocytes else "vita", executor=args.executor,
                            address=args.address, device=args.device, progress=True)
    except XaikitError as err:
        print(f"xaikit benchmark: {err}", file=sys.stderr)
        return 2
    print(run.report.summary())
    print(f"astrocytes: {run.astrocytes} ({run.astrocytes_source})" if run.astrocytes else "astrocytes: off")
    print(f"ledger: {run.ledger.root} ({len(run.table)} rows); Ledger('{run.ledger.root}').table() reads them")
    if run.report.interrupted:
        return 130
    return 1 if run.report.failed else 0


__all__ = ["BenchmarkRun", "higher_is_better", "run_benchmark", "vita_chapter_astrocytes"]
