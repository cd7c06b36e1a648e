"""The TokenTM chapter's batched tables: perturbation AUC per method, explained class and order,
AOPC/LOdds, segmentation, Kendall's tau per column, depths of Table 7, the fine-tuned CIFAR weights."""

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit
from xaikit.errors import InvalidParameterError, WeightsUnavailableError
from xaikit.experiments import perturbation_tables as pt
from xaikit.experiments.tokentm import paper_perturbation
from xaikit.protocols import Perturbation, PerturbationEngine, Segmentation

from conftest import small_vit

STEPS = 9  # perturbed shares 0.1 .. 0.9 (share 0 is the clean image)


@pytest.fixture(scope="module")
def vit():
    return small_vit("plain", img_size=32)  # 32x32 images, 2x2 tokens, 7 classes


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def predicted_of(model, images):
    with torch.no_grad():
        return model(images).argmax(1)


def test_class_independent_maps_are_not_forwarded_twice(vit, images):
    """Raw attention and random maps are the same for both classes: each (map, order) is forwarded once."""
    labels = (predicted_of(vit, images) + 1) % 7  # every image misclassified
    methods = {"Raw Att.": ("raw_attention", {}), "Random": ("random", {})}
    run = pt.run_perturbation(vit, images, labels, methods, batch_size=16)
    assert run.forwarded == len(images) * (1 + len(methods) * 2 * STEPS)  # clean + methods x orders x steps
    for label in methods:
        assert torch.equal(run.maps[(label, "predicted")], run.maps[(label, "target")])
        for order in pt.ORDERS:
            assert torch.equal(run.results[(label, "predicted", order)].correct, run.results[(label, "target", order)].correct)


def test_target_maps_are_explained_only_where_the_label_is_not_the_prediction(vit, images):
    predicted = predicted_of(vit, images)
    labels = predicted.clone()
    labels[[1, 4]] = (predicted[[1, 4]] + 3) % 7
    run = pt.run_perturbation(vit, images, labels, {"GAE": ("gae", {})}, orders=("positive",), batch_size=64)
    target = run.maps[("GAE", "target")]
    assert torch.equal(target[[0, 2, 3, 5]], run.maps[("GAE", "predicted")][[0, 2, 3, 5]])
    expected = xaikit.explain(vit, images[[1, 4]], "gae", targets=labels[[1, 4]])
    torch.testing.assert_close(target[[1, 4]], expected.cpu())
    assert not torch.allclose(target[[1, 4]], run.maps[("GAE", "predicted")][[1, 4]])
    # only the two images whose maps differ are forwarded again
    assert run.forwarded == len(images) * (1 + STEPS) + 2 * STEPS


def test_table_equals_the_protocol_run_on_the_same_maps(vit, images):
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    methods = {"TokenTM": ("tokentm", {}), "Rollout": ("rollout", {"start_layer": 1})}
    run = pt.run_perturbation(vit, images, labels, methods, explained=("target",), batch_size=8)
    table = run.table().set_index(["method", "explained", "order"])
    assert len(table) == 4 and set(table.index.get_level_values("explained")) == {"target"}
    for label, (method, settings) in methods.items():
        maps = xaikit.explain(vit, images, method, targets=labels, **settings)
        for order in pt.ORDERS:
            direct = Perturbation(vit, order=order)(images, labels, maps)
            assert table.loc[(label, "target", order), "auc"] == pytest.approx(direct.auc)
            assert table.loc[(label, "target", order), "lodds"] == pytest.approx(direct.lodds)
            assert table.loc[(label, "target", order), "auc_sem"] == pytest.approx(
                direct.auc_per_image.std().item() / np.sqrt(len(images))
            )
    curves = run.curves()
    assert len(curves) == 4 * 10 and set(curves.columns) >= {"fraction", "accuracy", "probability"}


def constant_vit():
    """A ViT that predicts class 2 whatever the image: its head reads nothing, and its bias favours class 2."""
    model = small_vit("plain", img_size=32)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]))
    return model


