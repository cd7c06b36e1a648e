"""The book's own text keeps the conventions of Foundation III (issue 7, section 4), checked on the sources:
figures through xaikit.viz with numbered captions, tables also saved as CSV, no typed measurements the
reader found wrong, one search field, and an intro that claims only the chapters that exist."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*/*.ipynb"))


def cells(path: Path, kind: str) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == kind]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_figure_is_glued_through_viz_with_a_numbered_caption(path):
    code, markdown = "\n".join(cells(path, "code")), "\n".join(cells(path, "markdown"))
    glued = re.findall(r'glue_figure\(\s*"([^"]+)"', code)
    assert "plt.show()" not in code and "fig.show()" not in code  # a figure reaches the page only through glue
    for name in glued:
        block = re.search(r"```\{glue:figure\} " + re.escape(name) + r"\n:name: " + re.escape(name) + r"\n\n\S", markdown)
        assert block, f"{path.name}: figure {name!r} has no {{glue:figure}} block with :name: (numbered caption)"
    if glued:
        assert re.search(r"from xaikit\.viz import [^\n]*glue_figure", code), f"{path.name}: figures go through xaikit.viz"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shown_table_is_also_saved_as_csv(path):
    code = "\n".join(cells(path, "code"))
    if "show_table(" in code:
        assert "save_table(" in code, f"{path.name} shows tables but writes none as CSV"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_typed_measurement_the_reader_found_wrong(path):
    text = "\n".join(cells(path, "markdown"))
    for typed in (r"10\^\{?-\d", r"about 2 h\b", r"\b1 threads\b", r"below 10"):
        assert not re.search(typed, text), f"{path.name}: typed {typed!r} (glue the measured figure)"


def test_page_01_derives_its_uniformity_sentence_from_the_numbers():
    text = "\n".join(cells(REPO / "notebooks/foundations/01_anatomy.ipynb", "markdown"))
    assert "less uniform" not in text
    assert "{glue:text}`entropy_most_uniform_block`" in text and "{glue:text}`entropy_least_uniform_block`" in text


def test_one_search_field():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["sphinx"]["config"]["html_theme_options"]["navbar_persistent"] == []


def test_the_intro_claims_exactly_the_chapters_that_have_notebooks():
    intro = (REPO / "book/intro.md").read_text()
    assert "dozen" not in intro
    built = {p.name for p in (REPO / "notebooks").iterdir() if p.is_dir() and any(p.glob("*.ipynb"))}
    exists = intro.split("## ")[0].split("What exists today", 1)[1]
    for chapter in ("foundations", "tokentm", "cdam", "vita"):
        linked = f"<{chapter}/index>" in exists
        assert linked == (chapter in built), f"intro: chapter {chapter} {'is' if linked else 'is not'} claimed, notebooks: {sorted(built)}"


@pytest.mark.parametrize("chapter, key", [("tokentm", "wu2024tokentm"), ("cdam", "brocki2023cdam"), ("vita", "echevarrieta2025vita")])
def test_each_paper_chapter_cites_its_paper_with_a_link_and_says_where_the_code_is(chapter, key):
    page = (REPO / "book" / chapter / "index.md").read_text()
    assert f"{{cite:p}}`{key}`" in page
    assert re.search(r"\]\(https://(arxiv\.org/abs|doi\.org|openaccess\.thecvf\.com)/", page), "a link to the paper"
    assert "**The authors' code.**" in page
    assert "@" in (REPO / "book/references.bib").read_text().split(key)[0][-40:], f"{key} is in references.bib"


def test_page_01_says_it_traces_a_batch():
    text = "\n".join(cells(REPO / "notebooks/foundations/01_anatomy.ipynb", "markdown"))
    assert "one image" not in text and "a batch" in text
