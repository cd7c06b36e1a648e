"""Reading the benchmark: who wins each score column, what the astrocytic layer changes, and each paper's claim
judged across the whole benchmark (`xaikit.verdicts`, paired over the same images).

Every function reads the oriented per-image scores of `summary.oriented_scores` (higher is better everywhere):
rows (method, astrocytes, image), columns (model, dataset, protocol, metric).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import verdicts
from ..errors import InvalidParameterError
from ..stats import format_interval, paired_comparison
from .summary import row_label

FLOORS = ("random", "centre_prior")  #: reference maps that are not methods: a method should beat them
CDAM_VARIANTS = ("cdam", "smooth_cdam", "integrated_cdam")
VITA_METHODS = ("gradcam", "gradcam_pp")  #: the CAM methods ViTA's claim is about
COST_PROTOCOLS = ("cost",)  #: what a method costs, not how well it explains: in no claim


def column_label(column: tuple) -> str:
    """``"perturbation / positive_auc_predicted (demo-cifar10-vit, cifar10-test)"``."""
    model, dataset, protocol, metric = column
    return f"{protocol} / {metric} ({model}, {dataset})"


def column_scores(oriented: pd.DataFrame, column: tuple, astrocytes: str = "off") -> pd.DataFrame:
    """Images x methods of one score column, for one astrocyte setting ("off" or its JSON text); only the
    images every method present scored."""
    values = oriented[column].xs(astrocytes, level="astrocytes").unstack("method")
    values = values.dropna(axis=1, how="all").dropna(axis=0, how="any")
    return values


def quality_columns(oriented: pd.DataFrame) -> list[tuple]:
    """Score columns that measure an explanation (every column but the cost)."""
    return [column for column in oriented.columns if column[2] not in COST_PROTOCOLS]


def winners(summary: pd.DataFrame) -> pd.DataFrame:
    """Per score column: the best row by mean and every row whose 95 % rank interval reaches rank 1 (tied for
    first: the data cannot separate them from the best)."""
    rows = []
    columns = summary.columns.droplevel("statistic").unique()
    for column in columns:
        if column[3] == "mean rank" or column[2] in COST_PROTOCOLS:
            continue
        part = summary[column]
        present = part.dropna(subset=["rank"])
        if present.empty:
            continue
        best = present["rank"].idxmin()
        tied = present.index[present["rank_low"] <= 1]
        rows.append({"model": column[0], "dataset": column[1], "protocol": column[2], "metric": column[3],
                     "best": row_label(*best), "tied for first": ", ".join(row_label(*row) for row in tied),
                     "n tied": len(tied), "n rows": len(present)})
    return pd.DataFrame(rows)


def _astrocyte_setting(oriented: pd.DataFrame) -> str | None:
    """The one astrocyte setting of the table besides "off" (None: no rows with the layer)."""
    settings = [value for value in oriented.index.get_level_values("astrocytes").unique() if value != "off"]
    if len(settings) > 1:
        raise InvalidParameterError(f"the table holds {len(settings)} astrocyte settings; give the rows of one setting")
    return settings[0] if settings else None


def astrocyte_effects(oriented: pd.DataFrame, *, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method and score column: the paired change of the oriented score from the plain model to the model
    with the astrocytic layer, with its 95 % bootstrap interval, and the outcome: "better", "worse" (interval
    wholly on one side of 0) or "indistinguishable"."""
    setting = _astrocyte_setting(oriented)
    if setting is None:
        return pd.DataFrame(columns=["method", "column", "difference", "low", "high", "outcome", "n"])
    rows = []
    for column in quality_columns(oriented):
        off, on = column_scores(oriented, column, "off"), column_scores(oriented, column, setting)
        images = off.index.intersection(on.index)
        for method in on.columns.intersection(off.columns):
            pair = paired_comparison(on.loc[images, method].to_numpy(), off.loc[images, method].to_numpy(),
                                     n_resamples=n_resamples, seed=seed)
            outcome = "better" if pair.low > 0 else "worse" if pair.high < 0 else "indistinguishable"
            rows.append({"method": method, "column": column, "difference": pair.difference, "low": pair.low,
                         "high": pair.high, "outcome": outcome, "n": len(images)})
    return pd.DataFrame(rows)


def astrocyte_counts(effects: pd.DataFrame) -> pd.DataFrame:
    """Per method: in how many score columns the astrocytic layer makes it better, worse, or changes nothing
    measurable."""
    counts = effects.groupby(["method", "outcome"]).size().unstack("outcome", fill_value=0)
    for outcome in ("better", "worse", "indistinguishable"):
        if outcome not in counts:
            counts[outcome] = 0
    return counts[["better", "worse", "indistinguishable"]].sort_values(["better", "worse"], ascending=[False, True])


def _floors(scores: pd.DataFrame) -> list[str]:
    return [floor for floor in FLOORS if floor in scores.columns]


