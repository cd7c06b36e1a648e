"""Comparing our table with the paper's: values side by side and agreement of the method ranking."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy.stats import kendalltau

from ..errors import InvalidParameterError


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau between our order of the methods and the paper's, on the methods both have.

    ``disagreeing`` names the pairs of methods that the two tables order differently
    (ours first-better on the left), so the text can say which rows disagree.
    """

    tau: float
    p_value: float
    methods: tuple[str, ...]
    disagreeing: tuple[tuple[str, str], ...]
    our_best: str
    paper_best: str

    def describe(self) -> str:
        pairs = ", ".join(f"{a} > {b}" for a, b in self.disagreeing[:6]) or "none"
        more = f" (+{len(self.disagreeing) - 6} more)" if len(self.disagreeing) > 6 else ""
        return (
            f"Kendall's tau {self.tau:+.2f} over {len(self.methods)} methods; best here {self.our_best}, "
            f"in the paper {self.paper_best}; pairs ordered differently here: {pairs}{more}"
        )


def rank_agreement(ours: pd.Series, paper: pd.Series, *, higher_is_better: bool) -> RankAgreement:
    """Kendall's tau (scipy's tau-b) between two score columns indexed by method name.

    Only methods present (and not NaN) in both are compared; at least two are needed.
    """
    both = pd.concat({"ours": ours, "paper": paper}, axis=1).dropna()
    if len(both) < 2:
        raise InvalidParameterError(
            f"rank agreement needs at least two methods in both tables; common methods: {list(both.index)}"
        )
    tau, p_value = kendalltau(both["ours"], both["paper"])
    sign = 1 if higher_is_better else -1
    methods = list(both.index)
    disagreeing = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            d_ours = sign * (both.at[a, "ours"] - both.at[b, "ours"])
            d_paper = sign * (both.at[a, "paper"] - both.at[b, "paper"])
            if d_ours * d_paper < 0:
                disagreeing.append((a, b) if d_ours > 0 else (b, a))
    best = (lambda column: column.idxmax()) if higher_is_better else (lambda column: column.idxmin())
    return RankAgreement(
        float(tau), float(p_value), tuple(methods), tuple(disagreeing), best(both["ours"]), best(both["paper"])
    )


def beside_paper(ours: pd.DataFrame, paper: pd.DataFrame, *, suffixes: tuple[str, str] = ("ours", "paper")) -> pd.DataFrame:
    """Our columns and the paper's for the same metrics, interleaved: (metric, ours), (metric, paper), ...

    Both are indexed by method; methods missing from the paper get NaN in its columns.
    """
    columns = [c for c in ours.columns if c in paper.columns]
    if not columns:
        raise InvalidParameterError(f"no metric in common: ours {list(ours.columns)}, paper {list(paper.columns)}")
    table = pd.concat({suffixes[0]: ours[columns], suffixes[1]: paper[columns].reindex(ours.index)}, axis=1)
    return table.swaplevel(axis=1)[[(c, s) for c in columns for s in suffixes]]
