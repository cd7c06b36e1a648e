"""The CDAM chapter: the methods its tables compare, and the paper's numbers (Brocki, Binda, Chung).

Paper numbers are copied from the paper's Tables 1-3 and S1 (reference-spec §2.11); ours are
computed by the notebooks. Method names are the paper's row labels; each maps to an xaikit
method and the settings the authors' code uses (§2.5-2.8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
    """Table 1, correctness on X_multi (DINO ViT-S/8), indexed by method."""
    return _read(_CORRECTNESS, "method").query("data == 'X_multi'").drop(columns="data")


def paper_table_s1() -> pd.DataFrame:
    """Table S1, correctness on X_val (DINO ViT-S/8), indexed by method."""
    return _read(_CORRECTNESS, "method").query("data == 'X_val'").drop(columns="data")


def paper_table2() -> pd.DataFrame:
    """Table 2, class discrimination on X_multi, indexed by method."""
    return _read(_DISCRIMINATION_COMPACTNESS, "method")[["A_Δ(LIF-MIF)", "A_Δbox"]]


def paper_table3() -> pd.DataFrame:
    """Table 3, compactness on X_multi (fraction of tokens below 5 % of the map's maximum)."""
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
    """Fidelity and box sensitivity of every method's maps of one set of classes (Table 1 / S1)."""

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
    """Table 2: indexed by method, A_Δ(LIF-MIF) and A_Δbox with their standard errors over images."""
    rows = {}
    for label, result in results.items():
        row = {}
        for column, per_image in (("A_Δ(LIF-MIF)", result.a_delta_lif_minus_mif_per_image), ("A_Δbox", result.a_delta_box_per_image)):
            row[column], row[f"{column}_sem"] = _mean_sem(per_image)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def compactness_table(maps: Mapping[str, torch.Tensor], threshold: float = 0.05) -> pd.DataFrame:
    """Table 3: indexed by method, the mean compactness of the raw maps and its standard error."""
    rows = {}
    for label, row_maps in maps.items():
        mean, sem = _mean_sem(compactness(row_maps, threshold))
        rows[label] = {"compactness": mean, "compactness_sem": sem}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")
