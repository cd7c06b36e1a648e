"""The training loop: `train` runs (or resumes) a recipe, step by step and epoch by epoch.

The run in order: `_start` builds the model (`model_setup`), reads the data (`datasets`) and makes the
optimiser and schedule; a checkpoint of the same recipe is restored (`checkpoints`); `_targets` makes the
labels the loss compares with; `_run_epochs` trains (`_train_epoch`, `_step`), scores every finished
epoch (`_end_epoch`) and checkpoints; `_final_metrics` refuses a model that learned nothing; the weights
and model card are written last (`cards`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError, TrainingError
from .cards import _resolve_out_dir, card_entries, write_weights_and_card
from .checkpoints import RunState, training_dir
from .datasets import DATASETS, load_data, load_validation
from .evaluation import (
    _regression_metrics,
    accuracy,
    both_top,
    both_top_chance_threshold,
    chance_threshold,
    mean_baseline_threshold,
    mean_squared_errors,
    multi_hot,
    multilabel_metrics,
    predict,
    standardise,
    target_standardisation,
    validation_loss,
)
from .inputs import augment, resize_to_model, to_inputs
from .model_setup import build_model, freeze, initialise
from .recipes import TrainConfig, check_recipe, recipe_identity


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
    init_weights: str | os.PathLike | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume) recipe `config`; returns the model card written next to the weights.

    out_dir: where ``<stem>.safetensors`` and ``<stem>.json`` go (`TrainConfig.stem`);
    default `default_out_dir(config)`: `trained_dir()`, or for fine-tuned recipes
    `xaikit.models.weights_dir()`. The shipped models' folder (``xaikit/weights``) is refused
    unless ``replace_shipped=True``, which also makes it the default.
    work_dir: where the resumable checkpoint ``<name>.ckpt.pt`` goes; default
    `training_dir()`.
    `max_steps` stops early without writing weights (for tests and smoke runs);
    the checkpoint in `work_dir` still allows resuming.
    init_weights: a local file holding the weights of ``config.init`` (fine-tuning,
    see `initialise`); default: found by `xaikit.load_model`.
    on_step: called after every optimiser step with ``{"step", "epoch", "loss", "lr"}``
    (the learning rate that step used).

    Raises InvalidParameterError for a recipe that trains no step (``epochs < 1``,
    an empty training set), DataIntegrityError for an unreadable checkpoint or
    one of another recipe, and TrainingError, writing nothing, when the final
    test accuracy is at chance level (`chance_threshold`).

    Regression recipes (``task="regression"``): the data's labels are an (N, K) table and
    the model has K outputs. Each column is standardised with the training set's mean and
    std (`target_standardisation`), ``z = (y - mean) / std``; the loss is the mean squared
    error on z; the curve records ``monitor_mse``. The card records the mean and std
    (``targets``: names, mean, std; `predict_targets` maps outputs back to the data's
    units), the test MSE on z per target and overall (``test_mse_per_target``,
    ``test_mse``), the RMSE in the data's units and R^2 per target; a model no better than
    predicting the training mean (`mean_baseline_threshold`) raises TrainingError instead.
    """
    _check_arguments(config, max_steps, init_weights)
    out_dir = _resolve_out_dir(out_dir, replace_shipped, config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    work_dir = Path(work_dir).expanduser() if work_dir is not None else training_dir()
    run = _start(config, device, work_dir, init_weights)
    if run.state.path.exists():
        run.state.restore(device, keep_best=config.keep == "best-val-loss")
        log(f"resumed {config.name} at step {run.step}/{run.total_steps} "
            f"({run.state.progress['train_seconds']:.0f} s trained)")
    targets = _targets(run)
    if not _run_epochs(run, targets, max_steps=max_steps, checkpoint_every_s=checkpoint_every_s, log=log, on_step=on_step):
        return {"step": run.step, "train_seconds": run.state.progress["train_seconds"], "finished": False}
    metrics, summary, kept = _final_metrics(run, targets, out_dir)
    entries = card_entries(config, run.model, run.train_set, run.test_set, init=run.init, metrics=metrics, device=device,
                           progress=run.state.progress, trained=run.trained, kept=kept)
    card, weights_path, card_path = write_weights_and_card(run.model, entries, out_dir, config.stem)
    log(f"{config.name}: {summary} after {run.state.progress['train_seconds'] / 60:.1f} min on {card['hardware']}; "
        f"wrote {weights_path} and {card_path} (load it with xaikit.train.load_trained({str(card_path)!r}))")
    return card


def _check_arguments(config: TrainConfig, max_steps: int | None, init_weights) -> None:
    """Refuse a recipe or arguments that would train nothing or the wrong thing, before anything is read."""
    check_recipe(config)
    if config.data not in DATASETS:
        raise InvalidParameterError(f"recipe {config.name!r}: unknown data {config.data!r}; known: {', '.join(DATASETS)}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise InvalidParameterError(f"max_steps must be a whole number >= 1 or None, got {max_steps!r}")
    if init_weights is not None and config.init is None:
        raise InvalidParameterError(
            f"init_weights={str(init_weights)!r} given, but recipe {config.name!r} trains from scratch (init=None); "
            "set the recipe's init to the model those weights belong to"
        )


@dataclass
class _Run:
    """One run of a recipe: its model and data, and the resumable `state` the loop advances."""

    config: TrainConfig
    device: str
    model: nn.Module
    init: dict | None  # what `initialise` did (for the card); None: a random start
    trained: list[nn.Parameter]
    train_set: object
    test_set: object
    val_set: object | None
    monitor: np.ndarray  # the test images scored after every epoch
    steps_per_epoch: int
    state: RunState

    @property
    def step(self) -> int:
        return self.state.progress["step"]

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def regression(self) -> bool:
        return self.config.task == "regression"

    @property
    def multilabel(self) -> bool:
        return self.config.task == "multilabel"


def _start(config: TrainConfig, device: str, work_dir: Path, init_weights) -> _Run:
    """The run's model (with its starting weights), data, optimiser, schedule and random generator."""
    # The starting weights first: offline, their absence is reported at once, before any data is read.
    model = build_model(config)
    init = (initialise(model, config.init, weights=init_weights, timm_kwargs=config.timm_kwargs,
                       reset_head=config.frozen == "backbone") if config.init else None)
    model = model.to(device)
    trained = freeze(model, config)
    train_set, test_set = load_data(config)
    val_set = load_validation(config)
    work_dir.mkdir(parents=True, exist_ok=True)
    monitor = np.random.default_rng(config.seed).permutation(len(test_set.labels))[: config.monitor_size]
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(trained, lr=config.lr)
    else:
        optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set.labels) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
    state = RunState(path=work_dir / f"{config.name}.ckpt.pt", recipe_json=recipe_identity(config), model=model,
                     optimizer=optimizer, schedule=schedule, generator=torch.Generator().manual_seed(config.seed))
    return _Run(config=config, device=device, model=model, init=init, trained=trained, train_set=train_set,
                test_set=test_set, val_set=val_set, monitor=monitor, steps_per_epoch=steps_per_epoch, state=state)


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier of each step for the recipe's ``schedule``."""
    if config.schedule == "constant":
        return lambda step: 1.0
    if config.schedule == "exponential":
        return lambda step: config.lr_decay ** (step // steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = max(1, int(config.warmup_epochs * steps_per_epoch))
    return lambda step: (min(1.0, (step + 1) / warmup_steps)
                         * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps))))


