"""Issue 14: line plots with a few highlighted methods, and pictures of perturbation steps."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text

from xaikit.errors import InvalidParameterError
from xaikit.viz import (
    MIN_FONT_PT,
    OKABE_ITO,
    book_style,
    curves_figure,
    figure_problems,
    perturbation_steps_figure,
    table_markdown,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def curves(methods=12, panels=("positive", "negative")):
    rng = np.random.default_rng(0)
    x = np.linspace(0, 0.9, 10)
    rows = [{"method": f"m{i}", "label": f"Method {i}", "order": panel, "x": v, "y": float(np.exp(-v * (i + 1)) + rng.random() * 0.01)}
            for panel in panels for i in range(methods) for v in x]
    return pd.DataFrame(rows)


def lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 1]


def coloured(ax):
    return [line for line in lines(ax) if to_hex(line.get_color()) != to_hex("0.75")]


def test_curves_highlight_a_few_methods_in_a_colour_blind_safe_palette_and_grey_the_rest():
    book_style()
    fig = curves_figure(curves(), highlight=["m3", "Method 0", "m11"], x_label="share removed", y_label="accuracy",
                        panel_column="order")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["positive", "negative"]  # small multiples, one per panel value
    for ax in panels:
        assert len(lines(ax)) == 12
        assert [line.get_label() for line in coloured(ax)] == ["Method 3", "Method 0", "Method 11"]
        assert [to_hex(line.get_color()) for line in coloured(ax)] == [c.lower() for c in OKABE_ITO[:3]]
        grey = [line for line in lines(ax) if line not in coloured(ax)]
        assert len(grey) == 9 and all(line.get_label().startswith("_") for line in grey)
        assert max(line.get_linewidth() for line in grey) < min(line.get_linewidth() for line in coloured(ax))
        assert len({line.get_marker() for line in coloured(ax)}) == 3  # shapes as well as colours
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["Method 3", "Method 0", "Method 11"]  # no grey entries
    assert figure_problems(fig) == []  # fits the book unscaled, no font below MIN_FONT_PT
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert min(sizes) >= MIN_FONT_PT
    assert panels[0].get_xlabel() == "share removed" and panels[0].get_ylabel() == "accuracy"


def test_legend_lies_outside_every_panel():
    fig = curves_figure(curves(panels=("a", "b", "c", "d")), highlight=["m0", "m1", "m2", "m3", "m4", "m5"],
                        x_label="x", y_label="y", panel_column="order")
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_visible():
            assert not box.overlaps(ax.get_window_extent(renderer))
    assert figure_problems(fig) == []


def test_one_panel_and_other_column_names():
    frame = curves(methods=3, panels=("p",)).drop(columns="label").rename(columns={"x": "fraction", "y": "accuracy"})
    fig = curves_figure(frame, highlight=["m1"], x_label="share", y_label="top-1", x="fraction", y="accuracy")
    (ax,) = fig.axes
    assert [line.get_label() for line in coloured(ax)] == ["m1"] and len(lines(ax)) == 3


def test_curves_refuse_what_they_cannot_draw_clearly():
    frame = curves(methods=8)
    with pytest.raises(InvalidParameterError, match="at most max_lines = 6 coloured lines"):
        curves_figure(frame, highlight=[f"m{i}" for i in range(7)], x_label="x", y_label="y", panel_column="order")
    with pytest.raises(InvalidParameterError, match="'gae', which is not a method of the curves; they have m0, m1"):
        curves_figure(frame, highlight=["gae"], x_label="x", y_label="y", panel_column="order")
    with pytest.raises(InvalidParameterError, match="several 'y' values at x = 0.0.*panel_column"):
        curves_figure(frame, highlight=["m0"], x_label="x", y_label="y")  # two orders mixed in one line
    with pytest.raises(InvalidParameterError, match="lack the column"):
        curves_figure(frame.drop(columns="y"), highlight=["m0"], x_label="x", y_label="y")
    with pytest.raises(InvalidParameterError, match="list of method names"):
        curves_figure(frame, highlight="m0", x_label="x", y_label="y", panel_column="order")
    with pytest.raises(InvalidParameterError, match="max_lines must be an int in \\[1, 7\\]"):
        curves_figure(frame, highlight=["m0"], x_label="x", y_label="y", panel_column="order", max_lines=8)
    bad = frame.copy()
    bad.loc[3, "y"] = np.nan
    with pytest.raises(InvalidParameterError, match="NaN"):
        curves_figure(bad, highlight=["m0"], x_label="x", y_label="y", panel_column="order")


def steps(count_steps=4, images=2):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count_steps, images, 32, 32, 3), dtype=np.uint8)


def test_perturbation_steps_show_every_image_at_every_step_with_titles():
    book_style()
    pictures = steps()
    fig = perturbation_steps_figure(pictures, [0.0, 0.1, 0.5, 0.9], titles=["cat", "ship"])
    grid = {(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start): ax for ax in fig.axes}
    assert sorted(grid) == [(r, c) for r in range(2) for c in range(4)]
    assert [grid[0, c].get_title() for c in range(4)] == ["0 % removed", "10 % removed", "50 % removed", "90 % removed"]
    assert [grid[r, 0].get_ylabel() for r in range(2)] == ["cat", "ship"]
    np.testing.assert_array_equal(grid[1, 2].get_images()[0].get_array(), pictures[2, 1])  # row = image, column = step
    assert figure_problems(fig) == []
    many = perturbation_steps_figure(list(steps(10, 1)), np.linspace(0, 0.9, 10), step_title="{percent:g} %")
    assert figure_problems(many) == []


def test_perturbation_steps_refuse_mismatched_inputs():
    with pytest.raises(InvalidParameterError, match="one share per step \\(4\\)"):
        perturbation_steps_figure(steps(), [0.0, 0.5])
    with pytest.raises(InvalidParameterError, match="shares in \\[0, 1\\]"):
        perturbation_steps_figure(steps(), [0, 10, 50, 90])
    with pytest.raises(InvalidParameterError, match="differ in shape"):
        perturbation_steps_figure([steps(1)[0], steps(1, 3)[0]], [0.0, 0.5])
    with pytest.raises(InvalidParameterError, match="titles has 1 entries for 2 images"):
        perturbation_steps_figure(steps(), [0.0, 0.1, 0.5, 0.9], titles=["cat"])


# -- tables for numbered captions ----------------------------------------------------------------------
def test_table_markdown_keeps_the_stylers_formatting_and_the_index_name():
    from xaikit.report import show_table
    from xaikit.viz import table_markdown

    frame = pd.DataFrame({"pixel accuracy": [84.04, 49.9], "mIoU": [42.0, np.nan]},
                         index=pd.Index(["all_background", "a|b*"], name="method"))
    assert table_markdown(show_table(frame, 1)).splitlines() == [
        "| method | pixel accuracy | mIoU |", "|---|---|---|", "| all\\_background | 84.0 | 42.0 |", "| a\\|b\\* | 49.9 | – |",
    ]
    hidden = show_table(frame.reset_index(), 2).hide(axis="index")
    assert table_markdown(hidden).splitlines()[0] == "| method | pixel accuracy | mIoU |"
    assert table_markdown(frame.reset_index()).splitlines()[2] == "| all\\_background | 84.040000 | 42.000000 |"


def test_table_markdown_refuses_what_markdown_cannot_show():
    from xaikit.viz import table_markdown

    with pytest.raises(InvalidParameterError, match="several levels"):
        table_markdown(pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])))
    with pytest.raises(InvalidParameterError, match="DataFrame or Styler"):
        table_markdown([[1, 2]])
    with pytest.raises(InvalidParameterError, match="empty"):
        table_markdown(pd.DataFrame())


def test_glue_table_glues_markdown_without_showing_it(monkeypatch):
    from myst_nb.ext import glue as glue_module

    from xaikit.viz import glue_table

    shown = []
    monkeypatch.setattr(glue_module, "ipy_display", lambda data, raw, metadata: shown.append((data, metadata)))
    glue_table("tab-x", pd.DataFrame({"a": [1]}))
    ((data, metadata),) = shown
    assert metadata["scrapbook"]["name"] == "tab-x"
    assert data["application/papermill.record/text/markdown"] == "| a |\n|---|\n| 1 |"  # not displayed: the glue prefix


def test_table_markdown_keeps_every_row_whole_under_a_two_level_index():
    import pandas as pd

    frame = pd.DataFrame({"v": [1.0, 2.0, 3.0]},
                         index=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y"), ("b", "x")], names=["m", "s"]))
    lines = table_markdown(frame.style.format(precision=1)).splitlines()
    assert lines[0] == "| m | s | v |"
    assert lines[2:] == ["| a | x | 1.0 |", "| a | y | 2.0 |", "| b | x | 3.0 |"]
