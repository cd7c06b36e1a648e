"""Where the demo disagrees with a paper, the page that tests a hypothesis for it says what the test showed (issue 14,
section 3): the item's verdict is saved again, after the experiment, with ``reason=`` built from the experiment's
results, and only when the verdict does not hold (the chapter's results at a glance print it after "Why:"; without
it they say the reason is unknown). Static checks on the notebooks' code cells."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from xaikit.bookpages import BOOK_STATUS, load_items

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = ("tokentm", "cdam")
NOTEBOOKS = sorted(path for chapter in CHAPTERS for path in (REPO / "notebooks" / chapter).glob("*.ipynb"))

#: page -> the items whose disagreement the page tests a hypothesis for (their verdict carries the reason)
REASONED = {
    "tokentm/01_maps": {"Fig. 4"},  # does the class explained matter on one-object shapes?
    "tokentm/02_segmentation": {"Table 1"},  # is the sample too small?
    "tokentm/03_perturbation": {"Tables 2–4"},  # the model's errors; the sign of signed maps
    "tokentm/04_aopc_lodds": {"Table 5"},  # absolute or relative drop
    "tokentm/05_ablations": {"Table 6"},  # +AF on shallow models
    "cdam/02_correctness": {"Table S1 + Figs. S6–S7"},  # pixel resolution
    "cdam/03_class_discrimination": {"Table 2 + Figs. S4–S5"},  # GradCAM's value: both objects seen, the logits' scale
}
#: pages that test a hypothesis which explains no verdict of theirs, and why
EXPLAINS_NO_VERDICT = {
    "cdam/01_maps": "its test asks why the CIFAR-10 concept maps look alike; the verdict on Figs. 4–6 is measured on shapes",
}
HYPOTHESIS = re.compile(r"\bhypothes[ie]s\b", re.IGNORECASE)


def page(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def save_calls(path: Path) -> list[tuple[int, ast.Call, list[ast.AST]]]:
    """Every ``<verdict>.save("<item>", ...)`` in the code cells, in page order: (cell index, call, its enclosing nodes)."""
    found = []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type != "code":
            continue

        def visit(node: ast.AST, parents: list[ast.AST]) -> None:
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found.append((index, node, parents))
            for child in ast.iter_child_nodes(node):
                visit(child, [*parents, node])

        visit(ast.parse(cell.source), [])
    return sorted(found, key=lambda entry: (entry[0], entry[1].lineno))


def item_of(call: ast.Call) -> str:
    return call.args[0].value


def reason_of(call: ast.Call) -> ast.AST | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == "reason"), None)


def names_does_not_hold(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "DOES_NOT_HOLD" or isinstance(n, ast.Attribute) and n.attr == "DOES_NOT_HOLD"
               for n in ast.walk(node))


def test_the_listed_items_are_the_pages_items_in_status_yml():
    items = {(entry.notebook, entry.item) for entry in load_items(BOOK_STATUS) if entry.claim}
    for notebook, reasoned in REASONED.items():
        assert (REPO / "notebooks" / f"{notebook}.ipynb").is_file(), notebook
        for item in reasoned:
            assert (notebook, item) in items, f"{item!r} is not an item with a claim of {notebook} in {BOOK_STATUS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=page)
def test_a_page_that_tests_a_hypothesis_records_what_it_found(path):
    text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    if not HYPOTHESIS.search(text):
        assert page(path) not in REASONED, f"{page(path)} no longer tests a hypothesis: take it out of REASONED"
        return
    assert page(path) in REASONED or page(path) in EXPLAINS_NO_VERDICT, (
        f"{page(path)} tests a hypothesis: save the verdict it explains again after the test, "
        "<verdict>.save(item, reason=<sentence built from the test's results>) when it does not hold, and list the item in "
        "REASONED (or the page in EXPLAINS_NO_VERDICT, saying why it explains no verdict)")
    calls = save_calls(path)
    for item in REASONED.get(page(path), ()):
        of_item = [(index, call) for index, call, _ in calls if item_of(call) == item]
        assert of_item, f"{page(path)} never saves the verdict on {item!r}"
        index, last = of_item[-1]
        assert reason_of(last) is not None, (
            f"{page(path)}: the last save of {item!r} (cell {index}) has no reason=: save it again after the experiment that "
            "tests its hypothesis, with what the experiment showed")
        assert len(of_item) >= 2, (
            f"{page(path)}: {item!r} is saved with its reason only; save the verdict where it is derived, then again after the test")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=page)
def test_a_reason_is_built_from_results_and_given_only_when_the_verdict_does_not_hold(path):
    for index, call, parents in save_calls(path):
        reason = reason_of(call)
        if reason is None:
            continue
        where = f"{page(path)}, cell {index}, save({item_of(call)!r})"
        assert any(isinstance(node, ast.Name) for node in ast.walk(reason)), (
            f"{where}: the reason is typed text; build it from the experiment's results (variables), never type it")
        assert any(isinstance(parent, ast.If) and names_does_not_hold(parent.test) for parent in parents) or (
            isinstance(reason, ast.IfExp) and names_does_not_hold(reason.test)), (
            f"{where}: a reason is given only when the verdict does not hold: guard it with "
            "`if <verdict>.verdict == DOES_NOT_HOLD:`")
