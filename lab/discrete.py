"""Discrete search over token sequences, shared by the chapters that optimise prompts.

The search sees a prompt as ``s`` token ids and two functions supplied by the chapter:

* ``loss(candidates)`` maps a ``(B, s)`` tensor of ids to ``B`` exact losses (one *evaluation*
  per row; the counts in :class:`SearchResult` are what a budget compares);
* ``grad(tokens)`` maps one ``(s,)`` prompt to the ``(s, V)`` gradient of the loss with respect
  to the prompt's one-hot matrix :math:`X` (:func:`one_hot_gradient` computes it for a model that
  reads embeddings ``X E``).

:func:`gcg` is greedy coordinate gradient (Zou et al. 2023, arXiv 2307.15043): the gradient
picks a shortlist of ``k`` tokens per position, ``B`` candidates each change one position to a
shortlisted token, all are scored exactly and the search moves to the best one, even when it is
worse than where it stands; the best prompt seen is kept. :func:`swap_estimates` and
:func:`exact_swap_changes` give the first-order estimate and the true change of every single swap,
the two sides of the question "is the gradient right?".
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from . import _check

POSITIONS = ("uniform", "even")


@dataclasses.dataclass
class SearchResult:
    """The best prompt a search saw and how it got there. ``trace`` has one entry per step:
    ``{"step", "tokens", "loss", "best_loss", "evaluations"}`` (``tokens``/``loss`` = the iterate
    after the step, ``evaluations`` = exact evaluations so far)."""

    tokens: torch.Tensor
    loss: float
    evaluations: int
    gradient_calls: int
    trace: list[dict]


def _allowed_mask(allowed, vocab: int) -> torch.Tensor:
    if allowed is None:
        return torch.ones(vocab, dtype=torch.bool)
    mask = torch.as_tensor(allowed)
    if mask.dtype == torch.bool:
        if mask.shape != (vocab,):
            raise ValueError(f"allowed as a mask must have shape ({vocab},); got {tuple(mask.shape)}")
        out = mask.clone()
    else:
        ids = mask.long().flatten()
        if ids.numel() == 0:
            raise ValueError("allowed is empty: give at least one token id the search may use")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"allowed holds ids outside 0..{vocab - 1}")
        out = torch.zeros(vocab, dtype=torch.bool)
        out[ids] = True
    if not out.any():
        raise ValueError("allowed is empty: give at least one token id the search may use")
    return out


def _check_tokens(init) -> torch.Tensor:
    x = torch.as_tensor(init)
    if x.dim() != 1 or x.numel() == 0 or x.dtype in (torch.float16, torch.float32, torch.float64):
        raise ValueError(f"init must be a non-empty 1-D sequence of token ids; got shape {tuple(x.shape)}")
    return x.long().clone()


def _losses(loss: Callable, candidates: torch.Tensor) -> torch.Tensor:
    out = torch.as_tensor(loss(candidates)).detach().float().flatten()
    if out.numel() != len(candidates):
        raise ValueError(f"loss returned {out.numel()} values for {len(candidates)} candidates")
    return out


def shortlist(grad: torch.Tensor, k: int, allowed=None) -> torch.Tensor:
    """Top-``k`` tokens of ``−grad`` per position, among the allowed ones: ``(s, k)`` ids."""
    if grad.dim() != 2:
        raise ValueError(f"grad must be (positions, vocabulary); got shape {tuple(grad.shape)}")
    mask = _allowed_mask(allowed, grad.shape[1])
    _check.integer("k", k, low=1)
    if k > int(mask.sum()):
        raise ValueError(f"k = {k} is larger than the {int(mask.sum())} allowed tokens")
    scores = (-grad.detach().float()).masked_fill(~mask, float("-inf"))
    return scores.topk(k, dim=1).indices


def gcg(loss: Callable[[torch.Tensor], torch.Tensor], grad: Callable[[torch.Tensor], torch.Tensor],
        init: Sequence[int] | torch.Tensor, *, steps: int, k: int, batch: int, allowed=None,
        positions: str = "uniform", generator: torch.Generator | None = None,
        on_step: Callable[[dict], None] | None = None) -> SearchResult:
    """Greedy coordinate gradient from ``init`` for ``steps`` steps.

    Each step: ``G = grad(x)``; shortlist the top-``k`` allowed tokens of ``−G`` per position;
    build ``batch`` candidates, candidate ``b`` changing position ``p_b`` (drawn uniformly, or
    ``⌊b·s/batch⌋`` with ``positions="even"``) to a token drawn uniformly from that position's
    shortlist; score all exactly and move to the best, even if worse than ``x``. A candidate whose
    drawn token is the one already there equals ``x``; it is scored like any other.
    """
    x = _check_tokens(init)
    _check.integer("steps", steps, low=1)
    _check.integer("k", k, low=1)
    _check.integer("batch", batch, low=1)
    _check.choice("positions", positions, POSITIONS)
    if not callable(loss) or not callable(grad):
        raise TypeError("loss and grad must be callables (see the module docstring)")
    current = float(_losses(loss, x[None])[0])
    best, best_loss, evaluations, calls, trace = x.clone(), current, 1, 0, []
    s = len(x)
    for step in range(1, steps + 1):
        g = torch.as_tensor(grad(x))
        calls += 1
        if g.shape[0] != s:
            raise ValueError(f"grad returned {g.shape[0]} positions for a prompt of {s}")
        short = shortlist(g, k, allowed)
        if positions == "even":
            pos = torch.arange(batch) * s // batch
        else:
            pos = torch.randint(s, (batch,), generator=generator)
        pick = torch.randint(k, (batch,), generator=generator)
        candidates = x.repeat(batch, 1)
        candidates[torch.arange(batch), pos] = short[pos, pick]
        values = _losses(loss, candidates)
        evaluations += batch
        i = int(values.argmin())
        x, current = candidates[i].clone(), float(values[i])
        if current < best_loss:
            best, best_loss = x.clone(), current
        entry = {"step": step, "tokens": x.clone(), "loss": current, "best_loss": best_loss,
                 "evaluations": evaluations}
        trace.append(entry)
        if on_step is not None:
            on_step(entry)
    return SearchResult(best, best_loss, evaluations, calls, trace)


def one_hot_gradient(embeddings_loss: Callable[[torch.Tensor], torch.Tensor], table: torch.Tensor,
                     tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``∂ℓ/∂X`` at the one-hot matrix ``X`` of ``tokens``, where ``ℓ = embeddings_loss(X E)`` and
    ``E = table`` is the ``(V, d)`` embedding table: an ``(s, V)`` tensor that equals
    ``(∂ℓ/∂(XE)) Eᵀ``."""
    x = _check_tokens(tokens)
    if table.dim() != 2:
        raise ValueError(f"table must be a (vocabulary, width) matrix; got shape {tuple(table.shape)}")
    if int(x.max()) >= table.shape[0] or int(x.min()) < 0:
        raise ValueError(f"tokens hold ids outside 0..{table.shape[0] - 1}")
    X = torch.nn.functional.one_hot(x, table.shape[0]).to(table.dtype).requires_grad_(True)
    value = embeddings_loss(X @ table.detach())
    if value.dim() != 0:
        raise ValueError("embeddings_loss must return a scalar")
    (g,) = torch.autograd.grad(value, X)
    return g


