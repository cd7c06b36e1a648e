"""Reading the benchmark (xaikit.benchmark.reading): the winners, the astrocytes' effects, the claims' verdicts and
the sentences of the benchmark chapter, on hand-made ledger tables whose answers are known."""

import json

import numpy as np
import pandas as pd
import pytest

from test_benchmark_summary import ASTRO, ledger, ledger_rows, separated
from xaikit.benchmark import reading
from xaikit.benchmark.summary import oriented_scores, protocol_agreement, summary_table
from xaikit.benchmark.units import Track
from xaikit.errors import InvalidParameterError
from xaikit.report import DOES_NOT_HOLD, HOLDS, UNTESTABLE
from xaikit.stats import paired_comparison

RESAMPLES = 200
P, Q = ("m", "d", "p", "s"), ("m", "d", "q", "t")  # two score columns of one model on one image set


def oriented(*parts, **directions):
    """`oriented_scores` of the parts, every protocol/metric higher-is-better unless `directions` says otherwise."""
    table = ledger(*parts)
    keys = set(table.protocol + "/" + table.metric)
    return oriented_scores(table, {key: directions.get(key.replace("/", "_"), True) for key in keys})


def part_names(verdict):
    return {name: (part.verdict, part.method, part.baseline) for name, part in verdict.parts}


# -- columns ----------------------------------------------------------------------------------------------


def test_column_label_names_protocol_metric_model_and_images():
    column = ("demo-cifar10-vit", "cifar10-test", "perturbation", "positive_auc_predicted")
    assert reading.column_label(column) == "perturbation / positive_auc_predicted (demo-cifar10-vit, cifar10-test)"


