"""Batched tables of the TokenTM chapter: perturbation AUC (Tables 2-4), AOPC and LOdds
(Table 5), the segmentation scores of the ablations (Tables 6-7), and the rank agreement of
every column with the paper's.

Every perturbation test of one model runs on one shared `PerturbationEngine`: each method
is explained once per explained class, and a map that was perturbed before (the map of a
class-independent method asked for the ground-truth class, or of an image whose prediction
equals its label) is read from the engine's cache instead of being forwarded again.

AUC convention: `xaikit.protocols.Perturbation`'s default, the trapezoidal area under the
top-1 accuracy curve (accuracy against the ground-truth label) over the removed shares
0, 0.1, ..., 0.9, times 100, the accuracy at share 0 measured (so a curve that stays at
1 scores 90). Pixels removed are set to black (0 in [0, 1] image space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import InvalidParameterError, WeightsUnavailableError
from ..methods import get_method
from ..methods.base import positive_int
from ..protocols import DEFAULT_FRACTIONS, Perturbation, PerturbationEngine, PerturbationResult, Segmentation
from ..protocols.perturbation import EXPLAINED_CLASSES
from ..stats import ordinal  # noqa: F401  (also read as pt.ordinal / tokentm_maps.ordinal by pages and tests)
from .comparison import rank_agreement

ORDERS = ("positive", "negative")
#: the order of the paper's columns: "Neg / Pos"
PAPER_ORDERS = ("negative", "positive")
#: our explained-class names -> the paper's column labels (Tables 2-4)
PAPER_EXPLAINED = {"predicted": "pred", "target": "GT"}
#: score column -> True when higher is better
HIGHER_IS_BETTER = {
    "negative": True, "positive": False, "AOPC": True, "LOdds": False,
    "pixel accuracy": True, "mAP": True, "mIoU": True,
}
#: the fine-tuned DeiT-B checkpoints of Tables 2-3 (the paper does not publish its own); the
#: notebook tokentm/06_cifar_finetune writes them into the weights folder under these names
CIFAR_DEIT = {"cifar10": "deit_base_patch16_224-cifar10.safetensors", "cifar100": "deit_base_patch16_224-cifar100.safetensors"}
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}

Methods = Mapping[str, tuple[str, Mapping]]
#: PerturbationRun.per_image's scores -> the per-image field of `PerturbationResult`
PER_IMAGE_SCORES = {"auc": "auc_per_image", "aopc": "aopc_per_image", "lodds": "lodds_per_image"}


def _check_methods(methods: Methods) -> dict[str, tuple[str, dict]]:
    if not isinstance(methods, Mapping) or not methods:
        raise InvalidParameterError(
            "methods must be a non-empty dict: row label -> (xaikit method name, settings), "
            "e.g. xaikit.experiments.tokentm.METHODS"
        )
    checked = {}
    for label, spec in methods.items():
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping)):
            raise InvalidParameterError(f"methods[{label!r}] must be a (method name, settings dict) pair; got {spec!r}")
        get_method(spec[0])  # unknown names fail here, before any work
        checked[str(label)] = (spec[0], dict(spec[1]))
    return checked


def _check_choices(name: str, given, valid: Sequence[str]) -> tuple[str, ...]:
    values = (given,) if isinstance(given, str) else tuple(given)
    if not values or any(v not in valid for v in values) or len(set(values)) != len(values):
        raise InvalidParameterError(f"{name} must be distinct values among {', '.join(map(repr, valid))}; got {given!r}")
    return values




def _sem(values: torch.Tensor) -> float:
    """Standard error of the mean over images (NaN for one image)."""
    values = values.double()
    return float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclass
class PerturbationRun:
    """The maps and perturbation results of every (method, explained class, order).

    - ``methods``: row label -> (xaikit method, settings);
    - ``labels``, ``predicted`` (B,): ground truth and the clean top-1 class (CPU);
    - ``maps[(label, explained)]``: the maps perturbed, CPU float32 (token or pixel maps);
    - ``results[(label, explained, order)]``: the `PerturbationResult`;
    - ``forwarded``: perturbed and clean copies the engine forwarded for this run (the rest came from its cache).
    """

    methods: dict[str, tuple[str, dict]]
    labels: torch.Tensor
    predicted: torch.Tensor
    maps: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    results: dict[tuple[str, str, str], PerturbationResult] = field(default_factory=dict)
    forwarded: int = 0

    def table(self) -> pd.DataFrame:
        """One row per (method, explained, order): ``auc`` (percent units) with its standard error
        over images ``auc_sem``, ``aopc``/``lodds`` (predicted class's probability) with theirs,
        ``clean_accuracy`` and ``images``."""
        rows = []
        for (label, explained, order), result in self.results.items():
            rows.append({
                "method": label, "explained": explained, "order": order,
                "auc": result.auc, "auc_sem": _sem(result.auc_per_image),
                "aopc": result.aopc, "aopc_sem": _sem(result.aopc_per_image),
                "lodds": result.lodds, "lodds_sem": _sem(result.lodds_per_image),
                "clean_accuracy": float((result.predicted == result.labels).double().mean()),
                "images": len(result.labels),
            })
        return pd.DataFrame(rows)

    def aopc_lodds(self) -> pd.DataFrame:
        """Table 5 from the positive test of the predicted class: one row per method with
        ``AOPC`` (higher is better), ``LOdds`` (lower is better), their standard errors over
        images ``AOPC_sem`` and ``LOdds_sem``, and ``images``."""
        table = self.table()
        table = table[(table.explained == "predicted") & (table.order == "positive")]
        if table.empty:
            raise InvalidParameterError("AOPC and LOdds need the positive test of the predicted class: run with those")
        table = table.rename(columns={"aopc": "AOPC", "aopc_sem": "AOPC_sem", "lodds": "LOdds", "lodds_sem": "LOdds_sem"})
        return table[["method", "AOPC", "AOPC_sem", "LOdds", "LOdds_sem", "images"]].reset_index(drop=True)

    def per_image(self, score: str = "auc", *, explained: str = "predicted", order: str = "positive") -> pd.DataFrame:
        """Every method's per-image `score` (``"auc"``, ``"aopc"`` or ``"lodds"``) of one test: rows the
        images (in the run's order, the same for every method), columns the methods' row labels, for
        paired comparisons (`xaikit.stats.rank_intervals`, `xaikit.verdicts`)."""
        if score not in PER_IMAGE_SCORES:
            raise InvalidParameterError(f"score must be one of {list(PER_IMAGE_SCORES)}; got {score!r}")
        columns = {label: self.results.get((label, explained, order)) for label in self.methods}
        if any(result is None for result in columns.values()):
            ran = sorted({(e, o) for _, e, o in self.results})
            raise InvalidParameterError(f"this run has no {explained!r} class, {order!r} order test; it ran {ran}")
        return pd.DataFrame({label: getattr(result, PER_IMAGE_SCORES[score]).double().numpy() for label, result in columns.items()})

    def curves(self) -> pd.DataFrame:
        """The mean curves: one row per (method, explained, order, fraction) with ``accuracy``
        (top-1 against the label) and ``probability`` (of the class predicted on the clean
        image), both means over the images, in [0, 1]."""
        rows = []
        for (label, explained, order), result in self.results.items():
            probability = result.probability.mean(0).tolist()
            for fraction, accuracy, p in zip(result.fractions.tolist(), result.accuracy.tolist(), probability):
                rows.append({"method": label, "explained": explained, "order": order, "fraction": fraction,
                             "accuracy": accuracy, "probability": p})
        return pd.DataFrame(rows)


def explain_maps(
    model: nn.Module,
    images: torch.Tensor,
    methods: Methods,
    classes: Mapping[str, torch.Tensor],
    *,
    batch_size: int = 64,
) -> dict[tuple[str, str], torch.Tensor]:
    """Maps of every method for every named set of classes, computed once where they coincide.

    `classes` maps a name (e.g. ``"predicted"``, ``"target"``) to one class per image. The
    first name's maps are computed for all images; a later name reuses them for a
    class-independent method and, for a class-specific one, for every image whose class is
    the same, explaining only the others. Returns CPU float32 maps keyed (label, name).
    """
    methods = _check_methods(methods)
    batch_size = positive_int("batch_size", batch_size)
    if not classes:
        raise InvalidParameterError("classes is empty: give at least one name -> class per image")
    names = list(classes)
    first = torch.as_tensor(classes[names[0]]).long().cpu()
    maps: dict[tuple[str, str], torch.Tensor] = {}
    for label, (method, settings) in methods.items():
        base = _explain(model, images, method, first, batch_size, settings)
        maps[(label, names[0])] = base
        for name in names[1:]:
            wanted = torch.as_tensor(classes[name]).long().cpu()
            if wanted.shape != first.shape:
                raise InvalidParameterError(f"classes[{name!r}] has {tuple(wanted.shape)} entries; give one class per image {tuple(first.shape)}")
            differ = (wanted != first).nonzero().flatten()
            own = base.clone()
            if get_method(method).class_specific and len(differ):
                own[differ] = _explain(model, images[differ.to(images.device)], method, wanted[differ], batch_size, settings)
            maps[(label, name)] = own
    return maps


def _explain(model, images, method, classes, batch_size, settings) -> torch.Tensor:
    from .. import explain

    return explain(model, images, method, targets=classes.to(images.device), batch_size=batch_size, **settings).float().cpu()


def run_perturbation(
    model: nn.Module,
    images: torch.Tensor,
    labels,
    methods: Methods,
    *,
    explained: Sequence[str] = ("predicted", "target"),
    orders: Sequence[str] = ORDERS,
    batch_size: int = 64,
    explain_batch_size: int | None = None,
    engine: PerturbationEngine | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    replacement=0.0,
    auc: str = "trapezoid",
) -> PerturbationRun:
    """Chefer's perturbation test of every method, explained class and order, batched.

    `images` (B, C, H, W) normalised (`xaikit.preprocess`), `labels` (B,) ground-truth
    classes, `methods` row label -> (xaikit method, settings) (e.g. `tokentm.METHODS`).
    `explained`: ``"predicted"`` (the clean top-1 class) and/or ``"target"`` (the label),
    the class the maps explain; accuracy is always measured against the label.
    `orders`: ``"positive"`` (most relevant pixels first; lower AUC is better) and/or
    ``"negative"`` (least relevant first; higher is better). `batch_size` copies are
    forwarded at a time; `explain_batch_size` (default `batch_size`) images are explained
    at a time. `engine`: a `PerturbationEngine` of `model` to share (and its cache);
    by default a new one. `fractions`, `replacement` and `auc` are those of
    `xaikit.protocols.Perturbation` (defaults: 0, 0.1, ..., 0.9; black; trapezoid).
    """
    methods = _check_methods(methods)
    explained = _check_choices("explained", explained, EXPLAINED_CLASSES)
    orders = _check_choices("orders", orders, ORDERS)
    batch_size = positive_int("batch_size", batch_size)
    explain_batch_size = batch_size if explain_batch_size is None else positive_int("explain_batch_size", explain_batch_size)
    if engine is None:
        engine = PerturbationEngine(model, batch_size=batch_size)
    elif engine.model is not model:
        raise InvalidParameterError("the shared engine runs another model: give the engine of this model")
    protocols = {
        order: Perturbation(model, order=order, fractions=fractions, replacement=replacement, auc=auc, engine=engine)
        for order in orders
    }
    images = engine._check_images(images)
    labels = Perturbation._check_labels(labels, images.shape[0])
    forwarded_before = engine.forwarded
    clean_logits = engine.clean_logits(images)
    predicted = clean_logits.argmax(1).cpu()
    num_classes = int(clean_logits.shape[1])
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise InvalidParameterError(f"labels must be class indices in [0, {num_classes}); got {sorted(set(labels.tolist()))[:10]}")
    classes = {"predicted": predicted, "target": labels.cpu()}
    maps = explain_maps(model, images, methods, {name: classes[name] for name in explained}, batch_size=explain_batch_size)
    run = PerturbationRun(methods=methods, labels=labels.cpu(), predicted=predicted, maps=maps)
    for label in methods:
        for name in explained:
            for order in orders:
                run.results[(label, name, order)] = protocols[order](images, labels, maps[(label, name)])
    run.forwarded = engine.forwarded - forwarded_before
    return run


def perturbation_table(
    model: nn.Module,
    images: torch.Tensor,
    labels,
    methods: Methods,
    *,
    explained: Sequence[str] = ("predicted", "target"),
    orders: Sequence[str] = ORDERS,
    batch_size: int = 64,
    engine: PerturbationEngine | None = None,
    **options,
) -> pd.DataFrame:
    """`run_perturbation(...).table()`: one row per (method, explained, order) with ``auc`` and more."""
    return run_perturbation(
        model, images, labels, methods, explained=explained, orders=orders, batch_size=batch_size, engine=engine, **options
    ).table()


def aopc_lodds_table(
    model: nn.Module,
    images: torch.Tensor,
    methods: Methods,
    *,
    labels=None,
    batch_size: int = 64,
    engine: PerturbationEngine | None = None,
    **options,
) -> pd.DataFrame:
    """Table 5: AOPC (higher is better) and LOdds (lower is better) of every method.

    Maps explain the predicted class; the most relevant pixels are removed first (positive
    order) at the shares f > 0 of `fractions`, and the probability read is that of the class
    predicted on the clean image (see `xaikit.protocols.Perturbation`). `labels` only feed the
    accuracy columns (default: the predictions). Returns one row per method: ``AOPC``,
    ``AOPC_sem``, ``LOdds``, ``LOdds_sem``, ``images``.
    """
    if engine is None:
        engine = PerturbationEngine(model, batch_size=positive_int("batch_size", batch_size))
    if labels is None:
        labels = engine.clean_logits(images).argmax(1)
    return run_perturbation(
        model, images, labels, methods, explained=("predicted",), orders=("positive",), batch_size=batch_size, engine=engine, **options
    ).aopc_lodds()


def segmentation_table(
    model: nn.Module, images: torch.Tensor, masks, methods: Methods, *, targets=None, batch_size: int = 64
) -> pd.DataFrame:
    """Chefer's segmentation scores (percent) of every method: one row per method with
    ``pixel accuracy``, ``mAP`` and ``mIoU`` pooled over the images, ``images``.

    `masks` (B, H, W) in {0, 1}; maps explain `targets` (default: the predicted class).
    """
    methods = _check_methods(methods)
    batch_size = positive_int("batch_size", batch_size)
    from .. import explain

    masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    protocol = Segmentation()
    rows = []
    for label, (method, settings) in methods.items():
        maps = explain(model, images, method, targets=targets, batch_size=batch_size, **settings)
        scores = protocol(maps.cpu(), masks.cpu()).summary()
        rows.append({"method": label, "pixel accuracy": scores["pixel_accuracy"], "mAP": scores["mean_ap"],
                     "mIoU": scores["miou"], "images": len(masks)})
    return pd.DataFrame(rows)


def auc_columns(table: pd.DataFrame, *, paper_labels: bool = True) -> pd.DataFrame:
    """A `perturbation_table` as one row per method and one AUC column per (explained, order),
    named and ordered like the paper's columns (``"pred negative"``, ``"pred positive"``,
    ``"GT negative"``, ``"GT positive"``), rows in the table's order."""
    missing = {"method", "explained", "order", "auc"} - set(table.columns)
    if missing:
        raise InvalidParameterError(f"the table lacks {sorted(missing)}: give the output of perturbation_table")
    frame = table.copy()
    names = PAPER_EXPLAINED if paper_labels else {k: k for k in PAPER_EXPLAINED}
    frame["column"] = frame["explained"].map(names) + " " + frame["order"]
    wide = frame.pivot(index="method", columns="column", values="auc")
    order = [f"{names[e]} {o}" for e in EXPLAINED_CLASSES for o in PAPER_ORDERS if f"{names[e]} {o}" in wide.columns]
    return wide.loc[list(dict.fromkeys(frame["method"])), order].rename_axis(columns=None)


def paper_auc_columns(dataset: str) -> pd.DataFrame:
    """The paper's Tables 2-4 for one data set (``"CIFAR-10"``, ``"CIFAR-100"``, ``"ImageNet"``),
    one row per method, columns named as `auc_columns` names them."""
    from .tokentm import paper_perturbation

    paper = paper_perturbation()
    datasets = sorted(set(paper.index.get_level_values("dataset")))
    if dataset not in datasets:
        raise InvalidParameterError(f"the paper's perturbation tables cover {', '.join(datasets)}; got {dataset!r}")
    part = paper.xs(dataset, level="dataset")
    wide = part.unstack("explained")
    wide.columns = [f"{explained} {order}" for order, explained in wide.columns]
    return wide[[f"{e} {o}" for e in PAPER_EXPLAINED.values() for o in PAPER_ORDERS]]




def join_names(names: Sequence[str], empty: str = "none") -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``; `empty` for no names."""
    names = [str(n) for n in names]
    if not names:
        return empty
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def agreement_table(ours: pd.DataFrame, paper: pd.DataFrame, higher_is_better: Mapping[str, bool] | None = None) -> pd.DataFrame:
    """Kendall's tau between our ranking and the paper's, one row per column both tables have.

    Both are indexed by method (or variant). Columns: ``column``, ``tau``, ``p_value``,
    ``methods`` (compared: those in both), ``best here``, ``best in paper``, ``rows placed
    differently`` (each row whose rank differs, "LRP 3rd here, 1st in the paper") and
    ``pairs ordered differently`` (every pair the two tables order oppositely, ours-better
    first). `higher_is_better` maps a column to its direction (default `HIGHER_IS_BETTER`).
    """
    directions = dict(HIGHER_IS_BETTER, **(higher_is_better or {}))
    rows = []
    for column in [c for c in ours.columns if c in paper.columns]:
        key = column.split(" ")[-1] if column not in directions else column
        if key not in directions:
            raise InvalidParameterError(f"say whether higher is better for column {column!r} (higher_is_better=)")
        better_high = directions[key]
        agreement = rank_agreement(ours[column], paper[column], higher_is_better=better_high)
        both = pd.concat({"ours": ours[column], "paper": paper[column]}, axis=1).loc[list(agreement.methods)]
        ranks = both.rank(ascending=not better_high, method="min").astype(int)
        moved = [f"{m} {ordinal(ranks.at[m, 'ours'])} here, {ordinal(ranks.at[m, 'paper'])} in the paper"
                 for m in agreement.methods if ranks.at[m, "ours"] != ranks.at[m, "paper"]]
        rows.append({
            "column": column, "tau": agreement.tau, "p_value": agreement.p_value, "methods": len(agreement.methods),
            "best here": agreement.our_best, "best in paper": agreement.paper_best,
            "rows placed differently": "; ".join(moved) or "none",
            "pairs ordered differently": ", ".join(f"{a} > {b}" for a, b in agreement.disagreeing) or "none",
        })
    if not rows:
        raise InvalidParameterError(f"no column in common: ours {list(ours.columns)}, paper {list(paper.columns)}")
    return pd.DataFrame(rows)


def rank_of(scores: pd.Series, row: str, *, higher_is_better: bool) -> int:
    """The 1-based rank of `row` in `scores` (ties share the best rank)."""
    if row not in scores.index:
        raise InvalidParameterError(f"{row!r} is not a row of the scores ({list(scores.index)})")
    return int(scores.rank(ascending=not higher_is_better, method="min")[row])


def column_summary(scores: pd.Series, *, higher_is_better: bool, row: str = "TokenTM", floor: str = "Random") -> dict:
    """What the text says about one column of scores indexed by method.

    Returns ``value`` (of `row`), ``rank`` (1 = best, ties share the best rank) and
    ``rank_text`` ("2nd"), ``best`` (the best row, the first on ties) and ``best_value``,
    ``floor`` (the value of the `floor` row, the Random maps) and ``not_better_than_floor``
    (the other rows that score no better than it).
    """
    scores = scores.dropna()
    for name in (row, floor):
        if name not in scores.index:
            raise InvalidParameterError(f"{name!r} is not a row of the scores ({list(scores.index)})")
    rank = rank_of(scores, row, higher_is_better=higher_is_better)
    best = scores.idxmax() if higher_is_better else scores.idxmin()
    floor_value = float(scores[floor])
    beaten = (scores <= floor_value) if higher_is_better else (scores >= floor_value)
    return {
        "value": float(scores[row]), "rank": rank, "rank_text": ordinal(rank), "best": best,
        "best_value": float(scores[best]), "floor": floor_value,
        "not_better_than_floor": [m for m in scores.index[beaten] if m != floor],
    }


def aggregation_depths(blocks: int, parts: int = 4) -> list[int]:
    """The depths of Table 7 for a model of `blocks` blocks: k/`parts` of them for k = 1..parts,
    rounded half up, at least 1, duplicates dropped (12 blocks: 3, 6, 9, 12; 6 blocks: 2, 3, 5, 6)."""
    for name, value in (("blocks", blocks), ("parts", parts)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidParameterError(f"{name} must be a positive int; got {value!r}")
    return list(dict.fromkeys(max(1, math.floor(blocks * k / parts + 0.5)) for k in range(1, parts + 1)))


def cifar_deit_weights(dataset: str, folder: str | Path | None = None) -> Path:
    """The fine-tuned DeiT-B weights file for `dataset` (``"cifar10"`` or ``"cifar100"``).

    Looked for in `folder`, by default the weights folder (``$XAIKIT_WEIGHTS_DIR``, else
    ``~/.cache/xaikit/weights``), as ``deit_base_patch16_224-cifar10.safetensors`` or
    ``deit_base_patch16_224-cifar100.safetensors``. The paper does not publish its
    checkpoints; the notebook ``tokentm/06_cifar_finetune`` fine-tunes
    ``deit_base_patch16_224.fb_in1k`` and saves them there. A missing file raises
    `WeightsUnavailableError` saying so.
    """
    if dataset not in CIFAR_DEIT:
        raise InvalidParameterError(f"fine-tuned DeiT-B weights exist for {', '.join(CIFAR_DEIT)}; got {dataset!r}")
    from ..models import weights_dir

    directory = Path(folder).expanduser() if folder is not None else weights_dir()
    path = directory / CIFAR_DEIT[dataset]
    if not path.is_file():
        raise WeightsUnavailableError(
            f"no fine-tuned DeiT-B weights for {dataset} at {path}. The TokenTM paper does not publish its "
            f"{dataset.upper()} checkpoints: run the notebook tokentm/06_cifar_finetune on a GPU machine "
            "(xaikit run --profile paper --only tokentm/06_cifar_finetune), which downloads "
            f"deit_base_patch16_224.fb_in1k and {dataset.upper()}, fine-tunes it and saves {CIFAR_DEIT[dataset]} "
            "into $XAIKIT_WEIGHTS_DIR (default ~/.cache/xaikit/weights); or copy such a file there."
        )
    return path
