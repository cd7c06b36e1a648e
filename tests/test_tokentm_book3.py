"""Book fixes of the TokenTM chapter: the floor comparison the pages state."""

import pandas as pd
import pytest

from xaikit.errors import InvalidParameterError
from xaikit.experiments.tokentm_evidence import floor_comparison


def test_floor_comparison_picks_the_strongest_floor_and_its_side():
    scores = pd.DataFrame({"TokenTM": [1.0, 2.0, 3.0, 4.0], "Random": [0.0, 0.0, 0.0, 0.0], "centre prior": [3.0, 4.0, 5.0, 6.0]})
    floor, text, ahead = floor_comparison(scores, "TokenTM", ["Random", "centre prior"], higher_is_better=True)
    assert floor == "centre prior" and not ahead
    assert text == "TokenTM − centre prior -2.0 [-2.0, -2.0]: the floor ahead"  # every image: 2 below
    floor, text, ahead = floor_comparison(scores, "TokenTM", ["Random", "centre prior"], higher_is_better=False)
    assert floor == "Random" and not ahead and text.endswith("the floor ahead")  # lower is better: Random's 0 is best
    floor, _, ahead = floor_comparison(scores.assign(TokenTM=[-1.0, -1.0, -2.0, -3.0]), "TokenTM", ["Random"], higher_is_better=False)
    assert ahead


def test_floor_comparison_indistinguishable_and_bad_input():
    scores = pd.DataFrame({"TokenTM": [1.0, -1.0, 1.0, -1.0], "Random": [0.0] * 4})
    assert floor_comparison(scores, "TokenTM", ["Random"], higher_is_better=True)[1].endswith("indistinguishable")
    with pytest.raises(InvalidParameterError, match="floors"):
        floor_comparison(scores, "TokenTM", ["centre prior"], higher_is_better=True)


def test_standing_names_the_side_beyond_the_noise():
    from xaikit import verdicts
    from xaikit.experiments.tokentm_evidence import standing

    scores = pd.DataFrame({"TokenTM": [1.0, 2.0, 3.0, 4.0], "GAE": [0.0, 1.0, 2.0, 3.0], "Random": [0.5, -1.0, 0.5, -1.0]})
    assert standing(verdicts.best_method_verdict(scores, "TokenTM", higher_is_better=True)) == "TokenTM ahead beyond the noise"
    assert standing(verdicts.best_method_verdict(scores, "TokenTM", higher_is_better=False)) == "the baseline ahead beyond the noise"
    tied = pd.DataFrame({"TokenTM": [1.0, -1.0, 1.0, -1.0], "GAE": [0.0] * 4})
    assert standing(verdicts.best_method_verdict(tied, "TokenTM", higher_is_better=True)) == "indistinguishable"
