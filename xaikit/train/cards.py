"""Model cards: where a run's weights and JSON card go (`default_out_dir`; the shipped models only on request),
what the card records (`card_entries`), writing both (`write_weights_and_card`) and loading them back (`load_trained`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..data.manifests import cache_dir
from ..demo_models import WEIGHTS_DIR, load_from_card
from ..errors import InvalidParameterError, WeightsUnavailableError
from ..fileio import atomic_write
from ..models import weights_dir
from .recipes import RECIPES, TrainConfig


def trained_dir() -> Path:
    """Default folder of trained weights and cards: ``$XAIKIT_CACHE_DIR/trained``, else ``~/.cache/xaikit/trained``."""
    return cache_dir() / "trained"


def default_out_dir(config: TrainConfig) -> Path:
    """Where `train` writes a recipe's weights and card by default.

    Fine-tuned recipes (with ``init``) go beside the published weights xaikit
    loads, `xaikit.models.weights_dir` (``$XAIKIT_WEIGHTS_DIR``, else
    ``~/.cache/xaikit/weights``); recipes trained from scratch go to `trained_dir`.
    """
    return weights_dir() if config.init else trained_dir()


def _resolve_out_dir(out_dir: str | os.PathLike | None, replace_shipped: bool, config: TrainConfig | None = None) -> Path:
    """Where the weights go; the shipped models' folder only with ``replace_shipped=True``."""
    shipped = Path(WEIGHTS_DIR).resolve()
    if out_dir is None:
        if replace_shipped:
            return Path(WEIGHTS_DIR)
        return default_out_dir(config) if config is not None else trained_dir()
    out_dir = Path(out_dir).expanduser()
    is_shipped = out_dir.resolve() == shipped
    if replace_shipped and not is_shipped:
        raise InvalidParameterError(
            f"replace_shipped=True writes into the shipped weights folder {shipped}, but out_dir is {out_dir}; "
            "pass one or the other"
        )
    if is_shipped and not replace_shipped:
        raise InvalidParameterError(
            f"out_dir {out_dir} is the folder of the demo models shipped with xaikit; training there would "
            f"overwrite them. Leave out_dir out to train into {trained_dir()} (load the result with "
            "xaikit.train.load_trained), or pass replace_shipped=True (CLI: --replace-shipped) to replace them on purpose"
        )
    return out_dir


def hardware(device: str) -> str:
    """The processor that `device` names, for the model card."""
    if torch.device(device).type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), name)
    threads = torch.get_num_threads()
    return f"CPU: {name}, {threads} thread{'s' if threads != 1 else ''}"


def card_entries(config: TrainConfig, model: nn.Module, train_set, test_set, *, init: dict | None, metrics: dict,
                 device: str, progress: dict, trained: list[nn.Parameter], kept: dict | None) -> dict:
    """The model card of a finished run, all but the weights' sha256 (`write_weights_and_card` adds it).

    init: what `initialise` did (None: random start); metrics: the test scores; progress: the run's
    step, seconds and curve (`RunState.progress`); trained: the parameters trained; kept: which epoch's
    weights were kept (``keep="best-val-loss"``), else None.
    """
    return {
        "name": config.name,
        "architecture": config.architecture,
        "timm_kwargs": config.timm_kwargs,
        # The loader's description of the data wins over a data_kwargs key of the same name (e.g. source="binary").
        "data": {**config.data_kwargs, "name": config.data, "train_images": len(train_set.labels),
                 "test_images": len(test_set.labels), "source": getattr(train_set, "source", config.data)},
        "init": init,
        "input": {"data_size": list(train_set.images.shape[1:3]), "model_size": list(model.patch_embed.img_size),
                  "resize": "none" if tuple(train_set.images.shape[1:3]) == tuple(model.patch_embed.img_size)
                  else "bilinear upsampling (torch.nn.functional.interpolate, align_corners=False) after augmentation"},
        "recipe": asdict(config),
        "seed": config.seed,
        "epochs": config.epochs,
        **metrics,
        "hardware": hardware(device),
        "device": device,
        "train_seconds": round(progress["train_seconds"], 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        **({"trained_parameters": sum(p.numel() for p in trained), "frozen": config.frozen} if config.frozen else {}),
        **({"kept": kept} if kept else {}),
        "history": progress["history"],
        "torch": torch.__version__,
    }


def write_weights_and_card(model: nn.Module, entries: dict, out_dir: Path, stem: str) -> tuple[dict, Path, Path]:
    """Write ``<stem>.safetensors`` and its card ``<stem>.json`` (`entries` and the weights' sha256) into `out_dir`.

    Returns the card and the two paths. Each file is written atomically.
    """
    from safetensors.torch import save as safetensors_bytes

    weights = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    weights_path, card_path = out_dir / f"{stem}.safetensors", out_dir / f"{stem}.json"
    card = {**entries, "sha256": hashlib.sha256(weights).hexdigest()}
    with atomic_write(weights_path) as handle:
        handle.write(weights)
    with atomic_write(card_path, "w") as handle:
        handle.write(json.dumps(card, indent=1) + "\n")
    return card, weights_path, card_path


def load_trained(card: str | os.PathLike, *, device: str | torch.device | None = None) -> nn.Module:
    """A model written by `train`, in eval mode, built from its JSON model card and hash-checked weights.

    card: the card's path (``<out_dir>/<name>.json``; the ``.safetensors`` beside
    it works too) or a bare name: a recipe of `RECIPES`, looked up where `train`
    writes it (`default_out_dir`, under its `TrainConfig.stem`), e.g.
    ``load_trained("demo-cifar10-vit")`` after ``python -m xaikit.train demo-cifar10-vit``
    or ``load_trained("deit_base-cifar10")`` (``$XAIKIT_WEIGHTS_DIR/deit_base_patch16_224-cifar10.json``);
    any other bare name is looked up in `trained_dir()`.
    The weights are ``<card stem>.safetensors`` beside the card; their sha256 must
    match the card's.
    """
    path = Path(card).expanduser()
    recipe = None
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    elif path.suffix != ".json" and str(card) == path.name:  # a bare name
        recipe = RECIPES.get(path.name)
        path = default_out_dir(recipe) / f"{recipe.stem}.json" if recipe else trained_dir() / f"{path.name}.json"
    if not path.is_file():
        name = recipe.name if recipe else "NAME"
        raise WeightsUnavailableError(
            f"no model card at {path}; train the model first (python -m xaikit.train {name} writes "
            f"{recipe.stem if recipe else 'NAME'}.json and .safetensors into "
            f"{default_out_dir(recipe) if recipe else trained_dir()}, or into --out-dir)"
        )
    model = load_from_card(path, remedy="train the model again")
    if device is not None:
        model.to(device)
    return model
