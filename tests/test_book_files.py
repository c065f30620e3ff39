"""The book's sources agree with each other: config, table of contents, notebooks, packaging."""
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from lab.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
READY = [c for c in CHAPTERS if c.ready]


def test_jupyter_book_is_pinned_to_1x():
    assert '"jupyter-book>=1,<2"' in (ROOT / "pyproject.toml").read_text()


def test_toc_lists_exactly_the_ready_chapters():
    toc = (ROOT / "_toc.yml").read_text()
    for chapter in CHAPTERS:
        assert (f"file: book/{chapter.id}" in toc) == chapter.ready, chapter.id


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_notebook_names_the_configured_repository(chapter):
    url, branch = CONFIG["repository"]["url"], CONFIG["repository"]["branch"]
    slug = url.removeprefix("https://github.com/")
    text = chapter.notebook.read_text()
    badges = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/(book/[\w-]+\.ipynb)", text)
    installs = re.findall(r"git\+https://github\.com/([^@\"]+)@([\w.-]+)", text)
    assert badges and installs, "a chapter needs a Colab badge and an install cell"
    assert all(b == (slug, branch, f"book/{chapter.id}.ipynb") for b in badges), badges
    assert all(i == (slug, branch) for i in installs), installs


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_notebook_is_stored_clean(chapter):
    nb = nbformat.read(chapter.notebook, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store notebooks without outputs"


def test_widget_manager_is_served_from_the_book():
    cfg = CONFIG["sphinx"]["config"]
    assert "_vendor" in cfg["html_static_path"]
    assert set(cfg["nb_ipywidgets_js"]) == {"require.js", "embed-amd.js"}


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_chapter_title_is_the_same_everywhere(chapter):
    """The table of contents shows the notebook's heading; the intro's table and the ledger show
    the registry's title: they must agree."""
    nb = nbformat.read(chapter.notebook, as_version=4)
    assert nb.cells[0].source.splitlines()[0] == f"# {chapter.title}"


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_install_cell_is_folded_and_start_is_one_line(chapter):
    nb = nbformat.read(chapter.notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "pip" in code[0].source and "hide-cell" in code[0].metadata.get("tags", [])
    assert f'session, cfg, ledger = start("{chapter.id}")' in code[1].source


# What a reader and a teacher find at the end of every chapter, in this order.
END_SECTIONS = ("## The claims", "## Key takeaways", "## What each experiment mirrors in the paper",
                "## Exercises", "## What changes at larger scale", "## References")


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_chapter_has_the_standard_sections_in_order(chapter):
    nb = nbformat.read(chapter.notebook, as_version=4)
    heads = [line.strip() for c in nb.cells if c.cell_type == "markdown"
             for line in c.source.splitlines() if line.startswith("## ")]
    missing = [h for h in END_SECTIONS if h not in heads]
    assert not missing, f"{chapter.id} lacks {missing}"
    order = [heads.index(h) for h in END_SECTIONS]
    assert order == sorted(order), f"{chapter.id}: the sections must come in the order {END_SECTIONS}"
    references = nb.cells[-1].source
    assert references.startswith("## References") and "arxiv.org/abs/" + chapter.arxiv in references, (
        f"{chapter.id}: the last cell must be the references, starting with the paper")
    mirrors = next(c.source for c in nb.cells if c.source.startswith("## What each experiment mirrors"))
    assert mirrors.count("\n|") >= 3, f"{chapter.id}: the mirrors section is a table, one row per experiment"


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_code_cells_fit_the_page(chapter):
    """88 columns fit the text column (book/_static/lab.css sets the code font for it)."""
    nb = nbformat.read(chapter.notebook, as_version=4)
    long = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
            if len(line) > 88]
    assert not long, f"{chapter.id}: code lines over 88 characters: {long[:3]}"


def test_the_course_page_plans_every_ready_chapter():
    course = (ROOT / "book" / "course.md").read_text()
    rows = [line for line in course.splitlines() if line.startswith("| ") and ".ipynb)" in line]
    linked = [re.search(r"\]\(([\w-]+)\.ipynb\)", row).group(1) for row in rows]
    assert linked == [c.id for c in READY], "the course table lists the ready chapters in book order"
    assert "file: book/course" in (ROOT / "_toc.yml").read_text()
