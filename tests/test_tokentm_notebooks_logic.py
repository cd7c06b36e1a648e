"""xaikit.experiments.tokentm_maps: the logic behind the TokenTM chapter's Fig. 1, Fig. 4 and Table 1 pages."""

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit
from conftest import small_vit
from xaikit.errors import InvalidParameterError
from xaikit.experiments import tokentm_maps
from xaikit.experiments.tokentm_maps import (
    BlockWeights,
    block_weights,
    decomposition_maps,
    first_place_verdict,
    ordinal,
    rank_correlation,
    ranking_against_paper,
    segmentation_table,
    transformation_flow,
)
from xaikit.introspection import ViTRecorder
from xaikit.protocols import Segmentation


@pytest.fixture(scope="module")
def vit():
    return small_vit("plain")  # 64 x 64 pixels, 4 x 4 tokens, 2 blocks, 3 heads


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(5, 3, 64, 64)


def naive_weights(model, images):
    """The paper's formulas written out token by token (reference-spec 3.2), with the per-head
    transformed tokens formed explicitly: Ẽ^h = v^h W_proj[:, h]ᵀ, W^h = L(Ẽ^h)/L(E) ⊙ softmax(cos(E, Ẽ^h))."""
    with ViTRecorder(model) as recorder, torch.no_grad():
        model(images)
    attention, mhsa, ffn = [], [], []
    for record, block in zip(recorder.blocks, model.blocks):
        E = record.input
        heads, head_dim = record.values.shape[1], record.values.shape[-1]
        per_head = []
        for h in range(heads):
            W_h = block.attn.proj.weight[:, h * head_dim : (h + 1) * head_dim]  # (D, d_h)
            transformed = record.values[:, h] @ W_h.t()  # (B, N, D)
            ratio = transformed.norm(dim=-1) / E.norm(dim=-1)
            cosine = torch.nn.functional.cosine_similarity(E, transformed, dim=-1)
            per_head.append(ratio * cosine.softmax(dim=-1))
        mhsa.append(torch.stack(per_head, 1).mean(1)[:, 1:])
        E2 = E + record.attn_out
        transformed = block.mlp(block.norm2(E2))
        ffn.append((transformed.norm(dim=-1) / E2.norm(dim=-1) * torch.nn.functional.cosine_similarity(E2, transformed, dim=-1).softmax(-1))[:, 1:])
        attention.append(record.attn.mean(1)[:, 0, 1:])
    lengths = recorder.blocks[0].input.norm(dim=-1)[:, 1:]
    return [torch.stack(x, 1) for x in (attention, mhsa, ffn)], lengths


