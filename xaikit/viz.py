"""The figure and text conventions every notebook of the book follows.

Figures
    * the input image beside its maps (`maps_figure`);
    * a colour bar, one for all maps meant to be compared (``shared_scale=True``), or one
      per method when the methods' units differ;
    * class names in the titles;
    * fonts of at least `MIN_FONT_PT` points at the size the book shows the figure;
    * a numbered caption: the notebook glues the figure (`glue_figure`) and shows it with
      a ``{glue:figure}`` block in a Markdown cell, which Sphinx numbers.

Numbered figures and tables
    The chapters are numbered (``numbered: true`` in ``book/_toc.yml``) and Sphinx numbers
    figures and tables per chapter (``numfig``, ``numfig_secnum_depth`` 1): "Figure 3.2" is
    the second figure of chapter 3, counted over the chapter's index and all its pages;
    "Table 3.1" likewise. The papers' figures are named as "the paper's Fig. 5", never
    "Figure 5", so the two never collide. A page refers to its own figures and tables by
    name with the numref role, {numref}`fig-name`, which fills the number in; never by a typed number.

    A figure: ``glue_figure("fig-name", fig)`` in a code cell, then in a Markdown cell::

        ```{glue:figure} fig-name
        :name: fig-name

        Caption: what the figure shows, in one or two sentences.
        ```

    A table: ``glue_table("tab-name", show_table(df, 1))`` in a code cell (a DataFrame or a
    pandas Styler; the Styler's formatting is kept), then in a Markdown cell a ``{table}``
    block around a ``{glue:md}`` of it (four backticks outside, three inside)::

        ````{table} Caption: what the table shows.
        :name: tab-name

        ```{glue:md} tab-name
        :format: myst
        ```
        ````

    Every ``{glue:figure}`` and ``{table}`` block has a ``:name:`` (tests/test_book_text.py).

How big a figure is in the book
    The book is read on a desktop browser window of 1400 px or more, where the content
    column of the sphinx-book-theme page is about 790 CSS px wide. Figures are drawn at
    `BOOK_DPI` (100) dots per inch, the PNG holds ``inches x 100`` pixels, and a figure at
    most `BOOK_WIDTH_IN` (7.5 in = 750 px) wide is shown pixel for pixel, never scaled
    down. A font of 9 pt is then 12.5 px high on screen (9.4 pt at the CSS 96 px/in), so
    a figure's point sizes are its sizes as read. `fit_to_book` keeps figures within that
    width (shrinking the axes, never the fonts) and `figure_problems` checks both rules.

Text
    `doc_section` shows a section of a docstring (reStructuredText: paragraphs, bullet
    lists, simple ``===`` tables) as Markdown, so rules written once in the code render as
    Markdown lists and tables in the book.
"""

from __future__ import annotations

import inspect
import re
from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import InvalidParameterError

BOOK_WIDTH_IN = 7.5  #: widest figure the book shows without scaling it down (inches)
BOOK_DPI = 100  #: dots per inch of the PNGs in the book
MIN_FONT_PT = 9  #: smallest font size allowed in a figure (points at the rendered size)
FONT_PT = 10  #: default size of titles and labels
TICK_PT = 9  #: default size of tick labels and legends

#: matplotlib settings of `book_style`
BOOK_RC = {
    "figure.dpi": BOOK_DPI,
    "savefig.dpi": BOOK_DPI,
    "figure.figsize": (BOOK_WIDTH_IN, 3.0),
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": TICK_PT,
    "ytick.labelsize": TICK_PT,
    "legend.fontsize": TICK_PT,
    "legend.title_fontsize": FONT_PT,
    "figure.titlesize": FONT_PT + 1,
    "image.interpolation": "nearest",
}


#: The CDAM authors' diverging colour map (reference-spec 2.7): cyan (negative) through black (0) to orange.
CDAM_COLOURS = ((0.0, "#00E3FF"), (0.37, "#4371AB"), (0.5, "#000000"), (0.63, "#8B5A44"), (1.0, "#FFA600"))


def cdam_cmap():
    """The CDAM colour map as a matplotlib colormap; use it with limits symmetric about 0 (``signed=True``)."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("cdam", list(CDAM_COLOURS))


def book_style() -> None:
    """Set the book's matplotlib/seaborn style and pandas display options (call once per notebook).

    pandas shows every row, column and the whole text of every cell (no "..."), so a table
    in the book is never truncated; `xaikit.report.show_table` rounds it.
    """
    import matplotlib as mpl
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update(BOOK_RC)
    for option, value in (("display.max_colwidth", None), ("display.max_columns", None),
                          ("display.max_rows", None), ("display.width", None)):
        pd.set_option(option, value)


def normalise_for_display(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-map min-max to [0, 1] (constant maps become 0), as numpy."""
    flat = torch.as_tensor(maps).detach().float().cpu().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp(min=1e-12)
    return scaled.reshape(tuple(maps.shape)).numpy()


