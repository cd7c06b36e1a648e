"""Page plumbing of the ViTA chapter (notebooks/vita): the data, the scores, the paper's numbers, the tests.

The chapter compares the Grad-CAM and Grad-CAM++ pictures of a ViT (`xaikit.experiments.vita_maps`) with
human maps, with and without the astrocytic layer (`xaikit.astrocytes`), by Spearman, Dice and SSIM
(`xaikit.metrics`). The notebooks stay thin: what they share lives here.

- Data (`AlignmentData`): held-out synthetic shapes whose "human" maps are the generator's object masks
  blurred as ClickMe's heatmaps are (`shapes_alignment_data`, the demo), or ViTA's ClickMe subset
  (`clickme_alignment_data`, the paper profile).
- Scores: `cam_alignment` (the two CAM pictures of a model, optionally inside the astrocytic layer, scored by
  the three metrics), `method_alignment` (any ``xaikit.explain`` method).
- The grid search's selection, honest and as the paper did it (`selection_test`), Table 2's rows
  (`table2_rows`), and the paper's Table 2 (`paper_table2`; its Table 1 is `vita.paper_table1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..astrocytes import AstrocyteSettings, astrocytes
from ..errors import InvalidParameterError
from ..imaging import mean_std, upsample
from .vita import CAM_METHODS, METRICS, SETTING_NAMES

#: the paper's ViT: timm's name without a tag, which timm resolves to its default pretrained tag (`pretrained_name`)
PAPER_MODEL = "vit_base_patch16_224"
CAM_LABELS = {"gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++"}
METRIC_LABELS = {"spearman": "Spearman", "dice": "Dice", "ssim": "SSIM"}

#: the paper's Table 2: (cam, metric) -> ViT mean, median, SD; ViTA mean, median, SD; one-tailed rank-sum p
_PAPER_TABLE2 = [
    ("gradcam", "spearman", 0.370, 0.401, 0.233, 0.378, 0.401, 0.231, 1.9e-8),
    ("gradcam", "dice", 0.228, 0.220, 0.100, 0.231, 0.224, 0.101, 1.9e-14),
    ("gradcam", "ssim", 0.262, 0.225, 0.177, 0.436, 0.432, 0.186, 3.9e-290),
    ("gradcam_pp", "spearman", 0.134, 0.148, 0.311, 0.186, 0.200, 0.268, 9.2e-13),
    ("gradcam_pp", "dice", 0.143, 0.128, 0.104, 0.154, 0.142, 0.099, 6.4e-9),
    ("gradcam_pp", "ssim", 0.271, 0.183, 0.236, 0.334, 0.303, 0.233, 4.2e-28),
]
PAPER_IMAGES = 2982


def paper_table2() -> pd.DataFrame:
    """The paper's Table 2 (ViT against ViTA on its 2,982 ClickMe images), indexed by (cam, metric)."""
    columns = ["cam", "metric", "ViT mean", "ViT median", "ViT SD", "ViTA mean", "ViTA median", "ViTA SD", "rank-sum p"]
    return pd.DataFrame(_PAPER_TABLE2, columns=columns).set_index(["cam", "metric"])


def paper_unpaired_p() -> pd.DataFrame:
    """What an unpaired two-sample test gives on the paper's own Table 2 summaries: per (cam, metric), the normal
    approximation z = (ViTA mean - ViT mean) / sqrt(SD_ViT^2 / n + SD_ViTA^2 / n) with n = 2,982 images per group,
    its one-tailed p (an approximation of the rank-sum test from means and SDs), beside the paper's p."""
    from scipy.stats import norm

    table = paper_table2()
    z = (table["ViTA mean"] - table["ViT mean"]) / np.sqrt((table["ViT SD"] ** 2 + table["ViTA SD"] ** 2) / PAPER_IMAGES)
    return pd.DataFrame({"z": z, "approximate p": norm.sf(z), "paper p": table["rank-sum p"]})


def missing_from_grid(configs: Sequence[AstrocyteSettings]) -> tuple[dict[str, list[float]], int]:
    """The paper's Table 1 values that `configs` lack ({setting name: values}) and how many of its best
    settings (`vita.paper_table1` rows) `configs` therefore cannot choose."""
    from .vita import paper_table1

    table = paper_table1()
    present = {name: {float(getattr(c, name)) for c in configs} for name in SETTING_NAMES}
    missing = {name: sorted({float(v) for v in table[name]} - present[name]) for name in SETTING_NAMES}
    unreachable = sum(any(float(row[name]) not in present[name] for name in SETTING_NAMES) for _, row in table.iterrows())
    return {name: values for name, values in missing.items() if values}, unreachable


