"""The demo's verdict on a paper's claim, derived from per-image scores: the rules, so no notebook types one.

Every paper item of ``book/status.yml`` states the paper's claim in one sentence (``claim:``). The notebook that
reproduces the item judges it with one of these functions and records the result with :meth:`Verdict.save`
(`xaikit.report.save_verdict`); the book's status tables show what was recorded. A verdict is one of

* ``"holds"``: the demo's scores support the claim;
* ``"does not hold"``: they contradict it, or cannot tell the compared methods apart (see below);
* ``"cannot be tested on the demo"``: the demo has no data or model that can carry the claim (:func:`untestable`).

Every score is one number per image, and every comparison is paired over the same images
(`xaikit.stats.paired_comparison`: the mean difference with its 95 % percentile bootstrap interval).

Rules
-----
:func:`best_method_verdict`, for "method M scores best": the strongest baseline B is the baseline with the best
mean score (floors such as Random are never the strongest baseline: the claim is about methods). Then M - B
over the same images:

* the interval of the mean difference lies wholly on M's better side: **holds**;
* it lies wholly on B's better side: **does not hold** (B is better);
* it contains 0: **does not hold**, and the evidence says that M and B are *indistinguishable here*: a claim of
  being best needs the data to put M ahead, and these data do not. With ``allow_tie=True`` the claim is "M is
  among the best", which a tie supports: then it **holds**.

:func:`improvement_verdict`, for "X improves Y": the same rule for ``after - before``: an improvement whose
interval excludes 0 holds; a change the other way does not; a change indistinguishable from 0 does not hold
(the improvement is not supported).

:func:`value_verdict`, for "the model reaches 77 %": holds when the interval of the mean overlaps the claimed
value (give or take a stated tolerance), does not hold otherwise.

:func:`combined_verdict`, for a claim made of parts (several data sets, several scores): does not hold when any
part does not hold; cannot be tested when no part can; otherwise holds on the parts the demo can test, and the
evidence names the parts it cannot.

The evidence is one sentence a student can read: the means with their intervals, the difference with its
interval, the number of images and, for a "best" claim, M's rank among all compared columns with its rank
interval (`xaikit.stats.rank_intervals`). Numbers are printed so that an interval's half-width shows about two
significant figures (:func:`interval_digits`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InvalidParameterError
from .report import DOES_NOT_HOLD, HOLDS, UNTESTABLE, save_verdict
from .stats import bootstrap_ci, format_interval, ordinal, paired_comparison, rank_intervals

__all__ = [
    "Verdict",
    "best_method_verdict",
    "improvement_verdict",
    "value_verdict",
    "combined_verdict",
    "untestable",
    "interval_digits",
]

_NAN = float("nan")


@dataclass(frozen=True)
class Verdict:
    """A verdict on one claim, the sentence that carries it, and its deciding numbers (NaN where not used).

    ``method`` is the compared column (the paper's method, or "after"), ``baseline`` what it is compared with
    (the strongest baseline, or "before"); ``difference`` is ``method - baseline`` with its interval;
    ``rank`` is the method's rank among the ``n_ranked`` compared columns (1 = best) with its interval.
    ``parts`` holds the verdicts a :func:`combined_verdict` was made of. ``headline`` is the evidence cut to
    what a results-at-a-glance line needs (the outcome and the one deciding number with its interval).
    """

    verdict: str
    evidence: str
    headline: str = ""
    method: str | None = None
    baseline: str | None = None
    score: str | None = None
    higher_is_better: bool | None = None
    n: int = 0
    n_omitted: int = 0
    method_mean: float = _NAN
    method_low: float = _NAN
    method_high: float = _NAN
    baseline_mean: float = _NAN
    baseline_low: float = _NAN
    baseline_high: float = _NAN
    difference: float = _NAN
    difference_low: float = _NAN
    difference_high: float = _NAN
    p_value: float = _NAN
    rank: float = _NAN
    rank_low: float = _NAN
    rank_high: float = _NAN
    n_ranked: int = 0
    parts: tuple[tuple[str, "Verdict"], ...] = ()

    def as_dict(self) -> dict:
        """The fields as a plain dict, without ``parts`` (one row of a verdict table)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "parts"}

    def save(self, item: str, *, reason: str | None = None, chapter_notebook: str | None = None) -> Path:
        """Record this verdict on `item` of ``book/status.yml`` (`xaikit.report.save_verdict`).

        `reason`: where the demo disagrees with the paper, the hypothesis the page tested and what the experiment
        showed (a sentence built from its numbers), or that the reason is unknown; the chapter's results at a
        glance print it after the verdict.
        """
        headline = self.headline if self.headline and self.headline != self.evidence else None  # the evidence is short already
        return save_verdict(item, self.verdict, self.evidence, headline=headline, reason=reason,
                            chapter_notebook=chapter_notebook)


