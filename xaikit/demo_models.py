"""The small ViTs this project trains and ships inside the package (``xaikit/weights``).

Each model is a ``<name>.safetensors`` file with a ``<name>.json`` model card
(timm architecture and kwargs, data, seed, epochs, accuracy, hardware,
training time, sha256); every card in ``xaikit/weights`` is a demo model
(`DEMO_MODELS`). Regression models (``demo-nodules-biomarkers-vit``) record
the test MSE and R^2 per target instead of an accuracy, and the targets' mean
and std (`xaikit.train.predict_targets` maps their outputs back to units).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

from .errors import DataIntegrityError, WeightsUnavailableError
from .weight_files import load_weights

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_MODELS: dict[str, Path] = {card.stem: card for card in sorted(WEIGHTS_DIR.glob("*.json"))}


def model_card(name: str) -> dict:
    """The JSON model card of demo model `name`."""
    return json.loads(DEMO_MODELS[name].read_text())


def load_demo_model(name: str) -> nn.Module:
    """Build demo model `name` from its card and load its shipped, hash-checked weights."""
    return load_from_card(DEMO_MODELS[name], remedy="reinstall xaikit")


def load_from_card(card_path: Path, *, remedy: str) -> nn.Module:
    """A timm model built from a JSON model card, with the hash-checked ``.safetensors`` beside it.

    `remedy` ends the error messages: what the user should do when the card or
    its weights are missing, unreadable or do not belong together.
    """
    import timm

    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        architecture, timm_kwargs, sha256 = card["architecture"], dict(card["timm_kwargs"]), card["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataIntegrityError(f"{card_path} is not an xaikit model card ({type(err).__name__}: {err}); {remedy}") from err
    weights = card_path.with_suffix(".safetensors")
    if not weights.is_file():
        raise WeightsUnavailableError(f"the weights {weights} of model card {card_path} are missing; {remedy}")
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    if actual != sha256:
        raise DataIntegrityError(
            f"{weights} has sha256 {actual}, its model card {card_path} says {sha256}: the two files do not "
            f"belong together; {remedy}"
        )
    return load_weights(timm.create_model(architecture, pretrained=False, **timm_kwargs), weights).eval()
