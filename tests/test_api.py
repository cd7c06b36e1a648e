"""The public API: explain, list_methods, targets, preprocess, upsample, load_model."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import xaikit
from xaikit.errors import InvalidParameterError, UnsupportedModelError, WeightsUnavailableError

from conftest import build_golden_model, small_vit


@pytest.fixture(scope="module")
def model():
    return small_vit("deit_distilled")


@pytest.fixture(scope="module")
def images(model):
    return torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def count_passes(model):
    """Counters of forward passes of the model and backward passes through its head."""
    counts = {"forward": 0, "backward": 0}
    handles = [
        model.register_forward_pre_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1)),
        model.head.register_full_backward_hook(lambda *a: counts.__setitem__("backward", counts["backward"] + 1)),
    ]
    return counts, handles


def test_list_methods():
    assert {"raw_attention", "rollout", "gae"} <= set(xaikit.list_methods())


@pytest.mark.parametrize("method", ["raw_attention", "rollout", "gae"])
def test_maps_are_float32_token_grids_from_one_pass(model, images, method):
    counts, handles = count_passes(model)
    try:
        maps = xaikit.explain(model, images, method=method)
    finally:
        for h in handles:
            h.remove()
    assert maps.shape == (5, 4, 4) and maps.dtype == torch.float32 and maps.device == images.device
    assert counts == {"forward": 1, "backward": 1 if method == "gae" else 0}
    assert torch.isfinite(maps).all() and (maps >= 0).all()


def test_batched_equals_one_image_at_a_time(model, images):
    batched = xaikit.explain(model, images, "gae", targets=[0, 1, 2, 3, 4])
    single = torch.cat([xaikit.explain(model, images[i : i + 1], "gae", targets=i) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-7)
    chunked = xaikit.explain(model, images, "gae", targets=[0, 1, 2, 3, 4], batch_size=2)
    torch.testing.assert_close(chunked, batched, rtol=1e-5, atol=1e-7)
    same_class = xaikit.explain(model, images, "gae", targets=3)
    for scalar in (np.int64(3), torch.tensor(3)):
        torch.testing.assert_close(xaikit.explain(model, images, "gae", targets=scalar, batch_size=2), same_class, rtol=1e-5, atol=1e-7)


def test_target_forms_agree(model, images):
    with torch.no_grad():
        predicted = model(images).argmax(1)
    by_default = xaikit.explain(model, images, "gae")
    torch.testing.assert_close(by_default, xaikit.explain(model, images, "gae", targets=predicted))
    torch.testing.assert_close(by_default, xaikit.explain(model, images, "gae", targets=predicted.numpy()))
    torch.testing.assert_close(by_default, xaikit.explain(model, images, "gae", targets=predicted.tolist()))
    by_int = xaikit.explain(model, images, "gae", targets=3)
    by_callable = xaikit.explain(model, images, "gae", targets=lambda logits: logits[:, 3])
    torch.testing.assert_close(by_int, by_callable)
    assert not torch.allclose(by_int, xaikit.explain(model, images, "gae", targets=4))


@pytest.mark.parametrize(
    "targets, message",
    [
        (7, "out of range: the model has 7 classes"),
        ([0, 1], r"one integer class index per image, shape \(5,\)"),
        (torch.zeros(5), "dtype torch.float32"),
        (True, "got a bool"),
        (lambda logits: logits, r"one score per image, a tensor of shape \(5,\)"),
    ],
)
def test_bad_targets(model, images, targets, message):
    with pytest.raises(InvalidParameterError, match=message):
        xaikit.explain(model, images, "gae", targets=targets)


def test_unknown_method_and_parameters(model, images):
    with pytest.raises(InvalidParameterError, match=f"unknown method 'gradcam2'; valid methods are: {', '.join(xaikit.list_methods())}$"):
        xaikit.explain(model, images, "gradcam2")
    with pytest.raises(InvalidParameterError, match="method 'rollout' has no parameter 'start'; its parameters are: start_layer=0"):
        xaikit.explain(model, images, "rollout", start=1)
    with pytest.raises(InvalidParameterError, match=r"start_layer must be an int in \[0, 1\]; got 5"):
        xaikit.explain(model, images, "rollout", start_layer=5)
    with pytest.raises(InvalidParameterError, match="batch_size must be a positive int"):
        xaikit.explain(model, images, "rollout", batch_size=0)


def test_bad_images(model, images):
    with pytest.raises(InvalidParameterError, match="uint8.*xaikit.preprocess"):
        xaikit.explain(model, (images * 50).to(torch.uint8), "rollout")
    with pytest.raises(InvalidParameterError, match=r"add a batch axis"):
        xaikit.explain(model, images[0], "rollout")
    with pytest.raises(InvalidParameterError, match=r"\(32, 32\) pixels but the model takes \(64, 64\)"):
        xaikit.explain(model, images[..., :32, :32], "rollout")
    with pytest.raises(InvalidParameterError, match="got ndarray"):
        xaikit.explain(model, images.numpy(), "rollout")
    with pytest.raises(UnsupportedModelError):
        xaikit.explain(torch.nn.Linear(3, 3), images, "rollout")


def test_method_without_class_token_is_refused():
    model = small_vit("plain", class_token=False, global_pool="avg")
    with pytest.raises(InvalidParameterError, match="reads the class token, but this model has none"):
        xaikit.explain(model, torch.randn(1, 3, 64, 64), "gae")


def test_targets_matter_for_gae_not_rollout(model, images):
    assert not torch.allclose(xaikit.explain(model, images, "gae", targets=0), xaikit.explain(model, images, "gae", targets=1))
    torch.testing.assert_close(xaikit.explain(model, images, "rollout", targets=0), xaikit.explain(model, images, "rollout", targets=1))


# -- preprocess and upsample ----------------------------------------------------------
def test_preprocess_uses_the_models_normalisation():
    model = build_golden_model("A")  # 224 input, no pretrained cfg: timm's ImageNet mean/std
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    batch = xaikit.preprocess(model, pixels, squash=True)
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    expected = (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255 - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]
    torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-5)
    from_pil = xaikit.preprocess(model, [Image.fromarray(p) for p in pixels], squash=True)
    torch.testing.assert_close(from_pil, batch)
    cropped = xaikit.preprocess(model, Image.fromarray(pixels[0]).resize((300, 260)))
    assert cropped.shape == (1, 3, 224, 224)


def test_preprocess_rejects_float_arrays_outside_0_1():
    # Floats in [0, 1] are valid pixels (tests/test_hardening.py); 0..255 floats are a mistake.
    with pytest.raises(InvalidParameterError, match=r"must lie in \[0, 1\].*uint8"):
        xaikit.preprocess(small_vit("plain"), np.full((8, 8, 3), 255.0, dtype=np.float32))


def test_upsample():
    maps = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    nearest = xaikit.upsample(maps, (12, 16), mode="nearest")
    torch.testing.assert_close(nearest, maps.repeat_interleave(4, 1).repeat_interleave(4, 2))
    bilinear = xaikit.upsample(maps, 24)
    assert bilinear.shape == (2, 24, 24)
    torch.testing.assert_close(bilinear, F.interpolate(maps[:, None], size=(24, 24), mode="bilinear", align_corners=False)[:, 0])
    with pytest.raises(InvalidParameterError, match="valid modes are nearest, bilinear, bicubic"):
        xaikit.upsample(maps, 8, mode="area")
    with pytest.raises(InvalidParameterError, match=r"\(B, gh, gw\)"):
        xaikit.upsample(maps[0], 8)


# -- load_model -----------------------------------------------------------------------
def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(InvalidParameterError, match="did you mean .*deit_base_patch16_224"):
        xaikit.load_model("deit_base_patch16_244")


def test_offline_download_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_WEIGHTS_DIR", str(tmp_path))
    # RFC 2606 reserves .invalid: the host never resolves, whatever network this runs on.
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        xaikit.load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "model.safetensors of the Hugging Face repo timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in message
    assert str(tmp_path / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors") in message
    assert "weights='path/to/file'" in message and "XAIKIT_WEIGHTS_DIR" in message


def test_local_weights_load_in_every_supported_form(tmp_path, monkeypatch):
    source = xaikit.load_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
    state = source.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"model": state, "epoch": 3}, tmp_path / "w.pth")  # DeiT-style nesting
    kwargs = dict(img_size=32, patch_size=8, depth=1, num_classes=3)
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded = xaikit.load_model("vit_tiny_patch16_224", weights=path, **kwargs)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected)
    monkeypatch.setenv("XAIKIT_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "w.safetensors").rename(tmp_path / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors")
    found = xaikit.load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(found(x), expected)


class NotWeights:
    pass


def test_pickled_objects_and_wrong_weights_are_refused(tmp_path):
    torch.save({"model": NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsUnavailableError, match="weights-only"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "evil.pth", img_size=32, depth=1)
    other = xaikit.load_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, num_classes=3)
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "other.safetensors", img_size=32, patch_size=8, depth=2, num_classes=3)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "missing.safetensors")