def undefined_counts(scores: Mapping, key: str) -> np.ndarray:
    """Per configuration of `scores` (`vita.load_scores`' {settings: {key: (n,)}}, the baseline None included),
    how many images have no score for `key` ("cam/metric"; NaN: a constant map's Spearman)."""
    return np.array([int(np.isnan(per_key[key]).sum()) for per_key in scores.values()])


def pretrained_name(name: str) -> str:
    """`name` with the pretrained tag timm resolves it to: "vit_base_patch16_224" -> "...augreg2_in21k_ft_in1k"."""
    import timm

    if "." in name:
        return name
    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        raise InvalidParameterError(f"timm knows no pretrained weights of {name!r}; give a timm model name such as {PAPER_MODEL!r}")
    return f"{name}.{config.tag}" if config.tag else name


def label_of(cam: str, metric: str) -> str:
    """"Grad-CAM, SSIM": a (cam, metric) pair as the tables print it."""
    return f"{CAM_LABELS[cam]}, {METRIC_LABELS[metric]}"


# -- data ------------------------------------------------------------------------------------------


@dataclass
class AlignmentData:
    """Images normalised for the model (n, 3, H, W), what they look like (n, H, W, 3) uint8, the human maps
    (n, S, S) float32, the class explained (n,) (the ground-truth label), and one sentence on the sample."""

    images: torch.Tensor
    pictures: np.ndarray
    human: torch.Tensor
    labels: torch.Tensor
    class_names: Sequence[str] | None
    described: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> "AlignmentData":
        chosen = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        described = self.described if len(chosen) == len(self) else f"{len(chosen)} of {self.described}"
        return AlignmentData(self.images[chosen], self.pictures[chosen.numpy()], self.human[chosen], self.labels[chosen],
                             self.class_names, described)


def shapes_alignment_data(model: torch.nn.Module, n: int, *, seed: int = 0) -> AlignmentData:
    """`n` held-out synthetic shapes (numbers `seed` to `seed + n - 1`) with "human" maps: each object mask
    blurred as Harmonization blurs a ClickMe heatmap, scaled to the image (`clickme.blurred_object_maps`)."""
    from ..data import load_examples
    from ..data.clickme import blurred_object_maps
    from ..imaging import preprocess, to_display

    shapes = load_examples("shapes", n, seed=seed)
    images = preprocess(model, shapes.images)
    return AlignmentData(images, to_display(model, images), torch.as_tensor(blurred_object_maps(shapes.masks)),
                         torch.as_tensor(shapes.labels, dtype=torch.long), list(shapes.class_names),
                         f"{n} held-out synthetic shapes (numbers {seed} to {seed + n - 1})" if n != 1 else
                         f"1 held-out synthetic shape (number {seed})")


def clickme_images(model: torch.nn.Module, pixels: np.ndarray) -> torch.Tensor:
    """ClickMe pictures (n, 256, 256, 3) uint8 -> (n, 3, H, W) normalised for `model`: Harmonization's bilinear
    resize of the whole picture to the model's input size (no crop, no antialiasing, as ``tf.image.resize``),
    so the image and its 224 x 224 human map cover the same scene."""
    height, width = model.patch_embed.img_size
    batch = torch.as_tensor(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).double() / 255
    batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    mean, std = mean_std(model)
    param = next(model.parameters())
    return ((batch - mean.double()) / std.double()).to(device=param.device, dtype=param.dtype)