def best_across(oriented: pd.DataFrame, contenders: Sequence[str], *, columns: Sequence[tuple] | None = None,
                n_resamples: int = 2000) -> verdicts.Verdict:
    """The verdict on "one of `contenders` is best in every score column": per column the contender with the
    best mean against the strongest other method (paired over images; the floors reported), combined. A column
    with no other method than the contenders and the floors cannot test the claim; nor can a benchmark that ran
    none of the contenders."""
    parts = {}
    for column in columns if columns is not None else quality_columns(oriented):
        scores = column_scores(oriented, column)
        present = [name for name in contenders if name in scores.columns]
        if not present:
            continue
        champion = scores[present].mean().idxmax()
        others = [name for name in scores.columns if name not in present and name not in FLOORS]
        if not others:
            parts[column_label(column)] = verdicts.untestable(
                f"no other method than {', '.join(present)} and the floors scored it, so there is nothing to beat")
            continue
        parts[column_label(column)] = verdicts.best_method_verdict(
            scores[[champion, *others, *_floors(scores)]], champion, higher_is_better=True, baselines=others,
            floors=_floors(scores), score=f"{column[2]} {column[3]} (oriented: higher is better)",
            n_resamples=n_resamples)
    if not parts:
        return verdicts.untestable(f"the benchmark ran none of {', '.join(contenders)}: run it with them "
                                   "(xaikit benchmark --methods ...)")
    return verdicts.combined_verdict(parts)


def astrocyte_verdict(oriented: pd.DataFrame, methods: Sequence[str] = VITA_METHODS, protocol: str = "human_alignment",
                      *, n_resamples: int = 2000) -> verdicts.Verdict:
    """The verdict on "the astrocytic layer brings `methods`' maps closer to the human maps": per method and
    alignment score, the paired change from the plain to the astrocyte model, combined."""
    setting = _astrocyte_setting(oriented)
    columns = [column for column in oriented.columns if column[2] == protocol]
    if setting is None or not columns:
        return verdicts.untestable(f"the benchmark ran no {protocol} units with and without the astrocytic layer")
    several_tracks = len({column[:2] for column in columns}) > 1  # then a part names its model and images
    parts = {}
    for column in columns:
        off, on = column_scores(oriented, column, "off"), column_scores(oriented, column, setting)
        images = off.index.intersection(on.index)
        for method in methods:
            if method in off.columns and method in on.columns:
                track = f" ({column[0]}, {column[1]})" if several_tracks else ""
                parts[f"{method}, {column[3]}{track}"] = verdicts.improvement_verdict(
                    off.loc[images, method].to_numpy(), on.loc[images, method].to_numpy(), higher_is_better=True,
                    score=f"{column[3]} with the human maps", before_label=method, after_label=f"{method} + astrocytes",
                    n_resamples=n_resamples)
    if not parts:
        return verdicts.untestable(f"the benchmark ran none of {', '.join(methods)} on {protocol} units with and "
                                   "without the astrocytic layer")
    return verdicts.combined_verdict(parts)


def effect_text(row: Mapping) -> str:
    return format_interval(row["difference"], row["low"], row["high"], 3)


def agreement_extremes(tau: pd.DataFrame) -> tuple[tuple[str, str, float], tuple[str, str, float]]:
    """The pair of protocols that agree most and the pair that agree least (Kendall's tau, off the diagonal)."""
    values = tau.to_numpy(dtype=float).copy()
    np.fill_diagonal(values, np.nan)
    upper = np.triu(np.ones_like(values, dtype=bool), 1) & ~np.isnan(values)
    if not upper.any():
        raise InvalidParameterError("the agreement matrix has fewer than two protocols with shared methods")
    i, j = np.nonzero(upper)
    order = np.argsort(values[i, j])
    low, high = order[0], order[-1]
    names = list(tau.index)
    return ((names[i[high]], names[j[high]], float(values[i[high], j[high]])),
            (names[i[low]], names[j[low]], float(values[i[low], j[low]])))


def setup_table(table: pd.DataFrame, tracks) -> pd.DataFrame:
    """What the benchmark ran: per track and protocol, the images scored (over the shards of one row), the paper the
    protocol comes from, its scores with their direction (↑ higher is better, ↓ lower) and its settings."""
    import json

    from .protocols import PROTOCOLS

    rows = []
    for track in tracks:
        for name in track.protocols:
            used = table[(table.model == track.model) & (table.dataset == track.dataset) & (table.protocol == name)]
            if used.empty:
                continue
            one_row = used[(used.method == used.method.iloc[0]) & (used.astrocytes == "off")].drop_duplicates("key")
            protocol = PROTOCOLS[name]
            settings = json.loads(used.protocol_settings.iloc[0])
            rows.append({
                "model": track.model, "images": track.dataset, "protocol": name,
                "n": sum(len(json.loads(ids)) for ids in one_row.images), "from": protocol.paper,
                "scores": ", ".join(f"{metric} {'↑' if up else '↓'}" for metric, up in protocol.metrics.items()),
                "settings": ", ".join(f"{key} = {value}" for key, value in settings.items()),
            })
    return pd.DataFrame(rows)


