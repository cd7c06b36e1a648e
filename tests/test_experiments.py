"""The chapters' shared pieces: rank agreement with the paper, and the paper numbers as data."""

import numpy as np
import pandas as pd
import pytest
import torch

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


def test_cdam_paper_tables_are_complete_and_consistent():
    from xaikit.experiments import cdam

    t1, s1, t2, t3 = cdam.paper_table1(), cdam.paper_table_s1(), cdam.paper_table2(), cdam.paper_table3()
    assert t1.shape == s1.shape == (10, 4) and t2.shape == (10, 2) and t3.shape == (10, 1)
    for table in (t1, s1, t2, t3):
        assert not table.isna().any().any()
        assert set(table.index) <= set(cdam.METHODS) and set(table.columns) <= set(cdam.HIGHER_IS_BETTER)
    # A_LIF-MIF is the difference of the two areas up to the paper's rounding, except in one row
    # the paper prints as it is (Table S1, Integrated CDAM: 1459 - 696 = 763, printed 753).
    off = {(name, method) for name, table in (("1", t1), ("S1", s1))
           for method, gap in (table["A_LIF"] - table["A_MIF"] - table["A_LIF-MIF"]).items() if abs(gap) > 3}
    assert off == {("S1", "Integrated CDAM")}
    assert cdam.paper_table1().loc["Smooth CDAM", "A_LIF-MIF"] == 827
    assert sum(cdam.PAPER_LIDC_COUNTS.values()) == 854


def test_cdam_benchmark_runners_tabulate_the_protocol_results():
    from conftest import small_vit
    import xaikit.metrics
    from xaikit.experiments import cdam as ex

    model = small_vit("plain", img_size=32, patch_size=8, depth=1, embed_dim=48, num_heads=3)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classes, others = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    methods = ex.with_settings({k: ex.METHODS[k] for k in ("CDAM", "Smooth CDAM", "Attention map")}, ex.sampling_settings(2))
    assert methods["Smooth CDAM"] == ("smooth_cdam", {"n_samples": 2})
    maps = ex.explain_classes(model, images, {"c": classes, "other": others}, methods)
    mine = {label: maps[(label, "c")] for label in methods}
    settings = {"sizes": (8, 16), "n_boxes": 4}
    run = ex.correctness(model, images, classes, mine, box=settings, fidelity={"step": 0.25})
    table = run.table()
    assert list(table.columns) == ["A_MIF", "A_MIF_sem", "A_LIF", "A_LIF_sem", "A_LIF-MIF", "A_LIF-MIF_sem", "A_box", "A_box_sem"]
    assert table.at["CDAM", "A_LIF-MIF"] == pytest.approx(run.fidelity["CDAM"].a_lif_minus_mif)
    assert table.at["CDAM", "A_box"] == pytest.approx(run.box["CDAM"].a_box)
    assert set(run.curves().curve) == {"MIF", "LIF", "box"}
    results = ex.discrimination(model, images, classes, others, mine, {label: maps[(label, "other")] for label in methods},
                               settings={**settings, "step": 0.25})
    discrimination = ex.discrimination_table(results)
    assert discrimination.loc["Attention map", ["A_Δ(LIF-MIF)", "A_Δbox"]].abs().max() == 0  # class-free: one map
    assert discrimination.loc["CDAM", "A_Δ(LIF-MIF)"] != 0
    compact = ex.compactness_table(mine)
    assert compact.at["CDAM", "compactness"] == pytest.approx(float(xaikit.metrics.compactness(mine["CDAM"]).mean()))
    with pytest.raises(xaikit.InvalidParameterError):
        ex.sampling_settings(1)
