"""Prompt recovery through a CLIP proxy: the objective the optimisers see, the stand-ins for the
text-to-image model and the captioner, and the metrics that judge a recovered prompt.

The proxy loss of a prompt ``x`` (``s`` free tokens, then ``<eos>``) for target images ``Y`` is
``ℓ(x) = 1 − cos(g(XE), f(Y))``: ``g`` the text tower pooled at ``<eos>``, ``f`` the image tower,
no logit scale, several targets → the mean. :class:`ProxyObjective` gives it in the three forms
the shared searches of :mod:`lab.discrete` need (batched ids, one-hot gradient, embedding gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import _check, discrete
from ...data import shapes
from ...nn.tinyclip import ImageTower

SPECIAL = (shapes.PAD, shapes.EOS)
FREE_TOKENS = tuple(i for i in range(len(shapes.VOCAB)) if i not in SPECIAL)   # the 33 words
METHODS = ("pez", "gcg", "random", "autodan")


# ---------------------------------------------------------------------------------------------
# The proxy objective
# ---------------------------------------------------------------------------------------------
def text_states(tower, embeds: torch.Tensor, ids: torch.Tensor):
    """The text tower's pass below the embedding table, exposing what the generator reads:
    ``(pooled, states, eos)`` with ``pooled`` the projected state at the first ``<eos>`` (equal to
    ``tower.encode_embeds(embeds, ids)``), ``states`` the final-LayerNorm token states (n, L, w)."""
    L = ids.shape[1]
    h = embeds + tower.position[:L]
    h = tower.transformer(h, mask=tower.causal[:L, :L], is_causal=True)
    h = tower.final_norm(h)
    eos = (ids == shapes.EOS).int().argmax(dim=1)
    return tower.projection(h[torch.arange(len(ids)), eos]), h, eos


def with_eos(ids: torch.Tensor) -> torch.Tensor:
    """Append the ``<eos>`` column to (B, s) prompt ids."""
    return torch.cat([ids, torch.full((len(ids), 1), shapes.EOS, dtype=ids.dtype)], dim=1)


class ProxyObjective:
    """``ℓ(x) = 1 − mean_j cos(g(x), f(Y_j))`` for the tiny CLIP ``clip`` and target images."""

    def __init__(self, clip, targets: torch.Tensor):
        targets = torch.as_tensor(targets)
        if targets.dim() == 3:
            targets = targets[None]
        if len(targets) == 0:
            raise ValueError("targets is empty: give at least one target image")
        self.clip = clip
        with torch.no_grad():
            self.target = F.normalize(clip.encode_image(clip.prepare_images(targets)), dim=-1)
        self.table = clip.text.token.weight.detach()
        self.allowed = FREE_TOKENS
        self.shown = FREE_TOKENS          # the tokens the explorers show: all 33 free words
        self.evaluations = 0

    @staticmethod
    def decode(ids) -> str:
        """Prompt ids → words."""
        return decode(ids)

    @property
    def vocab(self) -> int:
        return self.table.shape[0]

    def on_embeddings(self, P: torch.Tensor) -> torch.Tensor:
        """ℓ of one soft prompt P (s, d); ``<eos>`` is appended as its embedding row."""
        s = P.shape[0]
        ids = with_eos(torch.zeros(1, s, dtype=torch.long))
        full = torch.cat([P, self.table[shapes.EOS][None]], dim=0)[None]
        g = self.clip.text.encode_embeds(full, ids)
        return 1 - (F.normalize(g, dim=-1) @ self.target.T).mean()

    @torch.no_grad()
    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Exact ℓ of a batch of prompts (B, s): B evaluations."""
        ids = torch.as_tensor(ids).long()
        if ids.dim() == 1:
            ids = ids[None]
        self.evaluations += len(ids)
        g = self.clip.text(with_eos(ids))
        return 1 - (F.normalize(g, dim=-1) @ self.target.T).mean(dim=1)

    def grad(self, ids: torch.Tensor) -> torch.Tensor:
        """∂ℓ/∂X at the one-hot matrix of ``ids``: (s, V)."""
        return discrete.one_hot_gradient(self.on_embeddings, self.table, ids)

    def value_and_grad(self, ids: torch.Tensor):
        """(ℓ, ∂ℓ/∂P̃) at ``P̃ = E[ids]``: PEZ's gradient pass."""
        P = self.table[torch.as_tensor(ids).long()].clone().requires_grad_(True)
        value = self.on_embeddings(P)
        (g,) = torch.autograd.grad(value, P)
        return float(value.detach()), g


