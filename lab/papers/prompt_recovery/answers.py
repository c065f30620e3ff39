"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

from . import method as pr


def gcg_evaluations(cfg) -> int:
    """Exercise 1: exact evaluations of one GCG run (the initial prompt, then B per step)."""
    return 1 + cfg.gcg_steps * cfg.gcg_batch


def scrambled_order_similarity() -> float:
    """Exercise 2: order similarity of a right-words, wrong-order prompt to its caption."""
    return pr.order_similarity("circle large purple left the on a", "a large purple circle on the left")


def linear_swap_error(objective, tokens) -> float:
    """Exercise 3: the largest |estimate − exact| over single swaps at a prompt (to the tokens
    the explorers show: every free word at tiny scale)."""
    from ... import discrete
    t, shown = list(tokens), list(objective.shown)      # the 33 free words at tiny scale
    est = discrete.swap_estimates(objective.grad(t), t)[:, shown].double()
    exact = discrete.exact_swap_changes(objective.loss, t, objective.vocab,
                                        allowed=shown)[:, shown]
    return float((est - exact.double()).abs().max())
