"""The benchmark's summary: every method under every score, oriented, with bootstrap intervals and ranks.

Input is the ledger's long table (``Ledger.table()``: one row per image and metric, columns ``image``,
``metric``, ``value``, ``model``, ``dataset``, ``method``, ``protocol``, ``astrocytes`` ("off" or the JSON text of
the astrocyte settings), ...) and ``higher_is_better`` keyed ``"<protocol>/<metric>"``.

Terms
    * A **score column** is one (model, dataset, protocol, metric): one number per image.
    * A **row** is one (method, astrocytes): a method with or without ViTA's astrocytic layer.
    * **Oriented** scores are sign-flipped where lower is better, so that higher is better everywhere (a
      perturbation AUC where lower is better reads ``-AUC``, the cost ``-relative_cost``).
    * A **whole-unit metric** (``image == ""``, e.g. the cost) has one value per unit, not per image: it is
      kept apart from the per-image scores, has no interval, and its rank is the rank of its value.

Rules
    * Within a score column the rows are compared on the same images: the images that every row present
      in the column scored (a NaN value counts as not scored). A row with no value in a column is missing
      from it (NaN there), e.g. a method that does not apply with astrocytes.
    * Every interval is a 95 % percentile bootstrap over images (`xaikit.stats`): each resample draws image
      indices with replacement from ``numpy.random.default_rng(seed)``, the same indices for every row
      (paired), so a column's mean interval equals ``xaikit.stats.bootstrap_ci`` of its values (in the order
      of the image ids, sorted as text) with that seed, and its rank interval equals
      ``xaikit.stats.rank_intervals``. The order of the ledger's rows does not matter. Score columns scored on the same
      images (the metrics of one unit, one model's protocols on one image set) share one draw per resample,
      since their scores of one image are not independent; columns on other images get their own draw.
    * Rank 1 is the best (highest oriented mean); tied means share the average of their ranks; a column's
      ranks run over the rows present in it.
    * The mean rank of a row is the mean of its ranks over the per-image score columns it has (counted in
      ``n_columns``); its interval recomputes every column's ranks in each resample, averages them, and takes
      the percentile interval of those averages (interpolated, as for a mean).
      Whole-unit metrics (the cost) are not in the mean rank: they say what a method costs, not how well
      it explains, and have no images to resample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from ..errors import InvalidParameterError
from ..stats import (
    _check_bootstrap_settings,
    _percentile_interval,
    _ranks,
    _resampled,
    bootstrap_ci,
    format_interval,
)

__all__ = [
    "SCORE_COLUMN",
    "ROW",
    "oriented_scores",
    "whole_unit_scores",
    "summary_table",
    "rank_matrix",
    "shown_summary",
    "protocol_agreement",
    "randomisation_flags",
    "row_label",
]

SCORE_COLUMN = ("model", "dataset", "protocol", "metric")  #: the fields naming one score column
ROW = ("method", "astrocytes")  #: the fields naming one row of the summary
MEAN_RANK = ("", "", "", "mean rank")  #: the score-column key under which `summary_table` gives the mean rank
CONFIDENCE = 0.95
_REQUIRED = ("image", "value", *ROW, *SCORE_COLUMN)
_SETTINGS = ("method_settings", "protocol_settings")


# -- input ------------------------------------------------------------------------------------------------


def _checked_table(table) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise InvalidParameterError(f"table must be the ledger's long DataFrame (Ledger.table()); got {type(table).__name__}")
    missing = [column for column in _REQUIRED if column not in table.columns]
    if missing:
        raise InvalidParameterError(
            f"table lacks the column(s) {missing}; it has {list(table.columns)}. Pass Ledger.table() (one row per "
            "image and metric, with the units' specifications as columns)"
        )
    if table.empty:
        raise InvalidParameterError("table is empty: run the benchmark's units first (xaikit benchmark), then Ledger.table()")
    frame = table.copy()
    frame["image"] = frame["image"].fillna("").astype(str)
    frame["value"] = pd.to_numeric(frame["value"], errors="raise").astype(float)
    infinite = frame[np.isinf(frame["value"])]
    if not infinite.empty:
        first = infinite.iloc[0]
        raise InvalidParameterError(
            f"{len(infinite)} value(s) are infinite, e.g. {first['protocol']}/{first['metric']} of {first['method']} on "
            f"image {first['image']!r}: fix the metric that produced them (an infinite score has no mean)"
        )
    _check_one_setting(frame)
    return frame


def _check_one_setting(frame: pd.DataFrame) -> None:
    """One method and protocol setting per row and score column: two settings in one cell would be averaged."""
    for column in (c for c in _SETTINGS if c in frame.columns):
        counts = frame.groupby([*ROW, *SCORE_COLUMN], dropna=False)[column].nunique(dropna=False)
        several = counts[counts > 1]
        if not several.empty:
            method, astrocytes, model, dataset, protocol, metric = several.index[0]
            raise InvalidParameterError(
                f"{len(several)} score cell(s) mix several {column}, e.g. {method} (astrocytes {astrocytes}) on "
                f"{model}/{dataset}/{protocol}/{metric}: the summary compares one setting per method and protocol; "
                f"filter the table to one (e.g. table[table.{column} == ...]) first"
            )


def _oriented(frame: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """The long frame with ``value`` sign-flipped where lower is better; unknown directions refused."""
    if not isinstance(higher_is_better, Mapping):
        raise InvalidParameterError(
            f"higher_is_better must be a mapping '<protocol>/<metric>' -> bool; got {type(higher_is_better).__name__}"
        )
    keys = frame["protocol"].astype(str) + "/" + frame["metric"].astype(str)
    unknown = sorted(set(keys) - set(higher_is_better))
    if unknown:
        raise InvalidParameterError(
            f"higher_is_better does not say the direction of {', '.join(unknown)}: add each as "
            "'<protocol>/<metric>': True (higher is better) or False (lower is better), e.g. from the benchmark "
            "protocols' `metrics`"
        )
    oriented = frame.copy()
    signs = keys.map({key: 1.0 if bool(higher_is_better[key]) else -1.0 for key in set(keys)}).to_numpy(dtype=float)
    oriented["value"] = oriented["value"].to_numpy(dtype=float) * signs
    return oriented


def _wide(frame: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """``value`` with ``index`` as rows and the score columns as columns; repeated cells refused."""
    repeated = frame[frame.duplicated([*index, *SCORE_COLUMN], keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise InvalidParameterError(
            f"{first['method']} (astrocytes {first['astrocytes']}) has several values for image {first['image']!r} on "
            f"{first['model']}/{first['dataset']}/{first['protocol']}/{first['metric']}: the same images were scored "
            "twice (two shards or units overlap); keep one unit per image, e.g. table.drop_duplicates(...)"
        )
    wide = frame.set_index([*index, *SCORE_COLUMN])["value"].unstack(list(SCORE_COLUMN))
    return wide.sort_index(axis=0).sort_index(axis=1)


def _split(table, higher_is_better: Mapping[str, bool]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table checked and oriented: (per-image scores as `oriented_scores`, whole-unit as `whole_unit_scores`)."""
    oriented = _oriented(_checked_table(table), higher_is_better)
    per_image, whole = oriented[oriented["image"] != ""], oriented[oriented["image"] == ""]
    if per_image.empty:
        wide = pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=[*ROW, "image"]),
                            columns=pd.MultiIndex.from_tuples([], names=list(SCORE_COLUMN)), dtype=float)
    else:
        wide = _wide(per_image, [*ROW, "image"])
    if whole.empty:
        units = pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=list(ROW)),
                             columns=pd.MultiIndex.from_tuples([], names=list(SCORE_COLUMN)), dtype=float)
    else:
        units = whole.groupby([*ROW, *SCORE_COLUMN])["value"].mean().unstack(list(SCORE_COLUMN))
        units = units.sort_index(axis=0).sort_index(axis=1)
    return wide, units


