"""The figure conventions of xaikit.viz and its docstring-to-Markdown rendering."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.text import Text

from xaikit.errors import InvalidParameterError
from xaikit.viz import (
    BOOK_DPI,
    BOOK_WIDTH_IN,
    MIN_FONT_PT,
    book_style,
    doc_section,
    figure_problems,
    fit_to_book,
    image_row,
    maps_figure,
    rst_to_markdown,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def pictures(count=3, size=32):
    return np.random.default_rng(0).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def colorbars(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def map_images(fig):
    """The map images drawn (those with a colour map other than grey), by axes."""
    return [im for ax in fig.axes if getattr(ax, "_colorbar", None) is None for im in ax.get_images()
            if im.get_cmap().name != "gray" and im.get_array().ndim == 2]


def test_maps_beside_their_image_with_one_shared_colour_bar_and_class_titles():
    rng = np.random.default_rng(1)
    maps = {"raw attention": torch.rand(3, 8, 8), "GAE": torch.from_numpy(rng.random((3, 8, 8)) * 5)}
    fig = maps_figure(pictures(), maps, titles=["cat", "dog", "ship"])
    assert len(colorbars(fig)) == 1
    limits = {im.get_clim() for im in map_images(fig)}
    assert len(map_images(fig)) == 6 and len(limits) == 1  # one scale for every map
    low, high = limits.pop()
    assert low == pytest.approx(min(float(m.min()) for m in maps.values()))
    assert high == pytest.approx(max(float(m.max()) for m in maps.values()))
    titles = {ax.get_title() for ax in fig.axes}
    assert {"cat", "dog", "ship", "raw attention", "GAE"} <= titles
    # every row: the image (RGB) first, titled with its class, then its maps
    grid = {(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start): ax
            for ax in fig.axes if getattr(ax, "_colorbar", None) is None}
    assert sorted(grid) == [(r, c) for r in range(3) for c in range(3)]
    for row, title in enumerate(["cat", "dog", "ship"]):
        assert grid[row, 0].get_images()[0].get_array().ndim == 3 and grid[row, 0].get_title() == title
        assert [grid[row, c].get_images()[0].get_array().ndim for c in (1, 2)] == [2, 2]


def test_separate_scales_give_one_colour_bar_per_method():
    maps = {"a": torch.rand(2, 4, 4), "b": 10 + torch.rand(2, 4, 4)}
    fig = maps_figure(pictures(2), maps, shared_scale=False)
    assert len(colorbars(fig)) == 2
    assert len({im.get_clim() for im in map_images(fig)}) == 2


def test_signed_maps_are_centred_on_zero_and_normalised_maps_span_0_to_1():
    maps = {"signed": torch.tensor([[[-1.0, 3.0], [0.5, 0.0]]])}
    fig = maps_figure(pictures(1), maps, signed=True)
    (im,) = map_images(fig)
    assert im.get_clim() == (-3.0, 3.0) and im.get_cmap().name == "RdBu_r"
    fig = maps_figure(pictures(1), {"m": torch.tensor([[[2.0, 4.0], [3.0, 2.5]]])}, normalise=True)
    (im,) = map_images(fig)
    assert im.get_clim() == (0.0, 1.0) and float(np.asarray(im.get_array()).max()) == 1.0


@pytest.mark.parametrize("layout, count, methods", [("rows", 4, 3), ("rows", 2, 12), ("columns", 8, 2)])
def test_figures_fit_the_book_and_use_readable_fonts(layout, count, methods):
    book_style()
    maps = {f"block {i}": torch.rand(count, 8, 8) for i in range(methods)}
    fig = maps_figure(pictures(count), maps, titles=[f"class {i}" for i in range(count)], layout=layout)
    assert figure_problems(fit_to_book(fig)) == []  # at most BOOK_WIDTH_IN wide, no font below MIN_FONT_PT
    assert fig.dpi == BOOK_DPI
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert sizes and min(sizes) >= MIN_FONT_PT


def test_figure_problems_catches_small_fonts_and_wide_figures():
    fig, ax = plt.subplots(figsize=(10, 2))
    ax.set_title("tiny", fontsize=7)
    problems = figure_problems(fig)
    assert any("wide" in p for p in problems) and any("'tiny' (7.0 pt)" in p for p in problems)
    fit_to_book(fig)
    assert [p for p in figure_problems(fig) if "wide" in p] == []


def test_image_row_keeps_titles_and_width():
    book_style()
    fig = image_row(pictures(8), [f"class {i}" for i in range(8)])
    assert [ax.get_title() for ax in fig.axes] == [f"class {i}" for i in range(8)]
    assert figure_problems(fit_to_book(fig)) == []


def test_bad_maps_are_refused():
    with pytest.raises(InvalidParameterError, match="B = 3"):
        maps_figure(pictures(3), {"m": torch.rand(2, 4, 4)})
    with pytest.raises(InvalidParameterError, match="titles"):
        maps_figure(pictures(3), {"m": torch.rand(3, 4, 4)}, titles=["a"])
    with pytest.raises(InvalidParameterError, match="NaN"):
        maps_figure(pictures(1), {"m": torch.full((1, 2, 2), float("nan"))})


def test_doc_section_renders_rest_tables_and_lists_as_markdown():
    from xaikit.data import synthetic

    text = doc_section(synthetic, "Nodule rules")
    assert text.startswith("**Nodule rules (LIDC-IDRI rating scales; pixel scale `mm_per_pixel`")
    assert "```" not in text and "===" not in text and "``" not in text
    lines = text.splitlines()
    assert "| biomarker | drawn | rendered as |" in lines and "|---|---|---|" in lines
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| biomarker")]
    assert len(rows) == 8  # the eight LIDC biomarkers, continuation lines joined into their row
    spiculation = next(row for row in rows if row.startswith("| spiculation"))
    assert "of length (0.25 + 0.1 (S - 1)) times the major semi-axis, plus 2 pixels |" in spiculation
    assert "`p = sigmoid(z)`" in text  # inline literals become Markdown code


def test_rst_to_markdown_lists_tables_and_roles():
    text = rst_to_markdown(
        "Intro with :func:`make_shapes`\nover two lines.\n\n"
        "* first item\n  continued\n* second ``x | y``\n\n"
        "=====  ======\nname   what\n=====  ======\na      one\n       more\nb      two\n=====  ======\n"
    )
    blocks = text.split("\n\n")
    assert blocks[0] == "Intro with `make_shapes` over two lines."
    assert blocks[1] == "- first item continued\n- second `x | y`"
    assert blocks[2] == "| name | what |\n|---|---|\n| a | one more |\n| b | two |"
