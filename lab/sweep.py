"""``python -m lab sweep <chapter> --seeds 0-7``: run a chapter once per seed and write its record.

Every chapter's claims must hold for any seed, and the book's rule gates a claim only where it
held on each of seeds 0–7 (:mod:`lab.records`). A sweep measures exactly that: it executes the
chapter notebook once per seed, several at a time in worker processes, each with its own
results folder and with ``LAB_SWEEP=1``, so a missed gating claim is recorded instead of
stopping the notebook. The record is written in one atomic step after the last seed: an
interrupted sweep, or one whose notebook crashed on some seed, leaves the committed record as
it was.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import multiprocessing
import os
import platform
import re
import subprocess
import tempfile
import time
import uuid
from multiprocessing import connection
from pathlib import Path

from . import paths, records

SEEDS_SYNTAX = "a range like 0-7, a list like 0,2,5 or one seed like 3"


class SeedFailed(RuntimeError):
    """A seed's notebook failed for another reason than a claim: the sweep has no record."""


def parse_seeds(text: str) -> list[int]:
    """``0-7``, ``0,2,5`` or ``3`` (parts may mix: ``0-3,7``) → the sorted seeds. Seeds are
    non-negative integers, each named once; errors name ``--seeds`` and the syntax."""
    if not text.strip():
        raise ValueError(f"--seeds is empty; give {SEEDS_SYNTAX}")
    seeds: list[int] = []
    for part in text.split(","):
        low, dash, high = (p.strip() for p in part.partition("-"))
        if not _is_seed(low) or (dash and not _is_seed(high)):
            raise ValueError(f"--seeds: {part.strip()!r} is neither a seed nor a range; give {SEEDS_SYNTAX}")
        low, high = int(low), int(high if dash else low)
        if high < low:
            raise ValueError(f"--seeds range {low}-{high} is reversed; write {high}-{low}")
        seeds += range(low, high + 1)
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds names seed {twice[0]} more than once")
    return sorted(seeds)


def _is_seed(text: str) -> bool:
    return re.fullmatch(r"[0-9]+", text) is not None


def format_seeds(seeds: list[int]) -> str:
    """The inverse of :func:`parse_seeds` for display: ``[0, 1, 2, 5]`` → ``0-2,5``."""
    parts, start = [], None
    for i, seed in enumerate(seeds):
        start = seed if start is None else start
        if i + 1 == len(seeds) or seeds[i + 1] != seed + 1:
            parts.append(str(seed) if start == seed else f"{start}-{seed}")
            start = None
    return ",".join(parts)


def sweep(chapter, seeds: list[int], scale: str, jobs: int, *, timeout: int = 3600,
          folder: Path | None = None, say=print) -> Path:
    """Run `chapter` (an object with ``id`` and ``notebook``) once per seed, `jobs` at a time,
    and write its record to ``<folder>/<chapter>.<scale>.json``. `say` gets a line per seed as it
    finishes. Raises :class:`SeedFailed` when a seed's notebook fails; nothing is written then."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    state = _code_state(chapter.id)
    started, runs = time.time(), {}
    with tempfile.TemporaryDirectory(prefix=f"lab-sweep-{chapter.id}-", ignore_cleanup_errors=True) as tmp:
        tasks = [{"notebook": str(chapter.notebook), "chapter": chapter.id, "scale": scale, "seed": seed,
                  "results": str(Path(tmp) / f"seed-{seed}"), "timeout": timeout} for seed in seeds]
        with _in_workers(tasks, jobs) as results:
            for result in results:
                if "error" in result:
                    raise SeedFailed(f"seed {result['seed']} failed:\n{result['error']}")
                runs[result["seed"]] = result
                say(_progress(result, len(runs), len(seeds)))
    provenance = dict(state, date=_now(), hardware=hardware(scale), torch=_torch_version(runs),
                      jobs=jobs, wall_s=round(time.time() - started, 1),
                      runs=[{k: runs[s][k] for k in ("seed", "wall_s", "cached_runs")} for s in sorted(runs)])
    path = paths.record_path(chapter.id, scale, folder)
    paths.atomic_write_text(path, dumps(build_record(chapter.id, scale, runs, provenance)))
    return path


def dumps(record: dict) -> str:
    """The record as JSON that reads, and diffs, like a table: the seed list, each run and each
    seed's value of each claim on a line of its own."""
    rows: dict[str, str] = {}

    def row(value) -> str:   # a placeholder no claim text holds: it starts with a NUL character
        key = f"\0row{len(rows)}"
        rows[json.dumps(key)] = json.dumps(value)
        return key
    record = dict(record, seeds=row(record["seeds"]),
                  provenance=dict(record["provenance"], runs=[row(r) for r in record["provenance"]["runs"]]),
                  claims=[dict(c, per_seed=[row(s) for s in c["per_seed"]]) for c in record["claims"]])
    text = json.dumps(record, indent=1)
    for key, value in rows.items():
        text = text.replace(key, value, 1)
    return text + "\n"


