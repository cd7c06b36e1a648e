"""The TokenTM chapter: the methods its tables compare, and the paper's numbers (Wu et al., CVPR 2024).

Paper numbers are copied from the paper's Tables 1-7 (reference-spec §3.6); ours are
computed by the notebooks. Method names are the paper's row labels; each maps to an
xaikit method and the settings the paper's protocol uses.
"""

from __future__ import annotations

import pandas as pd

#: paper row label -> (xaikit method, settings). Chefer's evaluation scripts run rollout and
#: Transformer Attribution with start_layer=1; "partial LRP", "AttnLRP" and "Random" are not
#: rows of the paper: partial LRP is the issue's extra baseline, AttnLRP our addition and Random the floor.
METHODS: dict[str, tuple[str, dict]] = {
    "Grad-CAM": ("attn_gradcam", {}),
    "LRP": ("lrp", {}),
    "partial LRP": ("partial_lrp", {}),
    "Cons. LRP": ("conservative_lrp", {}),
    "Trans. Attr.": ("transformer_attribution", {"start_layer": 1}),
    "Raw Att.": ("raw_attention", {}),
    "Rollout": ("rollout", {"start_layer": 1}),
    "ATTCAT": ("attcat", {}),
    "GAE": ("gae", {}),
    # AttnLRP's own attention rule: the method's default, CP-LRP, runs the same rules as Cons. LRP.
    "AttnLRP": ("attnlrp", {"variant": "attnlrp"}),
    "TokenTM": ("tokentm", {}),
    "Random": ("random", {}),
}

#: the floors besides Random (a map that knows nothing): "the object is in the middle", a centred Gaussian
#: (sigma a quarter of the token grid's side). Segmentation adds "all background" (no map at all).
FLOOR_METHODS: dict[str, tuple[str, dict]] = {"centre prior": ("centre_prior", {})}
#: every floor row label of the chapter's tables
FLOOR_LABELS = ("Random", "centre prior", "all background")

_T1 = """method,pixel accuracy,mAP,mIoU
Grad-CAM,67.37,79.20,46.13
LRP,50.96,55.87,32.82
Cons. LRP,64.06,68.01,36.23
Trans. Attr.,79.17,85.81,61.02
Raw Att.,59.07,76.51,36.36
Rollout,59.01,73.76,39.43
ATTCAT,43.88,48.38,27.90
GAE,79.05,85.71,61.56
TokenTM,81.79,86.45,64.22
"""

# Tables 2-4: AUC of top-1 accuracy (%) under negative (higher is better) and positive (lower is
# better) perturbation; maps of the predicted ("pred") or ground-truth ("GT") class.
_T234 = """method,dataset,explained,negative,positive
Grad-CAM,CIFAR-10,pred,61.24,47.32
Grad-CAM,CIFAR-10,GT,61.26,47.34
Grad-CAM,CIFAR-100,pred,47.18,41.91
Grad-CAM,CIFAR-100,GT,47.28,41.78
Grad-CAM,ImageNet,pred,43.84,26.11
Grad-CAM,ImageNet,GT,44.06,25.87
LRP,CIFAR-10,pred,72.62,72.14
LRP,CIFAR-10,GT,72.54,72.13
LRP,CIFAR-100,pred,46.76,46.31
LRP,CIFAR-100,GT,46.80,46.29
LRP,ImageNet,pred,42.55,41.29
LRP,ImageNet,GT,42.56,41.29
Cons. LRP,CIFAR-10,pred,44.92,49.15
Cons. LRP,CIFAR-10,GT,45.76,47.87
Cons. LRP,CIFAR-100,pred,27.11,27.99
Cons. LRP,CIFAR-100,GT,26.84,27.42
Cons. LRP,ImageNet,pred,33.24,34.35
Cons. LRP,ImageNet,GT,34.33,34.03
Trans. Attr.,CIFAR-10,pred,67.65,43.64
Trans. Attr.,CIFAR-10,GT,65.82,43.17
Trans. Attr.,CIFAR-100,pred,44.65,24.99
Trans. Attr.,CIFAR-100,GT,44.19,23.90
Trans. Attr.,ImageNet,pred,57.48,19.00
Trans. Attr.,ImageNet,GT,58.26,18.38
Raw Att.,CIFAR-10,pred,58.46,47.17
Raw Att.,CIFAR-10,GT,58.46,47.17
Raw Att.,CIFAR-100,pred,37.23,28.62
Raw Att.,CIFAR-100,GT,37.23,28.62
Raw Att.,ImageNet,pred,48.70,25.44
Raw Att.,ImageNet,GT,48.70,25.44
Rollout,CIFAR-10,pred,64.88,42.89
Rollout,CIFAR-10,GT,64.88,42.89
Rollout,CIFAR-100,pred,41.34,24.96
Rollout,CIFAR-100,GT,41.34,24.96
Rollout,ImageNet,pred,43.23,32.34
Rollout,ImageNet,GT,43.23,32.34
ATTCAT,CIFAR-10,pred,41.78,42.66
ATTCAT,CIFAR-10,GT,41.91,42.52
ATTCAT,CIFAR-100,pred,23.52,22.15
ATTCAT,CIFAR-100,GT,23.90,21.73
ATTCAT,ImageNet,pred,32.34,31.71
ATTCAT,ImageNet,GT,33.59,30.68
GAE,CIFAR-10,pred,71.67,37.77
GAE,CIFAR-10,GT,71.81,37.70
GAE,CIFAR-100,pred,52.14,17.52
GAE,CIFAR-100,GT,52.65,17.32
GAE,ImageNet,pred,57.53,15.88
GAE,ImageNet,GT,58.85,15.20
TokenTM,CIFAR-10,pred,74.90,37.14
TokenTM,CIFAR-10,GT,75.05,36.48
TokenTM,CIFAR-100,pred,54.78,16.07
TokenTM,CIFAR-100,GT,55.30,15.89
TokenTM,ImageNet,pred,58.12,15.75
TokenTM,ImageNet,GT,59.36,15.09
"""

