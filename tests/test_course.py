"""The chapters as nbgrader assignments: the student version hides every solution, hidden test,
reasoned answer and expected value; autograding gives the instructor's answers full marks and
wrong answers none."""
from __future__ import annotations

import importlib
import inspect
import re
import shutil
import time

import nbformat
import pytest

from lab.chapters import CHAPTERS
from lab.cli import main
from lab.course import build as course
from lab.course.feedback import answered, assert_close
from lab.course.solutions import SOLUTIONS

READY = [c.id for c in CHAPTERS if c.ready]
SOLUTION_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
                    "assert_close", "answers.", ".answers", "import answers")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    started = time.time()
    course.build(out)
    return out, time.time() - started


def _book_exercises(chapter_id: str):
    nb = nbformat.read(next(c for c in CHAPTERS if c.id == chapter_id).notebook, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## Exercises"))
    end = next(i for i in range(start + 1, len(nb.cells)) if nb.cells[i].source.startswith("## "))
    return nb.cells[start:end]


def _reasoned_answers(chapter_id: str) -> list[str]:
    return [m["body"] for c in _book_exercises(chapter_id) if c.cell_type == "markdown"
            for m in course._DROPDOWN.finditer(c.source)]


def _expected_values(chapter_id: str) -> list[str]:
    """The answers that need no notebook state, written the ways a notebook could print them."""
    answers = importlib.import_module(f"lab.papers.{chapter_id.replace('-', '_')}.answers")
    texts = []
    for name, fn in inspect.getmembers(answers, inspect.isfunction):
        if fn.__module__ != answers.__name__ or any(
                p.default is p.empty for p in inspect.signature(fn).parameters.values()):
            continue
        value = fn()
        if float(value) == int(value):
            texts += [str(int(value))] if abs(value) >= 1000 else []
        else:
            texts += [repr(float(value)), f"{value:.6g}", f"{value:.5g}", f"{value:.4g}"]
    return texts


def _told_before_the_exercises(chapter_id: str) -> str:
    """The chapter's text before its exercises: a value the chapter itself states there (as
    mimetic-init's prose does the decay per token, 0.9975) is no leak of the course's."""
    nb = nbformat.read(next(c for c in CHAPTERS if c.id == chapter_id).notebook, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## Exercises"))
    return "\n".join(c.source for c in nb.cells[:start])


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_exercise_is_tagged_and_has_a_worked_solution():
    for cid in READY:
        cells = _book_exercises(cid)
        numbered = [course.parse_exercise(c.source)["number"] for c in cells
                    if course.EXERCISE_TAG in c.metadata.get("tags", [])]
        assert numbered and sorted(numbered) == sorted(SOLUTIONS[cid]), cid
        nb = course.course_notebook(cid)   # raises on an untagged check or a missing solution
        ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells]
        assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[\w-]+", i) for i in ids)


def test_the_student_version_hides_solutions_tests_and_values(built):
    out, seconds = built
    print(f"course folder for {len(READY)} chapters built in {seconds:.1f} s")
    from nbgrader.utils import compute_checksum
    for cid in READY:
        nb = nbformat.read(out / "release" / cid / f"{cid}.ipynb", as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for marker in SOLUTION_MARKERS:
            assert marker not in code, (cid, marker)
        assert "BEGIN" not in text and not re.search(r"papers\.\w+\.answers", text), cid
        for number, solution in SOLUTIONS[cid].items():
            for line in solution.code.splitlines():
                line = line.split("#")[0].strip()
                if len(line) > 12 and not line.startswith(("import ", "from ")):
                    assert line not in code, (cid, number, line)
        flat = _flat(text)
        for body in _reasoned_answers(cid):
            assert _flat(body)[:80] not in flat, (cid, body[:40])
        told = _told_before_the_exercises(cid)
        for value in _expected_values(cid):
            assert value in told or value not in text, (cid, value)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len([c for c in graded if c.cell_type == "code"]) == len(SOLUTIONS[cid])
        assert len([c for c in graded if c.cell_type == "markdown"]) == len(_reasoned_answers(cid))
        for cell in nb.cells:   # every cell is nbgrader's: answer, test, or locked, checksummed
            meta = cell.metadata["nbgrader"]
            assert meta["solution"] or meta["grade"] or meta["locked"]
            if meta["grade"] or meta["locked"]:
                assert meta["checksum"] == compute_checksum(cell), (cid, meta["grade_id"])
        # the source keeps the instructor's version: the solution and the hidden test
        source = (out / "source" / cid / f"{cid}.ipynb").read_text()
        assert source.count("### BEGIN SOLUTION") == source.count("### BEGIN HIDDEN TESTS") \
            == len(SOLUTIONS[cid])


def test_the_book_notebook_keeps_its_self_checks():
    for cid in READY:
        for cell in _book_exercises(cid):
            if course.EXERCISE_TAG in cell.metadata.get("tags", []):
                assert re.search(r"^answer_\d+ = None$", cell.source, re.MULTILINE)
                assert "check(" in cell.source and "BEGIN" not in cell.source


def test_feedback_tells_the_form_never_the_value(capsys):
    answered("x", None)
    answered("x", "half")
    answered("x", 2.5, whole=True)
    answered("x", float("nan"))
    answered("x", 0.125)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("◻ x: not answered") and out[2].startswith("✘ x: the answer must be a number")
    assert "whole number" in out[3] and "finite" in out[4] and out[5].startswith("✎ x: 0.125 is recorded")
    assert_close(0.1251, 0.125, rel=1e-3)
    for wrong in (None, "0.125", 0.2):
        if wrong == "0.125":
            assert_close(wrong, 0.125)   # a number given as text is a number
            continue
        with pytest.raises(AssertionError):
            assert_close(wrong, 0.125)


def test_course_command_writes_the_source_of_chosen_chapters(tmp_path, capsys):
    assert main(["course", "build", "--chapters", "context-inversion,fuse", "--out", str(tmp_path),
                 "--no-release"]) == 0
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == ["context-inversion", "fuse"]
    assert not (tmp_path / "release").exists()
    assert "2 assignments" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["course", "build", "--chapters", "no-such-chapter"])


# ---------------------------------------------------------------------------------------------
# Autograding: whole chapters run at tiny scale, two submissions each
# ---------------------------------------------------------------------------------------------
def _submit(out, cid: str, student: str, right: set[int]):
    """The student version with every exercise answered: the instructor's solution for the
    exercises in `right`, a wrong number for the others."""
    nb = nbformat.read(out / "release" / cid / f"{cid}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        if grade_id.startswith("answer_"):
            n = int(grade_id.split("_")[1])
            code = f"answer_{n} = None\n{SOLUTIONS[cid][n].code}"
            cell.source = code if n in right else f"{code}\nanswer_{n} = answer_{n} * 1.5 + 1"
    folder = out / "submitted" / student / cid
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{cid}.ipynb")


@pytest.mark.slow
@pytest.mark.parametrize("cid", READY)
def test_autograde_gives_right_answers_full_marks_and_wrong_ones_none(cid, tmp_path, monkeypatch):
    from nbgrader.api import Gradebook
    monkeypatch.setenv("LAB_SCALE", "tiny")
    monkeypatch.setenv("LAB_EXPLORERS", "static")
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path / "results"))
    out = tmp_path / "course"
    course.build(out, [cid])
    numbers = sorted(SOLUTIONS[cid])
    odd = {n for n in numbers if n % 2}
    _submit(out, cid, "odd", odd)
    _submit(out, cid, "even", set(numbers) - odd)
    started = time.time()
    course.nbgrader(out, "autograde", cid)
    seconds = time.time() - started
    scores = {}
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        for student in ("odd", "even"):
            for n in numbers:
                grade = gb.find_grade(f"test_{n}", cid, cid, student)
                scores[student, n] = (grade.score, grade.max_score)
    print(f"{cid}: autograde of two submissions {seconds:.1f} s")
    for (student, n), (score, top) in scores.items():
        right = (n % 2 == 1) == (student == "odd")
        assert score == (top if right else 0), (cid, student, n, score)
    shutil.rmtree(out / "autograded", ignore_errors=True)