def _progress(result: dict, done: int, total: int) -> str:
    claims = result["claims"]
    missed = [c["id"] for c in claims if not c["reproduced"]]
    cached = " (from cached checkpoints)" if result["cached_runs"] else ""
    return (f"  [{done}/{total}] seed {result['seed']}: {result['wall_s']:.1f} s{cached}, "
            f"{len(claims) - len(missed)} of {len(claims)} claims held"
            + (f" (missed: {', '.join(missed)})" if missed else ""))


@contextlib.contextmanager
def _in_workers(tasks: list[dict], jobs: int):
    """Run each task in a worker process of its own, `jobs` at a time; give the results as they
    come. Leaving early (a crashed seed, Ctrl-C) kills the workers still running — outright, since
    the notebook client catches SIGTERM — and their kernels, seeing their parent gone, exit."""
    context = multiprocessing.get_context("spawn")   # a fresh interpreter per seed: no forked state
    pending, running = list(tasks), {}               # receiving end of a pipe → (its worker, seed)

    def results():
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                worker = context.Process(target=_work, args=(task, send), daemon=True)
                worker.start()
                send.close()
                running[receive] = (worker, task["seed"])
            for receive in connection.wait(list(running)):
                worker, seed = running.pop(receive)
                yield _receive(receive, worker, seed)
    try:
        yield results()
    finally:
        for worker, _ in running.values():
            worker.kill()
        for receive, (worker, _) in running.items():
            worker.join()
            receive.close()


def _receive(receive, worker, seed: int) -> dict:
    try:
        result = receive.recv()
    except EOFError:   # the worker died before it could answer (killed, out of memory)
        result = {"seed": seed, "error": "its worker process died"}
    receive.close()
    worker.join()
    if "error" in result and worker.exitcode:
        result["error"] += f" (exit code {worker.exitcode})"
    return result


def _work(task: dict, send) -> None:
    send.send(run_seed(task))
    send.close()


def run_seed(task: dict) -> dict:
    """In a worker: execute the notebook for one seed in a results folder of its own; return its
    claims, wall time and cached-run count, or ``error`` (a string: exceptions from a notebook do
    not always survive pickling)."""
    from .book import execute
    results, seed, run_id = Path(task["results"]), task["seed"], uuid.uuid4().hex
    os.environ.update(LAB_SCALE=task["scale"], LAB_SEED=str(seed), LAB_RESULTS_DIR=str(results),
                      LAB_RUN_ID=run_id, LAB_EXPLORERS="static", LAB_SWEEP="1")
    started = time.time()
    try:
        execute(Path(task["notebook"]), timeout=task["timeout"], progress=False, cache=False)
    except Exception as err:   # the notebook crashed: the sweep reports it and writes nothing
        return {"seed": seed, "error": re.sub(r"\x1b\[[0-9;]*m", "", str(err)) or repr(err)}
    published = results / f"{task['chapter']}.json"
    result = json.loads(published.read_text()) if published.exists() else {}
    if result.get("run_id") != run_id or not result.get("complete"):
        return {"seed": seed, "error": "the chapter finished without publishing its claims "
                                       "(it never called ledger.summary())"}
    return {"seed": seed, "wall_s": round(time.time() - started, 2),
            "cached_runs": result.get("cached_runs", 0), "claims": result["claims"]}


def build_record(chapter: str, scale: str, runs: dict[int, dict], provenance: dict) -> dict:
    """The record: per claim its text, threshold, bounds and paper expectation, and per seed the
    measured value (None when not finite) and whether it held; then the provenance."""
    claims: dict[str, dict] = {}
    for seed in sorted(runs):
        for c in runs[seed]["claims"]:
            entry = claims.setdefault(c["id"], {
                "id": c["id"], "text": c["text"], "threshold": c["threshold"],
                "at_least": c.get("at_least"), "at_most": c.get("at_most"), "paper": c["paper"],
                "per_seed": []})
            entry["per_seed"].append({"seed": seed, "display": c["display"], "held": c["reproduced"],
                                      "measured": c["measured"] if math.isfinite(c["measured"]) else None})
    return {"format": records.FORMAT, "chapter": chapter, "scale": scale, "seeds": sorted(runs),
            "provenance": provenance, "claims": list(claims.values())}


def _code_state(chapter: str) -> dict:
    """The code a sweep runs, taken before it starts: git commit, local changes, and the hash of
    the lab source the chapter can use (the shared cores and its own folder)."""
    commit, dirty = git_state()
    from . import __version__
    return {"commit": commit, "dirty": dirty, "lab_source_hash": paths.source_hash(chapter), "lab": __version__}


def git_state() -> tuple[str | None, bool | None]:
    """(short commit, whether tracked or new files differ from it), or (None, None) without git
    or outside a repository. Changes to the records themselves do not count."""
    where = paths.repo_root() or Path.cwd()
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where,
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)book/records"],
                                cwd=where, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def hardware(scale: str) -> str | None:
    """The GPU's name where the chapters run on CUDA (any scale but tiny), else the CPU model."""
    if scale != "tiny":
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _torch_version(runs: dict[int, dict]) -> str | None:
    """The torch the notebooks ran with, as their claims recorded it."""
    claims = runs[min(runs)]["claims"]
    return claims[0]["versions"].get("torch") if claims else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
