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


# -- numbered figures and tables (issue 14) ---------------------------------------------------------------
FENCE = re.compile(r"^(`{3,}|:{3,})\{(glue:figure|table)\}[^\n]*\n((?::[\w-]+:[^\n]*\n)*)", re.M)


def numbered_blocks(markdown: str) -> list[tuple[str, str | None]]:
    """(directive, :name: or None) of every {glue:figure} and {table} block."""
    found = []
    for match in FENCE.finditer(markdown):
        name = re.search(r"^:name:\s*(\S+)", match.group(3), re.M)
        found.append((match.group(2), name.group(1) if name else None))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_numbered_figure_and_table_block_has_a_name(path):
    markdown = "\n".join(cells(path, "markdown"))
    blocks = numbered_blocks(markdown)
    assert [kind for kind, name in blocks if name is None] == [], f"{path.name}: a {{glue:figure}} or {{table}} without :name:"
    names = [name for _, name in blocks]
    assert len(names) == len(set(names)), f"{path.name}: two blocks share a :name:"


def test_the_name_check_catches_a_block_without_name():
    assert numbered_blocks("```{glue:figure} fig-a\n:figwidth: 50%\n\nCaption\n```\n") == [("glue:figure", None)]
    assert numbered_blocks("````{table} Caption\n:name: tab-a\n\n```{glue:md} tab-a\n```\n````\n") == [("table", "tab-a")]


def test_the_book_numbers_its_chapters():
    options = yaml.safe_load((REPO / "book/_toc.yml").read_text()).get("options", {})
    assert options.get("numbered") is True
    sphinx = yaml.safe_load((REPO / "_config.yml").read_text())["sphinx"]["config"]
    assert sphinx["numfig"] is True and sphinx["numfig_secnum_depth"] == 1
    assert sphinx["numfig_format"]["figure"] == "Figure %s" and sphinx["numfig_format"]["table"] == "Table %s"


PAGE_CODE = '''import matplotlib.pyplot as plt
import pandas as pd
from xaikit.report import show_table
from xaikit.viz import book_style, glue_figure, glue_table
book_style()
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1], [1, 0])
glue_figure("fig-curve", fig)
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1], [0, 1])
glue_figure("fig-other", fig)
table = pd.DataFrame({"pixel accuracy": [84.04, 49.9]}, index=pd.Index(["all_background", "random"], name="method"))
glue_table("tab-floors", show_table(table, 1))
show_table(table.rename(index={"random": "random floor"}), 2, caption="Shown with its caption.")
'''

PAGE_TEXT = '''Both figures and the table are numbered by chapter; {numref}`tab-floors` holds the floors.

```{glue:figure} fig-curve
:name: fig-curve

A falling line.
```

```{glue:figure} fig-other
:name: fig-other

A rising line.
```

````{table} The floors.
:name: tab-floors

```{glue:md} tab-floors
:format: myst
```
````
'''


