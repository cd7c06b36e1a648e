"""What the benchmark runs: profiles (models on image sets, each with the protocols its data allows), the units of
work they expand to, and `run_unit`, which computes one unit for `xaikit.ledger.Ledger.run`.

A unit is one (model, image set, method with its settings, protocol with its settings, astrocytes on or off)
combination over one shard of images. Its specification names the model by its name and the SHA-256 of its
weights, the images by their ids, and carries the xaikit version (`Ledger.unit`), so a changed model, sample
or library never reuses an old result.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..ledger import Ledger, Unit, shards
from ..methods import get_method, list_methods
from ..methods.base import method_parameters
from ..profiles import check_profile
from .protocols import PROTOCOLS, UnitData, get_protocol

#: ViTA's astrocyte settings the benchmark uses when the ViTA chapter has not chosen one: the setting
#: ViTA 1 shows (k = 6, tau = 3, phi = -0.5, alpha = 1.5, beta = 0.05).
DEFAULT_ASTROCYTES = {"k": 6, "tau": 3.0, "phi": -0.5, "alpha": 1.5, "beta": 0.05}


@dataclass(frozen=True)
class Track:
    """One model on one image set, and the protocols the benchmark runs there.

    `limits` caps the images of a protocol (its first shards only; the cost and the randomisation test, which
    need few images, run on fewer). `weights`: a local weights file for `model` (None: its shipped or
    published weights)."""

    model: str
    dataset: str
    n_images: int
    protocols: tuple[str, ...]
    seed: int = 0
    weights: str | None = None
    limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """A benchmark profile: its tracks, the methods' settings, the protocols' settings, shard and batch sizes."""

    name: str
    tracks: tuple[Track, ...]
    method_settings: Mapping[str, dict] = field(default_factory=dict)
    protocol_settings: Mapping[str, dict] = field(default_factory=dict)
    shard_size: int = 64
    batch_size: int = 32

    def with_models(self, replacements: Mapping[str, tuple[str, str | None]]) -> "Profile":
        """The profile with models swapped: ``{paper model: (model name, weights file or None)}``."""
        tracks = tuple(dataclasses.replace(t, model=replacements[t.model][0], weights=replacements[t.model][1])
                       if t.model in replacements else t for t in self.tracks)
        return dataclasses.replace(self, tracks=tracks)

    def with_images(self, n_images: int) -> "Profile":
        """The profile with at most `n_images` images per track (a quick look, or a test)."""
        return dataclasses.replace(self, tracks=tuple(dataclasses.replace(t, n_images=min(t.n_images, n_images))
                                                      for t in self.tracks))


_SAMPLING = ("smooth_cdam", "smoothgrad", "integrated_cdam", "integrated_gradients")


def _sampling(n: int) -> dict[str, dict]:
    return {"smooth_cdam": {"n_samples": n}, "smoothgrad": {"n_samples": n},
            "integrated_cdam": {"n_steps": n}, "integrated_gradients": {"n_steps": n}}


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke",
        (
            Track("demo-cifar10-vit", "cifar10-test", 6, ("perturbation", "aopc_lodds", "fidelity", "compactness",
                                                          "randomisation", "cost"), limits={"cost": 3}),
            Track("demo-shapes-vit", "shapes", 6, ("segmentation", "pointing_game", "human_alignment")),
            Track("demo-shapes-vit", "pairs", 4, ("class_discrimination", "box_sensitivity")),
        ),
        method_settings=_sampling(2),
        protocol_settings={"box_sensitivity": {"n_boxes": 3, "sizes": [56, 112]}, "class_discrimination": {"n_boxes": 3, "sizes": [56, 112]}},
        shard_size=3, batch_size=16,
    ),
    # demo: the small ViTs this project trains; sample sizes chosen so the whole benchmark takes at most
    # 15 minutes on a 2-core CPU from an empty ledger.
    "demo": Profile(
        "demo",
        (
            Track("demo-cifar10-vit", "cifar10-test", 32, ("perturbation", "aopc_lodds", "fidelity", "compactness",
                                                           "randomisation", "cost"),
                  limits={"randomisation": 16, "cost": 16}),
            Track("demo-shapes-vit", "shapes", 64, ("segmentation", "pointing_game", "human_alignment")),
            Track("demo-shapes-vit", "pairs", 16, ("class_discrimination", "box_sensitivity")),
        ),
        method_settings=_sampling(8),
        protocol_settings={"box_sensitivity": {"n_boxes": 4, "sizes": [56, 112]},
                           "class_discrimination": {"n_boxes": 4, "sizes": [56, 112]},
                           "cost": {"repeats": 2}},
        shard_size=32, batch_size=32,
    ),
    # paper: the papers' models and data (their own sample sizes); methods with their papers' settings.
    "paper": Profile(
        "paper",
        (
            Track("deit_base_patch16_224.fb_in1k", "imagenet-seg", 4276, ("segmentation", "pointing_game")),
            Track("vit_base_patch16_224.orig_in21k_ft_in1k", "imagenet-val", 5000,
                  ("perturbation", "aopc_lodds", "randomisation", "cost"), limits={"randomisation": 500, "cost": 64}),
            Track("vit_small_patch8_224.dino", "imagenet-x-val", 1000, ("fidelity", "compactness")),
            Track("vit_small_patch8_224.dino", "imagenet-x-multi", 1000, ("class_discrimination", "box_sensitivity")),
            Track("vit_base_patch16_224", "clickme-val", 2982, ("human_alignment",)),
        ),
        # ImageNet-Segmentation has masks but no class labels: the pointing game points for the predicted class
        protocol_settings={"pointing_game": {"explained_class": "predicted"}},
        shard_size=250, batch_size=32,
    ),
}


def get_profile(name: str) -> Profile:
    check_profile(name)
    return PROFILES[name]


# -- models and image sets, cached per process (a Ray worker keeps its own) ----------------------------

_MODELS: dict[tuple[str, str | None, str], nn.Module] = {}
_IMAGE_SETS: "OrderedDict[tuple, BenchImages]" = OrderedDict()
_UNIT_DATA: "OrderedDict[tuple, UnitData]" = OrderedDict()


def load_track_model(name: str, weights: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a track, in eval mode with fused attention off, cached per process."""
    from ..models import load_model

    key = (name, weights, str(device))
    if key not in _MODELS:
        _MODELS[key] = load_model(name, weights=weights, device=device).eval()
    return _MODELS[key]


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, shapes, dtypes and values), whatever file they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