def clickme_alignment_data(model: torch.nn.Module, n: int = 0, *, root=None, seed: int = 0) -> AlignmentData:
    """ViTA's ClickMe subset (`clickme.select_vita_subset`: up to 3 distinct images per class, `seed`) from the
    17 validation shards (found or downloaded by `clickme.clickme_val_files`, `root` a folder of shards), or a
    random `n` of it (seed `seed`; 0: all). Human maps by Harmonization's preprocessing (`clickme.human_map`)."""
    from ..data.clickme import clickme_val_files, load_clickme_val, read_records, select_vita_subset
    from ..imaging import to_display

    files = clickme_val_files(root)
    subset = select_vita_subset((record for path in files for record in read_records(path)), seed=seed)
    indices = subset.indices
    if n and n < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(indices, n, replace=False))
    samples = list(load_clickme_val(root, indices=indices))
    pixels = np.stack([sample.image for sample in samples])
    human = torch.as_tensor(np.stack([_human(sample.heatmap) for sample in samples]))
    images = clickme_images(model, pixels)
    per_class = ", ".join(f"{classes} classes with {count}" for count, classes in subset.images_per_class().items())
    described = (f"{len(samples)} ClickMe validation images" + (f" (a random {len(samples)} of" if len(samples) < len(subset) else " (")
                 + f" ViTA's subset of {len(subset)}: {per_class}; {subset.duplicates} duplicate records of {subset.records} "
                 f"left out; seed {seed})")
    return AlignmentData(images, to_display(model, images), human,
                         torch.as_tensor([sample.label for sample in samples], dtype=torch.long), None, described)


def _human(heatmap: np.ndarray) -> np.ndarray:
    from ..data.clickme import human_map

    return human_map(heatmap)


# -- scores ------------------------------------------------------------------------------------------