def test_a_rendered_book_numbers_figures_and_tables_per_chapter(tmp_path, monkeypatch):
    """A two-chapter book through `xaikit run` and `xaikit build` with the book's own configuration: the
    numbers run on through a chapter's pages ("Figure 2.2" follows the chapter index's "Figure 2.1") and start
    again in the next chapter; tables count apart ("Table 2.1")."""
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xaikit.cli import build_book
    from xaikit.runner import run_notebooks

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel and the build import this checkout's xaikit
    source, book = tmp_path / "notebooks", tmp_path / "book"
    page = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Results"),
        nbformat.v4.new_code_cell('profile: str = "demo"  # smoke | demo | paper', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(PAGE_CODE),
        nbformat.v4.new_markdown_cell(PAGE_TEXT),
    ])
    page.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (source / "two").mkdir(parents=True)
    nbformat.write(page, source / "two" / "01_results.ipynb")
    for folder in ("one", "two"):
        (book / folder).mkdir(parents=True)
    shutil.copytree(REPO / "book" / "_static", book / "_static")
    for name in ("status.yml", "references.bib"):
        shutil.copyfile(REPO / "book" / name, book / name)
    fig, ax = plt.subplots(figsize=(2, 2))
    for folder in ("one", "two"):
        fig.savefig(book / folder / "picture.png")
    plt.close(fig)
    (book / "intro.md").write_text("# Intro\n\nNot numbered.\n")
    (book / "one" / "index.md").write_text("# One\n\n```{figure} picture.png\n:name: fig-one\n\nA picture.\n```\n")
    (book / "two" / "index.md").write_text("# Two\n\n```{figure} picture.png\n:name: fig-two\n\nAnother picture.\n```\n")
    toc = {"format": "jb-book", "root": "intro",
           "options": yaml.safe_load((REPO / "book/_toc.yml").read_text())["options"],
           "chapters": [{"file": "one/index"}, {"file": "two/index", "sections": [{"file": "two/01_results"}]}]}
    (book / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    out = tmp_path / "out"
    runs = run_notebooks("smoke", source=source, output_dir=out, book=book, log=lambda *_: None)
    assert [run.ok for run in runs] == [True], runs[0].error[-2000:]
    assert build_book(out) == 0  # warnings are errors

    def text(name: str) -> str:
        return " ".join(re.sub(r"<[^>]+>", " ", (out / "_build" / "html" / f"{name}.html").read_text()).split())

    assert "Figure 1.1 A picture." in text("one/index") and "Figure 2.1 Another picture." in text("two/index")
    results = text("two/01_results")
    assert "Figure 2.2 A falling line." in results and "Figure 2.3 A rising line." in results
    # a table shown with a caption (xaikit.report.show_table) is numbered like a {table} block of the text
    assert "Table 2.1 Shown with its caption." in results and "random floor 49.90" in results
    assert "Table 2.2 The floors." in results and "Table 2.2 holds the floors" in results
    assert "all_background 84.0" in results and "random 49.9" in results  # the table's cells, as show_table rounds them
    assert "2.1. Results" in results  # the page is section 1 of chapter 2
    html = (out / "_build" / "html" / "two" / "01_results.html").read_text()
    for name in ("fig-curve", "fig-other"):  # the glued figures are pictures
        assert re.search(f'<figure[^>]*id="{name}">\\s*<img', html), name
    # the parameters cell collapsed whole, the code cell's input collapsed, papermill's cell absent
    assert re.findall(r'class="cell (tag_[^"]*) docutils container"', html) == ["tag_parameters tag_hide-cell", "tag_hide-input"]
    assert html.count('<details class="admonition hide above-input">') == 2 and 'profile = "smoke"' not in html


# -- issue 14: the methods at a glance, complete references, the intro's verdict columns ----------------------------

METHODS_PAGE = REPO / "notebooks/foundations/04_methods.ipynb"
REFERENCES = REPO / "book/references.bib"
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


def bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", REFERENCES.read_text(), flags=re.MULTILINE))


def cited_keys(text: str) -> set[str]:
    return {key.strip() for keys in CITE.findall(text) for key in keys.split(",")}


def page_sections(path: Path) -> dict[str, str]:
    """Heading line -> the text below it up to the next heading, over all markdown cells of a notebook."""
    text = "\n".join(cells(path, "markdown"))
    parts = re.split(r"^(#{1,6} .*)$", text, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2])}


@pytest.mark.parametrize("name", __import__("xaikit").list_methods())
def test_every_registered_method_has_a_section_on_the_methods_page_that_cites_its_paper(name):
    from xaikit.methods import method_facts

    facts = method_facts().loc[name]
    heading = f"### {facts['title']} (`{name}`)"
    sections = page_sections(METHODS_PAGE)
    assert heading in sections, f"04_methods has no section {heading!r} (a method's heading is its title and its name)"
    body = sections[heading]
    assert re.search(r"\$[^$]+\$", body), f"{heading}: give the method's formula"
    if not facts["floor"]:
        assert facts["paper"] in cited_keys(body), f"{heading}: cite the method's paper, {{cite:p}}`{facts['paper']}`"


def test_every_methods_paper_is_in_the_references():
    from xaikit.methods import method_facts

    papers = set(method_facts()["paper"].dropna())
    assert papers and papers - bib_keys() == set(), f"not in book/references.bib: {sorted(papers - bib_keys())}"


def test_every_cited_key_is_in_the_references():
    sources = [p for p in (REPO / "book").rglob("*.md") if not {"_build", "_generated", "_run"} & set(p.parts)]
    cited = {}
    for path in sources:
        cited.update(dict.fromkeys(cited_keys(path.read_text()), path.name))
    for path in NOTEBOOKS:
        cited.update(dict.fromkeys(cited_keys("\n".join(c.source for c in nbformat.read(path, as_version=4).cells)), path.name))
    assert len(cited) > 10, "the citation pattern found (almost) nothing: check CITE"
    missing = {key: where for key, where in cited.items() if key not in bib_keys()}
    assert missing == {}, f"cited but not in book/references.bib (key: page): {missing}"


def test_the_protocols_and_data_papers_are_in_the_references():
    keys = bib_keys()
    for key in ("guillaumin2014imagenet", "deng2009imagenet", "russakovsky2015imagenet", "samek2017evaluating",
                "shrikumar2017deeplift", "krizhevsky2009cifar", "armato2011lidc", "fel2022harmonizing", "beyer2020real"):
        assert key in keys


def test_the_intro_explains_the_claim_and_verdict_columns_and_maps_items_to_notebooks():
    from xaikit.bookpages import NOT_RUN_YET, VERDICT_COLUMNS, VERDICTS

    intro = (REPO / "book/intro.md").read_text()
    text = " ".join(intro.split())
    assert "one table or figure per notebook" not in text  # a notebook may reproduce several items
    for column in ("Claim", VERDICT_COLUMNS["demo"], VERDICT_COLUMNS["paper"]):
        assert f"**{column}**" in text, f"the intro does not explain the column {column!r}"
    for verdict in (*VERDICTS, NOT_RUN_YET):
        assert f"**{verdict}**" in text, f"the intro does not say what {verdict!r} means"
    assert "bootstrap" in text and "95 %" in text and "xaikit.verdicts" in text
    assert "<foundations/04_methods>" in intro  # the methods page is linked