def test_known_answers_on_a_model_that_never_changes_its_mind(images):
    """Accuracy stays at the share of labels equal to 2 at every step: AUC = 90 x that share, AOPC = LOdds = 0."""
    model = constant_vit()
    labels = torch.tensor([2, 2, 0, 1, 2, 3])
    table = pt.perturbation_table(model, images, labels, {"Random": ("random", {}), "GAE": ("gae", {})}, batch_size=32)
    assert table["auc"].to_numpy() == pytest.approx(90 * 0.5)
    assert table["aopc"].to_numpy() == pytest.approx(0.0, abs=1e-6) and table["lodds"].to_numpy() == pytest.approx(0.0, abs=1e-6)
    assert (table["clean_accuracy"] == 0.5).all() and (table["images"] == 6).all()
    table5 = pt.aopc_lodds_table(model, images, {"Random": ("random", {})})
    assert list(table5.columns) == ["method", "AOPC", "AOPC_sem", "LOdds", "LOdds_sem", "images"]
    assert table5.loc[0, "AOPC"] == pytest.approx(0.0, abs=1e-6)


def test_aopc_lodds_table_is_the_positive_test_of_the_predicted_class(vit, images):
    engine = PerturbationEngine(vit, batch_size=64)
    table = pt.aopc_lodds_table(vit, images, {"GAE": ("gae", {})}, engine=engine).set_index("method")
    maps = xaikit.explain(vit, images, "gae", targets=predicted_of(vit, images))
    direct = Perturbation(vit, order="positive", engine=engine)(images, predicted_of(vit, images), maps)
    assert table.loc["GAE", "AOPC"] == pytest.approx(direct.aopc) and table.loc["GAE", "LOdds"] == pytest.approx(direct.lodds)


def test_segmentation_table_pools_like_the_protocol(vit, images):
    masks = torch.zeros(6, 32, 32, dtype=torch.long)
    masks[:, 8:24, 4:20] = 1
    table = pt.segmentation_table(vit, images, masks, {"GAE": ("gae", {}), "Random": ("random", {})}).set_index("method")
    direct = Segmentation()(xaikit.explain(vit, images, "gae"), masks).summary()
    assert table.loc["GAE", "pixel accuracy"] == pytest.approx(direct["pixel_accuracy"])
    assert table.loc["GAE", "mIoU"] == pytest.approx(direct["miou"]) and table.loc["GAE", "mAP"] == pytest.approx(direct["mean_ap"])
    assert (table["images"] == 6).all()


def test_auc_columns_and_the_papers_columns_line_up():
    table = pd.DataFrame(
        [{"method": m, "explained": e, "order": o, "auc": value}
         for m, base in (("B", 10.0), ("A", 20.0)) for e in ("predicted", "target") for o, value in (("positive", base), ("negative", base + 1))]
    )
    wide = pt.auc_columns(table)
    assert list(wide.index) == ["B", "A"]  # the table's order
    assert list(wide.columns) == ["pred negative", "pred positive", "GT negative", "GT positive"]  # the paper's order
    assert wide.loc["A", "GT negative"] == 21.0
    paper = pt.paper_auc_columns("CIFAR-10")
    assert paper.loc["TokenTM", "pred negative"] == 74.90 and paper.loc["TokenTM", "GT positive"] == 36.48
    assert paper.loc["GAE", "pred positive"] == paper_perturbation().loc[("GAE", "CIFAR-10", "pred"), "positive"]
    assert list(paper.columns) == list(wide.columns)
    with pytest.raises(InvalidParameterError, match="CIFAR-10"):
        pt.paper_auc_columns("cifar10")


def test_agreement_table_names_the_rows_placed_differently():
    paper = pd.DataFrame({"pred negative": [3.0, 2.0, 1.0], "pred positive": [1.0, 2.0, 3.0]}, index=["a", "b", "c"])
    ours = pd.DataFrame({"pred negative": [3.0, 1.0, 2.0], "pred positive": [1.0, 2.0, 3.0]}, index=["a", "b", "c"])
    ours.loc["Random"] = [0.0, 9.0]  # not in the paper: not compared
    table = pt.agreement_table(ours, paper).set_index("column")
    assert table.loc["pred positive", "tau"] == pytest.approx(1.0)
    assert table.loc["pred positive", "rows placed differently"] == "none"
    assert table.loc["pred positive", "best here"] == "a"  # lower is better under positive perturbation
    assert table.loc["pred negative", "tau"] == pytest.approx(1 / 3)
    assert table.loc["pred negative", "rows placed differently"] == "b 3rd here, 2nd in the paper; c 2nd here, 3rd in the paper"
    assert table.loc["pred negative", "pairs ordered differently"] == "c > b"
    assert (table["methods"] == 3).all()
    with pytest.raises(InvalidParameterError, match="higher is better"):
        pt.agreement_table(ours.rename(columns={"pred positive": "odd"}), paper.rename(columns={"pred positive": "odd"}))


