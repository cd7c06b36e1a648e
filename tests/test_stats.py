"""xaikit.stats: bootstrap intervals over images, paired comparisons, rank intervals, ViTA's compare_scores."""

from __future__ import annotations

import inspect
import statistics as stdlib_statistics

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

import xaikit.stats as xstats
from xaikit.errors import InvalidParameterError
from xaikit.stats import (
    BootstrapInterval,
    bootstrap_ci,
    compare_scores,
    format_interval,
    paired_comparison,
    rank_intervals,
    with_intervals,
)


def _scores(n: int = 40, seed: int = 1, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, n)


def _scipy_percentile_interval(values: np.ndarray, statistic, n_resamples: int) -> tuple[float, float]:
    generator = np.random.default_rng(123)
    # scipy >= 1.15 names the generator `rng`; older releases `random_state`
    seed_name = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"
    result = scipy_stats.bootstrap(
        (values,), statistic, n_resamples=n_resamples, method="percentile", confidence_level=0.95,
        **{seed_name: generator},
    )
    return result.confidence_interval.low, result.confidence_interval.high


# -- bootstrap_ci ------------------------------------------------------------------------------------------


def test_bootstrap_ci_two_images_known_distribution():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    wide = bootstrap_ci([0.0, 1.0], confidence=0.95)
    assert (wide.estimate, wide.low, wide.high, wide.n, wide.n_omitted) == (0.5, 0.0, 1.0, 2, 0)
    # the 30 % and 70 % quantiles both fall on the 0.5 mass
    narrow = bootstrap_ci([0.0, 1.0], confidence=0.4)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_bootstrap_ci_constant_scores_have_zero_width():
    result = bootstrap_ci(np.full(7, 3.25))
    assert (result.estimate, result.low, result.high) == (3.25, 3.25, 3.25)


def test_bootstrap_ci_median_of_a_small_sample():
    result = bootstrap_ci([1.0, 2.0, 3.0, 100.0], statistic="median")
    assert result.estimate == 2.5 and result.statistic == "median"
    assert 1.0 <= result.low <= 2.5 <= result.high <= 100.0


@pytest.mark.parametrize("statistic, function, tolerance", [("mean", np.mean, 0.12), ("median", np.median, 0.25)])
def test_bootstrap_ci_matches_scipy_percentile_bootstrap(statistic, function, tolerance):
    values = _scores(60)
    ours = bootstrap_ci(values, n_resamples=20000, statistic=statistic, seed=7)
    low, high = _scipy_percentile_interval(values, function, 20000)
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    # the two draw different resamples: the ends agree to Monte-Carlo error (a few % of a standard error)
    assert abs(ours.low - low) < tolerance * standard_error
    assert abs(ours.high - high) < tolerance * standard_error
    assert ours.estimate == pytest.approx(function(values), abs=1e-15)


def test_bootstrap_ci_same_seed_same_interval_other_seed_differs():
    values = _scores()
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_does_not_depend_on_the_memory_blocks(monkeypatch):
    values = _scores(50)
    whole = bootstrap_ci(values, seed=5)
    monkeypatch.setattr(xstats, "_GATHER_BUDGET", 170)  # 3 resamples per block, 667 blocks
    assert bootstrap_ci(values, seed=5) == whole


def test_bootstrap_ci_accepts_numpy_torch_list_and_series():
    values = _scores(25)
    expected = bootstrap_ci(values)
    for scores in (values.tolist(), torch.tensor(values, requires_grad=True), pd.Series(values, index=range(5, 30))):
        assert bootstrap_ci(scores) == expected
    single = bootstrap_ci(torch.tensor(values, dtype=torch.float32))
    assert (single.estimate, single.low, single.high) == pytest.approx((expected.estimate, expected.low, expected.high))