def test_the_methods_page_is_in_the_book_and_the_status_source():
    toc = (REPO / "book/_toc.yml").read_text()
    status = yaml.safe_load((REPO / "book/status.yml").read_text())
    foundations = next(c for c in status["chapters"] if c["chapter"] == "foundations")
    assert "file: foundations/04_methods" in toc
    assert "foundations/04_methods" in [item["notebook"] for item in foundations["items"]]


def _saved_items(path: Path) -> set[str]:
    """The status items a notebook records a verdict on: `<verdict>.save("item"...)` or `save_verdict("item", ...)`."""
    code = "\n".join(cells(path, "code"))
    return set(re.findall(r"""(?:\.save|save_verdict)\(\s*["']([^"']+)["']""", code))


def test_every_claim_of_a_built_notebook_gets_a_verdict_recorded_by_it():
    from xaikit.bookpages import load_items

    missing = []
    for item in load_items(REPO / "book/status.yml"):
        path = REPO / "notebooks" / f"{item.notebook}.ipynb" if item.notebook else None
        if item.claim and path is not None and path.is_file() and item.item not in _saved_items(path):
            missing.append(f"{item.notebook}: {item.item}")
    assert not missing, f"these items have a claim and a notebook, but the notebook records no verdict on them: {missing}"


def test_the_verdict_check_sees_a_notebook_that_forgets_an_item(tmp_path):
    page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('verdict.save("Table 1")\nsave_verdict(\'Fig. 2\', v, e)')])
    nbformat.write(page, tmp_path / "page.ipynb")
    assert _saved_items(tmp_path / "page.ipynb") == {"Table 1", "Fig. 2"}



def test_every_chapter_index_shows_its_results_at_a_glance():
    from xaikit.bookpages import load_items

    chapters = {item.chapter for item in load_items(REPO / "book/status.yml") if item.claim}
    for chapter in sorted(chapters):
        index = REPO / "book" / chapter / "index.md"
        if any((REPO / "notebooks" / chapter).glob("*.ipynb")):
            assert f"_generated/glance-{chapter}.md" in index.read_text(), f"{index} does not include its results at a glance"


PAPER_REFERENCE = re.compile(r"\b(?:Figures?|Tables?|Figs?\.)\s+S?\d+(?!\.\d)")
PAGE_SOURCES = ["xaikit/experiments", "xaikit/protocols/cdam.py", "xaikit/viz.py", "xaikit/train/recipes.py"]


def unmarked_paper_references(text: str) -> list[str]:
    """References to a paper's figure or table that do not say they are the paper's ("Table 2" rather than
    "the paper's Table 2" or "Table 2 of the paper"): a reader takes them for the book's own numbered ones."""
    found = []
    for match in PAPER_REFERENCE.finditer(text):
        before, after = text[max(0, match.start() - 40):match.start()], text[match.end():match.end() + 30]
        if re.search(r"paper", before, re.IGNORECASE) or re.match(r"[–\-\dS, ]*(?:of|in) (?:the|their|its) paper", after):
            continue
        found.append(text[max(0, match.start() - 30):match.end() + 10].replace("\n", " "))
    return found


def _shown_strings(path: Path) -> list[str]:
    """String constants of a module that can reach a page (docstrings left out)."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_paper_reference_check_tells_the_papers_numbers_from_the_books():
    assert unmarked_paper_references("as Table 2 shows; see Figure 3.2") == ["as Table 2 shows; see Figure 3.2"[:20]]
    assert not unmarked_paper_references("the paper's Table 2 and Figure 3.2; Table 5 of the paper; "
                                         "the paper's Table S1 + Figs. S6–S7; Tables 2–4 in the paper")


def test_every_paper_figure_or_table_the_reader_sees_says_it_is_the_papers():
    from xaikit.bookpages import load_items

    item_keys = {item.item for item in load_items(REPO / "book/status.yml")}  # `.save("Fig. 1")`: keys, not text
    sources = {}
    for path in NOTEBOOKS:
        page = nbformat.read(path, as_version=4)
        sources[str(path.relative_to(REPO))] = "\n".join(
            [c.source for c in page.cells if c.cell_type == "markdown"]
            + [s for c in page.cells if c.cell_type == "code" for s in _code_strings(c.source) if s not in item_keys])
    for path in sorted((REPO / "book").rglob("*.md")):
        sources[str(path.relative_to(REPO))] = path.read_text()
    for name in PAGE_SOURCES:
        for path in sorted((REPO / name).rglob("*.py")) if (REPO / name).is_dir() else [REPO / name]:
            sources[str(path.relative_to(REPO))] = "\n".join(_shown_strings(path))
    unmarked = {name: found for name, text in sources.items() if (found := unmarked_paper_references(text))}
    assert not unmarked, f"say 'the paper's Table N' / 'the paper's Fig. N' where these refer to a paper: {unmarked}"


def _code_strings(source: str) -> list[str]:
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics: its raw text
        return [source]
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
