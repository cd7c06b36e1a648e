"""The CDAM chapter: the methods its tables compare, and the paper's numbers (Brocki, Binda, Chung).

Paper numbers are copied from the paper's Tables 1-3 and S1 (reference-spec §2.11); ours are
computed by the notebooks. Method names are the paper's row labels; each maps to an xaikit
method and the settings the authors' code uses (§2.5-2.8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import StringIO

import pandas as pd
import torch

from ..errors import InvalidParameterError
from ..metrics import compactness
from ..protocols import BoxSensitivity, BoxSensitivityResult, ClassDiscrimination, ClassDiscriminationResult, Fidelity, FidelityResult

#: paper row label -> (xaikit method, settings). "Rel. Prop." is Chefer's gradient-weighted
#: relevance propagation (GAE, ICCV'21) as the CDAM authors run it; "Attention map" the last
#: block's class-token attention. "Grad-CAM++", "Token ablation" and "Random" are not rows of the
#: paper: the first two are the issue's extra baselines, Random the floor every method should clear.
METHODS: dict[str, tuple[str, dict]] = {
    "CDAM": ("cdam", {}),
    "Integrated CDAM": ("integrated_cdam", {}),
    "Smooth CDAM": ("smooth_cdam", {}),
    "Rel. Prop.": ("gae", {}),
    "Partial LRP": ("partial_lrp", {}),
    "Attention map": ("raw_attention", {}),
    "SmoothGrad": ("smoothgrad", {}),
    "IntGrad": ("integrated_gradients", {}),
    "GradCAM": ("gradcam", {}),
    "Input×Grad": ("input_x_gradient", {}),
    "Grad-CAM++": ("gradcam_pp", {}),
    "Token ablation": ("token_ablation", {}),
    "Random": ("random", {}),
}

#: Whether a larger value is better, per metric of Tables 1-3 and S1.
HIGHER_IS_BETTER = {
    "A_MIF": False,
    "A_LIF": True,
    "A_LIF-MIF": True,
    "A_box": True,
    "A_Δ(LIF-MIF)": True,
    "A_Δbox": True,
    "compactness": True,
}

# Table 1 (correctness on X_multi) and Table S1 (X_val): areas on the paper's scale (x in percent
# of pixels, raw logit of the target class on y; A_box over the box sizes).
_CORRECTNESS = """method,data,A_MIF,A_LIF,A_LIF-MIF,A_box
CDAM,X_multi,404,1038,632,12.2
Integrated CDAM,X_multi,375,1045,669,13.0
Smooth CDAM,X_multi,282,1110,827,12.4
Rel. Prop.,X_multi,315,957,643,10.0
Partial LRP,X_multi,489,837,348,4.5
Attention map,X_multi,452,846,393,4.8
SmoothGrad,X_multi,534,529,-4,0.4
IntGrad,X_multi,226,802,574,7.6
GradCAM,X_multi,300,944,643,8.6
Input×Grad,X_multi,273,713,439,3.5
CDAM,X_val,801,1423,623,11.3
Integrated CDAM,X_val,696,1459,753,12.9
Smooth CDAM,X_val,591,1482,890,11.9
Rel. Prop.,X_val,475,1432,957,12.7
Partial LRP,X_val,654,1329,674,8.4
Attention map,X_val,580,1352,771,9.1
SmoothGrad,X_val,796,786,-10,0.2
IntGrad,X_val,411,1055,644,8.3
GradCAM,X_val,515,1249,733,9.0
Input×Grad,X_val,470,935,465,3.1
"""

# Table 2 (class discrimination) and Table 3 (compactness), both on X_multi.
_DISCRIMINATION_COMPACTNESS = """method,A_Δ(LIF-MIF),A_Δbox,compactness
CDAM,739,14.6,0.88
Integrated CDAM,708,14.8,0.88
Smooth CDAM,823,13.4,0.75
Rel. Prop.,293,6.6,0.48
Partial LRP,3,0.0,0.74
Attention map,0,-0.2,0.56
SmoothGrad,-11,-0.1,0.80
IntGrad,540,7.6,0.84
GradCAM,681,9.4,0.54
Input×Grad,433,3.4,0.88
"""


def _read(text: str, index) -> pd.DataFrame:
    return pd.read_csv(StringIO(text)).set_index(index)


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1, correctness on X_multi (DINO ViT-S/8), indexed by method."""
    return _read(_CORRECTNESS, "method").query("data == 'X_multi'").drop(columns="data")


