"""Independent runs side by side: one function over a list of jobs, in this process or in a pool
of single-threaded worker processes.

On a small CPU, tiny models train fastest single-threaded (measured), so two runs in two
processes finish in about the time of one. Each job must seed itself (its own arm and seed),
so the results do not depend on how many workers ran them.
"""
from __future__ import annotations

from typing import Callable, Sequence

from . import _check


def _single_threaded():
    import torch
    torch.set_num_threads(1)


def run_jobs(fn: Callable, jobs: Sequence[tuple], workers: int, desc: str = "runs") -> list:
    """``[fn(*job) for job in jobs]``, in order. With `workers` > 1 the jobs go to that many
    spawned, single-threaded processes (`fn` and the jobs must pickle: a module-level function
    and plain data, tensors or modules), and one bar counts the finished jobs."""
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {type(fn).__name__}")
    workers = _check.integer("workers", workers, low=1)
    jobs = [tuple(job) for job in jobs]
    if workers == 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm
    workers = min(workers, len(jobs))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_threaded) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        with tqdm(total=len(jobs), desc=f"{desc} ({workers} processes)") as bar:
            for _ in as_completed(futures):
                bar.update(1)
        return [future.result() for future in futures]
