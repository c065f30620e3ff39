"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import numpy as np

from . import method as mec


def greedy_by_hand() -> float:
    """Exercise 1: the entropy (nats) of the greedy coupling of (0.6, 0.4) with (0.5, 0.3, 0.2)."""
    return mec.entropy(mec.greedy_mec([0.6, 0.4], [0.5, 0.3, 0.2]))


def pruning_bound() -> float:
    """Exercise 2: UB(0.9, 9)."""
    return float(mec.entropy_upper_bound(np.array([0.9]), 9)[0])


def tokens_needed(stego) -> float:
    """Exercise 3: H(X) / H(Y per token) in the first world of Experiment 2."""
    world = stego.worlds[0]
    return stego.h_x[world] / stego.h_y_per_token[world]
