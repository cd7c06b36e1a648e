"""xaikit.verdicts (the rules from per-image scores to a verdict) and xaikit.report.save_verdict (the verdict files)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit.report as report
from xaikit.errors import DataIntegrityError, InvalidParameterError
from xaikit.report import DOES_NOT_HOLD, HOLDS, UNTESTABLE, save_verdict, verdicts_path
from xaikit.stats import format_interval
from xaikit.verdicts import (
    Verdict,
    best_method_verdict,
    combined_verdict,
    improvement_verdict,
    interval_digits,
    untestable,
    value_verdict,
)

N = 200


def fabricated(tokentm_shift: float, *, seed: int = 0) -> pd.DataFrame:
    """Per-image scores of four columns on the same images: a shared image effect plus small per-method noise.

    GAE is the strongest baseline (Rollout 5 points below it); Random is a floor placed *above* every method, to
    show that a floor is never taken as the strongest baseline; TokenTM is GAE's level plus `tokentm_shift`.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 10, N)
    return pd.DataFrame({
        "TokenTM": image + tokentm_shift + rng.normal(0, 2, N),
        "GAE": image + rng.normal(0, 2, N),
        "Rollout": image - 5 + rng.normal(0, 2, N),
        "Random": image + 20 + rng.normal(0, 2, N),
    })


# -- best_method_verdict ----------------------------------------------------------------------------------


def test_clearly_better_method_holds_against_the_strongest_baseline_not_the_floor():
    verdict = best_method_verdict(fabricated(+3.0), "TokenTM", higher_is_better=True, floors=["Random"], score="negative AUC")
    assert verdict.verdict == HOLDS
    assert verdict.baseline == "GAE"  # Random scores higher, but a floor is never the strongest baseline
    assert 2.0 < verdict.difference_low < verdict.difference < verdict.difference_high < 4.0
    assert (verdict.rank, verdict.n_ranked, verdict.n) == (2.0, 4, N)  # the floor ranks first among the 4 columns
    assert "TokenTM is better" in verdict.evidence
    assert f"over {N} images" in verdict.evidence and "the strongest floor, Random, scores" in verdict.evidence


def test_swapped_scores_do_not_hold_and_name_the_better_baseline():
    verdict = best_method_verdict(fabricated(-3.0), "TokenTM", higher_is_better=True, floors=["Random"])
    assert verdict.verdict == DOES_NOT_HOLD and verdict.baseline == "GAE"
    assert verdict.difference_high < 0
    assert "GAE is better" in verdict.evidence


def test_indistinguishable_scores_do_not_support_a_best_claim_but_do_support_among_the_best():
    scores = fabricated(0.0)
    verdict = best_method_verdict(scores, "TokenTM", higher_is_better=True, floors=["Random"])
    assert verdict.difference_low < 0 < verdict.difference_high
    assert verdict.verdict == DOES_NOT_HOLD
    assert "indistinguishable here, so the claim that TokenTM scores best is not supported" in verdict.evidence
    tie = best_method_verdict(scores, "TokenTM", higher_is_better=True, floors=["Random"], allow_tie=True)
    assert tie.verdict == HOLDS and "among the best" in tie.evidence


def test_lower_is_better_turns_the_rule_around():
    # positive perturbation AUC: the lowest is best; negate the fabricated scores so TokenTM is lowest
    scores = -fabricated(+3.0)
    verdict = best_method_verdict(scores, "TokenTM", higher_is_better=False, floors=["Random"])
    assert verdict.verdict == HOLDS and verdict.baseline == "GAE"
    assert verdict.difference_high < 0 and "lower is better" in verdict.evidence
    assert best_method_verdict(-fabricated(-3.0), "TokenTM", higher_is_better=False, floors=["Random"]).verdict == DOES_NOT_HOLD


