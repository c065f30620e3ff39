"""The shape of `lab` and the book: a folder per paper, no imports between papers, no import
cycles, listings that show the method, and notebook checks that can fail."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest

from lab.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"
PAPERS = LAB / "papers"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every `lab` module that `path` imports, at module level or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lab":
                continue
            for alias in node.names:   # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    """Module → the lab modules it imports (the root package `lab` itself left out: importing
    it for its version or `start` is not a dependency between parts)."""
    return {module_name(p): {m for m in imports_of(p) if m != "lab"} for p in LAB.rglob("*.py")}


def paper_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "papers" else None


def test_a_folder_per_paper_in_book_order():
    folders = sorted(p.name for p in PAPERS.iterdir() if (p / "__init__.py").exists())
    chapter_folders = [c.package.rsplit(".", 1)[1] for c in CHAPTERS]
    assert set(folders) <= set(chapter_folders), "a paper folder that is no chapter"
    for chapter in CHAPTERS:
        folder = PAPERS / chapter.package.rsplit(".", 1)[1]
        if chapter.ready:
            for part in ("method.py", "experiments.py", "figures.py"):
                assert (folder / part).exists(), f"{chapter.id} has no {part}"
            assert hasattr(importlib.import_module(f"{chapter.package}.experiments"), "PRESETS")


def test_papers_never_import_each_other():
    crossing = [(m, d) for m, deps in graph().items() for d in deps
                if paper_of(m) and paper_of(d) and paper_of(m) != paper_of(d)]
    assert not crossing, f"imports between paper folders: {crossing}"


def test_shared_cores_never_import_a_paper():
    upward = [(m, d) for m, deps in graph().items() for d in deps
              if not paper_of(m) and paper_of(d)]
    upward = [(m, d) for m, d in upward if m != "lab.papers"]
    assert not upward, f"shared modules importing a paper: {upward}"


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)


def test_the_cycle_check_catches_a_cycle(tmp_path, monkeypatch):
    """The checker itself: a made-up graph with a cycle must fail."""
    monkeypatch.setattr(__import__(__name__), "graph", lambda: {"a": {"b"}, "b": {"a"}})
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def notebooks():
    return [c.notebook for c in CHAPTERS if c.ready]


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_no_output_comparison_on_notebooks_stored_without_outputs(path):
    """NBVAL_CHECK_OUTPUT compares nothing when the notebook has no stored outputs."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert "NBVAL_CHECK_OUTPUT" not in cell.source or cell.outputs, cell.source[:80]


def _listed(path):
    """The objects a notebook shows with Source(...), resolved with its own imports."""
    nb = nbformat.read(path, as_version=4)
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if re.match(r"^(from lab|import )", line) and "start(" not in line:
                exec(line, namespace)
    for cell in nb.cells:
        if cell.cell_type == "code":
            for expr in re.findall(r"^Source\((.+)\)\s*$", cell.source, re.M):
                yield expr, eval(expr, namespace)


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_listings_show_the_method_within_the_page_width(path):
    from lab.viz import Source
    listed = list(_listed(path))
    assert listed, f"{path.stem} shows no code"
    for expr, obj in listed:
        code = Source(obj).code
        body = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("@"))
        assert "_check." not in body, f"{expr}: argument checks belong in a wrapper, not the listing"
        long = [line for line in code.splitlines() if len(line) > 88]
        assert not long, f"{expr}: lines over 88 characters: {long[:2]}"


def test_the_page_checks_catch_what_they_look_for():
    from pagecheck import PROGRESS, RAW_TEX, WARNING, visible_text
    assert RAW_TEX.search(visible_text("<p>with step $$\\Delta_t = \\mathrm{softplus}$$</p>"))
    assert not RAW_TEX.search(visible_text("<p><mjx-container>\\Delta</mjx-container> ok</p>"))
    assert PROGRESS.search("mimetic · seed 0:   8%|▊         | 25/300 [00:03<00:40]")
    assert WARNING.search('style.py:67: UserWarning: Creating legend with loc="best" can be slow')
    assert not WARNING.search("a warning sign, not a Python warning")