def paper_table_s1() -> pd.DataFrame:
    """The paper's Table S1, correctness on X_val (DINO ViT-S/8), indexed by method."""
    return _read(_CORRECTNESS, "method").query("data == 'X_val'").drop(columns="data")


def paper_table2() -> pd.DataFrame:
    """The paper's Table 2, class discrimination on X_multi, indexed by method."""
    return _read(_DISCRIMINATION_COMPACTNESS, "method")[["A_Δ(LIF-MIF)", "A_Δbox"]]


def paper_table3() -> pd.DataFrame:
    """The paper's Table 3, compactness on X_multi (fraction of tokens below 5 % of the map's maximum)."""
    return _read(_DISCRIMINATION_COMPACTNESS, "method")[["compactness"]]


#: The paper's LIDC cohort (reference-spec §2.10): nodules with 3-4 annotations, median malignancy != 3.
PAPER_LIDC_COUNTS = {"benign": 443, "malignant": 411}


# -- running the benchmarks ------------------------------------------------------------------------
#: Settings of the sampling methods in the demo profile (the paper's n = 50 in the paper profile).
def sampling_settings(n: int) -> dict[str, dict]:
    """Per-row settings giving the Smooth/Integrated CDAM and SmoothGrad/IntGrad rows `n` samples or steps."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidParameterError(f"the number of samples/steps must be an int >= 2; got {n!r}")
    return {"Integrated CDAM": {"n_steps": n}, "Smooth CDAM": {"n_samples": n},
            "SmoothGrad": {"n_samples": n}, "IntGrad": {"n_steps": n}}


def with_settings(methods: Mapping[str, tuple[str, dict]], settings: Mapping[str, dict]) -> dict[str, tuple[str, dict]]:
    """`methods` with each row's settings updated by ``settings[row]`` (rows not in `methods` are ignored)."""
    return {label: (method, {**params, **settings.get(label, {})}) for label, (method, params) in methods.items()}


def explain_classes(model, images: torch.Tensor, classes: Mapping[str, torch.Tensor], methods=None, *, batch_size: int = 64,
                    seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
    """Maps keyed (row, name) of every method for every named set of classes (`explain_maps`), with
    torch's global RNG seeded first so the noise of SmoothGrad/Smooth CDAM and Random repeats."""
    from .perturbation_tables import explain_maps

    torch.manual_seed(seed)
    return explain_maps(model, images, methods or METHODS, classes, batch_size=batch_size)


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    sem = float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), sem


@dataclass
class CorrectnessRun:
    """Fidelity and box sensitivity of every method's maps of one set of classes (the paper's Table 1 / S1)."""

    fidelity: dict[str, FidelityResult]
    box: dict[str, BoxSensitivityResult]

    def table(self) -> pd.DataFrame:
        """Indexed by method: A_MIF, A_LIF, A_LIF-MIF, A_box and the standard error over images of each."""
        rows = {}
        for label, fid in self.fidelity.items():
            row = {}
            for column, per_image in (("A_MIF", fid.a_mif_per_image), ("A_LIF", fid.a_lif_per_image),
                                      ("A_LIF-MIF", fid.a_lif_minus_mif_per_image), ("A_box", self.box[label].a_box_per_image)):
                row[column], row[f"{column}_sem"] = _mean_sem(per_image)
            rows[label] = row
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")

    def curves(self) -> pd.DataFrame:
        """Mean curves: MIF/LIF logits per percent of pixels replaced, and f_box per box size."""
        rows = []
        for label, fid in self.fidelity.items():
            for order, curve in (("MIF", fid.mif_curve), ("LIF", fid.lif_curve)):
                rows += [{"method": label, "curve": order, "x": float(x), "value": float(y)} for x, y in zip(fid.x, curve)]
            box = self.box[label]
            rows += [{"method": label, "curve": "box", "x": float(x), "value": float(y)} for x, y in zip(box.x, box.f_box)]
        return pd.DataFrame(rows)


