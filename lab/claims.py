"""Claims: a paper's statement, checked by code against a threshold, shown, and recorded.

A chapter makes one :class:`Ledger` and calls :meth:`Ledger.check` once per claim. A *gating*
claim (one that held on every seed of its sweep record at this scale) raises :class:`ClaimFailed` when the measured
value misses the threshold; a *reported* claim (``gating=False``) is measured and shown beside
the paper's expectation, never asserted. :meth:`Ledger.summary` shows the table and publishes
``<results>/<chapter>.json`` in one atomic step. Until then claims sit in
``<results>/.staging/``: a run that dies half-way never leaves a half-written result.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from . import _check, paths
from .chapters import get as get_chapter


class ClaimFailed(AssertionError):
    """A gating claim did not reproduce."""


@dataclasses.dataclass
class Claim:
    chapter: str
    id: str
    text: str
    measured: float
    threshold: str
    reproduced: bool
    gating: bool
    paper: str
    scale: str
    seed: int
    wall_s: float
    versions: dict
    display: str

    def row(self) -> list[str]:
        status = ("yes" if self.reproduced else "NO") + ("" if self.gating else " (reported)")
        return [self.id, self.text, self.display, self.threshold, status]


def _versions() -> dict:
    from . import __version__
    out = {"lab": __version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        out["torch"] = None
    return out


def _format(value: float, fmt: str) -> str:
    return fmt.format(value)


class Ledger:
    """The claims of one chapter run."""

    def __init__(self, chapter: str, scale: str, seed: int, results_dir: Path | None = None):
        get_chapter(chapter)
        self.chapter, self.scale, self.seed = chapter, scale, _check.integer("seed", seed)
        self.dir = Path(results_dir) if results_dir is not None else paths.results_dir()
        self.claims: list[Claim] = []
        self.started = time.time()
        self.run_id = os.environ.get("LAB_RUN_ID", "")
        self.staging = self.dir / ".staging" / f"{chapter}.json"
        self.staging.unlink(missing_ok=True)

    def check(self, claim_id: str, text: str, measured: float, *, at_least: float | None = None,
              at_most: float | None = None, gating: bool = True, paper: str = "",
              fmt: str = "{:.3g}") -> None:
        """Compare `measured` with the bound(s), record and show it; raise if a gating claim fails.

        `at_least` and `at_most` are inclusive; give one or both. `paper` states what the paper
        reports, shown beside the measurement. `fmt` formats measured value and bounds. The
        recorded claim is ``self.claims[-1]``.
        """
        if not isinstance(claim_id, str) or not claim_id:
            raise ValueError(f"claim_id must be a non-empty string; got {claim_id!r}")
        if any(c.id == claim_id for c in self.claims):
            raise ValueError(f"claim_id {claim_id!r} was already checked in this run")
        if at_least is None and at_most is None:
            raise ValueError("give at_least, at_most or both: a claim needs a threshold")
        measured = float(measured)
        bounds = []
        if at_least is not None:
            bounds.append("≥ " + _format(_check.real("at_least", at_least), fmt))
        if at_most is not None:
            bounds.append("≤ " + _format(_check.real("at_most", at_most), fmt))
        ok = (math.isfinite(measured)
              and (at_least is None or measured >= at_least)
              and (at_most is None or measured <= at_most))
        claim = Claim(self.chapter, claim_id, text, measured, " and ".join(bounds), ok,
                      bool(gating), paper, self.scale, self.seed,
                      round(time.time() - self.started, 2), _versions(),
                      _format(measured, fmt) if math.isfinite(measured) else str(measured))
        self.claims.append(claim)
        self._write(self.staging, complete=False)
        _show_claim(claim)
        if gating and not ok:
            raise ClaimFailed(f"{self.chapter} {claim_id} did not reproduce at scale {self.scale}, "
                              f"seed {self.seed}: measured {claim.display}, needs {claim.threshold}")

    def summary(self):
        """Publish the run's claims (atomically) and return the table for display."""
        if not self.claims:
            raise ValueError("no claims were checked: nothing to publish")
        self._write(self.dir / f"{self.chapter}.json", complete=True)
        self.staging.unlink(missing_ok=True)
        return ClaimsTable(self.claims)

    def _write(self, path: Path, complete: bool) -> None:
        record = {"chapter": self.chapter, "scale": self.scale, "seed": self.seed,
                  "run_id": self.run_id, "complete": complete,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "wall_s": round(time.time() - self.started, 2),
                  "claims": [dataclasses.asdict(c) for c in self.claims]}
        paths.atomic_write_text(path, json.dumps(record, indent=1))


def load_results(results_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every published chapter record in `results_dir`, in the book's chapter order."""
    from .chapters import CHAPTERS
    base = Path(results_dir) if results_dir is not None else paths.results_dir()
    records = []
    for chapter in CHAPTERS:
        path = base / f"{chapter.id}.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
    return records


class ClaimsTable:
    """A table of claims that renders as HTML in notebooks and as text in a terminal."""
    HEAD = ["claim", "statement", "measured", "threshold", "reproduced"]

    def __init__(self, claims):
        self.claims = [c if isinstance(c, Claim) else Claim(**c) for c in claims]

    def rows(self) -> list[list[str]]:
        return [c.row() for c in self.claims]

    def __str__(self) -> str:
        rows = [self.HEAD] + self.rows()
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(self.HEAD))]
        lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self.HEAD)
        body = "".join(
            f"<tr class='{'ok' if c.reproduced else 'miss'}'>"
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in c.row()) + "</tr>"
            for c in self.claims)
        return f"<table class='lab-claims'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return str(self)

    def markdown(self) -> str:
        rows = [self.HEAD, ["---"] * len(self.HEAD)] + self.rows()
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)


def _show_claim(claim: Claim) -> None:
    mark = "✔" if claim.reproduced else ("✘" if claim.gating else "⚠")
    text = (f"{mark} {claim.id}: {claim.text} — measured {claim.display} (needs {claim.threshold})"
            + ("" if claim.gating else " · reported, not asserted at this scale")
            + (f" · paper: {claim.paper}" if claim.paper else ""))
    try:
        from IPython.display import HTML, display
        from IPython import get_ipython
        if get_ipython() is not None:
            state = "ok" if claim.reproduced else "miss"
            display(HTML(f"<p class='lab-claim {state}'>{html.escape(text)}</p>"))
            return
    except ImportError:  # pragma: no cover
        pass
    print(text)
