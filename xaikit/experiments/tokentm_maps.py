"""What the TokenTM chapter's map and segmentation pages compute (Fig. 1, Fig. 4, Table 1).

* `block_weights`: per block, the two things TokenTM multiplies, read from the
  same recording TokenTM itself reads: the class token's attention to each patch
  (the *attention weights*) and each patch token's own *transformation weights*,
  ``W = L(Ẽ)/L(E) ⊙ NECC(cos(E, Ẽ))`` of the MHSA and the FFN layer (Eq. 12-13).
* `decomposition_maps`: three maps for the paper's Fig. 1, attention weights
  aggregated without the transformations, transformation weights aggregated
  without the attention, and TokenTM, which aggregates both.
* `segmentation_table`: every method through the ImageNet-Segmentation protocol
  (`xaikit.protocols.Segmentation`), one ``explain`` per method per batch, with the
  time each method took.
* `ranking_against_paper`: Kendall's tau of our method order against the paper's,
  per metric, with the rows ranked differently named; `first_place_verdict` says in
  words where a method ranks first, here and in the paper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import ViTRecorder
from ..methods import get_method
from ..methods.base import eval_mode
from ..protocols import Segmentation
from ..targets import Target
from ..stats import ordinal  # noqa: F401  (also read as pt.ordinal / tokentm_maps.ordinal by pages and tests)
from .comparison import rank_agreement

#: Table 1's metrics: our column name -> the key of `SegmentationResult.summary`
SEGMENTATION_METRICS = {"pixel accuracy": "pixel_accuracy", "mAP": "mean_ap", "mIoU": "miou"}


# -- Fig. 1: attention weights and transformation weights ----------------------------------------


@dataclass(frozen=True)
class BlockWeights:
    """Per block and patch token, what TokenTM's update of that block multiplies; each (B, blocks, gh, gw).

    - ``attention``: the class token's attention to each patch, ``mean_h A^h[cls, j]``;
    - ``mhsa_transformation``: the MHSA layer's transformation weight of each patch
      token, ``mean_h W^h_jj`` (one W per head, Eq. 12-13);
    - ``ffn_transformation``: the FFN layer's transformation weight ``W_jj``;
    - ``input_lengths`` (B, gh, gw): ``L(E⁰_j)``, the lengths TokenTM starts from (Eq. 18).
    """

    attention: torch.Tensor
    mhsa_transformation: torch.Tensor
    ffn_transformation: torch.Tensor
    input_lengths: torch.Tensor


def block_weights(model: nn.Module, images: torch.Tensor, **tokentm_settings) -> BlockWeights:
    """The attention and transformation weights of every block, from one forward pass (no gradients).

    The transformation weights are exactly those TokenTM multiplies the attention with
    (`xaikit.methods.tokentm.TokenTM.token_weights`); `tokentm_settings` are TokenTM's
    settings that change them (``input_tokens``, ``transformed_tokens``,
    ``necc_domain``; ``variant`` may be ``"full"`` (default) or ``"af_l"``, without NECC).
    Neither quantity depends on the explained class.
    """
    explainer = _tokentm(model, tokentm_settings)
    if explainer.variant not in ("full", "af_l"):
        raise InvalidParameterError(
            f"variant {explainer.variant!r} has no transformation weights (W = I); use variant='full' or 'af_l'"
        )
    explainer.check_inputs(images)
    parameter = next(model.parameters())
    images = images.to(device=parameter.device, dtype=parameter.dtype)
    with eval_mode(model), ViTRecorder(model, record=explainer.records) as recorder, torch.no_grad():
        model(images)
        prefix = recorder.num_prefix_tokens
        gh, gw = recorder.grid
        attention, mhsa, ffn = [], [], []
        for record, block in zip(recorder.blocks, model.blocks):
            attn_weights, mlp_weights = explainer.token_weights(record, block, prefix)
            attention.append(record.get("attn").mean(dim=1)[:, 0, prefix:])
            mhsa.append(attn_weights.mean(dim=1)[:, prefix:])
            ffn.append(mlp_weights[:, prefix:])
        lengths = recorder.blocks[0].get("input").norm(dim=-1)[:, prefix:]

    def grid(per_block: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(per_block, dim=1).float().reshape(len(images), len(per_block), gh, gw)

    return BlockWeights(grid(attention), grid(mhsa), grid(ffn), lengths.float().reshape(len(images), gh, gw))


def transformation_flow(weights: BlockWeights, depth: int | None = None) -> torch.Tensor:
    """The transformation weights aggregated as TokenTM aggregates them, with the attention left out.

    With every attention matrix replaced by the identity (no token mixes with another)
    and the gradient weighting dropped, TokenTM's updates ``U = I + mean_h A^h W^h`` and
    ``I + W_ffn`` become diagonal, so the map of patch j is its own product
    ``L(E⁰_j) · Π_blocks (1 + w^MHSA_j)(1 + w^FFN_j)``, over all blocks or the first
    `depth`. (B, gh, gw).
    """
    blocks = weights.attention.shape[1]
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not 1 <= depth <= blocks):
        raise InvalidParameterError(f"depth must be None (all blocks) or an int in [1, {blocks}]; got {depth!r}")
    factors = (1 + weights.mhsa_transformation) * (1 + weights.ffn_transformation)
    return weights.input_lengths * factors[:, : depth or blocks].prod(dim=1)


def decomposition_maps(
    model: nn.Module, images: torch.Tensor, targets: Target = None, *, batch_size: int | None = None, **tokentm_settings
) -> dict[str, torch.Tensor]:
    """Fig. 1: attention weights alone, transformation weights alone, and TokenTM, as maps (B, gh, gw).

    - ``"attention weights"``: TokenTM's aggregation with W = I and C⁰ = I
      (``variant="af"``, the "+AF" row of Table 6): the attention, weighted by its
      gradient, flowing through all blocks;
    - ``"transformation weights"``: `transformation_flow`, the aggregation with the
      attention replaced by the identity;
    - ``"TokenTM"``: the full method (``tokentm_settings`` apply to it and to the
      transformation weights).
    """
    settings = dict(tokentm_settings)
    if settings.pop("variant", "full") != "full":
        raise InvalidParameterError("decomposition_maps compares the full TokenTM with its parts; leave variant out")
    explainer = _tokentm(model, settings)  # checks the settings before any work
    from .. import explain

    flow_settings = {k: v for k, v in settings.items() if k in ("gradient", "depth")}
    attention = explain(model, images, "tokentm", targets, batch_size=batch_size, variant="af", **flow_settings)
    weight_settings = {k: v for k, v in settings.items() if k not in ("gradient", "depth")}
    chunks = [images] if batch_size is None else list(torch.split(images, int(batch_size)))
    transformation = torch.cat(
        [transformation_flow(block_weights(model, chunk, **weight_settings), explainer.depth) for chunk in chunks]
    )
    full = explain(model, images, "tokentm", targets, batch_size=batch_size, **settings)
    return {"attention weights": attention, "transformation weights": transformation.to(full.device), "TokenTM": full}


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation over the tokens of each map pair: (B, ...) and (B, ...) -> (B,).

    Ties get the mean of their ranks (`scipy.stats.rankdata`); a constant map gives NaN.
    """
    from scipy.stats import spearmanr

    a = torch.as_tensor(first).detach().float().cpu().flatten(1).numpy()
    b = torch.as_tensor(second).detach().float().cpu().flatten(1).numpy()
    if a.shape != b.shape:
        raise InvalidParameterError(f"maps {tuple(first.shape)} and {tuple(second.shape)} must have the same shape")
    values = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            values.append(np.nan)
        else:
            values.append(spearmanr(x, y).statistic)
    return torch.tensor(values, dtype=torch.float64)


