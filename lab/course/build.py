"""Build an nbgrader course folder from the book's chapters.

The book notebook stays the one source. Its exercise cells (tagged ``exercise``: an
``answer_<n> = None`` line and a ``check(...)`` call) become, in the course version,

* a solution cell: ``answer_<n> = None`` and the instructor's worked solution between nbgrader's
  ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers (from :mod:`lab.course.solutions`);
* an autograded test cell: ``answered(...)``, which tells the student only whether the answer
  has the right form, then the book's own comparison between ``### BEGIN HIDDEN TESTS`` /
  ``### END HIDDEN TESTS`` (against the chapter's ``answers`` module, with the book's tolerance).

Each reasoned answer folded in a dropdown becomes a manually graded answer cell holding it; every
other cell is locked. ``nbgrader generate_assignment`` then writes the student version to
``release/``: no solution, no hidden test, no reasoned answer, no expected value left in it.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from ..chapters import CHAPTERS, get
from .feedback import CHECK_DEFAULTS
from .solutions import SOLUTIONS

EXERCISE_TAG = "exercise"
POINTS = 1          # each numerical exercise and each reasoned question
_DROPDOWN = re.compile(r"```\{admonition\}[ \t]*(?P<title>[^\n]*)\n:class: dropdown\n(?P<body>.*?)\n```",
                       re.DOTALL)
_ANSWERS_SENTENCE = re.compile(r"The expected\s+values\s+live\s+in\s+`lab\.papers\.\w+\.answers`,"
                               r"\s+out\s+of\s+sight;")
_ANSWERS_IMPORT = re.compile(r"^(from lab\.papers\.\w+ import )answers, ", re.MULTILINE)
_CHECK_IMPORT = "from lab.exercises import check"
_QUESTION_NUMBER = re.compile(r"\*\*(\d+)\.")
_CHECK_CALL = re.compile(r"(?<![\w.])check\(")

CONFIG = '''\
"""nbgrader configuration of this course folder (written by `python -m lab course build`)."""
import os

c = get_config()  # noqa: F821
here = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.root = here
c.CourseDirectory.course_id = "explorable-papers"
# the answer cells keep running top to bottom when the student has not answered yet
c.ClearSolutions.code_stub = {{"python": "# YOUR ANSWER HERE: replace None above"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# autograding runs whole chapters: allow each cell its training run
c.Execute.timeout = {timeout}
# grade at the book's laptop scale, explorers as static figures, claims recorded in this folder
os.environ.setdefault("LAB_SCALE", "tiny")
os.environ.setdefault("LAB_EXPLORERS", "static")
os.environ.setdefault("LAB_RESULTS_DIR", os.path.join(here, "results"))
'''


def _nbgrader(cell, grade_id: str, *, solution=False, grade=False, locked=False, task=False,
              points=None):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": task}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def _call_args(call: ast.Call, source: str) -> dict:
    """name, answer variable, expected expression and tolerances of a book ``check(...)`` call."""
    if len(call.args) != 3 or not isinstance(call.args[0], ast.Constant) \
            or not isinstance(call.args[1], ast.Name):
        raise ValueError(f"unexpected check call: {ast.get_source_segment(source, call)}")
    keywords = {k.arg: k.value for k in call.keywords}
    unknown = set(keywords) - {"rel", "abs_tol", "hint"}
    if unknown:
        raise ValueError(f"check call with unknown arguments {sorted(unknown)}")
    return {"name": call.args[0].value, "variable": call.args[1].id,
            "expected": ast.get_source_segment(source, call.args[2]),
            **{k: ast.literal_eval(keywords[k]) if k in keywords else default
               for k, default in CHECK_DEFAULTS.items()}}


def parse_exercise(source: str) -> dict:
    """Split a book exercise cell into its number, its ``check`` call's parts and the other lines
    (which stay visible, before the feedback)."""
    tree = ast.parse(source)
    answer = check = None
    others = []
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and re.fullmatch(r"answer_\d+", stmt.targets[0].id)
                and isinstance(stmt.value, ast.Constant) and stmt.value.value is None):
            answer = stmt.targets[0].id
        elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
              and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check"):
            check = _call_args(stmt.value, source)
        else:
            others.append(ast.get_source_segment(source, stmt))
    if answer is None or check is None or check["variable"] != answer:
        raise ValueError(f"an exercise cell needs `answer_<n> = None` and check(..., answer_<n>, ...);"
                         f" got:\n{source}")
    return dict(check, number=int(answer.split("_")[1]), others=others)


def _exercise_cells(ex: dict, solution, package: str) -> list:
    n, var = ex["number"], ex["variable"]
    answer = nbformat.v4.new_code_cell(
        f"{var} = None\n### BEGIN SOLUTION\n{solution.code}\n### END SOLUTION")
    whole = ", whole=True" if solution.whole else ""
    tolerance = f"rel={ex['rel']!r}, abs_tol={ex['abs_tol']!r}"
    test = nbformat.v4.new_code_cell("\n".join([
        *ex["others"],
        f"answered({ex['name']!r}, {var}{whole})",
        "### BEGIN HIDDEN TESTS",
        "from lab.course.feedback import assert_close",
        f"from lab.papers.{package} import answers",
        f"assert_close({var}, {ex['expected']}, {tolerance})",
        "### END HIDDEN TESTS"]))
    return [_nbgrader(answer, f"answer_{n}", solution=True),
            _nbgrader(test, f"test_{n}", grade=True, locked=True, points=POINTS)]


def _markdown_cells(source: str, used: set) -> list:
    """A markdown cell of the exercises, its folded reasoned answers made manually graded
    answer cells (the reasoned answer is what the grader reads; the student sees none of it)."""
    cells, rest = [], source
    while (m := _DROPDOWN.search(rest)):
        before = rest[:m.start()].strip()
        if before:
            cells.append(nbformat.v4.new_markdown_cell(before))
        numbers = _QUESTION_NUMBER.findall(before) or [str(len(used) + 1)]
        grade_id = f"question_{numbers[-1]}"
        if grade_id in used:
            raise ValueError(f"two reasoned answers for question {numbers[-1]}")
        used.add(grade_id)
        title = m["title"].strip()
        answer = nbformat.v4.new_markdown_cell((f"**{title}.** " if title else "") + m["body"].strip())
        cells.append(_nbgrader(answer, grade_id, solution=True, grade=True, points=POINTS))
        rest = rest[m.end():]
    if rest.strip():
        cells.append(nbformat.v4.new_markdown_cell(rest.strip()))
    return cells


def course_notebook(chapter_id: str) -> nbformat.NotebookNode:
    """The nbgrader source version of a chapter's notebook (see the module's docstring)."""
    chapter = get(chapter_id)
    package = chapter.id.replace("-", "_")
    solutions = SOLUTIONS.get(chapter.id, {})
    nb = nbformat.read(chapter.notebook, as_version=4)
    starts = [i for i, c in enumerate(nb.cells)
              if c.cell_type == "markdown" and c.source.startswith("## Exercises")]
    if len(starts) != 1:
        raise ValueError(f"{chapter.id}: expected one '## Exercises' section")
    start = starts[0]
    end = next(i for i in range(start + 1, len(nb.cells))
               if nb.cells[i].cell_type == "markdown" and nb.cells[i].source.startswith("## "))
    cells, used, numbers = [], set(), []
    for i, cell in enumerate(nb.cells):
        cell = nbformat.from_dict(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        tagged = EXERCISE_TAG in cell.metadata.get("tags", [])
        if cell.cell_type == "code" and _CHECK_CALL.search(cell.source) and not tagged:
            raise ValueError(f"{chapter.id}: cell {i} calls check() but is not tagged {EXERCISE_TAG!r}")
        if tagged:
            if not start < i < end:
                raise ValueError(f"{chapter.id}: cell {i} is tagged {EXERCISE_TAG!r} outside the exercises")
            ex = parse_exercise(cell.source)
            if ex["number"] not in solutions:
                raise ValueError(f"{chapter.id}: no solution for exercise {ex['number']} "
                                 "in lab.course.solutions")
            numbers.append(ex["number"])
            cells += _exercise_cells(ex, solutions[ex["number"]], package)
        elif start <= i < end and cell.cell_type == "markdown":
            text = _ANSWERS_SENTENCE.sub("The cell tells you whether your answer has the right "
                                         "form; it is graded when you hand the notebook in;",
                                         cell.source)
            cells += [c if "nbgrader" in c.metadata else _nbgrader(c, f"cell_{i}_{k}", locked=True)
                      for k, c in enumerate(_markdown_cells(text, used))]
        else:
            cells.append(_nbgrader(cell, f"cell_{i}", locked=True))
    if sorted(numbers) != sorted(solutions):
        raise ValueError(f"{chapter.id}: exercises {sorted(numbers)} in the notebook, solutions "
                         f"for {sorted(solutions)}")
    setup = cells[2]
    text, found = _ANSWERS_IMPORT.subn(r"\1", setup.source)
    if found != 1 or _CHECK_IMPORT not in text:
        raise ValueError(f"{chapter.id}: the setup cell (cell 2) must import `answers` and `check`")
    setup.source = text.replace(_CHECK_IMPORT, "from lab.course.feedback import answered")
    nb.cells = cells
    return nb


def build(out: Path, chapters=None, *, release: bool = True, timeout: int = 3600) -> Path:
    """Write the course folder `out` (``nbgrader_config.py`` unless it is there, and
    ``source/<chapter>/``) for `chapters` (default: every ready chapter); with `release`, also
    the student versions in ``release/`` by ``nbgrader generate_assignment``."""
    ids = [get(c).id for c in chapters] if chapters else [c.id for c in CHAPTERS if c.ready]
    not_ready = [c for c in ids if not get(c).ready]
    if not_ready:
        raise ValueError(f"chapters not written yet: {', '.join(not_ready)}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = out / "nbgrader_config.py"
    if not config.exists():          # a rebuild keeps the instructor's edits to it
        config.write_text(CONFIG.format(timeout=int(timeout)))
    for cid in ids:
        folder = out / "source" / cid
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        nbformat.write(course_notebook(cid), folder / f"{cid}.ipynb")
    if release:
        # one nbgrader run for all (its start-up is most of the time) when nothing else is there
        others = {p.name for p in (out / "source").iterdir() if p.is_dir()} - set(ids)
        for pattern in (ids if others else ["*"]):
            nbgrader(out, "generate_assignment", pattern, "--force")
    return out


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``nbgrader <args>`` in the course folder; raise with its log when it fails."""
    # nbgrader calls `alembic` by name: the environment's scripts come first on PATH
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], check=False, cwd=course, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done
