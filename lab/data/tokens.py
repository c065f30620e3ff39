"""Synthetic token languages ("domains") of deliberately different learnability, and a mixture
sampler that draws each sequence's domain from a policy that may change every step.

Every domain owns a disjoint block of token ids in a shared vocabulary, is generated from a seed,
and states its entropy rate H (nats per token) where one is known exactly: the best possible
mean next-token loss on its sequences (every target after the first token, which is drawn from
the source's stationary law, has conditional entropy exactly H).

- ``noise(n)``: i.i.d. uniform over n tokens; H = log n, nothing to learn beyond the unigram.
- ``cycle(n)``: a fixed random permutation cycle; H = 0, learnt almost at once.
- ``markov(n, concentration)``: a first-order chain with Dirichlet rows; small concentration
  means peaky rows. H = Σ_i π_i H(P_i) with π the stationary law. Many states: slow to learn.
- ``markov2(n, concentration)``: a second-order chain (next token depends on the last two);
  a model must attend to two positions, which it learns late.
- ``recall(n, prefix)``: a random prefix, then the prefix copied again; learnable only by
  attention (induction), H = prefix·log n / (length − 1) over the whole sequence.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from .. import _check

KINDS = ("noise", "cycle", "markov", "markov2", "recall")


@dataclasses.dataclass(frozen=True)
class Domain:
    """One token language over ``n_tokens`` local ids; `table` holds its transition law (if any)."""
    name: str
    kind: str
    n_tokens: int
    entropy: float | None               # nats per predicted token, None when unknown
    table: torch.Tensor | None = None   # cycle: (n,) successor; markov: (n, n); markov2: (n, n, n)
    start: torch.Tensor | None = None   # stationary law of the first token (or first two)
    prefix: int = 0

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """`n` sequences of `length` local token ids (0 … n_tokens−1), int64, on the CPU."""
        n, length = _check.integer("n", n, low=0), _check.integer("length", length, low=2)
        V = self.n_tokens
        if self.kind == "noise":
            return torch.randint(0, V, (n, length), generator=generator)
        if self.kind == "recall":
            if length < 2 * self.prefix:
                raise ValueError(f"length must be ≥ 2·prefix = {2 * self.prefix} for {self.name}; got {length}")
            head = torch.randint(0, V, (n, self.prefix), generator=generator)
            reps = -(-length // self.prefix)
            return head.repeat(1, reps)[:, :length]
        out = torch.empty(n, length, dtype=torch.long)
        if self.kind == "cycle":
            out[:, 0] = torch.randint(0, V, (n,), generator=generator)
            for t in range(1, length):
                out[:, t] = self.table[out[:, t - 1]]
            return out
        u = torch.rand(n, length, generator=generator, dtype=torch.float64)
        if self.kind == "markov":
            cdf = self.table.cumsum(-1)
            out[:, 0] = _draw(self.start.cumsum(0).expand(n, V), u[:, 0], V)
            for t in range(1, length):
                out[:, t] = _draw(cdf[out[:, t - 1]], u[:, t], V)
            return out
        cdf = self.table.cumsum(-1)                         # markov2: (V, V, V)
        first = _draw(self.start.reshape(-1).cumsum(0).expand(n, V * V), u[:, 0], V * V)
        out[:, 0], out[:, 1] = first // V, first % V
        for t in range(2, length):
            out[:, t] = _draw(cdf[out[:, t - 2], out[:, t - 1]], u[:, t], V)
        return out


def _draw(cdf: torch.Tensor, u: torch.Tensor, size: int) -> torch.Tensor:
    return torch.searchsorted(cdf.contiguous(), u.contiguous()[:, None]).squeeze(1).clamp_(max=size - 1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def _stationary(P: torch.Tensor) -> torch.Tensor:
    vals, vecs = np.linalg.eig(P.numpy().T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    v = np.abs(v) / np.abs(v).sum()
    return torch.as_tensor(v, dtype=torch.float64)


def _dirichlet_rows(shape: tuple[int, ...], n: int, concentration: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(n, concentration), size=shape)
    rows = np.maximum(rows, 1e-12)
    return torch.as_tensor(rows / rows.sum(-1, keepdims=True), dtype=torch.float64)


def noise(n_tokens: int, name: str = "noise") -> Domain:
    n_tokens = _check.integer("n_tokens", n_tokens, low=2)
    return Domain(name, "noise", n_tokens, math.log(n_tokens))


def cycle(n_tokens: int, seed: int, name: str = "easy") -> Domain:
    n_tokens = _check.integer("n_tokens", n_tokens, low=2)
    perm = np.random.default_rng(_check.integer("seed", seed)).permutation(n_tokens)
    succ = np.empty(n_tokens, dtype=np.int64)
    succ[perm] = np.roll(perm, -1)                        # one cycle through all tokens
    return Domain(name, "cycle", n_tokens, 0.0, torch.as_tensor(succ))


def markov(n_tokens: int, concentration: float, seed: int, name: str | None = None) -> Domain:
    n_tokens = _check.integer("n_tokens", n_tokens, low=2)
    concentration = _check.real("concentration", concentration, low=0, low_open=True)
    P = _dirichlet_rows((n_tokens,), n_tokens, concentration, _check.integer("seed", seed))
    pi = _stationary(P)
    H = float((pi * _entropy(P)).sum())
    return Domain(name or f"bigram{n_tokens}", "markov", n_tokens, H, P, pi)


def markov2(n_tokens: int, concentration: float, seed: int, name: str | None = None) -> Domain:
    """Second-order chain; its entropy rate uses the stationary law of the pair chain."""
    n_tokens = _check.integer("n_tokens", n_tokens, low=2)
    concentration = _check.real("concentration", concentration, low=0, low_open=True)
    V = n_tokens
    P = _dirichlet_rows((V, V), V, concentration, _check.integer("seed", seed))
    pair = torch.zeros(V * V, V * V, dtype=torch.float64)  # (a, b) → (b, c) with prob P[a, b, c]
    a, b, c = np.meshgrid(np.arange(V), np.arange(V), np.arange(V), indexing="ij")
    pair[torch.as_tensor((a * V + b).ravel()), torch.as_tensor((b * V + c).ravel())] = P.reshape(-1)
    pi = _stationary(pair)
    H = float((pi * _entropy(P.reshape(V * V, V))).sum())
    return Domain(name or f"markov2-{V}", "markov2", V, H, P, pi.reshape(V, V))


def recall(n_tokens: int, prefix: int, length: int, name: str = "recall") -> Domain:
    n_tokens = _check.integer("n_tokens", n_tokens, low=2)
    prefix = _check.integer("prefix", prefix, low=1)
    length = _check.integer("length", length, low=2 * prefix)
    H = (prefix - 1) * math.log(n_tokens) / (length - 1)   # only the prefix's targets are unpredictable
    return Domain(name, "recall", n_tokens, H, prefix=prefix)


class TokenMixture:
    """K domains on disjoint token blocks; sample batches whose domains follow given weights."""

    def __init__(self, domains: Sequence[Domain], length: int):
        domains = list(domains)
        if not domains or not all(isinstance(d, Domain) for d in domains):
            raise TypeError("domains must be a non-empty sequence of Domain")
        names = [d.name for d in domains]
        if len(set(names)) != len(names):
            raise ValueError(f"domains must have distinct names; got {names}")
        self.domains, self.names = domains, names
        self.length = _check.integer("length", length, low=2)
        self.offsets = np.cumsum([0] + [d.n_tokens for d in domains])[:-1].tolist()
        self.vocab = int(sum(d.n_tokens for d in domains))

    @property
    def entropies(self) -> np.ndarray:
        return np.array([np.nan if d.entropy is None else d.entropy for d in self.domains])

    def index(self, name: str) -> int:
        return self.names.index(_check.choice("name", name, self.names))

    def sample_domain(self, k: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` sequences of domain `k` in the shared vocabulary."""
        k = _check.integer("k", k, low=0, high=len(self.domains) - 1)
        return self.domains[k].sample(n, self.length, generator) + self.offsets[k]

    def sample(self, weights, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: each sequence's domain i.i.d. from `weights`. Returns (tokens (B, L), domain ids (B,))."""
        w = check_weights(weights, len(self.domains))
        batch = _check.integer("batch", batch, low=1)
        ids = torch.multinomial(torch.as_tensor(w), batch, replacement=True, generator=generator)
        tokens = torch.empty(batch, self.length, dtype=torch.long)
        for k in range(len(self.domains)):
            where = (ids == k).nonzero().squeeze(1)
            if len(where):
                tokens[where] = self.sample_domain(k, len(where), generator)
        return tokens, ids

    def validation(self, n: int, seed: int) -> list[torch.Tensor]:
        """`n` held-out sequences per domain, from their own generator (disjoint from training draws)."""
        g = torch.Generator().manual_seed(_check.integer("seed", seed) * 7919 + 17)
        return [self.sample_domain(k, n, g) for k in range(len(self.domains))]


def check_weights(weights, k: int, name: str = "weights") -> np.ndarray:
    """A probability vector of length k: finite, non-negative, summing to one (within 1e-6)."""
    w = _check.array(name, weights, ndim=1)
    if len(w) != k:
        raise ValueError(f"{name} must have one entry per domain ({k}); got {len(w)}")
    if (w < 0).any():
        raise ValueError(f"{name} must be non-negative; got {w.round(4).tolist()}")
    if abs(w.sum() - 1) > 1e-6:
        raise ValueError(f"{name} must sum to one; got sum {w.sum():.6g}")
    return w / w.sum()
