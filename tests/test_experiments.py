"""The chapters' shared pieces: rank agreement with the paper, and the paper numbers as data."""

import numpy as np
import pandas as pd
import pytest

import xaikit
from xaikit.errors import InvalidParameterError
from xaikit.experiments import tokentm
from xaikit.experiments.comparison import beside_paper, rank_agreement


def test_rank_agreement_same_order_reversed_and_one_swap():
    paper = pd.Series({"a": 3.0, "b": 2.0, "c": 1.0})
    same = rank_agreement(paper * 10, paper, higher_is_better=True)
    assert same.tau == pytest.approx(1.0) and same.disagreeing == () and same.our_best == "a"
    reversed_ = rank_agreement(-paper, paper, higher_is_better=True)
    assert reversed_.tau == pytest.approx(-1.0) and len(reversed_.disagreeing) == 3
    swapped = rank_agreement(pd.Series({"a": 3.0, "b": 1.0, "c": 2.0, "extra": 9.0}), paper, higher_is_better=False)
    assert swapped.methods == ("a", "b", "c")  # only common methods
    assert swapped.disagreeing == (("b", "c"),)  # lower is better: we rank b above c, the paper c above b
    assert swapped.our_best == "b" and swapped.paper_best == "c"
    assert "b > c" in swapped.describe()
    with pytest.raises(InvalidParameterError):
        rank_agreement(pd.Series({"a": 1.0}), paper, higher_is_better=True)


def test_beside_paper_interleaves_and_keeps_our_rows():
    ours = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]}, index=["m1", "new"])
    paper = pd.DataFrame({"x": [5.0], "y": [6.0]}, index=["m1"])
    table = beside_paper(ours, paper)
    assert list(table.columns) == [("x", "ours"), ("x", "paper"), ("y", "ours"), ("y", "paper")]
    assert np.isnan(table.loc["new", ("x", "paper")]) and table.loc["m1", ("y", "paper")] == 6.0


def test_tokentm_paper_tables_are_complete_and_name_registered_methods():
    assert tokentm.paper_table1().shape == (9, 3)
    perturbation = tokentm.paper_perturbation()
    assert perturbation.shape == (54, 2) and not perturbation.isna().any().any()
    assert tokentm.paper_table5().shape == (18, 2)
    assert list(tokentm.paper_table6().index) == list(tokentm.ABLATION_VARIANTS)
    assert list(tokentm.paper_table7().index) == [3, 6, 9, 12]
    assert set(tokentm.paper_table1().index) <= set(tokentm.METHODS)
    # TokenTM is best in every column of Table 1 in the paper
    assert (tokentm.paper_table1().idxmax() == "TokenTM").all()
    registered = set(xaikit.list_methods())
    assert {method for method, _ in tokentm.METHODS.values()} <= registered
