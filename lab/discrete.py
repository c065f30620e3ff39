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

Three more searches share the bookkeeping: :func:`pez` (projected gradient steps on a soft
prompt, Wen et al. 2023), :func:`random_search` (single-token swaps without a gradient, the
current prompt kept as a candidate) and :func:`autodan` (grow the prompt token by token,
ranking tokens by gradient plus an optional language-model prior; greedy or beam).
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


def _best_single_swap(loss: Callable, x: torch.Tensor, pos: torch.Tensor,
                      new: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Score the ``len(pos)`` copies of ``x`` with ``new[b]`` at ``pos[b]``; the best one and its
    loss (the first on ties)."""
    candidates = x.repeat(len(pos), 1)
    candidates[torch.arange(len(pos)), pos] = new
    values = _losses(loss, candidates)
    i = int(values.argmin())
    return candidates[i].clone(), float(values[i])


def _entry(step: int, tokens: torch.Tensor, loss: float, best_loss: float, evaluations: int,
           **extra) -> dict:
    """One step of a search's trace."""
    return {"step": step, "tokens": tokens.clone(), "loss": loss, "best_loss": best_loss,
            "evaluations": evaluations, **extra}


def _log(trace: list, on_step: Callable[[dict], None] | None, entry: dict) -> None:
    trace.append(entry)
    if on_step is not None:
        on_step(entry)


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
        on_step: Callable[[dict], None] | None = None, exclude_current: bool = False) -> SearchResult:
    """Greedy coordinate gradient from ``init`` for ``steps`` steps.

    Each step: ``G = grad(x)``; shortlist the top-``k`` allowed tokens of ``−G`` per position;
    build ``batch`` candidates, candidate ``b`` changing position ``p_b`` (drawn uniformly, or
    ``⌊b·s/batch⌋`` with ``positions="even"``) to a token drawn uniformly from that position's
    shortlist; score all exactly and move to the best, even if worse than ``x``. A candidate whose
    drawn token is the one already there equals ``x``; it is scored like any other, unless
    ``exclude_current``: then each position's shortlist leaves out the token already there, so
    every candidate differs from ``x`` in exactly one position (x itself is never a candidate).
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
        if exclude_current:
            g = g.detach().float().clone()
            g[torch.arange(s), x] = float("inf")
            mask = _allowed_mask(allowed, g.shape[1]).clone()
            if k > int(mask.sum()) - 1:
                raise ValueError(f"k = {k} is larger than the {int(mask.sum()) - 1} allowed tokens "
                                 "other than the current one")
        short = shortlist(g, k, allowed)
        if positions == "even":
            pos = torch.arange(batch) * s // batch
        else:
            pos = torch.randint(s, (batch,), generator=generator)
        pick = torch.randint(k, (batch,), generator=generator)
        candidate, value = _best_single_swap(loss, x, pos, short[pos, pick])
        evaluations += batch
        x, current = candidate, value
        if current < best_loss:
            best, best_loss = x.clone(), current
        entry = _entry(step, x, current, best_loss, evaluations)
        _log(trace, on_step, entry)
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


# ---------------------------------------------------------------------------------------------
# PEZ: a continuous prompt, snapped to the vocabulary for every gradient
# ---------------------------------------------------------------------------------------------
def project(embeddings: torch.Tensor, table: torch.Tensor, allowed=None) -> torch.Tensor:
    """Row-wise nearest allowed vocabulary row by **cosine**: ``(s,)`` ids for ``(s, d)`` rows
    (PEZ's ``Proj_E``). Disallowed ids are masked, never returned."""
    if table.dim() != 2:
        raise ValueError(f"table must be a (vocabulary, width) matrix; got shape {tuple(table.shape)}")
    if embeddings.dim() != 2 or embeddings.shape[1] != table.shape[1]:
        raise ValueError(f"embeddings must be (positions, {table.shape[1]}); got shape "
                         f"{tuple(embeddings.shape)}")
    mask = _allowed_mask(allowed, table.shape[0]).to(table.device)
    e = embeddings.detach()
    t = table.detach().to(e.dtype)
    cos = torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(t, dim=1).T
    return cos.masked_fill(~mask, float("-inf")).argmax(dim=1)


def pez(value_and_grad: Callable[[torch.Tensor], tuple], table: torch.Tensor, *, length: int,
        steps: int, lr: float = 0.1, weight_decay: float = 0.1, allowed=None,
        init: Sequence[int] | torch.Tensor | None = None, generator: torch.Generator | None = None,
        on_step: Callable[[dict], None] | None = None) -> SearchResult:
    """PEZ (Wen et al. 2023, arXiv 2302.03668): a soft prompt ``P`` (``length × d``, initialised
    with the table's rows at ``init`` or at uniformly drawn allowed ids) takes AdamW steps
    (``lr``, ``weight_decay``) whose gradient is evaluated at its projection ``P̃ = E[Proj_E(P)]``.

    ``value_and_grad(ids)`` maps the projected prompt's ``(s,)`` ids to ``(loss, ∂ℓ/∂P̃)`` with
    ``∂ℓ/∂P̃`` of shape ``(s, d)``: one gradient pass, which also evaluates the decoded prompt
    exactly (``evaluations = gradient_calls = steps``). The best decoded prompt seen is kept.
    Trace entries also hold ``"soft"``, the soft prompt before the step."""
    if table.dim() != 2:
        raise ValueError(f"table must be a (vocabulary, width) matrix; got shape {tuple(table.shape)}")
    _check.integer("length", length, low=1)
    _check.integer("steps", steps, low=1)
    _check.real("lr", lr, low=0, low_open=True)
    _check.real("weight_decay", weight_decay, low=0)
    if not callable(value_and_grad):
        raise TypeError("value_and_grad must be a callable: ids -> (loss, gradient at E[ids])")
    mask = _allowed_mask(allowed, table.shape[0])
    if init is None:
        ids = mask.nonzero().flatten()
        init = ids[torch.randint(len(ids), (length,), generator=generator)]
    x = _check_tokens(init)
    if len(x) != length:
        raise ValueError(f"init has {len(x)} tokens but length = {length}")
    if not bool(mask[x].all()):
        raise ValueError("init holds token ids that are not allowed")
    soft = table.detach()[x].clone().requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)
    best, best_loss, trace = None, float("inf"), []
    for step in range(1, steps + 1):
        ids = project(soft, table, mask)
        value, g = value_and_grad(ids)
        g = torch.as_tensor(g)
        if g.shape != soft.shape:
            raise ValueError(f"value_and_grad returned a gradient of shape {tuple(g.shape)}; "
                             f"the prompt is {tuple(soft.shape)}")
        current = float(value)
        if current < best_loss:
            best, best_loss = ids.clone(), current
        entry = _entry(step, ids, current, best_loss, step, soft=soft.detach().clone())
        soft.grad = g.detach().to(soft.dtype).clone()
        opt.step()
        _log(trace, on_step, entry)
    return SearchResult(best, best_loss, steps, steps, trace)


