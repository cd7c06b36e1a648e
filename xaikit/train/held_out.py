"""A demo model's held-out score measured again, beside its card's (Foundations 2 re-measures every shipped card)."""

from __future__ import annotations

from ..demo_models import model_card
from ..errors import InvalidParameterError
from .datasets import DATASETS
from .evaluation import accuracy, both_top, mean_squared_errors, predict, standardise
from .recipes import RECIPES

__all__ = ["held_out_score"]


def held_out_score(model, name: str, n_images: int) -> dict[str, object]:
    """Demo model `name`'s held-out score measured again on the first `n_images` of its recipe's test split
    (the split its card was scored on), beside the card's value: the card's own measure (top-1 accuracy,
    both objects top-2, or standardised MSE) in percent or MSE units."""
    if name not in RECIPES:
        raise InvalidParameterError(f"{name!r} has no recipe in xaikit.train.RECIPES, so its test split is unknown; "
                                    f"name one of {', '.join(RECIPES)}")
    recipe, card = RECIPES[name], model_card(name)
    test = DATASETS[recipe.data]("test", **{**recipe.data_kwargs, "n_test": n_images})
    if recipe.task == "regression":
        mean, std = (card["targets"][key] for key in ("mean", "std"))
        value = float(mean_squared_errors(model, test.images, standardise(test.labels, mean, std)).mean())
        return {"measure": "MSE (standardised targets)", "re-measured": value, "card": card["test_mse"]}
    if recipe.task == "multilabel":
        value = float(both_top(predict(model, test.images), test.labels).mean())
        return {"measure": "both objects top-2 (%)", "re-measured": 100 * value, "card": 100 * card["test_both_top"]}
    return {"measure": "top-1 accuracy (%)", "re-measured": 100 * accuracy(model, test.images, test.labels),
            "card": 100 * card["test_accuracy"]}