def swap_estimates(grad: torch.Tensor, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """First-order change of the loss for every single swap ``i: x_i → v``:
    ``G[i, v] − G[i, x_i]`` (zero where ``v = x_i``), an ``(s, V)`` tensor."""
    x = _check_tokens(tokens)
    if grad.dim() != 2 or grad.shape[0] != len(x):
        raise ValueError(f"grad must be ({len(x)}, vocabulary); got shape {tuple(grad.shape)}")
    return grad - grad.gather(1, x[:, None])


def exact_swap_changes(loss: Callable[[torch.Tensor], torch.Tensor],
                       tokens: Sequence[int] | torch.Tensor, vocab: int, allowed=None) -> torch.Tensor:
    """True change ``ℓ(x with x_i → v) − ℓ(x)`` of every single swap, by evaluating each one:
    an ``(s, V)`` tensor with NaN at tokens that are not allowed (``s·|allowed| + 1``
    evaluations)."""
    x = _check_tokens(tokens)
    _check.integer("vocab", vocab, low=1)
    mask = _allowed_mask(allowed, vocab)
    ids = mask.nonzero().flatten()
    s = len(x)
    candidates = x.repeat(s * len(ids), 1)
    rows = torch.arange(s).repeat_interleave(len(ids))
    candidates[torch.arange(len(candidates)), rows] = ids.repeat(s)
    base = float(_losses(loss, x[None])[0])
    out = torch.full((s, vocab), float("nan"))
    out[:, ids] = (_losses(loss, candidates) - base).view(s, len(ids))
    return out
