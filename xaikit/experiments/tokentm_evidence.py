"""Evidence for the TokenTM chapter's tables: intervals for every value and rank, identifiers, object focus.

* `league_table`: per-image scores of every row (rows images, columns row labels) -> each row's mean and rank
  with 95 % bootstrap intervals (`xaikit.stats.rank_intervals`), the row's identifier (`method`, the name
  `xaikit.explain` accepts, or the floor's identifier) and display name (`label`);
* `shown_league`: the same as the book prints it, ``"71.3 [69.8, 72.9]"`` and ``"2 [1, 4]"``;
* `method_identifier`: a row label -> the identifier the result CSVs use (`FLOORS` for the floors);
* `object_share`: how much of a map lies on the object, per image: the paper's "focused on the object"
  (Figs. 1 and 4) as a number that a paired test can compare.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from ..errors import InvalidParameterError
from ..stats import format_interval, paired_comparison, rank_intervals
from ..verdicts import interval_digits

#: the floors' row labels -> their identifiers in result tables (a floor is a reference, never a method)
FLOORS = {"Random": "random", "centre prior": "centre_prior", "all background": "all_background"}


def method_identifier(label: str, methods: Mapping[str, tuple[str, Mapping]]) -> str:
    """The identifier of row `label`: the xaikit method name of `methods[label]`, or the floor's identifier."""
    if label in methods:
        return methods[label][0]
    if label in FLOORS:
        return FLOORS[label]
    raise InvalidParameterError(
        f"{label!r} is neither a row of methods ({list(methods)}) nor a floor ({list(FLOORS)}): name rows as the "
        "methods dict names them"
    )


def league_table(
    scores: pd.DataFrame,
    *,
    higher_is_better: bool,
    methods: Mapping[str, tuple[str, Mapping]],
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every row's mean and rank with 95 % bootstrap intervals, images resampled jointly for all rows.

    `scores`: rows images, columns row labels (e.g. `PerturbationRun.per_image`). Returns one row per column
    of `scores`, in its order, with ``method`` (the identifier, `method_identifier`), ``label`` (the display
    name), ``mean``, ``mean_low``, ``mean_high``, ``rank``, ``rank_low``, ``rank_high`` (1 = best) and
    ``images``.
    """
    if not isinstance(scores, pd.DataFrame) or scores.shape[1] == 0:
        raise InvalidParameterError("scores must be a DataFrame with one column of per-image scores per row label")
    identifiers = [method_identifier(str(label), methods) for label in scores.columns]
    league = rank_intervals(scores, higher_is_better=higher_is_better, n_resamples=n_resamples, seed=seed)
    league = league.rename(columns={"method": "label"})
    league.insert(0, "method", identifiers)
    league["images"] = len(scores)
    return league


def shown_league(league: pd.DataFrame, value_name: str, digits: int | None = None) -> pd.DataFrame:
    """`league_table` as the book shows it: index the labels, a column `value_name` ``"mean [low, high]"``
    and a column ``"rank"`` ``"rank [low, high]"``; `digits` by default shows the narrowest interval with
    about two significant figures."""
    if digits is None:
        digits = interval_digits(*zip(league["mean_low"], league["mean_high"]))
    values = [format_interval(m, lo, hi, digits) for m, lo, hi in zip(league["mean"], league["mean_low"], league["mean_high"])]
    ranks = [_rank_interval(r, lo, hi) for r, lo, hi in zip(league["rank"], league["rank_low"], league["rank_high"])]
    return pd.DataFrame({value_name: values, "rank": ranks}, index=pd.Index(league["label"], name="method"))


def _rank_interval(rank: float, low: float, high: float) -> str:
    def text(value: float) -> str:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"

    return f"{text(rank)} [{text(low)}, {text(high)}]"


def object_share(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per image, the share (percent) of the map's mass that lies on the object.

    `maps` (B, gh, gw) token maps or (B, H, W) pixel maps; `masks` (B, H, W) in {0, 1}. Each map is upsampled
    bilinearly to the mask's size, min-max scaled to [0, 1] (so a signed map's most negative value is 0, as the
    segmentation protocol scales it), and its sum over the object's pixels is divided by its sum over all
    pixels. A map that puts nothing but the object scores 100; a constant map scores the object's area.
    A map min-max cannot scale (constant) counts as constant.
    """
    from ..imaging import upsample

    maps, masks = torch.as_tensor(maps).double(), torch.as_tensor(masks).double()
    if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
        raise InvalidParameterError(
            f"maps (B, h, w) and masks (B, H, W) of the same images are needed; got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    flat = upsample(maps, tuple(masks.shape[-2:])).double().cpu().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-300), torch.ones_like(flat))
    inside = (scaled * masks.flatten(1).cpu()).sum(1)
    return (100 * inside / scaled.sum(1)).numpy()


def floor_comparison(scores: pd.DataFrame, method: str, floors, *, higher_is_better: bool) -> tuple[str, str, bool]:
    """`method` against the strongest of `floors` (the floor with the best mean), paired over the images.

    `scores`: rows images, columns row labels. Returns ``(floor, text, ahead)``: the strongest floor's label, a clause
    ``"TokenTM − centre prior 1.2 [-0.3, 2.5]: indistinguishable"`` (in the score's units) (or ``"... : TokenTM ahead"`` /
    ``"... : the floor ahead"``, the difference's 95 % bootstrap interval, `xaikit.stats.paired_comparison`) and whether
    `method` is ahead beyond the noise.
    """
    floors = [floor for floor in floors if floor in scores.columns]
    if method not in scores.columns or not floors:
        raise InvalidParameterError(f"scores must have a column {method!r} and one of the floors; it has {list(scores.columns)}: "
                                    "pass the floors' row labels as the scores name them")
    means = scores[floors].mean()
    floor = str(means.idxmax() if higher_is_better else means.idxmin())
    pair = paired_comparison(scores[method], scores[floor])
    better, worse = ("a higher", "b higher") if higher_is_better else ("b higher", "a higher")
    outcome = {better: f"{method} ahead", worse: "the floor ahead"}.get(pair.verdict, "indistinguishable")
    text = (f"{method} − {floor} {format_interval(pair.difference, pair.low, pair.high, interval_digits((pair.low, pair.high)))}"
            f": {outcome}")
    return floor, text, pair.verdict == better


def standing(verdict) -> str:
    """Where a `best_method_verdict` leaves its method against the strongest baseline, in words: "TokenTM ahead beyond
    the noise", "the baseline ahead beyond the noise" (the paired interval wholly on the baseline's side) or
    "indistinguishable" (the interval contains 0)."""
    if verdict.verdict == "holds":
        return f"{verdict.method} ahead beyond the noise"
    if verdict.difference_low * verdict.difference_high > 0:
        return "the baseline ahead beyond the noise"
    return "indistinguishable"