def _as_maps(label: str, maps, count: int) -> np.ndarray:
    array = (maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=np.float32))
    if array.ndim != 3 or len(array) != count:
        raise InvalidParameterError(
            f"maps[{label!r}] must be (B, h, w) with B = {count} images; got shape {tuple(array.shape)}"
        )
    if not np.isfinite(array).all():
        raise InvalidParameterError(f"maps[{label!r}] holds NaN or infinite values")
    return array


def _as_images(images) -> np.ndarray:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
        raise InvalidParameterError(
            f"images must be (B, H, W, 3) RGB or (B, H, W) grey pictures (see xaikit.imaging.to_display); "
            f"got shape {tuple(array.shape)}"
        )
    return array


def _limits(arrays: Sequence[np.ndarray], signed: bool) -> tuple[float, float]:
    values = np.concatenate([a.ravel() for a in arrays])
    if signed:
        bound = float(np.abs(values).max()) or 1.0
        return -bound, bound
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low, low + 1.0)


def _show_image(ax, image: np.ndarray) -> None:
    if image.ndim == 2 or image.shape[-1] == 1:
        ax.imshow(image.squeeze(-1) if image.ndim == 3 else image, cmap="gray")
    else:
        ax.imshow(image)


def maps_figure(
    images,
    maps: Mapping[str, torch.Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    shared_scale: bool = True,
    normalise: bool = False,
    signed: bool = False,
    cmap: str | None = None,
    layout: str = "rows",
    overlay: float = 0.0,
    colorbar_label: str = "",
    cell_inches: float = 1.6,
    input_label: str = "input",
):
    """The input images beside their maps, with colour bar(s); returns the matplotlib figure.

    Parameters
    ----------
    images: pictures (B, H, W, 3) uint8 or (B, H, W) grey, e.g. `xaikit.imaging.to_display`.
    maps: method (or quantity) label -> maps (B, h, w). Token maps (h, w smaller than the
        image) are drawn over the whole picture, one square per token.
    titles: one title per image, e.g. its class name (the true class, the prediction).
    shared_scale: one colour scale and bar for every map (maps meant to be compared);
        False gives each entry of `maps` its own scale and bar (methods in other units).
    normalise: min-max each map to [0, 1] first (signed maps: divide by max |map|), so
        only the pattern inside each map is compared.
    signed: the maps have a meaningful sign: a diverging colour map centred on 0.
    layout: "rows" puts each image in a row, its maps to its right; "columns" puts each
        image in a column, its maps below it (for many small images).
    overlay: if > 0, draw each map over a grey copy of its image with this opacity.
    cell_inches: the largest size of one panel; the figure is never wider than
        `BOOK_WIDTH_IN` (panels shrink instead).
    """
    import matplotlib.pyplot as plt

    if layout not in ("rows", "columns"):
        raise InvalidParameterError(f"layout must be 'rows' or 'columns'; got {layout!r}")
    if not maps:
        raise InvalidParameterError("maps is empty: give at least one label -> (B, h, w) maps")
    pictures = _as_images(images)
    count = len(pictures)
    arrays = {label: _as_maps(label, m, count) for label, m in maps.items()}
    if titles is not None and len(titles) != count:
        raise InvalidParameterError(f"titles has {len(titles)} entries for {count} images; give one per image")
    if normalise:
        if signed:
            arrays = {k: a / np.maximum(np.abs(a).reshape(count, -1).max(1), 1e-12)[:, None, None] for k, a in arrays.items()}
        else:
            arrays = {k: normalise_for_display(a) for k, a in arrays.items()}
    cmap = cmap or ("RdBu_r" if signed else "inferno")
    labels = list(arrays)
    if shared_scale:
        limits = dict.fromkeys(labels, _limits(list(arrays.values()), signed))
    else:
        limits = {k: _limits([a], signed) for k, a in arrays.items()}

    panels_across = 1 + len(labels) if layout == "rows" else count
    panels_down = count if layout == "rows" else 1 + len(labels)
    bar_space = 0.9 if (shared_scale or layout == "columns") else 0.0
    cell = min(cell_inches, (BOOK_WIDTH_IN - bar_space) / panels_across)
    title_space = 0.3
    extra_height = 0.0 if (shared_scale or layout == "columns") else 0.7  # colour bars under the columns
    fig, axes = plt.subplots(
        panels_down, panels_across, squeeze=False, layout="constrained",
        figsize=(cell * panels_across + bar_space, (cell + title_space) * panels_down + extra_height),
    )
    height, width = pictures.shape[1:3]
    map_axes: dict[str, list] = {label: [] for label in labels}
    images_shown = {}
    for i in range(count):
        row = axes[i] if layout == "rows" else axes[:, i]
        _show_image(row[0], pictures[i])
        heading = titles[i] if titles is not None else ""
        row[0].set_title(heading or (input_label if layout == "rows" and i == 0 else ""), fontsize=FONT_PT)
        for j, label in enumerate(labels, start=1):
            ax = row[j]
            if overlay > 0:
                grey = pictures[i] if pictures[i].ndim == 2 else pictures[i].mean(-1)
                ax.imshow(grey, cmap="gray")
            low, high = limits[label]
            images_shown[label] = ax.imshow(
                arrays[label][i], cmap=cmap, vmin=low, vmax=high, alpha=overlay if overlay > 0 else None,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest",
            )
            map_axes[label].append(ax)
            if layout == "rows" and i == 0:
                ax.set_title(label, fontsize=FONT_PT)
            if layout == "columns" and i == 0:
                ax.set_ylabel(label, fontsize=FONT_PT)
    if layout == "columns":
        axes[0, 0].set_ylabel(input_label, fontsize=FONT_PT)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    bars = []
    if shared_scale:
        bars.append(fig.colorbar(images_shown[labels[0]], ax=[a for k in labels for a in map_axes[k]],
                                 location="right", shrink=0.9 if panels_down > 1 else 1.0))
    else:
        for label in labels:
            bars.append(fig.colorbar(images_shown[label], ax=map_axes[label],
                                     location="bottom" if layout == "rows" else "right", shrink=0.9))
    for bar in bars:
        bar.ax.tick_params(labelsize=TICK_PT)
        if colorbar_label:
            bar.set_label(colorbar_label, fontsize=TICK_PT)
        bar.ax.grid(False)
    return fig


def image_row(images, titles: Sequence[str] | None = None, *, cell_inches: float = 1.2, cmap: str | None = None):
    """Pictures side by side with their titles (e.g. class names), within the book's width."""
    import matplotlib.pyplot as plt

    pictures = _as_images(images)
    count = len(pictures)
    if titles is not None and len(titles) != count:
        raise InvalidParameterError(f"titles has {len(titles)} entries for {count} images; give one per image")
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    cell = min(cell_inches, BOOK_WIDTH_IN / count)
    fig, axes = plt.subplots(1, count, squeeze=False, layout="constrained",
                             figsize=(cell * count, cell + 0.2 * lines))
    for ax, picture, title in zip(axes[0], pictures, titles if titles is not None else [""] * count):
        if cmap is not None:
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=255)
        else:
            _show_image(ax, picture)
        ax.set_title(title, fontsize=TICK_PT if lines > 1 else FONT_PT)
        ax.axis("off")
    return fig


