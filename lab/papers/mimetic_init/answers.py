"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import math

from .method import memory_length


def per_step_decay() -> float:
    """Exercise 1: the mask's factor per token with Â = −6 and Δ = 1."""
    return math.exp(-math.exp(-6.0))


def fastest_default_memory() -> float:
    """Exercise 2: tokens until the mask of a head with A = −16, Δ = 0.1 falls below 1 %."""
    return memory_length(math.log(16.0), math.log(math.expm1(0.1)))


def state_size(mixer) -> int:
    """Exercise 3: numbers one layer carries from token to token (all heads)."""
    return mixer.nheads * mixer.headdim * mixer.d_state
