"""The benchmark's summary (xaikit.benchmark.summary) and its two figures (xaikit.viz), on hand-made ledger tables."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.stats import kendalltau

from xaikit.benchmark.summary import (
    MEAN_RANK,
    oriented_scores,
    protocol_agreement,
    randomisation_flags,
    rank_matrix,
    shown_summary,
    summary_table,
    whole_unit_scores,
)
from xaikit.errors import InvalidParameterError
from xaikit.stats import bootstrap_ci, rank_intervals
from xaikit.viz import agreement_matrix_figure, figure_problems, rank_heatmap

RESAMPLES = 200
ASTRO = '{"alpha": 1.5, "k": 6}'


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def ledger_rows(method, protocol, metric, values, *, astrocytes="off", model="m", dataset="d", images=None, shard=0,
                method_settings="{}"):
    """The ledger's long rows of one unit: one per image (``image`` "" for a whole-unit metric)."""
    values = np.atleast_1d(np.asarray(values, dtype=float))
    images = images if images is not None else [f"img{i:02d}" for i in range(len(values))]  # sorted as text, too
    return pd.DataFrame({
        "image": images, "metric": metric, "value": values, "model": model, "dataset": dataset, "method": method,
        "method_settings": method_settings, "protocol": protocol, "protocol_settings": "{}", "astrocytes": astrocytes,
        "shard": shard, "key": f"{method}-{protocol}-{shard}",
    })


def ledger(*parts):
    return pd.concat(parts, ignore_index=True)


def stat(summary, protocol, metric, statistic, model="m", dataset="d"):
    return summary[(model, dataset, protocol, metric, statistic)]


# -- orientation ------------------------------------------------------------------------------------------


def test_lower_is_better_scores_are_sign_flipped_and_the_cost_is_kept_apart():
    table = ledger(
        ledger_rows("gae", "perturbation", "positive_auc_label", [0.2, 0.4]),
        ledger_rows("gae", "segmentation", "miou", [0.5, 0.7]),
        ledger_rows("gae", "cost", "relative_cost", 3.0, images=[""], shard=0),
        ledger_rows("gae", "cost", "relative_cost", 5.0, images=[""], shard=1),
    )
    directions = {"perturbation/positive_auc_label": False, "segmentation/miou": True, "cost/relative_cost": False}
    scores = oriented_scores(table, directions)
    assert list(scores.index.names) == ["method", "astrocytes", "image"]
    assert list(scores.columns.names) == ["model", "dataset", "protocol", "metric"]
    assert scores[("m", "d", "perturbation", "positive_auc_label")].tolist() == [-0.2, -0.4]
    assert scores[("m", "d", "segmentation", "miou")].tolist() == [0.5, 0.7]
    assert "cost" not in scores.columns.get_level_values("protocol")  # no per-image values
    whole = whole_unit_scores(table, directions)
    assert whole.loc[("gae", "off"), ("m", "d", "cost", "relative_cost")] == -4.0  # mean over the two shards, flipped


def test_a_metric_without_a_direction_is_refused_by_name():
    table = ledger(ledger_rows("gae", "segmentation", "miou", [0.5, 0.7]), ledger_rows("gae", "fidelity", "mif", [1, 2]))
    with pytest.raises(InvalidParameterError, match="direction of fidelity/mif: add each") as error:
        oriented_scores(table, {"segmentation/miou": True})
    assert "segmentation/miou" not in str(error.value)


