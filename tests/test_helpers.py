"""Profiles, ground-truth metrics, display helpers and model descriptions."""

import numpy as np
import pytest
import torch

import xaikit
from xaikit.errors import InvalidParameterError
from xaikit.metrics import mass_inside, pointing_game
from xaikit.profiles import settings

from conftest import small_vit

TABLE = {"smoke": {"n": 2, "model": "a"}, "demo": {"n": 8, "model": "b"}, "paper": {"n": 100, "model": "c"}}


def test_settings_take_the_profile_defaults_unless_given():
    assert vars(settings("demo", TABLE, n=0, model="")) == {"profile": "demo", "n": 8, "model": "b"}
    assert vars(settings("smoke", TABLE, n=5, model="x")) == {"profile": "smoke", "n": 5, "model": "x"}
    assert settings("paper", TABLE, flag=False).flag is False  # a bool False is a value, not "empty"
    with pytest.raises(InvalidParameterError, match="valid profiles are smoke, demo, paper"):
        settings("full", TABLE)
    with pytest.raises(InvalidParameterError, match="missing for profile"):
        settings("demo", {"demo": {}})


def test_mass_inside_and_pointing_game():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 75 % inside, peak inside
    maps[1, 3, 3], maps[1, 1, 1], maps[1, 2, 2] = 2.0, 1.0, -5.0  # negatives ignored; peak outside
    torch.testing.assert_close(mass_inside(maps, masks), torch.tensor([0.75, 1 / 3]))
    assert pointing_game(maps, masks).tolist() == [True, False]
    with pytest.raises(InvalidParameterError, match="upsample the maps"):
        mass_inside(maps[:, :2], masks)


def test_to_display_inverts_preprocess():
    model = small_vit("plain")
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    shown = xaikit.imaging.to_display(model, xaikit.preprocess(model, pixels, squash=True))
    assert shown.dtype == np.uint8 and np.abs(shown.astype(int) - pixels).max() <= 1


def test_describe_reads_the_layout():
    facts = xaikit.introspection.describe(small_vit("registers"))
    assert facts["prefix tokens"] == 5 and facts["register tokens"] == 4 and facts["token grid (gh, gw)"] == (4, 4)
    assert facts["tokens N"] == 21 and facts["layer scale"] is True


def test_doc_section_renders_the_generator_rules():
    from xaikit.data import synthetic
    from xaikit.viz import doc_section

    text = doc_section(synthetic, "Nodule rules")
    assert text.startswith("**Nodule rules") and "spiculation" in text
