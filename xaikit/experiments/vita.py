"""ViTA's grid search (issue 15 section 5, reference-spec 6.6): every astrocyte configuration of the paper's
grid, scored by the alignment of its Grad-CAM and Grad-CAM++ pictures with human maps.

The grid is the paper's (k in {4, 6, 8}, tau in {1, 2, 3}, phi in {-0.5, -0.2, 0, 0.2, 0.5}, alpha in
{1.05, 1.2, 1.5}, beta in {0.005, 0.05, 0.25}) plus alpha = 1.25, which the paper's Table 1 reports though
its grid lacks it: 540 configurations (`vita_grid`; a reduced grid for the demo by giving some axes).

Efficient: the astrocytic layer changes nothing before ``blocks[block].attn.proj``, so the input of that
``proj`` and the residual stream entering its block are computed once per image (`proj_inputs`) and every
configuration runs the network from there. Both CAM methods read the activations and gradients of
``blocks[-1].norm1`` (pytorch-grad-cam's ViT recipe, reference-spec 5), so one forward and one backward per
configuration and batch serve both; the backward starts at the explained logit and stops at that layer.

Resumable: each configuration's per-image scores go to one file ``<folder>/<name>.npz`` when the
configuration is complete (a temporary file renamed into place), beside ``baseline.npz`` (the plain ViT)
and ``search.json`` (what was searched: a fingerprint of the model, images, human maps and targets, the
methods, metrics and picture size). A re-run with the same folder recomputes no finished configuration;
a folder of another search is refused. The best configuration per (CAM, metric) is read from the files
(`best_configurations`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
import zipfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..astrocytes import AstrocyteSettings, astrocytic_linear, check_astrocyte_model, check_block
from ..errors import DataIntegrityError, InvalidParameterError, UnsupportedModelError
from ..fileio import atomic_write
from ..introspection import token_grid
from ..methods.base import eval_mode, positive_int

#: the paper's grid (reference-spec 6.6); `vita_grid` adds TABLE1_ALPHA
PAPER_GRID: dict[str, tuple] = {
    "k": (4, 6, 8),
    "tau": (1, 2, 3),
    "phi": (-0.5, -0.2, 0.0, 0.2, 0.5),
    "alpha": (1.05, 1.2, 1.5),
    "beta": (0.005, 0.05, 0.25),
}
#: the alpha of three Table 1 rows, missing from the paper's stated grid
TABLE1_ALPHA = 1.25
CAM_METHODS = ("gradcam", "gradcam_pp")
METRICS = ("spearman", "dice", "ssim")
SETTING_NAMES = ("k", "tau", "phi", "alpha", "beta")
BASELINE = "baseline"

#: Table 1 of the paper: the best configuration per (CAM, metric)
_PAPER_TABLE1 = [
    ("gradcam", "spearman", 8, 1, 0.2, 1.25, 0.005),
    ("gradcam", "dice", 4, 3, -0.5, 1.25, 0.05),
    ("gradcam", "ssim", 6, 3, -0.5, 1.5, 0.05),
    ("gradcam_pp", "spearman", 6, 3, -0.5, 1.25, 0.25),
    ("gradcam_pp", "dice", 4, 3, -0.5, 1.5, 0.005),
    ("gradcam_pp", "ssim", 8, 1, -0.5, 1.5, 0.005),
]


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (best configuration per CAM and metric), indexed by (cam, metric)."""
    return pd.DataFrame(_PAPER_TABLE1, columns=["cam", "metric", *SETTING_NAMES]).set_index(["cam", "metric"])


def vita_grid(**axes: Iterable) -> list[AstrocyteSettings]:
    """The configurations of the grid search, in a fixed order (k, tau, phi, alpha, beta, the last varying fastest).

    Without arguments: the paper's grid plus alpha = 1.25 (3 * 3 * 5 * 4 * 3 = 540). Give some axes
    (``vita_grid(k=[4], phi=[-0.5, 0.0])``) for a reduced grid: each replaces that axis's values.
    """
    unknown = sorted(set(axes) - set(SETTING_NAMES))
    if unknown:
        raise InvalidParameterError(f"vita_grid has no axis {', '.join(map(repr, unknown))}; its axes are {', '.join(SETTING_NAMES)}")
    values = {name: tuple(PAPER_GRID[name]) for name in SETTING_NAMES}
    values["alpha"] = tuple(sorted(values["alpha"] + (TABLE1_ALPHA,)))
    for name, given in axes.items():
        given = tuple(given) if not isinstance(given, (str, bytes)) and isinstance(given, Iterable) else (given,)
        if not given:
            raise InvalidParameterError(f"vita_grid: the axis {name!r} has no value; give at least one")
        values[name] = given
    configs = [AstrocyteSettings(*combination) for combination in itertools.product(*(values[n] for n in SETTING_NAMES))]
    return list(dict.fromkeys(configs))  # repeated values give one configuration


