"""xaikit.report: the run-info output, the CSV copies of every table, rounded tables, golden errors."""

import os
from pathlib import Path

import pandas as pd
import pytest

from xaikit.errors import DataUnavailableError, InvalidParameterError
from xaikit.report import (
    RUN_INFO_MIME,
    golden_errors,
    long_table,
    plural,
    run_info,
    save_table,
    show_table,
    table_path,
)


@pytest.fixture
def displayed(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kwargs: shown.append((objs, kwargs)))
    return shown


def test_run_info_displays_one_raw_bundle_of_its_own_mime_type(displayed):
    run_info(["demo-cifar10-vit", "demo-shapes-vit"], data="cifar10", sample="4 images, seed 2")
    assert len(displayed) == 1
    (bundle,), kwargs = displayed[0]
    assert kwargs == {"raw": True}
    assert bundle == {RUN_INFO_MIME: {"models": ["demo-cifar10-vit", "demo-shapes-vit"], "data": "cifar10", "sample": "4 images, seed 2"}}


@pytest.mark.parametrize("models, data, sample", [("demo-cifar10-vit", "d", "s"), ([], "d", "s"), (["m"], "", "s"), (["m"], "d", 4)])
def test_run_info_refuses_bad_values(displayed, models, data, sample):
    with pytest.raises(InvalidParameterError):
        run_info(models, data, sample)
    assert displayed == []


def test_save_table_writes_under_the_run_dir_named_after_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(tmp_path / "_run"))
    monkeypatch.setenv("XAIKIT_NOTEBOOK", "foundations/03_attention_maps")
    scores = pd.DataFrame({"mass on object": [0.5, 0.25], "pointing game": [1.0, 0.123456789]},
                          index=pd.Index(["GAE", "rollout"], name="method"))
    path = save_table(long_table(scores, var_name="score"), "ground-truth")
    assert path == tmp_path / "_run" / "results" / "foundations" / "03_attention_maps-ground-truth.csv"
    back = pd.read_csv(path)
    assert list(back.columns) == ["method", "score", "value"] and len(back) == 4
    assert back.loc[(back.method == "rollout") & (back.score == "pointing game"), "value"].item() == 0.123456789  # full precision
    # the whole-page table has no suffix; a named index becomes a column
    path = save_table(scores)
    assert path.name == "03_attention_maps.csv" and pd.read_csv(path).columns[0] == "method"
    assert sorted(p.name for p in path.parent.iterdir()) == ["03_attention_maps-ground-truth.csv", "03_attention_maps.csv"]


def test_save_table_run_by_hand_uses_local_run_dir_and_explicit_name(tmp_path, monkeypatch):
    monkeypatch.delenv("XAIKIT_RUN_DIR", raising=False)
    monkeypatch.delenv("XAIKIT_NOTEBOOK", raising=False)
    monkeypatch.chdir(tmp_path)
    frame = pd.DataFrame({"a": [1, 2]})
    assert save_table(frame, "x", chapter_notebook="tokentm/02_segmentation") == \
        Path("_run/results/tokentm/02_segmentation-x.csv")
    assert (tmp_path / "_run/results/tokentm/02_segmentation-x.csv").is_file()
    assert save_table(frame) == Path("_run/results/notebook.csv")
    assert pd.read_csv(tmp_path / "_run/results/notebook.csv").columns.tolist() == ["a"]  # default index not written


def test_save_table_replaces_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(tmp_path))
    path = save_table(pd.DataFrame({"a": [1]}), "t", chapter_notebook="c/01_n")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    save_table(pd.DataFrame({"a": [2]}), "t", chapter_notebook="c/01_n")
    assert replaced and str(replaced[0][1]) == str(path) and str(replaced[0][0]) != str(path)
    assert pd.read_csv(path)["a"].tolist() == [2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["01_n-t.csv"]


@pytest.mark.parametrize("table, notebook", [("../x", "c/01_n"), ("a b", "c/01_n"), (None, "../../etc"), (None, "a/b/c")])
def test_bad_table_or_notebook_names_are_refused(table, notebook):
    with pytest.raises(InvalidParameterError):
        table_path(table, chapter_notebook=notebook)


def test_save_table_refuses_what_is_not_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(tmp_path))
    with pytest.raises(InvalidParameterError, match="DataFrame"):
        save_table({"a": 1}, "t", chapter_notebook="c/01_n")


def test_show_table_rounds_to_the_stated_precision_and_never_truncates():
    long_text = "a cell of text far longer than pandas' default column width of fifty characters " * 2
    frame = pd.DataFrame({"score": [0.123456, 2.0], "count": [3, 4], "note": [long_text, None]})
    html = show_table(frame, precision=2, caption="Scores.").to_html()
    assert "0.12" in html and "0.123" not in html and "2.00" in html
    assert ">3<" in html  # integers stay integers
    assert long_text.strip() in html and "..." not in html and "…" not in html
    assert "Scores." in html and "–" in html
    assert pd.get_option("display.max_colwidth") is None
    tiny = show_table(pd.DataFrame({"error": [5.8e-06]}), precision=1, scientific=True).to_html()
    assert "5.8e-06" in tiny
    with pytest.raises(InvalidParameterError):
        show_table(frame, precision=-1)


def test_plural():
    assert [plural(n, "thread") for n in (0, 1, 2)] == ["0 threads", "1 thread", "2 threads"]


