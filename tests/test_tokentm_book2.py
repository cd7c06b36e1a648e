"""The TokenTM chapter's text (issue 14): the paper's figures and tables are named as the paper's, so they never
collide with the book's own numbering; every table of methods with intervals also gives each row's rank interval."""

from __future__ import annotations

import ast
import html
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTER_NOTEBOOKS = sorted((REPO / "notebooks" / "tokentm").glob("*.ipynb"))
CHAPTER_TEXTS = sorted((REPO / "book" / "tokentm").glob("*.md"))
CHAPTER_MODULES = sorted((REPO / "xaikit" / "experiments").glob("tokentm*.py")) + [
    REPO / "xaikit" / "experiments" / "perturbation_tables.py"
]

#: a figure or table number that is not said to be the paper's ("Figure 3.2", the book's own, does not match)
BARE_PAPER_REFERENCE = re.compile(r"(?<!paper's )\b(Figure|Table|Fig\.|Figs\.|Tables) S?\d+\b(?!\.\d)")
#: calls whose string arguments are keys, not text a reader sees (a status.yml item: ``verdict.save("Table 1")``)
KEY_CALLS = {"save"}


def bare_references(text: str) -> list[str]:
    """The paper figure/table references in `text` that do not say they are the paper's (line breaks read as spaces)."""
    flat = re.sub(r"\s+", " ", text)
    return [flat[max(0, m.start() - 40) : m.end() + 10] for m in BARE_PAPER_REFERENCE.finditer(flat)]


def shown_strings(source: str) -> list[str]:
    """The string literals of Python `source` that can reach a page: not docstrings, not keys given to `KEY_CALLS`
    (comments are not strings). An f-string gives its literal parts."""
    tree = ast.parse(source)
    hidden: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            hidden.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in KEY_CALLS:
            hidden.update(id(arg) for arg in node.args)
    strings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in hidden:
            strings.append(node.value)
    return strings


def cell_sources(path: Path, kind: str) -> list[str]:
    notebook = json.loads(path.read_text())
    sources = ("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in notebook["cells"]
               if c["cell_type"] == kind)
    # IPython magics are not Python; the chapter has none, but a line starting with % or ! must not break the parse
    return [re.sub(r"(?m)^\s*[%!].*$", "", s) for s in sources]


def test_bare_references_find_the_papers_numbers_and_spare_the_books_own():
    assert bare_references("as Table 6 shows") == ["as Table 6 shows"]
    assert bare_references("in Figs. 1 and 4") and bare_references("Tables 2–4 of") and bare_references("its Fig. S1")
    assert bare_references("the paper's\nTable 6") == []  # a line break inside the phrase is a space on the page
    assert bare_references("Figure 3.2 and Table 3.1, the paper's Fig. 5 and the paper's Tables 2–4") == []


def test_shown_strings_leave_out_docstrings_comments_and_item_keys():
    source = '''
def f():
    """Table 1: a docstring."""
    return "the paper's Table 1"  # Table 2 in a comment
verdict.save("Table 3")
caption = f"Table 4 of {n} images"
'''
    strings = shown_strings(source)
    assert "the paper's Table 1" in strings and "Table 4 of " in strings
    assert not any("Table 1: a docstring" in s or "Table 3" in s or "Table 2" in s for s in strings)


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS + CHAPTER_TEXTS, ids=lambda p: p.name)
def test_the_chapters_text_names_the_papers_figures_and_tables_as_the_papers(path):
    texts = [path.read_text()] if path.suffix == ".md" else cell_sources(path, "markdown")
    texts += [s for source in (cell_sources(path, "code") if path.suffix == ".ipynb" else []) for s in shown_strings(source)]
    found = [hit for text in texts for hit in bare_references(text)]
    assert found == [], f"{path.name}: say \"the paper's Table 6\" (or \"the paper's Fig. 5\"): {found}"


@pytest.mark.parametrize("path", CHAPTER_MODULES, ids=lambda p: p.name)
def test_the_chapters_modules_put_no_bare_paper_reference_on_a_page(path):
    found = [hit for text in shown_strings(path.read_text()) for hit in bare_references(text)]
    assert found == [], f"{path.name}: a string that reaches a page says {found}; say \"the paper's Table 6\""


# -- rank intervals in every shown table of methods ----------------------------------------------------------------------

TABLE = re.compile(r"<table.*?</table>", re.S)


def league_tables_without_rank(notebook: dict) -> list[str]:
    """The captions of the executed notebook's shown tables that give rows of methods (index "method" or "row") with
    bootstrap intervals but no rank column."""
    missing = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            page = output.get("data", {}).get("text/html", "")
            for table in TABLE.findall("".join(page) if isinstance(page, list) else page):
                caption = html.unescape(" ".join(re.findall(r"<caption>(.*?)</caption>", table, re.S)))
                headers = [html.unescape(h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)]
                if "bootstrap" in caption and {"method", "row"} & set(headers) and not any(h.endswith("rank") for h in headers):
                    missing.append(caption[:120])
    return missing


def executed_table(caption: str, headers: list[str], index_name: str = "method") -> dict:
    cells = "".join(f"<th>{h}</th>" for h in headers)
    page = f"<table><caption>{caption}</caption><thead><tr>{cells}</tr><tr><th>{index_name}</th></tr></thead></table>"
    return {"cells": [{"cell_type": "code", "outputs": [{"data": {"text/html": page}}]}]}


def test_league_tables_without_rank_catches_a_table_of_means_without_ranks():
    assert league_tables_without_rank(executed_table("means with 95 % bootstrap intervals", ["mIoU", "paper mIoU"], "row"))
    assert not league_tables_without_rank(executed_table("means with 95 % bootstrap intervals", ["mIoU", "mIoU rank"], "row"))
    assert not league_tables_without_rank(executed_table("a bootstrap interval per model", ["ρ"], "model"))


def test_every_executed_tokentm_table_of_methods_gives_rank_intervals(smoke_book):
    work, _, _, _ = smoke_book
    pages = sorted((work / "book" / "tokentm").glob("*.ipynb"))
    assert pages, "the smoke run executed no TokenTM page"
    missing = {page.name: found for page in pages if (found := league_tables_without_rank(json.loads(page.read_text())))}
    assert missing == {}, f"tables of methods with intervals but no rank interval: {missing}"
