"""Issue 7, Foundation III: bad input gets a clear error, odd but valid input the right result."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import xaikit
from xaikit.data import load_examples
from xaikit.errors import DataIntegrityError, InvalidParameterError, UnsupportedModelError, WeightsUnavailableError

from conftest import small_vit


@pytest.fixture(scope="module")
def model():
    return small_vit("plain")


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def training_flags(model):
    return {name: module.training for name, module in model.named_modules()}


# -- 1. train mode ------------------------------------------------------------------------
def test_model_in_train_mode_is_explained_in_eval_mode_and_keeps_its_flags(images):
    model = small_vit("plain", attn_drop_rate=0.5, proj_drop_rate=0.5, drop_rate=0.5)
    expected = xaikit.explain(model, images, "gae")  # eval mode
    model.train()
    model.blocks[1].attn.eval()  # a mixed state must come back exactly
    before = training_flags(model)
    for method in ("gae", "rollout"):
        first = xaikit.explain(model, images, method)
        torch.testing.assert_close(first, xaikit.explain(model, images, method))  # no dropout
        assert training_flags(model) == before
    torch.testing.assert_close(xaikit.explain(model, images, "gae"), expected)


def test_distilled_deit_training_mode_returns_one_output(images):
    model = small_vit("deit_distilled")
    expected = xaikit.explain(model, images, "gae")
    model.set_distilled_training(True)
    model.train()  # forward now returns (cls logits, dist logits)
    torch.testing.assert_close(xaikit.explain(model, images, "gae"), expected)
    assert model.training and model.head.training


def test_training_flags_are_restored_after_an_exception(images):
    model = small_vit("plain").train()
    before = training_flags(model)

    seen = []

    def failing_target(logits):
        seen.append(any(module.training for module in model.modules()))
        raise KeyError("boom")

    with pytest.raises(KeyError):
        xaikit.explain(model, images, "gae", targets=failing_target)
    assert seen == [False]  # ran in eval mode
    assert training_flags(model) == before


# -- 2. preprocess ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)


def test_preprocess_reads_torch_tensors_channels_first(model, pixels):
    expected = xaikit.preprocess(model, pixels)
    chw = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # torchvision.io.read_image layout
    torch.testing.assert_close(xaikit.preprocess(model, chw), expected)
    torch.testing.assert_close(xaikit.preprocess(model, chw[0]), expected[:1])
    torch.testing.assert_close(xaikit.preprocess(model, list(chw)), expected)
    with pytest.raises(InvalidParameterError, match="looks channels last.*permute"):
        xaikit.preprocess(model, torch.from_numpy(pixels[0]))
    with pytest.raises(InvalidParameterError, match="ambiguous.*channels last"):
        xaikit.preprocess(model, np.ascontiguousarray(pixels[0].transpose(2, 0, 1)))


def test_preprocess_scales_16_bit_and_float_pixels(model, pixels):
    expected = xaikit.preprocess(model, pixels)
    sixteen = pixels.astype(np.uint16) * 257
    torch.testing.assert_close(xaikit.preprocess(model, sixteen), expected)
    torch.testing.assert_close(xaikit.preprocess(model, torch.from_numpy(sixteen).permute(0, 3, 1, 2)), expected)
    torch.testing.assert_close(xaikit.preprocess(model, pixels / 255.0), expected)
    torch.testing.assert_close(xaikit.preprocess(model, torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255), expected)

    grey = pixels[0, ..., 0]
    grey_expected = xaikit.preprocess(model, Image.fromarray(grey))
    for image in (Image.fromarray(grey.astype(np.uint16) * 257), Image.fromarray(grey.astype(np.int32) * 257)):
        assert image.mode in ("I;16", "I")
        torch.testing.assert_close(xaikit.preprocess(model, image), grey_expected)


@pytest.mark.parametrize("bad, message", [(255.0, r"\[0, 255\].*divide 0..255 pixels by 255"), (-0.5, "must lie in"), (np.nan, "NaN")])
def test_preprocess_refuses_floats_outside_0_1(model, bad, message):
    image = np.zeros((64, 64, 3), np.float32)
    image[0, 0] = bad
    with pytest.raises(InvalidParameterError, match=message):
        xaikit.preprocess(model, image)


def test_preprocess_opens_image_files(model, pixels, tmp_path):
    expected = xaikit.preprocess(model, pixels)
    paths = []
    for i, picture in enumerate(pixels):
        Image.fromarray(picture).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    torch.testing.assert_close(xaikit.preprocess(model, [str(paths[0]), paths[1]]), expected)
    torch.testing.assert_close(xaikit.preprocess(model, str(paths[0])), expected[:1])

    Image.fromarray(pixels[0, ..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    torch.testing.assert_close(
        xaikit.preprocess(model, tmp_path / "grey16.png"), xaikit.preprocess(model, Image.fromarray(pixels[0, ..., 0]))
    )
    with pytest.raises(InvalidParameterError, match=r"image file .*missing\.jpg does not exist"):
        xaikit.preprocess(model, str(tmp_path / "missing.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataIntegrityError, match=r"cannot read .*broken\.jpg as an image"):
        xaikit.preprocess(model, tmp_path / "broken.jpg")


def test_preprocess_refuses_no_images(model):
    for empty in ([], np.zeros((0, 64, 64, 3), np.uint8)):
        with pytest.raises(InvalidParameterError, match="preprocess got no images"):
            xaikit.preprocess(model, empty)


# -- 3. batch_size ------------------------------------------------------------------------
def test_batch_size_checks_the_number_of_targets_first(model, images):
    with pytest.raises(InvalidParameterError, match=r"one integer class index per image, shape \(4,\).*shape \(5,\)"):
        xaikit.explain(model, images, "gae", targets=[0, 1, 2, 3, 4], batch_size=2)


def test_empty_batch_gives_empty_maps_with_and_without_batch_size(model):
    empty = torch.zeros(0, 3, 64, 64)
    for batch_size in (None, 2):
        maps = xaikit.explain(model, empty, "gae", batch_size=batch_size)
        assert maps.shape == (0, 4, 4) and maps.dtype == torch.float32


# -- 4. load_model ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, given",
    [
        (dict(weights="w.safetensors"), "weights='w.safetensors'"),
        (dict(pretrained=False), "pretrained=False"),
        (dict(num_classes=3), "num_classes=3"),
    ],
)
def test_demo_models_refuse_timm_options(options, given):
    with pytest.raises(InvalidParameterError, match=rf"takes only device=; got {given}.*load_model\('vit_tiny_patch16_224'"):
        xaikit.load_model("demo-shapes-vit", **options)
    assert xaikit.load_model("demo-shapes-vit", device="cpu").num_classes > 0


@pytest.mark.parametrize("name", [None, 3, ""])
def test_load_model_needs_a_name(name):
    with pytest.raises(InvalidParameterError, match="needs a model name.*demo-cifar10-vit"):
        xaikit.load_model(name)


TINY = dict(img_size=32, patch_size=8, depth=1, num_classes=3)


@pytest.fixture()
def tiny_state(tmp_path):
    source = xaikit.load_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    return source.state_dict()


def test_weights_folder_and_non_state_dicts_are_refused(tmp_path, tiny_state):
    save_file(tiny_state, tmp_path / "model.safetensors")
    with pytest.raises(InvalidParameterError, match=r"weights= is the folder .*pass the weights file itself.*model\.safetensors"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path, **TINY)
    torch.save(list(tiny_state.values()), tmp_path / "list.pth")
    with pytest.raises(DataIntegrityError, match=r"list\.pth holds a list, not a state_dict"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "list.pth", **TINY)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(DataIntegrityError, match=r"meta\.pth is not a state_dict: epoch, lr are not tensors"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "meta.pth", **TINY)


def test_truncated_or_empty_weights_files_name_the_file(tmp_path, tiny_state):
    save_file(tiny_state, tmp_path / "full.safetensors")
    torch.save(tiny_state, tmp_path / "full.pth")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("full.safetensors", "full.pth"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
    for name in ("empty.safetensors", "cut_full.safetensors", "cut_full.pth"):
        with pytest.raises(DataIntegrityError, match=rf"cannot read .*{name}: it is truncated.*delete it and download"):
            xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / name, **TINY)


def test_weights_of_other_shapes_are_refused(tmp_path, tiny_state):
    save_file(tiny_state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsUnavailableError, match=r"(?s)w\.safetensors does not fit .*size mismatch.*num_classes"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "w.safetensors", **{**TINY, "num_classes": 5})


def test_hf_hub_names(tmp_path, tiny_state, monkeypatch):
    save_file(tiny_state, tmp_path / "w.safetensors")
    # timm's own Hub repos are the timm names: local weights work offline.
    loaded = xaikit.load_model("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", weights=tmp_path / "w.safetensors", **TINY)
    torch.testing.assert_close(loaded.state_dict()["head.weight"], tiny_state["head.weight"])
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never resolves
    with pytest.raises(WeightsUnavailableError) as info:
        xaikit.load_model("hf-hub:someone/their-vit")
    message = str(info.value)
    assert "timm has no model named" not in message
    assert "https://hub.invalid/someone/their-vit" in message and "fix:" in message and "weights=" in message


def test_resampled_weights_warn_with_the_sizes(tmp_path, tiny_state):
    save_file(tiny_state, tmp_path / "w.safetensors")
    with pytest.warns(UserWarning, match=r"patch size 8x8 -> 4x4; position grid 4x4 -> 8x8 \(input 32x32 px\)"):
        xaikit.load_model("vit_tiny_patch16_224", weights=tmp_path / "w.safetensors", **{**TINY, "patch_size": 4})


# -- 5. global pooling --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gae", "rollout", "raw_attention"])
def test_class_token_methods_refuse_heads_that_do_not_read_it(method):
    model = small_vit("plain", global_pool="avg")
    assert model.cls_token is not None
    with pytest.raises(InvalidParameterError, match=r"global_pool='avg'.*global_pool='token'"):
        xaikit.explain(model, torch.randn(1, 3, 64, 64), method)


# -- 6. non-finite pixels -----------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 2])
def test_non_finite_images_are_refused_by_index(model, images, batch_size):
    bad = images.clone()
    bad[1, 0, 3, 3] = float("nan")
    bad[3, 2, 0, 0] = float("inf")
    with pytest.raises(InvalidParameterError, match="images 1, 3 contain NaN or infinite pixels"):
        xaikit.explain(model, bad, "rollout", batch_size=batch_size)


# -- 7. targets, inference mode, upsample sizes -------------------------------------------
@pytest.mark.parametrize(
    "targets, message",
    [
        ("cat", r"got the string 'cat'.*class_names\.index\('cat'\)"),
        ({0: 1}, "got a dict, which has no image order"),
        ({1, 2}, "got a set, which has no image order"),
        ([[0, 1], [2]], "got list"),
        (["a", "b", "c", "d"], "dtype <U1"),
    ],
)
@pytest.mark.parametrize("method", ["gae", "rollout"])
def test_targets_of_the_wrong_type(model, images, targets, message, method):
    with pytest.raises(InvalidParameterError, match=message):
        xaikit.explain(model, images, method, targets=targets)


def test_non_differentiable_target_callable(model, images):
    with pytest.raises(InvalidParameterError, match="do not depend differentiably on the logits.*logits\\[:, k\\]"):
        xaikit.explain(model, images, "gae", targets=lambda logits: logits.argmax(1).float())


def test_inference_mode_is_refused_and_no_grad_works(model, images):
    expected = xaikit.explain(model, images, "gae")
    with torch.inference_mode():
        with pytest.raises(InvalidParameterError, match=r"outside the torch.inference_mode\(\) block"):
            xaikit.explain(model, images, "gae")
        inference_images = images.clone()
    torch.testing.assert_close(xaikit.explain(model, inference_images, "gae"), expected)
    with torch.no_grad():
        torch.testing.assert_close(xaikit.explain(model, images, "gae"), expected)


def test_upsample_sizes():
    maps = torch.rand(2, 4, 4)
    assert xaikit.upsample(maps, np.int64(8)).shape == (2, 8, 8)
    assert xaikit.upsample(maps, (np.int32(8), 12)).shape == (2, 8, 12)
    assert xaikit.upsample(maps, torch.Size([6, 6])).shape == (2, 6, 6)
    for bad in (32.0, True, (8,), (8, 0), (8.0, 8), "32"):
        with pytest.raises(InvalidParameterError, match="size must be a positive int or a pair of positive ints"):
            xaikit.upsample(maps, bad)


# -- 8. hybrid ViTs, integer settings, n_images -------------------------------------------
def test_hybrid_vit_is_refused():
    hybrid = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=64, depth=1, num_classes=3)
    with pytest.raises(UnsupportedModelError, match="HybridEmbed .*CNN backbone.*plain ViT") as info:
        xaikit.explain(hybrid, torch.randn(1, 3, 64, 64), "rollout")
    assert "64" not in str(info.value)


def test_integer_settings_accept_numpy_ints_and_refuse_bools(model, images):
    torch.testing.assert_close(
        xaikit.explain(model, images, "raw_attention", layer=np.int64(0)), xaikit.explain(model, images, "raw_attention", layer=0)
    )
    torch.testing.assert_close(
        xaikit.explain(model, images, "rollout", start_layer=np.int32(1), batch_size=np.int64(3)),
        xaikit.explain(model, images, "rollout", start_layer=1),
    )
    with pytest.raises(InvalidParameterError, match="layer of method 'raw_attention' must be an int; got the bool True"):
        xaikit.explain(model, images, "raw_attention", layer=True)
    with pytest.raises(InvalidParameterError, match="batch_size must be a positive int"):
        xaikit.explain(model, images, "rollout", batch_size=True)


@pytest.mark.parametrize("source", ["shapes", "cifar10", "imagenet"])
def test_load_examples_reports_the_n_it_was_given(source):
    # The notebooks call load_examples(config.data, config.n_images, seed=2).
    for n in (-3, True, 2.0):
        with pytest.raises(InvalidParameterError, match=rf"n to be a non-negative int.*n_images.*got {n!r}$"):
            load_examples(source, n, seed=2)


def test_load_examples_accepts_numpy_ints():
    examples = load_examples("shapes", np.int64(3), seed=np.int64(2))
    assert len(examples) == 3 and examples.images.shape[0] == 3


def test_method_constructors_accept_numpy_ints_and_refuse_bools():
    from xaikit.methods.raw_attention import RawAttention
    from xaikit.methods.rollout import Rollout

    model = small_vit()
    assert RawAttention(model, layer=np.int64(1)).layer == 1
    assert Rollout(model, start_layer=np.int64(1)).start_layer == 1
    with pytest.raises(InvalidParameterError, match="bool"):
        RawAttention(model, layer=True)
    with pytest.raises(InvalidParameterError, match="bool"):
        Rollout(model, start_layer=True)
