"""Worker for tests/test_ado.py: a tiny ADO training under ``accelerate launch``; each process
writes the policy trajectory it sampled from, so the test can compare them."""
import dataclasses
import json
import sys

import torch

from lab.papers.ado import experiments as ex
from lab.train import TrainConfig

torch.set_num_threads(1)
cfg = dataclasses.replace(
    ex.LMConfig(), d_model=16, n_layers=1, n_heads=2, d_mlp=32, length=16, batch=8, n_val=8,
    train=TrainConfig(steps=40, lr=3e-3, progress_every=40),
    ado=dataclasses.replace(ex.LMConfig.ado, update_interval=10, start_step=10, ignore_steps=0,
                            savgol_window=5, subsample=1))
record = ex.train_lm(cfg, "ado", seed=0)
from accelerate.state import PartialState  # noqa: E402

rank = PartialState().process_index
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"pi": record["pi"].tolist(), "counts": record["counts"].tolist(),
               "refits": len(record["refits"])}, f)