def test_block_weights_are_the_papers_attention_and_transformation_weights(vit, images):
    weights = block_weights(vit, images)
    (attention, mhsa, ffn), lengths = naive_weights(vit, images)
    assert weights.attention.shape == (5, 2, 4, 4) and weights.input_lengths.shape == (5, 4, 4)
    torch.testing.assert_close(weights.attention.flatten(2), attention, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weights.mhsa_transformation.flatten(2), mhsa, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(weights.ffn_transformation.flatten(2), ffn, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(weights.input_lengths.flatten(1), lengths)
    # the class token's attention rows sum to one over all tokens, so the patches get less than one
    assert bool((weights.attention.flatten(2).sum(-1) < 1).all())


def test_block_weights_follow_tokentm_settings_and_refuse_variants_without_weights(vit, images):
    full = block_weights(vit, images[:2])
    no_necc = block_weights(vit, images[:2], variant="af_l")
    assert not torch.allclose(full.mhsa_transformation, no_necc.mhsa_transformation)
    torch.testing.assert_close(full.attention, no_necc.attention)  # attention does not depend on W
    with pytest.raises(InvalidParameterError, match="no transformation weights"):
        block_weights(vit, images[:2], variant="af")
    with pytest.raises(InvalidParameterError, match="necc_domain"):
        block_weights(vit, images[:2], necc_domain="everything")


def test_transformation_flow_is_the_product_of_the_diagonal_updates():
    ones = torch.ones(1, 3, 1, 2)
    weights = BlockWeights(
        attention=ones,
        mhsa_transformation=torch.tensor([0.5, 1.0, 0.0]).reshape(1, 3, 1, 1) * ones,
        ffn_transformation=torch.tensor([1.0, 0.0, 3.0]).reshape(1, 3, 1, 1) * ones,
        input_lengths=torch.tensor([[[2.0, 3.0]]]),
    )
    # (1 + 0.5)(1 + 1) * (1 + 1)(1 + 0) * (1 + 0)(1 + 3) = 3 * 2 * 4 = 24, times the input length
    torch.testing.assert_close(transformation_flow(weights), torch.tensor([[[48.0, 72.0]]]))
    torch.testing.assert_close(transformation_flow(weights, depth=2), torch.tensor([[[12.0, 18.0]]]))
    for bad in (0, 4, True, 1.5):
        with pytest.raises(InvalidParameterError, match="depth"):
            transformation_flow(weights, depth=bad)


def test_decomposition_maps_are_the_attention_flow_the_transformation_flow_and_tokentm(vit, images):
    maps = decomposition_maps(vit, images, batch_size=2)
    assert list(maps) == ["attention weights", "transformation weights", "TokenTM"]
    torch.testing.assert_close(maps["attention weights"], xaikit.explain(vit, images, "tokentm", variant="af"))
    torch.testing.assert_close(maps["TokenTM"], xaikit.explain(vit, images, "tokentm"))
    torch.testing.assert_close(maps["transformation weights"], transformation_flow(block_weights(vit, images)))
    shallow = decomposition_maps(vit, images[:2], depth=1)
    torch.testing.assert_close(shallow["transformation weights"], transformation_flow(block_weights(vit, images[:2]), 1))
    torch.testing.assert_close(shallow["TokenTM"], xaikit.explain(vit, images[:2], "tokentm", depth=1))
    with pytest.raises(InvalidParameterError, match="leave variant out"):
        decomposition_maps(vit, images, variant="af")


def test_rank_correlation_per_map():
    maps = torch.arange(12.0).reshape(3, 2, 2)
    other = torch.stack([maps[0], -maps[1], torch.zeros(2, 2)])
    np.testing.assert_allclose(rank_correlation(maps, other).numpy(), [1.0, -1.0, np.nan])
    with pytest.raises(InvalidParameterError):
        rank_correlation(maps, maps[:, :1])


def square_masks(count: int, size: int = 64) -> torch.Tensor:
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for i in range(count):
        masks[i, 8 + 4 * i : 40 + 2 * i, 16 : 48 - 3 * i] = 1
    return masks


METHODS = {"GAE": ("gae", {}), "Rollout": ("rollout", {"start_layer": 1}), "LRP": ("lrp", {}), "Random": ("random", {})}


def test_segmentation_table_pools_the_protocol_over_batches(vit, images, monkeypatch):
    masks = square_masks(len(images))
    calls = []
    explain = xaikit.explain

    def counting_explain(model, batch, method, targets=None, **kwargs):
        calls.append((method, len(batch), kwargs.get("batch_size")))
        return explain(model, batch, method, targets, **kwargs)

    monkeypatch.setattr(xaikit, "explain", counting_explain)
    table = segmentation_table(vit, [(images[:3], masks[:3]), (images[3:], masks[3:])], METHODS, batch_size=2)
    # one explain per method per batch, with the batch size passed on
    assert calls == [(m, n, 2) for n in (3, 2) for m in ("gae", "rollout", "lrp", "random")]
    assert list(table.index) == list(METHODS) and table.index.name == "method"
    assert list(table.columns[:3]) == ["pixel accuracy", "mAP", "mIoU"]
    assert (table["images"] == 5).all() and (table["degenerate maps"] == 0).all()
    assert (table["seconds per image"] > 0).all()
    for label, (method, settings) in METHODS.items():
        whole = Segmentation()(explain(vit, images, method, **settings), masks).summary()
        # pooled over two batches = the protocol on all images at once (random: the stream continues per call)
        if label != "Random":
            assert table.loc[label, "pixel accuracy"] == pytest.approx(whole["pixel_accuracy"])
            assert table.loc[label, "mIoU"] == pytest.approx(whole["miou"])
            assert table.loc[label, "mAP"] == pytest.approx(whole["mean_ap"])
    assert ((table[["pixel accuracy", "mAP", "mIoU"]] >= 0) & (table[["pixel accuracy", "mAP", "mIoU"]] <= 100)).all().all()


def test_segmentation_table_reads_segmentation_batches_and_a_generator(vit, images):
    from xaikit.data.imagenet_seg import SegmentationBatch

    masks = square_masks(len(images))
    batches = (SegmentationBatch(images[i : i + 2], masks[i : i + 2], np.arange(i, min(i + 2, 5))) for i in range(0, 5, 2))
    table = segmentation_table(vit, batches, {"GAE": ("gae", {})})
    whole = Segmentation()(xaikit.explain(vit, images, "gae"), masks).summary()
    assert table.loc["GAE", "mIoU"] == pytest.approx(whole["miou"]) and table.loc["GAE", "images"] == 5


def test_segmentation_table_refuses_bad_input(vit, images):
    masks = square_masks(2)
    batch = [(images[:2], masks)]
    with pytest.raises(InvalidParameterError, match="non-empty dict"):
        segmentation_table(vit, batch, {})
    with pytest.raises(InvalidParameterError, match=r"methods\['GAE'\] must be"):
        segmentation_table(vit, batch, {"GAE": "gae"})
    with pytest.raises(InvalidParameterError, match="unknown method"):
        segmentation_table(vit, batch, {"X": ("no_such_method", {})})
    with pytest.raises(InvalidParameterError, match="yielded no images"):
        segmentation_table(vit, [], METHODS)
    with pytest.raises(InvalidParameterError, match="3 images but 2 masks"):
        segmentation_table(vit, [(images[:3], masks)], METHODS)
    with pytest.raises(InvalidParameterError, match=r"\(images, masks\)"):
        segmentation_table(vit, [images[:2]], METHODS)


def test_ranking_against_paper_names_the_rows_ranked_differently():
    paper = pd.DataFrame({"acc": [90.0, 80.0, 70.0, 60.0], "err": [1.0, 2.0, 3.0, 4.0]}, index=["a", "b", "c", "d"])
    ours = pd.DataFrame({"acc": [50.0, 70.0, 40.0, 30.0, 99.0], "err": [1.0, 2.0, 3.0, 4.0, 0.0]}, index=["a", "b", "c", "d", "new"])
    table = ranking_against_paper(ours, paper, ["acc", "err"], higher_is_better={"acc": True, "err": False})
    assert list(table.index) == ["acc", "err"]
    acc = table.loc["acc"]
    assert acc["methods"] == 4 and acc["pairs ordered differently"] == 1  # b above a here
    assert acc["tau"] == pytest.approx(4 / 6)
    assert acc["best here"] == "b" and acc["best in the paper"] == "a"
    assert acc["ranked differently"] == "b (ours 1, paper 2), a (ours 2, paper 1)"
    err = table.loc["err"]
    assert err["tau"] == pytest.approx(1.0) and err["ranked differently"] == "none" and err["best here"] == "a"
    with pytest.raises(InvalidParameterError, match="not a column"):
        ranking_against_paper(ours, paper, ["mIoU"])


def test_segmentation_metrics_are_table_ones_columns():
    from xaikit.experiments.tokentm import paper_table1

    assert list(tokentm_maps.SEGMENTATION_METRICS) == list(paper_table1().columns)


def test_ordinal():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"
    ]


def test_first_place_verdict_is_derived_from_the_ranks():
    paper = pd.DataFrame({"x": [3.0, 2.0, 1.0], "y": [3.0, 2.0, 1.0], "z": [1.0, 2.0, 3.0]}, index=["T", "a", "b"])
    ours = pd.DataFrame({"x": [9.0, 1.0, 5.0, 2.0], "y": [1.0, 2.0, 5.0, 3.0], "z": [4.0, 4.0, 0.0, 1.0]},
                        index=["T", "a", "b", "new"])
    # z: T ties a for the best value, so it shares first place
    assert first_place_verdict(ours, paper, ["x", "y", "z"], "T") == (
        "Of the 4 methods here, T ranks first on x and z only (1st on x, 4th on y, 1st on z); "
        "in the paper it ranks first on x and y only"
    )
    assert first_place_verdict(ours, paper, ["x"], "T") == "Of the 4 methods here, T ranks first on x; in the paper it ranks first on x"
    assert first_place_verdict(ours, paper, ["y", "x", "z"], "b") == (
        "Of the 4 methods here, b ranks first on y only (1st on y, 2nd on x, 4th on z); in the paper it ranks first on z only"
    )
    assert first_place_verdict(ours, paper, ["x", "y"], "a") == (
        "Of the 4 methods here, a ranks first on none of the metrics (4th on x, 3rd on y); "
        "in the paper it ranks first on none of the metrics"
    )
    assert first_place_verdict(paper, paper, ["x", "y"], "T") == (
        "Of the 3 methods here, T ranks first on both metrics; in the paper it ranks first on both metrics"
    )
    assert first_place_verdict(ours, paper, ["x", "y"], "T", higher_is_better=False).endswith("first on none of the metrics")
    with pytest.raises(InvalidParameterError, match="not a row of the paper's table"):
        first_place_verdict(ours, paper, ["x"], "new")
    with pytest.raises(InvalidParameterError, match="no column 'w'"):
        first_place_verdict(ours, paper, ["w"], "T")