def run_optimizer(method: str, objective, *, length: int, steps: int, batch: int = 64,
                  k: int = 8, seed: int = 0, beam: int = 1, prior=None, weight: float = 0.0,
                  lr: float = 0.1, weight_decay: float = 0.1, on_step=None) -> discrete.SearchResult:
    """One optimiser from ``METHODS`` on ``objective`` (anything with ``loss``, ``grad``,
    ``value_and_grad``, ``table``, ``vocab`` and ``allowed``: the tiny :class:`ProxyObjective`
    or a hub CLIP's) over its allowed tokens: one interface, a counted budget
    (``result.evaluations``, ``result.gradient_calls``)."""
    _check.choice("method", method, METHODS)
    _check.integer("length", length, low=1)
    _check.integer("steps", steps, low=1)
    _check.integer("batch", batch, low=1)
    _check.integer("k", k, low=1)
    allowed = list(objective.allowed)
    if k > len(allowed):
        raise ValueError(f"k = {k} is larger than the vocabulary of {len(allowed)} free tokens")
    gen = torch.Generator().manual_seed(_check.integer("seed", seed))
    free = torch.tensor(allowed)
    init = free[torch.randint(len(free), (length,), generator=gen)]
    if method == "pez":
        return discrete.pez(objective.value_and_grad, objective.table, length=length, steps=steps,
                            lr=lr, weight_decay=weight_decay, allowed=allowed, init=init,
                            on_step=on_step)
    if method == "gcg":
        return discrete.gcg(objective.loss, objective.grad, init, steps=steps, k=k, batch=batch,
                            allowed=allowed, positions="uniform", generator=gen,
                            exclude_current=True, on_step=on_step)
    if method == "random":
        return discrete.random_search(objective.loss, init, steps=steps, batch=batch,
                                      vocab=objective.vocab, allowed=allowed, ball="l0",
                                      generator=gen, on_step=on_step)
    return discrete.autodan(objective.loss, objective.grad, steps=steps, batch=batch,
                            vocab=objective.vocab, allowed=allowed, beam=beam, prior=prior,
                            weight=weight, on_step=on_step)


def decode(ids) -> str:
    """Prompt ids → words."""
    return " ".join(shapes.VOCAB[int(i)] for i in ids)


# ---------------------------------------------------------------------------------------------
# The text-to-image stand-in and the captioner
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """Caption-conditioned image generator (the Stable Diffusion stand-in, 1.12 M parameters):
    [normalised pooled text embedding ⊕ mean final-LayerNorm token state over positions ≤ <eos>]
    → Linear(128→256) → GELU → Linear(256→4096) → 64×8×8 → ConvT(64→32) → GELU → ConvT(32→3).
    The text tower is the frozen proxy's (token states, as Stable Diffusion reads them)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * width, 256), nn.GELU(), nn.Linear(256, 64 * 8 * 8))
        self.up = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.GELU(),
                                nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.up(self.mlp(condition).view(-1, 64, 8, 8))


@torch.no_grad()
def condition(clip, ids: torch.Tensor) -> torch.Tensor:
    """The generator's input for padded ids (n, L) ending in <eos>: (n, 128)."""
    pooled, h, eos = text_states(clip.text, clip.text.token(ids), ids)
    keep = (torch.arange(ids.shape[1])[None] <= eos[:, None]).float()[..., None]
    mean = (h * keep).sum(1) / keep.sum(1)
    return torch.cat([F.normalize(pooled, dim=-1), mean], dim=1)


@torch.no_grad()
def regenerate(generator: Generator, clip, texts) -> torch.Tensor:
    """Images the generator draws for prompts (texts): (n, 3, 32, 32)."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("texts is empty: give at least one prompt")
    return generator(condition(clip, clip.tokenize(list(texts))))


class Captioner(nn.Module):
    """The BLIP-2 stand-in: the image tower's design with a 128-d output → GELU → four heads
    (shape, colour, size, position); the caption is the grammar applied to the four argmaxes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(ImageTower(128), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(128, len(v)) for v in shapes.ATTRIBUTES.values())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        z = self.body(images)
        return [head(z) for head in self.heads]

    def loss(self, images: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(o, attrs[:, i]) for i, o in enumerate(self(images)))

    @torch.no_grad()
    def attributes(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([o.argmax(dim=1) for o in self(images)], dim=1)

    def caption(self, images: torch.Tensor) -> list[str]:
        return [shapes.caption(a) for a in self.attributes(images).tolist()]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences of two texts."""
    x, y = a.split(), b.split()
    row = list(range(len(y) + 1))
    for i, u in enumerate(x, start=1):
        prev, row[0] = row[0], i
        for j, v in enumerate(y, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (u != v))
    return row[-1]


def order_similarity(text: str, truth: str) -> float:
    """Order-aware text similarity 1 − Lev/max(len), Lev the word-level edit distance."""
    if not truth.split():
        raise ValueError("truth is empty: give the true caption")
    n = max(len(text.split()), len(truth.split()))
    return 1 - word_edit_distance(text, truth) / n


def attribute_recall(text: str, attrs) -> float:
    """Bag-of-words recall: the share of the four attribute words of ``attrs`` in ``text``."""
    words = set(text.split())
    names = [values[int(a)] for values, a in zip(shapes.ATTRIBUTES.values(), attrs, strict=True)]
    return sum(n in words for n in names) / len(names)


@torch.no_grad()
def image_cosine(clip, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair cosine of two image batches under a CLIP's image tower."""
    fa = F.normalize(clip.encode_image(clip.prepare_images(a)), dim=-1)
    fb = F.normalize(clip.encode_image(clip.prepare_images(b)), dim=-1)
    return (fa * fb).sum(dim=1)


@torch.no_grad()
def text_image_cosine(clip, texts, images: torch.Tensor) -> torch.Tensor:
    """Per-pair cosine of texts and images: the proxy score of each prompt for its target."""
    t = F.normalize(clip.encode_text(clip.tokenize(list(texts))), dim=-1)
    f = F.normalize(clip.encode_image(clip.prepare_images(images)), dim=-1)
    return (t * f).sum(dim=1)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties sharing their average rank."""
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(1, len(v) + 1, dtype=v.dtype)
    for value in torch.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson's r of the ranks (ties share their average rank)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.dim() != 1 or x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"x and y must be equal-length sequences of ≥ 2 values; got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