def correctness(model, images: torch.Tensor, classes: torch.Tensor, maps: Mapping[str, torch.Tensor], *,
                fidelity: Mapping | None = None, box: Mapping | None = None, batch_size: int = 256) -> CorrectnessRun:
    """Run `Fidelity` and `BoxSensitivity` (settings in `fidelity` / `box`) on every row's maps, all on one
    engine so the clean images and the map-independent boxes are forwarded once."""
    fid = Fidelity(model, batch_size=batch_size, **(fidelity or {}))
    boxes = BoxSensitivity(model, **{**fid._settings(), **(box or {})})
    classes = torch.as_tensor(classes).long()
    return CorrectnessRun(
        fidelity={label: fid(images, classes, row_maps.to(images.device)) for label, row_maps in maps.items()},
        box={label: boxes(images, classes, row_maps.to(images.device)) for label, row_maps in maps.items()},
    )


def discrimination(model, images: torch.Tensor, classes: torch.Tensor, other_classes: torch.Tensor,
                   maps: Mapping[str, torch.Tensor], other_maps: Mapping[str, torch.Tensor], *,
                   settings: Mapping | None = None, batch_size: int = 256) -> dict[str, ClassDiscriminationResult]:
    """`ClassDiscrimination` of every row: its maps of `classes` (c) against its maps of `other_classes` (c')."""
    protocol = ClassDiscrimination(model, batch_size=batch_size, **(settings or {}))
    return {label: protocol(images, classes, other_classes, maps[label].to(images.device), other_maps[label].to(images.device))
            for label in maps}


def discrimination_table(results: Mapping[str, ClassDiscriminationResult]) -> pd.DataFrame:
    """The paper's Table 2: indexed by method, A_Δ(LIF-MIF) and A_Δbox with their standard errors over images."""
    rows = {}
    for label, result in results.items():
        row = {}
        for column, per_image in (("A_Δ(LIF-MIF)", result.a_delta_lif_minus_mif_per_image), ("A_Δbox", result.a_delta_box_per_image)):
            row[column], row[f"{column}_sem"] = _mean_sem(per_image)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def compactness_table(maps: Mapping[str, torch.Tensor], threshold: float = 0.05) -> pd.DataFrame:
    """The paper's Table 3: indexed by method, the mean compactness of the raw maps and its standard error."""
    rows = {}
    for label, row_maps in maps.items():
        mean, sem = _mean_sem(compactness(row_maps, threshold))
        rows[label] = {"compactness": mean, "compactness_sem": sem}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


# -- per-image scores, intervals and verdicts ----------------------------------------------------------------
#: Rows that are floors (maps that know nothing about the model), never a method's strongest baseline.
FLOORS = ("Random", "Centre prior")
#: Floor rows this chapter adds beside the paper's methods (label -> registry name, settings).
FLOOR_METHODS: dict[str, tuple[str, dict]] = {"Random": ("random", {}), "Centre prior": ("centre_prior", {})}