# ---------------------------------------------------------------------------------------------
# Random search (no gradient) and AutoDAN (grow the prompt one token at a time)
# ---------------------------------------------------------------------------------------------
BALLS = ("l0", "l2")


def random_search(loss: Callable[[torch.Tensor], torch.Tensor], init: Sequence[int] | torch.Tensor,
                  *, steps: int, batch: int, vocab: int, allowed=None, ball: str = "l0",
                  table: torch.Tensor | None = None, radius: int | None = None,
                  generator: torch.Generator | None = None,
                  on_step: Callable[[dict], None] | None = None) -> SearchResult:
    """Random search: each step builds ``batch`` candidates, each changing one uniformly chosen
    position to a token drawn uniformly from the allowed vocabulary (``ball="l0"``) or from the
    ``radius`` allowed tokens nearest in **Euclidean** distance (rows of ``table``) to the token
    there (``ball="l2"``; default radius max(256, ⌊0.05|T|⌋), capped at the allowed count). The
    current prompt joins as one more candidate (its loss is known, not re-evaluated), so the
    loss never increases. Evaluations: 1 + steps·batch."""
    x = _check_tokens(init)
    _check.integer("steps", steps, low=1)
    _check.integer("batch", batch, low=1)
    _check.choice("ball", ball, BALLS)
    if not callable(loss):
        raise TypeError("loss must be a callable (see the module docstring)")
    _check.integer("vocab", vocab, low=1)
    if table is not None and table.shape[0] != vocab:
        raise ValueError(f"table has {table.shape[0]} rows but vocab = {vocab}")
    if int(x.max()) >= vocab:
        raise ValueError(f"init holds ids outside 0..{vocab - 1}")
    mask = _allowed_mask(allowed, vocab)
    ids = mask.nonzero().flatten()
    near = None
    if ball == "l2":
        if table is None:
            raise ValueError("ball='l2' needs table (the embedding rows that define distance)")
        r = max(256, int(0.05 * table.shape[0])) if radius is None else radius
        r = min(_check.integer("radius", r, low=1), len(ids))
        dist = torch.cdist(table.detach().float(), table.detach().float()[ids])
        near = ids[dist.topk(r, dim=1, largest=False).indices]          # (V, r)
    current = float(_losses(loss, x[None])[0])
    best, best_loss, evaluations, trace = x.clone(), current, 1, []
    s = len(x)
    for step in range(1, steps + 1):
        pos = torch.randint(s, (batch,), generator=generator)
        if near is None:
            new = ids[torch.randint(len(ids), (batch,), generator=generator)]
        else:
            new = near[x[pos], torch.randint(near.shape[1], (batch,), generator=generator)]
        candidate, value = _best_single_swap(loss, x, pos, new)
        evaluations += batch
        if value < current:
            x, current = candidate, value
        if current < best_loss:
            best, best_loss = x.clone(), current
        entry = _entry(step, x, current, best_loss, evaluations)
        _log(trace, on_step, entry)
    return SearchResult(best, best_loss, evaluations, 0, trace)


