"""The CDAM and Foundations pages after the reader's third report: rank cells that always carry their interval,
the methods that do not beat the stronger floor, the recipe table without a zero-epoch warm-up, the golden table's
target sets named by their classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from xaikit.errors import InvalidParameterError
from xaikit.experiments import cdam as ex
from xaikit.train import RECIPES, describe_recipe


def test_rank_text_prints_the_interval_also_when_it_collapses():
    assert ex.rank_text(4, 4, 4) == "4 [4–4]"
    assert ex.rank_text(3, 1, 6) == "3 [1–6]"
    assert ex.rank_text(2.5, 1, 4) == "2.5 [1–4]"


def test_below_strongest_floor_names_the_better_floor_and_the_rows_that_do_not_beat_it():
    n = 40
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, n)
    frame = pd.DataFrame({
        "Random": noise,                     # mean 0
        "Centre prior": 5 + noise,           # the stronger floor, mean 5
        "CDAM": 8 + rng.normal(0, 0.1, n),   # clearly above it
        "GradCAM": 5 + rng.normal(0, 0.1, n),  # level with it: not beaten
        "Rollout": 1 + noise,                # below it
    })
    floor, below = ex.below_strongest_floor({"A_box": frame}, "A_box")
    assert floor == "Centre prior"
    assert below == ["GradCAM", "Rollout"]
    # lower is better for A_MIF: the stronger floor is the one with the lower mean, and beating it means lower
    floor, below = ex.below_strongest_floor({"A_MIF": frame}, "A_MIF")
    assert floor == "Random"
    assert below == ["CDAM", "GradCAM", "Rollout"]  # all higher than the noise floor
    assert "Centre prior" not in below  # a floor is never listed among the methods


def test_below_strongest_floor_refuses_scores_without_a_floor():
    with pytest.raises(InvalidParameterError, match="no floor row"):
        ex.below_strongest_floor({"A_box": pd.DataFrame({"CDAM": [1.0, 2.0]})}, "A_box")


def test_describe_recipe_leaves_out_a_warm_up_of_zero_epochs():
    base = RECIPES["demo-cifar10-vit"]
    assert base.warmup_epochs > 0 and "linear warm-up over" in describe_recipe(base)["schedule"]
    schedule = describe_recipe(dataclasses.replace(base, warmup_epochs=0.0))["schedule"]
    assert "warm-up over" not in schedule and "no warm-up" in schedule and "cosine" in schedule


def test_golden_table_names_each_target_set_by_its_classes():
    errors = ex.golden_cdam_errors(precisions=("float32",))
    assert "target set" not in errors.columns
    sets = set(errors["classes explained"])
    assert "a concept" in sets
    class_sets = sets - {"a concept"}
    # two target sets per model, four images each: one class per image
    assert class_sets and all(len(entry.split(", ")) == 4 for entry in class_sets)
