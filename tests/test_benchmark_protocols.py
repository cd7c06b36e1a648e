"""`xaikit.benchmark.protocols` (issue 16, section 2): every protocol on a tiny ViT, known answers, and the errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from xaikit.astrocytes import wrapped_blocks
from xaikit.benchmark._protocol_tools import randomised_cascade
from xaikit.benchmark.protocols import PROTOCOLS, BenchmarkProtocol, UnitData, get_protocol
from xaikit.errors import InvalidParameterError

from conftest import small_vit

N_IMAGES = 4
SIDE = 32
#: settings that keep the CDAM protocols at smoke size (few boxes; box sides that stay distinct at 32 px)
SMALL = {
    "box_sensitivity": {"n_boxes": 4, "sizes": [56, 112, 168]},
    "class_discrimination": {"n_boxes": 4, "sizes": [56, 112, 168], "step": 0.25},
    "fidelity": {"step": 0.25},
    "cost": {"repeats": 1},
}
METHODS = ("random", "raw_attention", "cdam")


@pytest.fixture(scope="module")
def model():
    return small_vit("plain", img_size=SIDE, patch_size=4)  # 8 x 8 tokens


def unit(model, method="raw_attention", **overrides) -> UnitData:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn((N_IMAGES, 3, SIDE, SIDE), generator=generator)
    masks = torch.zeros((N_IMAGES, SIDE, SIDE), dtype=torch.bool)
    masks[:, 8:24, 6:20] = True
    human = torch.nn.functional.avg_pool2d(torch.rand((N_IMAGES, 1, SIDE, SIDE), generator=generator), 5, 1, 2)[:, 0]
    labels = torch.tensor([0, 1, 2, 3])
    fields = dict(model=model, images=images, image_ids=[f"img{i}" for i in range(N_IMAGES)], labels=labels, masks=masks,
                  human=human, other_classes=(labels + 1) % 7, method=method, batch_size=3)
    return UnitData(**{**fields, **overrides})


# -- every protocol runs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_gives_finite_values_of_each_image(model, name, method):
    protocol = get_protocol(name, **SMALL.get(name, {}))
    values = protocol(unit(model, method))
    assert set(values) == set(protocol.metrics)
    for metric, array in values.items():
        assert array.dtype == np.float64
        assert array.shape == ((N_IMAGES,) if protocol.per_image else (1,)), metric
        assert np.isfinite(array).all(), (metric, array)


def test_the_registry_states_orientation_paper_and_json_settings():
    assert list(PROTOCOLS) == ["segmentation", "perturbation", "aopc_lodds", "fidelity", "box_sensitivity",
                               "class_discrimination", "compactness", "human_alignment", "randomisation", "pointing_game",
                               "cost"]
    for name, cls in PROTOCOLS.items():
        protocol = cls()
        assert protocol.name == name and issubclass(cls, BenchmarkProtocol)
        assert protocol.paper in ("TokenTM", "CDAM", "ViTA", "Adebayo et al. 2018", "common")
        assert protocol.metrics and all(isinstance(v, bool) for v in protocol.metrics.values())
        assert set(protocol.needs) <= {"labels", "masks", "human", "other_classes"}
        assert json.loads(json.dumps(protocol.settings())) == protocol.settings()
    assert get_protocol("perturbation").settings()["fractions"] == [i / 10 for i in range(10)]
    assert get_protocol("fidelity").settings()["sigma"] == 14.0
    assert get_protocol("box_sensitivity").settings()["n_boxes"] == 100
    assert get_protocol("compactness").settings()["threshold"] == 0.05
    assert get_protocol("segmentation", upsample_mode="nearest").settings()["upsample_mode"] == "nearest"


# -- known answers -----------------------------------------------------------------------------------------------------
def test_segmentation_per_image_values_are_the_hand_counts(model, monkeypatch):
    data = unit(model)
    maps = torch.zeros((N_IMAGES, 4, 4))
    maps[0, :2, :2] = 1.0  # foreground: the 4 top-left pixels (above the mean 0.25 after min-max)
    masks = torch.zeros((N_IMAGES, 4, 4), dtype=torch.bool)
    masks[:, :3, :3] = True  # 9 pixels
    data.masks = masks
    monkeypatch.setattr(data, "explain", lambda targets=None, model=None: maps)
    values = get_protocol("segmentation")(data)
    # image 0: 4 foreground right, 7 of 12 background right; IoU fg 4/9, bg 7/12
    assert values["pixel_accuracy"][0] == pytest.approx(11 / 16)
    assert values["miou"][0] == pytest.approx((4 / 9 + 7 / 12) / 2)
    assert values["map"][0] > 0.5
    # image 1: a constant map predicts background everywhere (the reference's rule): 7 of 16, IoU bg 7/16, fg 0, AP 1/2
    assert values["pixel_accuracy"][1] == pytest.approx(7 / 16)
    assert values["miou"][1] == pytest.approx(7 / 32)
    assert values["map"][1] == pytest.approx(0.5)


def test_per_image_means_equal_the_projects_aggregates(model):
    from xaikit.experiments.cdam import compactness_table, correctness
    from xaikit.experiments.perturbation_tables import aopc_lodds_table, perturbation_table
    from xaikit.protocols import Segmentation

    data = unit(model, "raw_attention")
    maps = data.explain(None)
    segmentation = get_protocol("segmentation")(data)
    pooled = Segmentation()(maps, data.masks.long())
    assert segmentation["pixel_accuracy"].mean() == pytest.approx(pooled.pixel_accuracy, rel=1e-12)  # equal pixel counts
    assert segmentation["map"].mean() == pytest.approx(pooled.mean_ap, rel=1e-12)

    perturbation = get_protocol("perturbation")(data)
    table = perturbation_table(model, data.images, data.labels, {"m": ("raw_attention", {})}).set_index(["explained", "order"])
    for explained, name in (("predicted", "predicted"), ("target", "label")):
        for order in ("positive", "negative"):
            assert perturbation[f"{order}_auc_{name}"].mean() == pytest.approx(table.loc[(explained, order), "auc"], rel=1e-12)

    aopc = get_protocol("aopc_lodds")(data)
    reference = aopc_lodds_table(model, data.images, {"m": ("raw_attention", {})}, labels=data.labels).iloc[0]
    assert aopc["aopc"].mean() == pytest.approx(reference["AOPC"], rel=1e-9)
    assert aopc["lodds"].mean() == pytest.approx(reference["LOdds"], rel=1e-9)

    fidelity = get_protocol("fidelity", step=0.25)(data)
    box = get_protocol("box_sensitivity", **SMALL["box_sensitivity"])(data)
    run = correctness(model, data.images, data.predicted(), {"m": maps}, fidelity={"step": 0.25},
                      box=SMALL["box_sensitivity"]).table().loc["m"]
    assert fidelity["a_lif_minus_mif"].mean() == pytest.approx(run["A_LIF-MIF"], rel=1e-9)
    assert box["a_box"].mean() == pytest.approx(run["A_box"], rel=1e-9)

    compact = get_protocol("compactness")(data)
    expected = compactness_table({"m": data.explain(data.labels)}).loc["m", "compactness"]
    assert compact["compactness"].mean() == pytest.approx(expected, rel=1e-12)


def test_human_alignment_spearman_is_scipys(model):
    from xaikit.imaging import upsample

    data = unit(model, "cdam")
    values = get_protocol("human_alignment")(data)
    pictures = upsample(data.explain(data.labels), SIDE)
    for i in range(N_IMAGES):
        expected = scipy.stats.spearmanr(pictures[i].flatten().numpy(), data.human[i].flatten().numpy()).statistic
        assert values["spearman"][i] == pytest.approx(expected, abs=1e-9)


def test_pointing_game_on_hand_made_maps(model, monkeypatch):
    data = unit(model)
    maps = torch.zeros((N_IMAGES, 8, 8))
    maps[:, 1, 1] = 1.0  # every map points at pixel (1, 1)
    masks = torch.zeros((N_IMAGES, 8, 8), dtype=torch.bool)
    masks[0, 0:3, 0:3] = True  # contains (1, 1): a hit
    masks[1, 5:8, 5:8] = True  # far away: a miss
    masks[2, 1, 3] = True      # 2 px to the right: a hit only within a 2 px tolerance
    masks[3, 3, 3] = True      # sqrt(8) = 2.83 px away: a miss at 2 px, a hit at 3 px
    data.masks = masks
    monkeypatch.setattr(data, "explain", lambda targets=None, model=None: maps)
    exact = get_protocol("pointing_game", tolerance=0.0)(data)["hit"]
    two = get_protocol("pointing_game", tolerance=2.0, reference_size=8)(data)["hit"]
    three = get_protocol("pointing_game", tolerance=3.0, reference_size=8)(data)["hit"]
    assert exact.tolist() == [1, 0, 0, 0]
    assert two.tolist() == [1, 0, 1, 0]
    assert three.tolist() == [1, 0, 1, 1]
    # the paper's 15 px at 224 px is 15 * 8 / 224 = 0.54 px on these masks: no neighbour is that close
    assert get_protocol("pointing_game")(data)["hit"].tolist() == [1, 0, 0, 0]


# -- the randomisation test ---------------------------------------------------------------------------------------------
def test_randomisation_cascades_from_the_top_on_a_copy(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    for name, randomised in randomised_cascade(model, seed=0, std=0.02):
        changed = {k for k, v in randomised.state_dict().items() if not torch.equal(v, before[k])}
        steps.append((name, {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "") for k in changed}))
    assert [name for name, _ in steps] == ["head", "blocks.1", "blocks.0"] == get_protocol("randomisation").steps(model)
    assert [changed for _, changed in steps] == [{"head"}, {"head", "blocks.1"}, {"head", "blocks.1", "blocks.0"}]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the given model is untouched


def test_randomisation_floors_come_out_as_expected(model):
    prior = get_protocol("randomisation")(unit(model, "centre_prior"))
    assert np.all(prior["rank_correlation_top"] == 1) and np.all(prior["rank_correlation_all"] == 1)
    assert np.all(prior["randomisation_sensitivity"] == 0)
    noise = get_protocol("randomisation")(unit(model, "random"))
    # independent uniform maps of 64 tokens: rho about 0 (sd 1/8 per image and step)
    assert abs(noise["rank_correlation_all"].mean()) < 0.2
    assert noise["randomisation_sensitivity"].mean() == pytest.approx(1.0, abs=0.15)


def test_randomisation_correlation_is_scipys_spearman(model):
    data = unit(model, "raw_attention")
    values = get_protocol("randomisation", absolute=False)(data)
    classes = data.predicted()
    trained = data.explain(classes)
    rho = []
    for step, (_, randomised) in enumerate(randomised_cascade(model, seed=0, std=0.02)):
        maps = data.compute(classes, randomised, draw=step + 1)
        rho.append([scipy.stats.spearmanr(trained[i].flatten(), maps[i].flatten()).statistic for i in range(N_IMAGES)])
    rho = np.array(rho)
    np.testing.assert_allclose(values["rank_correlation_top"], rho[1], atol=1e-9)
    np.testing.assert_allclose(values["rank_correlation_all"], rho[-1], atol=1e-9)
    np.testing.assert_allclose(values["randomisation_sensitivity"], 1 - rho.mean(0), atol=1e-9)


def test_randomisation_of_constant_maps_is_nan(model, monkeypatch):
    data = unit(model, "raw_attention")
    trained_compute = data.compute

    def constant_when_randomised(classes, model=None, *, draw=0):
        maps = trained_compute(classes, model, draw=draw)
        return maps if model is None or model is data.model else torch.ones_like(maps)

    monkeypatch.setattr(data, "compute", constant_when_randomised)
    values = get_protocol("randomisation")(data)
    assert all(np.isnan(v).all() for v in values.values())


# -- UnitData -----------------------------------------------------------------------------------------------------------
def test_explain_caches_per_classes_and_model(model):
    data = unit(model, "cdam")
    first = data.explain(None)
    assert data.explain(data.predicted()) is first  # None is the predicted class
    other = data.explain((data.predicted() + 1) % 7)
    assert other is not first and not torch.equal(other, first)
    assert first.shape == (N_IMAGES, 8, 8) and first.dtype == torch.float32 and first.device.type == "cpu"


def test_astrocytes_change_gradcam_maps_and_leave_the_model_plain(model):
    plain = unit(model, "gradcam").explain(None)
    astro = unit(model, "gradcam", astrocytes={"k": 6, "tau": 1, "phi": 0.0, "alpha": 1.5, "beta": 0.05}).explain(None)
    assert not torch.allclose(plain, astro)
    assert wrapped_blocks(model) == []
    assert torch.equal(unit(model, "gradcam").explain(None), plain)


def test_cost_is_one_value_for_the_unit(model):
    protocol = get_protocol("cost", repeats=1)
    assert protocol.per_image is False
    cost = protocol(unit(model, "cdam"))["relative_cost"]
    assert cost.shape == (1,) and 0 < cost[0] < math.inf


# -- errors name the fix -----------------------------------------------------------------------------------------------
def test_unknown_protocols_and_settings_name_the_valid_ones():
    with pytest.raises(InvalidParameterError, match="valid protocols are: segmentation, perturbation"):
        get_protocol("segmentations")
    with pytest.raises(InvalidParameterError, match=r"no setting 'n_box'.*n_boxes=100"):
        get_protocol("box_sensitivity", n_box=5)
    with pytest.raises(InvalidParameterError, match="strictly increasing|increasing"):
        get_protocol("perturbation", fractions=[0.5, 0.1])
    with pytest.raises(InvalidParameterError, match="explained_class.*'predicted'.*'label'"):
        get_protocol("segmentation", explained_class="target")
    with pytest.raises(InvalidParameterError, match="std of protocol 'randomisation'"):
        get_protocol("randomisation", std=0)
    with pytest.raises(InvalidParameterError, match="JSON"):
        get_protocol("fidelity", replacement=torch.zeros(3))


def test_missing_ground_truth_is_refused_with_the_fix(model):
    with pytest.raises(InvalidParameterError, match=r"'segmentation' needs masks.*UnitData.masks is None.*leave 'segmentation' out"):
        get_protocol("segmentation")(unit(model, masks=None))
    with pytest.raises(InvalidParameterError, match="needs labels and other_classes"):
        get_protocol("class_discrimination")(unit(model, labels=None, other_classes=None))
    assert get_protocol("compactness", explained_class="predicted").needs == ()


def test_unit_data_refuses_bad_input(model):
    with pytest.raises(InvalidParameterError, match="unknown method 'nope'; valid methods are"):
        unit(model, "nope")
    with pytest.raises(InvalidParameterError, match="3 image ids for 4 images"):
        unit(model, image_ids=["a", "b", "c"])
    with pytest.raises(InvalidParameterError, match="labels must hold one integer class per image"):
        unit(model, labels=torch.zeros(4))
    with pytest.raises(InvalidParameterError, match="astrocytes must be None.*k, tau, phi"):
        unit(model, astrocytes={"kappa": 1})