def test_rank_of_counts_from_the_best():
    scores = pd.Series({"a": 1.0, "b": 3.0, "c": 2.0})
    assert pt.rank_of(scores, "b", higher_is_better=True) == 1 and pt.rank_of(scores, "b", higher_is_better=False) == 3
    with pytest.raises(InvalidParameterError):
        pt.rank_of(scores, "z", higher_is_better=True)


def test_column_summary_ranks_and_finds_the_rows_at_the_floor():
    scores = pd.Series({"TokenTM": 30.0, "GAE": 20.0, "Bad": 40.0, "Tie": 35.0, "Random": 35.0})
    low = pt.column_summary(scores, higher_is_better=False)
    assert low["rank"] == 2 and low["rank_text"] == "2nd" and low["best"] == "GAE" and low["best_value"] == 20.0
    assert low["floor"] == 35.0 and low["not_better_than_floor"] == ["Bad", "Tie"]
    high = pt.column_summary(scores, higher_is_better=True)
    assert high["rank"] == 4 and high["best"] == "Bad" and high["not_better_than_floor"] == ["TokenTM", "GAE", "Tie"]  # a tie is no better
    with pytest.raises(InvalidParameterError, match="Random"):
        pt.column_summary(scores.drop("Random"), higher_is_better=True)


def test_ordinals_and_name_lists_for_the_text():
    assert [pt.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
    assert pt.join_names([]) == "none" and pt.join_names(["a"]) == "a" and pt.join_names(["a", "b", "c"]) == "a, b and c"


def test_aggregation_depths():
    assert pt.aggregation_depths(12) == [3, 6, 9, 12]  # the paper's Table 7 on ViT-B
    assert pt.aggregation_depths(6) == [2, 3, 5, 6]
    assert pt.aggregation_depths(4) == [1, 2, 3, 4]
    assert pt.aggregation_depths(2) == [1, 2]
    for bad in (0, 2.5, True):
        with pytest.raises(InvalidParameterError):
            pt.aggregation_depths(bad)


def test_cifar_weights_are_named_and_the_missing_file_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as caught:
        pt.cifar_deit_weights("cifar100")
    message = str(caught.value)
    for part in ("deit_base_patch16_224-cifar100.safetensors", "tokentm/06_cifar_finetune", "download", "$XAIKIT_WEIGHTS_DIR", str(tmp_path)):
        assert part in message
    (tmp_path / "deit_base_patch16_224-cifar10.safetensors").write_bytes(b"")
    assert pt.cifar_deit_weights("cifar10") == tmp_path / "deit_base_patch16_224-cifar10.safetensors"
    with pytest.raises(InvalidParameterError):
        pt.cifar_deit_weights("imagenet")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {}), "non-empty dict"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {"X": ("no_such_method", {})}), "unknown method"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {"X": "gae"}), "pair"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {"X": ("gae", {})}, explained=("top",)), "explained"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {"X": ("gae", {})}, orders=("positive", "positive")), "orders"),
        (lambda m, x: pt.run_perturbation(m, x, [0, 1, 2, 3, 4, 9], {"X": ("gae", {})}), r"\[0, 7\)"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 5, {"X": ("gae", {})}), "labels"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {"X": ("gae", {})}, batch_size=0), "batch_size"),
        (lambda m, x: pt.run_perturbation(m, x, [0] * 6, {"X": ("gae", {})}, engine=PerturbationEngine(small_vit("plain", img_size=32))), "another model"),
    ],
)
def test_bad_input_is_refused_clearly(vit, images, call, match):
    with pytest.raises(InvalidParameterError, match=match):
        call(vit, images)