def facet_height(columns: int, aspect: float = 1.0, extra_inches: float = 1.2) -> float:
    """The seaborn facet `height` that keeps `columns` facets (plus a legend/labels margin) in the book's width."""
    if columns < 1 or aspect <= 0:
        raise InvalidParameterError(f"columns must be >= 1 and aspect > 0; got {columns}, {aspect}")
    return min(3.0, (BOOK_WIDTH_IN - extra_inches) / (columns * aspect))


def rendered_width(fig) -> float:
    """Width in inches of the PNG the book shows: Jupyter saves the tight bounding box plus its padding."""
    import matplotlib as mpl

    fig.draw_without_rendering()  # runs the layout engine, so the bounding box is final
    return float(fig.get_tightbbox(fig.canvas.get_renderer()).width) + 2 * float(mpl.rcParams["savefig.pad_inches"])


def fit_to_book(fig, width: float = BOOK_WIDTH_IN):
    """Shrink `fig` until its saved width is at most `width` inches; fonts keep their point size."""
    for _ in range(4):
        shown = rendered_width(fig)
        if shown <= width + 0.01:
            break
        w, h = fig.get_size_inches()
        scale = width / shown * 0.99
        fig.set_size_inches(w * scale, h * scale)
    return fig


def figure_problems(fig, width: float = BOOK_WIDTH_IN, min_font: float = MIN_FONT_PT) -> list[str]:
    """What breaks the book's figure rules: too wide to be shown unscaled, text below `min_font` points."""
    from matplotlib.text import Text

    problems = []
    shown = rendered_width(fig)
    if shown > width + 0.01:
        problems.append(f"the figure is {shown:.2f} in wide; the book shows at most {width} in unscaled (use fit_to_book)")
    small = sorted({f"{t.get_text()!r} ({t.get_fontsize():.1f} pt)" for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() < min_font})
    if small:
        problems.append(f"text below {min_font} pt: {', '.join(small[:8])}" + (" ..." if len(small) > 8 else ""))
    return problems


def glue_figure(name: str, fig) -> None:
    """Fit `fig` to the book, check its fonts and glue it as `name` for a numbered ``{glue:figure}``.

    The figure is closed afterwards, so it is not shown a second time without its caption.
    """
    import matplotlib.pyplot as plt
    from myst_nb import glue

    fit_to_book(fig)
    problems = figure_problems(fig)
    if problems:
        plt.close(fig)
        raise InvalidParameterError(f"figure {name!r} breaks the book's figure rules: " + "; ".join(problems))
    glue(name, fig, display=False)
    plt.close(fig)



# -- curves and perturbation steps -----------------------------------------------------------

