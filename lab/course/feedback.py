"""What the course version of a chapter runs in place of the book's `check`: the student learns
whether the answer has the right form, never whether it is right; the hidden tests grade it."""
from __future__ import annotations

import inspect
import math

from ..exercises import check

# the book's tolerances where a check call leaves them out: the hidden test grades alike
CHECK_DEFAULTS = {k: p.default for k, p in inspect.signature(check).parameters.items()
                  if k in ("rel", "abs_tol")}


def _number(answer) -> float | None:
    if isinstance(answer, bool):
        return None
    try:
        return float(answer)
    except (TypeError, ValueError):
        return None


def answered(name: str, answer, *, whole: bool = False) -> None:
    """Print whether `answer` is a gradable answer for exercise `name`: a finite number (a whole
    number when `whole`). ``None`` is reported as not answered yet."""
    if answer is None:
        print(f"◻ {name}: not answered yet.\n  Replace None with your answer and run the cell again.")
        return
    value = _number(answer)
    if value is None:
        print(f"✘ {name}: the answer must be a number; got {type(answer).__name__}.")
    elif not math.isfinite(value):
        print(f"✘ {name}: the answer must be a finite number; got {value}.")
    elif whole and value != round(value):
        print(f"✘ {name}: the answer is a count, a whole number; got {value:.6g}.")
    else:
        print(f"✎ {name}: {value:.6g} is recorded. It is graded when you hand the notebook in.")


def assert_close(answer, expected: float, *, rel: float = CHECK_DEFAULTS["rel"],
                 abs_tol: float = CHECK_DEFAULTS["abs_tol"]) -> None:
    """The hidden test: raise AssertionError unless `answer` is a number within rel/abs_tol of
    `expected` (the tolerance of the book's own check)."""
    value = _number(answer)
    assert value is not None, f"not a number: {answer!r}"
    assert math.isclose(value, float(expected), rel_tol=rel, abs_tol=abs_tol), "not within tolerance"