def test_bad_tables_are_refused_with_the_fix():
    good = ledger_rows("gae", "segmentation", "miou", [0.5, 0.7])
    with pytest.raises(InvalidParameterError, match="lacks the column.*'astrocytes'.*Ledger.table"):
        oriented_scores(good.drop(columns="astrocytes"), {"segmentation/miou": True})
    with pytest.raises(InvalidParameterError, match="several values for image 'img00'.*drop_duplicates"):
        oriented_scores(ledger(good, good.iloc[:1]), {"segmentation/miou": True})
    other_setting = ledger_rows("gae", "segmentation", "miou", [0.1, 0.2], images=["img2", "img3"],
                                method_settings='{"start_layer": 1}')
    with pytest.raises(InvalidParameterError, match="mix several method_settings.*filter the table"):
        summary_table(ledger(good, other_setting), {"segmentation/miou": True}, n_resamples=RESAMPLES)
    infinite = ledger_rows("gae", "segmentation", "miou", [0.5, np.inf])
    with pytest.raises(InvalidParameterError, match="infinite"):
        oriented_scores(infinite, {"segmentation/miou": True})


# -- means, ranks and their intervals ---------------------------------------------------------------------


def three_methods(higher_is_better=True, n=12):
    rng = np.random.default_rng(5)
    scores = {"gae": rng.normal(0.6, 0.2, n), "rollout": rng.normal(0.5, 0.2, n), "random": rng.normal(0.45, 0.2, n)}
    table = ledger(*(ledger_rows(method, "perturbation", "auc", values) for method, values in scores.items()))
    return table, scores, {"perturbation/auc": higher_is_better}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_means_and_intervals_are_xaikit_stats_on_the_same_values_and_seed(higher_is_better):
    table, scores, directions = three_methods(higher_is_better)
    summary = summary_table(table, directions, n_resamples=RESAMPLES, seed=3)
    sign = 1.0 if higher_is_better else -1.0
    for method, values in scores.items():
        expected = bootstrap_ci(sign * values, n_resamples=RESAMPLES, seed=3)
        row = (method, "off")
        assert stat(summary, "perturbation", "auc", "mean")[row] == pytest.approx(expected.estimate)
        assert stat(summary, "perturbation", "auc", "mean_low")[row] == pytest.approx(expected.low)
        assert stat(summary, "perturbation", "auc", "mean_high")[row] == pytest.approx(expected.high)
        assert stat(summary, "perturbation", "auc", "n_images")[row] == len(values)
    league = rank_intervals(pd.DataFrame(scores), higher_is_better=higher_is_better, n_resamples=RESAMPLES,
                            seed=3).set_index("method")
    for statistic in ("rank", "rank_low", "rank_high"):
        ours = stat(summary, "perturbation", "auc", statistic).droplevel("astrocytes")
        assert ours.to_dict() == pytest.approx(league[statistic].to_dict())
    # one column: the mean rank is that column's rank, its interval the rank's quantiles (interpolated)
    assert summary[(*MEAN_RANK, "mean_rank")].droplevel("astrocytes").to_dict() == pytest.approx(league["rank"].to_dict())
    assert summary.attrs["n_resamples"] == RESAMPLES


def test_the_summary_does_not_depend_on_the_order_of_the_ledger_rows():
    table, _, directions = three_methods()
    shuffled = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    pd.testing.assert_frame_equal(summary_table(shuffled, directions, n_resamples=RESAMPLES),
                                  summary_table(table, directions, n_resamples=RESAMPLES))


def test_a_method_best_everywhere_ranks_first_with_interval_one_to_one():
    rng = np.random.default_rng(0)
    parts = []
    for protocol, metric in (("segmentation", "miou"), ("segmentation", "map"), ("pointing_game", "hit")):
        for method, level in (("tokentm", 10.0), ("gae", 1.0), ("random", 0.0)):
            parts.append(ledger_rows(method, protocol, metric, level + rng.random(8)))
    directions = {"segmentation/miou": True, "segmentation/map": True, "pointing_game/hit": True}
    summary = summary_table(ledger(*parts), directions, n_resamples=RESAMPLES)
    assert summary.index[0] == ("tokentm", "off")  # league order: best mean rank first
    best = summary.loc[("tokentm", "off")]
    for protocol, metric in (("segmentation", "miou"), ("segmentation", "map"), ("pointing_game", "hit")):
        assert [best[("m", "d", protocol, metric, s)] for s in ("rank", "rank_low", "rank_high")] == [1, 1, 1]
    assert [best[(*MEAN_RANK, s)] for s in ("mean_rank", "mean_rank_low", "mean_rank_high", "n_columns")] == [1, 1, 1, 3]