# -- printing --------------------------------------------------------------------------------------------


def interval_digits(*intervals: tuple[float, float]) -> int:
    """Decimals that show the narrowest of `intervals` (``(low, high)`` pairs) with about two significant figures.

    A half-width of 1.5 gives 1 decimal ("71.3 [69.8, 72.9]"), 0.023 gives 3, 23 gives 0. Intervals of zero
    width (every image scored the same) do not count; with none left, 1 decimal.
    """
    widths = [(high - low) / 2 for low, high in intervals if math.isfinite(low) and math.isfinite(high) and high > low]
    if not widths:
        return 1
    return max(0, 1 - math.floor(math.log10(min(widths))))


def _rank_text(rank: float) -> str:
    return ordinal(int(rank)) if float(rank).is_integer() else f"{rank:g}"


def _images(n: int, n_omitted: int) -> str:
    omitted = f", {n_omitted} more left out for NaN scores" if n_omitted else ""
    return f"{n} image{'s' if n != 1 else ''}{omitted}"


def _direction(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."


# -- input checks ----------------------------------------------------------------------------------------


def _check_flag(higher_is_better) -> bool:
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise InvalidParameterError(
            f"higher_is_better must be True or False (is a higher score better for this claim?); got {higher_is_better!r}"
        )
    return bool(higher_is_better)


def _check_text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterError(f"{name} must be a non-empty str; got {value!r}")
    return value.strip()


def _score_frame(scores) -> pd.DataFrame:
    """`scores` as a DataFrame with str column names; a dict's values may be arrays, lists, Series or tensors."""
    if isinstance(scores, Mapping) and not isinstance(scores, pd.DataFrame):
        try:
            scores = pd.DataFrame({
                str(name): np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
                for name, values in scores.items()
            })
        except ValueError as error:
            raise InvalidParameterError(
                f"scores must give every method one score per image, on the same images: {error}"
            ) from None
    if not isinstance(scores, pd.DataFrame):
        raise InvalidParameterError(
            f"scores must be a DataFrame (rows images, columns methods) or a dict method -> per-image scores; got "
            f"{type(scores).__name__}"
        )
    return scores.rename(columns=str)


def _columns(frame: pd.DataFrame, method: str, baselines, floors) -> tuple[list[str], list[str]]:
    """The baselines and floors of a "best" claim, checked against the columns of `frame`."""
    columns = list(frame.columns)
    floors = [floors] if isinstance(floors, str) else [str(f) for f in floors]
    if baselines is None:
        baselines = [c for c in columns if c != method and c not in floors]
    else:
        baselines = [baselines] if isinstance(baselines, str) else [str(b) for b in baselines]
    unknown = [name for name in [method, *baselines, *floors] if name not in columns]
    if unknown:
        raise InvalidParameterError(
            f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a column of scores "
            f"(its columns: {columns}); name the method, baselines and floors as the columns are named"
        )
    if method in baselines or method in floors:
        raise InvalidParameterError(f"{method!r} is the method under test: it cannot also be a baseline or a floor")
    both = sorted(set(baselines) & set(floors))
    if both:
        raise InvalidParameterError(f"{both} are named as baselines and as floors: a floor is never a baseline")
    if not baselines:
        raise InvalidParameterError(
            f"no baseline to compare {method!r} with: scores has only {columns}, floors {floors}; give the baselines' scores"
        )
    return baselines, floors


def _side(pair, higher_is_better: bool) -> str:
    """"better", "worse" or "indistinguishable": what `pair` (a `PairedComparison` of a - b) says of a."""
    if pair.verdict == "indistinguishable":
        return pair.verdict
    return "better" if (pair.verdict == "a higher") == higher_is_better else "worse"


# -- the rules -------------------------------------------------------------------------------------------


def best_method_verdict(
    scores,
    method: str,
    *,
    higher_is_better: bool,
    baselines: Sequence[str] | None = None,
    floors: Sequence[str] = (),
    allow_tie: bool = False,
    score: str = "score",
    labels: Mapping[str, str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    nan: str = "raise",
) -> Verdict:
    """The verdict on "`method` scores best", from per-image scores of every method on the same images.

    `scores`: a DataFrame, rows images and columns methods (or a dict method -> per-image scores), every
    column scored on the same images in the same order. `baselines`: the columns `method` competes with
    (default: every other column that is not a floor); `floors`: reference columns that are not methods
    (Random, all background, a centre prior): never the strongest baseline, but ranked and reported.
    `score` names the score in the evidence (e.g. "negative perturbation AUC"), `labels` maps column names to
    the names the evidence prints. Rule (module docstring): the strongest baseline by mean, then the paired
    difference ``method - baseline`` with its 95 % bootstrap interval decides; a difference indistinguishable
    from 0 does not hold unless `allow_tie` (the claim "`method` is among the best"). The rank and its interval
    count `method`, the baselines and the floors, resampled jointly with the same `seed`.
    """
    higher_is_better = _check_flag(higher_is_better)
    frame = _score_frame(scores)
    method = _check_text("method", method)
    score = _check_text("score", score)
    baselines, floors = _columns(frame, method, baselines, floors)
    compared = frame[[method, *baselines, *floors]]
    league = rank_intervals(compared, higher_is_better=higher_is_better, n_resamples=n_resamples, seed=seed, nan=nan)
    league = league.set_index("method")
    means = league.loc[baselines, "mean"]
    strongest = str(means.idxmax() if higher_is_better else means.idxmin())
    kept = compared.dropna() if nan == "omit" else compared  # the images rank_intervals kept (it refuses NaN otherwise)
    pair = paired_comparison(kept[method], kept[strongest], n_resamples=n_resamples, seed=seed)
    name = (labels or {}).get
    shown_method, shown_baseline = name(method, method), name(strongest, strongest)

    side = _side(pair, higher_is_better)
    if side == "indistinguishable":
        verdict = HOLDS if allow_tie else DOES_NOT_HOLD
        outcome = (f"indistinguishable here, so {shown_method} is among the best" if allow_tie else
                   f"indistinguishable here, so the claim that {shown_method} scores best is not supported")
    elif side == "better":
        verdict, outcome = HOLDS, f"{shown_method} is better"
    else:
        verdict, outcome = DOES_NOT_HOLD, f"{shown_baseline} is better"

    row, base = league.loc[method], league.loc[strongest]
    means_digits = interval_digits((row.mean_low, row.mean_high), (base.mean_low, base.mean_high))
    difference_digits = interval_digits((pair.low, pair.high))
    floor_text = floor_headline = ""
    if floors:
        floor_means = league.loc[floors, "mean"]
        best_floor = str(floor_means.idxmax() if higher_is_better else floor_means.idxmin())
        floor_row, shown_floor = league.loc[best_floor], name(best_floor, best_floor)
        # a method must also beat what knows nothing about the model: paired, as against the baseline
        floor_pair = paired_comparison(kept[method], kept[best_floor], n_resamples=n_resamples, seed=seed)
        floor_side = _side(floor_pair, higher_is_better)
        relation = {"better": "is ahead of", "worse": "is behind", "indistinguishable": "is indistinguishable here from"}[floor_side]
        floor_outcome = f"{shown_method} {relation} it"
        floor_difference = format_interval(floor_pair.difference, floor_pair.low, floor_pair.high,
                                           interval_digits((floor_pair.low, floor_pair.high)))
        floor_text = (f"; the strongest floor, {shown_floor}, scores "
                      f"{format_interval(floor_row['mean'], floor_row.mean_low, floor_row.mean_high, means_digits)}, "
                      f"and {floor_outcome} ({shown_method} − {shown_floor} {floor_difference})")
        if floor_side != "better":
            floor_headline = f"; {shown_method} {relation} the floor {shown_floor} ({floor_difference})"
    rank_span = (f"{_rank_text(row['rank_low'])}–{_rank_text(row['rank_high'])}"
                 if row["rank_low"] != row["rank_high"] else _rank_text(row["rank_low"]))
    evidence = (
        f"{shown_method} {format_interval(row['mean'], row.mean_low, row.mean_high, means_digits)} against the strongest "
        f"baseline, {shown_baseline}, {format_interval(base['mean'], base.mean_low, base.mean_high, means_digits)} "
        f"(mean {score} over {_images(pair.n, league.attrs['n_omitted'])}, {_direction(higher_is_better)}, 95 % bootstrap "
        f"intervals); paired difference {shown_method} − {shown_baseline} "
        f"{format_interval(pair.difference, pair.low, pair.high, difference_digits)}: {outcome}; {shown_method} ranks "
        f"{_rank_text(row['rank'])} of {len(league)} (95 % interval {rank_span}){floor_text}."
    )
    headline = (f"{shown_method} ranks {_rank_text(row['rank'])} of {len(league)} on {score} (95 % interval {rank_span}); "
                f"{shown_method} − {shown_baseline} {format_interval(pair.difference, pair.low, pair.high, difference_digits)}: "
                f"{outcome}{floor_headline}")
    return Verdict(
        verdict=verdict, evidence=evidence, headline=_sentence(headline), method=method, baseline=strongest, score=score,
        higher_is_better=higher_is_better, n=pair.n, n_omitted=int(league.attrs["n_omitted"]),
        method_mean=float(row["mean"]), method_low=float(row.mean_low), method_high=float(row.mean_high),
        baseline_mean=float(base["mean"]), baseline_low=float(base.mean_low), baseline_high=float(base.mean_high),
        difference=pair.difference, difference_low=pair.low, difference_high=pair.high, p_value=pair.p_value,
        rank=float(row["rank"]), rank_low=float(row["rank_low"]), rank_high=float(row["rank_high"]), n_ranked=len(league),
    )


def improvement_verdict(
    before,
    after,
    *,
    higher_is_better: bool,
    score: str = "score",
    before_label: str = "before",
    after_label: str = "after",
    n_resamples: int = 2000,
    seed: int = 0,
    nan: str = "raise",
) -> Verdict:
    """The verdict on "the change from `before` to `after` improves the score", paired over the same images.

    `before` and `after` are per-image scores of the same images in the same order (arrays, tensors, lists or
    Series), e.g. the mIoU of each image without and with NECC. Rule (module docstring): the mean of
    ``after - before`` with its 95 % bootstrap interval; wholly on the better side: holds; wholly on the worse
    side: does not hold; containing 0: does not hold (the improvement is not supported).
    """
    higher_is_better = _check_flag(higher_is_better)
    score, before_label, after_label = (_check_text(n, v) for n, v in
                                        (("score", score), ("before_label", before_label), ("after_label", after_label)))
    # the two means with intervals from the same resamples of the same images (NaN images left out as in the pair)
    means = rank_intervals({"after": after, "before": before}, n_resamples=n_resamples, seed=seed, nan=nan).set_index("method")
    pair = paired_comparison(after, before, n_resamples=n_resamples, seed=seed, nan=nan)
    side = _side(pair, higher_is_better)
    if side == "indistinguishable":
        verdict, outcome = DOES_NOT_HOLD, "indistinguishable from 0 here, so the improvement is not supported"
    elif side == "better":
        verdict, outcome = HOLDS, "an improvement"
    else:
        verdict, outcome = DOES_NOT_HOLD, f"{after_label} is worse than {before_label}"
    after_ci, before_ci = (means.loc[key] for key in ("after", "before"))
    means_digits = interval_digits((after_ci.mean_low, after_ci.mean_high), (before_ci.mean_low, before_ci.mean_high))
    evidence = (
        f"{after_label} {format_interval(after_ci['mean'], after_ci.mean_low, after_ci.mean_high, means_digits)} against "
        f"{before_label} {format_interval(before_ci['mean'], before_ci.mean_low, before_ci.mean_high, means_digits)} "
        f"(mean {score} over {_images(pair.n, pair.n_omitted)}, {_direction(higher_is_better)}, 95 % bootstrap "
        f"intervals); paired change {format_interval(pair.difference, pair.low, pair.high, interval_digits((pair.low, pair.high)))}: "
        f"{outcome}."
    )
    headline = (f"{before_label} to {after_label}, {score}: paired change "
                f"{format_interval(pair.difference, pair.low, pair.high, interval_digits((pair.low, pair.high)))}, {outcome}")
    return Verdict(
        verdict=verdict, evidence=evidence, headline=_sentence(headline), method=after_label, baseline=before_label, score=score,
        higher_is_better=higher_is_better, n=pair.n, n_omitted=pair.n_omitted,
        method_mean=float(after_ci["mean"]), method_low=float(after_ci.mean_low), method_high=float(after_ci.mean_high),
        baseline_mean=float(before_ci["mean"]), baseline_low=float(before_ci.mean_low), baseline_high=float(before_ci.mean_high),
        difference=pair.difference, difference_low=pair.low, difference_high=pair.high, p_value=pair.p_value,
    )


def value_verdict(
    scores,
    claimed: float,
    *,
    tolerance: float = 0.0,
    score: str = "score",
    n_resamples: int = 2000,
    seed: int = 0,
    nan: str = "raise",
) -> Verdict:
    """The verdict on "the mean score is `claimed`" (e.g. a model's top-1 accuracy), from per-image scores.

    Holds when the 95 % bootstrap interval of the mean overlaps ``[claimed - tolerance, claimed + tolerance]``;
    does not hold otherwise. Give the scores in the claimed value's units (1/0 correct per image, times 100
    for a percentage).
    """
    if not isinstance(claimed, (int, float, np.number)) or not math.isfinite(claimed):
        raise InvalidParameterError(f"claimed must be the paper's value, a finite number; got {claimed!r}")
    if not isinstance(tolerance, (int, float, np.number)) or not tolerance >= 0:
        raise InvalidParameterError(f"tolerance must be a number >= 0 (how far from the paper's value still counts); got {tolerance!r}")
    score = _check_text("score", score)
    interval = bootstrap_ci(scores, n_resamples=n_resamples, seed=seed, nan=nan)
    consistent = interval.low <= claimed + tolerance and interval.high >= claimed - tolerance
    digits = interval_digits((interval.low, interval.high))
    paper_value = format_interval(claimed, _NAN, _NAN, digits)
    within = f" ± {format_interval(tolerance, _NAN, _NAN, digits)}" if tolerance else ""
    outcome = "consistent with it" if consistent else "not consistent with it"
    evidence = (f"mean {score} {interval.format(digits)} over {_images(interval.n, interval.n_omitted)} (95 % bootstrap "
                f"interval) against the paper's {paper_value}{within}: {outcome}.")
    return Verdict(
        verdict=HOLDS if consistent else DOES_NOT_HOLD, evidence=evidence, headline=evidence, score=score, n=interval.n,
        n_omitted=interval.n_omitted, method_mean=interval.estimate, method_low=interval.low, method_high=interval.high,
        baseline_mean=float(claimed),
    )


def untestable(reason: str) -> Verdict:
    """"cannot be tested on the demo", with the `reason` (one sentence: what the demo lacks, what would test it)."""
    evidence = _sentence(_check_text("reason", reason))
    return Verdict(verdict=UNTESTABLE, evidence=evidence, headline=evidence)


def combined_verdict(parts: Mapping[str, Verdict]) -> Verdict:
    """One verdict on a claim made of `parts` (part name -> its verdict, e.g. "CIFAR-10, negative AUC").

    Rule: any part that does not hold makes the claim not hold, and the evidence gives those parts; when no
    part can be tested, the claim cannot be; otherwise the claim holds on what the demo can test, the evidence
    gives every tested part and names the parts it cannot test.
    """
    if not isinstance(parts, Mapping) or not parts:
        raise InvalidParameterError("parts must be a non-empty dict part name -> Verdict")
    bad = [name for name, part in parts.items() if not isinstance(part, Verdict)]
    if bad:
        raise InvalidParameterError(f"parts {bad} are not Verdicts: derive each with best_method_verdict, improvement_verdict, "
                                    "value_verdict or untestable")
    failing = {name: part for name, part in parts.items() if part.verdict == DOES_NOT_HOLD}
    tested = {name: part for name, part in parts.items() if part.verdict != UNTESTABLE}
    untested = [name for name in parts if name not in tested]

    def listed(chosen: Mapping[str, Verdict]) -> str:
        return "; ".join(f"{name}: {part.evidence.rstrip('.')}" for name, part in chosen.items())

    untested_text = (f" The demo cannot test {'; '.join(untested)} "
                     f"({'; '.join(parts[name].evidence.rstrip('.') for name in untested)})." if untested else "")
    if failing:
        verdict = DOES_NOT_HOLD
        evidence = (f"{len(failing)} of the {len(tested)} parts the demo can test {'does' if len(failing) == 1 else 'do'} "
                    f"not hold. {listed(failing)}.{untested_text}")
    elif not tested:
        verdict, evidence = UNTESTABLE, f"{listed(parts)}."
    else:
        verdict = HOLDS
        evidence = f"{listed(tested)}.{untested_text}"
    return Verdict(verdict=verdict, evidence=evidence, headline=_combined_headline(parts), parts=tuple(parts.items()))


def _part_outcome(part: Verdict) -> str:
    """A part's headline without the labels its part name already gives ("before to after, score: ...")."""
    text = (part.headline or part.evidence).rstrip(".")
    if part.score and part.method and part.baseline and math.isnan(part.rank):  # an improvement: its labels lead
        text = text.split(f", {part.score}: ", 1)[-1]
    return text


def _combined_headline(parts: Mapping[str, Verdict], named: int = 6) -> str:
    """"2 of the 3 parts the demo can test do not hold (pixel accuracy; mAP); it holds on mIoU; 1 cannot be tested
    (ImageNet). First, pixel accuracy: <its outcome>": the counts, the parts by name (at most `named` of each kind;
    part names may hold commas, so semicolons separate them), and the deciding part's numbers."""
    def names(chosen: list[str]) -> str:
        return "; ".join(chosen[:named]) + (f"; and {len(chosen) - named} more" if len(chosen) > named else "")

    failing = [name for name, part in parts.items() if part.verdict == DOES_NOT_HOLD]
    holding = [name for name, part in parts.items() if part.verdict == HOLDS]
    untested = [name for name, part in parts.items() if part.verdict == UNTESTABLE]
    tested = len(failing) + len(holding)
    if failing:
        text = f"{len(failing)} of the {tested} parts the demo can test {'does' if len(failing) == 1 else 'do'} not hold ({names(failing)})"
        if holding:
            text += f"; it holds on {names(holding)}"
    elif holding:
        text = f"holds on {'the one part' if tested == 1 else f'all {tested} parts'} the demo can test ({names(holding)})"
    else:
        return f"none of the {len(parts)} parts can be tested on the demo ({names(untested)})."
    if untested:
        text += f"; {len(untested)} cannot be tested on the demo ({names(untested)})"
    first = (failing or holding)[0]
    return f"{text}. First, {first}: {_part_outcome(parts[first])}."
