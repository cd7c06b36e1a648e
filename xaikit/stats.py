"""Uncertainty for the book's tables: bootstrap intervals over images, paired comparisons, rank intervals.

Every score here is one number per image, and every interval is a percentile bootstrap over images: the
images are drawn with replacement ``n_resamples`` times, the statistic is computed on each resample, and
the interval runs between the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those
statistics (``scipy.stats.bootstrap(method="percentile")`` does the same). Where two or more methods are
scored on the same images the resampling is joint (one set of resampled images for all methods), so the
comparison keeps the pairing.

Scores may be numpy arrays, torch tensors, lists or pandas Series. A NaN score is refused unless
``nan="omit"`` is passed; the omitted count is then reported beside the result, never hidden.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from .errors import InvalidParameterError

__all__ = [
    "BootstrapInterval",
    "PairedComparison",
    "ScoreComparison",
    "bootstrap_ci",
    "paired_comparison",
    "rank_intervals",
    "compare_scores",
    "format_interval",
    "with_intervals",
]

_STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}
_NAN_POLICIES = ("raise", "omit")
# Resampled values gathered at once: bounds the memory of a bootstrap (32 MiB of float64) on any table size.
_GATHER_BUDGET = 1 << 22


class _AsDict:
    def as_dict(self) -> dict:
        """The fields as a plain dict, in declaration order (``pd.Series(x.as_dict())`` shows it as a table)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BootstrapInterval(_AsDict):
    """A statistic over images with its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n: int
    n_omitted: int = 0
    confidence: float = 0.95
    statistic: str = "mean"

    def format(self, digits: int = 1) -> str:
        """``"71.3 [69.8, 72.9]"``: see :func:`format_interval`."""
        return format_interval(self.estimate, self.low, self.high, digits)


@dataclass(frozen=True)
class PairedComparison(_AsDict):
    """Two methods on the same images: the mean difference ``a - b``, its interval, the test and the verdict."""

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    p_value: float
    verdict: str
    n: int
    n_omitted: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class ScoreComparison(_AsDict):
    """ViT against ViTA in the paper's terms (issue 15 §4): summaries of each, both p-values, an effect size."""

    baseline_mean: float
    baseline_median: float
    baseline_sd: float
    treated_mean: float
    treated_median: float
    treated_sd: float
    rank_sum_p: float
    signed_rank_p: float
    rank_biserial: float
    n: int
    n_omitted: int = 0


# -- input checks ----------------------------------------------------------------------------------------


def _as_scores(scores, name: str) -> np.ndarray:
    """One score per image as a 1-D float64 array (numpy, torch, list or pandas Series)."""
    if hasattr(scores, "detach"):  # torch tensor: leave the graph and the device
        scores = scores.detach().cpu().numpy()
    try:
        values = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidParameterError(
            f"{name} must be numbers, one per image (array, tensor, list or Series); could not read them: {error}"
        ) from None
    if values.ndim != 1:
        raise InvalidParameterError(
            f"{name} must be one score per image, a 1-D sequence; got shape {values.shape}: "
            "score each image first (e.g. a per-image metric), or pass one column"
        )
    if np.isinf(values).any():
        raise InvalidParameterError(
            f"{name} hold {int(np.isinf(values).sum())} infinite value(s): fix the metric that produced them "
            "(an infinite score has no mean)"
        )
    return values


def _check_nan_policy(nan: str) -> None:
    if nan not in _NAN_POLICIES:
        raise InvalidParameterError(f"nan={nan!r} is not a policy: use 'raise' (the default) or 'omit'")


def _drop_nan_rows(values: np.ndarray, nan: str, what: str) -> tuple[np.ndarray, int]:
    """Rows (images) of ``values`` without NaN, and how many were dropped; refused unless ``nan='omit'``."""
    _check_nan_policy(nan)
    missing = np.isnan(values) if values.ndim == 1 else np.isnan(values).any(axis=1)
    n_missing = int(missing.sum())
    if n_missing and nan == "raise":
        raise InvalidParameterError(
            f"{what} hold NaN for {n_missing} of {len(missing)} images: fix the scores, or pass nan='omit' to "
            "leave those images out (the count is reported as n_omitted)"
        )
    return values[~missing], n_missing


def _check_bootstrap_settings(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise InvalidParameterError(
            f"n_resamples must be an integer >= 100 (2000 is the default); got {n_resamples!r}: with fewer "
            "resamples the interval's ends are themselves too noisy"
        )
    if not isinstance(confidence, (int, float, np.floating)) or not 0 < confidence < 1:
        raise InvalidParameterError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95); got {confidence!r}")


