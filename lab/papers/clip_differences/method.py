"""PC-CLIP (Sam et al., arXiv 2409.09721): finetuning CLIP's text encoder on pairwise differences.

For a triple (a, b, c), c a text saying how image a differs from image b (first minus second),
the text embedding of c is pulled towards the normalised difference of the normalised, frozen
image embeddings with a symmetric InfoNCE at temperature 1. Only the text transformer's blocks
train. Afterwards: difference classification, attribute ranking by one comparative sentence,
comparative prompting, and weight averaging with the pretrained model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ... import _check
from ...data import shapes
from ...pretrained import (
    text_embeddings,
)

RANK_TEXT = "the first is larger than the second"


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------
def normalised_difference(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """d̂ = (u − v)/‖u − v‖ with u, v the unit-norm embeddings; a zero difference raises."""
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2 or len(emb_a) == 0:
        raise ValueError(f"emb_a and emb_b must be equal, non-empty (n, d) batches; got "
                         f"{tuple(emb_a.shape)} and {tuple(emb_b.shape)}")
    diff = F.normalize(emb_a, dim=-1) - F.normalize(emb_b, dim=-1)
    norm = diff.norm(dim=-1, keepdim=True)
    if (norm == 0).any():
        raise ValueError(f"emb_a and emb_b are identical in {int((norm == 0).sum())} pair(s): "
                         "a pair without a difference has no direction; drop those pairs")
    return diff / norm


def _pc_loss_args(text_emb, emb_a, emb_b, temperature) -> None:
    _check.real("temperature", temperature, low=0, low_open=True)
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2 or len(emb_a) == 0:
        raise ValueError(f"emb_a and emb_b must be equal, non-empty (n, d) batches; got "
                         f"{tuple(emb_a.shape)} and {tuple(emb_b.shape)}")
    if text_emb.shape != emb_a.shape:
        raise ValueError(f"text_emb must have the shape of the image batches {tuple(emb_a.shape)}; "
                         f"got {tuple(text_emb.shape)}")


@_check.checked(_pc_loss_args)
def pc_loss(text_emb: torch.Tensor, emb_a: torch.Tensor, emb_b: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """The PC-CLIP loss, τ = 1 in the paper's code:
    ℓ_ij = ⟨t_i, d̂_j⟩/τ,  L = ½[CE(ℓ, arange) + CE(ℓᵀ, arange)]."""
    d_hat = normalised_difference(emb_a, emb_b)      # (u − v)/‖u − v‖; rejects u = v
    t = F.normalize(text_emb, dim=-1)
    logits = t @ d_hat.T / temperature               # text i against difference j
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def freeze_all_but_text_blocks(model) -> int:
    """Leave only the text transformer's blocks trainable; returns their parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.text_blocks.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in model.text_blocks.parameters())


# ---------------------------------------------------------------------------------------------
# Uses of a difference-aware text encoder
# ---------------------------------------------------------------------------------------------
def difference_cosines(model, emb_a: torch.Tensor, emb_b: torch.Tensor, texts) -> np.ndarray:
    """cos(g(c_i), d̂_i) for each pair i (image embeddings given)."""
    d_hat = normalised_difference(emb_a, emb_b)
    if len(texts) != len(d_hat):
        raise ValueError(f"texts must have one text per pair ({len(d_hat)}); got {len(texts)}")
    return (text_embeddings(model, list(texts)) * d_hat).sum(-1).cpu().numpy()


def direction_accuracy(cosines) -> float:
    """Difference classification: the fraction of pairs with cos(g(c), d̂) > 0."""
    cosines = _check.array("cosines", cosines, ndim=1, min_len=1)
    return float((cosines > 0).mean())


def rank_scores(model, image_emb: torch.Tensor, text: str) -> np.ndarray:
    """Scores cos(f(x), g(text)) by which one comparative sentence ranks images."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty comparative sentence; got {text!r}")
    return (image_emb @ text_embeddings(model, text)[0]).cpu().numpy()


def retrieval_at_1(model, emb_a: torch.Tensor, emb_b: torch.Tensor, texts) -> float:
    """Fraction of pairs whose own text is the nearest of all the pairs' texts to d̂."""
    d_hat = normalised_difference(emb_a, emb_b)
    sims = d_hat @ text_embeddings(model, list(texts)).T
    return float((sims.argmax(dim=1).cpu().numpy() == np.arange(len(texts))).mean())


def confusion_matrix(true, pred, n_classes: int) -> np.ndarray:
    """C[t, p] = number of images of true class t predicted as p."""
    n_classes = _check.integer("n_classes", n_classes, low=1)
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(true), np.asarray(pred)), 1)
    return out


def top_confusions(confusion, k: int) -> list[tuple[int, int]]:
    """Up to k pairs (i, j) for the largest non-zero off-diagonal cells C[j, i] (true j seen as i)."""
    conf = np.array(confusion, dtype=float)
    k = _check.integer("k", k, low=1)
    np.fill_diagonal(conf, 0)
    cells = [(int(j), int(i)) for j, i in zip(*np.unravel_index(np.argsort(-conf, axis=None,
                                                                           kind="stable"), conf.shape))
             if conf[j, i] > 0][:k]
    return [(i, j) for j, i in cells]


def _comparative_args(class_emb, pairs, pair_emb, alpha) -> None:
    _check.real("alpha", alpha, low=0, high=1)
    n = len(class_emb)
    if len(pair_emb) != len(pairs):
        raise ValueError(f"pair_emb must have one row per pair ({len(pairs)}); got {len(pair_emb)}")
    for p in pairs:
        i, j = (int(x) for x in p)
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"pairs must hold distinct class indices in 0..{n - 1}; got {(i, j)}")


@_check.checked(_comparative_args)
def comparative_class_embeddings(class_emb: torch.Tensor, pairs, pair_emb: torch.Tensor,
                                 alpha: float) -> torch.Tensor:
    """Comparative prompting: S_j = mean over pairs (i, j) of (t_i − c_ij),
    t'_j = normalise(α t_j + (1 − α) S_j); classes without a pair keep t_j."""
    pairs = [(int(i), int(j)) for i, j in pairs]
    out = class_emb.clone()
    for j in sorted({j for _, j in pairs}):
        rows = [class_emb[i] - pair_emb[k]
                for k, (i, jj) in enumerate(pairs) if jj == j]
        s_j = torch.stack(rows).mean(0)
        out[j] = F.normalize(alpha * class_emb[j] + (1 - alpha) * s_j, dim=-1)
    return out


def colour_prompts() -> list[str]:
    return [f"a {c}" for c in shapes.COLOUR_NAMES]


def colour_pair_text(i: int, j: int) -> str:
    """How colour class i differs from colour class j."""
    return f"the first is {shapes.COLOUR_NAMES[i]} while the second is {shapes.COLOUR_NAMES[j]}"