def _tokentm(model: nn.Module, settings: Mapping) -> object:
    return get_method("tokentm").create(model, **dict(settings))


# -- Table 1: ImageNet-Segmentation --------------------------------------------------------------


def _batch_parts(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(batch, "images") and hasattr(batch, "masks"):
        return batch.images, batch.masks
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise InvalidParameterError(
        "each batch must be (images, masks) or have .images and .masks (xaikit.data.imagenet_seg.SegmentationBatch); "
        f"got {type(batch).__name__}"
    )


def _check_methods(methods: Mapping[str, tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    if not isinstance(methods, Mapping) or not methods:
        raise InvalidParameterError(
            "methods must be a non-empty dict: row label -> (xaikit method name, settings), "
            "e.g. xaikit.experiments.tokentm.METHODS"
        )
    checked = {}
    for label, entry in methods.items():
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Mapping)):
            raise InvalidParameterError(
                f"methods[{label!r}] must be (method name, settings dict), e.g. ('rollout', {{'start_layer': 1}}); got {entry!r}"
            )
        get_method(entry[0])  # an unknown name fails here, before any work
        checked[str(label)] = (entry[0], dict(entry[1]))
    return checked


#: the row label of the "background everywhere" floor in the chapter's tables
ALL_BACKGROUND_LABEL = "all background"


def segmentation_per_image(stats: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Each image's own segmentation scores (percent), from `xaikit.metrics.segmentation_stats`' dict.

    Columns ``pixel accuracy`` (correct pixels over the image's pixels), ``mAP`` (the image's AP) and
    ``mIoU`` (the mean over background and foreground of the image's own IoU). Their means over images
    are not the pooled scores of Table 1 (pixel accuracy and IoU pool pixels over all images; the mean
    of the APs is the same), but they are what a paired comparison over the same images needs.
    """
    missing = [key for key in ("correct", "labeled", "intersection", "union", "ap") if key not in stats]
    if missing:
        raise InvalidParameterError(f"statistics lack {', '.join(missing)}; make them with xaikit.metrics.segmentation_stats")
    correct = torch.as_tensor(stats["correct"]).double()
    labeled = torch.as_tensor(stats["labeled"]).double()
    intersection = torch.as_tensor(stats["intersection"]).double()
    union = torch.as_tensor(stats["union"]).double()
    eps = float(np.spacing(1))
    return pd.DataFrame({
        "pixel accuracy": (100 * correct / (labeled + eps)).numpy(),
        "mAP": (100 * torch.as_tensor(stats["ap"]).double()).numpy(),
        "mIoU": (100 * (intersection / (union + eps)).mean(1)).numpy(),
    })


@dataclass
class SegmentationScores:
    """Table 1 pooled as the reference pools it (`table`) and every row's per-image scores (`per_image`).

    ``per_image[label]`` is `segmentation_per_image` of that row: one row per image, in the order the
    batches gave them, the same images for every row.
    """

    table: pd.DataFrame
    per_image: dict[str, pd.DataFrame]

    def scores(self, metric: str) -> pd.DataFrame:
        """One metric of every row: rows images, columns the table's rows (for `xaikit.stats.rank_intervals`)."""
        if metric not in SEGMENTATION_METRICS:
            raise InvalidParameterError(f"metric must be one of {list(SEGMENTATION_METRICS)}; got {metric!r}")
        return pd.DataFrame({label: frame[metric].to_numpy() for label, frame in self.per_image.items()})


def segmentation_scores(
    model: nn.Module,
    batches: Iterable,
    methods: Mapping[str, tuple[str, dict]],
    batch_size: int | None = None,
    *,
    all_background: bool = False,
) -> SegmentationScores:
    """Table 1 (see `segmentation_table`) with every row's per-image scores kept.

    With ``all_background=True`` a last row ``"all background"`` (`ALL_BACKGROUND_LABEL`, identifier
    ``all_background``) scores the floor that predicts background everywhere
    (`xaikit.protocols.segmentation.all_background_stats`), on the same masks; its times are 0.
    """
    from ..protocols.segmentation import all_background_stats

    methods = _check_methods(methods)
    if ALL_BACKGROUND_LABEL in methods:
        raise InvalidParameterError(f"{ALL_BACKGROUND_LABEL!r} is the floor's row: name no method so")
    protocol = Segmentation(upsample_mode="bilinear")
    stats: dict[str, list] = {label: [] for label in methods}
    floor: list = []
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    from .. import explain

    for batch in batches:
        images, masks = _batch_parts(batch)
        if len(images) != len(masks):
            raise InvalidParameterError(f"a batch has {len(images)} images but {len(masks)} masks")
        if len(images) == 0:
            continue
        for label, (method, settings) in methods.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            maps = explain(model, images, method, None, batch_size=batch_size, **settings)
            stats[label].append(protocol(maps, masks).per_image)
            wall[label] += time.perf_counter() - started
            cpu[label] += time.process_time() - started_cpu
        if all_background:
            floor.append(all_background_stats(torch.as_tensor(masks).cpu()))
    if not any(stats.values()):
        raise InvalidParameterError("batches yielded no images: give at least one (images, masks) batch")
    rows, per_image = [], {}
    parts = dict(stats, **({ALL_BACKGROUND_LABEL: floor} if all_background else {}))
    for label, part in parts.items():
        pooled = Segmentation.pool(part)
        summary = pooled.summary(percent=True)
        count = len(pooled.per_image["ap"])
        per_image[label] = segmentation_per_image(pooled.per_image)
        rows.append(
            {
                "method": label,
                **{column: summary[key] for column, key in SEGMENTATION_METRICS.items()},
                "images": count,
                "degenerate maps": int(pooled.per_image["degenerate"].sum()),
                "seconds per image": wall.get(label, 0.0) / count,
                "CPU seconds per image": cpu.get(label, 0.0) / count,
            }
        )
    return SegmentationScores(table=pd.DataFrame(rows).set_index("method"), per_image=per_image)


def segmentation_table(
    model: nn.Module,
    batches: Iterable,
    methods: Mapping[str, tuple[str, dict]],
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Table 1: every method's ImageNet-Segmentation scores, pooled over all batches.

    `batches` yields (images, masks) pairs or `SegmentationBatch` es (images normalised
    for `model`, masks (B, H, W) in {0, 1} at the images' size); it is read once, so a
    generator over a large file works. Per batch, each method explains the batch's
    predicted classes with one ``xaikit.explain(..., batch_size=batch_size)`` and the
    protocol's per-image statistics are kept; the protocol's post-processing (token maps
    upsampled bilinearly to the mask size, min-max, threshold at each map's mean) is
    `xaikit.metrics.segmentation_stats`'. Pixel accuracy and IoU are pooled over all
    pixels, mAP is the mean of the per-image APs (`Segmentation.pool`).

    Returns one row per method (index ``method``, in the order of `methods`) with
    ``pixel accuracy``, ``mAP`` and ``mIoU`` in percent (the paper's columns),
    ``images``, ``degenerate maps`` (maps min-max could not normalise, scored as the
    reference scores them), and ``seconds per image`` and ``CPU seconds per image``
    (explaining and scoring; the CPU time counts every thread of this process).
    `segmentation_scores` keeps the per-image scores too.
    """
    return segmentation_scores(model, batches, methods, batch_size).table


# -- our ranking against the paper's --------------------------------------------------------------


def ranking_against_paper(
    ours: pd.DataFrame, paper: pd.DataFrame, metrics: Iterable[str], *, higher_is_better: bool | Mapping[str, bool] = True
) -> pd.DataFrame:
    """Per metric, Kendall's tau between our order of the methods and the paper's, on the rows both have.

    One row per metric (index ``metric``): ``tau``, ``p-value``, ``methods`` (how many
    were compared), ``pairs ordered differently`` (count), ``best here``, ``best in the
    paper``, and ``ranked differently``: every method whose rank among the compared
    methods differs, as ``"name (ours r, paper s)"``, best rank 1, in our order
    (``"none"`` if all agree). `higher_is_better` is one bool or one per metric.
    """
    rows = []
    for metric in metrics:
        if metric not in ours.columns or metric not in paper.columns:
            raise InvalidParameterError(f"metric {metric!r} is not a column of both tables ({list(ours.columns)}, {list(paper.columns)})")
        better = higher_is_better[metric] if isinstance(higher_is_better, Mapping) else higher_is_better
        agreement = rank_agreement(ours[metric], paper[metric], higher_is_better=better)
        compared = list(agreement.methods)
        ranks = pd.DataFrame(
            {
                "ours": ours.loc[compared, metric].rank(ascending=not better, method="min"),
                "paper": paper.loc[compared, metric].rank(ascending=not better, method="min"),
            }
        ).sort_values(["ours", "paper"], kind="stable")
        moved = ranks[ranks["ours"] != ranks["paper"]]
        rows.append(
            {
                "metric": metric,
                "tau": agreement.tau,
                "p-value": agreement.p_value,
                "methods": len(compared),
                "pairs ordered differently": len(agreement.disagreeing),
                "best here": agreement.our_best,
                "best in the paper": agreement.paper_best,
                "ranked differently": ", ".join(
                    f"{name} (ours {int(row.ours)}, paper {int(row.paper)})" for name, row in moved.iterrows()
                ) or "none",
            }
        )
    return pd.DataFrame(rows).set_index("metric")




def first_place_verdict(
    ours: pd.DataFrame, paper: pd.DataFrame, metrics: Iterable[str], method: str = "TokenTM", *, higher_is_better: bool = True
) -> str:
    """A sentence saying on which `metrics` `method` ranks first here and in the paper.

    Our ranks count every row of `ours` (methods the paper lacks included), ties
    sharing the best rank, e.g. "Of the 12 methods here, TokenTM ranks first on none
    of the metrics (5th on pixel accuracy, 3rd on mAP, 4th on mIoU); in the paper it
    ranks first on all three metrics".
    """
    metrics = list(metrics)
    if not metrics:
        raise InvalidParameterError("give at least one metric")
    for table, name in ((ours, "our table"), (paper, "the paper's table")):
        if method not in table.index:
            raise InvalidParameterError(f"{method!r} is not a row of {name} ({list(table.index)})")
        missing = [m for m in metrics if m not in table.columns]
        if missing:
            raise InvalidParameterError(f"{name} has no column {', '.join(map(repr, missing))}")

    def ranks(table: pd.DataFrame) -> dict[str, int]:
        return {m: int(table[m].rank(ascending=not higher_is_better, method="min")[method]) for m in metrics}

    def first_on(table_ranks: dict[str, int]) -> str:
        first = [m for m in metrics if table_ranks[m] == 1]
        if len(first) == len(metrics):
            return {1: metrics[0], 2: "both metrics", 3: "all three metrics"}.get(len(metrics), f"all {len(metrics)} metrics")
        return f"{' and '.join(first)} only" if first else "none of the metrics"

    ours_ranks = ranks(ours)
    listing = ", ".join(f"{ordinal(rank)} on {m}" for m, rank in ours_ranks.items())
    here = f"Of the {len(ours)} methods here, {method} ranks first on {first_on(ours_ranks)}"
    if any(rank != 1 for rank in ours_ranks.values()):
        here += f" ({listing})"
    return f"{here}; in the paper it ranks first on {first_on(ranks(paper))}"