def test_bootstrap_ci_nan_refused_unless_omitted_then_counted():
    values = np.array([1.0, np.nan, 2.0, 3.0, np.nan])
    with pytest.raises(InvalidParameterError, match=r"NaN for 2 of 5 images.*nan='omit'"):
        bootstrap_ci(values)
    result = bootstrap_ci(values, nan="omit")
    assert (result.n, result.n_omitted, result.estimate) == (3, 2, 2.0)
    kept = bootstrap_ci([1.0, 2.0, 3.0])
    assert (result.low, result.high) == (kept.low, kept.high)


@pytest.mark.parametrize(
    "scores, options, message",
    [
        ([1.0], {}, r"1 image\(s\).*at least 2"),
        ([1.0, np.nan], {"nan": "omit"}, r"1 image\(s\) after omitting 1 NaN"),
        ([], {}, r"0 image\(s\)"),
        (np.ones((3, 2)), {}, r"1-D.*\(3, 2\)"),
        (["a", "b"], {}, "must be numbers"),
        ([1.0, np.inf, 2.0], {}, "1 infinite"),
        ([1.0, 2.0], {"statistic": "mode"}, r"statistic='mode'.*\['mean', 'median'\]"),
        ([1.0, 2.0], {"confidence": 95}, "strictly between 0 and 1"),
        ([1.0, 2.0], {"confidence": 0.0}, "strictly between 0 and 1"),
        ([1.0, 2.0], {"n_resamples": 10}, "integer >= 100"),
        ([1.0, 2.0], {"n_resamples": 1000.0}, "integer >= 100"),
        ([1.0, 2.0], {"nan": "drop"}, "'raise'.*'omit'"),
    ],
)
def test_bootstrap_ci_rejects_bad_input(scores, options, message):
    with pytest.raises(InvalidParameterError, match=message):
        bootstrap_ci(scores, **options)


# -- paired_comparison ------------------------------------------------------------------------------------


def test_paired_comparison_constant_difference_known_answer():
    b = np.arange(10.0)
    result = paired_comparison(b + 1.0, b)
    assert (result.difference, result.low, result.high) == (1.0, 1.0, 1.0)
    assert (result.mean_a, result.mean_b, result.n) == (5.5, 4.5, 10)
    assert result.verdict == "a higher"
    # all 10 signed ranks positive: the exact two-sided p-value is 2 / 2**10
    assert result.p_value == pytest.approx(2 / 2**10)
    assert paired_comparison(b, b + 1.0).verdict == "b higher"


def test_paired_comparison_interval_containing_zero_is_indistinguishable():
    b = np.arange(10.0)
    result = paired_comparison(b + np.tile([1.0, -1.0], 5), b)
    assert result.difference == 0.0 and result.low < 0 < result.high
    assert result.verdict == "indistinguishable"


def test_paired_comparison_positive_mean_inside_the_noise_is_indistinguishable():
    b = np.arange(10.0)
    result = paired_comparison(b + np.tile([3.0, -2.0], 5), b)
    assert result.difference == 0.5 and result.low < 0 < result.high
    assert result.verdict == "indistinguishable"


def test_paired_comparison_all_zero_differences():
    scores = _scores(12)
    result = paired_comparison(scores, scores.copy())
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert result.verdict == "indistinguishable"


def test_paired_comparison_matches_scipy_and_the_bootstrap_of_differences():
    a, b = _scores(30, seed=1, shift=0.3), _scores(30, seed=2)
    result = paired_comparison(a, b, seed=9)
    assert result.p_value == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue, rel=1e-12)
    difference = bootstrap_ci(a - b, seed=9)
    assert (result.difference, result.low, result.high) == (difference.estimate, difference.low, difference.high)
    assert result == paired_comparison(a, b, seed=9)
    assert result != paired_comparison(a, b, seed=10)


def test_paired_comparison_refuses_different_lengths_naming_both():
    with pytest.raises(InvalidParameterError, match=r"a has 5 scores and b has 4.*same images"):
        paired_comparison(np.ones(5), np.ones(4))


