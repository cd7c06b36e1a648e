"""Training the demo ViTs this project ships (``xaikit/weights``).

A recipe (`TrainConfig`) fixes the architecture, the data, the optimiser and
the seed. `train` runs it on the GPU when there is one, otherwise on the CPU,
checkpointing every few minutes (into ``<cache>/training``) so that an
interrupted run resumes where it stopped (``python -m xaikit.train
demo-cifar10-vit`` again). At the end it writes the weights as ``.safetensors``
and a JSON model card (config, data, seed, epochs, accuracy, hardware, training
time, sha256, training curve) into `trained_dir` (``$XAIKIT_CACHE_DIR/trained``,
else ``~/.cache/xaikit/trained``) or ``--out-dir``; `load_trained` loads them.
Only ``--replace-shipped`` (``replace_shipped=True``) overwrites the models
shipped in ``xaikit/weights``.

A run that would leave a useless model writes nothing: an empty training set
is refused before training, and a model whose test accuracy is at chance level
raises `TrainingError` instead of writing weights and a card (see
`chance_threshold` for the rule).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.manifests import cache_dir
from .demo_models import WEIGHTS_DIR
from .errors import DataIntegrityError, InvalidParameterError, TrainingError, WeightsUnavailableError, XaikitError
from .fileio import atomic_write

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class TrainConfig:
    """A training recipe: everything that decides the trained weights."""

    name: str
    data: str  # key of DATASETS
    timm_kwargs: dict
    architecture: str = "vit_tiny_patch16_224"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    random_crop_padding: int = 4  # pixels of reflect padding before a random crop; 0 = off
    horizontal_flip: bool = True
    seed: int = 0
    monitor_size: int = 2000  # test images scored after every epoch for the curve
    bf16_autocast: bool = True  # mixed precision: 1.4x faster on CPUs with avx512_bf16, and on GPUs
    data_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_recipe(self)


def check_recipe(config: TrainConfig) -> None:
    """Refuse counts that would train nothing (e.g. ``epochs=0``) or crash later."""
    for name in ("epochs", "batch_size", "monitor_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParameterError(
                f"recipe {config.name!r}: {name} must be a whole number >= 1, got {value!r}"
            )


def trained_dir() -> Path:
    """Default folder of trained weights and cards: ``$XAIKIT_CACHE_DIR/trained``, else ``~/.cache/xaikit/trained``."""
    return cache_dir() / "trained"


def training_dir() -> Path:
    """Default folder of resumable checkpoints: ``$XAIKIT_CACHE_DIR/training``, else ``~/.cache/xaikit/training``."""
    return cache_dir() / "training"


def chance_threshold(labels: np.ndarray, num_classes: int) -> float:
    """Test accuracy at or below which a model has learned nothing.

    Chance is the larger of ``1 / num_classes`` and the share of the most
    frequent test label (what always answering that class scores); the
    threshold adds three binomial standard errors of an accuracy measured on
    ``len(labels)`` images, ``3 * sqrt(chance * (1 - chance) / n)``. For 10
    balanced classes: 10.9 % on 10,000 test images, 12.0 % on 2,000, 21.3 % on 64.
    """
    labels = np.asarray(labels)
    majority = np.bincount(labels).max() / len(labels)
    chance = max(1.0 / num_classes, float(majority))
    return chance + 3.0 * math.sqrt(chance * (1.0 - chance) / len(labels))


def _cifar10(split: str, **kwargs):
    from .data.cifar10 import load_cifar10

    return load_cifar10(split, **kwargs)


def _shapes(split: str, n_train: int = 30000, n_test: int = 2000, size: int = 32):
    from .data.synthetic import make_shapes

    # Train and held-out sets come from different seeds, so no image is shared.
    if split == "train":
        return make_shapes(n_train, size=size, seed=0, with_importance=False)
    return make_shapes(n_test, size=size, seed=1, with_importance=False)


#: data name -> function(split, **data_kwargs) returning an object with .images (N,H,W,3) uint8 and .labels
DATASETS: dict[str, Callable] = {"cifar10": _cifar10, "shapes": _shapes}


def _vit_kwargs(embed_dim: int, depth: int, num_heads: int, mean, std, **extra) -> dict:
    return dict(
        img_size=32,
        patch_size=4,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=2.0,
        num_classes=10,
        # Recorded in model.pretrained_cfg so that xaikit.preprocess normalises correctly.
        pretrained_cfg_overlay=dict(mean=list(mean), std=list(std), input_size=[3, 32, 32], crop_pct=1.0, num_classes=10),
        **extra,
    )


RECIPES: dict[str, TrainConfig] = {
    "demo-cifar10-vit": TrainConfig(
        name="demo-cifar10-vit",
        data="cifar10",
        # Sized for two hours on a 2-core CPU (40 epochs, about 140 s each with 2 threads);
        # 20 epochs flattened at 74 %. More epochs help where a GPU is available.
        timm_kwargs=_vit_kwargs(128, 6, 4, CIFAR10_MEAN, CIFAR10_STD),
        epochs=40,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=1.0,
    ),
    "demo-shapes-vit": TrainConfig(
        name="demo-shapes-vit",
        data="shapes",
        timm_kwargs=_vit_kwargs(96, 4, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        # 30,000 images for 20 epochs reached 94.5 %: more distinct images, not more passes.
        data_kwargs={"n_train": 50000},
        epochs=24,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=1.0,
    ),
}


def build_model(config: TrainConfig) -> nn.Module:
    import timm

    torch.manual_seed(config.seed)
    return timm.create_model(config.architecture, pretrained=False, **config.timm_kwargs)


def to_inputs(images_uint8: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) with the model's mean/std."""
    from .imaging import mean_std

    mean, std = mean_std(model, images_uint8.device)
    return (images_uint8.permute(0, 3, 1, 2).float() / 255 - mean) / std


