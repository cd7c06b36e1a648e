"""Raw attention, rollout and GAE reproduce the authors' reference outputs (tests/golden).

float32 files: relative error below 1e-4; float64 files: below 1e-10.
Relative error = max |ours - reference| / max |reference|.
"""

import numpy as np
import pytest
import torch

import xaikit

from conftest import GOLDEN_PRECISION as PRECISION, build_golden_model, golden, golden_attribute as attribute, relative_error






def test_timm_models_reproduce_reference_logits(golden_setting):
    models, images, suffix, tolerance = golden_setting
    logits = golden(f"logits{suffix}")
    for which, model in models.items():
        with torch.no_grad():
            assert relative_error(model(images), logits[f"logits_{which}_timm"]) < tolerance


@pytest.mark.parametrize("start_layer", [0, 1])
def test_rollout(golden_setting, start_layer):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"chefer_A{suffix}")[f"rollout_start{start_layer}"]
    assert relative_error(attribute(models["A"], images, "rollout", start_layer=start_layer), reference) < tolerance


def test_raw_attention(golden_setting):
    models, images, suffix, tolerance = golden_setting
    assert relative_error(attribute(models["A"], images, "raw_attention"), golden(f"chefer_A{suffix}")["raw_attn_last_layer"]) < tolerance
    assert relative_error(attribute(models["A"], images, "raw_attention"), golden(f"cdam_A{suffix}")["attention_map_raw"]) < tolerance
    # model B: patch 8, a 28 x 28 grid
    assert relative_error(attribute(models["B"], images, "raw_attention"), golden(f"cdam_B{suffix}")["attention_map_raw"]) < tolerance


@pytest.mark.parametrize("column", [0, 1])
def test_gae(golden_setting, column):
    models, images, suffix, tolerance = golden_setting
    for which, (file, key) in {"A": (f"chefer_A{suffix}", "gae"), "B": (f"cdam_B{suffix}", "gae_raw")}.items():
        reference = golden(file)
        targets = torch.from_numpy(reference["targets"][:, column])
        assert relative_error(attribute(models[which], images, "gae", targets), reference[key][:, column]) < tolerance


def test_gae_default_target_is_the_prediction(golden_setting):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"chefer_A{suffix}")
    assert relative_error(attribute(models["A"], images, "gae"), reference["gae"][:, 0]) < tolerance


def test_golden_error_report(golden_images, capsys):
    """Print the per-method errors quoted in the closing note (also a regression check)."""
    rows = []
    for name, (dtype, suffix, tolerance) in PRECISION.items():
        model_a, model_b = (build_golden_model(w, dtype) for w in "AB")
        images = golden_images.to(dtype)
        chefer, cdam_b = golden(f"chefer_A{suffix}"), golden(f"cdam_B{suffix}")
        errors = {
            "rollout (start 0)": relative_error(attribute(model_a, images, "rollout"), chefer["rollout_start0"]),
            "rollout (start 1)": relative_error(attribute(model_a, images, "rollout", start_layer=1), chefer["rollout_start1"]),
            "raw attention A": relative_error(attribute(model_a, images, "raw_attention"), chefer["raw_attn_last_layer"]),
            "raw attention B": relative_error(attribute(model_b, images, "raw_attention"), cdam_b["attention_map_raw"]),
            "GAE A": max(relative_error(attribute(model_a, images, "gae", torch.from_numpy(chefer["targets"][:, j])), chefer["gae"][:, j]) for j in (0, 1)),
            "GAE B": max(relative_error(attribute(model_b, images, "gae", torch.from_numpy(cdam_b["targets"][:, j])), cdam_b["gae_raw"][:, j]) for j in (0, 1)),
        }
        rows += [(name, method, err) for method, err in errors.items()]
        assert max(errors.values()) < tolerance
    with capsys.disabled():
        print("\nrelative error vs the reference code:")
        for name, method, err in rows:
            print(f"  {name}  {method:<18} {err:.2e}")
