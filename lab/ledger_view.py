"""What the reproduction ledger shows, shared by ``python -m lab ledger`` and the book's page.

Per chapter, in book order, and per claim: the live value of this build (the chapter's result in
``$LAB_RESULTS_DIR``, normally tiny scale and seed 0), on how many seeds the claim held in the
committed tiny-scale sweep record, and the worst seed of the gpu-scale record where one exists —
each with where it was measured. A failed run is shown as failed, with what it measured, and a
record measured on older code says so.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from . import records
from .chapters import CHAPTERS, Chapter

SWEPT_SCALES = ("tiny", "gpu")


@dataclasses.dataclass
class Row:
    id: str
    text: str
    measured: str             # this build's value; "—" when this build did not measure it
    threshold: str
    reproduced: bool | None   # None: not measured in this build
    kind: str                 # "gating", "reported", or "" when not measured in this build
    seeds: str                # the tiny record: "held on k of n seeds", or why there is none
    gpu: str                  # the gpu record: worst seed and k of n, or "—"
    paper: str

    def verdict(self) -> str:
        if self.reproduced is None:
            return "—"
        return "yes" if self.reproduced else "NO"


@dataclasses.dataclass
class Entry:
    chapter: Chapter
    result: dict | None           # the published result of this build, or None
    sweeps: dict[str, dict]       # scale → committed sweep record
    rows: list[Row]

    def run(self) -> str:
        """The live run in one line: scale, seed, when, how long (and whether from cache)."""
        r = self.result
        if r is None:
            return "not run in this build"
        cached = " (from cached checkpoints)" if r.get("cached_runs") else ""
        return f"scale {r['scale']} · seed {r['seed']} · {r['finished']} · {r['wall_s']:.0f} s{cached}"

    def failure(self) -> str | None:
        """Why the last run of this build failed, or None when it completed."""
        if self.result is None or self.result.get("complete"):
            return None
        return self.result.get("failed") or "the last run did not finish"

    def sources(self) -> list[str]:
        return [records.describe(records.provenance(r)) for r in self.sweeps.values()]


def entries(results: list[dict], records_dir: Path | None = None) -> list[Entry]:
    """One entry per chapter in book order: written chapters, and any with results or records."""
    by_id = {r["chapter"]: r for r in results}
    out = []
    for chapter in CHAPTERS:
        sweeps = {s: r for s in SWEPT_SCALES if (r := records.load(chapter.id, s, records_dir))}
        result = by_id.get(chapter.id)
        if chapter.ready or result or sweeps:
            out.append(Entry(chapter, result, sweeps, _rows(result, sweeps)))
    return out


def not_swept_at(entries_: list[Entry], scale: str = "gpu") -> list[Chapter]:
    """Written chapters with no committed record at `scale`: not yet measured on such hardware."""
    return [e.chapter for e in entries_ if e.chapter.ready and scale not in e.sweeps]


def _rows(result: dict | None, sweeps: dict[str, dict]) -> list[Row]:
    live = {c["id"]: c for c in (result or {}).get("claims", [])}
    ids = list(live)
    for record in sweeps.values():
        ids += [c["id"] for c in record["claims"] if c["id"] not in ids]
    return [_row(cid, live.get(cid), sweeps) for cid in ids]


def _row(claim_id: str, live: dict | None, sweeps: dict[str, dict]) -> Row:
    """One claim: text and threshold from this build where it measured the claim, else from a record."""
    source = live or next(e for r in sweeps.values() if (e := records.claim_entry(r, claim_id)))
    threshold = source["threshold"]
    kind = "" if live is None else ("gating" if live["gating"] else "reported")
    return Row(claim_id, source["text"], live["display"] if live else "—", threshold,
               live["reproduced"] if live else None, kind,
               records.robustness(sweeps.get("tiny"), claim_id, threshold)["note"],
               _gpu_cell(records.claim_entry(sweeps.get("gpu"), claim_id), threshold),
               source["paper"])


def _gpu_cell(entry: dict | None, threshold: str) -> str:
    """The gpu record's worst seed and its k of n; its threshold too where it differs."""
    if entry is None:
        return "—"
    worst = records.worst_seed(entry)
    k, n = records.held_on(entry)
    needs = f" (needs {entry['threshold']})" if entry["threshold"] != threshold else ""
    return f"worst {worst['display']} (seed {worst['seed']}) · held on {k} of {n}{needs}"