def test_evidence_prints_precision_matching_the_uncertainty_and_display_labels():
    verdict = best_method_verdict(fabricated(+3.0) / 100, "TokenTM", higher_is_better=True, floors=["Random"],
                                  labels={"GAE": "GAE (Rel. Prop.)"})
    # the means' half-widths are about 0.014 -> 3 decimals; the paired difference's about 0.0039 -> 4 decimals
    assert f"{verdict.method_mean:.3f} [{verdict.method_low:.3f}, {verdict.method_high:.3f}]" in verdict.evidence
    assert f"{verdict.difference:.4f} [{verdict.difference_low:.4f}, {verdict.difference_high:.4f}]" in verdict.evidence
    assert "the strongest baseline, GAE (Rel. Prop.)," in verdict.evidence
    assert "ranks 2nd of 4 (95 % interval 2nd" in verdict.evidence


def test_explicit_baselines_limit_the_competition_and_dict_scores_are_accepted():
    scores = fabricated(-3.0)
    verdict = best_method_verdict({name: scores[name].to_numpy() for name in scores}, "TokenTM", higher_is_better=True,
                                  baselines=["Rollout"], floors=["Random"])
    assert verdict.baseline == "Rollout" and verdict.verdict == HOLDS and verdict.n_ranked == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="TokenTM++"), "not a column of scores"),
        (dict(method="TokenTM", floors=["Noise"]), "not a column of scores"),
        (dict(method="TokenTM", baselines=[], floors=["Random"]), "no baseline"),
        (dict(method="TokenTM", baselines=["GAE"], floors=["GAE"]), "never a baseline"),
        (dict(method="TokenTM", baselines=["TokenTM", "GAE"]), "method under test"),
        (dict(method="TokenTM", higher_is_better="yes"), "higher_is_better must be True or False"),
    ],
)
def test_best_method_verdict_refuses_bad_input(kwargs, message):
    kwargs = {"higher_is_better": True, **kwargs}
    with pytest.raises(InvalidParameterError, match=message):
        best_method_verdict(fabricated(1.0), **kwargs)


def test_nan_scores_are_refused_unless_omitted_and_then_counted():
    scores = fabricated(+3.0)
    scores.loc[0, "GAE"] = np.nan
    with pytest.raises(InvalidParameterError, match="nan='omit'"):
        best_method_verdict(scores, "TokenTM", higher_is_better=True, floors=["Random"])
    verdict = best_method_verdict(scores, "TokenTM", higher_is_better=True, floors=["Random"], nan="omit")
    assert (verdict.n, verdict.n_omitted) == (N - 1, 1) and "1 more left out for NaN scores" in verdict.evidence


# -- improvement_verdict, value_verdict, untestable, combined_verdict -----------------------------------


def test_improvement_holds_fails_and_is_not_supported_when_indistinguishable():
    scores = fabricated(+3.0)
    better = improvement_verdict(torch.tensor(scores["GAE"].to_numpy()), scores["TokenTM"], higher_is_better=True,
                                 score="mIoU", before_label="+AF+L", after_label="+AF+L+NECC")
    assert better.verdict == HOLDS and better.difference_low > 0 and "paired change" in better.evidence
    assert better.evidence.startswith("+AF+L+NECC ") and "an improvement." in better.evidence
    worse = improvement_verdict(scores["TokenTM"], scores["GAE"], higher_is_better=True)
    assert worse.verdict == DOES_NOT_HOLD and "after is worse than before" in worse.evidence
    same = fabricated(0.0)
    noise = improvement_verdict(same["GAE"], same["TokenTM"], higher_is_better=True)
    assert noise.verdict == DOES_NOT_HOLD and "indistinguishable from 0 here" in noise.evidence
    lower = improvement_verdict(scores["TokenTM"], scores["GAE"], higher_is_better=False)  # a lower score is better
    assert lower.verdict == HOLDS


def test_improvement_needs_the_same_images():
    with pytest.raises(InvalidParameterError, match="same images"):
        improvement_verdict([1.0, 2.0, 3.0], [1.0, 2.0], higher_is_better=True)


def test_value_verdict_checks_the_claimed_value_against_the_interval():
    correct = np.r_[np.ones(770), np.zeros(230)] * 100  # 77.0 % top-1
    holds = value_verdict(correct, 77.0, score="top-1 accuracy (%)")
    assert holds.verdict == HOLDS and "against the paper's 77.0" in holds.evidence
    assert value_verdict(correct, 85.0).verdict == DOES_NOT_HOLD
    assert value_verdict(correct, 85.0, tolerance=6.0).verdict == HOLDS


