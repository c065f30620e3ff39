"""Sequence tasks drawn afresh from a generator: the copy task (mimetic-init, MOHAWK)."""
from __future__ import annotations

import torch

from .. import _check


def copy_batch(batch: int, length: int, vocab: int, generator: torch.Generator | None = None,
               *, mask: bool = True):
    """The copy task: BOS x₁…x_L COPY x₁…x_L with x_i uniform over `vocab` data tokens.

    Token ids: data 0…V−1, BOS = V, COPY = V+1. Returns (inputs (batch, 2L+1), next-token
    targets of the same shape). With ``mask`` (the default) the targets are −100 where no loss
    is taken, so that only the second copy counts: row i ≥ L+1 predicts x_{i−L}; without it
    every row keeps its next token (for distillation on all positions).
    """
    batch = _check.integer("batch", batch, low=1)
    length = _check.integer("length", length, low=1)
    vocab = _check.integer("vocab", vocab, low=2)
    device = generator.device if generator is not None else None
    x = torch.randint(0, vocab, (batch, length), generator=generator, device=device)
    bos = torch.full((batch, 1), vocab, device=x.device)
    cp = torch.full((batch, 1), vocab + 1, device=x.device)
    seq = torch.cat([bos, x, cp, x], dim=1)
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    if mask:
        targets[:, :length + 1] = -100
    return inputs, targets