def oriented_scores(table: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """Per-image scores, oriented so that higher is better: rows (method, astrocytes, image), one column per
    score column (a MultiIndex model, dataset, protocol, metric).

    ``value`` is multiplied by -1 where ``higher_is_better["<protocol>/<metric>"]`` is False; a protocol/metric
    missing from ``higher_is_better`` is refused. Cells a row did not score are NaN. Whole-unit metrics
    (``image == ""``, the cost) are left out: see `whole_unit_scores`.
    """
    return _split(table, higher_is_better)[0]


def whole_unit_scores(table: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """The whole-unit metrics (``image == ""``, the cost), oriented: rows (method, astrocytes), one column per
    score column; a row's value is the mean over its units (one per shard). Empty when there are none."""
    return _split(table, higher_is_better)[1]


# -- per column: the shared images, the bootstrap ---------------------------------------------------------


def _column_cells(oriented: pd.DataFrame, rows: pd.Index) -> dict[tuple, tuple[list, np.ndarray]]:
    """Per score column: the images every present row scored, and their values (images, rows) with NaN
    columns for the rows missing from the score column."""
    cells = {}
    for column in oriented.columns:
        values = oriented[column].unstack(list(ROW)).reindex(columns=rows)
        present = values.notna().any(axis=0).to_numpy()
        shared = values.loc[values.loc[:, present].notna().all(axis=1) & present.any()]
        n_present, n_images = int(present.sum()), len(shared)
        if n_images < 2:
            raise InvalidParameterError(
                f"score column {'/'.join(map(str, column))} has {n_images} image(s) scored by all {n_present} methods "
                "present in it: a bootstrap over images needs at least 2; score more images (or drop the column)"
            )
        cells[column] = (list(shared.index), shared.to_numpy(dtype=float))
    return cells


def _nan_ranks(means: np.ndarray) -> np.ndarray:
    """Ranks over the rows (last axis) of oriented means, 1 = best; NaN (missing rows) stay NaN and do not
    take a rank from the others (they rank after every number)."""
    missing = np.isnan(means)
    ranks = _ranks(np.where(missing, -np.inf, means), higher_is_better=True)
    return np.where(missing, np.nan, ranks)


def _bootstrap_columns(cells, n_resamples: int, seed) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Per score column: the resampled means and ranks, each (n_resamples, rows).

    Columns on the same images are resampled together (one draw per resample); each image set draws from
    ``numpy.random.default_rng(seed)``, as `xaikit.stats.bootstrap_ci` does.
    """
    by_images: dict[tuple, list] = {}
    for column, (images, _) in cells.items():
        by_images.setdefault(tuple(images), []).append(column)
    resampled = {}
    for columns in by_images.values():
        stacked = np.stack([cells[column][1] for column in columns], axis=-1)  # (images, rows, columns)
        means = _resampled(stacked, np.mean, n_resamples, seed)  # (resamples, rows, columns)
        ranks = _nan_ranks(np.moveaxis(means, 1, -1))  # rank over the rows: (resamples, columns, rows)
        for position, column in enumerate(columns):
            resampled[column] = (means[:, :, position], ranks[:, position, :])
    return resampled


def _rank_bounds(resampled_ranks: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outward quantiles of the resampled ranks (as `xaikit.stats.rank_intervals`), NaN for absent rows."""
    low, high = np.full(present.shape, np.nan), np.full(present.shape, np.nan)
    if present.any():
        kept = resampled_ranks[:, present]
        low[present] = np.quantile(kept, (1 - CONFIDENCE) / 2, axis=0, method="lower")
        high[present] = np.quantile(kept, (1 + CONFIDENCE) / 2, axis=0, method="higher")
    return low, high


def _rows(oriented: pd.DataFrame, whole: pd.DataFrame) -> pd.MultiIndex:
    pairs = set(oriented.index.droplevel("image")) | set(whole.index)
    return pd.MultiIndex.from_tuples(sorted(pairs, key=_row_order), names=list(ROW))


def _row_order(row: tuple) -> tuple:
    method, astrocytes = row
    return (str(method), astrocytes != "off", str(astrocytes))


def _mean_over_columns(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean over the last axis (columns) of ranks, ignoring NaN, and how many columns each mean took."""
    counts = np.sum(~np.isnan(ranks), axis=-1)
    totals = np.nansum(ranks, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / counts, np.nan), counts


def summary_table(
    table: pd.DataFrame, higher_is_better: Mapping[str, bool], *, n_resamples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One row per (method, astrocytes): every score column's mean and rank with 95 % intervals, and the mean rank.

    Columns are a MultiIndex (model, dataset, protocol, metric, statistic). Per score column the statistics
    are ``mean``, ``mean_low``, ``mean_high`` (oriented: higher is better), ``rank``, ``rank_low``, ``rank_high``
    (1 = best) and ``n_images`` (the images all its rows share); a row missing from a column has NaN there.
    Whole-unit metrics (the cost) give their value as ``mean`` and its ``rank``, with NaN intervals and
    ``n_images``. Under ``MEAN_RANK`` (``("", "", "", "mean rank")``): ``mean_rank``, ``mean_rank_low``,
    ``mean_rank_high`` and ``n_columns``, the number of per-image score columns the mean rank is over (a row
    missing from a column is ranked over the columns it has). The rules are in the module's docstring.

    Rows are in league order: by mean rank (best first), then by name. ``attrs`` holds n_resamples, seed
    and confidence.
    """
    _check_bootstrap_settings(n_resamples, CONFIDENCE)
    oriented, whole = _split(table, higher_is_better)
    rows = _rows(oriented, whole)
    cells = _column_cells(oriented, rows)
    resampled = _bootstrap_columns(cells, n_resamples, seed)
    result: dict[tuple, np.ndarray] = {}
    column_ranks, resampled_ranks = [], []
    for column, (images, values) in cells.items():
        present = ~np.isnan(values[0])
        means, ranks = values.mean(axis=0), _nan_ranks(values.mean(axis=0))
        resampled_means, resampled_column_ranks = resampled[column]
        mean_low, mean_high = _percentile_interval(resampled_means, CONFIDENCE)
        rank_low, rank_high = _rank_bounds(resampled_column_ranks, present)
        statistics = {"mean": means, "mean_low": mean_low, "mean_high": mean_high, "rank": ranks,
                      "rank_low": rank_low, "rank_high": rank_high,
                      "n_images": np.where(present, float(len(images)), np.nan)}
        result.update({(*column, name): value for name, value in statistics.items()})
        column_ranks.append(ranks)
        resampled_ranks.append(resampled_column_ranks)
    for column in whole.columns:
        values = whole[column].reindex(rows).to_numpy(dtype=float)
        nothing = np.full(len(rows), np.nan)
        result.update({(*column, "mean"): values, (*column, "mean_low"): nothing, (*column, "mean_high"): nothing,
                       (*column, "rank"): _nan_ranks(values), (*column, "rank_low"): nothing,
                       (*column, "rank_high"): nothing, (*column, "n_images"): nothing})
    if cells:
        mean_rank, n_columns = _mean_over_columns(np.stack(column_ranks, axis=-1))
        resampled_mean_ranks, _ = _mean_over_columns(np.stack(resampled_ranks, axis=-1))  # (resamples, rows)
        low, high = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
        ranked = n_columns > 0
        if ranked.any():
            low[ranked], high[ranked] = _percentile_interval(resampled_mean_ranks[:, ranked], CONFIDENCE)
    else:
        mean_rank = low = high = np.full(len(rows), np.nan)
        n_columns = np.zeros(len(rows), dtype=int)
    result.update({(*MEAN_RANK, "mean_rank"): mean_rank, (*MEAN_RANK, "mean_rank_low"): low,
                   (*MEAN_RANK, "mean_rank_high"): high, (*MEAN_RANK, "n_columns"): n_columns})
    summary = pd.DataFrame(result, index=rows)
    summary.columns = pd.MultiIndex.from_tuples(list(result), names=[*SCORE_COLUMN, "statistic"])
    order = np.lexsort((np.arange(len(rows)), np.nan_to_num(mean_rank, nan=np.inf)))
    summary = summary.iloc[order]
    summary.attrs.update(n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE)
    return summary


# -- reading the summary ----------------------------------------------------------------------------------


def row_label(method: str, astrocytes: str) -> str:
    """A row's name for figures and tables: ``"gradcam"``, or ``"gradcam + astrocytes"`` with the astrocytes."""
    return str(method) if astrocytes == "off" else f"{method} + astrocytes"


def _row_labels(index: pd.MultiIndex) -> list[str]:
    """`row_label` of each row; where a method has several astrocyte settings, each says its settings."""
    labels = [row_label(method, astrocytes) for method, astrocytes in index]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [f"{label} {_compact(astrocytes)}" if label in repeated else label
            for label, (_, astrocytes) in zip(labels, index)]


def _compact(settings_text: str) -> str:
    try:
        settings = json.loads(settings_text)
    except (TypeError, ValueError):
        return str(settings_text)
    if not isinstance(settings, dict):
        return str(settings_text)
    return "(" + ", ".join(f"{key}={value}" for key, value in sorted(settings.items())) + ")"


def _group_label(model: str, dataset: str) -> str:
    return f"{model} · {dataset}"


def _check_summary(summary) -> None:
    if not (isinstance(summary, pd.DataFrame) and isinstance(summary.columns, pd.MultiIndex)
            and summary.columns.names == [*SCORE_COLUMN, "statistic"]):
        raise InvalidParameterError("summary must be what summary_table(table, higher_is_better) returns")


def rank_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows × score columns of ranks (1 = best), for `xaikit.viz.rank_heatmap`; NaN where a row is missing.

    Rows are named by `row_label` in the summary's (league) order; columns are a two-level MultiIndex
    ("model · dataset", "protocol/metric"), the per-image score columns first, then the whole-unit ones.
    """
    _check_summary(summary)
    ranks = summary.xs("rank", level="statistic", axis=1).copy()
    ranks.index = pd.Index(_row_labels(summary.index), name="method")
    ranks.columns = pd.MultiIndex.from_tuples(
        [(_group_label(model, dataset), f"{protocol}/{metric}") for model, dataset, protocol, metric in ranks.columns],
        names=["model · dataset", "score"],
    )
    return ranks


def shown_summary(summary: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """`summary_table` for reading, one level of columns (a Markdown table): per score column
    "<model · dataset · protocol/metric>" as "mean [low, high]" and "... rank" as "rank [low, high]", then
    "mean rank" and "columns". Rows are named by `row_label`; a missing cell is empty."""
    _check_summary(summary)
    def statistic(column: tuple, name: str) -> np.ndarray:  # by position: no lexsort warning on the unsorted columns
        return summary.iloc[:, summary.columns.get_loc((*column, name))].to_numpy(dtype=float)

    shown = {}
    for column in dict.fromkeys(key[:4] for key in summary.columns if key[:4] != MEAN_RANK):
        model, dataset, protocol, metric = column
        name = f"{_group_label(model, dataset)} · {protocol}/{metric}"
        shown[name] = [
            "" if np.isnan(mean) else format_interval(mean, low, high, digits)
            for mean, low, high in zip(*(statistic(column, part) for part in ("mean", "mean_low", "mean_high")))
        ]
        shown[f"{name} rank"] = [
            _rank_text(rank, low, high)
            for rank, low, high in zip(*(statistic(column, part) for part in ("rank", "rank_low", "rank_high")))
        ]
    shown["mean rank"] = [
        "" if np.isnan(rank) else format_interval(rank, low, high, 1)
        for rank, low, high in zip(*(statistic(MEAN_RANK, part) for part in ("mean_rank", "mean_rank_low", "mean_rank_high")))
    ]
    shown["columns"] = [str(int(count)) for count in statistic(MEAN_RANK, "n_columns")]
    return pd.DataFrame(shown, index=pd.Index(_row_labels(summary.index), name="method"))


def _rank_text(rank: float, low: float, high: float) -> str:
    """``"3 [1, 6]"`` (ranks are whole or half numbers); ``"3"`` without an interval; ``""`` when missing."""
    if np.isnan(rank):
        return ""
    return f"{rank:g}" if np.isnan(low) else f"{rank:g} [{low:g}, {high:g}]"


# -- agreement between protocols --------------------------------------------------------------------------


def _column_means(table: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """Rows × score columns: the oriented mean on the images every present row shares (as `summary_table`),
    the whole-unit metrics' values after them."""
    oriented, whole = _split(table, higher_is_better)
    rows = _rows(oriented, whole)
    means = {column: values.mean(axis=0) for column, (_, values) in _column_cells(oriented, rows).items()}
    means.update({column: whole[column].reindex(rows).to_numpy(dtype=float) for column in whole.columns})
    frame = pd.DataFrame(means, index=rows)
    frame.columns = pd.MultiIndex.from_tuples(list(means), names=list(SCORE_COLUMN))
    return frame


def _kendall_matrix(rankings: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kendall's tau-b and its p-value between every two columns of ``rankings`` on the rows both have."""
    values = rankings.to_numpy(dtype=float)
    count = values.shape[1]
    tau, p_value = np.full((count, count), np.nan), np.full((count, count), np.nan)
    for i in range(count):
        for j in range(i, count):
            both = ~np.isnan(values[:, i]) & ~np.isnan(values[:, j])
            if both.sum() < 2:
                continue
            result = kendalltau(values[both, i], values[both, j])
            tau[i, j] = tau[j, i] = result.statistic
            p_value[i, j] = p_value[j, i] = result.pvalue
    return (pd.DataFrame(tau, index=rankings.columns, columns=rankings.columns),
            pd.DataFrame(p_value, index=rankings.columns, columns=rankings.columns))


def protocol_agreement(
    table: pd.DataFrame, higher_is_better: Mapping[str, bool], *, by: str = "protocol"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Do the protocols rank the methods alike? Kendall's tau-b between the rankings, and its p-values.

    ``by="column"``: one ranking per score column (model, dataset, protocol, metric), by the rows' oriented
    means (on the images all of a column's rows share). ``by="protocol"``: one ranking per protocol, by the
    rows' mean rank over all that protocol's score columns (every model, data set and metric; each column's
    ranks over the rows present in it). Each pair of rankings is compared on the rows both have
    (``scipy.stats.kendalltau``, tau-b, ties allowed): 1 = the same order, -1 = the reverse, 0 = unrelated.
    NaN where fewer than 2 rows are shared, or one ranking ties them all. Whole-unit metrics (the cost) are
    included: the cost's row in the matrix says whether the better methods are the costlier ones.

    Returns (tau, p_value), two square DataFrames indexed alike: by protocol name, or by the score columns
    (a MultiIndex model, dataset, protocol, metric).
    """
    if by not in ("protocol", "column"):
        raise InvalidParameterError(f"by={by!r} is not known: use 'protocol' (one ranking per protocol) or 'column'")
    means = _column_means(table, higher_is_better)
    if by == "column":
        return _kendall_matrix(means)
    ranks = pd.DataFrame(_nan_ranks(means.to_numpy().T).T, index=means.index, columns=means.columns)
    per_protocol = ranks.T.groupby(level="protocol").mean().T  # NaN ranks (missing rows) skipped
    per_protocol.columns.name = "protocol"
    return _kendall_matrix(per_protocol)


# -- the randomisation check ------------------------------------------------------------------------------


def randomisation_flags(
    table: pd.DataFrame,
    threshold: float = 0.5,
    *,
    metric: str = "rank_correlation_all",
    protocol: str = "randomisation",
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Adebayo et al.'s model-parameter randomisation test, read per (model, dataset, method, astrocytes).

    ``metric`` is the per-image Spearman rank correlation between a method's map of the trained model and of
    the fully randomised one. Rule: a method's maps **barely change** when the whole 95 % bootstrap interval
    of its mean correlation lies above ``threshold``, i.e. ``mean_low > threshold``: even at the interval's
    lower end the maps of a model with random weights still rank the pixels like the trained model's, so
    the maps do not depend on what the model learned. NaN correlations (a constant map) are left out and
    counted in ``n_omitted``.

    Returns one row per (model, dataset, method, astrocytes): mean, mean_low, mean_high, n, n_omitted and
    ``maps_barely_change`` (bool), sorted by model, dataset and mean (highest first).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not -1 <= threshold <= 1:
        raise InvalidParameterError(f"threshold must be a correlation in [-1, 1] (0.5 by default); got {threshold!r}")
    frame = _checked_table(table)
    chosen = frame[(frame["protocol"] == protocol) & (frame["metric"] == metric) & (frame["image"] != "")]
    if chosen.empty:
        raise InvalidParameterError(
            f"table has no per-image {protocol}/{metric} values: run the benchmark with the {protocol!r} protocol "
            "(xaikit benchmark --protocols ...) and pass its Ledger.table()"
        )
    rows = []
    for (model, dataset, method, astrocytes), group in chosen.groupby(["model", "dataset", *ROW], sort=True):
        interval = bootstrap_ci(group["value"].to_numpy(), n_resamples=n_resamples, seed=seed, nan="omit")
        rows.append({"model": model, "dataset": dataset, "method": method, "astrocytes": astrocytes,
                     "mean": interval.estimate, "mean_low": interval.low, "mean_high": interval.high,
                     "n": interval.n, "n_omitted": interval.n_omitted,
                     "maps_barely_change": bool(interval.low > threshold)})
    flags = pd.DataFrame(rows).sort_values(["model", "dataset", "mean"], ascending=[True, True, False])
    flags.attrs.update(threshold=float(threshold), n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE)
    return flags.reset_index(drop=True)