def augment(batch: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflect padding, and horizontal flips, on a normalised batch (B, 3, H, W)."""
    size, height, width = batch.shape[0], batch.shape[2], batch.shape[3]
    if config.random_crop_padding:
        pad = config.random_crop_padding
        padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (size, 2), generator=generator).to(batch.device)
        channels = batch.shape[1]
        rows = (torch.arange(height, device=batch.device) + offsets[:, :1]).view(size, 1, height, 1)
        batch = padded.gather(2, rows.expand(size, channels, height, width + 2 * pad))
        cols = (torch.arange(width, device=batch.device) + offsets[:, 1:]).view(size, 1, 1, width)
        batch = batch.gather(3, cols.expand(size, channels, height, width))
    if config.horizontal_flip:
        flip = torch.rand(size, generator=generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1).to(batch.device), batch.flip(-1), batch)
    return batch


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on uint8 images (N, H, W, 3)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_inputs(torch.from_numpy(images[start : start + batch_size]).to(device), model)
        correct += (model(x).argmax(1).cpu() == torch.from_numpy(labels[start : start + batch_size])).sum().item()
    return correct / len(images)


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


_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "schedule", "generator", "state", "config"})


def _resolve_out_dir(out_dir: str | os.PathLike | None, replace_shipped: bool) -> Path:
    """Where the weights go; the shipped models' folder only with ``replace_shipped=True``."""
    shipped = Path(WEIGHTS_DIR).resolve()
    if out_dir is None:
        return Path(WEIGHTS_DIR) if replace_shipped else trained_dir()
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


def _read_checkpoint(path: Path, device: str, recipe_json: str) -> dict:
    """The saved training state, or a DataIntegrityError saying how to start afresh."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except OSError:  # unreadable (permissions, a folder), not corrupt: torch's message says so
        raise
    except Exception as err:  # truncated zip, garbage bytes, or a pickle a weights-only load refuses
        # `from None`: torch's own message would advise weights_only=False, i.e. running pickled code.
        raise DataIntegrityError(
            f"training checkpoint {path} is truncated, corrupt or not written by xaikit.train "
            f"({type(err).__name__} while reading it); delete it to start afresh"
        ) from None
    if not isinstance(saved, dict) or not _CHECKPOINT_KEYS <= saved.keys():
        raise DataIntegrityError(
            f"training checkpoint {path} does not hold a xaikit.train checkpoint; delete it to start afresh"
        )
    if saved["config"] != recipe_json:
        raise DataIntegrityError(
            f"training checkpoint {path} was written by another recipe; delete it to start afresh "
            "(or pass another work_dir to keep it)"
        )
    return saved


def train(
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    replace_shipped: bool = False,
    max_steps: int | None = None,
    checkpoint_every_s: float = 300.0,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) recipe `config`; returns the model card written next to the weights.

    out_dir: where ``<name>.safetensors`` and ``<name>.json`` go; default
    `trained_dir()`. The shipped models' folder (``xaikit/weights``) is refused
    unless ``replace_shipped=True``, which also makes it the default.
    work_dir: where the resumable checkpoint ``<name>.ckpt.pt`` goes; default
    `training_dir()`.
    `max_steps` stops early without writing weights (for tests and smoke runs);
    the checkpoint in `work_dir` still allows resuming.

    Raises InvalidParameterError for a recipe that trains no step (``epochs < 1``,
    an empty training set), DataIntegrityError for an unreadable checkpoint or
    one of another recipe, and TrainingError, writing nothing, when the final
    test accuracy is at chance level (`chance_threshold`).
    """
    check_recipe(config)
    if config.data not in DATASETS:
        raise InvalidParameterError(f"recipe {config.name!r}: unknown data {config.data!r}; known: {', '.join(DATASETS)}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise InvalidParameterError(f"max_steps must be a whole number >= 1 or None, got {max_steps!r}")
    out_dir = _resolve_out_dir(out_dir, replace_shipped)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    work_dir = Path(work_dir).expanduser() if work_dir is not None else training_dir()
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = work_dir / f"{config.name}.ckpt.pt"

    train_set = DATASETS[config.data]("train", **config.data_kwargs)
    test_set = DATASETS[config.data]("test", **config.data_kwargs)
    for split, data in (("training", train_set), ("test", test_set)):
        if len(data.labels) == 0:
            raise InvalidParameterError(
                f"recipe {config.name!r}: the {split} set of {config.data!r} with {config.data_kwargs} is empty, "
                "so no step would be trained or measured; give it images"
            )
    monitor = np.random.default_rng(config.seed).permutation(len(test_set.labels))[: config.monitor_size]

    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set.labels) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = max(1, int(config.warmup_epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup_steps)
        * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps))),
    )
    generator = torch.Generator().manual_seed(config.seed)
    state = {"step": 0, "train_seconds": 0.0, "history": []}
    recipe_json = json.dumps(asdict(config), sort_keys=True)  # identifies the run a checkpoint belongs to

    if checkpoint_path.exists():
        saved = _read_checkpoint(checkpoint_path, device, recipe_json)
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            generator.set_state(saved["generator"])
            state = json.loads(saved["state"])
            if not isinstance(state, dict) or not {"step", "train_seconds", "history"} <= state.keys():
                raise ValueError("its training state lacks step, train_seconds or history")
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise DataIntegrityError(
                f"training checkpoint {checkpoint_path} is damaged ({type(err).__name__}: {err}); "
                "delete it to start afresh"
            ) from err
        log(f"resumed {config.name} at step {state['step']}/{total_steps} ({state['train_seconds']:.0f} s trained)")

    def save_checkpoint() -> None:
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
            "state": json.dumps(state),
            "config": recipe_json,
        }
        with atomic_write(checkpoint_path) as handle:  # never leave a half-written checkpoint
            torch.save(payload, handle)

    images = torch.from_numpy(train_set.images)
    labels = torch.from_numpy(np.asarray(train_set.labels, dtype=np.int64))
    last_save = time.monotonic()
    steps_this_run = 0
    while state["step"] < total_steps:
        epoch, position = divmod(state["step"], steps_per_epoch)
        # The epoch's order depends only on (seed, epoch), so a resumed run sees the same batches.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        model.train()
        epoch_loss, epoch_batches, started = 0.0, 0, time.monotonic()
        for batch_index in range(position, steps_per_epoch):
            idx = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            x = augment(to_inputs(images[idx].to(device), model), config, generator)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx].to(device), label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            state["step"] += 1
            steps_this_run += 1
            epoch_loss += loss.item()
            epoch_batches += 1
            if max_steps is not None and steps_this_run >= max_steps:
                break
            if time.monotonic() - last_save > checkpoint_every_s:
                state["train_seconds"] += time.monotonic() - started
                started = time.monotonic()
                save_checkpoint()
                last_save = time.monotonic()
        state["train_seconds"] += time.monotonic() - started
        if state["step"] % steps_per_epoch == 0:
            monitored = accuracy(model, test_set.images[monitor], np.asarray(test_set.labels)[monitor])
            train_loss = epoch_loss / max(1, epoch_batches)
            state["history"].append(
                {"epoch": epoch + 1, "train_loss": train_loss, "monitor_accuracy": monitored,
                 "train_seconds": round(state["train_seconds"], 1)}
            )
            log(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.3f}, "
                f"accuracy on {len(monitor)} test images {monitored:.3f}, {state['train_seconds']:.0f} s")
        save_checkpoint()
        last_save = time.monotonic()
        if max_steps is not None and steps_this_run >= max_steps:
            return {"step": state["step"], "train_seconds": state["train_seconds"], "finished": False}

    if state["step"] < 1:  # unreachable with epochs >= 1 and a non-empty training set; never card an untrained model
        raise TrainingError(f"{config.name}: no training step was run, so no weights or model card were written")
    test_labels = np.asarray(test_set.labels)
    test_accuracy = accuracy(model, test_set.images, test_labels)
    num_classes = int(getattr(model, "num_classes", 0) or config.timm_kwargs.get("num_classes", 0) or test_labels.max() + 1)
    threshold = chance_threshold(test_labels, num_classes)
    if test_accuracy <= threshold:
        raise TrainingError(
            f"{config.name}: test accuracy {100 * test_accuracy:.1f} % on {len(test_labels)} images after "
            f"{state['step']} steps is at chance level (<= {100 * threshold:.1f} %: chance plus three standard "
            f"errors), so the model learned nothing and no weights or model card were written to {out_dir}. "
            f"Check the recipe (epochs, lr, data); delete {checkpoint_path} to train it again from scratch"
        )

    from safetensors.torch import save as safetensors_bytes

    weights = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    weights_path = out_dir / f"{config.name}.safetensors"
    card_path = out_dir / f"{config.name}.json"
    card = {
        "name": config.name,
        "architecture": config.architecture,
        "timm_kwargs": config.timm_kwargs,
        "data": {"name": config.data, "train_images": len(train_set.labels), "test_images": len(test_set.labels),
                 "source": getattr(train_set, "source", config.data), **config.data_kwargs},
        "recipe": asdict(config),
        "seed": config.seed,
        "epochs": config.epochs,
        "test_accuracy": test_accuracy,
        "hardware": hardware(device),
        "device": device,
        "train_seconds": round(state["train_seconds"], 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": state["history"],
        "torch": torch.__version__,
        "sha256": hashlib.sha256(weights).hexdigest(),
    }
    with atomic_write(weights_path) as handle:
        handle.write(weights)
    with atomic_write(card_path, "w") as handle:
        handle.write(json.dumps(card, indent=1) + "\n")
    log(f"{config.name}: test accuracy {test_accuracy:.4f} after {state['train_seconds'] / 60:.1f} min on {card['hardware']}; "
        f"wrote {weights_path} and {card_path} (load it with xaikit.train.load_trained({str(card_path)!r}))")
    return card


def load_trained(card: str | os.PathLike, *, device: str | torch.device | None = None) -> nn.Module:
    """A model written by `train`, in eval mode, built from its JSON model card and hash-checked weights.

    card: the card's path (``<out_dir>/<name>.json``; the ``.safetensors`` beside
    it works too) or a bare recipe name, looked up in `trained_dir()`, e.g.
    ``load_trained("demo-cifar10-vit")`` after ``python -m xaikit.train demo-cifar10-vit``.
    The weights are ``<card stem>.safetensors`` beside the card; their sha256 must
    match the card's.
    """
    from .demo_models import load_from_card

    path = Path(card).expanduser()
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    elif path.suffix != ".json" and str(card) == path.name:  # a bare name
        path = trained_dir() / f"{path.name}.json"
    if not path.is_file():
        raise WeightsUnavailableError(
            f"no model card at {path}; train the model first (python -m xaikit.train NAME writes "
            f"NAME.json and NAME.safetensors into {trained_dir()}, or into --out-dir)"
        )
    model = load_from_card(path, remedy="train the model again")
    if device is not None:
        model.to(device)
    return model


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xaikit.train",
        description="Train (or resume training) a demo ViT recipe. The weights and model card go into "
        f"{trained_dir()} (or --out-dir); load them with xaikit.train.load_trained(NAME or card path).",
    )
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where the weights and model card go (default: {trained_dir()})")
    parser.add_argument("--replace-shipped", action="store_true",
                        help=f"write into {WEIGHTS_DIR}, replacing the demo model shipped with xaikit")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"where the resumable checkpoint goes (default: {training_dir()})")
    parser.add_argument("--epochs", type=_epochs, default=None, help="override the recipe's epochs (>= 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for torch")
    args = parser.parse_args(argv)
    config = RECIPES[args.recipe]
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    torch.set_num_threads(args.threads)
    try:
        train(config, out_dir=args.out_dir, work_dir=args.work_dir, replace_shipped=args.replace_shipped)
    except XaikitError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
