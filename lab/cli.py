"""``python -m lab list | run <chapter> [--scale S] [--seed N] | ledger``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

from . import paths
from .chapters import CHAPTERS, get
from .scale import SCALES


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer; got {text!r}") from None


def _chapter(text: str) -> str:
    try:
        return get(text).id
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab", description="Run and inspect the book's chapters.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the chapters and their ids")
    run = sub.add_parser("run", help="execute one chapter headless and print its claims")
    run.add_argument("chapter", type=_chapter, help="chapter id (see `list`)")
    run.add_argument("--scale", choices=SCALES, default=None, help="default: $LAB_SCALE, else by hardware")
    run.add_argument("--seed", type=_seed, default=None, help="default: $LAB_SEED, else 0")
    run.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell (default 3600)")
    ledger = sub.add_parser("ledger", help="print the claims of every chapter from the recorded results")
    ledger.add_argument("--results-dir", default=None, help="default: $LAB_RESULTS_DIR or _build/results")
    return p


def cmd_list() -> int:
    for i, c in enumerate(CHAPTERS, 1):
        print(f"{i:>2}  {c.id:<20} {'ready ' if c.ready else 'to come'}  {c.title} (arXiv {c.arxiv})")
    return 0


def cmd_run(chapter_id: str, scale: str | None, seed: int | None, timeout: int) -> int:
    from .claims import ClaimsTable
    from .scale import current_scale, current_seed

    chapter = get(chapter_id)
    if not chapter.ready:
        print(f"chapter {chapter_id!r} is not written yet", file=sys.stderr)
        return 2
    scale, seed = current_scale(scale), current_seed(seed)
    results = paths.results_dir()
    run_id = uuid.uuid4().hex
    os.environ.update(LAB_SCALE=scale, LAB_SEED=str(seed), LAB_RESULTS_DIR=str(results),
                      LAB_RUN_ID=run_id)
    os.environ.setdefault("LAB_EXPLORERS", "static")
    print(f"running {chapter.id} at scale {scale}, seed {seed}; results in {results}", flush=True)
    if scale != "tiny":
        import torch
        if not torch.cuda.is_available():
            print(f"warning: scale {scale} without a CUDA GPU runs on the CPU and may take hours",
                  file=sys.stderr, flush=True)
    started = time.time()
    failure = None
    try:
        from .book import execute
        # the book is built at tiny scale with seed 0: only that run may stand in for its execution
        execute(chapter.notebook, timeout=timeout, cache=(scale, seed) == ("tiny", 0))
    except Exception as err:  # the notebook failed: report it, then the claims measured so far
        failure = err
    wall = time.time() - started
    published = results / f"{chapter.id}.json"
    staging = results / ".staging" / f"{chapter.id}.json"
    record = None
    if failure is None and published.exists():
        record = json.loads(published.read_text())
        if record.get("run_id") != run_id:
            record, failure = None, RuntimeError("the chapter finished without publishing its claims")
    elif staging.exists():
        record = json.loads(staging.read_text())
    staging.unlink(missing_ok=True)   # a failed run leaves nothing half-written behind
    if record is not None:
        print(ClaimsTable(record["claims"]))
    print(f"wall time {wall:.1f} s")
    if failure is not None:
        message = getattr(failure, "ename", None) and f"{failure.ename}: {failure.evalue}" or repr(failure)
        print(f"FAILED: {message}", file=sys.stderr)
        return 1
    failed = [c["id"] for c in record["claims"] if c["gating"] and not c["reproduced"]]
    if failed:
        print(f"FAILED: gating claims not reproduced: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_ledger(results_dir: str | None) -> int:
    from .claims import ClaimsTable, load_results
    records = load_results(results_dir)
    recorded = {r["chapter"] for r in records}
    for chapter in CHAPTERS:
        if chapter.id not in recorded:
            print(f"## {chapter.id}: {'not run yet' if chapter.ready else 'chapter to come'}\n")
    for r in records:
        print(f"## {r['chapter']} — scale {r['scale']}, seed {r['seed']}, {r['finished']}, {r['wall_s']:.0f} s")
        print(ClaimsTable(r["claims"]), end="\n\n")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "run":
            return cmd_run(args.chapter, args.scale, args.seed, args.timeout)
        return cmd_ledger(args.results_dir)
    except ValueError as err:   # bad environment values (LAB_SCALE, LAB_SEED): say it plainly
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