def separated(method_levels, protocol, metric, n=6, seed=0, **where):
    """Rows of methods whose scores lie far apart (the gaps exceed the noise): their ranks never change."""
    rng = np.random.default_rng(seed)
    return [ledger_rows(method, protocol, metric, level + 0.01 * rng.random(n), **where)
            for method, level in method_levels.items()]


def test_mean_rank_by_hand_and_a_method_missing_from_a_column():
    table = ledger(
        *separated({"a": 3, "b": 2, "c": 1}, "p1", "s"),  # a 1, b 2, c 3
        *separated({"a": 2, "b": 3, "c": 1}, "p2", "s"),  # a 2, b 1, c 3
        *separated({"a": 2, "b": 1}, "p3", "s"),  # lower is better; c does not apply here: a 2, b 1
    )
    directions = {"p1/s": True, "p2/s": True, "p3/s": False}
    summary = summary_table(table, directions, n_resamples=RESAMPLES)
    mean_rank = summary[(*MEAN_RANK, "mean_rank")].droplevel("astrocytes")
    assert mean_rank.to_dict() == pytest.approx({"a": 5 / 3, "b": 4 / 3, "c": 3.0})
    assert summary[(*MEAN_RANK, "n_columns")].droplevel("astrocytes").to_dict() == {"a": 3, "b": 3, "c": 2}
    assert list(summary.index.get_level_values("method")) == ["b", "a", "c"]
    low = summary[(*MEAN_RANK, "mean_rank_low")].droplevel("astrocytes")
    assert low.to_dict() == pytest.approx(mean_rank.to_dict())  # separated scores: the interval is the point
    assert np.isnan(stat(summary, "p3", "s", "mean")[("c", "off")])
    assert np.isnan(stat(summary, "p3", "s", "rank_low")[("c", "off")])
    assert stat(summary, "p3", "s", "rank")[("b", "off")] == 1  # lower is better in p3


def test_rows_are_compared_on_the_images_they_all_scored():
    values = {"a": np.array([1.0, 2.0, np.nan, 4.0, 5.0]), "b": np.array([0.5, 0.5, 9.0, 0.5, 1.5])}
    table = ledger(*(ledger_rows(method, "alignment", "spearman", v) for method, v in values.items()),
                   ledger_rows("b", "alignment", "spearman", [7.0], images=["img9"]))  # only b scored img9
    summary = summary_table(table, {"alignment/spearman": True}, n_resamples=RESAMPLES, seed=1)
    kept = [0, 1, 3, 4]  # img2 (a's NaN) and img9 (b alone) are left out for both
    for method, v in values.items():
        expected = bootstrap_ci(v[kept], n_resamples=RESAMPLES, seed=1)
        assert stat(summary, "alignment", "spearman", "mean")[(method, "off")] == pytest.approx(expected.estimate)
        assert stat(summary, "alignment", "spearman", "mean_low")[(method, "off")] == pytest.approx(expected.low)
    assert set(stat(summary, "alignment", "spearman", "n_images")) == {4}


def test_a_column_with_fewer_than_two_shared_images_is_refused():
    table = ledger(ledger_rows("a", "p", "s", [1.0, np.nan]), ledger_rows("b", "p", "s", [1.0, 2.0]))
    with pytest.raises(InvalidParameterError, match="p/s has 1 image.*score more images"):
        summary_table(table, {"p/s": True}, n_resamples=RESAMPLES)