@dataclass
class BenchImages:
    """An image set prepared for a model: images (n, 3, H, W) normalised, ids, and what the set carries."""

    images: torch.Tensor
    ids: list[str]
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    human: torch.Tensor | None = None
    other_classes: torch.Tensor | None = None
    described: str = ""

    def take(self, ids: Sequence[str]) -> "BenchImages":
        where = {image_id: i for i, image_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise InvalidParameterError(f"image ids {missing[:3]} are not in this image set; the ledger's specification "
                                        "belongs to other data (a changed sample or data folder): use a new ledger folder")
        index = torch.as_tensor([where[i] for i in ids], dtype=torch.long)
        pick = lambda tensor: None if tensor is None else tensor[index]  # noqa: E731
        return BenchImages(self.images[index], list(ids), pick(self.labels), pick(self.masks), pick(self.human),
                           pick(self.other_classes), self.described)


def _demo_images(dataset: str, model: nn.Module, n: int, seed: int) -> BenchImages:
    from ..data import load_examples
    from ..data.clickme import blurred_object_maps
    from ..imaging import preprocess

    if dataset == "cifar10-test":
        examples = load_examples("cifar10", n, seed=seed)
        return BenchImages(preprocess(model, examples.images, squash=True), [f"cifar10-test/{seed}/{i}" for i in range(n)],
                           torch.as_tensor(examples.labels, dtype=torch.long),
                           described=f"{n} CIFAR-10 test images (class-balanced sample, seed {seed})")
    if dataset == "shapes":
        shapes = load_examples("shapes", n, seed=seed)
        masks = torch.as_tensor(shapes.masks, dtype=torch.bool)
        return BenchImages(preprocess(model, shapes.images), [f"shapes/{seed + i}" for i in range(n)],
                           torch.as_tensor(shapes.labels, dtype=torch.long), masks,
                           torch.as_tensor(blurred_object_maps(shapes.masks)),
                           described=f"{n} held-out synthetic shapes (numbers {seed} to {seed + n - 1}) with exact masks")
    if dataset == "pairs":
        from ..data.synthetic import make_pairs

        side = model.patch_embed.img_size[0]
        pairs = make_pairs(n, size=side, seed=1000 + seed, with_importance=False)
        labels = torch.as_tensor(pairs.labels, dtype=torch.long)
        return BenchImages(preprocess(model, pairs.images, squash=True), [f"pairs/{1000 + seed}/{i}" for i in range(n)],
                           labels[:, 0], torch.as_tensor(pairs.masks[:, 0], dtype=torch.bool), None, labels[:, 1],
                           described=f"{n} synthetic pairs (two shapes of different classes each, seed {1000 + seed})")
    raise InvalidParameterError(f"unknown demo image set {dataset!r}; the demo has cifar10-test, shapes and pairs")


def _paper_images(dataset: str, model: nn.Module, n: int, seed: int) -> BenchImages:
    from ..imaging import preprocess

    if dataset == "imagenet-seg":
        from ..data.imagenet_seg import ImageNetSegmentation

        data = ImageNetSegmentation()
        count = min(n, len(data))
        batch = next(data.batches(count, model=model, indices=np.arange(count)))
        return BenchImages(batch.images.cpu(), [f"imagenet-seg/{i}" for i in range(count)], None,
                           torch.as_tensor(batch.masks).bool(), described=f"{count} images of ImageNet-Segmentation")
    if dataset in ("imagenet-val", "imagenet-x-val"):
        from ..data.imagenet import sample_x_val

        chosen = sample_x_val(n, seed)
        return BenchImages(preprocess(model, chosen.load_images(), squash=True).cpu(), [f"imagenet-val/{f}" for f in chosen.files],
                           torch.as_tensor(chosen.labels, dtype=torch.long),
                           described=f"{len(chosen)} ImageNet validation images (seed {seed})")
    if dataset == "imagenet-x-multi":
        from ..data.imagenet import select_x_multi

        chosen = select_x_multi(n, seed)
        return BenchImages(preprocess(model, chosen.load_images(), squash=True).cpu(), [f"imagenet-val/{f}" for f in chosen.files],
                           torch.as_tensor(chosen.classes, dtype=torch.long), None, None,
                           torch.as_tensor(chosen.other_classes, dtype=torch.long),
                           described=f"X_multi: {len(chosen)} validation images with two ReaL labels (seed {seed})")
    if dataset == "clickme-val":
        from ..experiments.vita_book import clickme_alignment_data

        data = clickme_alignment_data(model, n, seed=seed)
        return BenchImages(data.images.cpu(), [f"clickme-val/{i}" for i in range(len(data))], data.labels, None, data.human,
                           described=data.described)
    raise InvalidParameterError(
        f"unknown image set {dataset!r}; valid: cifar10-test, shapes, pairs (demo); imagenet-seg, imagenet-val, "
        "imagenet-x-val, imagenet-x-multi, clickme-val (paper)"
    )


def load_image_set(track: Track, model: nn.Module) -> BenchImages:
    """The track's images prepared for its model, cached per process."""
    key = (track.dataset, track.n_images, track.seed, track.model, track.weights)
    if key not in _IMAGE_SETS:
        loader = _demo_images if track.dataset in ("cifar10-test", "shapes", "pairs") else _paper_images
        _IMAGE_SETS[key] = loader(track.dataset, model, track.n_images, track.seed)
        while len(_IMAGE_SETS) > 4:
            _IMAGE_SETS.popitem(last=False)
    return _IMAGE_SETS[key]


# -- methods and units --------------------------------------------------------------------------------


def method_settings(method: str, given: Mapping | None = None) -> dict:
    """Every setting of `method`: its registry defaults (the paper's), updated by `given`."""
    parameters = method_parameters(get_method(method))
    unknown = sorted(set(given or {}) - set(parameters))
    if unknown:
        raise InvalidParameterError(f"{method} has no setting(s) {unknown}; its settings are {sorted(parameters) or 'none'}")
    return {name: p.default for name, p in parameters.items()} | dict(given or {})


def reads_layer_weights(method: str) -> bool:
    """Methods whose rules read the layers' weights: ViTA's astrocytic layer is outside what they model."""
    return bool(getattr(get_method(method), "reads_layer_weights", False))


def check_names(kind: str, given: Sequence[str] | str | None, valid: Sequence[str]) -> list[str]:
    if given is None or given == "all" or given == ["all"]:
        return list(valid)
    given = [name.strip() for name in (given.split(",") if isinstance(given, str) else given) if name.strip()]
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise InvalidParameterError(f"unknown {kind} {unknown}; valid {kind}: {', '.join(valid)} (or 'all')")
    return given


def plan(
    profile: Profile,
    ledger: Ledger,
    *,
    methods: Sequence[str] | str | None = None,
    protocols: Sequence[str] | str | None = None,
    astrocytes: Mapping | None = DEFAULT_ASTROCYTES,
    device: str = "cpu",
) -> list[Unit]:
    """Every unit of `profile`: each track's protocols x the methods (each with and without the astrocytic layer,
    when `astrocytes` gives its settings; not for the methods that read the layers' weights) x the shards.

    Loads each track's model (to hash its weights) and images (for their ids). Units are ordered so that the
    protocols of one method on one shard follow each other (they share its maps)."""
    methods = check_names("methods", methods, list_methods())
    protocols = check_names("protocols", protocols, list(PROTOCOLS))
    units = []
    for track in profile.tracks:
        chosen = [p for p in track.protocols if p in protocols]
        if not chosen:
            continue
        model = load_track_model(track.model, track.weights, device)
        images = load_image_set(track, model)
        weights = weights_sha256(model)
        for shard_index, ids in enumerate(shards(images.ids, profile.shard_size)):
            for method in methods:
                settings = method_settings(method, profile.method_settings.get(method))
                variants = ["off"] + ([dict(astrocytes)] if astrocytes and not reads_layer_weights(method) else [])
                for variant in variants:
                    for protocol in chosen:
                        limit = track.limits.get(protocol)
                        if limit is not None and shard_index * profile.shard_size >= limit:
                            continue
                        shard_ids = ids if limit is None else ids[: max(0, limit - shard_index * profile.shard_size)]
                        units.append(ledger.unit(
                            model=track.model, weights_sha256=weights, dataset=track.dataset, track_images=track.n_images,
                            track_seed=track.seed, images=shard_ids, shard=shard_index, method=method,
                            method_settings=settings, protocol=protocol,
                            protocol_settings=get_protocol(protocol, **profile.protocol_settings.get(protocol, {})).settings(),
                            astrocytes=variant,
                        ))
    return units


@dataclass(frozen=True)
class RunContext:
    """What every unit of one benchmark run shares: the tracks (for the weights files), batch size and device."""

    tracks: tuple[Track, ...]
    batch_size: int = 32
    device: str = "cpu"

    def track(self, spec: Mapping) -> Track:
        for track in self.tracks:
            if (track.model, track.dataset, track.n_images, track.seed) == (
                    spec["model"], spec["dataset"], spec["track_images"], spec["track_seed"]):
                return track
        raise InvalidParameterError(f"no track of this run has model {spec['model']} on {spec['dataset']}: the unit "
                                    "belongs to another profile; run it with that profile")


def unit_data(spec: Mapping, context: RunContext) -> UnitData:
    """The images, model and method of a unit (cached per process, so the protocols of one method and shard share
    its maps)."""
    key = (spec["model"], spec["weights_sha256"], spec["dataset"], tuple(spec["images"]), spec["method"],
           repr(sorted(spec["method_settings"].items())), repr(spec["astrocytes"]))
    if key in _UNIT_DATA:
        _UNIT_DATA.move_to_end(key)
        return _UNIT_DATA[key]
    track = context.track(spec)
    model = load_track_model(track.model, track.weights, context.device)
    if weights_sha256(model) != spec["weights_sha256"]:
        raise InvalidParameterError(
            f"{track.model}'s weights here differ from those the unit was planned with (sha256 "
            f"{spec['weights_sha256'][:12]}...): every machine of the run needs the same weights file"
        )
    images = load_image_set(track, model).take(spec["images"])
    astrocytes = None if spec["astrocytes"] == "off" else dict(spec["astrocytes"])
    data = UnitData(model=model, images=images.images.to(context.device), image_ids=list(images.ids), labels=images.labels,
                    masks=images.masks, human=images.human, other_classes=images.other_classes, method=spec["method"],
                    method_settings=dict(spec["method_settings"]), astrocytes=astrocytes, batch_size=context.batch_size)
    _UNIT_DATA[key] = data
    while len(_UNIT_DATA) > 2:
        _UNIT_DATA.popitem(last=False)
    return data


def run_unit(spec: dict, context: RunContext) -> pd.DataFrame:
    """One unit's per-image scores: columns image, metric, value (the ledger's work function)."""
    data = unit_data(spec, context)
    protocol = get_protocol(spec["protocol"], **spec["protocol_settings"])
    scores = protocol(data)
    rows = []
    for metric, values in scores.items():
        values = np.asarray(values, dtype=float).reshape(-1)
        ids = data.image_ids if len(values) == len(data.image_ids) else [""] * len(values)
        rows.append(pd.DataFrame({"image": ids, "metric": metric, "value": values}))
    return pd.concat(rows, ignore_index=True)


def higher_is_better(protocols: Sequence[str] | None = None) -> dict[str, bool]:
    """``"<protocol>/<metric>" -> True`` where a higher value is better, for the summary."""
    return {f"{name}/{metric}": better for name in (protocols or PROTOCOLS)
            for metric, better in PROTOCOLS[name].metrics.items()}
