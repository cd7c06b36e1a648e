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

Resumable, on the results ledger (`xaikit.ledger`, rooted at the search's folder): a unit of work is one
configuration (or the baseline, the plain ViT) on one shard of images; its specification holds a fingerprint
of the model's weights and of the shard's images, human maps and targets, the shard's image indices, the
configuration, the wrapped block, the CAM methods, the metrics and the picture size, so the results of
another model or other images never mix with these. Each unit's per-image scores go to one Parquet file when
the unit is complete; a re-run recomputes no finished unit. Executors: ``local`` (this process) and ``ray``
(one Ray task per unit). The best configuration per (CAM, metric) is read from the ledger
(`best_configurations`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..astrocytes import AstrocyteSettings, astrocytic_linear, check_astrocyte_model, check_block
from ..errors import DataIntegrityError, InvalidParameterError, UnsupportedModelError
from ..introspection import token_grid
from ..ledger import Ledger, LedgerError, Unit, shards
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
#: the ``experiment`` field of the grid search's unit specifications (a ledger may hold other work too)
GRID_EXPERIMENT = "vita-grid"
#: images per unit: the default shard size of `grid_search`
SHARD_SIZE = 256

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
    """A configuration's name, exact (repr of each float), as messages give it; None: the baseline."""
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


# -- units of the ledger ---------------------------------------------------------------------


def _update_digest(digest, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    for name, tensor in tensors:
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(data.shape)}{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())


def _shard_fingerprints(model: nn.Module, images: torch.Tensor, human: torch.Tensor, targets: torch.Tensor,
                        image_shards: Sequence[Sequence[int]]) -> list[str]:
    """Per shard of images (consecutive indices): the SHA-256 of the model's weights and of the shard's images,
    human maps and targets; the weights are read once."""
    weights = hashlib.sha256()
    _update_digest(weights, model.state_dict().items())
    prints = []
    for indices in image_shards:
        digest, part = weights.copy(), slice(indices[0], indices[-1] + 1)
        _update_digest(digest, [("images", images[part]), ("human", human[part]), ("targets", targets[part])])
        prints.append(digest.hexdigest())
    return prints


def _settings_fields(settings: AstrocyteSettings | None) -> dict | None:
    return None if settings is None else {name: getattr(settings, name) for name in SETTING_NAMES}


def _unit_spec(fingerprint: str, indices: Sequence[int], settings: AstrocyteSettings | None, block: int,
               cams: Sequence[str], metrics: Sequence[str], size: int) -> dict:
    """A grid-search unit's specification (`Ledger.unit` adds the xaikit version)."""
    return {"experiment": GRID_EXPERIMENT, "fingerprint": fingerprint, "images": [int(i) for i in indices],
            "config": _settings_fields(settings), "block": int(block), "cams": list(cams), "metrics": list(metrics),
            "size": int(size)}


def _spec_settings(spec: Mapping) -> AstrocyteSettings | None:
    config = spec["config"]
    return None if config is None else AstrocyteSettings(**config)


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy (Ray hands numpy arrays to its workers without copying them again); exact."""
    tensor = torch.as_tensor(tensor).detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


@dataclass
class GridContext:
    """What every unit of one search shares (the ``ray`` executor puts it into the object store once).
    `on_worker_device`: move the model to the worker's GPU where it has one (``ray``); else the model stays
    where it is (``local``)."""

    model: nn.Module
    images: np.ndarray
    human: np.ndarray
    targets: np.ndarray
    batch_size: int
    prefix_device: str | None = None
    on_worker_device: bool = False

    def unit_model(self) -> nn.Module:
        if self.on_worker_device:
            return self.model.to("cuda" if torch.cuda.is_available() else "cpu")
        return self.model


#: per process (the local executor's, each Ray worker's): the shared prefixes of the latest shards, so that it
#: is computed once per shard, not once per unit; (fingerprint, image indices, block, device) -> ProjInputs
_PREFIXES: OrderedDict = OrderedDict()
_PREFIXES_KEPT = 2
#: per process: seconds spent on prefixes and on configurations (the local executor's speed)
_SECONDS = {"prefix": 0.0, "scores": 0.0}


def _shard_prefix(model: nn.Module, spec: Mapping, context: GridContext, indices: np.ndarray) -> ProjInputs:
    device = context.prefix_device or str(next(model.parameters()).device)
    key = (spec["fingerprint"], tuple(spec["images"]), spec["block"], device)
    if key in _PREFIXES:
        _PREFIXES.move_to_end(key)
        return _PREFIXES[key]
    started = time.perf_counter()
    prefix = proj_inputs(model, torch.from_numpy(context.images[indices]), block=spec["block"],
                         batch_size=context.batch_size, device=device)
    _SECONDS["prefix"] += time.perf_counter() - started
    _PREFIXES[key] = prefix
    while len(_PREFIXES) > _PREFIXES_KEPT:
        _PREFIXES.popitem(last=False)
    return prefix


def grid_unit_work(spec: dict, context: GridContext) -> pd.DataFrame:
    """One unit's scores (`Ledger.run`'s work): one row per image and score, columns ``image`` (the image's
    index in the search), ``cam``, ``metric``, ``value`` (NaN where the score is undefined)."""
    model = context.unit_model()
    indices = np.asarray(spec["images"], dtype=np.int64)
    with eval_mode(model):
        prefix = _shard_prefix(model, spec, context, indices)
        started = time.perf_counter()
        scores = _config_scores(model, prefix, torch.from_numpy(context.human[indices]),
                                torch.from_numpy(context.targets[indices]), _spec_settings(spec), spec["cams"],
                                spec["metrics"], context.batch_size)
        _SECONDS["scores"] += time.perf_counter() - started
    pairs = [(cam, metric) for cam in spec["cams"] for metric in spec["metrics"]]
    return pd.DataFrame({
        "image": np.tile(indices, len(pairs)),
        "cam": np.repeat([cam for cam, _ in pairs], len(indices)),
        "metric": np.repeat([metric for _, metric in pairs], len(indices)),
        "value": np.concatenate([scores[f"{cam}/{metric}"] for cam, metric in pairs]).astype(np.float64),
    })


def _old_layout(folder: Path) -> list[str]:
    """The files of the grid search's former layout (one .npz per configuration beside search.json)."""
    if not folder.is_dir():
        return []
    return sorted(path.name for path in [folder / "search.json", *folder.glob("*.npz")] if path.is_file())


# -- the search ------------------------------------------------------------------------------


@dataclass
class GridSearch:
    """A finished `grid_search`: the folder of its ledger, the configurations searched (the baseline
    excluded), how many units (configuration x image shard) were computed now or found finished, and the
    speed of those computed now; `units`: the search's units (its results, apart from other work in the folder)."""

    folder: Path
    configs: list[AstrocyteSettings]
    computed: int
    skipped: int
    seconds: float
    prefix_seconds: float
    images: int
    throughput: dict = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)
    shards: int = 1

    def scores(self) -> dict:
        """`load_scores` of this search's units: {settings (None: the baseline): {"cam/metric": (n,)}}."""
        return load_scores(self.folder, units=self.units)

    def table(self) -> pd.DataFrame:
        """`grid_table` of this search's configurations."""
        return grid_table(self.folder, self.configs, units=self.units)

    def best(self) -> pd.DataFrame:
        """`best_configurations` of this search's configurations."""
        return best_configurations(self.folder, self.configs, units=self.units)


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
    shard_size: int = SHARD_SIZE,
    executor: str = "local",
    address: str | None = None,
    progress: bool = False,
) -> GridSearch:
    """Score every configuration (default: `vita_grid()`, 540) on `images` (n, 3, H, W), normalised for
    `model`, against the human maps `human` (n, S, S): the CAM pictures at S x S of the class `targets` (n,)
    (ground-truth labels, or predictions), by each metric of `metrics` (``xaikit.metrics.<name>``).

    The results go to the ledger rooted at `folder` (`xaikit.ledger.Ledger`): one unit per configuration (and
    the baseline, the plain ViT, with `baseline`) and shard of `shard_size` images; finished units are not
    recomputed. `executor`: ``"local"`` (this process) or ``"ray"`` (one Ray task per unit, on the cluster at
    `address`, ``"auto"`` for the running one; see `Ledger.run`); `progress` shows a bar over the units. The
    shared prefix (`proj_inputs`: 2 x n x N x D values, 310 MB per 256 images for ViT-B/16 in float32) is
    computed once per shard in each process and kept on `prefix_device` (default: the model's device; "cpu"
    where the GPU is short of memory). Returns a `GridSearch`; its ``throughput`` gives the configurations x
    images per second of the units computed now (local: the shared prefix excluded, timed apart; ray: the
    run's wall time, prefixes included). A unit that fails is recorded in the ledger and raises here after
    the others finished; Ctrl-C stops the search (KeyboardInterrupt) and the next call resumes it.
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
    if len(images) == 0:
        raise InvalidParameterError("the grid search got no images; give at least one")
    folder = Path(folder)
    old = _old_layout(folder)
    if old:
        warnings.warn(
            f"{folder} holds files of the grid search's former layout ({', '.join(old[:3])}{', ...' if len(old) > 3 else ''}), "
            f"which this version neither reads nor changes: the search computes its units afresh into {folder / 'units'}. "
            "Delete the former files when they are no longer needed, or give another folder",
            UserWarning, stacklevel=2,
        )
    ledger = Ledger(folder)
    image_shards = shards(range(len(images)), shard_size)
    prints = _shard_fingerprints(model, images, human, targets, image_shards)
    settings_list = ([None] if baseline else []) + list(configs)
    units = [ledger.unit(**_unit_spec(fingerprint, indices, settings, block, cams, metrics, int(human.shape[-1])))
             for fingerprint, indices in zip(prints, image_shards) for settings in settings_list]
    todo = ledger.pending(units)
    say = log or (lambda _message: None)
    say(f"grid search in {folder}: {len(units) - len(todo)} of {len(units)} units ({len(settings_list)} settings x "
        f"{len(image_shards)} image shards) finished, {len(todo)} to compute")
    on_ray = executor == "ray"
    context = GridContext(
        model=copy.deepcopy(model).cpu() if on_ray and next(model.parameters()).device.type != "cpu" else model,
        images=_as_array(images), human=_as_array(human), targets=_as_array(targets), batch_size=batch_size,
        prefix_device=None if prefix_device is None else str(torch.device(prefix_device)), on_worker_device=on_ray,
    )
    _SECONDS.update(prefix=0.0, scores=0.0)
    try:
        report = ledger.run(units, grid_unit_work, context, executor=executor, address=address, progress=progress,
                            description="grid search")
    finally:
        _PREFIXES.clear()  # the local executor's prefixes: this process keeps no memory after the search
    say(f"grid search in {folder}: {report.summary()}")
    if report.interrupted:
        raise KeyboardInterrupt(f"the grid search in {folder} was stopped; {report.remaining} units are left: "
                                "run grid_search again with this folder to compute them")
    if report.failed:
        key, message = report.failed[0]
        raise LedgerError(
            f"{len(report.failed)} of the grid search's {len(units)} units failed (the first, {key}: {message}); each "
            f"error is recorded in {ledger.failed_dir}. Fix the cause and run grid_search again: finished units are kept"
        )
    computed = [unit for unit in todo if ledger.done(unit)]
    config_images = sum(len(unit.spec["images"]) for unit in computed)
    seconds, prefix_seconds = (report.seconds, float("nan")) if on_ray else (_SECONDS["scores"], _SECONDS["prefix"])
    throughput = {
        "configurations": len({json.dumps(unit.spec["config"], sort_keys=True) for unit in computed}),
        "images": len(images), "units": len(computed), "shards": len(image_shards), "config_images": config_images,
        "seconds": seconds, "prefix_seconds": None if on_ray else prefix_seconds,
        "config_images_per_s": config_images / seconds if computed and seconds > 0 else None,
        "device": str(next(model.parameters()).device) if not on_ray else "ray", "batch_size": batch_size,
        "executor": executor,
    }
    return GridSearch(folder, list(configs), len(computed), len(units) - len(todo), seconds, prefix_seconds,
                      len(images), throughput, units, len(image_shards))


def _choices(name: str, given: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    given = (given,) if isinstance(given, str) else tuple(given)
    wrong = [value for value in given if value not in valid]
    if wrong or not given:
        raise InvalidParameterError(f"{name} must be some of {', '.join(valid)}; got {list(given)!r}")
    return tuple(dict.fromkeys(given))


# -- reading the results ------------------------------------------------------------------------


def _unit_scores(ledger: Ledger, key: str, spec: Mapping) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A unit's rows as (image indices, {"cam/metric": values in that order})."""
    path = ledger.result_path(key)
    try:
        wide = pd.read_parquet(path).pivot(index="image", columns=["cam", "metric"], values="value")
        return wide.index.to_numpy(), {f"{cam}/{metric}": wide[(cam, metric)].to_numpy(dtype=np.float64)
                                       for cam in spec["cams"] for metric in spec["metrics"]}
    except (OSError, ValueError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataIntegrityError(f"cannot read the grid-search unit {path}: {err}; delete it and run grid_search "
                                 "again to recompute it") from err


def load_scores(folder: str | Path, configs: Sequence[AstrocyteSettings | None] | None = None, *,
                units: Sequence[Unit] | None = None) -> dict:
    """{settings (None: the baseline): {"cam/metric": per-image scores (n,), in image order}} from the ledger
    at `folder`: of the search's `units` (`GridSearch.units`; each must be finished), else of every grid-search
    unit there (refused where the folder holds more than one search); `configs`: only those, each of which
    must be there for every image."""
    folder = Path(folder)
    ledger = Ledger(folder)
    if units is None:
        entries = [(key, ledger.spec(key)) for key in ledger.keys()]
        entries = [(key, spec) for key, spec in entries if spec.get("experiment") == GRID_EXPERIMENT]
    else:
        absent = [unit.key for unit in units if not ledger.done(unit)]
        if absent:
            raise DataIntegrityError(f"{len(absent)} units of the grid search have no result in {folder} (e.g. {absent[0]}); "
                                     "run grid_search with this folder to compute them")
        entries = [(unit.key, unit.spec) for unit in units]
    wanted = None if configs is None else [c if c is None or isinstance(c, AstrocyteSettings) else AstrocyteSettings(**c)
                                           for c in configs]
    parts: dict = {}
    for key, spec in entries:
        settings = _spec_settings(spec)
        if wanted is None or settings in wanted:
            parts.setdefault(settings, []).append(_unit_scores(ledger, key, spec))
    if wanted is not None:
        absent = [config_name(settings) for settings in wanted if settings not in parts]
        if absent:
            raise DataIntegrityError(f"{len(absent)} configurations of the search have no scores in {folder} (e.g. "
                                     f"{absent[0]}); run grid_search with this folder to compute them")
    if not parts:
        former = " (it holds the former layout's files, which this version does not read)" if _old_layout(folder) else ""
        raise DataIntegrityError(f"no grid-search scores in {folder}{former}; run grid_search with this folder first")
    # without `configs`, in a fixed order (baseline, then the settings in grid order), not the ledger's key order
    order = wanted or sorted(parts, key=lambda settings: () if settings is None else
                             (1, *(getattr(settings, name) for name in SETTING_NAMES)))
    loaded = {settings: _joined(settings, parts[settings], folder) for settings in order}
    every = set().union(*(set(indices) for indices, _ in loaded.values()))
    for settings, (indices, _) in loaded.items():
        if len(indices) != len(every):
            raise DataIntegrityError(
                f"{config_name(settings)} has scores for {len(indices)} of the {len(every)} images in {folder}: shards "
                "are missing; run grid_search with this folder to compute them")
    return {settings: scores for settings, (_, scores) in loaded.items()}


def _joined(settings, parts, folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One configuration's shards joined in image order; an image scored twice means several searches."""
    indices = np.concatenate([part[0] for part in parts])
    keys = [tuple(part[1]) for part in parts]
    if len(np.unique(indices)) != len(indices) or len(set(keys)) > 1:
        raise DataIntegrityError(
            f"{folder} holds the scores of more than one grid search ({config_name(settings)} is scored twice for some "
            "images, with other model weights, images, targets, block, CAMs or metrics): read one search's scores "
            "with its GridSearch (search.scores(), search.table(), search.best()), or give each search its own folder")
    order = np.argsort(indices, kind="stable")
    return indices[order], {key: np.concatenate([part[1][key] for part in parts])[order] for key in keys[0]}


def grid_table(folder: str | Path, configs: Sequence[AstrocyteSettings] | None = None, *,
               units: Sequence[Unit] | None = None) -> pd.DataFrame:
    """One row per configuration (the baseline excluded): its settings, the mean of each "cam/metric" over the
    images where it is defined, and "cam/metric undefined", the count of images where it is not (NaN: a
    constant map has no Spearman). `configs`, `units`: as `load_scores`."""
    rows = []
    for settings, scores in load_scores(folder, configs, units=units).items():
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


def best_configurations(folder: str | Path, configs: Sequence[AstrocyteSettings] | None = None, *,
                        units: Sequence[Unit] | None = None) -> pd.DataFrame:
    """The configuration with the highest mean per (cam, metric), read from the ledger (ties: the first in grid
    order), indexed like `paper_table1`: its settings, the mean, and the counts of images and undefined scores."""
    table = grid_table(folder, configs, units=units).sort_values(list(SETTING_NAMES), kind="stable").reset_index(drop=True)
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
