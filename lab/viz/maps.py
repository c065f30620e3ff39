"""Attention-like maps drawn the book's one way: a causal T×T matrix (an attention matrix, an SSM
layer's materialised mixing matrix) as a heatmap with the upper triangle blank, on a log scale
of |M|, signed, or linear; and one colour range for maps shown side by side. Used by the
chapters that read SSM layers as attention (mimetic-init, MOHAWK)."""
from __future__ import annotations

import numpy as np

from .. import _check

SCALES = ("log", "signed", "linear")
LOG_FLOOR = -4.0          # log₁₀|M| below this is drawn as the floor colour


def colour_top(scale: str, maps) -> float:
    """One colour range for maps shown side by side: the largest |M| (signed, linear) or log₁₀
    of it (log, at least 0)."""
    scale = _check.choice("scale", scale, SCALES)
    top = max(float(np.abs(np.asarray(M)).max()) for M in maps)
    return max(0.0, float(np.log10(top + 1e-12))) if scale == "log" else max(top, 1e-12)


def causal_heatmap(ax, M, title: str, scale: str = "log", top: float | None = None, ticks=None):
    """Draw the lower triangle of the square matrix `M` on `ax`; returns the image (for a colour
    bar). `top`: the colour range (default :func:`colour_top` of `M` alone); `ticks`: row and
    column ticks (default first and last)."""
    scale = _check.choice("scale", scale, SCALES)
    M = np.asarray(M, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square matrix; got shape {M.shape}")
    top = colour_top(scale, [M]) if top is None else top
    lower = np.tril(np.ones_like(M)) > 0
    if scale == "signed":
        im = ax.imshow(np.where(lower, M, np.nan), cmap="RdBu_r", vmin=-top, vmax=top)
    elif scale == "linear":
        im = ax.imshow(np.where(lower, M, np.nan), cmap="magma", vmin=0, vmax=top)
    else:
        im = ax.imshow(np.where(lower, np.log10(np.abs(M) + 1e-12), np.nan), cmap="magma",
                       vmin=LOG_FLOOR, vmax=top)
    ax.set_title(title, fontsize=9)
    ticks = [0, M.shape[0] - 1] if ticks is None else list(ticks)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    return im