def config_name(settings: AstrocyteSettings | None) -> str:
    """The file name (without .npz) of a configuration's scores; exact (repr of each float); None: the baseline."""
    if settings is None:
        return BASELINE
    return f"k{settings.k}_tau{settings.tau!r}_phi{settings.phi!r}_alpha{settings.alpha!r}_beta{settings.beta!r}"


# -- the network from block `block`'s proj onward ------------------------------------------


@dataclass
class ProjInputs:
    """What comes before the astrocytic layer, per image: the residual stream entering block `block`
    (n, N, D) and the input of its ``attn.proj`` (n, N, D_in); `grid` is the patch grid."""

    block_input: torch.Tensor
    proj_input: torch.Tensor
    grid: tuple[int, int]
    block: int

    def __len__(self) -> int:
        return len(self.block_input)


class _Stop(Exception):
    """Ends a forward pass once the input of the astrocytic layer is recorded."""


def check_grid_model(model: nn.Module, block: int) -> int:
    """`block` as an index, or an error unless the search can run `model` from that block's proj onward."""
    from ..methods.cdam import _plain_timm_block

    check_astrocyte_model(model)
    block = check_block(model, block)
    depth = len(model.blocks)
    if block == depth - 1:
        raise InvalidParameterError(
            f"the grid search wraps block {block}, the last block, whose norm1 (the CAM layer) comes before the "
            "astrocytic layer; wrap an earlier block (the paper wraps block 0) or use xaikit.astrocytes directly"
        )
    for index in (block, depth - 1):
        if not _plain_timm_block(model.blocks[index]):
            raise UnsupportedModelError(
                f"block {index} is a {type(model.blocks[index]).__qualname__} with attention "
                f"{type(model.blocks[index].attn).__qualname__}; the grid search re-runs timm's standard Block and "
                "Attention (no gate) from proj onward. Use xaikit.astrocytes with the model's own forward instead"
            )
    return block


def proj_inputs(model: nn.Module, images: torch.Tensor, *, block: int = 0, batch_size: int = 32,
                device: torch.device | str | None = None) -> ProjInputs:
    """The tensors the grid search starts from, one forward pass per batch up to ``blocks[block].attn.proj``
    (nothing after it runs). `device`: where they are kept (default: the model's)."""
    block = check_grid_model(model, block)
    batch_size = positive_int("batch_size", batch_size)
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    target = model.blocks[block]
    entering: list[torch.Tensor] = []
    projected: list[torch.Tensor] = []

    def keep_block_input(module, args):
        entering.append(args[0].detach().to(device))

    def keep_and_stop(module, args):
        projected.append(args[0].detach().to(device))
        raise _Stop

    handles = [target.register_forward_pre_hook(keep_block_input), target.attn.proj.register_forward_pre_hook(keep_and_stop)]
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(images), batch_size):
                try:
                    model(images[start : start + batch_size].to(device=param.device, dtype=param.dtype))
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return ProjInputs(torch.cat(entering), torch.cat(projected), token_grid(model, tuple(images.shape[-2:])), block)


def _last_block_input(model: nn.Module, block_input: torch.Tensor, proj_input: torch.Tensor,
                      settings: AstrocyteSettings | None, block: int) -> torch.Tensor:
    """The residual stream entering ``blocks[-1]``, from block `block`'s proj onward (no graph)."""
    blk = model.blocks[block]
    proj = blk.attn.proj
    with torch.no_grad():
        projected = proj(proj_input) if settings is None else astrocytic_linear(proj_input, proj.weight, proj.bias, settings)
        x = block_input + blk.drop_path1(blk.ls1(blk.attn.proj_drop(projected)))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        for later in model.blocks[block + 1 : -1]:
            x = later(x)
    return x


