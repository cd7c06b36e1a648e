"""The paper profile's code path of every ViTA notebook, end to end, on small files in the real formats.

The 17 ClickMe validation shards are written as TFRecords (`xaikit.data.clickme.write_records`: the real
framing, CRCs and ``tf.train.Example`` records of a 256 x 256 JPEG image, a 256 x 256 grey JPEG heatmap and
an ImageNet label), two or three records a shard, one of them a duplicate picture; ``$XAIKIT_CLICKME``
points at them. The paper's ViT-B/16 is swapped for timm's small test ViT with seeded random weights (1,000
classes, 160 x 160 inputs), through ``model_name`` and ``weights``. Each notebook must run to the end in the
``paper`` profile and write its tables, and 02 and 03 must record their verdicts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paper_fixtures import PAPER_STAND_INS, write_random_weights
from xaikit.data.clickme import NB_VAL_SHARDS, write_records
from xaikit.runner import NOTEBOOKS, run_notebook

REPO = Path(__file__).resolve().parents[1]
STAND_IN = PAPER_STAND_INS["vit"]
NOTEBOOK_NAMES = ["vita/01_astrocytic_layer", "vita/02_grid_search", "vita/03_human_alignment", "vita/04_every_explainer"]


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_clickme_shards(folder, *, seed: int = 0) -> list[int]:
    """val-0.tfrecords ... val-16.tfrecords: two records a shard (three in shard 0, whose third repeats its first
    picture with another heatmap), labels from 8 classes; returns the labels in record order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    first_picture = None
    for shard in range(NB_VAL_SHARDS):
        records = []
        for _ in range(2):
            picture = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            first_picture = picture if first_picture is None else first_picture
            heatmap = np.zeros((256, 256), np.uint8)
            top, left = rng.integers(0, 160, 2)
            heatmap[top:top + 96, left:left + 96] = 255
            label = int(rng.integers(0, 8))
            records.append({"image": _jpeg(picture), "heatmap": _jpeg(heatmap), "label": label})
            labels.append(label)
        if shard == 0:  # a duplicate: the same picture with another map
            records.append({"image": _jpeg(first_picture), "heatmap": _jpeg(np.full((256, 256), 128, np.uint8)),
                            "label": records[0]["label"]})
            labels.append(records[0]["label"])
        write_records(folder / f"val-{shard}.tfrecords", records)
    return labels


@pytest.fixture(scope="module")
def clickme_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vita-paper")
    labels = write_clickme_shards(root / "clickme")
    weights = write_random_weights(root / "weights" / "stand-in.safetensors", STAND_IN)
    env = {
        "XAIKIT_CLICKME": str(root / "clickme"),
        "XAIKIT_CACHE_DIR": str(root / "cache"),  # the shards' first-use hashes go here
        "XAIKIT_WEIGHTS_DIR": str(root / "weights"),
        "HF_ENDPOINT": "https://hub.invalid",  # RFC 2606: never resolves
        "HF_HUB_CACHE": str(root / "hf-cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),  # the kernels import this checkout's xaikit
    }
    return env, weights, labels


def parameters_of(name: str, weights) -> dict:
    model = {"model_name": STAND_IN, "weights": str(weights)}
    return {
        "vita/01_astrocytic_layer": {**model},
        "vita/02_grid_search": {**model, "grid": "smoke", "batch_size": 8},
        "vita/03_human_alignment": {**model, "grid": "smoke", "batch_size": 8},
        "vita/04_every_explainer": {**model, "n_images": 4, "n_steps": 2, "batch_size": 4},
    }[name]


def test_every_vita_notebook_is_covered():
    present = sorted(p.relative_to(NOTEBOOKS).with_suffix("").as_posix() for p in (NOTEBOOKS / "vita").glob("*.ipynb"))
    assert present == NOTEBOOK_NAMES


def test_the_fabricated_shards_give_vitas_kind_of_subset(clickme_files, monkeypatch):
    from xaikit.data.clickme import clickme_val_files, read_records, select_vita_subset

    env, _, labels = clickme_files
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.warns(UserWarning, match="trust on first use"):  # no published hashes: recorded on first use
        files = clickme_val_files()
    subset = select_vita_subset(record for path in files for record in read_records(path))
    assert subset.records == len(labels) and subset.duplicates == 1
    counts = np.bincount(np.asarray(labels[:2] + labels[3:]), minlength=8)  # the duplicate left out
    assert len(subset) == int(np.minimum(counts, 3).sum())


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_the_paper_profile_runs_on_small_real_format_shards(name, clickme_files, tmp_path, monkeypatch):
    env, weights, _ = clickme_files
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parameters = parameters_of(name, weights)
    run = run_notebook(name, "paper", source=NOTEBOOKS, output_dir=tmp_path, parameters=parameters, timeout_s=600)
    assert run.ok, f"{name} with {parameters}: {run.error[-3000:]}"
    chapter, notebook = name.split("/")
    results = tmp_path / "_run" / "results" / chapter
    tables = sorted(results.glob(f"{notebook}*.csv"))
    assert tables and all(len(t.read_text().splitlines()) >= 2 for t in tables), f"{name} wrote no tables with rows"
    record = json.loads((tmp_path / "_run" / "runs-paper.json").read_text())["notebooks"][name]
    assert record["ok"] and record["parameters"]["profile"] == "paper"
    expected = {"vita/02_grid_search": "Table 1", "vita/03_human_alignment": "Table 2"}.get(name)
    if expected:
        verdicts = json.loads((results / f"{notebook}-verdicts.json").read_text())
        assert list(verdicts) == [expected] and verdicts[expected]["profile"] == "paper"
