"""Metrics that run offline: sliced Wasserstein, in-mode precision, Fréchet distance, and the
ROC curve and its area for a score against binary labels.

Shared by the chapters. Every function takes arrays (NumPy or torch) and checks they are finite.
"""
from __future__ import annotations

import numpy as np

from . import _check


def random_directions(dim: int, n: int = 256, seed: int = 0) -> np.ndarray:
    """`n` fixed random unit vectors in R^dim (rows), drawn from `seed`."""
    dim = _check.integer("dim", dim, low=1)
    n = _check.integer("n", n, low=1)
    v = np.random.default_rng(_check.integer("seed", seed)).standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sliced_wasserstein(x, y, directions: int = 256, seed: int = 0) -> float:
    """Sliced W2 between two equal-size samples: project on `directions` fixed random unit vectors,
    sort each projection, and return √(mean over directions and ranks of the squared differences)."""
    x = _check.array("x", x, ndim=2)
    y = _check.array("y", y, ndim=2)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape (n, d); got {x.shape} and {y.shape}")
    if len(x) < 1:
        raise ValueError("x and y must hold at least one point")
    v = random_directions(x.shape[1], directions, seed)
    px, py = np.sort(x @ v.T, axis=0), np.sort(y @ v.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def in_mode_precision(x, mixture, n_sigma: float = 4.0) -> float:
    """Fraction of points within `n_sigma`·σ of some mode centre of `mixture`."""
    n_sigma = _check.real("n_sigma", n_sigma, low=0, low_open=True)
    return float((mixture.nearest_mode_distance(x) <= n_sigma * mixture.sigma).mean())


def _sqrtm_psd(a):
    import torch
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(x, y) -> float:
    """‖μx − μy‖² + tr(Σx + Σy − 2(Σx^½ Σy Σx^½)^½): the Fréchet distance between Gaussians fitted
    to two sets of features (rows are samples). The form via Σx^½ keeps every square root symmetric.
    Computed with torch in float64 (NumPy's threaded LAPACK was slow on a busy small CPU)."""
    import torch
    x = torch.from_numpy(_check.array("x", x, ndim=2, min_len=2))
    y = torch.from_numpy(_check.array("y", y, ndim=2, min_len=2))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features; got {x.shape[1]} and {y.shape[1]}")
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.atleast_2d(torch.cov(x.T)), torch.atleast_2d(torch.cov(y.T))
    root_x = _sqrtm_psd(cx)
    cross = _sqrtm_psd(root_x @ cy @ root_x)
    return float(((mx - my) ** 2).sum() + cx.trace() + cy.trace() - 2 * cross.trace())


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (Mann–Whitney, ties averaged)."""
    scores = _check.array("scores", scores, ndim=1)
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must match scores in shape; got {labels.shape} and {scores.shape}")
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both classes to define an AUROC")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for lo, hi in zip(starts, ends):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2.0          # average 1-based rank of the tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), flagging score ≥ threshold; from (0, 0) to (1, 1)."""
    scores = _check.array("scores", scores, ndim=1)
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must match scores in shape; got {labels.shape} and {scores.shape}")
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    pos_sorted, neg_sorted = np.sort(scores[labels]), np.sort(scores[~labels])
    tpr = (len(pos_sorted) - np.searchsorted(pos_sorted, thresholds, side="left")) / max(len(pos_sorted), 1)
    fpr = (len(neg_sorted) - np.searchsorted(neg_sorted, thresholds, side="left")) / max(len(neg_sorted), 1)
    return fpr, tpr, thresholds