def cam_layer_pass(model: nn.Module, block_input: torch.Tensor, proj_input: torch.Tensor, targets: torch.Tensor,
                   settings: AstrocyteSettings | None, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (B, N, D) of ``blocks[-1].norm1`` and the gradient of the target logits' sum with respect
    to them: one forward from block `block`'s proj (astrocytic with `settings`, plain with None) and one
    backward from the logits to that layer. Equal to the full model inside ``xaikit.astrocytes``."""
    x = _last_block_input(model, block_input, proj_input, settings, block)
    last = model.blocks[-1]
    with torch.enable_grad():
        activations = last.norm1(x).detach().requires_grad_(True)
        x = x + last.drop_path1(last.ls1(last.attn(activations)))
        x = x + last.drop_path2(last.ls2(last.mlp(last.norm2(x))))
        logits = model.forward_head(model.norm(x))
        score = logits.gather(1, targets.to(logits.device).long()[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, [activations])
    return activations.detach(), gradients


def _config_scores(model: nn.Module, prefix: ProjInputs, human: torch.Tensor, targets: torch.Tensor,
                   settings: AstrocyteSettings | None, cams: Sequence[str], metrics: Sequence[str],
                   batch_size: int) -> dict[str, np.ndarray]:
    """Per-image scores of one configuration: {"cam/metric": (n,)}."""
    from .. import metrics as alignment
    from . import vita_maps

    param = next(model.parameters())
    size = human.shape[-1]
    parts: dict[str, list[np.ndarray]] = {f"{cam}/{metric}": [] for cam in cams for metric in metrics}
    for start in range(0, len(prefix), batch_size):
        chunk = slice(start, start + batch_size)
        activations, gradients = cam_layer_pass(
            model, prefix.block_input[chunk].to(param.device), prefix.proj_input[chunk].to(param.device),
            targets[chunk], settings, prefix.block,
        )
        pictures = vita_maps.cam_pictures_from(activations, gradients, prefix.grid, size)
        reference = human[chunk].to(param.device)
        with warnings.catch_warnings():  # a constant map's NaN Spearman is kept in the file; `vita_book.undefined_counts` counts them
            warnings.simplefilter("ignore", alignment.ConstantMapWarning)
            for cam in cams:
                for metric in metrics:
                    values = getattr(alignment, metric)(pictures[cam].float(), reference.float())
                    parts[f"{cam}/{metric}"].append(values.detach().double().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


# -- files ---------------------------------------------------------------------------------


def _write_scores(path: Path, settings: AstrocyteSettings | None, scores: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    values = {name: np.float64(getattr(settings, name)) for name in SETTING_NAMES} if settings is not None else {}
    np.savez(buffer, **values, **{key: np.asarray(value, dtype=np.float64) for key, value in scores.items()})
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def read_scores(path: str | Path) -> tuple[AstrocyteSettings | None, dict[str, np.ndarray]]:
    """One configuration's file: its settings (None for the baseline) and per-image scores {"cam/metric": (n,)}."""
    path = Path(path)
    try:
        with np.load(path) as data:
            stored = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DataIntegrityError(f"cannot read the grid-search scores {path}: {err}; delete the file to recompute it") from err
    if path.stem == BASELINE:
        return None, stored
    try:
        values = [stored.pop(name) for name in SETTING_NAMES]
    except KeyError as err:
        raise DataIntegrityError(f"{path} lacks the setting {err}; delete the file to recompute it") from None
    return AstrocyteSettings(int(values[0]), *map(float, values[1:])), stored


def _fingerprint(model: nn.Module, images: torch.Tensor, human: torch.Tensor, targets: torch.Tensor) -> str:
    digest = hashlib.sha256()
    tensors = [("images", images), ("human", human), ("targets", targets), *model.state_dict().items()]
    for name, tensor in tensors:
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(data.shape)}{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_search_record(folder: Path, record: dict) -> None:
    path = folder / "search.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataIntegrityError(f"cannot read {path}: {err}; delete the folder {folder} to start the search afresh") from err
        differ = sorted(key for key in record if previous.get(key) != record[key])
        if differ:
            raise InvalidParameterError(
                f"{folder} holds a grid search of another setup (it differs in: {', '.join(differ)}), whose scores "
                "would be mixed with these; give another folder, or delete this one to start afresh"
            )
        return
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(record, indent=1) + "\n")


