"""Evaluation protocols: ImageNet-Segmentation and the perturbation test (Chefer et al.), AOPC and LOdds;
CDAM's fidelity (MIF/LIF), box sensitivity and class discrimination.

Each protocol is a class: settings go to ``__init__``, data to ``__call__``,
and the result holds per-image values and the aggregate. Every perturbation
protocol runs on one batched `PerturbationEngine`.
"""

from __future__ import annotations

from .cdam import (
    DEFAULT_BOX_SIZES,
    BoxSensitivity,
    BoxSensitivityResult,
    ClassDiscrimination,
    ClassDiscriminationResult,
    Fidelity,
    FidelityResult,
)
from .engine import (
    DEFAULT_FRACTIONS,
    BoxSchedule,
    EngineResult,
    FractionSchedule,
    MaskSchedule,
    PerturbationEngine,
    Readout,
    Schedule,
    gaussian_blur,
    throughput,
)
from .perturbation import Perturbation, PerturbationResult
from .segmentation import ALL_BACKGROUND, Segmentation, SegmentationResult, all_background_stats, pool_segmentation

__all__ = [
    "ALL_BACKGROUND",
    "DEFAULT_BOX_SIZES",
    "DEFAULT_FRACTIONS",
    "BoxSchedule",
    "BoxSensitivity",
    "BoxSensitivityResult",
    "ClassDiscrimination",
    "ClassDiscriminationResult",
    "EngineResult",
    "Fidelity",
    "FidelityResult",
    "FractionSchedule",
    "MaskSchedule",
    "Perturbation",
    "PerturbationEngine",
    "PerturbationResult",
    "Readout",
    "Schedule",
    "Segmentation",
    "SegmentationResult",
    "all_background_stats",
    "gaussian_blur",
    "pool_segmentation",
    "throughput",
]