def agreement_text(tau: pd.DataFrame, p_values: pd.DataFrame, alpha: float = 0.05) -> str:
    """What the agreement matrix says, in words: how many pairs of protocols rank the methods alike beyond chance
    (p < `alpha`, tau > 0), how many in reverse, and what that means for choosing a method."""
    upper = np.triu_indices(len(tau), 1)
    taus, ps = tau.to_numpy(dtype=float)[upper], p_values.to_numpy(dtype=float)[upper]
    valid = ~np.isnan(taus)
    alike = int(np.sum(valid & (ps < alpha) & (taus > 0)))
    reverse = int(np.sum(valid & (ps < alpha) & (taus < 0)))
    pairs = int(valid.sum())
    if not pairs:
        raise InvalidParameterError("the agreement matrix has fewer than two protocols with shared methods")
    counted = (f"{alike} of the {pairs} pairs of protocols rank the methods alike beyond chance (p < {alpha:g}, not "
               f"corrected for the many pairs)" + (f" and {reverse} in reverse order" if reverse else ""))
    if alike == pairs:
        return counted + ": here the protocols agree on which maps are good"
    if alike * 2 >= pairs:
        return counted + ": most protocols agree, but a method that wins one is not always the choice of another"
    return (counted + ": for most pairs the order under one protocol says little about the order under the other, "
            "so the method that wins one paper's protocol is, as a rule, not the method another paper's protocol "
            "would choose")


def quality_agreement(tau: pd.DataFrame, p_values: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The agreement matrices without the cost's row and column: the agreement between the protocols that
    measure an explanation."""
    kept = [name for name in tau.index if name not in COST_PROTOCOLS]
    return tau.loc[kept, kept], p_values.loc[kept, kept]


def cost_agreement_text(tau: pd.DataFrame, p_values: pd.DataFrame, alpha: float = 0.05) -> str:
    """Do the methods that explain better cost more? The cost's row of the agreement matrix, in words.

    The cost is oriented like every score (higher is better: cheaper), so a negative tau between the cost and a
    protocol says the methods that protocol prefers are the costlier ones; p < `alpha` (not corrected for the
    many protocols) counts as beyond chance."""
    (cost,) = [name for name in tau.index if name in COST_PROTOCOLS] or [None]
    if cost is None:
        return "the cost was not measured in this run"
    parts = {"costlier": [], "cheaper": []}
    unrelated = 0
    for name in tau.index:
        value, p = float(tau.at[cost, name]), float(p_values.at[cost, name])
        if name == cost or np.isnan(value):
            continue
        if p < alpha:
            parts["costlier" if value < 0 else "cheaper"].append(f"{name} (τ = {value:.2f}, p = {p:.2g})")
        else:
            unrelated += 1
    said = [f"the methods that {', '.join(names)} prefer{'s' if len(names) == 1 else ''} are the {kind} ones"
            for kind, names in parts.items() if names]
    tail = f"under {unrelated} other protocol{'s' if unrelated != 1 else ''} cost and rank are unrelated beyond chance"
    if not said and not unrelated:
        return "the cost could not be set against any protocol: no protocol ranks two or more of the methods the cost ranks"
    if not said:
        return f"no protocol's ranking goes with the cost beyond chance: a better map is not a costlier one here ({tail})"
    return "; ".join(said) + (f"; {tail}" if unrelated else "")


def randomisation_text(tau: pd.DataFrame, summary: pd.DataFrame, protocol: str = "randomisation") -> str:
    """How the randomisation test's ranking relates to the others, in words: against how many protocols its tau is
    negative, and the rows that pass it best (lowest mean rank over its score columns in `summary`)."""
    if protocol not in tau.index:
        return "the randomisation test did not run here"
    others = tau.loc[protocol].drop(protocol).dropna()
    negative = int((others < 0).sum())
    ranks = [column for column in summary.columns if column[2] == protocol and column[-1] == "rank"]
    best = summary.loc[:, ranks].mean(axis=1).nsmallest(3).index
    passing = ", ".join(row_label(*row) for row in best)
    counted = f"its τ is negative against {negative} of the other {len(others)} protocols"
    if negative * 2 > len(others):
        return (f"{counted}: the rows that pass it best ({passing}) are not the ones the other protocols prefer. "
                "Passing the test says that a map depends on the trained weights, not that it points at the right "
                "pixels")
    return f"{counted}; the rows that pass it best are {passing}"


def time_per_protocol(timings: pd.DataFrame) -> pd.DataFrame:
    """From `Ledger.timings`: per model, image set and protocol, the units, their total seconds where they ran,
    and the seconds per image and row (method with or without astrocytes). Units without a time (computed before
    the ledger timed them) count among the units but not in the seconds; NaN where none has a time."""
    import json

    timed = timings.seconds.notna()
    frame = timings.assign(timed_images=[len(json.loads(ids)) if on else 0 for ids, on in zip(timings.images, timed)])
    grouped = frame.groupby(["model", "dataset", "protocol"])
    seconds = grouped.seconds.sum(min_count=1)
    result = pd.DataFrame({
        "units": grouped.size(),
        "seconds": seconds,
        "seconds per image and row": seconds / grouped.timed_images.sum(),
    })
    return result.sort_values("seconds", ascending=False)