# -- the search ------------------------------------------------------------------------------


@dataclass
class GridSearch:
    """A finished `grid_search`: the folder of its files, the configurations searched (the baseline
    excluded), how many were computed now or found finished, and the speed of those computed now."""

    folder: Path
    configs: list[AstrocyteSettings]
    computed: int
    skipped: int
    seconds: float
    prefix_seconds: float
    images: int
    throughput: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """`grid_table` of this search's configurations."""
        return grid_table(self.folder, self.configs)

    def best(self) -> pd.DataFrame:
        """`best_configurations` of this search's configurations."""
        return best_configurations(self.folder, self.configs)


def grid_search(
    model: nn.Module,
    images: torch.Tensor,
    human: torch.Tensor,
    targets: torch.Tensor,
    folder: str | Path,
    configs: Sequence[AstrocyteSettings] | None = None,
    *,
    block: int = 0,
    cams: Sequence[str] = CAM_METHODS,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 32,
    baseline: bool = True,
    prefix_device: torch.device | str | None = None,
    log: Callable[[str], None] | None = print,
) -> GridSearch:
    """Score every configuration (default: `vita_grid()`, 540) on `images` (n, 3, H, W), normalised for
    `model`, against the human maps `human` (n, S, S): the CAM pictures at S x S of the class `targets` (n,)
    (ground-truth labels, or predictions), by each metric of `metrics` (``xaikit.metrics.<name>``).

    Writes one file per configuration into `folder` (and ``baseline.npz``, the plain ViT, with `baseline`);
    finished configurations are not recomputed. The shared prefix (`proj_inputs`: 2 x n x N x D values, 3.6 GB
    for ViT-B/16 on 2,982 images in float32) is kept on `prefix_device` (default: the model's device; "cpu" where
    the GPU is short of memory). Returns a `GridSearch`; its ``throughput`` gives the
    configurations x images per second of the configurations computed now (the shared prefix excluded,
    timed apart).
    """
    block = check_grid_model(model, block)
    if configs is None:
        configs = vita_grid()
    configs = [c if isinstance(c, AstrocyteSettings) else AstrocyteSettings(**c) for c in configs]
    batch_size = positive_int("batch_size", batch_size)
    cams, metrics = _choices("cams", cams, CAM_METHODS), _choices("metrics", metrics, METRICS)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InvalidParameterError(f"images must be a tensor (n, 3, H, W); got {getattr(images, 'shape', type(images).__name__)}")
    human = torch.as_tensor(human)
    targets = torch.as_tensor(targets)
    if human.ndim != 3 or human.shape[1] != human.shape[2] or len(human) != len(images):
        raise InvalidParameterError(
            f"human maps must be square, one per image: (n={len(images)}, S, S); got {tuple(human.shape)}"
        )
    classes = model.num_classes
    if targets.shape != (len(images),) or targets.dtype.is_floating_point or not bool(((targets >= 0) & (targets < classes)).all()):
        raise InvalidParameterError(
            f"targets must be one class index per image, ({len(images)},) integers from 0 to {classes - 1} (the "
            f"ground-truth labels or the predictions); got {tuple(targets.shape)} {targets.dtype}"
        )
    folder = Path(folder)
    record = {
        "fingerprint": _fingerprint(model, images, human, targets),
        "images": len(images), "size": int(human.shape[-1]), "block": block, "cams": list(cams), "metrics": list(metrics),
    }
    _check_search_record(folder, record)
    todo = ([None] if baseline else []) + list(configs)
    missing = [settings for settings in todo if not (folder / f"{config_name(settings)}.npz").exists()]
    say = log or (lambda _message: None)
    say(f"grid search in {folder}: {len(todo) - len(missing)} of {len(todo)} configurations finished, {len(missing)} to compute")
    prefix_seconds = seconds = 0.0
    if missing:
        start = time.perf_counter()
        with eval_mode(model):
            prefix = proj_inputs(model, images, block=block, batch_size=batch_size, device=prefix_device)
            prefix_seconds = time.perf_counter() - start
            for index, settings in enumerate(missing, 1):
                started = time.perf_counter()
                scores = _config_scores(model, prefix, human, targets, settings, cams, metrics, batch_size)
                _write_scores(folder / f"{config_name(settings)}.npz", settings, scores)
                seconds += time.perf_counter() - started
                if index % max(1, len(missing) // 10) == 0 or index == len(missing):
                    say(f"  {index}/{len(missing)} configurations, {index * len(images) / seconds:.1f} configurations x images/s")
    computed = len(missing)
    throughput = {
        "configurations": computed, "images": len(images), "seconds": seconds, "prefix_seconds": prefix_seconds,
        "config_images_per_s": computed * len(images) / seconds if seconds > 0 else None,
        "device": str(next(model.parameters()).device), "batch_size": batch_size,
    }
    return GridSearch(folder, list(configs), computed, len(todo) - computed, seconds, prefix_seconds, len(images), throughput)


def _choices(name: str, given: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    given = (given,) if isinstance(given, str) else tuple(given)
    wrong = [value for value in given if value not in valid]
    if wrong or not given:
        raise InvalidParameterError(f"{name} must be some of {', '.join(valid)}; got {list(given)!r}")
    return tuple(dict.fromkeys(given))


# -- reading the results ------------------------------------------------------------------------


def load_scores(folder: str | Path, configs: Sequence[AstrocyteSettings] | None = None) -> dict:
    """{settings (None: the baseline): {"cam/metric": per-image scores (n,)}} from the files of `folder`
    (`configs`: only those, each of which must be there)."""
    folder = Path(folder)
    if configs is None:
        paths = sorted(folder.glob("*.npz"))
    else:
        paths = [folder / f"{config_name(settings)}.npz" for settings in configs]
        absent = [path.name for path in paths if not path.exists()]
        if absent:
            raise DataIntegrityError(
                f"{len(absent)} configurations of the search have no file in {folder} (e.g. {absent[0]}); "
                "run grid_search with this folder to compute them"
            )
    loaded = {}
    for path in paths:
        settings, scores = read_scores(path)
        if config_name(settings) != path.stem:
            raise DataIntegrityError(f"{path} holds the scores of {config_name(settings)}; delete it to recompute it")
        loaded[settings] = scores
    return loaded


def grid_table(folder: str | Path, configs: Sequence[AstrocyteSettings] | None = None) -> pd.DataFrame:
    """One row per configuration (the baseline excluded): its settings, the mean of each "cam/metric" over the
    images where it is defined, and "cam/metric undefined", the count of images where it is not (NaN: a
    constant map has no Spearman)."""
    rows = []
    for settings, scores in load_scores(folder, configs).items():
        if settings is None:
            continue
        row = {name: getattr(settings, name) for name in SETTING_NAMES}
        for key, values in scores.items():
            defined = values[np.isfinite(values)]
            row[key] = float(defined.mean()) if len(defined) else float("nan")
            row[f"{key} undefined"] = int(len(values) - len(defined))
        rows.append(row)
    if not rows:
        raise DataIntegrityError(f"no configuration's scores in {folder}; run grid_search with this folder first")
    return pd.DataFrame(rows)


def best_configurations(folder: str | Path, configs: Sequence[AstrocyteSettings] | None = None) -> pd.DataFrame:
    """The configuration with the highest mean per (cam, metric), read from the files (ties: the first in grid
    order), indexed like `paper_table1`: its settings, the mean, and the counts of images and undefined scores."""
    table = grid_table(folder, configs).sort_values(list(SETTING_NAMES), kind="stable").reset_index(drop=True)
    keys = [key for key in table.columns if "/" in key and not key.endswith(" undefined")]
    rows = []
    for key in keys:
        if table[key].isna().all():
            raise DataIntegrityError(f"{key} is undefined for every configuration in {folder}: no best configuration")
        best = table.loc[table[key].idxmax()]
        cam, metric = key.split("/")
        rows.append({"cam": cam, "metric": metric, **{name: best[name] for name in SETTING_NAMES},
                     "mean": best[key], "configurations": len(table), "undefined": int(best[f"{key} undefined"])})
    frame = pd.DataFrame(rows)
    frame["k"] = frame["k"].astype(int)
    return frame.set_index(["cam", "metric"])
