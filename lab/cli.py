"""``python -m lab list | run <chapter> [--scale S] [--seed N] | sweep <chapter> [--seeds 0-7]
[--scale S] [--jobs N] | ledger | course build [--chapters a,b] [--out DIR]``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

from . import paths, sweep
from .chapters import CHAPTERS, get
from .scale import SCALES


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer; got {text!r}") from None


def _seeds(text: str) -> list[int]:
    try:
        return sweep.parse_seeds(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be a positive integer; got {text!r}")
    return jobs


def _chapter(text: str) -> str:
    try:
        return get(text).id
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _chapters(text: str) -> list[str]:
    ids = [_chapter(part.strip()) for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("--chapters needs at least one chapter id")
    return ids


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab", description="Run and inspect the book's chapters.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the chapters and their ids")
    run = sub.add_parser("run", help="execute one chapter headless and print its claims")
    run.add_argument("chapter", type=_chapter, help="chapter id (see `list`)")
    run.add_argument("--scale", choices=SCALES, default=None, help="default: $LAB_SCALE, else by hardware")
    run.add_argument("--seed", type=_seed, default=None, help="default: $LAB_SEED, else 0")
    run.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell (default 3600)")
    sw = sub.add_parser("sweep", help="run one chapter once per seed and write its record to book/records")
    sw.add_argument("chapter", type=_chapter, help="chapter id (see `list`)")
    sw.add_argument("--seeds", type=_seeds, default=list(range(8)),
                    help=f"{sweep.SEEDS_SYNTAX} (default 0-7, the seeds the gating rule needs)")
    sw.add_argument("--scale", choices=SCALES, default=None, help="default: $LAB_SCALE, else by hardware")
    sw.add_argument("--jobs", type=_jobs, default=None,
                    help="seeds run at once (default: the number of CPU cores; they share one GPU)")
    sw.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell (default 3600)")
    ledger = sub.add_parser("ledger", help="print the claims of every chapter from the recorded results")
    ledger.add_argument("--results-dir", default=None, help="default: $LAB_RESULTS_DIR or _build/results")
    course = sub.add_parser("course", help="the chapters as nbgrader assignments")
    course_sub = course.add_subparsers(dest="action", required=True)
    build = course_sub.add_parser("build", help="write an nbgrader course folder: source/ and the "
                                  "student versions in release/")
    build.add_argument("--chapters", type=_chapters, default=None,
                       help="comma-separated chapter ids (default: every ready chapter)")
    build.add_argument("--out", default=None, help="the course folder (default: _build/course)")
    build.add_argument("--no-release", action="store_true",
                       help="write source/ only, without running nbgrader generate_assignment")
    return p


def _written(chapter_id: str):
    """The chapter, or None (with a message) when it is not written yet."""
    chapter = get(chapter_id)
    if not chapter.ready:
        print(f"chapter {chapter_id!r} is not written yet", file=sys.stderr)
        return None
    return chapter


def cmd_list() -> int:
    for i, c in enumerate(CHAPTERS, 1):
        print(f"{i:>2}  {c.id:<20} {'ready ' if c.ready else 'to come'}  {c.title} (arXiv {c.arxiv})")
    return 0


def cmd_run(chapter_id: str, scale: str | None, seed: int | None, timeout: int) -> int:
    from .claims import ClaimsTable
    from .scale import current_scale, current_seed

    chapter = _written(chapter_id)
    if chapter is None:
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
        failure = getattr(err, "ename", None) and f"{err.ename}: {err.evalue}" or repr(err)
    wall = time.time() - started
    record = _this_run(results, chapter.id, run_id)
    failure = failure or _why_failed(record)
    if failure is not None:
        record = _publish_failure(results, record, failure, chapter=chapter.id, scale=scale, seed=seed,
                                  run_id=run_id, wall_s=round(wall, 2))
    (results / ".staging" / f"{chapter.id}.json").unlink(missing_ok=True)   # nothing half-written stays
    if record["claims"]:
        print(ClaimsTable(record["claims"]))
    print(f"wall time {wall:.1f} s{_cached_note(record)}")
    if failure is not None:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


def _this_run(results, chapter_id: str, run_id: str) -> dict | None:
    """What this run left: its published result, else the claims it staged before it stopped."""
    for path in (results / f"{chapter_id}.json", results / ".staging" / f"{chapter_id}.json"):
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("run_id") == run_id:
                return record
    return None


def _why_failed(record: dict | None) -> str | None:
    """Why a run whose notebook raised nothing still failed; None when it passed."""
    if record is None or not record.get("complete"):
        return "the chapter finished without publishing its claims"
    missed = [c["id"] for c in record["claims"] if c["gating"] and not c["reproduced"]]
    return f"gating claims not reproduced: {', '.join(missed)}" if missed else None


def _publish_failure(results, record: dict | None, reason: str, **run) -> dict:
    """Publish this failed run as the chapter's result, with what it measured: the last passing
    run's numbers must not go on standing for the chapter."""
    base = record or dict(run, finished=time.strftime("%Y-%m-%d %H:%M:%S"), claims=[])
    record = dict(base, complete=False, failed=reason)
    paths.atomic_write_text(results / f"{run['chapter']}.json", json.dumps(record, indent=1))
    return record


