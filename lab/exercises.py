"""Self-checks for the exercises at the end of each chapter."""
from __future__ import annotations

import math


def check(name: str, answer, expected: float, *, rel: float = 1e-3, abs_tol: float = 0.0,
          hint: str = "") -> None:
    """Print whether `answer` matches `expected` (within rel/abs tolerance).

    An answer left as ``None`` is reported as not attempted, so the notebook still runs top to bottom.
    """
    if answer is None:
        print(f"◻ {name}: not answered yet.\n  Replace None with your answer and run the cell again.")
        return
    try:
        value = float(answer)
    except (TypeError, ValueError):
        raise TypeError(f"answer for {name} must be a number; got {type(answer).__name__}") from None
    ok = math.isclose(value, expected, rel_tol=rel, abs_tol=abs_tol)
    if ok:
        print(f"✔ {name}: {value:.6g} is right.")
    else:
        print(f"✘ {name}: {value:.6g} is not it." + (f" Hint: {hint}" if hint else ""))
