"""The facts `xaikit.methods.method_facts` reports (the "Methods at a glance" page's table) are what the methods do:
class-specific maps change with the explained class, signed maps go negative on a random model, the resolution is the
maps' shape; every method names its paper (floors excepted), and the papers' row labels agree with the chapters'
label tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import xaikit
from xaikit.errors import InvalidParameterError
from xaikit.experiments import cdam as cdam_experiment
from xaikit.experiments import tokentm as tokentm_experiment
from xaikit.methods import method_facts
from xaikit.methods import base
from xaikit.methods.base import Explainer
from xaikit.methods.facts import PAPERS, paper_name_column

from conftest import small_vit

METHODS = xaikit.list_methods()
#: fewer noise samples or path steps than the defaults: the facts do not depend on them, the test time does
QUICK = {"smooth_cdam": {"n_samples": 3}, "integrated_cdam": {"n_steps": 3}, "smoothgrad": {"n_samples": 3},
         "integrated_gradients": {"n_steps": 3}}
#: the methods that draw noise, given a generator seeded the same on every call (so only the class can differ)
NOISY = ("smooth_cdam", "smoothgrad")
#: chapter -> the experiment module whose METHODS table maps the paper's row labels to xaikit methods, and its paper table
LABEL_TABLES = {"tokentm": tokentm_experiment, "cdam": cdam_experiment}


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    return small_vit("plain", img_size=32, depth=2, embed_dim=48, num_heads=3), torch.randn(3, 3, 32, 32)


def explain(model, images, name, target):
    settings = dict(QUICK.get(name, {}))
    if name in NOISY:
        settings["generator"] = torch.Generator().manual_seed(0)
    return xaikit.explain(model, images, name, targets=target, **settings)


@pytest.fixture(scope="module")
def maps_for_two_classes(model_and_images):
    model, images = model_and_images
    return {name: (explain(model, images, name, 0), explain(model, images, name, 1)) for name in METHODS}


def test_the_table_has_one_row_per_registered_method_with_every_fact():
    facts = method_facts()
    assert list(facts.index) == METHODS and facts.index.name == "method"
    assert {"title", "class_specific", "signed", "resolution", "floor", "paper"} <= set(facts.columns)
    assert {paper_name_column(chapter) for chapter in PAPERS} <= set(facts.columns)
    assert facts["title"].map(lambda t: isinstance(t, str) and bool(t.strip())).all(), "every method has a title"
    assert set(facts["resolution"]) <= {"token grid", "pixels"}


@pytest.mark.parametrize("name", METHODS)
def test_class_specific_maps_change_with_the_class_and_the_others_do_not(name, maps_for_two_classes):
    first, second = maps_for_two_classes[name]
    changed = not torch.allclose(first, second, rtol=1e-5, atol=1e-7)
    assert changed == method_facts().loc[name, "class_specific"], (
        f"{name}: the maps of classes 0 and 1 {'differ' if changed else 'are the same'}"
    )


@pytest.mark.parametrize("name", METHODS)
def test_signed_maps_go_negative_on_a_random_model_and_unsigned_ones_never(name, maps_for_two_classes):
    lowest = min(float(m.min()) for m in maps_for_two_classes[name])
    assert (lowest < 0) == method_facts().loc[name, "signed"], f"{name}: the lowest value of its maps is {lowest}"


@pytest.mark.parametrize("name", METHODS)
def test_the_resolution_is_the_shape_of_the_maps(name, model_and_images, maps_for_two_classes):
    model, images = model_and_images
    maps = maps_for_two_classes[name][0]
    grid = (images.shape[0], *xaikit.introspection.token_grid(model, tuple(images.shape[-2:])))
    expected = {"token grid": grid, "pixels": (images.shape[0], *images.shape[-2:])}[method_facts().loc[name, "resolution"]]
    assert tuple(maps.shape) == expected


def test_every_method_names_its_paper_and_only_a_floor_has_none():
    facts = method_facts()
    for name, row in facts.iterrows():
        assert pd.isna(row["paper"]) == row["floor"], f"{name}: paper {row['paper']!r}, floor {row['floor']}"
        if row["floor"]:
            assert not row["class_specific"], f"{name}: a floor is blind to the model, so to the class too"


@pytest.mark.parametrize("chapter", sorted(LABEL_TABLES))
def test_the_papers_row_labels_agree_with_the_chapters_label_tables(chapter):
    """A name in a paper column is a row of that paper's table, and the chapter maps that row to this method; every
    row of the paper's table is named by its method's facts."""
    module = LABEL_TABLES[chapter]
    paper_rows = set(module.paper_table1().index.get_level_values("method"))
    column = method_facts()[paper_name_column(chapter)]
    named = column.dropna()
    for name, label in named.items():
        assert label in paper_rows, f"{name}: {label!r} is not a row of the {PAPERS[chapter]} paper's table"
        assert module.METHODS[label][0] == name, f"the {chapter} chapter runs {label!r} as {module.METHODS[label][0]!r}"
    assert paper_rows == set(named), f"rows of the {PAPERS[chapter]} paper no method names: {sorted(paper_rows - set(named))}"


def test_a_name_for_an_unknown_paper_is_refused(monkeypatch):
    class Stray(Explainer):
        name = "stray"
        title = "Stray"
        paper = "nobody2000"
        paper_names = {"mystery": "Stray"}

    monkeypatch.setitem(base._REGISTRY, Stray.name, Stray)
    with pytest.raises(InvalidParameterError, match="'mystery'.*'tokentm'"):
        method_facts(["stray"])