def test_the_cost_is_ranked_by_its_value_without_interval_and_outside_the_mean_rank():
    table = ledger(
        *separated({"a": 2, "b": 1}, "p", "s"),
        *separated({"a": 2, "b": 1}, "p", "s", astrocytes=ASTRO),
        ledger_rows("a", "cost", "relative_cost", 4.0, images=[""]),
        ledger_rows("b", "cost", "relative_cost", 1.5, images=[""]),
    )
    summary = summary_table(table, {"p/s": True, "cost/relative_cost": False}, n_resamples=RESAMPLES)
    assert stat(summary, "cost", "relative_cost", "mean")[("b", "off")] == -1.5
    assert stat(summary, "cost", "relative_cost", "rank")[("b", "off")] == 1  # cheaper is better
    assert stat(summary, "cost", "relative_cost", "rank")[("a", "off")] == 2
    assert np.isnan(stat(summary, "cost", "relative_cost", "mean_low")[("a", "off")])
    assert np.isnan(stat(summary, "cost", "relative_cost", "rank")[("a", ASTRO)])  # no cost unit with astrocytes
    assert set(summary[(*MEAN_RANK, "n_columns")]) == {1}
    # p/s ranks the four rows together; with and without astrocytes score alike (same seed): a ties 1.5, b 3.5
    assert summary[(*MEAN_RANK, "mean_rank")].to_dict() == {("a", "off"): 1.5, ("a", ASTRO): 1.5,
                                                           ("b", "off"): 3.5, ("b", ASTRO): 3.5}


def test_rank_matrix_and_shown_summary_name_rows_and_columns_for_reading():
    table = ledger(
        *separated({"a": 2, "b": 1}, "p", "s"),
        *separated({"a": 3}, "p", "s", astrocytes=ASTRO),
        *separated({"a": 2, "b": 1}, "q", "t", model="m2", dataset="d2"),
    )
    summary = summary_table(table, {"p/s": True, "q/t": True}, n_resamples=RESAMPLES)
    ranks = rank_matrix(summary)
    assert list(ranks.index) == ["a + astrocytes", "a", "b"]
    assert list(ranks.columns) == [("m · d", "p/s"), ("m2 · d2", "q/t")]
    assert ranks.loc["a + astrocytes", ("m · d", "p/s")] == 1
    assert np.isnan(ranks.loc["a + astrocytes", ("m2 · d2", "q/t")])
    shown = shown_summary(summary, digits=1)
    assert shown.columns.nlevels == 1
    assert shown.loc["a", "m · d · p/s rank"] == "2 [2, 2]"
    assert shown.loc["a + astrocytes", "m2 · d2 · q/t"] == ""
    assert shown.loc["b", "columns"] == "2"
    with pytest.raises(InvalidParameterError, match="summary_table"):
        rank_matrix(table)


# -- agreement between protocols --------------------------------------------------------------------------


def four_columns():
    order = {"w": 4, "x": 3, "y": 2, "z": 1}
    return ledger(
        *separated(order, "segmentation", "miou"),
        *separated(order, "segmentation", "map", seed=1),  # the same order
        *separated(order, "perturbation", "auc", seed=2),  # the same means, lower is better: reversed
        *separated({"w": 2, "x": 4, "y": 1, "z": 3}, "pointing_game", "hit", seed=3),
    ), {"segmentation/miou": True, "segmentation/map": True, "perturbation/auc": False, "pointing_game/hit": True}


def test_kendall_tau_between_score_columns_is_scipy_one_when_alike_minus_one_when_reversed():
    table, directions = four_columns()
    tau, p_value = protocol_agreement(table, directions, by="column")
    miou, mean_ap = ("m", "d", "segmentation", "miou"), ("m", "d", "segmentation", "map")
    auc, hit = ("m", "d", "perturbation", "auc"), ("m", "d", "pointing_game", "hit")
    assert tau.loc[miou, mean_ap] == pytest.approx(1.0)
    assert tau.loc[miou, auc] == pytest.approx(-1.0)
    expected = kendalltau([4, 3, 2, 1], [2, 4, 1, 3])
    assert tau.loc[miou, hit] == pytest.approx(expected.statistic)
    assert p_value.loc[miou, hit] == pytest.approx(expected.pvalue)
    assert (tau.to_numpy() == tau.to_numpy().T).all()