def _cached_note(record: dict) -> str:
    return " (from cached checkpoints)" if record.get("cached_runs") else ""


def cmd_sweep(chapter_id: str, seeds: list[int], scale: str | None, jobs: int | None, timeout: int) -> int:
    from . import records
    from .claims import text_table
    from .scale import current_scale

    chapter = _written(chapter_id)
    if chapter is None:
        return 2
    scale, jobs = current_scale(scale), jobs or os.cpu_count() or 1
    print(f"sweeping {chapter.id} at scale {scale} over seeds {sweep.format_seeds(seeds)}, "
          f"{min(jobs, len(seeds))} at a time", flush=True)
    try:
        path = sweep.sweep(chapter, seeds, scale, jobs, timeout=timeout,
                           say=lambda line: print(line, flush=True))
    except sweep.SeedFailed as err:
        print(f"FAILED: {err}\nno record written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no record written", file=sys.stderr)
        return 130
    record = records.load(chapter.id, scale, path.parent)
    print(text_table(["claim", "held", "by the rule"], [
        [c["id"], "{} of {}".format(*records.held_on(c)), "gating" if records.gates(c) else "reported"]
        for c in record["claims"]]))
    if not set(records.RULE_SEEDS) <= set(seeds):
        print("note: these seeds do not cover 0-7, so by this record no claim gates at this scale")
    print(f"record written to {path}")
    return 0


LEDGER_HEAD = ["claim", "statement", "measured", "threshold", "reproduced", "kind", "tiny seeds",
               "gpu record", "paper"]


def cmd_ledger(results_dir: str | None) -> int:
    from .claims import load_results, text_table
    from .ledger_view import entries, not_swept_at
    view = entries(load_results(results_dir))
    for entry in view:
        print(f"## {entry.chapter.id} — {entry.run()}")
        if entry.failure():
            print(f"FAILED: {entry.failure()} (the values below are from that failed run)")
        for line in entry.sources():
            print(f"   {line}")
        if entry.rows:
            print(text_table(LEDGER_HEAD, [[r.id, r.text, r.measured, r.threshold, r.verdict(), r.kind,
                                            r.seeds, r.gpu, r.paper] for r in entry.rows], width=40))
        print()
    print("not yet swept at gpu scale: " + (", ".join(c.id for c in not_swept_at(view)) or "none"))
    shown = {e.chapter.id for e in view}
    to_come = [c.id for c in CHAPTERS if c.id not in shown]
    if to_come:
        print("chapters to come: " + ", ".join(to_come))
    return 0


def cmd_course_build(chapters: list[str] | None, out: str | None, release: bool) -> int:
    from .course.build import build

    started = time.time()
    folder = build(out or paths.build_dir() / "course", chapters, release=release)
    names = chapters or [c.id for c in CHAPTERS if c.ready]
    print(f"course folder {folder}: {len(names)} assignments ({', '.join(names)})"
          + ("; student versions in release/" if release else "") + f"; {time.time() - started:.1f} s")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "run":
            return cmd_run(args.chapter, args.scale, args.seed, args.timeout)
        if args.command == "sweep":
            return cmd_sweep(args.chapter, args.seeds, args.scale, args.jobs, args.timeout)
        if args.command == "course":
            return cmd_course_build(args.chapters, args.out, not args.no_release)
        return cmd_ledger(args.results_dir)
    except ValueError as err:   # bad environment values (LAB_SCALE, LAB_SEED): say it plainly
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
