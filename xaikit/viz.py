"""Figures shared by the notebooks."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch


def normalise_for_display(maps: torch.Tensor) -> np.ndarray:
    """Per-map min-max to [0, 1] (constant maps become 0), as numpy."""
    flat = maps.detach().float().cpu().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp(min=1e-12)
    return scaled.reshape(maps.shape).numpy()


def overlay_grid(
    images: np.ndarray,
    rows: Mapping[str, torch.Tensor],
    column_titles: Sequence[str] | None = None,
    cmap: str = "inferno",
    alpha: float = 0.55,
    cell_inches: float = 1.5,
):
    """One column per image, the images on top and one row of overlaid maps per entry of `rows`.

    `images` are uint8 (B, H, W, 3); every map in `rows` is (B, H, W) at pixel resolution.
    """
    import matplotlib.pyplot as plt

    count = len(images)
    fig, axes = plt.subplots(
        1 + len(rows), count, figsize=(cell_inches * count, cell_inches * (1 + len(rows))), squeeze=False
    )
    for col in range(count):
        axes[0, col].imshow(images[col])
        if column_titles is not None:
            axes[0, col].set_title(column_titles[col], fontsize=8)
    for row, (label, maps) in enumerate(rows.items(), start=1):
        shown = normalise_for_display(maps)
        for col in range(count):
            axes[row, col].imshow(images[col])
            axes[row, col].imshow(shown[col], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        axes[row, 0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def doc_section(module, title: str) -> str:
    """The indented block under the line starting with `title` in `module`'s docstring, as Markdown."""
    import inspect

    lines = inspect.getdoc(module).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    title, start = lines[start], start + 1
    body = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        body.append(line[4:] if line.startswith("    ") else line)
    text = "\n".join(body).strip("\n")
    # reST tables become preformatted blocks in Markdown
    return f"**{title}.**\n\n" + "\n\n".join(
        f"```text\n{part}\n```" if part.lstrip().startswith("===") else " ".join(part.split())
        for part in text.split("\n\n")
    )