def _check_enough_images(n: int, n_omitted: int, what: str) -> None:
    if n < 2:
        left = f" after omitting {n_omitted} NaN" if n_omitted else ""
        raise InvalidParameterError(
            f"{what} have {n} image(s){left}: a bootstrap over images needs at least 2; score more images"
        )


# -- the bootstrap ---------------------------------------------------------------------------------------


def _resampled(values: np.ndarray, statistic: Callable[..., np.ndarray], n_resamples: int, seed) -> np.ndarray:
    """``statistic`` over the image axis (0) of ``values`` for each of ``n_resamples`` joint resamples of the images.

    The resamples are drawn and gathered in blocks only to bound memory: numpy draws the same index stream in
    blocks as at once, so one seed resamples the same images whatever the blocks, for one method as for many.
    Returns shape ``(n_resamples,) + values.shape[1:]``.
    """
    n = values.shape[0]
    generator = np.random.default_rng(seed)
    per_draw, per_gather = max(1, _GATHER_BUDGET // n), max(1, _GATHER_BUDGET // values.size)
    statistics = []
    for start in range(0, n_resamples, per_draw):
        indices = generator.integers(0, n, size=(min(per_draw, n_resamples - start), n))
        for first in range(0, len(indices), per_gather):
            statistics.append(statistic(values[indices[first : first + per_gather]], axis=1))
    return np.concatenate(statistics)


def _percentile_interval(resampled: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.quantile(resampled, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    return low, high


def _interval(values: np.ndarray, statistic: str, n_resamples: int, confidence: float, seed, n_omitted: int):
    function = _STATISTICS[statistic]
    low, high = _percentile_interval(_resampled(values, function, n_resamples, seed), confidence)
    return BootstrapInterval(
        estimate=float(function(values)),
        low=float(low),
        high=float(high),
        n=len(values),
        n_omitted=n_omitted,
        confidence=float(confidence),
        statistic=statistic,
    )


def bootstrap_ci(
    scores,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: str = "mean",
    nan: str = "raise",
) -> BootstrapInterval:
    """The ``statistic`` ("mean" or "median") of per-image scores with its percentile bootstrap interval.

    Rule: the estimate is the statistic of all images; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (linear interpolation) of the statistic over ``n_resamples`` resamples of
    the images drawn with replacement from ``numpy.random.default_rng(seed)``. The same seed gives the same
    interval. NaN scores are refused unless ``nan="omit"``, which leaves them out and reports how many in
    ``n_omitted``. At least 2 images are needed.
    """
    if statistic not in _STATISTICS:
        raise InvalidParameterError(f"statistic={statistic!r} is not known: use one of {sorted(_STATISTICS)}")
    _check_bootstrap_settings(n_resamples, confidence)
    values, n_omitted = _drop_nan_rows(_as_scores(scores, "scores"), nan, "scores")
    _check_enough_images(len(values), n_omitted, "scores")
    return _interval(values, statistic, n_resamples, confidence, seed, n_omitted)


def _paired(a, b, names: tuple[str, str], nan: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Two score arrays on the same images, with the images where either is NaN dropped (if allowed)."""
    first, second = _as_scores(a, names[0]), _as_scores(b, names[1])
    if len(first) != len(second):
        raise InvalidParameterError(
            f"{names[0]} has {len(first)} scores and {names[1]} has {len(second)}: a paired comparison needs both "
            "scored on the same images, in the same order"
        )
    kept, n_omitted = _drop_nan_rows(np.stack([first, second], axis=1), nan, f"{names[0]} or {names[1]}")
    _check_enough_images(len(kept), n_omitted, f"{names[0]} and {names[1]}")
    return kept[:, 0], kept[:, 1], n_omitted


def _signed_rank_p(x: np.ndarray, y: np.ndarray, alternative: str) -> float:
    """``scipy.stats.wilcoxon(x, y)``'s p-value (zero differences dropped); 1.0 when every difference is zero.

    With no non-zero difference there is no evidence of any difference: scipy returns NaN there, the book
    wants a number it can print.
    """
    if np.all(x == y):
        return 1.0
    return float(_scipy_stats.wilcoxon(x, y, alternative=alternative).pvalue)


def paired_comparison(
    a,
    b,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    nan: str = "raise",
) -> PairedComparison:
    """Two methods scored on the same images: mean difference ``a - b``, its interval, a test and a verdict.

    Rule: the difference is ``mean(a - b)`` over images, its interval a percentile bootstrap over images of the
    per-image differences (the pairing kept), as :func:`bootstrap_ci`. The verdict is "a higher" when the whole
    interval lies above 0, "b higher" when it lies below 0, "indistinguishable" when it contains 0; it speaks of
    the score's value, so for a lower-is-better score "a higher" means a is worse. Beside it, the two-sided
    Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon(a, b)``, zero differences dropped; 1.0 when all are
    zero). ``a`` and ``b`` must have the same length; an image where either is NaN is refused, or left out with
    ``nan="omit"`` (counted in ``n_omitted``).
    """
    _check_bootstrap_settings(n_resamples, confidence)
    first, second, n_omitted = _paired(a, b, ("a", "b"), nan)
    difference = _interval(first - second, "mean", n_resamples, confidence, seed, n_omitted)
    if difference.low > 0:
        verdict = "a higher"
    elif difference.high < 0:
        verdict = "b higher"
    else:
        verdict = "indistinguishable"
    return PairedComparison(
        mean_a=float(first.mean()),
        mean_b=float(second.mean()),
        difference=difference.estimate,
        low=difference.low,
        high=difference.high,
        p_value=_signed_rank_p(first, second, "two-sided"),
        verdict=verdict,
        n=difference.n,
        n_omitted=n_omitted,
        confidence=float(confidence),
    )


def _score_table(table) -> tuple[list[str], np.ndarray]:
    """Method names and an (images, methods) float array from a DataFrame or a dict method -> scores."""
    if isinstance(table, pd.DataFrame):
        columns = {str(method): table[method] for method in table.columns}
    elif isinstance(table, Mapping):
        columns = {str(method): scores for method, scores in table.items()}
    else:
        raise InvalidParameterError(
            f"table must be a DataFrame (images x methods) or a dict method -> per-image scores; got "
            f"{type(table).__name__}"
        )
    if not columns:
        raise InvalidParameterError("table has no methods: give at least one column of per-image scores")
    if len(columns) != (len(table.columns) if isinstance(table, pd.DataFrame) else len(table)):
        raise InvalidParameterError("table has two methods with the same name: give every method its own name")
    arrays = {method: _as_scores(scores, f"scores of {method!r}") for method, scores in columns.items()}
    lengths = {method: len(values) for method, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidParameterError(
            f"the methods have different numbers of scores {lengths}: rank methods scored on the same images"
        )
    return list(arrays), np.stack(list(arrays.values()), axis=1)


def _ranks(means: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rank along the last axis, 1 = best, tied means sharing the average of their ranks."""
    return _scipy_stats.rankdata(-means if higher_is_better else means, method="average", axis=-1)


def rank_intervals(
    table,
    *,
    higher_is_better: bool = True,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    nan: str = "raise",
) -> pd.DataFrame:
    """Each method's mean and rank with bootstrap intervals, resampling the images jointly for all methods.

    ``table`` is a DataFrame (rows images, columns methods) or a dict method -> per-image scores on the same
    images in the same order. Rule: every resample draws one set of image indices (with replacement) used for
    every method; in each resample the methods are ranked by mean (rank 1 = best, i.e. highest mean when
    ``higher_is_better``, ties averaged). ``mean`` and ``rank`` come from the full sample; ``mean_low`` and
    ``mean_high`` are the percentile interval of the resampled means (as :func:`bootstrap_ci`); ``rank_low`` and
    ``rank_high`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled ranks,
    taken outward (the rank observed just below and just above, never an interpolated one). Two methods whose
    rank intervals do not overlap are ranked apart by the data; overlapping ones may not be (for a pair, ask
    :func:`paired_comparison`).

    Returns one row per method in the table's order (``.sort_values("rank")`` for a league table), columns
    method, mean, mean_low, mean_high, rank, rank_low, rank_high. An image with a NaN score for any method is
    refused, or left out for all methods with ``nan="omit"``; ``attrs`` holds n, n_omitted, confidence and
    n_resamples.
    """
    _check_bootstrap_settings(n_resamples, confidence)
    methods, scores = _score_table(table)
    scores, n_omitted = _drop_nan_rows(scores, nan, "the table's scores")
    _check_enough_images(len(scores), n_omitted, "the table's scores")
    resampled_means = _resampled(scores, np.mean, n_resamples, seed)
    resampled_ranks = _ranks(resampled_means, higher_is_better)
    mean_low, mean_high = _percentile_interval(resampled_means, confidence)
    means = scores.mean(axis=0)
    result = pd.DataFrame(
        {
            "method": methods,
            "mean": means,
            "mean_low": mean_low,
            "mean_high": mean_high,
            "rank": _ranks(means, higher_is_better),
            "rank_low": np.quantile(resampled_ranks, (1 - confidence) / 2, axis=0, method="lower"),
            "rank_high": np.quantile(resampled_ranks, (1 + confidence) / 2, axis=0, method="higher"),
        }
    )
    result.attrs.update(n=len(scores), n_omitted=n_omitted, confidence=float(confidence), n_resamples=n_resamples)
    return result


def _rank_biserial(treated: np.ndarray, baseline: np.ndarray) -> float:
    differences = treated - baseline
    differences = differences[differences != 0]
    if differences.size == 0:
        return 0.0
    ranks = _scipy_stats.rankdata(np.abs(differences))
    positive, negative = ranks[differences > 0].sum(), ranks[differences < 0].sum()
    return float((positive - negative) / (positive + negative))


def compare_scores(baseline, treated, *, nan: str = "raise") -> ScoreComparison:
    """ViT (``baseline``) against ViTA (``treated``) on the same images, in the paper's terms and beside them.

    - Mean, median and SD (sample SD, ``ddof=1``) of each.
    - ``rank_sum_p``: the paper's one-tailed Wilcoxon rank-sum p-value, H1 "treated scores higher":
      ``scipy.stats.ranksums(treated, baseline, alternative="greater")``. It treats the two as independent
      samples, as the paper does.
    - ``signed_rank_p``: the paired one-tailed signed-rank p-value, the test that fits scores of the same images:
      ``scipy.stats.wilcoxon(treated, baseline, alternative="greater")`` (zero differences dropped; 1.0 when
      every difference is zero).
    - ``rank_biserial``: the matched-pairs rank-biserial correlation (Kerby 2014) of ``d = treated - baseline``:
      rank ``|d|`` over the non-zero differences (ties averaged), ``T+`` and ``T-`` the rank sums of the positive
      and negative ones, ``r = (T+ - T-) / (T+ + T-)``, from -1 (every image lower with treatment) to +1 (every
      image higher); 0 when every difference is zero.

    Same length required; an image where either is NaN (e.g. a constant map's Spearman) is refused, or left
    out of both with ``nan="omit"`` and counted in ``n_omitted``.
    """
    treated_values, baseline_values, n_omitted = _paired(treated, baseline, ("treated", "baseline"), nan)
    return ScoreComparison(
        baseline_mean=float(np.mean(baseline_values)),
        baseline_median=float(np.median(baseline_values)),
        baseline_sd=float(np.std(baseline_values, ddof=1)),
        treated_mean=float(np.mean(treated_values)),
        treated_median=float(np.median(treated_values)),
        treated_sd=float(np.std(treated_values, ddof=1)),
        rank_sum_p=float(_scipy_stats.ranksums(treated_values, baseline_values, alternative="greater").pvalue),
        signed_rank_p=_signed_rank_p(treated_values, baseline_values, "greater"),
        rank_biserial=_rank_biserial(treated_values, baseline_values),
        n=len(treated_values),
        n_omitted=n_omitted,
    )


# -- printing --------------------------------------------------------------------------------------------


def _fixed(value: float, digits: int) -> str:
    # + 0.0 turns the -0.0 that rounding a small negative number gives into 0.0
    return f"{round(value, digits) + 0.0:.{digits}f}"


def ordinal(rank: int) -> str:
    """A rank in words for the text: ``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``21st``."""
    suffix = "th" if 11 <= rank % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


def format_interval(estimate: float, low: float, high: float, digits: int = 1) -> str:
    """A value with its interval, the one way the book prints them: ``"71.3 [69.8, 72.9]"``.

    Each number is rounded to ``digits`` decimals, with up to three more where an end of the interval that is
    not 0 would print as 0: which side of zero an interval lies on decides verdicts, so it must show
    (``"-0.0012 [-0.0024, -0.0003]"``, not ``"-0.001 [-0.002, 0.000]"``). A NaN estimate prints as ``"n/a"``; a NaN
    end drops the interval and prints the estimate alone.
    """
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or digits < 0:
        raise InvalidParameterError(f"digits must be an integer >= 0 (decimals to show); got {digits!r}")
    estimate, low, high = float(estimate), float(low), float(high)
    if math.isnan(estimate):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return _fixed(estimate, digits)
    for _ in range(3):
        if not any(end != 0 and float(_fixed(end, digits)) == 0 for end in (low, high)):
            break
        digits += 1
    return f"{_fixed(estimate, digits)} [{_fixed(low, digits)}, {_fixed(high, digits)}]"


def with_intervals(df: pd.DataFrame, value_col: str, low_col: str, high_col: str, digits: int = 1) -> pd.Series:
    """A column of :func:`format_interval` strings, one per row of ``df`` (same index), named ``value_col``.

    E.g. ``with_intervals(rank_intervals(table), "mean", "mean_low", "mean_high", 1)``.
    """
    missing = [column for column in (value_col, low_col, high_col) if column not in df.columns]
    if missing:
        raise InvalidParameterError(f"df has no column(s) {missing}; its columns are {list(df.columns)}")
    strings = [
        format_interval(value, low, high, digits)
        for value, low, high in zip(df[value_col], df[low_col], df[high_col], strict=True)
    ]
    return pd.Series(strings, index=df.index, name=value_col, dtype=object)