@dataclass
class _Targets:
    """What the loss and the scores compare with: the training labels, and for regression the standardised
    test and validation targets and the training set's mean and std (`target_standardisation`)."""

    train: torch.Tensor  # class indices (int64), or standardised targets (N, K) float32
    test: np.ndarray | None = None
    val: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


def _targets(run: _Run) -> _Targets:
    """The run's `_Targets`; labels that do not fit the recipe's task or the model's outputs are refused."""
    config, train_set, test_set = run.config, run.train_set, run.test_set
    if run.multilabel:  # the classes present in each image, as a 0/1 table for the binary cross-entropy
        return _Targets(torch.from_numpy(multi_hot(train_set.labels, int(getattr(run.model, "num_classes", 0)))))
    if not run.regression:
        class_indices = np.asarray(train_set.labels)
        # Casting a table or float targets to int64 would train on truncated numbers without a word.
        if class_indices.ndim != 1 or not np.issubdtype(class_indices.dtype, np.integer):
            raise InvalidParameterError(
                f"recipe {config.name!r}: a classification recipe needs one integer class index per image, but "
                f"the labels of {config.data!r} have shape {class_indices.shape} and dtype {class_indices.dtype}; "
                "for a table of numbers to predict set task='regression'"
            )
        return _Targets(torch.from_numpy(class_indices.astype(np.int64)))
    mean, std = target_standardisation(train_set.labels, config.name)
    outputs = int(getattr(run.model, "num_classes", 0))
    if outputs != mean.size:
        raise InvalidParameterError(
            f"recipe {config.name!r}: the model has {outputs} outputs but the data has {mean.size} "
            f"regression targets; set num_classes={mean.size} in its timm_kwargs"
        )
    names = getattr(test_set, "target_names", None)
    if names is not None and len(names) != mean.size:  # the card would drop or mislabel targets
        raise InvalidParameterError(
            f"recipe {config.name!r}: the data names {len(names)} targets ({', '.join(map(str, names))}) "
            f"but has {mean.size} target columns"
        )
    return _Targets(
        train=torch.from_numpy(standardise(train_set.labels, mean, std)),
        test=standardise(test_set.labels, mean, std),
        val=standardise(run.val_set.labels, mean, std) if run.val_set is not None else None,
        mean=mean,
        std=std,
    )


