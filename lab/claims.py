"""Claims: a paper's statement, checked by code against a threshold, shown, and recorded.

A chapter makes one :class:`Ledger` and calls :meth:`Ledger.check` once per claim. Whether a
claim gates follows the book's rule, read from the committed seed-sweep record of the chapter at
this scale (:mod:`lab.records`): it gates only if the record holds on every one of seeds 0–7. A
*gating* claim raises :class:`ClaimFailed` when the measured value misses the threshold; a
*reported* claim is measured and shown beside the paper's expectation and its k of n seeds,
never asserted. :meth:`Ledger.summary` shows the table and publishes ``<results>/<chapter>.json``
in one atomic step. Until then claims sit in ``<results>/.staging/``: a run that dies half-way
never leaves a half-written result, and a run whose gating claim fails publishes what it
measured as failed, so the last passing numbers never stand in for it.

Under ``LAB_SWEEP=1`` (set by ``python -m lab sweep``) a failing gating claim is recorded and
not raised: a sweep must measure every claim of every seed.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import _check, paths, records
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
    at_least: float | None = None
    at_most: float | None = None
    robustness: dict | None = None   # what the sweep record says: see lab.records.robustness

    def note(self) -> str:
        """``gating`` or ``reported``, with the record's k of n seeds (or why there is none)."""
        note = (self.robustness or {}).get("note")
        return ("gating" if self.gating else "reported") + (f" · {note}" if note else "")

    def row(self) -> list[str]:
        status = ("yes" if self.reproduced else "NO") + f" ({self.note()})"
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


def _sweeping() -> bool:
    """True inside ``python -m lab sweep``, where gating claims are measured, not raised."""
    return os.environ.get("LAB_SWEEP", "").strip() not in ("", "0")


def _cached_runs() -> int:
    """Training runs of this process that resumed from a finished checkpoint: a wall time made of
    them measures loading, not training. Zero when the chapter never imported the trainer."""
    train = sys.modules.get("lab.train")
    return train.cached_runs() if train is not None else 0


class Ledger:
    """The claims of one chapter run."""

    def __init__(self, chapter: str, scale: str, seed: int, results_dir: Path | None = None,
                 records_dir: Path | None = None):
        get_chapter(chapter)
        self.chapter, self.scale, self.seed = chapter, scale, _check.integer("seed", seed)
        self.dir = Path(results_dir) if results_dir is not None else paths.results_dir()
        self.record = records.load(chapter, scale, records_dir)
        self.claims: list[Claim] = []
        self.started = time.time()
        self.run_id = os.environ.get("LAB_RUN_ID", "")
        self.staging = self.dir / ".staging" / f"{chapter}.json"
        self.staging.unlink(missing_ok=True)

    def check(self, claim_id: str, text: str, measured: float, *, at_least: float | None = None,
              at_most: float | None = None, gating: bool | None = None, paper: str = "",
              fmt: str = "{:.3g}") -> None:
        """Compare `measured` with the bound(s), record and show it; if a gating claim fails,
        publish the run as failed and raise :class:`ClaimFailed`.

        `at_least` and `at_most` are inclusive; give one or both. `gating`: None (the default)
        lets the sweep record decide by the book's rule; ``False`` for a claim the chapter never
        asserts; ``True`` asserts it regardless. `paper` states what the paper reports, shown
        beside the measurement. `fmt` formats measured value and bounds. The recorded claim is
        ``self.claims[-1]``.
        """
        if not isinstance(claim_id, str) or not claim_id:
            raise ValueError(f"claim_id must be a non-empty string; got {claim_id!r}")
        if any(c.id == claim_id for c in self.claims):
            raise ValueError(f"claim_id {claim_id!r} was already checked in this run")
        if at_least is None and at_most is None:
            raise ValueError("give at_least, at_most or both: a claim needs a threshold")
        measured = float(measured)
        at_least = None if at_least is None else _check.real("at_least", at_least)
        at_most = None if at_most is None else _check.real("at_most", at_most)
        bounds = ([] if at_least is None else ["≥ " + _format(at_least, fmt)]) \
            + ([] if at_most is None else ["≤ " + _format(at_most, fmt)])
        ok = (math.isfinite(measured)
              and (at_least is None or measured >= at_least)
              and (at_most is None or measured <= at_most))
        threshold = " and ".join(bounds)
        robustness = records.robustness(self.record, claim_id, threshold)
        claim = Claim(self.chapter, claim_id, text, measured, threshold, ok,
                      robustness["gating"] if gating is None else bool(gating), paper, self.scale,
                      self.seed, round(time.time() - self.started, 2), _versions(),
                      _format(measured, fmt) if math.isfinite(measured) else str(measured),
                      at_least, at_most, robustness)
        self.claims.append(claim)
        self._write(self.staging, complete=False)
        _show_claim(claim)
        if claim.gating and not ok and not _sweeping():
            message = (f"{self.chapter} {claim_id} did not reproduce at scale {self.scale}, "
                       f"seed {self.seed}: measured {claim.display}, needs {claim.threshold}")
            self._write(self.dir / f"{self.chapter}.json", complete=False, failed=message)
            raise ClaimFailed(message)

    def summary(self):
        """Publish the run's claims (atomically) and return the table for display."""
        if not self.claims:
            raise ValueError("no claims were checked: nothing to publish")
        self._write(self.dir / f"{self.chapter}.json", complete=True)
        self.staging.unlink(missing_ok=True)
        return ClaimsTable(self.claims)

    def _write(self, path: Path, complete: bool, failed: str | None = None) -> None:
        record = {"chapter": self.chapter, "scale": self.scale, "seed": self.seed,
                  "run_id": self.run_id, "complete": complete,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "wall_s": round(time.time() - self.started, 2), "cached_runs": _cached_runs(),
                  "claims": [dataclasses.asdict(c) for c in self.claims]}
        if failed is not None:
            record["failed"] = failed
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


def text_table(head: list[str], rows: list[list[str]], width: int = 60) -> str:
    """Columns padded for a terminal, each cut at `width` characters, a rule under the head."""
    rows = [head] + rows
    widths = [min(max(len(r[i]) for r in rows), width) for i in range(len(head))]
    lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class ClaimsTable:
    """A table of claims that renders as HTML in notebooks and as text in a terminal."""
    HEAD = ["claim", "statement", "measured", "threshold", "reproduced"]

    def __init__(self, claims):
        self.claims = [c if isinstance(c, Claim) else Claim(**c) for c in claims]

    def rows(self) -> list[list[str]]:
        return [c.row() for c in self.claims]

    def __str__(self) -> str:
        return text_table(self.HEAD, self.rows())

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
            + ("" if claim.gating else f" · {claim.note()}, not asserted at this scale")
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