def test_agreement_by_protocol_ranks_by_the_mean_rank_over_its_metrics_on_shared_methods():
    table, directions = four_columns()
    extra = separated({"w": 1, "x": 2, "v": 3}, "fidelity", "mif", seed=4)  # z and y absent, v new
    tau, p_value = protocol_agreement(ledger(table, *extra), {**directions, "fidelity/mif": True}, by="protocol")
    assert list(tau.index) == ["fidelity", "perturbation", "pointing_game", "segmentation"]
    assert tau.loc["segmentation", "perturbation"] == pytest.approx(-1.0)
    # fidelity ranks v 1, x 2, w 3; segmentation (miou and map alike) w 1, x 2; shared: w, x (v unscored there)
    assert tau.loc["fidelity", "segmentation"] == pytest.approx(kendalltau([3, 2], [1, 2]).statistic)
    assert tau.loc["segmentation", "segmentation"] == pytest.approx(1.0)
    with pytest.raises(InvalidParameterError, match="by='metric'.*'protocol'"):
        protocol_agreement(table, directions, by="metric")


# -- the randomisation check ------------------------------------------------------------------------------


def test_randomisation_flags_where_the_whole_interval_lies_above_the_threshold():
    rng = np.random.default_rng(2)
    unchanged = 0.9 + 0.02 * rng.standard_normal(10)
    changed = 0.1 + 0.05 * rng.standard_normal(10)
    borderline = np.array([0.1, 1.0] * 5) - 0.02  # mean 0.53, interval reaching below 0.5
    with_nan = np.append(unchanged[:9], np.nan)
    table = ledger(
        ledger_rows("attention", "randomisation", "rank_correlation_all", unchanged),
        ledger_rows("gradcam", "randomisation", "rank_correlation_all", changed),
        ledger_rows("gradcam", "randomisation", "rank_correlation_all", borderline, astrocytes=ASTRO),
        ledger_rows("rollout", "randomisation", "rank_correlation_all", with_nan),
        ledger_rows("gradcam", "randomisation", "rank_correlation_top", unchanged),  # another metric: ignored
    )
    flags = randomisation_flags(table, threshold=0.5, n_resamples=RESAMPLES).set_index(["method", "astrocytes"])
    expected = bootstrap_ci(borderline, n_resamples=RESAMPLES)
    assert flags.loc[("gradcam", ASTRO), "mean"] == pytest.approx(expected.estimate)
    assert flags.loc[("gradcam", ASTRO), "mean_low"] == pytest.approx(expected.low)
    assert expected.estimate > 0.5 > expected.low
    assert flags["maps_barely_change"].to_dict() == {
        ("attention", "off"): True, ("rollout", "off"): True, ("gradcam", ASTRO): False, ("gradcam", "off"): False,
    }
    assert flags.loc[("rollout", "off"), "n_omitted"] == 1 and flags.loc[("rollout", "off"), "n"] == 9
    assert flags.attrs["threshold"] == 0.5
    assert not randomisation_flags(table, threshold=0.95, n_resamples=RESAMPLES)["maps_barely_change"].any()


def test_randomisation_flags_say_what_to_run_when_the_protocol_is_missing():
    with pytest.raises(InvalidParameterError, match="no per-image randomisation/rank_correlation_all.*'randomisation'"):
        randomisation_flags(ledger_rows("gae", "segmentation", "miou", [0.5, 0.7]))
    with pytest.raises(InvalidParameterError, match="threshold"):
        randomisation_flags(ledger_rows("gae", "segmentation", "miou", [0.5, 0.7]), threshold=2)


# -- figures ----------------------------------------------------------------------------------------------