def test_paired_comparison_omits_images_where_either_is_nan():
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    b = np.array([0.0, np.nan, 1.0, 2.0, 3.0])
    with pytest.raises(InvalidParameterError, match="NaN for 2 of 5 images"):
        paired_comparison(a, b)
    result = paired_comparison(a, b, nan="omit")
    assert (result.n, result.n_omitted, result.mean_a, result.mean_b) == (3, 2, 10 / 3, 5 / 3)


# -- rank_intervals ------------------------------------------------------------------------------------------


def _separated_table() -> pd.DataFrame:
    noise = np.random.default_rng(0).normal(0, 0.1, (20, 3))
    return pd.DataFrame(noise + [0.0, 10.0, 20.0], columns=["low", "middle", "high"])


def test_rank_intervals_separated_methods_known_ranks():
    result = rank_intervals(_separated_table(), n_resamples=500)
    assert list(result.columns) == ["method", "mean", "mean_low", "mean_high", "rank", "rank_low", "rank_high"]
    assert list(result["method"]) == ["low", "middle", "high"]
    for column in ("rank", "rank_low", "rank_high"):
        assert list(result[column]) == [3.0, 2.0, 1.0]
    reversed_ranks = rank_intervals(_separated_table(), higher_is_better=False, n_resamples=500)
    assert list(reversed_ranks["rank"]) == [1.0, 2.0, 3.0]
    assert result.attrs == {"n": 20, "n_omitted": 0, "confidence": 0.95, "n_resamples": 500}


def test_rank_intervals_two_images_known_rank_distribution():
    # a = [0, 1], b = [1, 0]: a resample of both images ties (1.5); image 0 twice puts b first, image 1 twice a
    table = {"a": [0.0, 1.0], "b": [1.0, 0.0]}
    wide = rank_intervals(table).set_index("method")
    assert list(wide["rank"]) == [1.5, 1.5]
    assert list(wide["rank_low"]) == [1.0, 1.0] and list(wide["rank_high"]) == [2.0, 2.0]
    narrow = rank_intervals(table, confidence=0.4).set_index("method")
    assert list(narrow["rank_low"]) == [1.5, 1.5] and list(narrow["rank_high"]) == [1.5, 1.5]


@pytest.mark.parametrize("seed", range(4))
def test_rank_intervals_follow_the_stated_rule(seed):
    # the rule written out: one index draw per resample for all methods, ranks of the resampled means,
    # the interval's ends the resampled ranks just below and above the quantiles (never interpolated)
    # 12 close methods on 12 images: at these seeds some quantiles fall between two different observed ranks
    scores = np.random.default_rng(seed).normal(np.linspace(0, 0.5, 12), 1.0, (12, 12))
    result = rank_intervals(pd.DataFrame(scores), n_resamples=100, confidence=0.9, seed=seed)
    indices = np.random.default_rng(seed).integers(0, 12, size=(100, 12))
    ranks = scipy_stats.rankdata(-scores[indices].mean(axis=1), axis=1)
    np.testing.assert_array_equal(result["rank_low"], np.quantile(ranks, 0.05, axis=0, method="lower"))
    np.testing.assert_array_equal(result["rank_high"], np.quantile(ranks, 0.95, axis=0, method="higher"))
    np.testing.assert_array_equal(result["rank"], scipy_stats.rankdata(-scores.mean(axis=0)))


def test_rank_intervals_identical_methods_share_the_averaged_rank():
    scores = _scores(15)
    result = rank_intervals({"x": scores, "y": scores, "z": scores - 5})
    assert list(result["rank"]) == [1.5, 1.5, 3.0]
    assert list(result["rank_low"]) == [1.5, 1.5, 3.0] and list(result["rank_high"]) == [1.5, 1.5, 3.0]


def test_rank_intervals_resample_images_jointly():
    # b beats a by 0.01 on every image while the images themselves vary by 1: only a joint resample keeps b first
    a = _scores(30)
    result = rank_intervals({"a": a, "b": a + 0.01}).set_index("method")
    assert list(result["rank_low"]) == [2.0, 1.0] and list(result["rank_high"]) == [2.0, 1.0]
    assert (result.loc["a", "mean_low"], result.loc["a", "mean_high"]) == pytest.approx(
        (result.loc["b", "mean_low"] - 0.01, result.loc["b", "mean_high"] - 0.01), abs=1e-12
    )


