"""Seed-sweep records, and the book's rule that turns them into gating or reported claims.

``python -m lab sweep`` runs a chapter once per seed and writes what every claim measured on
every seed to ``book/records/<chapter>.<scale>.json`` (see :mod:`lab.sweep`). The records are
committed, so every other reader — a chapter's :class:`~lab.claims.Ledger`, ``lab ledger``, the
book build — reads them and never writes them.

The rule: a claim gates at a scale only if its record there holds on every one of seeds 0–7 at
the spec's threshold; any other claim is reported, with its k of n seeds shown next to the
paper's expectation. A record written by other ``lab`` code (another source hash) still
decides, but is shown as measured on older code, never as current.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import paths

FORMAT = 1
RULE_SEEDS = tuple(range(8))
NO_RECORD = "no sweep record at this scale"


def load(chapter: str, scale: str, folder: Path | None = None) -> dict | None:
    """The committed record of `chapter` at `scale`, or None when it was never swept there."""
    path = paths.record_path(chapter, scale, folder)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is a record of format {record.get('format')!r}; this lab reads "
                         f"format {FORMAT}: sweep the chapter again")
    return record


def claim_entry(record: dict | None, claim_id: str) -> dict | None:
    """The record's entry for one claim (text, threshold, bounds, per-seed values), if any."""
    if record is None:
        return None
    return next((c for c in record["claims"] if c["id"] == claim_id), None)


def held_on(entry: dict) -> tuple[int, int]:
    """(k, n): the claim held on k of the n seeds that measured it."""
    return sum(s["held"] for s in entry["per_seed"]), len(entry["per_seed"])


def gates(entry: dict) -> bool:
    """The rule: measured on every one of seeds 0–7, and held on each of them."""
    held = {s["seed"]: s["held"] for s in entry["per_seed"]}
    return all(held.get(seed) is True for seed in RULE_SEEDS)


def robustness(record: dict | None, claim_id: str, threshold: str) -> dict:
    """What the record says about one claim checked against `threshold`: ``gating`` (by the
    rule), ``held`` of ``seeds``, a ``note`` for the claims table and the record's provenance.
    A record that checked another threshold says nothing about this one."""
    if record is None:
        return {"gating": False, "note": NO_RECORD}
    entry = claim_entry(record, claim_id)
    source = provenance(record)
    if entry is None:
        return {"gating": False, "note": "not measured by the sweep record", "record": source}
    if entry["threshold"] != threshold:
        return {"gating": False, "record": source,
                "note": f"the sweep record checked another threshold ({entry['threshold']})"}
    k, n = held_on(entry)
    return {"gating": gates(entry), "held": k, "seeds": n, "note": f"held on {k} of {n} seeds",
            "record": source}


def provenance(record: dict) -> dict:
    """Where and on what code a record was measured; ``stale`` when ``lab`` has changed since."""
    p = record["provenance"]
    return {"scale": record["scale"], "seeds": len(record["seeds"]), "date": p["date"],
            "commit": p["commit"], "dirty": p["dirty"], "hardware": p["hardware"],
            "stale": p["lab_source_hash"] != paths.source_hash(record["chapter"])}


def describe(source: dict) -> str:
    """One line of provenance, e.g. ``tiny sweep · 8 seeds · 2026-01-05 · commit abc1234 · CPU``."""
    commit = f"commit {source['commit']}" if source["commit"] else "outside git"
    if source["dirty"]:
        commit += " with local changes"
    if source["stale"]:
        commit = f"measured on older code, {commit}"
    return " · ".join([f"{source['scale']} sweep", f"{source['seeds']} seeds", source["date"][:10],
                       commit, source["hardware"] or "unknown hardware"])


def margin(entry: dict, measured: float | None) -> float:
    """How far a value lies inside the claim's bounds (negative: outside; NaN counts as worst)."""
    if measured is None:
        return -math.inf
    inside = [measured - entry["at_least"] if entry["at_least"] is not None else math.inf,
              entry["at_most"] - measured if entry["at_most"] is not None else math.inf]
    return min(inside)


def worst_seed(entry: dict) -> dict:
    """The seed whose value came closest to missing the threshold (or missed it by most)."""
    return min(entry["per_seed"], key=lambda s: margin(entry, s["measured"]))
