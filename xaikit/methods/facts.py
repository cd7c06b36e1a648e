"""What every registered method is, in one table: the facts the "Methods at a glance" page shows.

The facts live on the explainer classes (`Explainer.title`, ``class_specific``, ``signed``,
``resolution``, ``floor``, ``paper``, ``paper_names``), where the code that computes the maps is; this
module only reads them. tests/test_method_facts.py checks them against what the methods do.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..errors import InvalidParameterError
from .base import get_method, list_methods

#: the papers this book reproduces, by chapter: the keys of `Explainer.paper_names`, and their names
PAPERS = {"tokentm": "TokenTM", "cdam": "CDAM", "vita": "ViTA"}

#: `Explainer.resolution` -> what one value of the map covers
RESOLUTIONS = {"token": "token grid", "pixel": "pixels"}


def paper_name_column(chapter: str) -> str:
    """The column of `method_facts` holding the row labels of the paper of `chapter` ("TokenTM name")."""
    return f"{PAPERS[chapter]} name"


def method_facts(methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method (default: every registered one), indexed by ``method``, the name ``xaikit.explain`` takes.

    Columns: ``title`` (the name the book uses), ``class_specific`` (the map changes with the explained class),
    ``signed`` (the map can be negative), ``resolution`` ("token grid": one value per patch token, (B, gh, gw);
    "pixels": one per input pixel, (B, H, W)), ``floor`` (a map blind to the model, the level every method has
    to beat), ``paper`` (the references.bib key of the method's paper; empty for a floor) and, per reproduced
    paper, ``"<paper> name"`` (`paper_name_column`): the row label that paper's tables give the method, empty
    where they have none.
    """
    names = list_methods() if methods is None else list(methods)
    rows = []
    for name in names:
        cls = get_method(name)
        unknown = sorted(set(cls.paper_names) - set(PAPERS))
        if unknown:
            raise InvalidParameterError(
                f"method {name!r}: paper_names names {', '.join(map(repr, unknown))}, which are not papers this book "
                f"reproduces; key the names by one of {', '.join(map(repr, PAPERS))}"
            )
        if cls.resolution not in RESOLUTIONS:
            raise InvalidParameterError(
                f"method {name!r}: resolution must be one of {', '.join(map(repr, RESOLUTIONS))}; got {cls.resolution!r}"
            )
        rows.append({
            "method": name,
            "title": getattr(cls, "title", None),
            "class_specific": bool(cls.class_specific),
            "signed": bool(cls.signed),
            "resolution": RESOLUTIONS[cls.resolution],
            "floor": bool(cls.floor),
            "paper": cls.paper,
            **{paper_name_column(chapter): cls.paper_names.get(chapter) for chapter in PAPERS},
        })
    return pd.DataFrame(rows).set_index("method")