def autodan(loss: Callable[[torch.Tensor], torch.Tensor], grad: Callable[[torch.Tensor], torch.Tensor],
            *, steps: int, batch: int, vocab: int, allowed=None, beam: int = 1,
            prior: Callable[[torch.Tensor], torch.Tensor] | None = None, weight: float = 1.0,
            dummy: int = 0, on_step: Callable[[dict], None] | None = None) -> SearchResult:
    """AutoDAN as the FUSE code runs it: grow the prompt left to right, one token per step.

    Step t, for each kept prefix: append the ``dummy`` token, take the one-hot gradient
    ``G = grad(prefix + [dummy])`` and score every allowed token ``v`` by
    ``−G[t, v] + weight·z_v`` with ``z = prior(prefix)`` (next-token logits, ``(vocab,)``; zero
    without a prior); the top ``batch`` tokens are scored exactly as ``prefix + [v]``. The
    ``beam`` best sequences over all prefixes are kept (``beam=1``: greedy). The result is the
    best sequence of the last step, so the prompt has ``steps`` tokens (``best_loss`` in the trace
    still tracks the best prefix seen). Evaluations: the exact scores; gradient calls: one per
    kept prefix per step."""
    _check.integer("steps", steps, low=1)
    _check.integer("batch", batch, low=1)
    _check.integer("vocab", vocab, low=1)
    _check.integer("beam", beam, low=1)
    _check.real("weight", weight)
    _check.integer("dummy", dummy, low=0, high=vocab - 1)
    if not callable(loss) or not callable(grad):
        raise TypeError("loss and grad must be callables (see the module docstring)")
    if prior is not None and not callable(prior):
        raise TypeError("prior must be None or a callable: prefix ids -> next-token logits")
    mask = _allowed_mask(allowed, vocab)
    if batch > int(mask.sum()):
        raise ValueError(f"batch = {batch} is larger than the {int(mask.sum())} allowed tokens")
    beams = [(torch.zeros(0, dtype=torch.long), float("inf"))]
    best_loss, evaluations, calls, trace = float("inf"), 0, 0, []
    for step in range(1, steps + 1):
        pool, pool_loss = [], []
        for prefix, _ in beams:
            x = torch.cat([prefix, torch.tensor([dummy])])
            g = torch.as_tensor(grad(x)).detach().float()
            calls += 1
            if g.shape != (len(x), vocab):
                raise ValueError(f"grad returned shape {tuple(g.shape)}; expected ({len(x)}, {vocab})")
            score = -g[-1]
            if prior is not None and weight != 0:
                z = torch.as_tensor(prior(prefix)).detach().float().flatten()
                if z.numel() != vocab:
                    raise ValueError(f"prior returned {z.numel()} logits; expected {vocab}")
                score = score + weight * z
            top = score.masked_fill(~mask, float("-inf")).topk(batch).indices
            candidates = torch.cat([prefix.repeat(batch, 1), top[:, None]], dim=1)
            values = _losses(loss, candidates)
            evaluations += batch
            pool += list(candidates)
            pool_loss.append(values)
        values = torch.cat(pool_loss)
        order = torch.sort(values, stable=True).indices[:beam]
        beams = [(pool[int(i)].clone(), float(values[i])) for i in order]
        x, current = beams[0]
        best_loss = min(best_loss, current)
        entry = _entry(step, x, current, best_loss, evaluations)
        _log(trace, on_step, entry)
    return SearchResult(beams[0][0].clone(), beams[0][1], evaluations, calls, trace)