def fake_golden(folder: Path) -> dict[str, float]:
    """A tiny golden set whose every reference is xaikit's own output scaled by its own (1 + eps)."""
    import json
    from functools import partial

    import numpy as np
    import timm
    import torch
    from safetensors.torch import save_file
    from torch import nn

    import xaikit

    folder.mkdir()
    sizes = {"A": dict(patch_size=16, embed_dim=24, depth=2, num_heads=2), "B": dict(patch_size=8, embed_dim=24, depth=1, num_heads=2)}
    config, models = {}, {}
    for which, size in sizes.items():
        config[f"model{which}"] = dict(img_size=32, mlp_ratio=2.0, num_classes=5, **size)
        torch.manual_seed(ord(which))
        models[which] = timm.models.vision_transformer.VisionTransformer(
            img_size=32, mlp_ratio=2.0, num_classes=5, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **size).eval()
        save_file(models[which].state_dict(), str(folder / f"model_{which}.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    images = torch.randn(2, 3, 32, 32)
    targets = np.array([[0, 1], [2, 3]])
    eps = {"raw_attn_last_layer": 1e-3, "attention_map_raw A": 2e-3, "attention_map_raw B": 3e-3, "rollout_start0": 4e-3,
           "rollout_start1": 5e-3, "gae A": 6e-3, "gae_raw B": 7e-3}

    def ours(which, method, **params):
        return xaikit.get_method(method).create(models[which], **params).attribute(images).flatten(1).numpy()

    def gae(which):
        return np.stack([xaikit.get_method("gae").create(models[which]).attribute(images, torch.from_numpy(targets[:, j])).flatten(1).numpy()
                         for j in range(2)], axis=1)

    for name, arrays in {
        "inputs": {"images": images.numpy()},
        "chefer_A": {"raw_attn_last_layer": ours("A", "raw_attention") * (1 + eps["raw_attn_last_layer"]),
                     "rollout_start0": ours("A", "rollout") * (1 + eps["rollout_start0"]),
                     "rollout_start1": ours("A", "rollout", start_layer=1) * (1 + eps["rollout_start1"]),
                     "gae": gae("A") * (1 + eps["gae A"]), "targets": targets},
        "cdam_A": {"attention_map_raw": ours("A", "raw_attention") * (1 + eps["attention_map_raw A"])},
        "cdam_B": {"attention_map_raw": ours("B", "raw_attention") * (1 + eps["attention_map_raw B"]),
                   "gae_raw": gae("B") * (1 + eps["gae_raw B"]), "targets": targets},
    }.items():
        np.savez(folder / f"{name}.npz", **arrays)
    return {key: value / (1 + value) for key, value in eps.items()}  # max|e x| / max|(1 + e) x|


def test_golden_errors_compare_each_method_with_its_reference(tmp_path):
    expected = fake_golden(tmp_path / "golden")
    errors = golden_errors(tmp_path / "golden", precisions=["float32"]).set_index(["method", "model", "reference"])["relative error"]
    measured = {
        "raw_attn_last_layer": errors["raw attention", "reference model A", "Chefer et al. (raw_attn_last_layer)"],
        "attention_map_raw A": errors["raw attention", "reference model A", "CDAM authors (attention_map_raw)"],
        "attention_map_raw B": errors["raw attention", "reference model B", "CDAM authors (attention_map_raw)"],
        "rollout_start0": errors["rollout", "reference model A", "Chefer et al. (start layer 0)"],
        "rollout_start1": errors["rollout", "reference model A", "Chefer et al. (start layer 1)"],
        "gae A": max(errors["GAE", "reference model A", f"Chefer et al. (target set {j})"] for j in (1, 2)),
        "gae_raw B": max(errors["GAE", "reference model B", f"CDAM authors (target set {j})"] for j in (1, 2)),
    }
    assert measured == pytest.approx(expected, rel=1e-3)
    assert len(errors) == 9


def test_golden_errors_say_what_is_missing(tmp_path):
    with pytest.raises(DataUnavailableError, match="tests/golden"):
        golden_errors(tmp_path)
    with pytest.raises(InvalidParameterError, match="float16"):
        golden_errors(precisions=["float16"])


def test_a_captioned_table_is_a_numbered_table_block_for_the_book_and_html_for_jupyter():
    import pandas as pd

    from xaikit.report import CaptionedTable
    from xaikit.viz import table_markdown

    frame = pd.DataFrame({"mIoU": [60.23, 52.8]}, index=pd.Index(["tokentm", "centre_prior"], name="method"))
    shown = show_table(frame, 1, caption="Segmentation\non the shapes.")
    assert isinstance(shown, CaptionedTable) and "<caption>Segmentation\non the shapes.</caption>" in shown._repr_html_()
    assert shown._repr_markdown_() == ("````{table} Segmentation on the shapes.\n\n| method | mIoU |\n|---|---|\n"
                                       "| tokentm | 60.2 |\n| centre\\_prior | 52.8 |\n````\n")
    assert table_markdown(shown) == table_markdown(show_table(frame, 1))  # glue_table takes it too
    assert shown.data is frame  # the rest is the Styler's
    wide = frame.set_axis(pd.MultiIndex.from_tuples([("seg", "mIoU")]), axis=1)
    assert show_table(wide, 1, caption="Two column levels.")._repr_markdown_() is None  # HTML only, unnumbered