def _run_epochs(run: _Run, targets: _Targets, *, max_steps: int | None, checkpoint_every_s: float,
                log: Callable[[str], None], on_step: Callable[[dict], None] | None) -> bool:
    """Train up to the recipe's last step, checkpointing after every epoch; False when `max_steps` stopped it first."""
    steps_this_run = 0
    while run.step < run.total_steps:
        epoch, position = divmod(run.step, run.steps_per_epoch)
        steps_left = None if max_steps is None else max_steps - steps_this_run
        batches, loss_sum = _train_epoch(run, targets, epoch, position, steps_left, checkpoint_every_s, on_step)
        steps_this_run += batches
        if run.step % run.steps_per_epoch == 0:
            _end_epoch(run, targets, epoch, loss_sum / max(1, batches), log)
        run.state.save()
        if max_steps is not None and steps_this_run >= max_steps:
            return False
    return True


def _train_epoch(run: _Run, targets: _Targets, epoch: int, position: int, steps_left: int | None,
                 checkpoint_every_s: float, on_step: Callable[[dict], None] | None) -> tuple[int, float]:
    """The batches of `epoch` from `position` on (at most `steps_left`); returns how many ran and their summed loss.

    Saves a checkpoint whenever `checkpoint_every_s` seconds passed since the last one.
    """
    config, progress = run.config, run.state.progress
    # The epoch's order depends only on (seed, epoch), so a resumed run sees the same batches.
    order = torch.randperm(len(targets.train), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
    # A frozen backbone stays in eval mode (no dropout, as at test); its head has no train-only layers.
    run.model.train(config.frozen is None)
    batches, loss_sum, started, last_save = 0, 0.0, time.monotonic(), time.monotonic()
    for batch_index in range(position, run.steps_per_epoch):
        idx = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
        loss, step_lr = _step(run, _inputs(run, idx), targets.train[idx])
        progress["step"] += 1
        batches += 1
        loss_sum += loss
        if on_step is not None:
            on_step({"step": progress["step"], "epoch": epoch + 1, "loss": loss, "lr": step_lr})
        if steps_left is not None and batches >= steps_left:
            break
        if time.monotonic() - last_save > checkpoint_every_s:
            progress["train_seconds"] += time.monotonic() - started
            started = time.monotonic()
            run.state.save()
            last_save = time.monotonic()
    progress["train_seconds"] += time.monotonic() - started
    return batches, loss_sum


def _inputs(run: _Run, idx: torch.Tensor) -> torch.Tensor:
    """The training images `idx`, augmented at the data's size, then upsampled to the model's input (a no-op when
    they agree)."""
    config, train_set, model = run.config, run.train_set, run.model
    # A set read from files (`LazyImages`) augments its own batches (`augmented`), read as they are needed.
    if hasattr(train_set, "augmented"):  # seeded by (seed, step), so a resumed run draws the same crops
        rng = np.random.default_rng([config.seed, run.step])
        raw = torch.from_numpy(train_set.augmented(idx.numpy(), rng))
        return resize_to_model(to_inputs(raw.to(run.device), model, resize=False), model)
    batch = to_inputs(torch.from_numpy(train_set.images)[idx].to(run.device), model, resize=False)
    return resize_to_model(augment(batch, config, run.state.generator), model)


def _step(run: _Run, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One optimiser step on batch `x`; returns its loss and the learning rate it used."""
    config, model, optimizer = run.config, run.model, run.state.optimizer
    with torch.autocast(device_type=torch.device(run.device).type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
        if config.frozen == "backbone":  # features without a graph: only the head gets gradients
            with torch.no_grad():
                features = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.get_classifier()(features)
        else:
            logits = model(x)
    if run.regression:
        loss = F.mse_loss(logits.float(), labels.to(run.device))
    elif run.multilabel:
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels.to(run.device))
    else:
        loss = F.cross_entropy(logits.float(), labels.to(run.device), label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    step_lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    run.state.schedule.step()
    return loss.item(), step_lr


def _end_epoch(run: _Run, targets: _Targets, epoch: int, train_loss: float, log: Callable[[str], None]) -> None:
    """After a whole epoch: score the monitor images (and the validation set, keeping the best weights so far),
    and add the epoch to the training curve."""
    model, test_set, monitor, progress = run.model, run.test_set, run.monitor, run.state.progress
    if run.regression:
        metric = "mse"
        monitored = float(mean_squared_errors(model, test_set.images[monitor], targets.test[monitor]).mean())
    elif run.multilabel:
        metric = "both_top"
        monitored = float(both_top(predict(model, test_set.images[monitor]), np.asarray(test_set.labels)[monitor]).mean())
    else:
        metric = "accuracy"
        monitored = accuracy(model, test_set.images[monitor], np.asarray(test_set.labels)[monitor])
    entry = {"epoch": epoch + 1, "train_loss": train_loss, f"monitor_{metric}": monitored,
             "train_seconds": round(progress["train_seconds"], 1)}
    if run.val_set is not None:
        entry["val_loss"] = validation_loss(model, run.val_set, targets.val if run.regression else None)
        best = progress.get("best")
        if best is None or entry["val_loss"] < best["val_loss"]:
            progress["best"] = {"epoch": epoch + 1, "val_loss": entry["val_loss"]}
            run.state.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        log(f"epoch {epoch + 1}: validation loss {entry['val_loss']:.4f} on {len(run.val_set.labels)} images "
            f"(best: epoch {progress['best']['epoch']})")
    progress["history"].append(entry)
    log(f"epoch {epoch + 1}/{run.config.epochs}: loss {train_loss:.3f}, "
        f"{metric} on {len(monitor)} test images {monitored:.3f}, {progress['train_seconds']:.0f} s")


def _final_metrics(run: _Run, targets: _Targets, out_dir: Path) -> tuple[dict, str, dict | None]:
    """The card's test scores, a summary for the log, and which epoch was kept (None: the last).

    Keeps the best validated weights (``keep="best-val-loss"``); raises TrainingError, so that nothing is
    written, when the model does no better than chance (`chance_threshold`) or the training mean
    (`mean_baseline_threshold`).
    """
    config, model, test_set, step = run.config, run.model, run.test_set, run.step
    if step < 1:  # unreachable with epochs >= 1 and a non-empty training set; never card an untrained model
        raise TrainingError(f"{config.name}: no training step was run, so no weights or model card were written")
    kept = None
    if run.val_set is not None:
        if run.state.best_weights is None:
            raise TrainingError(f"{config.name}: no epoch was validated, so there is no best checkpoint to keep")
        model.load_state_dict(run.state.best_weights)
        kept = {"rule": "lowest validation loss", **run.state.progress["best"], "val_images": len(run.val_set.labels)}
    unlearned = (f"so the model learned nothing and no weights or model card were written to {out_dir}. Check the "
                 f"recipe (epochs, lr, data); delete {run.state.path} to train it again from scratch")
    if run.regression:
        metrics = _regression_metrics(model, test_set, targets.test, targets.mean, targets.std)
        threshold = mean_baseline_threshold(targets.test)
        if metrics["test_mse"] >= threshold:
            raise TrainingError(
                f"{config.name}: test MSE {metrics['test_mse']:.3f} (standardised targets) on {len(targets.test)} "
                f"images after {step} steps is no better than predicting the training mean (>= "
                f"{threshold:.3f}: its MSE minus three standard errors), {unlearned}"
            )
        return metrics, f"test MSE (standardised targets) {metrics['test_mse']:.4f}", kept
    if run.multilabel:
        labels = np.asarray(test_set.labels)
        metrics = multilabel_metrics(model, test_set.images, labels)
        threshold = both_top_chance_threshold(len(labels), int(getattr(model, "num_classes", 0)), labels.shape[1])
        if metrics["test_both_top"] <= threshold:
            raise TrainingError(
                f"{config.name}: the present classes are the top-{labels.shape[1]} logits on "
                f"{100 * metrics['test_both_top']:.1f} % of {len(labels)} test images after {step} steps, at chance "
                f"level (<= {100 * threshold:.1f} %: chance plus three standard errors), {unlearned}"
            )
        return metrics, f"both objects top-{labels.shape[1]} on {metrics['test_both_top']:.4f}, mean AP {metrics['test_mean_ap']:.4f}", kept
    test_labels = np.asarray(test_set.labels)
    test_accuracy = accuracy(model, test_set.images, test_labels)
    num_classes = int(getattr(model, "num_classes", 0) or config.timm_kwargs.get("num_classes", 0) or test_labels.max() + 1)
    threshold = chance_threshold(test_labels, num_classes)
    if test_accuracy <= threshold:
        raise TrainingError(
            f"{config.name}: test accuracy {100 * test_accuracy:.1f} % on {len(test_labels)} images after "
            f"{step} steps is at chance level (<= {100 * threshold:.1f} %: chance plus three standard "
            f"errors), {unlearned}"
        )
    return {"test_accuracy": test_accuracy}, f"test accuracy {test_accuracy:.4f}", kept