def test_untestable_and_combined_verdicts():
    reason = untestable("the demo has no CIFAR-100 model; the paper profile tests it")
    assert reason.verdict == UNTESTABLE and reason.evidence.endswith("tests it.")
    good = best_method_verdict(fabricated(+3.0), "TokenTM", higher_is_better=True, floors=["Random"])
    bad = best_method_verdict(fabricated(0.0), "TokenTM", higher_is_better=True, floors=["Random"])
    partly = combined_verdict({"CIFAR-10": good, "CIFAR-100": reason})
    assert partly.verdict == HOLDS and partly.evidence.endswith(
        "The demo cannot test CIFAR-100 (the demo has no CIFAR-100 model; the paper profile tests it).")
    assert "CIFAR-10: TokenTM" in partly.evidence
    failing = combined_verdict({"CIFAR-10 negative": good, "CIFAR-10 positive": bad, "CIFAR-100": reason})
    assert failing.verdict == DOES_NOT_HOLD and failing.evidence.startswith("1 of the 2 parts the demo can test does not hold. CIFAR-10 positive:")
    assert combined_verdict({"CIFAR-100": reason}).verdict == UNTESTABLE
    assert [name for name, _ in failing.parts] == ["CIFAR-10 negative", "CIFAR-10 positive", "CIFAR-100"]
    with pytest.raises(InvalidParameterError, match="not Verdicts"):
        combined_verdict({"CIFAR-10": "holds"})


@pytest.mark.parametrize("low, high, digits", [(69.8, 72.9, 1), (0.0, 0.046, 3), (0.0, 46.0, 0), (5.0, 5.0, 1), (0.2, 0.4, 2)])
def test_interval_digits_show_two_significant_figures_of_the_half_width(low, high, digits):
    assert interval_digits((low, high)) == digits


def test_as_dict_is_one_table_row_without_parts():
    row = best_method_verdict(fabricated(+3.0), "TokenTM", higher_is_better=True, floors=["Random"]).as_dict()
    assert "parts" not in row and row["verdict"] == HOLDS and row["baseline"] == "GAE"
    assert pd.DataFrame([row]).shape == (1, len(row))


# -- save_verdict ----------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(tmp_path / "_run"))
    monkeypatch.setenv("XAIKIT_NOTEBOOK", "tokentm/05_ablations")
    monkeypatch.setenv("XAIKIT_PROFILE", "demo")
    return tmp_path / "_run"


def test_save_verdict_writes_one_file_per_notebook_and_merges_its_items(run_dir):
    path = save_verdict("Table 6", HOLDS, "+NECC improves mIoU by 0.7 [0.2, 1.2] points.")
    assert path == run_dir / "results" / "tokentm" / "05_ablations-verdicts.json" == verdicts_path()
    untestable("no ViT-B on the demo").save("Table 7")
    recorded = json.loads(path.read_text())
    assert list(recorded) == ["Table 6", "Table 7"]
    assert recorded["Table 6"]["verdict"] == HOLDS and recorded["Table 6"]["evidence"].startswith("+NECC improves")
    assert recorded["Table 7"] | {"recorded_at": None, "run": None} == {
        "verdict": UNTESTABLE, "evidence": "no ViT-B on the demo.", "profile": "demo", "recorded_at": None, "run": None}
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, no leftovers


def test_a_new_kernel_run_replaces_the_verdicts_of_an_earlier_run(run_dir, monkeypatch):
    save_verdict("Table 6", HOLDS, "earlier run")
    save_verdict("Table 7", HOLDS, "earlier run")
    monkeypatch.setattr(report, "_KERNEL_RUN", "a-re-run")  # what a fresh kernel gets
    path = save_verdict("Table 6", DOES_NOT_HOLD, "re-run")
    assert json.loads(path.read_text()) == {"Table 6": json.loads(path.read_text())["Table 6"]}  # Table 7 is gone
    assert json.loads(path.read_text())["Table 6"]["verdict"] == DOES_NOT_HOLD


