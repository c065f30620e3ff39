"""ADO's overhead per training step at tiny scale, as a fraction of the step time.

Trains the chapter's tiny GPT under ADO (the tiny preset) and splits the wall-clock into the
training step proper, the policy update that runs every step (credit, slopes, preference,
smoothing), and the refits of the laws, amortised over the refit interval.

    PYTHONPATH=. python bench/ado_overhead.py [--steps N] [--seed S]
"""
import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from lab.papers.ado import experiments as ex


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = ex.PRESETS["tiny"].lm
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    wall, cpu = time.perf_counter(), time.process_time()
    rec = ex.train_lm(cfg, "ado", seed=args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps, interval = args.steps, cfg.ado.update_interval
    refits = np.array([r.seconds for r in rec["refits"]])
    overhead = rec["fit_seconds"] + rec["policy_seconds"]
    step = (rec["seconds"] - overhead) / steps
    update = rec["policy_seconds"] / steps
    amortised = refits.mean() / interval if len(refits) else 0.0
    print(f"steps {steps}, refit every {interval} from step {cfg.ado.start_step}: {len(refits)} refits")
    print(f"training step (without ADO)      {step * 1e3:8.2f} ms")
    print(f"policy update per step           {update * 1e3:8.3f} ms   {update / step:7.2%} of a step")
    print(f"refit, mean / max                {refits.mean() * 1e3:8.1f} / {refits.max() * 1e3:.1f} ms")
    print(f"refit amortised over {interval} steps   {amortised * 1e3:8.3f} ms   {amortised / step:7.2%} of a step")
    print(f"ADO overhead per step            {(update + amortised) * 1e3:8.3f} ms   "
          f"{(update + amortised) / step:7.2%} of a step")
    print(f"run: wall {wall:.1f} s, CPU {cpu:.1f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