def _frame(per_image: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Rows images, columns the table's rows (labels), float64."""
    return pd.DataFrame({label: torch.as_tensor(values).double().cpu().numpy() for label, values in per_image.items()})


def correctness_scores(run: CorrectnessRun) -> dict[str, pd.DataFrame]:
    """Per-image scores of the paper's Table 1 / S1: metric -> DataFrame (rows images, columns the methods' labels)."""
    fid = run.fidelity
    return {
        "A_MIF": _frame({label: result.a_mif_per_image for label, result in fid.items()}),
        "A_LIF": _frame({label: result.a_lif_per_image for label, result in fid.items()}),
        "A_LIF-MIF": _frame({label: result.a_lif_minus_mif_per_image for label, result in fid.items()}),
        "A_box": _frame({label: result.a_box_per_image for label, result in run.box.items()}),
    }


def discrimination_scores(results: Mapping[str, ClassDiscriminationResult]) -> dict[str, pd.DataFrame]:
    """Per-image scores of the paper's Table 2 (metric -> images x labels), and those of the paper's Table 1 for
    the class c (``A_LIF-MIF``, ``A_box``): the maps of c read against the logit of c are that table's test on
    X_multi."""
    return {
        "A_Δ(LIF-MIF)": _frame({label: r.a_delta_lif_minus_mif_per_image for label, r in results.items()}),
        "A_Δbox": _frame({label: r.a_delta_box_per_image for label, r in results.items()}),
        "A_LIF-MIF": _frame({label: r.fidelity.a_lif_minus_mif_per_image for label, r in results.items()}),
        "A_box": _frame({label: r.box.a_box_per_image for label, r in results.items()}),
    }


def compactness_scores(maps: Mapping[str, torch.Tensor], threshold: float = 0.05) -> dict[str, pd.DataFrame]:
    """Per-image compactness of the paper's Table 3 (``{"compactness": images x labels}``), as `compactness_table`."""
    return {"compactness": _frame({label: compactness(row_maps, threshold) for label, row_maps in maps.items()})}


def registry_name(label: str) -> str:
    """The name ``xaikit.explain`` accepts for a row label of this chapter's tables ("Rel. Prop." -> "gae")."""
    known = {**METHODS, **FLOOR_METHODS}
    if label in known:
        return known[label][0]
    if label.startswith("IntGrad") or label.startswith("Input×Grad"):  # the token-pooled variants of the experiment
        return known[label.split(" (")[0]][0]
    raise InvalidParameterError(f"{label!r} is not a row of the CDAM tables; known: {', '.join(known)}")


def interval_table(scores: Mapping[str, pd.DataFrame], *, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (metric, method): the mean and the rank (1 = best) with 95 % bootstrap intervals over images.

    `scores`: metric -> DataFrame (rows images, columns row labels), every column scored on the same images;
    the direction of each metric is `HIGHER_IS_BETTER`. Columns: metric, method (the registry name), label,
    mean, mean_low, mean_high, rank, rank_low, rank_high, n (images). Resampling is joint over the methods
    (`xaikit.stats.rank_intervals`), with the same `seed` for every metric.
    """
    from ..stats import rank_intervals

    parts = []
    for metric, frame in scores.items():
        if metric not in HIGHER_IS_BETTER:
            raise InvalidParameterError(f"say whether higher is better for {metric!r}: add it to HIGHER_IS_BETTER")
        league = rank_intervals(frame, higher_is_better=HIGHER_IS_BETTER[metric], n_resamples=n_resamples, seed=seed)
        league = league.rename(columns={"method": "label"})
        league.insert(0, "metric", metric)
        league.insert(1, "method", [registry_name(label) for label in league["label"]])
        league["n"] = league.attrs["n"]
        parts.append(league)
    return pd.concat(parts, ignore_index=True)


def shown_table(table: pd.DataFrame, paper: pd.DataFrame | None = None, digits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """`interval_table` for reading, indexed by label: per metric a column "<metric>" of "mean [low, high]" and
    "<metric> rank" of "rank [low–high]"; with `paper` (indexed by label, the paper's numbers) also "paper" and
    "paper rank" (ranked among the rows the paper has). One level of column names (a Markdown table)."""
    from ..stats import format_interval

    columns = {}
    for metric, rows in table.groupby("metric", sort=False):
        rows = rows.set_index("label")
        places = (digits or {}).get(metric, 2 if metric == "compactness" else 1)
        columns[metric] = [format_interval(m, lo, hi, places) for m, lo, hi in
                                     zip(rows["mean"], rows.mean_low, rows.mean_high)]
        columns[f"{metric} rank"] = [rank_text(r, lo, hi) for r, lo, hi in zip(rows["rank"], rows.rank_low, rows.rank_high)]
        if paper is not None and metric in paper.columns:
            values = paper[metric].reindex(rows.index)
            ranks = values.rank(ascending=not HIGHER_IS_BETTER[metric], method="min")
            columns[f"{metric} paper"] = [f"{v:g}" if pd.notna(v) else "" for v in values]
            columns[f"{metric} paper rank"] = [f"{int(r)}" if pd.notna(r) else "" for r in ranks]
        index = rows.index
    return pd.DataFrame(columns, index=pd.Index(index, name="method"))


def rank_text(rank: float, low: float, high: float) -> str:
    """A rank with its interval, "3 [1–6]"; a rank the resampling never moves too, "4 [4–4]" (every rank cell
    reads alike)."""
    return f"{rank:g} [{low:g}–{high:g}]"


def below_strongest_floor(scores: Mapping[str, pd.DataFrame], metric: str) -> tuple[str, list[str]]:
    """The stronger floor on `metric` (of `FLOORS` in the frame, the better mean) and the rows (not floors) that
    do not beat it: a paired comparison over the images (`xaikit.stats.paired_comparison`) whose verdict is not
    "better than the floor". A row that does not beat the floor has not shown that it reads the model."""
    from ..stats import paired_comparison

    frame = scores[metric]
    floors = [c for c in frame.columns if c in FLOORS]
    if not floors:
        raise InvalidParameterError(f"the {metric} scores have no floor row ({', '.join(FLOORS)}); add one to the methods")
    higher = HIGHER_IS_BETTER[metric]
    strongest = max(floors, key=lambda c: frame[c].mean() if higher else -frame[c].mean())
    better = "a higher" if higher else "b higher"
    rows = [c for c in frame.columns if c not in FLOORS
            and paired_comparison(frame[c].to_numpy(), frame[strongest].to_numpy()).verdict != better]
    return strongest, rows


def claim_verdict(scores: Mapping[str, pd.DataFrame], metric: str, method: str, *, allow_tie: bool = False,
                  others: Sequence[str] = ()):
    """The verdict on "`method` scores best on `metric`" (`xaikit.verdicts.best_method_verdict`).

    The baselines are every column but `method`, the floors (`FLOORS`, ranked and reported) and `others`
    (e.g. the other CDAM variants for "a CDAM variant beats every baseline").
    """
    from ..verdicts import best_method_verdict

    frame = scores[metric]
    floors = [c for c in frame.columns if c in FLOORS]
    baselines = [c for c in frame.columns if c != method and c not in floors and c not in others]
    return best_method_verdict(frame, method, higher_is_better=HIGHER_IS_BETTER[metric], baselines=baselines,
                               floors=floors, allow_tie=allow_tie, score=metric.replace("-", "−"))


def pool_to_tokens(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel maps (B, H, W) averaged over each patch to the token grid (B, gh, gw): a pixel method at a token
    method's resolution. Token maps (already `grid`) are returned unchanged."""
    maps = torch.as_tensor(maps)
    if maps.ndim != 3:
        raise InvalidParameterError(f"maps must be (B, H, W); got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    if maps.shape[-2] % grid[0] or maps.shape[-1] % grid[1]:
        raise InvalidParameterError(f"a {tuple(maps.shape[-2:])} map does not split into a {tuple(grid)} token grid")
    return torch.nn.functional.adaptive_avg_pool2d(maps[:, None].double(), tuple(grid))[:, 0].to(maps.dtype)


def golden_cdam_errors(golden_dir=None, precisions: Sequence[str] = ("float32",)) -> pd.DataFrame:
    """Relative errors ``max |ours - reference| / max |reference|`` of CDAM, Integrated CDAM, Smooth CDAM
    (with the stored noise) and concept CDAM against the authors' code's outputs in the golden files
    (``tests/golden``, see its README), both reference models, each of the two target sets; one row each.

    Column ``classes explained`` names a target set by its classes, one per input image (e.g. "8, 6, 6, 3"), or
    "a concept" for concept CDAM."""
    from ..concepts import concept_target
    from ..methods import get_method
    from ..report import golden_dir_checked, golden_file, golden_model

    golden_dir = golden_dir_checked(golden_dir)
    available = {"float32": (torch.float32, ""), "float64": (torch.float64, "_f64")}
    unknown = [p for p in precisions if p not in available]
    if unknown or not precisions:
        raise InvalidParameterError(f"precisions must be some of {', '.join(available)}; got {list(precisions)!r}")
    inputs = golden_file(golden_dir, "inputs")
    rows = []
    for precision in precisions:
        dtype, suffix = available[precision]
        images = torch.from_numpy(inputs["images"]).to(dtype)
        for which in "AB":
            model, reference = golden_model(golden_dir, which, dtype), golden_file(golden_dir, f"cdam_{which}{suffix}")
            checks = [("CDAM", "cdam", "cdam_vanilla_raw", {}), ("Integrated CDAM", "integrated_cdam", "integrated_cdam_raw", {"n_steps": 10})]
            if which == "B":
                bank = torch.from_numpy(golden_file(golden_dir, "noise")["smooth_cdam_Z_B"]).to(dtype)
                checks.append(("Smooth CDAM", "smooth_cdam", "smooth_cdam_raw", {"n_samples": 8, "noise_level": 0.05, "noise": bank}))
            for label, method, key, params in checks:
                for column in range(reference["targets"].shape[1]):
                    ours = get_method(method).create(model, **params).attribute(images, torch.from_numpy(reference["targets"][:, column]))
                    rows.append({"method": method, "label": label, "precision": precision, "model": f"reference model {which}",
                                 "classes explained": ", ".join(str(int(c)) for c in reference["targets"][:, column]),
                                 "relative error": _relative_error(ours, reference[key][:, column])})
            concept = concept_target(model, torch.from_numpy(inputs["concept_images"]).to(dtype))
            ours = get_method("cdam").create(model).attribute(images, concept)
            rows.append({"method": "cdam", "label": "concept CDAM", "precision": precision, "model": f"reference model {which}",
                         "classes explained": "a concept", "relative error": _relative_error(ours, reference["concept_cdam_raw"])})
    return pd.DataFrame(rows)


def _relative_error(ours: torch.Tensor, reference) -> float:
    import numpy as np

    ours = ours.detach().cpu().numpy().reshape(reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def mif_pictures(model, images: torch.Tensor, classes, maps: torch.Tensor, fractions: Sequence[float],
                 **fidelity_settings) -> torch.Tensor:
    """What MIF shows the model: `images` (B, C, H, W, normalised) with each share in `fractions` of their pixels,
    most important first by `maps`, replaced by the blurred copy the fidelity test uses (`Fidelity` with
    `fidelity_settings`). Returns (S, B, C, H, W); ``xaikit.imaging.to_display(model, pictures[s])`` draws step s."""
    from ..protocols import Fidelity

    protocol = Fidelity(model, **fidelity_settings)
    images = protocol.engine._check_images(images)
    blurred = protocol._replacement_for(images)
    flat = protocol._pixel_maps(maps, images, torch.as_tensor(classes)).flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=order.device).expand_as(order))
    steps = []
    for share in fractions:
        if not 0 <= float(share) <= 1:
            raise InvalidParameterError(f"fractions must be shares in [0, 1]; got {share!r}")
        replaced = (ranks < int(flat.shape[1] * float(share))).view(images.shape[0], 1, *images.shape[-2:])
        steps.append(torch.where(replaced, blurred, images))
    return torch.stack(steps)


def ratio_of_means(numerator, denominator, *, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``mean(numerator) / mean(denominator)`` over the same images, with its 95 % percentile bootstrap interval
    (the images resampled jointly for both): e.g. a baseline's area as a share of CDAM's, which does not depend
    on the scale of the logits. Returns (ratio, low, high)."""
    import numpy as np

    top, bottom = (np.asarray(torch.as_tensor(v).double().cpu(), np.float64) for v in (numerator, denominator))
    if top.shape != bottom.shape or top.ndim != 1 or len(top) < 2:
        raise InvalidParameterError(f"give two score arrays of the same images (n >= 2); got shapes {top.shape}, {bottom.shape}")
    if bottom.mean() == 0:
        raise InvalidParameterError("the denominator's mean is 0: the ratio is undefined")
    draws = np.random.default_rng(seed).integers(0, len(top), (n_resamples, len(top)))
    ratios = top[draws].mean(1) / bottom[draws].mean(1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(top.mean() / bottom.mean()), float(low), float(high)


# -- the figure pages' claims, per image -----------------------------------------------------------------------
def positive_share_inside(maps: torch.Tensor, masks) -> torch.Tensor:
    """Per image (B,), the percentage of a signed map's positive mass that falls inside the object's mask.

    Token maps (B, gh, gw) are upsampled by nearest neighbour to the masks (B, H, W); a map without positive
    scores gives NaN (nothing to place). A map that knows nothing puts the object's area share inside.
    """
    from ..imaging import upsample

    masks = torch.as_tensor(masks).float()
    if masks.ndim != 3 or torch.as_tensor(maps).shape[0] != masks.shape[0]:
        raise InvalidParameterError(f"give one map and one (H, W) mask per image; got {tuple(torch.as_tensor(maps).shape)} "
                                    f"and {tuple(masks.shape)}")
    pixels = upsample(torch.as_tensor(maps).float().clamp(min=0), tuple(masks.shape[-2:]), mode="nearest")
    total = pixels.flatten(1).sum(1)
    inside = (pixels * masks).flatten(1).sum(1)
    return torch.where(total > 0, 100 * inside / total.clamp_min(1e-30), torch.full_like(total, float("nan"))).double()


def class_change(maps: torch.Tensor, other_maps: torch.Tensor) -> torch.Tensor:
    """Per image (B,), how much a map changes with the class explained: ``max |m - m'| / max |m|`` (0: the same map)."""
    maps, other_maps = torch.as_tensor(maps).double(), torch.as_tensor(other_maps).double()
    if maps.shape != other_maps.shape:
        raise InvalidParameterError(f"the two sets of maps differ in shape: {tuple(maps.shape)} and {tuple(other_maps.shape)}")
    return (maps - other_maps).flatten(1).abs().amax(1) / maps.flatten(1).abs().amax(1).clamp_min(1e-30)


def least_attended_share(attention: torch.Tensor, scores: torch.Tensor, share: float = 0.1) -> torch.Tensor:
    """Per image (B,), the percentage of ``sum |scores|`` on its `share` of tokens with the least attention.

    A map unrelated to attention puts about ``100 * share`` percent there; the paper's Fig. S1 says CDAM puts less.
    """
    attention, scores = torch.as_tensor(attention).flatten(1).double(), torch.as_tensor(scores).flatten(1).double().abs()
    if attention.shape != scores.shape:
        raise InvalidParameterError(f"give one attention and one score per token: {tuple(attention.shape)} vs {tuple(scores.shape)}")
    if not 0 < share < 1:
        raise InvalidParameterError(f"share must be in (0, 1); got {share!r}")
    count = max(1, int(round(share * attention.shape[1])))
    lowest = attention.argsort(dim=1, stable=True)[:, :count]
    return 100 * scores.gather(1, lowest).sum(1) / scores.sum(1).clamp_min(1e-30)


def regression_fit(estimates, truth, names: Sequence[str], *, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per target: RMSE and R² with 95 % bootstrap intervals over the samples (rows of `estimates` and `truth`, (N, K)).

    The interval of the mean squared error (`xaikit.stats.bootstrap_ci`) gives both: RMSE is its square root, R² is
    ``1 - MSE / var(truth)`` (the truth's variance over all N samples held fixed)."""
    import numpy as np

    from ..stats import bootstrap_ci

    estimates, truth = np.asarray(estimates, np.float64), np.asarray(truth, np.float64)
    if estimates.shape != truth.shape or estimates.ndim != 2 or estimates.shape[1] != len(names):
        raise InvalidParameterError(f"give (N, K) estimates and truth with K = {len(names)} names; got {estimates.shape}, {truth.shape}")
    rows = []
    for k, name in enumerate(names):
        mse = bootstrap_ci((estimates[:, k] - truth[:, k]) ** 2, n_resamples=n_resamples, seed=seed)
        variance = truth[:, k].var()
        rows.append({"biomarker": name, "R²": 1 - mse.estimate / variance, "R² low": 1 - mse.high / variance,
                     "R² high": 1 - mse.low / variance, "RMSE": mse.estimate ** 0.5, "RMSE low": mse.low ** 0.5,
                     "RMSE high": mse.high ** 0.5})
    return pd.DataFrame(rows).set_index("biomarker")