def test_column_scores_keep_the_images_every_present_method_scored_oriented():
    scores = oriented(
        ledger_rows("a", "p", "s", [1.0, 2.0, np.nan, 4.0]),
        ledger_rows("b", "p", "s", [5.0, 6.0, 7.0, 8.0]),
        ledger_rows("a", "p", "s", [10.0, 20.0, 30.0, 40.0], astrocytes=ASTRO),
        ledger_rows("c", "q", "t", [1.0, 2.0]),  # c is not in p/s; q/t lower is better
        q_t=False,
    )
    plain = reading.column_scores(scores, P)
    assert list(plain.columns) == ["a", "b"]  # c has no p/s score: not a column
    assert list(plain.index) == ["img00", "img01", "img03"]  # a's NaN drops img02 for every method
    assert plain["a"].tolist() == [1.0, 2.0, 4.0] and plain["b"].tolist() == [5.0, 6.0, 8.0]
    with_layer = reading.column_scores(scores, P, ASTRO)
    assert list(with_layer.columns) == ["a"] and with_layer["a"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert reading.column_scores(scores, Q)["c"].tolist() == [-1.0, -2.0]


def test_quality_columns_leave_out_the_cost():
    cost = ("m", "d", "cost", "relative_cost")
    frame = pd.DataFrame(columns=pd.MultiIndex.from_tuples([P, cost, Q], names=["model", "dataset", "protocol", "metric"]))
    assert reading.quality_columns(frame) == [P, Q]


# -- winners ----------------------------------------------------------------------------------------------


def test_winners_name_the_best_row_and_every_row_whose_rank_interval_reaches_one():
    close_a = np.array([0.0, 1.0] * 4) + np.array([0, 0, 0, 0, 0, 0, 0, 0.2])  # mean 0.525
    close_b = np.array([1.0, 0.0] * 4)  # mean 0.5: b's rank interval reaches 1
    table = ledger(
        *separated({"a": 3, "b": 2, "c": 1}, "p", "s", n=8),
        *separated({"a": 4}, "p", "s", n=8, astrocytes=ASTRO),
        ledger_rows("a", "q", "t", close_a), ledger_rows("b", "q", "t", close_b),
        ledger_rows("c", "q", "t", close_b - 5),
        ledger_rows("a", "cost", "relative_cost", 2.0, images=[""]),
        ledger_rows("b", "cost", "relative_cost", 1.0, images=[""]),
    )
    summary = summary_table(table, {"p/s": True, "q/t": True, "cost/relative_cost": False}, n_resamples=RESAMPLES)
    wins = reading.winners(summary).set_index("protocol")
    assert list(wins.index) == ["p", "q"]  # neither the cost nor the mean rank is a score column to win
    assert wins.loc["p", ["best", "tied for first", "n tied", "n rows"]].tolist() == ["a + astrocytes", "a + astrocytes", 1, 4]
    assert wins.loc["q", ["best", "tied for first", "n tied", "n rows"]].tolist() == ["a", "a, b", 2, 3]
    assert wins.loc["q", ["model", "dataset", "metric"]].tolist() == ["m", "d", "t"]


# -- the astrocytic layer ---------------------------------------------------------------------------------


def astrocyte_table():
    """a gains 1 everywhere with the layer, b loses 0.5, c changes by +-1 (mean 0.2 on the 5 shared images);
    d has no astrocyte units; q/t is lower-is-better."""
    base = np.arange(6.0)
    swing = np.array([1.0, -1.0] * 3)
    with_nan = base + swing
    with_nan[5] = np.nan  # c scored img05 with the layer as NaN: the layer's images are img00..img04
    return ledger(
        *(ledger_rows(method, "p", "s", base) for method in "abcd"),
        ledger_rows("a", "p", "s", base + 1, astrocytes=ASTRO),
        ledger_rows("b", "p", "s", base - 0.5, astrocytes=ASTRO),
        ledger_rows("c", "p", "s", with_nan, astrocytes=ASTRO),
        ledger_rows("a", "q", "t", base), ledger_rows("a", "q", "t", base - 2, astrocytes=ASTRO),
    )


def test_astrocyte_effects_paired_change_and_outcome_per_method_and_column():
    table = astrocyte_table()
    effects = reading.astrocyte_effects(oriented_scores(table, {"p/s": True, "q/t": False}), n_resamples=RESAMPLES)
    found = {(row.method, row.column): (row.outcome, row.difference, row.n) for row in effects.itertuples()}
    assert set(found) == {("a", P), ("b", P), ("c", P), ("a", Q)}  # d: no astrocyte units
    assert found[("a", P)] == ("better", pytest.approx(1.0), 5)
    assert found[("b", P)] == ("worse", pytest.approx(-0.5), 5)
    assert found[("c", P)] == ("indistinguishable", pytest.approx(0.2), 5)
    assert found[("a", Q)] == ("better", pytest.approx(2.0), 6)  # lower is better: 2 lower reads 2 better
    c = effects.set_index("method").loc["c"]
    expected = paired_comparison([1, 0, 3, 2, 5], [0, 1, 2, 3, 4], n_resamples=RESAMPLES)
    assert (c["low"], c["high"]) == pytest.approx((expected.low, expected.high))
    assert reading.effect_text(c) == reading.effect_text({"difference": 0.2, "low": expected.low, "high": expected.high})


def test_astrocyte_effects_without_the_layer_are_empty_and_two_settings_are_refused():
    plain = oriented(*separated({"a": 2, "b": 1}, "p", "s"))
    empty = reading.astrocyte_effects(plain, n_resamples=RESAMPLES)
    assert empty.empty and list(empty.columns) == ["method", "column", "difference", "low", "high", "outcome", "n"]
    two = oriented(*separated({"a": 2}, "p", "s"), *separated({"a": 3}, "p", "s", astrocytes=ASTRO),
                   *separated({"a": 4}, "p", "s", astrocytes='{"alpha": 2.0, "k": 6}'))
    with pytest.raises(InvalidParameterError, match="2 astrocyte settings; give the rows of one setting"):
        reading.astrocyte_effects(two, n_resamples=RESAMPLES)
    with pytest.raises(InvalidParameterError, match="2 astrocyte settings"):
        reading.astrocyte_verdict(two, ["a"], "p", n_resamples=RESAMPLES)


def test_astrocyte_counts_per_method_most_gains_first_fewest_losses_next():
    outcomes = {"x": ["better", "better", "worse"], "y": ["better", "better"], "z": ["indistinguishable"], "w": ["worse"]}
    effects = pd.DataFrame([{"method": method, "outcome": outcome} for method, seen in outcomes.items() for outcome in seen])
    counts = reading.astrocyte_counts(effects)
    assert list(counts.index) == ["y", "x", "z", "w"]
    assert list(counts.columns) == ["better", "worse", "indistinguishable"]
    assert counts.loc["x"].tolist() == [2, 1, 0] and counts.loc["z"].tolist() == [0, 0, 1]
    only_gains = reading.astrocyte_counts(pd.DataFrame({"method": ["x"], "outcome": ["better"]}))
    assert only_gains.loc["x"].tolist() == [1, 0, 0]  # the outcomes nobody had are there, as 0


def test_astrocyte_counts_of_the_computed_effects():
    table = astrocyte_table()
    effects = reading.astrocyte_effects(oriented_scores(table, {"p/s": True, "q/t": False}), n_resamples=RESAMPLES)
    counts = reading.astrocyte_counts(effects)
    assert counts.to_dict("index") == {"a": {"better": 2, "worse": 0, "indistinguishable": 0},
                                       "c": {"better": 0, "worse": 0, "indistinguishable": 1},
                                       "b": {"better": 0, "worse": 1, "indistinguishable": 0}}
    assert list(counts.index) == ["a", "c", "b"]


# -- the papers' claims -----------------------------------------------------------------------------------


def test_best_across_holds_when_the_contender_beats_the_strongest_method_in_every_column():
    scores = oriented(*separated({"tokentm": 3, "gae": 2, "rollout": 1, "random": 0}, "p", "s"),
                      *separated({"tokentm": 3, "gae": 1, "rollout": 2, "random": 0}, "q", "t", seed=1))
    verdict = reading.best_across(scores, ["tokentm"], n_resamples=RESAMPLES)
    assert verdict.verdict == HOLDS
    assert part_names(verdict) == {"p / s (m, d)": (HOLDS, "tokentm", "gae"), "q / t (m, d)": (HOLDS, "tokentm", "rollout")}
    only_q = reading.best_across(scores, ["tokentm"], columns=[Q], n_resamples=RESAMPLES)
    assert list(part_names(only_q)) == ["q / t (m, d)"]


def test_best_across_does_not_hold_when_another_method_wins_one_column():
    scores = oriented(*separated({"tokentm": 3, "gae": 2, "random": 0}, "p", "s"),
                      *separated({"tokentm": 2, "gae": 3, "random": 0}, "q", "t", seed=1))
    verdict = reading.best_across(scores, ["tokentm"], n_resamples=RESAMPLES)
    assert verdict.verdict == DOES_NOT_HOLD
    assert part_names(verdict) == {"p / s (m, d)": (HOLDS, "tokentm", "gae"),
                                   "q / t (m, d)": (DOES_NOT_HOLD, "tokentm", "gae")}
    assert verdict.evidence.startswith("1 of the 2 parts the demo can test does not hold. q / t (m, d): tokentm ")


def test_best_across_takes_the_best_contender_per_column_and_never_a_contender_as_baseline():
    scores = oriented(*separated({"smooth_cdam": 4, "cdam": 3, "gradcam": 2}, "p", "s"),
                      *separated({"smooth_cdam": 1, "cdam": 4, "gradcam": 2}, "q", "t", seed=1))
    verdict = reading.best_across(scores, list(reading.CDAM_VARIANTS), n_resamples=RESAMPLES)
    assert verdict.verdict == HOLDS  # cdam beats gradcam in p/s, but is a contender, not a baseline
    assert part_names(verdict) == {"p / s (m, d)": (HOLDS, "smooth_cdam", "gradcam"),
                                   "q / t (m, d)": (HOLDS, "cdam", "gradcam")}


def test_best_across_reports_the_floors_and_never_takes_one_for_the_strongest_method():
    scores = oriented(*separated({"tokentm": 3, "gae": 2, "centre_prior": 5, "random": 0}, "p", "s"),
                      *separated({"tokentm": 3, "gae": 2}, "q", "t", seed=1))
    verdict = reading.best_across(scores, ["tokentm"], n_resamples=RESAMPLES)
    parts = dict(verdict.parts)
    assert verdict.verdict == HOLDS and parts["p / s (m, d)"].baseline == "gae"
    assert "the strongest floor, centre_prior" in parts["p / s (m, d)"].evidence
    assert "tokentm is behind it" in parts["p / s (m, d)"].evidence
    assert parts["p / s (m, d)"].n_ranked == 4  # tokentm, gae and both floors
    assert "floor" not in parts["q / t (m, d)"].evidence


def test_best_across_cannot_be_tested_without_the_contenders_or_without_another_method():
    scores = oriented(*separated({"gae": 2, "random": 0}, "p", "s"),
                      *separated({"tokentm": 3, "random": 0}, "q", "t", seed=1))
    alone = reading.best_across(scores, ["tokentm"], n_resamples=RESAMPLES)
    assert alone.verdict == UNTESTABLE
    assert part_names(alone) == {"q / t (m, d)": (UNTESTABLE, None, None)}  # p/s has no tokentm: not a part
    assert "no other method than tokentm and the floors" in alone.evidence
    missing = reading.best_across(scores, ["cdam", "smooth_cdam"], n_resamples=RESAMPLES)
    assert missing.verdict == UNTESTABLE
    assert missing.evidence == "the benchmark ran none of cdam, smooth_cdam: run it with them (xaikit benchmark --methods ...)."


def alignment_parts(gain, seed=0, model="m", dataset="d"):
    """Human-alignment rows of gradcam (the layer adds `gain`), gradcam_pp (adds 0.1) and gae (no layer)."""
    rng = np.random.default_rng(seed)
    rows = []
    for metric in ("spearman", "dice"):
        base = rng.random(6)
        for method, change in (("gradcam", gain), ("gradcam_pp", 0.1)):
            rows += [ledger_rows(method, "human_alignment", metric, base, model=model, dataset=dataset),
                     ledger_rows(method, "human_alignment", metric, base + change, astrocytes=ASTRO, model=model,
                                 dataset=dataset)]
        rows.append(ledger_rows("gae", "human_alignment", metric, base, model=model, dataset=dataset))
    return rows


def test_astrocyte_verdict_holds_when_the_layer_improves_every_alignment_score():
    verdict = reading.astrocyte_verdict(oriented(*alignment_parts(0.1)), n_resamples=RESAMPLES)
    assert verdict.verdict == HOLDS
    assert part_names(verdict) == {
        f"{method}, {metric}": (HOLDS, f"{method} + astrocytes", method)
        for method in ("gradcam", "gradcam_pp") for metric in ("spearman", "dice")
    }
    assert dict(verdict.parts)["gradcam, dice"].difference == pytest.approx(0.1)


def test_astrocyte_verdict_does_not_hold_when_the_layer_worsens_one_method():
    verdict = reading.astrocyte_verdict(oriented(*alignment_parts(-0.1)), n_resamples=RESAMPLES)
    assert verdict.verdict == DOES_NOT_HOLD
    failing = {name for name, part in verdict.parts if part.verdict == DOES_NOT_HOLD}
    assert failing == {"gradcam, spearman", "gradcam, dice"}


def test_astrocyte_verdict_names_the_model_and_images_when_two_tracks_align_with_human_maps():
    scores = oriented(*alignment_parts(0.1), *alignment_parts(0.1, seed=1, model="m2", dataset="d2"))
    names = list(part_names(reading.astrocyte_verdict(scores, ["gradcam"], n_resamples=RESAMPLES)))
    assert names == ["gradcam, dice (m, d)", "gradcam, spearman (m, d)", "gradcam, dice (m2, d2)",
                     "gradcam, spearman (m2, d2)"]  # one part each: none overwrites another


def test_astrocyte_verdict_cannot_be_tested_without_the_layer_the_protocol_or_the_methods():
    no_layer = oriented(*separated({"gradcam": 2, "gae": 1}, "human_alignment", "spearman"))
    no_protocol = oriented(*separated({"gradcam": 2}, "p", "s"), *separated({"gradcam": 3}, "p", "s", astrocytes=ASTRO))
    for scores in (no_layer, no_protocol):
        verdict = reading.astrocyte_verdict(scores, n_resamples=RESAMPLES)
        assert verdict.verdict == UNTESTABLE
        assert verdict.evidence == "the benchmark ran no human_alignment units with and without the astrocytic layer."
    other_methods = reading.astrocyte_verdict(oriented(*alignment_parts(0.1)), ["rollout"], n_resamples=RESAMPLES)
    assert other_methods.verdict == UNTESTABLE
    assert other_methods.evidence == ("the benchmark ran none of rollout on human_alignment units with and without the "
                                      "astrocytic layer.")


def test_effect_text_prints_three_decimals_more_where_an_end_would_read_zero():
    assert reading.effect_text({"difference": 0.12345, "low": 0.1, "high": 0.2}) == "0.123 [0.100, 0.200]"
    assert reading.effect_text({"difference": -0.0012, "low": -0.0024, "high": -0.0003}) == "-0.0012 [-0.0024, -0.0003]"


# -- agreement between protocols --------------------------------------------------------------------------


def agreement(names, pairs):
    """Symmetric tau and p-value matrices as `protocol_agreement` gives them: 1 and 0 on the diagonal, NaN for a
    pair not in `pairs` ((a, b) -> (tau, p))."""
    names = pd.Index(list(names), name="protocol")
    tau = pd.DataFrame(np.nan, index=names, columns=names)
    p_values = tau.copy()
    for name in names:
        tau.at[name, name], p_values.at[name, name] = 1.0, 0.0
    for (a, b), (value, p) in pairs.items():
        tau.at[a, b] = tau.at[b, a] = value
        p_values.at[a, b] = p_values.at[b, a] = p
    return tau, p_values


def test_agreement_extremes_are_the_highest_and_lowest_tau_off_the_diagonal():
    tau, _ = agreement("abcd", {("a", "b"): (0.9, 0.01), ("a", "c"): (0.1, 0.5), ("a", "d"): (-0.6, 0.04),
                                ("b", "c"): (0.3, 0.3), ("c", "d"): (0.5, 0.1)})  # b, d: NaN
    assert reading.agreement_extremes(tau) == (("a", "b", 0.9), ("a", "d", -0.6))
    for too_little in (tau.loc[["a"], ["a"]], tau.loc[["b", "d"], ["b", "d"]]):
        with pytest.raises(InvalidParameterError, match="fewer than two protocols with shared methods"):
            reading.agreement_extremes(too_little)


def test_agreement_text_all_protocols_alike():
    tau, p_values = agreement("abc", {("a", "b"): (0.9, 0.01), ("a", "c"): (0.7, 0.02), ("b", "c"): (0.8, 0.03)})
    assert reading.agreement_text(tau, p_values) == (
        "3 of the 3 pairs of protocols rank the methods alike beyond chance (p < 0.05, not corrected for the many "
        "pairs): here the protocols agree on which maps are good")


def test_agreement_text_most_alike_with_a_reversed_pair_and_the_nan_pair_not_counted():
    tau, p_values = agreement("abcd", {("a", "b"): (0.9, 0.01), ("a", "c"): (0.7, 0.02), ("b", "c"): (0.8, 0.03),
                                       ("a", "d"): (-0.8, 0.01), ("c", "d"): (0.2, 0.6)})  # b, d: NaN
    assert reading.agreement_text(tau, p_values) == (
        "3 of the 5 pairs of protocols rank the methods alike beyond chance (p < 0.05, not corrected for the many "
        "pairs) and 1 in reverse order: most protocols agree, but a method that wins one is not always the choice of "
        "another")
    assert reading.agreement_text(tau, p_values, alpha=0.015).startswith(
        "1 of the 5 pairs of protocols rank the methods alike beyond chance (p < 0.015, not corrected for the many "
        "pairs) and 1 in reverse order: for most pairs the order under one protocol says little")
    half, p_half = agreement("abcd", {("a", "b"): (0.9, 0.01), ("a", "c"): (0.7, 0.02), ("a", "d"): (0.1, 0.6),
                                      ("b", "c"): (0.2, 0.5)})
    assert reading.agreement_text(half, p_half).startswith(  # half of the pairs alike counts as most
        "2 of the 4 pairs of protocols rank the methods alike beyond chance (p < 0.05, not corrected for the many "
        "pairs): most protocols agree")


def test_agreement_text_few_alike_and_no_pair_refused():
    tau, p_values = agreement("abc", {("a", "b"): (0.9, 0.01), ("a", "c"): (0.2, 0.5), ("b", "c"): (-0.1, 0.8)})
    assert reading.agreement_text(tau, p_values) == (
        "1 of the 3 pairs of protocols rank the methods alike beyond chance (p < 0.05, not corrected for the many "
        "pairs): for most pairs the order under one protocol says little about the order under the other, so the "
        "method that wins one paper's protocol is, as a rule, not the method another paper's protocol would choose")
    nothing = agreement("ab", {})
    with pytest.raises(InvalidParameterError, match="fewer than two protocols with shared methods"):
        reading.agreement_text(*nothing)


def cost_table():
    """Five methods: segmentation prefers the costlier, perturbation the cheaper, pointing_game neither."""
    cost = {"v": 5.0, "w": 4.0, "x": 3.0, "y": 2.0, "z": 1.0}  # lower is better: z cheapest
    return ledger(
        *separated({"v": 5, "w": 4, "x": 3, "y": 2, "z": 1}, "segmentation", "miou"),
        *separated({"v": 1, "w": 2, "x": 3, "y": 4, "z": 5}, "perturbation", "aopc", seed=1),
        *separated({"v": 3, "w": 5, "x": 1, "y": 4, "z": 2}, "pointing_game", "hit", seed=2),
        *(ledger_rows(method, "cost", "relative_cost", value, images=[""]) for method, value in cost.items()),
    ), {"segmentation/miou": True, "perturbation/aopc": True, "pointing_game/hit": True, "cost/relative_cost": False}


def test_quality_agreement_drops_the_cost_row_and_column():
    tau, p_values = protocol_agreement(*cost_table(), by="protocol")
    assert "cost" in tau.index
    quality_tau, quality_p = reading.quality_agreement(tau, p_values)
    assert list(quality_tau.index) == list(quality_tau.columns) == ["perturbation", "pointing_game", "segmentation"]
    assert list(quality_p.columns) == list(quality_tau.columns)
    assert quality_tau.at["perturbation", "segmentation"] == pytest.approx(-1.0)
    assert quality_p.at["perturbation", "segmentation"] == p_values.at["perturbation", "segmentation"]


def test_cost_agreement_text_of_the_pipeline_costlier_cheaper_unrelated():
    tau, p_values = protocol_agreement(*cost_table(), by="protocol")
    # 5 methods in the same or reverse order: tau +-1, exact p = 2 / 5! = 0.017; pointing_game: tau -0.2, p 0.82
    assert reading.cost_agreement_text(tau, p_values) == (
        "the methods that segmentation (τ = -1.00, p = 0.017) prefers are the costlier ones; the methods that "
        "perturbation (τ = 1.00, p = 0.017) prefers are the cheaper ones; under 1 other protocol cost and rank are "
        "unrelated beyond chance")


def test_cost_agreement_text_several_costlier_none_related_no_cost():
    both, p_both = agreement(["cost", "fidelity", "segmentation"], {("cost", "fidelity"): (-0.6, 0.04),
                                                                    ("cost", "segmentation"): (-0.8, 0.001)})
    assert reading.cost_agreement_text(both, p_both) == (
        "the methods that fidelity (τ = -0.60, p = 0.04), segmentation (τ = -0.80, p = 0.001) prefer are the costlier ones")
    unrelated, p_unrelated = agreement(["cost", "fidelity", "segmentation", "hit"],
                                       {("cost", "fidelity"): (0.3, 0.4), ("cost", "segmentation"): (-0.2, 0.6)})
    assert reading.cost_agreement_text(unrelated, p_unrelated) == (
        "no protocol's ranking goes with the cost beyond chance: a better map is not a costlier one here (under 2 other "
        "protocols cost and rank are unrelated beyond chance)")  # hit: NaN, not counted
    assert reading.cost_agreement_text(unrelated, p_unrelated, alpha=0.5) == (
        "the methods that fidelity (τ = 0.30, p = 0.4) prefers are the cheaper ones; under 1 other protocol cost and "
        "rank are unrelated beyond chance")
    assert reading.cost_agreement_text(*agreement(["cost", "hit"], {})) == (
        "the cost could not be set against any protocol: no protocol ranks two or more of the methods the cost ranks")
    assert reading.cost_agreement_text(*agreement(["fidelity", "hit"], {("fidelity", "hit"): (0.5, 0.1)})) == (
        "the cost was not measured in this run")


# -- what ran and how long it took ------------------------------------------------------------------------


SEGMENTATION = '{"explained_class":"predicted","upsample_mode":"bilinear"}'  # as the ledger stores the settings


def unit_rows(method, protocol, metrics, ids, shard, settings, *, astrocytes="off", model="shapes-vit", dataset="shapes"):
    """The ledger's rows of one unit on the images `ids`: one per image and metric (image "" for the cost)."""
    images = [""] if protocol == "cost" else ids
    parts = [ledger_rows(method, protocol, metric, np.ones(len(images)), images=images, astrocytes=astrocytes,
                         model=model, dataset=dataset, shard=shard) for metric in metrics]
    return ledger(*parts).assign(images=json.dumps(ids), protocol_settings=settings,
                                 key=f"{method}-{protocol}-{shard}-{astrocytes}")


def test_setup_table_counts_the_images_of_one_row_over_its_shards():
    segmentation = ("pixel_accuracy", "miou", "map")
    table = ledger(*(
        unit_rows(method, "segmentation", segmentation, ids, shard, SEGMENTATION, astrocytes=astrocytes)
        for method in ("gae", "random") for astrocytes in ("off", ASTRO)
        for shard, ids in enumerate([["s0", "s1", "s2"], ["s3", "s4"]])
    ), unit_rows("gae", "pointing_game", ["hit"], ["s0", "s1", "s2"], 0, '{"tolerance":15.0}'),
        unit_rows("gae", "cost", ["relative_cost"], ["c0", "c1"], 0, '{"repeats":3}', model="cifar-vit", dataset="cifar"))
    tracks = [Track("shapes-vit", "shapes", 5, ("segmentation", "pointing_game", "human_alignment")),
              Track("cifar-vit", "cifar", 2, ("cost",))]
    setup = reading.setup_table(table, tracks)
    assert setup.to_dict("records") == [
        {"model": "shapes-vit", "images": "shapes", "protocol": "segmentation", "n": 5, "from": "TokenTM",
         "scores": "pixel_accuracy ↑, miou ↑, map ↑", "settings": "explained_class = predicted, upsample_mode = bilinear"},
        {"model": "shapes-vit", "images": "shapes", "protocol": "pointing_game", "n": 3, "from": "common",
         "scores": "hit ↑", "settings": "tolerance = 15.0"},
        {"model": "cifar-vit", "images": "cifar", "protocol": "cost", "n": 2, "from": "common",
         "scores": "relative_cost ↓", "settings": "repeats = 3"},
    ]  # human_alignment did not run: no row


def timing_rows(model, dataset, protocol, units):
    """`Ledger.timings` rows: one per unit, (number of images, seconds) each."""
    return [{"key": f"{protocol}-{i}", "seconds": seconds, "host": "h", "model": model, "dataset": dataset,
             "protocol": protocol, "method": "gae", "astrocytes": "off",
             "images": json.dumps([f"img{j}" for j in range(n)])} for i, (n, seconds) in enumerate(units)]


def test_time_per_protocol_sums_seconds_and_divides_by_the_timed_images():
    timings = pd.DataFrame(
        timing_rows("m", "d", "segmentation", [(3, 6.0), (3, 3.0), (2, 1.0), (4, np.nan)])  # the last one untimed
        + timing_rows("m", "d", "cost", [(2, 20.0)])
        + timing_rows("m2", "d2", "perturbation", [(4, 2.0), (4, 2.0)])
        + timing_rows("m2", "d2", "fidelity", [(4, np.nan)])
    )
    result = reading.time_per_protocol(timings)
    assert list(result.index) == [("m", "d", "cost"), ("m", "d", "segmentation"), ("m2", "d2", "perturbation"),
                                  ("m2", "d2", "fidelity")]  # most seconds first, no time last
    assert result["units"].tolist() == [1, 4, 2, 1]
    assert result["seconds"].tolist()[:3] == [20.0, 10.0, 4.0]
    assert result["seconds per image and row"].tolist()[:3] == [10.0, 10.0 / 8, 0.5]
    assert result.loc[("m2", "d2", "fidelity")].iloc[1:].isna().all()  # no time measured: not 0 seconds


def randomisation_inputs(signs):
    """A tau matrix in which randomisation's row has the given signs against three other protocols, and a summary
    whose randomisation ranks put c first, then a, then d, then b."""
    names = ["randomisation", "x", "y", "z"]
    tau = pd.DataFrame(np.eye(4), index=names, columns=names)
    for name, sign in zip(names[1:], signs):
        tau.loc["randomisation", name] = tau.loc[name, "randomisation"] = sign * 0.5
    rows = pd.MultiIndex.from_tuples([(m, "off") for m in "abcd"], names=["method", "astrocytes"])
    columns = pd.MultiIndex.from_tuples([("m", "d", "randomisation", "top", "rank"), ("m", "d", "randomisation", "all", "rank"),
                                         ("m", "d", "x", "s", "rank")], names=["model", "dataset", "protocol", "metric", "statistic"])
    summary = pd.DataFrame([[2, 2, 1], [4, 4, 1], [1, 1, 4], [3, 3, 2]], index=rows, columns=columns, dtype=float)
    return tau, summary


def test_randomisation_text_counts_the_negative_taus_and_names_the_rows_that_pass_best():
    tau, summary = randomisation_inputs([-1, -1, +1])
    text = reading.randomisation_text(tau, summary)
    assert text.startswith("its τ is negative against 2 of the other 3 protocols: the rows that pass it best (c, a, d)")
    assert "not that it points at the right pixels" in text
    tau, summary = randomisation_inputs([-1, +1, +1])
    assert reading.randomisation_text(tau, summary) == ("its τ is negative against 1 of the other 3 protocols; the rows "
                                                        "that pass it best are c, a, d")
    assert reading.randomisation_text(tau.drop(index="randomisation", columns="randomisation"), summary) == \
        "the randomisation test did not run here"
