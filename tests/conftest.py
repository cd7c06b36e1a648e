"""Shared fixtures: the reference models of tests/golden, small random timm ViTs, and one smoke run of
every notebook."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz") as data:
        return dict(data)


def build_golden_model(which: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Reference model A or B (see tests/golden/README.md) as a timm VisionTransformer."""
    config = json.loads((GOLDEN / "config.json").read_text())[f"model{which}"]
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=config["img_size"],
        patch_size=config["patch_size"],
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        qkv_bias=True,
        num_classes=config["num_classes"],
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()
    model.load_state_dict(load_file(str(GOLDEN / f"model_{which}.safetensors")), strict=True)
    return model.to(dtype)


@pytest.fixture(scope="session")
def golden_images() -> torch.Tensor:
    return torch.from_numpy(golden("inputs")["images"])


#: golden precision -> (dtype, file suffix, relative tolerance): float32 files below 1e-4, float64 below 1e-10
GOLDEN_PRECISION = {"f32": (torch.float32, "", 1e-4), "f64": (torch.float64, "_f64", 1e-10)}


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|."""
    ours = ours.detach().cpu().numpy().reshape(reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def golden_attribute(model, images, method, targets=None, **params):
    """The method's maps in the model's own dtype (float64 models give float64 maps)."""
    import xaikit

    return xaikit.get_method(method).create(model, **params).attribute(images.to(next(model.parameters()).dtype), targets)


@pytest.fixture(scope="module", params=sorted(GOLDEN_PRECISION))
def golden_setting(request, golden_images):
    """Both reference models, the images, the file suffix and the tolerance, once per precision."""
    dtype, suffix, tolerance = GOLDEN_PRECISION[request.param]
    models = {which: build_golden_model(which, dtype) for which in "AB"}
    return models, golden_images.to(dtype), suffix, tolerance


def small_vit(kind: str = "plain", **overrides) -> nn.Module:
    """Tiny random-weight timm ViTs covering the layouts xaikit must handle."""
    torch.manual_seed(0)
    presets = {
        "plain": ("vit_tiny_patch16_224", dict(img_size=64, depth=2)),
        "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2)),
        "registers": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, depth=2, embed_dim=96, num_heads=3)),
        "non_square": ("vit_tiny_patch16_224", dict(img_size=(48, 80), depth=2)),
        "dynamic": ("vit_tiny_patch16_224", dict(img_size=64, depth=2, dynamic_img_size=True)),
    }
    name, kwargs = presets[kind]
    kwargs = {"num_classes": 7, **kwargs, **overrides}
    return timm.create_model(name, pretrained=False, **kwargs).eval()


SMALL_VIT_KINDS = ("plain", "deit_distilled", "registers", "non_square")


def quiet(_message: str) -> None:
    """A training log that prints nothing."""


@pytest.fixture
def isolated_training(tmp_path, monkeypatch):
    """Own cache, weights folder and (unreachable) hub; one torch thread, as tests share the CPU."""
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XAIKIT_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def book_snapshot() -> dict[str, tuple[int, int]]:
    """What a run writes into book/ (executed notebooks, _run/), with sizes and modification times.

    The book's own pages are left out: someone may edit them while the tests run.
    """
    from xaikit.runner import BOOK

    written = [p for p in sorted(BOOK.rglob("*")) if p.suffix == ".ipynb" or "_run" in p.relative_to(BOOK).parts]
    return {p.relative_to(BOOK).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in written + [BOOK / "_run"] if p.exists()}


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Every notebook executed in the smoke profile into a temporary output folder (a copy of the book);
    the published book/ is left as it was. Session-wide: test_notebooks.py and test_reproducible_tables.py
    share this one run (minutes on a CPU)."""
    from xaikit.runner import run_notebooks

    work = tmp_path_factory.mktemp("smoke")
    before = book_snapshot()
    runs = run_notebooks("smoke", output_dir=work / "book", log=quiet)
    return work, runs, before, book_snapshot()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local two-CPU Ray cluster for the session (the ledger's 'ray' executor joins it); the ray module."""
    import ray  # installed by the dev extras (pip install -e '.[dev]'): a missing Ray fails, it does not skip
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()