def test_the_label_check_reads_text_heights_at_the_shown_width(tmp_path):
    import base64
    import io
    import json

    from pagecheck import MIN_LABEL_PX, label_heights

    from lab.viz.style import _with_text_chunk, figure, png_bytes
    fig, ax = figure(width=9.0)
    big = png_bytes(fig, dpi=100)                            # 900 px wide, ≥ 9 px text at 676
    plain = io.BytesIO()
    fig.savefig(plain, format="png", dpi=100)
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "small.png").write_bytes(_with_text_chunk(plain.getvalue(),
                                                                      "Lab-Min-Font-Px", "6.00"))
    (tmp_path / "_images" / "plain.png").write_bytes(plain.getvalue())    # no text-size record
    inline = "data:image/png;base64," + base64.b64encode(big).decode()
    widths = json.dumps([[900, 450], [900, 676], [900, 900], [900, 0], [900, 900]])
    dom = (f'<body data-lab-img-widths="{widths.replace(chr(34), "&quot;")}">'
           f'<img src="{inline}"><img src="{inline}"><img src="_images/small.png">'
           f'<img src="_images/small.png"><img src="_images/plain.png"></body>')
    found = [px for _, px in label_heights(dom, tmp_path)]   # the hidden fourth one is skipped
    assert len(found) == 4 and found[3] is None
    assert found[0] < MIN_LABEL_PX <= found[1]               # shown at half width it is too small
    assert found[2] == 6.0 < MIN_LABEL_PX
    with pytest.raises(ValueError, match="data-lab-img-widths"):
        label_heights("<body><img src='fig.png'></body>", tmp_path)


@pytest.mark.parametrize("width,dpi", [(6, 72), (9, 72), (9, 100), (12, 100), (8, 80)])
def test_figures_are_made_legible_at_page_width(width, dpi):
    from lab.viz.style import MIN_TEXT_PX, PAGE_PX, figure, min_font_px_of, png_bytes
    fig, ax = figure(width=width)
    ax.plot([0, 1]), ax.set_title("six points", fontsize=6), ax.tick_params(labelsize=5)
    ax.legend(["five"], fontsize=5)
    shown = min(1.0, PAGE_PX / (width * dpi))
    assert min_font_px_of(png_bytes(fig, dpi=dpi)) * shown >= MIN_TEXT_PX - 0.01
    assert ax.title.get_fontsize() > 6


def test_a_chapters_source_hash_covers_what_it_can_import_and_nothing_else(tmp_path, monkeypatch):
    """Records go stale when code a chapter can run changes (its folder, what it or its notebook
    imports, directly, inside a function or through a chain), not when another chapter's code or
    a shared module it never imports changes."""
    import json

    from lab import paths
    fake = tmp_path / "lab"
    files = {"__init__.py": "from .scale import start\n", "scale.py": "import os\n",
             "train.py": "from . import _check\n", "_check.py": "", "unused.py": "",
             "viz/__init__.py": "", "viz/explorer.py": "", "papers/__init__.py": "",
             "papers/ect/__init__.py": "",
             "papers/ect/method.py": "def f():\n    from ... import train\n",
             "papers/arimec/__init__.py": "", "papers/arimec/method.py": "from lab import unused\n"}
    for rel, text in files.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    (tmp_path / "book").mkdir()
    cell = {"cell_type": "code", "source": "%matplotlib inline\nfrom lab.viz import explorer"}
    (tmp_path / "book" / "ect.ipynb").write_text(json.dumps({"cells": [cell]}))
    monkeypatch.setattr(paths, "LAB", fake)
    monkeypatch.setattr(paths, "repo_root", lambda: tmp_path)
    got = {str(f.relative_to(fake)) for f in paths.chapter_sources("ect")}
    assert got == {"__init__.py", "scale.py", "train.py", "_check.py", "viz/__init__.py",
                   "viz/explorer.py", "papers/__init__.py", "papers/ect/__init__.py",
                   "papers/ect/method.py"}
    ect, arimec, everything = paths.source_hash("ect"), paths.source_hash("arimec"), paths.source_hash()
    for rel in ("papers/arimec/method.py", "unused.py"):
        (fake / rel).write_text("# changed\n")
        assert paths.source_hash("ect") == ect
    assert paths.source_hash("arimec") != arimec and paths.source_hash() != everything
    for rel in ("_check.py", "viz/explorer.py"):  # through train.py; through the notebook
        before = paths.source_hash("ect")
        (fake / rel).write_text("# a shared core changed\n")
        assert paths.source_hash("ect") != before
    with pytest.raises(ValueError, match="chapter"):
        paths.chapter_sources("no-such-chapter")