#: Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008) without its yellow, too pale on
#: white: the colours of the highlighted lines of `curves_figure`, in this order.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
#: markers drawn with the highlighted lines, so they differ in shape as well as colour (and in print)
CURVE_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
OTHER_LINE_COLOUR = "0.75"  #: the grey of the methods that are not highlighted


def _curve_frame(curves, x: str, y: str, panel_column: str | None):
    import pandas as pd

    if not isinstance(curves, pd.DataFrame):
        raise InvalidParameterError(f"curves must be a pandas DataFrame with columns method, {x}, {y}; got {type(curves).__name__}")
    needed = ["method", x, y] + ([panel_column] if panel_column is not None else [])
    missing = [c for c in needed if c not in curves.columns]
    if missing:
        raise InvalidParameterError(
            f"curves lack the column(s) {', '.join(map(repr, missing))}; it has {', '.join(map(str, curves.columns))}. "
            "Give one row per (method, x) with columns method, x, y (name others with x=..., y=..., panel_column=...)"
        )
    if curves.empty:
        raise InvalidParameterError("curves is empty: give at least one row per method")
    values = curves[[x, y]].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise InvalidParameterError(f"curves hold NaN or infinite values in {x!r} or {y!r}; drop or fix those rows")
    keys = ["method", x] + ([panel_column] if panel_column is not None else [])
    repeated = curves[curves.duplicated(keys, keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        where = f" in panel {first[panel_column]!r}" if panel_column is not None else ""
        raise InvalidParameterError(
            f"method {first['method']!r} has several {y!r} values at {x} = {first[x]}{where}: one line per method and panel "
            "needs one value per x; filter the other columns first, or draw them as panels (panel_column=...)"
        )
    return curves


def curves_figure(
    curves,
    *,
    highlight: Sequence[str],
    x_label: str,
    y_label: str,
    panel_column: str | None = None,
    max_lines: int = 6,
    x: str = "x",
    y: str = "y",
    sharey: bool = True,
    columns: int = 3,
    panel_inches: float = 2.4,
):
    """Line plots of many methods that stay readable: a few highlighted, the others in grey.

    Parameters
    ----------
    curves: a DataFrame with one row per (method, x[, panel]): columns ``method`` (the
        registry name), `x`, `y`, optionally ``label`` (the display name, used in the legend)
        and the column named by `panel_column`.
    highlight: the methods drawn in colour (``method`` names, or their labels), in the
        order of the legend; for example the paper's method, its strongest baseline and
        ``random``. Every other method is a thin grey line without a legend entry, so the
        reader sees where the field lies without twelve colours to tell apart.
    x_label, y_label: the axis labels.
    panel_column: one panel per value of this column (small multiples), in order of first
        appearance; None draws one panel.
    max_lines: at most this many coloured lines per panel (at most 7, the palette's size).
    sharey: the panels share the y axis (False when they show different quantities).

    The colours are Okabe and Ito's colour-blind-safe palette (`OKABE_ITO`), each with its
    own marker (`CURVE_MARKERS`); a method keeps its colour in every panel. The legend
    sits below the panels, outside them, so it covers no line. Returns the figure, at most
    `BOOK_WIDTH_IN` wide.
    """
    import matplotlib.pyplot as plt

    if isinstance(max_lines, bool) or not isinstance(max_lines, (int, np.integer)) or not 1 <= max_lines <= len(OKABE_ITO):
        raise InvalidParameterError(f"max_lines must be an int in [1, {len(OKABE_ITO)}] (the palette's colours); got {max_lines!r}")
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise InvalidParameterError(f"columns must be a positive int (panels per row); got {columns!r}")
    frame = _curve_frame(curves, x, y, panel_column)
    if isinstance(highlight, str):
        raise InvalidParameterError(f"highlight must be a list of method names, e.g. [{highlight!r}]; got the string {highlight!r}")
    methods = list(dict.fromkeys(frame["method"]))
    labels = (dict(zip(frame["method"], frame["label"].astype(str))) if "label" in frame.columns
              else {m: str(m) for m in methods})
    by_label = {label: method for method, label in labels.items()}
    chosen = []
    for name in highlight:
        method = name if name in labels else by_label.get(name)
        if method is None:
            raise InvalidParameterError(
                f"highlight names {name!r}, which is not a method of the curves; they have {', '.join(map(str, methods))}"
            )
        if method not in chosen:
            chosen.append(method)
    if len(chosen) > max_lines:
        raise InvalidParameterError(
            f"{len(chosen)} highlighted methods but at most max_lines = {max_lines} coloured lines per panel: highlight "
            "the paper's method, its strongest baseline and the floor, and leave the others grey"
        )
    style = {m: dict(color=OKABE_ITO[i], marker=CURVE_MARKERS[i]) for i, m in enumerate(chosen)}
    panels = list(dict.fromkeys(frame[panel_column])) if panel_column is not None else [None]
    across = min(columns, len(panels))
    down = -(-len(panels) // across)
    width = min(BOOK_WIDTH_IN, panel_inches * across + 0.6)
    fig, axes = plt.subplots(down, across, squeeze=False, sharex=True, sharey=sharey, layout="constrained",
                             figsize=(width, panel_inches * 0.85 * down + 0.5 + 0.25 * -(-len(chosen) // 3)))
    handles = {}
    for ax, panel in zip(axes.flat, panels):
        part = frame if panel is None else frame[frame[panel_column] == panel]
        for method in [m for m in methods if m not in style]:  # grey first, so the coloured lines lie on top
            line = part[part["method"] == method].sort_values(x)
            ax.plot(line[x], line[y], color=OTHER_LINE_COLOUR, linewidth=0.8, zorder=1, label="_nolegend_")
        for method in chosen:
            line = part[part["method"] == method].sort_values(x)
            if line.empty:
                continue
            (handles[method],) = ax.plot(line[x], line[y], linewidth=1.8, markersize=4, zorder=2,
                                         label=labels[method], **style[method])
        if panel is not None:
            ax.set_title(str(panel), fontsize=FONT_PT)
        ax.tick_params(labelsize=TICK_PT)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(x_label, fontsize=FONT_PT)
    for ax in axes[:, 0]:
        ax.set_ylabel(y_label, fontsize=FONT_PT)
    if handles:
        ordered = [handles[m] for m in chosen if m in handles]
        fig.legend(ordered, [labels[m] for m in chosen if m in handles], loc="outside lower center",
                   ncols=min(len(ordered), 3), fontsize=TICK_PT, frameon=False)
    return fit_to_book(fig)


def perturbation_steps_figure(images_at_steps, fractions: Sequence[float], titles: Sequence[str] | None = None, *,
                              step_title: str = "{percent:g} % removed", cell_inches: float = 1.2):
    """What the perturbed images look like: one row per image, one column per step.

    `images_at_steps` are pictures (S, B, H, W, 3) uint8 (or (S, B, H, W) grey), or a list of S
    such batches: step s of every image, e.g. ``to_display(model, copies)`` of the copies
    `xaikit.protocols.PerturbationEngine.perturbed_images` makes. `fractions` (S,) are the
    shares in [0, 1] removed at each step; the column titles are ``step_title`` formatted
    with ``percent`` (100 x the share). `titles` (B,) name the images (e.g. their classes)
    at the left of the rows.
    """
    import matplotlib.pyplot as plt

    steps = list(images_at_steps) if not isinstance(images_at_steps, (np.ndarray, torch.Tensor)) else images_at_steps
    if len(steps) == 0:
        raise InvalidParameterError("images_at_steps is empty: give the pictures of at least one step, (S, B, H, W, 3)")
    batches = [_as_images(step) for step in steps]
    if len({b.shape for b in batches}) > 1:
        raise InvalidParameterError(
            f"the steps' pictures differ in shape {sorted({b.shape for b in batches})}: give every step the same images (B, H, W, 3)"
        )
    shares = np.asarray(fractions, dtype=float)
    if shares.ndim != 1 or len(shares) != len(batches):
        raise InvalidParameterError(f"fractions must give one share per step ({len(batches)}); got {fractions!r}")
    if not np.isfinite(shares).all() or (shares < 0).any() or (shares > 1).any():
        raise InvalidParameterError(f"fractions must be shares in [0, 1] (0.1 for 10 %); got {shares.tolist()}")
    count = len(batches[0])
    if titles is not None and len(titles) != count:
        raise InvalidParameterError(f"titles has {len(titles)} entries for {count} images; give one per image")
    cell = min(cell_inches, (BOOK_WIDTH_IN - (0.5 if titles is not None else 0.0)) / len(batches))
    fig, axes = plt.subplots(count, len(batches), squeeze=False, layout="constrained",
                             figsize=(cell * len(batches) + (0.5 if titles is not None else 0.0), (cell + 0.1) * count + 0.3))
    for column, (share, batch) in enumerate(zip(shares, batches)):
        axes[0, column].set_title(step_title.format(percent=round(100 * share, 1)), fontsize=TICK_PT)
        for row in range(count):
            ax = axes[row, column]
            _show_image(ax, batch[row])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
    if titles is not None:
        for row, title in enumerate(titles):
            axes[row, 0].set_ylabel(str(title), fontsize=TICK_PT)
    return fit_to_book(fig)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_|$<>\[\]~])")


def table_markdown(table) -> str:
    """A DataFrame or pandas Styler as a Markdown (pipe) table, the cells as the Styler formats them.

    The index is the first column(s), headed by its name(s), unless the Styler hides it (a
    DataFrame's unnamed row numbers are left out); a DataFrame's numbers are written as pandas
    writes them (round them with ``xaikit.report.show_table(df, precision)``). Markdown's
    special characters in the cells are escaped. Columns must be one level.
    """
    import pandas as pd
    from pandas.io.formats.style import Styler

    table = getattr(table, "styler", table)  # a captioned table (xaikit.report.show_table with a caption)
    if isinstance(table, pd.DataFrame):
        plain_index = isinstance(table.index, pd.RangeIndex) and table.index.name is None
        table = table.style.format(na_rep="–")
        if plain_index:  # row numbers 0, 1, ... say nothing
            table = table.hide(axis="index")
    if not isinstance(table, Styler):
        raise InvalidParameterError(
            f"a table must be a pandas DataFrame or Styler (e.g. xaikit.report.show_table(df, 1)); got {type(table).__name__}"
        )
    frame = table.data
    if frame.columns.nlevels > 1:
        raise InvalidParameterError(
            "the table's columns have several levels, which a Markdown table cannot show: join them into one "
            "(df.columns = [' '.join(map(str, c)) for c in df.columns])"
        )
    if frame.empty:
        raise InvalidParameterError("the table is empty: give at least one row and one column")
    delimiter = "\x1f"  # a character no cell holds
    # every row whole: a many-level index repeats its values (sparsified, a row would lose its first cells)
    lines = table.to_string(delimiter=delimiter, sparse_index=False).rstrip("\n").split("\n")
    rows = [line.split(delimiter) for line in lines]
    index_shown = len(rows[0]) > len(frame.columns)
    body = rows[-len(frame):]
    header = rows[0]
    if index_shown:
        levels = len(header) - len(frame.columns)
        names = [str(n) if n is not None else "" for n in frame.index.names]
        header = names[:levels] + header[levels:]

    def line(cells):
        return "| " + " | ".join(_MARKDOWN_SPECIAL.sub(r"\\\1", cell.strip()) for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in body])


def glue_table(name: str, table) -> None:
    """Glue `table` (a DataFrame or a Styler such as ``show_table(df, 1)``) as Markdown under `name`, for a
    numbered ``{table}`` block around ``{glue:md}`` (see "Numbered figures and tables" above).

    Nothing is shown in the cell's output, so the table appears once, with its caption."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(table_markdown(table)), display=False)


# -- docstrings as Markdown -----------------------------------------------------------------

_TABLE_BORDER = re.compile(r"^=+( +=+)*$")
_BULLET = re.compile(r"^([*+-]) +")


def _inline(text: str) -> str:
    """reST inline markup -> Markdown: ``code`` and :role:`x` become `code`; '*' and '|' outside code escaped."""
    text = re.sub(r":[a-z:]+:`~?([^`]+)`", r"``\1``", text)
    parts = re.split(r"(``[^`]+``)", text)
    out = []
    for part in parts:
        if part.startswith("``") and part.endswith("``") and len(part) > 4:
            out.append(f"`{part[2:-2]}`")
        else:
            out.append(part.replace("\\", "\\\\").replace("*", r"\*").replace("|", r"\|"))
    return "".join(out)


def _table_to_markdown(lines: list[str]) -> str:
    border = lines[0]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    borders = [i for i, line in enumerate(lines) if _TABLE_BORDER.match(line.strip()) and line.strip()]
    if len(borders) < 3:  # no header row: border, body, border
        header_lines, body_lines = [], lines[borders[0] + 1 : borders[-1]]
    else:
        header_lines, body_lines = lines[borders[0] + 1 : borders[1]], lines[borders[1] + 1 : borders[2]]

    def cells(line: str) -> list[str]:
        ends = starts[1:] + [max(len(line), starts[-1] + 1)]
        return [line[s:e].strip() for s, e in zip(starts, ends)]

    def rows(block: list[str]) -> list[list[str]]:
        found: list[list[str]] = []
        for line in block:
            if not line.strip():
                continue
            row = cells(line)
            if found and not row[0]:  # a continuation line: its text belongs to the row above
                found[-1] = [f"{a} {b}".strip() for a, b in zip(found[-1], row)]
            else:
                found.append(row)
        return found

    header = rows(header_lines)[0] if header_lines else [""] * len(starts)
    body = rows(body_lines)
    markdown = ["| " + " | ".join(_inline(c) for c in header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(_inline(c) for c in row) + " |" for row in body]
    return "\n".join(markdown)


def _list_to_markdown(lines: list[str]) -> str:
    items: list[str] = []
    for line in lines:
        match = _BULLET.match(line)
        if match:
            items.append(line[match.end():].strip())
        elif items:
            items[-1] += " " + line.strip()
    return "\n".join(f"- {_inline(item)}" for item in items)


def rst_to_markdown(text: str) -> str:
    """A docstring's reStructuredText (paragraphs, bullet lists, simple ``===`` tables) as Markdown."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    indent = min((len(line) - len(line.lstrip()) for block in blocks for line in block), default=0)
    out = []
    for block in blocks:
        block = [line[indent:] for line in block]
        if _TABLE_BORDER.match(block[0].strip()):
            out.append(_table_to_markdown(block))
        elif _BULLET.match(block[0]):
            out.append(_list_to_markdown(block))
        else:
            out.append(_inline(" ".join(line.strip() for line in block)))
    return "\n\n".join(out)


def doc_section(module, title: str) -> str:
    """The indented block under the line starting with `title` in `module`'s docstring, as Markdown."""
    lines = (inspect.getdoc(module) or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
    if start is None:
        raise InvalidParameterError(f"{getattr(module, '__name__', module)}'s docstring has no section {title!r}")
    heading, body = lines[start], []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    return f"**{_inline(heading)}.**\n\n" + rst_to_markdown("\n".join(body))


# -- benchmark matrices: ranks and agreement -------------------------------------------------------

MATRIX_CELL_IN = 0.42  #: side of a cell of `rank_heatmap` / `agreement_matrix_figure` (inches), when it fits
MIN_ANNOTATED_CELL_IN = 0.3  #: narrowest cell in which a 9 pt number still fits (inches)
MIN_LABEL_STEP_IN = 0.17  #: closest two 9 pt tick labels may stand without overlapping (inches)


def _matrix_frame(name: str, frame):
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise InvalidParameterError(f"{name} must be a pandas DataFrame (rows x columns of numbers); got {type(frame).__name__}")
    if frame.empty:
        raise InvalidParameterError(f"{name} is empty: give at least one row and one column")
    try:
        values = frame.to_numpy(dtype=float)
    except (TypeError, ValueError) as error:
        raise InvalidParameterError(f"{name} must hold numbers (NaN for a missing cell): {error}") from None
    if np.isinf(values).any():
        raise InvalidParameterError(f"{name} holds infinite values; use NaN for a missing cell")
    return values


def _labels(index) -> list[str]:
    """Tick labels of a (Multi)Index: a tuple's non-empty parts joined by " · "."""
    return [" · ".join(str(part) for part in key if str(part)) if isinstance(key, tuple) else str(key) for key in index]


def _annotated_matrix(ax, values: np.ndarray, texts, *, cmap, vmin: float, vmax: float, annotate: bool,
                      bold=None, row_labels: Sequence[str], column_labels: Sequence[str]):
    """A matrix of coloured cells, each with its text (dark or light for contrast); NaN cells light grey."""
    import matplotlib as mpl

    colour_map = mpl.colormaps[cmap].with_extremes(bad="0.92")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colour_map, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), column_labels, rotation=90, fontsize=TICK_PT)
    ax.set_yticks(range(values.shape[0]), row_labels, fontsize=TICK_PT)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate:
        norm = mpl.colors.Normalize(vmin, vmax)
        for (row, column), value in np.ndenumerate(values):
            if np.isnan(value):
                continue
            red, green, blue, _ = colour_map(norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived lightness of the cell
            ax.text(column, row, texts[row][column], ha="center", va="center", fontsize=TICK_PT,
                    color="white" if dark else "black",
                    fontweight="bold" if bold is not None and bold[row, column] else "normal")
    return image


def _matrix_figure_size(rows: int, columns: int, row_labels, column_labels, cell_inches: float, aspect: float):
    """(width, height, cell width) of a matrix figure within the book's width: label margins plus the cells,
    each `aspect` times as high as wide, never narrower or lower than a line of 9 pt labels."""
    label_width = 0.075 * max(len(label) for label in row_labels) + 0.3  # ~ width of a 9 pt character
    label_height = 0.075 * max(len(label) for label in column_labels) + 0.3
    cell = min(cell_inches, (BOOK_WIDTH_IN - label_width - 1.2) / columns)
    if cell < MIN_LABEL_STEP_IN:
        fitting = max(0, int((BOOK_WIDTH_IN - label_width - 1.2) / MIN_LABEL_STEP_IN))
        raise InvalidParameterError(
            f"{columns} columns do not fit the book's width with readable labels (at most {fitting} here): draw "
            "one figure per part, e.g. per model and data set (ranks[[group]] of rank_matrix's first column level)"
        )
    row_step = max(cell * aspect, MIN_LABEL_STEP_IN)
    return label_width + cell * columns + 1.2, label_height + row_step * rows + 0.5, cell


def rank_heatmap(ranks, *, title: str | None = None, cmap: str = "viridis", annotate: bool | None = None,
                 cell_inches: float = MATRIX_CELL_IN):
    """Methods x score columns of ranks, as `xaikit.benchmark.summary.rank_matrix` gives them.

    Rank 1 (the best) is the darkest cell of the sequential colour map (``viridis``: dark blue for rank 1,
    yellow for the last) and its number is bold; a missing cell (a method not scored there) is light grey.
    Each cell shows its rank when the cells are wide enough for a 9 pt number (`MIN_ANNOTATED_CELL_IN`;
    ``annotate`` True or False forces it). Columns may be a two-level MultiIndex, e.g. ("model · dataset",
    "protocol/metric"): the second level labels the columns, the first is written once above its columns,
    with a white line between groups. Returns the figure, at most `BOOK_WIDTH_IN` wide.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    values = _matrix_frame("ranks", ranks)
    if (values[~np.isnan(values)] < 1).any():
        raise InvalidParameterError("ranks must be ranks (1 = best, NaN for a missing cell); got values below 1")
    columns = ranks.columns
    if isinstance(columns, pd.MultiIndex) and columns.nlevels != 2:
        raise InvalidParameterError(
            f"ranks' columns have {columns.nlevels} levels; give one level, or two (group, column) as rank_matrix does"
        )
    grouped = isinstance(columns, pd.MultiIndex)
    column_labels = [str(key[1]) for key in columns] if grouped else _labels(columns)
    row_labels = _labels(ranks.index)
    width, height, cell = _matrix_figure_size(*values.shape, row_labels, column_labels, cell_inches, 0.75)
    fig, ax = plt.subplots(layout="constrained", figsize=(width, height + (0.3 if grouped else 0.0)))
    highest = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    texts = [[f"{value:g}" for value in row] for row in values]
    image = _annotated_matrix(ax, values, texts, cmap=cmap, vmin=1.0, vmax=max(highest, 2.0),
                              annotate=cell >= MIN_ANNOTATED_CELL_IN if annotate is None else annotate,
                              bold=values == 1, row_labels=row_labels, column_labels=column_labels)
    if grouped:
        groups = [str(key[0]) for key in columns]
        starts = [i for i in range(len(groups)) if i == 0 or groups[i] != groups[i - 1]]
        ends = starts[1:] + [len(groups)]
        for start in starts[1:]:
            ax.axvline(start - 0.5, color="white", linewidth=3)
        top = ax.secondary_xaxis("top")
        top.set_xticks([(start + end - 1) / 2 for start, end in zip(starts, ends)],
                       [groups[start] for start in starts], fontsize=TICK_PT)
        top.tick_params(length=0)
        for spine in top.spines.values():
            spine.set_visible(False)
    bar = fig.colorbar(image, ax=ax, shrink=min(1.0, 3.0 / max(height, 0.1)), pad=0.02)
    bar.set_label("rank (1 = best)", fontsize=FONT_PT)
    bar.ax.tick_params(labelsize=TICK_PT)
    bar.ax.invert_yaxis()  # the best rank on top
    if title:
        ax.set_title(title, fontsize=FONT_PT)
    return fit_to_book(fig)


def agreement_matrix_figure(tau, p_values=None, *, alpha: float = 0.05, title: str | None = None,
                            cmap: str = "RdBu_r", annotate: bool | None = None, cell_inches: float = MATRIX_CELL_IN):
    """Kendall's tau between the rankings of every two protocols (or score columns), as a square matrix.

    ``tau`` is the first frame `xaikit.benchmark.summary.protocol_agreement` returns (rows and columns the
    same rankings). The diverging colour map is centred at 0 (limits -1 and 1): red where two rankings agree,
    blue where they are reversed, white where they are unrelated; a NaN cell (too few methods in common) is
    light grey. Each cell shows tau with two decimals, and a ``*`` where ``p_values`` (the second frame) is
    below ``alpha``. Returns the figure, at most `BOOK_WIDTH_IN` wide.
    """
    import matplotlib.pyplot as plt

    values = _matrix_frame("tau", tau)
    if values.shape[0] != values.shape[1] or _labels(tau.index) != _labels(tau.columns):
        raise InvalidParameterError(
            "tau must be square with the same rankings as rows and columns, as protocol_agreement returns; got rows "
            f"{_labels(tau.index)} and columns {_labels(tau.columns)}"
        )
    if (np.abs(values[~np.isnan(values)]) > 1 + 1e-9).any():
        raise InvalidParameterError("tau must lie in [-1, 1] (Kendall's tau); got values outside it")
    marked = np.zeros(values.shape, dtype=bool)
    if p_values is not None:
        p = _matrix_frame("p_values", p_values)
        if p.shape != values.shape:
            raise InvalidParameterError(f"p_values has shape {p.shape}, tau {values.shape}: pass the pair protocol_agreement returns")
        if not 0 < alpha < 1:
            raise InvalidParameterError(f"alpha must lie strictly between 0 and 1 (e.g. 0.05); got {alpha!r}")
        marked = np.nan_to_num(p, nan=1.0) < alpha
    labels = _labels(tau.index)
    width, height, cell = _matrix_figure_size(*values.shape, labels, labels, cell_inches, 1.0)
    fig, ax = plt.subplots(layout="constrained", figsize=(width, height))
    texts = [[f"{value:.2f}" + ("*" if mark else "") for value, mark in zip(row, marks)]
             for row, marks in zip(values, marked)]
    image = _annotated_matrix(ax, values, texts, cmap=cmap, vmin=-1.0, vmax=1.0,
                              annotate=cell >= MIN_ANNOTATED_CELL_IN if annotate is None else annotate,
                              row_labels=labels, column_labels=labels)
    bar = fig.colorbar(image, ax=ax, shrink=min(1.0, 3.0 / max(height, 0.1)), pad=0.02)
    bar.set_label("Kendall's τ" + (f" (* p < {alpha:g})" if p_values is not None else ""), fontsize=FONT_PT)
    bar.ax.tick_params(labelsize=TICK_PT)
    if title:
        ax.set_title(title, fontsize=FONT_PT)
    return fit_to_book(fig)