# Table 5: AOPC (higher is better) and LOdds (lower is better) on ImageNet.
_T5 = """method,model,AOPC,LOdds
Grad-CAM,ViT-B,0.557,-4.020
Grad-CAM,ViT-L,0.457,-3.023
LRP,ViT-B,0.474,-3.259
LRP,ViT-L,0.508,-3.634
Cons. LRP,ViT-B,0.613,-4.272
Cons. LRP,ViT-L,0.614,-4.443
Trans. Attr.,ViT-B,0.721,-5.622
Trans. Attr.,ViT-L,0.716,-5.541
Raw Att.,ViT-B,0.652,-4.911
Raw Att.,ViT-L,0.655,-4.961
Rollout,ViT-B,0.688,-5.259
Rollout,ViT-L,0.689,-5.183
ATTCAT,ViT-B,0.641,-4.461
ATTCAT,ViT-L,0.645,-4.622
GAE,ViT-B,0.714,-5.437
GAE,ViT-L,0.699,-5.601
TokenTM,ViT-B,0.764,-5.781
TokenTM,ViT-L,0.726,-5.755
"""

# Table 6 (ablation) and Table 7 (aggregation depth), ViT-B on ImageNet; the xaikit
# tokentm `variant` of each Table 6 row is given in ABLATION_VARIANTS.
_T6 = """variant,pixel accuracy,mAP,mIoU,negative,positive
Baseline,52.94,67.78,33.42,44.92,31.95
+AF,76.30,85.28,58.34,55.25,16.98
+AF+L,77.50,85.39,59.59,55.03,16.28
+AF+L+NECC,78.22,85.69,60.29,55.42,16.18
"""
_T7 = """blocks,pixel accuracy,mAP,mIoU,negative,positive
3,63.63,76.40,42.99,43.32,22.57
6,68.38,80.35,48.66,48.28,20.17
9,70.46,81.74,51.11,50.42,19.24
12,78.22,85.69,60.29,55.42,16.18
"""
ABLATION_VARIANTS = {"Baseline": "baseline", "+AF": "af", "+AF+L": "af_l", "+AF+L+NECC": "full"}


def _read(text: str, index) -> pd.DataFrame:
    from io import StringIO

    return pd.read_csv(StringIO(text)).set_index(index)


def paper_table1() -> pd.DataFrame:
    """Table 1, ImageNet-Segmentation with DeiT-B (%), indexed by method."""
    return _read(_T1, "method")


def paper_perturbation() -> pd.DataFrame:
    """Tables 2-4, perturbation AUC (%), indexed by (method, dataset, explained)."""
    return _read(_T234, ["method", "dataset", "explained"])


def paper_table5() -> pd.DataFrame:
    """Table 5, AOPC and LOdds, indexed by (method, model)."""
    return _read(_T5, ["method", "model"])


def paper_table6() -> pd.DataFrame:
    """Table 6, the ablation (ViT-B, ImageNet), indexed by the paper's variant label."""
    return _read(_T6, "variant")


def paper_table7() -> pd.DataFrame:
    """Table 7, the aggregation depth (ViT-B, ImageNet), indexed by the number of blocks."""
    return _read(_T7, "blocks")
