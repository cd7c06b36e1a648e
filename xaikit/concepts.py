"""Concept targets (Concept CDAM, Brocki et al.; reference-spec 2.4).

A concept is the mean pre-logits feature vector of a few images (the class token after
the final LayerNorm, what the authors get with ``model.head = nn.Identity()``); an
image's concept score is the similarity of its own features to that vector.
``xaikit.explain(model, images, "cdam", targets=concept_target(model, concept_images))``
explains that score with CDAM, or with any other gradient method.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import InvalidParameterError
from .methods.base import eval_mode, positive_int
from .targets import FeatureTarget, heads_replaced

SIMILARITIES = ("dot", "cosine", "neg_l2")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ConceptTarget(FeatureTarget):
    """Scores each image's pre-logits features (B, D) against the concept vector (D,).

    similarity: ``"dot"`` (the authors' code: ``torch.dot(features, vector)``),
    ``"cosine"``, or ``"neg_l2"`` (minus the Euclidean distance; larger is closer).
    """

    def __init__(self, vector: torch.Tensor, similarity: str = "dot") -> None:
        if similarity not in SIMILARITIES:
            raise InvalidParameterError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}; got {similarity!r}")
        if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or not vector.dtype.is_floating_point:
            raise InvalidParameterError("a concept vector must be a 1-d float tensor (the feature size D)")
        finite = torch.isfinite(vector.detach())
        if not bool(finite.all()):
            raise InvalidParameterError(
                f"the concept vector holds {int((~finite).sum())} NaN or infinite values of {vector.numel()}, which "
                "make every map NaN; build it from finite features (are the concept images and the model's weights "
                "finite?)"
            )
        self.vector = vector.detach()
        self.similarity = similarity

    def score(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.vector.numel():
            raise InvalidParameterError(
                f"this concept vector has {self.vector.numel()} features but the model gives features of shape "
                f"{tuple(features.shape)}: build the concept with the model you explain"
            )
        vector = self.vector.to(device=features.device, dtype=features.dtype)
        if self.similarity == "dot":
            return features @ vector
        if self.similarity == "cosine":
            return torch.nn.functional.cosine_similarity(features, vector[None, :], dim=1)
        return -(features - vector[None, :]).norm(dim=1)

    def __repr__(self) -> str:
        return f"ConceptTarget(D={self.vector.numel()}, similarity={self.similarity!r})"


def _concept_batch(model: torch.nn.Module, concept_images) -> torch.Tensor:
    from .imaging import preprocess

    if isinstance(concept_images, (str, os.PathLike)) and Path(concept_images).is_dir():
        folder = Path(concept_images)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidParameterError(
                f"the concept folder {folder} holds no image file ({', '.join(IMAGE_SUFFIXES)}); put the concept's "
                "example images there"
            )
        return preprocess(model, files, squash=True)
    if isinstance(concept_images, torch.Tensor) and concept_images.dtype.is_floating_point:
        if concept_images.ndim == 4:
            return concept_images  # already normalised for the model
        if concept_images.ndim == 3 and concept_images.numel():
            low, high = float(concept_images.min()), float(concept_images.max())
            if low < 0 or high > 1:  # not pixels in [0, 1], which preprocess would read as one image
                raise InvalidParameterError(
                    f"concept_images is one float image of shape {tuple(concept_images.shape)} with values in "
                    f"[{low:g}, {high:g}]: a normalised image needs a batch axis, (1, 3, H, W); add one with "
                    "concept_images[None] (or concept_images.unsqueeze(0))"
                )
    return preprocess(model, concept_images, squash=True)


def concept_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pre-logits features (n, D) of normalised images (n, 3, H, W), in eval mode, without gradients."""
    param = next(model.parameters())
    outputs = []
    with eval_mode(model), heads_replaced(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            outputs.append(model(images[start : start + batch_size].to(device=param.device, dtype=param.dtype)))
    return torch.cat(outputs)


def concept_target(model: torch.nn.Module, concept_images, similarity: str = "dot", *, batch_size: int = 64) -> ConceptTarget:
    """The target whose score is the similarity of an image's pre-logits features to the mean
    features of `concept_images`.

    concept_images: normalised float images (n, 3, H, W), anything `xaikit.preprocess` reads
    (a list of files, PIL images, uint8 arrays; squash-resized as in the CDAM protocol), or a
    folder whose image files define the concept.
    similarity: ``"dot"`` (default, the authors' code), ``"cosine"`` or ``"neg_l2"``.
    """
    if similarity not in SIMILARITIES:
        raise InvalidParameterError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}; got {similarity!r}")
    batch_size = positive_int("batch_size", batch_size, "It is how many concept images run through the model at once")
    batch = _concept_batch(model, concept_images)
    if len(batch) == 0:
        raise InvalidParameterError("a concept needs at least one image")
    if not bool(torch.isfinite(batch).all()):
        raise InvalidParameterError("the concept images contain NaN or infinite pixels; fix or drop them")
    return ConceptTarget(concept_features(model, batch, batch_size).mean(dim=0), similarity)