@pytest.mark.parametrize(
    "item, verdict, notebook, message",
    [
        ("Table 9", HOLDS, None, r"'Table 9' is not an item of tokentm/05_ablations .*'Table 6', 'Table 7', 'Fig. 5'"),
        ("Table 6", "holds mostly", None, "is not one of 'holds', 'does not hold', 'cannot be tested on the demo'"),
        ("Table 6", HOLDS, "tokentm/99_missing", "reproduces no item"),
        ("Foundations 3", HOLDS, "foundations/03_attention_maps", "has no claim"),
    ],
)
def test_save_verdict_refuses_unknown_items_and_verdicts(run_dir, item, verdict, notebook, message):
    with pytest.raises(InvalidParameterError, match=message):
        save_verdict(item, verdict, "some evidence", chapter_notebook=notebook)
    assert not (run_dir / "results").exists()


def test_save_verdict_refuses_empty_evidence_and_a_corrupt_file(run_dir):
    with pytest.raises(InvalidParameterError, match="evidence must be"):
        save_verdict("Table 6", HOLDS, "  ")
    path = verdicts_path()
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2")
    with pytest.raises(DataIntegrityError, match="delete it and re-run"):
        save_verdict("Table 6", HOLDS, "evidence")


def test_verdict_save_records_the_derived_verdict(run_dir):
    verdict = best_method_verdict(fabricated(+3.0), "TokenTM", higher_is_better=True, floors=["Random"])
    assert isinstance(verdict, Verdict)
    path = verdict.save("Table 6")
    assert json.loads(path.read_text())["Table 6"]["evidence"] == verdict.evidence


def test_headlines_are_the_outcome_and_the_deciding_number():
    best = best_method_verdict(fabricated(-3.0), "TokenTM", higher_is_better=True, floors=["Random"], score="mIoU")
    assert best.headline.startswith("TokenTM ranks 3rd of 4 on mIoU (95 % interval")
    assert f"TokenTM − GAE {format_interval(best.difference, best.difference_low, best.difference_high, interval_digits((best.difference_low, best.difference_high)))}: GAE is better;" \
        in best.headline
    assert best.headline.endswith(")") is False and "; TokenTM is behind the floor Random (" in best.headline
    ahead = best_method_verdict(fabricated(+30.0), "TokenTM", higher_is_better=True, floors=["Random"], score="mIoU")
    assert "floor" not in ahead.headline and "and TokenTM is ahead of it (TokenTM − Random " in ahead.evidence
    scores = fabricated(+3.0)
    change = improvement_verdict(scores["GAE"], scores["TokenTM"], higher_is_better=True, score="mIoU",
                                 before_label="+AF+L", after_label="+AF+L+NECC")
    assert change.headline.startswith("+AF+L to +AF+L+NECC, mIoU: paired change ") and change.headline.endswith(
        ", an improvement.")
    reason = untestable("no CIFAR-100 model here")
    assert reason.headline == reason.evidence
    combined = combined_verdict({"neg": best, "pos": change, "CIFAR-100": reason})
    outcome = best.headline.rstrip(".")
    assert combined.headline == ("1 of the 2 parts the demo can test does not hold (neg); it holds on pos; 1 cannot be "
                                 f"tested on the demo (CIFAR-100). First, neg: {outcome}.")
    # an improvement part is not labelled twice: its before/after labels give way to the part's name
    assert combined_verdict({"pos": change, "CIFAR-100": reason}).headline == (
        "holds on the one part the demo can test (pos); 1 cannot be tested on the demo (CIFAR-100). First, pos: "
        f"paired change {change.headline.split('paired change ', 1)[1]}")
    many = combined_verdict({f"part {i}, AUC": best for i in range(8)})
    assert many.headline.startswith("8 of the 8 parts the demo can test do not hold (part 0, AUC; part 1, AUC; part 2, "
                                    "AUC; part 3, AUC; part 4, AUC; part 5, AUC; and 2 more). First, part 0, AUC: ")


def test_verdict_save_passes_the_headline_and_the_reason(run_dir):
    verdict = best_method_verdict(fabricated(-3.0), "TokenTM", higher_is_better=True, floors=["Random"])
    path = verdict.save("Table 6", reason="On deeper models GAE stays ahead.")
    recorded = json.loads(path.read_text())["Table 6"]
    assert (recorded["headline"], recorded["reason"]) == (verdict.headline, "On deeper models GAE stays ahead.")