def test_rank_intervals_mean_interval_is_bootstrap_ci_per_method():
    table = _separated_table()
    result = rank_intervals(table, seed=4).set_index("method")
    for method in table.columns:
        alone = bootstrap_ci(table[method], seed=4)
        assert result.loc[method, "mean"] == pytest.approx(alone.estimate, abs=1e-12)
        assert (result.loc[method, "mean_low"], result.loc[method, "mean_high"]) == pytest.approx(
            (alone.low, alone.high), abs=1e-12
        )


def test_rank_intervals_dict_equals_dataframe_and_seed_reproduces():
    table = pd.DataFrame({name: _scores(12, seed=seed) for seed, name in enumerate(["p", "q", "r", "s"])})
    as_frame = rank_intervals(table, seed=2)
    pd.testing.assert_frame_equal(as_frame, rank_intervals({m: table[m].to_numpy() for m in table}, seed=2))
    pd.testing.assert_frame_equal(as_frame, rank_intervals(table, seed=2))
    assert not as_frame.equals(rank_intervals(table, seed=3))


def test_rank_intervals_nan_images_refused_or_dropped_for_every_method():
    table = {"a": [1.0, np.nan, 3.0, 4.0], "b": [2.0, 2.0, 2.0, np.nan]}
    with pytest.raises(InvalidParameterError, match="NaN for 2 of 4 images"):
        rank_intervals(table)
    result = rank_intervals(table, nan="omit")
    assert result.attrs["n"] == 2 and result.attrs["n_omitted"] == 2
    assert list(result["mean"]) == [2.0, 2.0]


@pytest.mark.parametrize(
    "table, message",
    [
        ({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0]}, r"different numbers of scores \{'a': 3, 'b': 2\}"),
        ([[1.0, 2.0], [3.0, 4.0]], "DataFrame .* or a dict"),
        ({}, "no methods"),
        ({1: [1.0, 2.0], "1": [2.0, 3.0]}, "same name"),
        ({"a": [1.0], "b": [2.0]}, "at least 2"),
    ],
)
def test_rank_intervals_rejects_bad_tables(table, message):
    with pytest.raises(InvalidParameterError, match=message):
        rank_intervals(table)


# -- compare_scores -------------------------------------------------------------------------------------------


def test_compare_scores_hand_computed_example():
    baseline = [10.0, 20.0, 30.0, 40.0, 50.0]
    treated = [11.0, 18.0, 33.0, 44.0, 49.5]  # differences 1, -2, 3, 4, -0.5
    result = compare_scores(baseline, treated)
    assert (result.baseline_mean, result.baseline_median, result.baseline_sd) == (30.0, 30.0, pytest.approx(250**0.5))
    assert (result.treated_mean, result.treated_median) == (pytest.approx(31.1), 33.0)
    assert result.treated_sd == pytest.approx(stdlib_statistics.stdev(treated))
    # |d| ranks 2, 3, 4, 5, 1 -> T+ = 2 + 4 + 5 = 11, T- = 3 + 1 = 4; P(T+ >= 11) = 7 / 32 over the 2**5 sign patterns
    assert result.signed_rank_p == pytest.approx(7 / 32)
    assert result.rank_biserial == pytest.approx((11 - 4) / 15)
    # pooled ranks of treated: 2, 3, 6, 8, 9 -> 28 against 27.5 expected, variance 5 * 5 * 11 / 12
    assert result.rank_sum_p == pytest.approx(scipy_stats.norm.sf((28 - 27.5) / (5 * 5 * 11 / 12) ** 0.5))
    assert (result.n, result.n_omitted) == (5, 0)


