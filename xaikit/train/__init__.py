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

Fine-tuning. A recipe with ``init`` (e.g. ``"deit_base_patch16_224.fb_in1k"``)
starts from those published weights instead of a random model (`initialise`):
every tensor is copied except a classifier head of another size (ImageNet's 1,000
classes for CIFAR's 10 or 100), which is dropped and keeps the fresh head timm
gives a new model. Images smaller than the model's input are upsampled
bilinearly to it (`resize_to_model`), after the augmentation, in training and
in `accuracy`. The recipes ``deit_base-cifar10`` and ``deit_base-cifar100`` are
the paper profile's CIFAR checkpoints: their weights and cards go into
`xaikit.models.weights_dir` (``$XAIKIT_WEIGHTS_DIR``) as
``deit_base_patch16_224-cifar10.safetensors`` / ``.json`` (and ``-cifar100``);
``load_trained("deit_base-cifar10")`` loads them. The paper's own checkpoints and
recipe are not published; these settings are this project's (see `RECIPES`).

Regression. A recipe with ``task="regression"`` trains the model's K outputs on an
(N, K) table of targets, standardised with the training set's mean and std (MSE
loss); its card records them with the test MSE and R^2 per target (see `train`).
The recipes ``demo-nodules-biomarkers-vit`` (the eight LIDC biomarkers) and
``demo-nodules-vit`` (malignancy, 2 classes; fine-tuned from the former, so train
that first) train on the synthetic nodules of `xaikit.data.synthetic.make_nodules`
(training seed 0, held-out seed 1, as ``xaikit.data.load_examples("nodules")``).

CDAM paper profile. ``frozen="backbone"`` trains only the classifier head (a linear probe; `freeze`),
``optimizer``/``schedule``/``lr_decay`` choose Adam and a constant or exponential rate, and
``keep="best-val-loss"`` writes the weights of the epoch with the lowest loss on the data's "val" split.
``cdam-dino-linear-probe`` (`linear_probe_recipe`: ImageNet ImageFolder in ``$XAIKIT_IMAGENET_TRAIN``)
and ``cdam-dino-lidc-malignancy`` / ``-biomarkers`` (`lidc_recipe`: crops in ``$XAIKIT_LIDC_CROPS``)
start from ``vit_small_patch8_224.dino``.

The parts, one module each:

- `recipes`: `TrainConfig`, the named `RECIPES` and the functions that make or describe recipes;
- `datasets`: `DATASETS`, the loaders of each data's splits, `load_data`;
- `model_setup`: the starting model (`build_model`, `initialise`, `freeze`);
- `inputs`: image batches to model inputs (`to_inputs`, `augment`, `resize_to_model`);
- `loop`: `train`, the training loop, in named steps;
- `evaluation`: scores (`accuracy`, `predict`, regression errors) and the learned-nothing thresholds;
- `checkpoints`: the resumable state of a run (`RunState`) and its file;
- `cards`: where weights and model cards go, what a card records, `load_trained`;
- `cli`: ``python -m xaikit.train`` (`main`).

The names in `__all__` (and the few private helpers the tests use) are importable from ``xaikit.train``
itself, as before the split.
"""

from __future__ import annotations

from ..demo_models import WEIGHTS_DIR
from ..errors import TrainingError
from .cards import _resolve_out_dir, card_entries, default_out_dir, hardware, load_trained, trained_dir, write_weights_and_card
from .checkpoints import RunState, training_dir
from .cli import main
from .datasets import (
    DATASETS,
    IMAGENET_TRAIN_ENV,
    LIDC_CROPS_ENV,
    LIDC_SPLIT,
    ImageFiles,
    LazyImages,
    NoduleCrops,
    _imagenet,
    _lidc,
    load_data,
    load_validation,
    random_resized_crop,
    resize_centre_crop,
    stratified_split,
)
from .evaluation import (
    accuracy,
    chance_threshold,
    mean_baseline_threshold,
    mean_squared_errors,
    predict,
    predict_targets,
    standardise,
    target_standardisation,
    validation_loss,
)
from .inputs import augment, resize_images, resize_to_model, to_inputs
from .loop import lr_factor, train
from .model_setup import build_model, classifier_keys, freeze, initialise
from .recipes import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DINO,
    FINETUNE_DATA,
    LIDC_TARGETS,
    NODULE_MEAN,
    NODULE_STD,
    RECIPES,
    TASKS,
    TrainConfig,
    _dino_kwargs,
    _vit_kwargs,
    check_recipe,
    describe_recipe,
    finetune_recipe,
    lidc_recipe,
    linear_probe_recipe,
    recipe_identity,
)

__all__ = [
    "accuracy",
    "annotations",
    "augment",
    "build_model",
    "card_entries",
    "chance_threshold",
    "check_recipe",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "classifier_keys",
    "DATASETS",
    "default_out_dir",
    "describe_recipe",
    "DINO",
    "FINETUNE_DATA",
    "finetune_recipe",
    "freeze",
    "hardware",
    "ImageFiles",
    "IMAGENET_TRAIN_ENV",
    "initialise",
    "LazyImages",
    "LIDC_CROPS_ENV",
    "lidc_recipe",
    "LIDC_SPLIT",
    "LIDC_TARGETS",
    "linear_probe_recipe",
    "load_data",
    "load_trained",
    "load_validation",
    "lr_factor",
    "main",
    "mean_baseline_threshold",
    "mean_squared_errors",
    "NODULE_MEAN",
    "NODULE_STD",
    "NoduleCrops",
    "predict",
    "predict_targets",
    "random_resized_crop",
    "recipe_identity",
    "RECIPES",
    "resize_centre_crop",
    "resize_images",
    "resize_to_model",
    "RunState",
    "standardise",
    "stratified_split",
    "target_standardisation",
    "TASKS",
    "to_inputs",
    "train",
    "TrainConfig",
    "trained_dir",
    "training_dir",
    "TrainingError",
    "validation_loss",
    "WEIGHTS_DIR",
    "write_weights_and_card",
]