def alignment_scores(pictures: torch.Tensor, human: torch.Tensor, metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """{metric: (B,) float64} of maps at the human maps' size; a constant map's Spearman is NaN (kept)."""
    import warnings

    from .. import metrics as alignment

    scores = {}
    with warnings.catch_warnings():  # a constant map's NaN Spearman is counted where the scores are compared
        warnings.simplefilter("ignore", alignment.ConstantMapWarning)
        for metric in metrics:
            scores[metric] = getattr(alignment, metric)(pictures.float(), human.to(pictures.device).float()).cpu().numpy()
    return scores


def _settings(settings) -> AstrocyteSettings | None:
    if settings is None or isinstance(settings, AstrocyteSettings):
        return settings
    if isinstance(settings, Mapping):
        return AstrocyteSettings(**{name: settings[name] for name in SETTING_NAMES})
    raise InvalidParameterError(f"settings must be None (no astrocytes), an AstrocyteSettings or a dict of k, tau, phi, alpha, beta; "
                                f"got {settings!r}")


def cam_pictures(model: torch.nn.Module, data: AlignmentData, settings=None, *, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{"gradcam": (n, S, S), "gradcam_pp": ...}: pytorch-grad-cam's pictures of the labels' class at the human
    maps' size S, inside the astrocytic layer with `settings` (None: the plain ViT)."""
    from .vita_maps import cam_pictures as pictures_of

    settings = _settings(settings)
    size = int(data.human.shape[-1])
    parts: dict[str, list[torch.Tensor]] = {cam: [] for cam in CAM_METHODS}
    for start in range(0, len(data), batch_size):
        chunk = slice(start, start + batch_size)
        if settings is None:
            pictures = pictures_of(model, data.images[chunk], data.labels[chunk], size)
        else:
            with astrocytes(model, **{name: getattr(settings, name) for name in SETTING_NAMES}):
                pictures = pictures_of(model, data.images[chunk], data.labels[chunk], size)
        for cam in CAM_METHODS:
            parts[cam].append(pictures[cam].detach().cpu())
    return {cam: torch.cat(values) for cam, values in parts.items()}


def cam_alignment(model: torch.nn.Module, data: AlignmentData, settings=None, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """{"cam/metric": (n,)} of the two CAM pictures (`cam_pictures`) against the human maps, the grid search's keys."""
    pictures = cam_pictures(model, data, settings, batch_size=batch_size)
    return {f"{cam}/{metric}": values for cam in CAM_METHODS
            for metric, values in alignment_scores(pictures[cam], data.human).items()}


def method_alignment(model: torch.nn.Module, data: AlignmentData, method: str, settings=None, *, batch_size: int = 64,
                     **params) -> dict[str, np.ndarray]:
    """{metric: (n,)} of any ``xaikit.explain`` method's maps of the labels' class (class-agnostic methods get
    no target), resized bilinearly to the human maps' size and kept signed, against the human maps, inside
    the astrocytic layer with `settings` (None: the plain ViT)."""
    from .. import explain
    from ..methods import method_facts

    settings = _settings(settings)
    targets = data.labels if bool(method_facts().loc[method, "class_specific"]) else None
    size = int(data.human.shape[-1])

    def run():
        return explain(model, data.images, method, targets=targets, batch_size=batch_size, **params)

    if settings is None:
        maps = run()
    else:
        with astrocytes(model, **{name: getattr(settings, name) for name in SETTING_NAMES}):
            maps = run()
    return alignment_scores(upsample(maps.detach().float().cpu(), size), data.human)


# -- the grid search's selection ---------------------------------------------------------------------


def split_halves(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the images 0..n-1 (sorted; the first takes the odd one), drawn with `seed`."""
    if n < 4:
        raise InvalidParameterError(f"the held-out test needs at least 4 images (2 per half); got {n}")
    order = np.random.default_rng(seed).permutation(n)
    first = (n + 1) // 2
    return np.sort(order[:first]), np.sort(order[first:])


def best_settings(scores: Mapping, key: str, indices) -> AstrocyteSettings:
    """The configuration with the highest mean of `key` ("cam/metric") over the images `indices` (NaN left out),
    ties going to the first in grid order. `scores`: `vita.load_scores`' {settings: {key: (n,)}}; the baseline
    (None) is not a candidate."""
    candidates = sorted((s for s in scores if s is not None), key=lambda s: tuple(getattr(s, name) for name in SETTING_NAMES))
    if not candidates:
        raise InvalidParameterError("no configuration's scores: run the grid search first")
    means = [np.nanmean(scores[s][key][indices]) if np.isfinite(scores[s][key][indices]).any() else -np.inf for s in candidates]
    return candidates[int(np.argmax(means))]


def settings_text(settings: AstrocyteSettings) -> str:
    """"k = 6, τ = 3, φ = −0.5, α = 1.5, β = 0.05"."""
    def number(value):
        return f"{value:g}".replace("-", "−")

    return (f"k = {settings.k}, τ = {number(settings.tau)}, φ = {number(settings.phi)}, α = {number(settings.alpha)}, "
            f"β = {number(settings.beta)}")


def selection_test(scores: Mapping, *, seed: int = 0, n_resamples: int = 2000) -> tuple[pd.DataFrame, dict]:
    """How much choosing the best configuration on the images it is then scored on inflates its gain.

    The images are split in two halves (`split_halves`): a selection half S and a held-out half H. Per
    "cam/metric": the best configuration chosen on S and scored on H (the honest gain over the baseline on
    H), and the best chosen on H itself and scored on H (the paper's way: selected and reported on the same
    images). Both are scored on the same images H, so their difference, the inflation, is paired (>= 0 for
    the means by construction). Returns one row per "cam/metric" and the verdicts
    {"cam/metric": {"held-out": gain verdict, "in-sample": gain verdict, "inflation": in-sample - held-out}}.
    """
    from .. import verdicts

    baseline = scores[None]
    n = len(next(iter(baseline.values())))
    selection, held_out = split_halves(n, seed=seed)
    rows, parts = [], {}
    for key in baseline:
        cam, metric = key.split("/")
        chosen = best_settings(scores, key, selection)
        in_sample = best_settings(scores, key, held_out)
        before = baseline[key][held_out]
        honest, fitted = scores[chosen][key][held_out], scores[in_sample][key][held_out]
        common = dict(higher_is_better=True, score=METRIC_LABELS[metric], n_resamples=n_resamples, nan="omit")
        found = {
            "held-out": verdicts.improvement_verdict(before, honest, before_label="ViT", after_label="ViTA", **common),
            "in-sample": verdicts.improvement_verdict(before, fitted, before_label="ViT", after_label="ViTA", **common),
            "inflation": verdicts.improvement_verdict(honest, fitted, before_label="selected on the other half",
                                                      after_label="selected on these images", **common),
        }
        parts[key] = found
        row = {"cam": cam, "metric": metric, "selected on the other half": settings_text(chosen),
               "selected on these images": settings_text(in_sample)}
        for name, verdict in found.items():
            row.update({name: verdict.difference, f"{name} low": verdict.difference_low, f"{name} high": verdict.difference_high})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(selection=len(selection), held_out=len(held_out))
    return frame, parts


# -- Table 2 -------------------------------------------------------------------------------------------


def table2_rows(baseline: Mapping[str, np.ndarray], treated: Mapping[str, Mapping[str, np.ndarray]], *,
                n_resamples: int = 2000) -> tuple[pd.DataFrame, dict]:
    """Table 2 of the demo: per "cam/metric", ViT (`baseline` {"cam/metric": (n,)}) against ViTA (`treated`
    {"cam/metric": that row's scores (n,)}, each row with its own configuration): mean, median, SD of each,
    the paper's one-tailed rank-sum p, the paired signed-rank p, the rank-biserial effect, the paired mean
    gain with its 95 % bootstrap interval, and the verdict on "ViTA improves it" (`improvement_verdict`).
    NaN scores (a constant map's Spearman) are left out of both, counted in "undefined"."""
    from .. import verdicts
    from ..stats import compare_scores

    rows, found = [], {}
    for key, before in baseline.items():
        cam, metric = key.split("/")
        after = treated[key]
        summary = compare_scores(before, after, nan="omit")
        verdict = verdicts.improvement_verdict(before, after, higher_is_better=True, score=METRIC_LABELS[metric],
                                               before_label="ViT", after_label="ViTA", n_resamples=n_resamples, nan="omit")
        found[key] = verdict
        rows.append({"cam": cam, "metric": metric, "ViT mean": summary.baseline_mean, "ViT median": summary.baseline_median,
                     "ViT SD": summary.baseline_sd, "ViTA mean": summary.treated_mean, "ViTA median": summary.treated_median,
                     "ViTA SD": summary.treated_sd, "rank-sum p": summary.rank_sum_p, "signed-rank p": summary.signed_rank_p,
                     "rank-biserial": summary.rank_biserial, "gain": verdict.difference, "gain low": verdict.difference_low,
                     "gain high": verdict.difference_high, "verdict": verdict.verdict, "images": summary.n,
                     "undefined": summary.n_omitted})
    return pd.DataFrame(rows), found


def mean_intervals(scores: Mapping[str, np.ndarray], *, n_resamples: int = 2000) -> pd.DataFrame:
    """Each "cam/metric" column's mean with its 95 % bootstrap interval (NaN left out): cam, metric, mean, low, high."""
    from ..stats import bootstrap_ci

    rows = []
    for key, values in scores.items():
        cam, metric = key.split("/")
        interval = bootstrap_ci(values, n_resamples=n_resamples, nan="omit")
        rows.append({"cam": cam, "metric": metric, "mean": interval.estimate, "low": interval.low, "high": interval.high})
    return pd.DataFrame(rows)


def error_bar_figure(intervals: pd.DataFrame):
    """The paper's Fig. 4 as this chapter draws it: per metric a panel, per CAM method ViT and ViTA side by
    side, the mean with its 95 % bootstrap interval. `intervals`: rows with cam, metric, model ("ViT",
    "ViTA"), mean, low, high."""
    import matplotlib.pyplot as plt

    from ..viz import BOOK_WIDTH_IN, fit_to_book

    metrics = list(dict.fromkeys(intervals["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(BOOK_WIDTH_IN, 2.8), layout="constrained", squeeze=False)
    colours = {"ViT": "#0072B2", "ViTA": "#E69F00"}  # Okabe-Ito: colour-blind safe
    for ax, metric in zip(axes[0], metrics):
        part = intervals[intervals["metric"] == metric]
        cams = list(dict.fromkeys(part["cam"]))
        for offset, model in ((-0.15, "ViT"), (0.15, "ViTA")):
            rows = part[part["model"] == model].set_index("cam").loc[cams]
            ax.errorbar(np.arange(len(cams)) + offset, rows["mean"], yerr=[rows["mean"] - rows["low"], rows["high"] - rows["mean"]],
                        fmt="o", capsize=3, color=colours[model], label=model)
        ax.set_xticks(range(len(cams)), [CAM_LABELS[c] for c in cams])
        ax.set_xlim(-0.6, len(cams) - 0.4)
        ax.set_title(METRIC_LABELS[metric])
    axes[0][0].set_ylabel("mean over images")
    axes[0][-1].legend(loc="best")
    return fit_to_book(fig)


def trace_figure(trace, image: int = 0, *, units: int = 48):
    """What the astrocytic layer did to one image: its activity counters A and its modulation M (log10) for
    `units` output units over the iterations, the units ordered by the class token's output at t = 0."""
    import matplotlib.pyplot as plt

    from ..viz import BOOK_WIDTH_IN, fit_to_book

    order = torch.argsort(trace.class_output[0, image], descending=True)
    shown = order[torch.linspace(0, len(order) - 1, min(units, len(order))).round().long()]
    activity = trace.activity[:, image, shown].T.numpy()
    modulation = torch.log10(trace.modulation[:, image, shown]).T.numpy()
    k = activity.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(BOOK_WIDTH_IN, 3.2), layout="constrained")
    extent = (0.5, k + 0.5, len(shown) - 0.5, -0.5)
    limit = float(np.abs(activity).max()) or 1.0
    first = axes[0].imshow(activity, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent, interpolation="nearest")
    fig.colorbar(first, ax=axes[0], label="A (activity counter)")
    span = float(np.abs(modulation).max()) or 1.0
    second = axes[1].imshow(modulation, aspect="auto", cmap="RdBu_r", vmin=-span, vmax=span, extent=extent, interpolation="nearest")
    fig.colorbar(second, ax=axes[1], label="log10 M (modulation)")
    for ax, title in zip(axes, ("activity counters", "modulation")):
        ax.set_xlabel("iteration t")
        ax.set_xticks(range(1, k + 1))
        ax.set_title(title)
        ax.grid(False)
    axes[0].set_ylabel("output unit (by class-token output)")
    axes[1].set_yticks([])
    return fit_to_book(fig)


def alignment_data(model: torch.nn.Module, data: str, n: int, *, seed: int = 0, root=None) -> AlignmentData:
    """The page's images: "shapes" (`shapes_alignment_data`, numbers from `seed`) or "clickme"
    (`clickme_alignment_data`, `root` a folder of shards or None)."""
    if data == "shapes":
        return shapes_alignment_data(model, n, seed=seed)
    if data == "clickme":
        return clickme_alignment_data(model, n, root=root or None, seed=seed)
    raise InvalidParameterError(f"data must be 'shapes' (the demo) or 'clickme' (the paper); got {data!r}")


def examples_figure(pictures: np.ndarray, human: torch.Tensor, maps: Mapping[str, torch.Tensor],
                    scores: Mapping[str, np.ndarray], titles: Sequence[str] | None = None, *, overlay: float = 0.6):
    """The paper's Fig. 3 as this chapter draws it: per image a row, the image, the human map and each map of
    `maps` (label -> (B, H, W), at the image's resolution) blended over the image, the score of `scores`
    (label -> (B,), e.g. SSIM) above each map. Maps in [0, 1] (the CAM pictures are min-max scaled)."""
    import matplotlib.pyplot as plt

    from ..viz import BOOK_WIDTH_IN, FONT_PT, TICK_PT, fit_to_book

    count, labels = len(pictures), list(maps)
    columns = 2 + len(labels)
    cell = min(1.3, BOOK_WIDTH_IN / columns)
    fig, axes = plt.subplots(count, columns, figsize=(cell * columns, (cell + 0.45) * count), layout="constrained", squeeze=False)
    size = tuple(pictures.shape[1:3])
    shown_human = upsample(torch.as_tensor(human).float(), size).numpy()
    for row in range(count):
        grey = pictures[row].mean(-1)
        axes[row, 0].imshow(pictures[row])
        axes[row, 0].set_title(titles[row] if titles is not None else "image", fontsize=TICK_PT)
        panels = [("human map", shown_human[row], None)] + [
            (label, upsample(torch.as_tensor(maps[label][row:row + 1]).float(), size)[0].numpy(), scores[label][row]) for label in labels]
        for column, (label, values, score) in enumerate(panels, start=1):
            ax = axes[row, column]
            ax.imshow(grey, cmap="gray")
            span = float(values.max() - values.min()) or 1.0
            ax.imshow((values - values.min()) / span, cmap="inferno", vmin=0, vmax=1, alpha=overlay, interpolation="bilinear")
            heading = label if row == 0 else ""
            if score is not None:
                heading = f"{heading}\nSSIM {score:.2f}" if heading else f"SSIM {score:.2f}"
            ax.set_title(heading, fontsize=TICK_PT if row else FONT_PT - 1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return fit_to_book(fig)


#: the grids of the pages: the paper's (with alpha = 1.25, 540 settings), the demo's reduced one, the smoke test's
def book_grid(name: str) -> list[AstrocyteSettings]:
    """"paper": `vita.vita_grid()` (540); "demo": k in {4, 6, 8}, tau in {1, 3}, phi in {-0.5, 0, 0.5}, alpha in
    {1.05, 1.5}, beta in {0.005, 0.25} (72, every axis's extremes and the middle k and phi); "smoke": 2."""
    from .vita import vita_grid

    grids = {
        "paper": {},
        "demo": dict(k=[4, 6, 8], tau=[1, 3], phi=[-0.5, 0.0, 0.5], alpha=[1.05, 1.5], beta=[0.005, 0.25]),
        "smoke": dict(k=[4], tau=[1, 3], phi=[0.0], alpha=[1.5], beta=[0.05]),
    }
    if name not in grids:
        raise InvalidParameterError(f"grid must be one of {', '.join(grids)}; got {name!r}")
    return vita_grid(**grids[name])


def interval_text(verdict) -> str:
    """A verdict's change with its 95 % interval, with enough digits that each bound's side of 0 shows."""
    from ..stats import format_interval
    from ..verdicts import interval_digits

    return format_interval(verdict.difference, verdict.difference_low, verdict.difference_high,
                           max(2, interval_digits((verdict.difference_low, verdict.difference_high))))


def _conclusion(explained: int, total: int, every: str, some: str, none: str) -> str:
    """A tested reason's conclusion: `every` when the test explains all `total` failing rows, `some` (its
    ``{count}`` filled in) when it explains part of them, `none` when it explains none."""
    if explained == total:
        return every
    return some.format(count=explained) if explained else none


def selection_reason(found: Mapping[str, Mapping], keys: Sequence[str], *, numbers: bool = True) -> str:
    """The tested reason of a Table 1 verdict that does not hold, built from `selection_test`'s verdicts `found`
    for the (cam/metric) `keys` whose held-out gain does not hold; `numbers=False` leaves out the intervals
    (for a page that shows them in a table). The selection "explains" a gain only where the inflation itself
    is beyond the noise; where only the in-sample gain holds it "may explain" it."""
    from ..report import HOLDS

    if not keys:
        raise InvalidParameterError("selection_reason needs the keys whose held-out gain does not hold")
    listed = "; ".join(f"{label_of(*key.split('/'))}: {interval_text(found[key]['held-out'])} held out, "
                       f"{interval_text(found[key]['in-sample'])} selected on the scored images" for key in keys)
    fitted = [key for key in keys if found[key]["in-sample"].verdict == HOLDS]
    explained = sum(found[key]["inflation"].verdict == HOLDS for key in fitted)
    if not fitted:
        conclusion = ("even selected on the scored images these gains do not hold, so the selection does not explain "
                      "them; the reason is unknown")
    else:
        parts = []
        if explained:
            parts.append(f"for {explained} the inflation itself is beyond the noise, so the selection, not the "
                         "astrocytes, explains that gain")
        if len(fitted) > explained:
            parts.append(f"for {len(fitted) - explained} the inflation is within the noise, so the selection may explain "
                         "the gain")
        conclusion = (f"selected on the images it is scored on, as the paper did, {len(fitted)} of the {len(keys)} would "
                      "count as a gain; " + "; ".join(parts))
        if len(fitted) < len(keys):
            conclusion += "; for the others the reason is unknown"
    test = ("Tested whether choosing the setting on the images it is scored on (the paper's way) makes the gain: the best "
            "setting chosen on one half of the images and scored on the other, against the best chosen on that other half "
            "itself")
    return f"{test}; gains over the plain ViT — {listed}: {conclusion}." if numbers else f"{test}: {conclusion}."


def own_settings_reason(paper_parts: Mapping, own_parts: Mapping, keys: Sequence[str]) -> str:
    """The tested reason of a Table 2 verdict that does not hold: on the held-out half, the paper's Table 1
    settings against the demo's own best settings (selected on the other half), for the failing `keys`."""
    from ..report import HOLDS

    if not keys:
        raise InvalidParameterError("own_settings_reason needs the keys whose gain does not hold")
    listed = "; ".join(f"{label_of(*key.split('/'))}: the paper's setting {interval_text(paper_parts[key])}, the demo's own "
                       f"{interval_text(own_parts[key])}" for key in keys)
    rescued = sum(own_parts[key].verdict == HOLDS for key in keys)
    conclusion = _conclusion(
        rescued, len(keys),
        "with settings selected on the demo's own images every one of these gains holds, so the paper's settings, tuned "
        "on ViT-B and ClickMe, do not carry over to this model",
        "settings selected on the demo's own images make {count} of them hold, so for those the paper's settings do not "
        "carry over; for the others the reason is unknown",
        "settings selected on the demo's own images do not make them hold either, so the choice of setting does not "
        "explain it; the reason is unknown")
    return ("Tested whether the paper's settings, tuned for ViT-B on ClickMe, suit the demo's model: on a held-out half of "
            f"the images, the gain over the plain ViT — {listed}: {conclusion}.")