def cell_texts(fig):
    return [t for t in fig.axes[0].texts if t.get_text()]


def test_rank_heatmap_one_cell_per_rank_rank_one_dark_and_bold_groups_labelled():
    table = ledger(
        *separated({"a": 2, "b": 1, "c": 0}, "p", "s"),
        *separated({"a": 3}, "p", "s", astrocytes=ASTRO),
        *separated({"a": 0, "b": 2, "c": 1}, "q", "t", model="m2", dataset="d2"),
    )
    ranks = rank_matrix(summary_table(table, {"p/s": True, "q/t": True}, n_resamples=RESAMPLES))
    fig = rank_heatmap(ranks)
    assert isinstance(fig, Figure)
    (image,) = fig.axes[0].get_images()
    assert image.get_array().shape == (4, 2)
    assert image.get_clim() == (1.0, 4.0)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(ranks.index)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["p/s", "q/t"]
    group_axis = fig.axes[0].child_axes[0]
    assert [t.get_text() for t in group_axis.get_xticklabels()] == ["m · d", "m2 · d2"]
    texts = cell_texts(fig)
    assert len(texts) == int(ranks.notna().sum().sum())  # the missing cell has no number
    assert sorted(t.get_text() for t in texts if t.get_fontweight() == "bold") == ["1", "1"]
    dark, light = image.cmap(image.norm(1.0)), image.cmap(image.norm(4.0))
    assert sum(dark[:3]) < sum(light[:3])  # rank 1 darkest
    assert figure_problems(fig) == []


def test_rank_heatmap_of_a_full_benchmark_fits_the_book_one_model_at_a_time():
    rows = [f"method_{i}" + (" + astrocytes" if i % 2 else "") for i in range(44)]
    columns = pd.MultiIndex.from_product([["demo-cifar10-vit · cifar10", "demo-shapes-vit · shapes"],
                                          [f"protocol_{j}/metric_{j}" for j in range(25)]])
    ranks = pd.DataFrame(np.random.default_rng(0).permuted(np.tile(np.arange(1.0, 45.0), (50, 1)), axis=1).T,
                         index=rows, columns=columns)
    with pytest.raises(InvalidParameterError, match="50 columns do not fit.*one figure per part"):
        rank_heatmap(ranks)
    fig = rank_heatmap(ranks[["demo-shapes-vit · shapes"]])
    assert fig.axes[0].get_images()[0].get_array().shape == (44, 25)
    assert cell_texts(fig) == []  # cells too narrow for 9 pt numbers: the colours speak
    assert figure_problems(fig) == []
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ticks in (fig.axes[0].get_yticklabels(), fig.axes[0].get_xticklabels()):  # labels do not overlap
        boxes = [label.get_window_extent(renderer) for label in ticks]
        assert not any(first.overlaps(second) for first, second in zip(boxes, boxes[1:]))


def test_agreement_matrix_diverging_around_zero_with_tau_and_stars():
    table, directions = four_columns()
    tau, p_value = protocol_agreement(table, directions, by="protocol")
    fig = agreement_matrix_figure(tau, p_value, alpha=0.05)
    assert isinstance(fig, Figure)
    (image,) = fig.axes[0].get_images()
    assert image.get_clim() == (-1.0, 1.0)
    assert image.cmap(image.norm(0.0))[:3] == pytest.approx(image.cmap(0.5)[:3])  # 0 at the centre of the map
    texts = cell_texts(fig)
    assert len(texts) == tau.size
    expected = [f"{value:.2f}" + ("*" if p < 0.05 else "") for value, p in
                zip(tau.to_numpy().ravel(), p_value.to_numpy().ravel())]
    assert [t.get_text() for t in texts] == expected
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(tau.index)
    assert figure_problems(fig) == []
    with pytest.raises(InvalidParameterError, match="square"):
        agreement_matrix_figure(tau.iloc[:, :2])
