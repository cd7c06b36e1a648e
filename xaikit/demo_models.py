"""The small ViTs this project trains and ships inside the package (``xaikit/weights``).

Each model is a ``<name>.safetensors`` file with a ``<name>.json`` model card
(timm architecture and kwargs, data, seed, epochs, accuracy, hardware,
training time, sha256).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .errors import DataIntegrityError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_MODELS: dict[str, Path] = {card.stem: card for card in sorted(WEIGHTS_DIR.glob("*.json"))}


def model_card(name: str) -> dict:
    """The JSON model card of demo model `name`."""
    return json.loads(DEMO_MODELS[name].read_text())


def load_demo_model(name: str) -> nn.Module:
    """Build demo model `name` from its card and load its shipped, hash-checked weights."""
    import timm
    from pooch import file_hash

    from .models import load_weights

    card = model_card(name)
    weights = DEMO_MODELS[name].with_suffix(".safetensors")
    actual = file_hash(str(weights), alg="sha256")
    if actual != card["sha256"]:
        raise DataIntegrityError(
            f"{weights} has sha256 {actual}, its model card says {card['sha256']}: reinstall xaikit"
        )
    model = timm.create_model(card["architecture"], pretrained=False, **card["timm_kwargs"])
    return load_weights(model, weights)
