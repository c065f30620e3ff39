"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import math

from .method import ToyConfig, logit_for

DEFAULT = ToyConfig()


def initial_margin(cfg: ToyConfig = DEFAULT) -> float:
    """Exercise 1: the test margin logit(a_ctx) − logit(a_mem) before IFT (attention ½, ½)."""
    return 0.5 * (logit_for(cfg.p_copy, cfg.answers) - logit_for(cfg.p_mem, cfg.answers))


def initial_reliance(cfg: ToyConfig = DEFAULT) -> float:
    """Exercise 2: M_C before IFT, the sigmoid of that margin."""
    return 1 / (1 + math.exp(-initial_margin(cfg)))


def attention_to_win(cfg: ToyConfig = DEFAULT) -> float:
    """Exercise 3: the attention on the context at which the margin is 0 with the built memory."""
    copy, memory = logit_for(cfg.p_copy, cfg.answers), logit_for(cfg.p_mem, cfg.answers)
    return memory / (copy + memory)


def copy_only_floor(distractor: float = 0.5) -> float:
    """Exercise 6: the lowest mean loss of the tiny LM's C items that reading the context alone
    can reach when a share `distractor` of them carries a distractor: a coin toss between two
    slots costs ln 2, a clean context nothing."""
    return distractor * math.log(2)