def test_compare_scores_matches_scipy_with_treated_greater_as_the_alternative():
    baseline = _scores(200, seed=1)
    treated = baseline + 0.2 + _scores(200, seed=2) * 0.5
    result = compare_scores(baseline, treated)
    assert result.rank_sum_p == pytest.approx(
        scipy_stats.ranksums(treated, baseline, alternative="greater").pvalue, rel=1e-12
    )
    signed_rank = scipy_stats.wilcoxon(treated, baseline, alternative="greater")
    assert result.signed_rank_p == pytest.approx(signed_rank.pvalue, rel=1e-12)
    # with no zero differences the one-sided statistic is T+, and r = (T+ - T-) / S with S = n (n + 1) / 2
    total = 200 * 201 / 2
    assert result.rank_biserial == pytest.approx((2 * signed_rank.statistic - total) / total, rel=1e-12)
    assert result.signed_rank_p < 1e-6 and result.rank_biserial > 0
    swapped = compare_scores(treated, baseline)
    assert swapped.signed_rank_p > 0.99 and swapped.rank_sum_p > 0.5 and swapped.rank_biserial < 0


def test_compare_scores_all_zero_differences_and_as_dict():
    scores = _scores(10)
    result = compare_scores(scores, scores.copy())
    assert (result.signed_rank_p, result.rank_biserial) == (1.0, 0.0)
    fields = result.as_dict()
    assert list(fields) == [
        "baseline_mean", "baseline_median", "baseline_sd", "treated_mean", "treated_median", "treated_sd",
        "rank_sum_p", "signed_rank_p", "rank_biserial", "n", "n_omitted",
    ]
    assert pd.Series(fields)["n"] == 10


def test_compare_scores_nan_and_length_errors():
    baseline, treated = [0.1, 0.2, np.nan, 0.4], [0.2, 0.3, 0.5, 0.1]
    with pytest.raises(InvalidParameterError, match="NaN for 1 of 4 images.*nan='omit'"):
        compare_scores(baseline, treated)
    assert compare_scores(baseline, treated, nan="omit").n_omitted == 1
    with pytest.raises(InvalidParameterError, match="treated has 2 scores and baseline has 3"):
        compare_scores([1.0, 2.0, 3.0], [1.0, 2.0])


# -- printing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, digits, text",
    [
        ((71.31, 69.79, 72.94), 1, "71.3 [69.8, 72.9]"),
        ((0.5, 0.123, 0.9), 0, "0.5 [0.1, 0.9]"),  # an end that is not 0 never prints as 0: digits are added
        ((2.0, 1.0, 3.0), 3, "2.000 [1.000, 3.000]"),
        ((0.01, -0.02, 0.04), 1, "0.01 [-0.02, 0.04]"),  # so the interval's side of zero shows
        ((-0.0012, -0.0024, -0.0003), 3, "-0.0012 [-0.0024, -0.0003]"),
        ((0.0, 0.0, 0.0), 1, "0.0 [0.0, 0.0]"),
        ((np.nan, 1.0, 2.0), 1, "n/a"),
        ((1.234, np.nan, np.nan), 2, "1.23"),
    ],
)
def test_format_interval(values, digits, text):
    assert format_interval(*values, digits) == text


def test_format_interval_rejects_bad_digits():
    with pytest.raises(InvalidParameterError, match="digits must be an integer >= 0"):
        format_interval(1.0, 0.0, 2.0, -1)


def test_with_intervals_and_the_interval_format():
    frame = pd.DataFrame({"v": [1.0, 2.5], "lo": [0.5, 2.0], "hi": [1.5, 3.0]}, index=["x", "y"])
    column = with_intervals(frame, "v", "lo", "hi", 1)
    assert column.to_dict() == {"x": "1.0 [0.5, 1.5]", "y": "2.5 [2.0, 3.0]"} and column.name == "v"
    with pytest.raises(InvalidParameterError, match=r"no column\(s\) \['low'\]"):
        with_intervals(frame, "v", "low", "hi", 1)
    assert BootstrapInterval(71.31, 69.79, 72.94, n=10).format(1) == "71.3 [69.8, 72.9]"
