"""Mimetic initialisation of state space models (Trockman et al., arXiv 2410.11135).

A freshly initialised Mamba layer forgets within a few tokens, so a loss on a distant token sends
almost no gradient to what would have to change. Initialise the layer so that its mixing matrix
already resembles linear attention (a transition that barely decays, a unit step, and C tied to B
so that C·Bᵀ is a Gram matrix) and it learns to copy and recall far more easily.

The recipe is the book's reconstruction (no official code exists); each ingredient is a switch.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ... import _check
from ...nn.ssm import Mamba1, Mamba2, inverse_softplus

PARTS = ("full", "cb", "decay")
INITS = ("default", "mimetic", "A only", "BC only", "no unit step", "identity conv")


# ---------------------------------------------------------------------------------------------
# Mimetic initialisation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Recipe:
    """Which ingredients to apply. ``A_log``: Â for "no decay" (A = −e^Â); ``tie_noise``: W_C = W_B + ε·noise."""
    no_decay: bool = True
    unit_step: bool = True
    tie: bool = True
    identity_conv: bool = False
    A_log: float = -6.0
    tie_noise: float = 0.0

    def __post_init__(self):
        for name in ("no_decay", "unit_step", "tie", "identity_conv"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")
        _check.real("A_log", self.A_log)
        _check.real("tie_noise", self.tie_noise, low=0)


def recipe(init: str) -> Recipe | None:
    """The ingredients of a named init: None for "default" (the library's)."""
    init = _check.choice("init", init, INITS)
    return {"default": None, "mimetic": Recipe(),
            "A only": Recipe(tie=False),
            "BC only": Recipe(no_decay=False, unit_step=False),
            "no unit step": Recipe(unit_step=False),
            "identity conv": Recipe(identity_conv=True)}[init]


def _mixers(model) -> list:
    return [m for m in ([model] if isinstance(model, (Mamba1, Mamba2)) else model.modules())
            if isinstance(m, (Mamba1, Mamba2))]


def _mimetic_args(model, recipe: Recipe = Recipe(), generator: torch.Generator | None = None) -> None:
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe; got {type(recipe).__name__}")
    if not _mixers(model):
        raise TypeError(f"model must be or contain a Mamba1/Mamba2 mixer; got {type(model).__name__}")


@_check.checked(_mimetic_args)
@torch.no_grad()
def mimetic_(model, recipe: Recipe = Recipe(),
             generator: torch.Generator | None = None):
    """Apply the mimetic recipe in place to every Mamba-1/Mamba-2 mixer of `model`
    (or to a mixer).

    Apply it *after* the model's own init pass (``SSMLM`` runs it in its constructor):
    a later re-initialisation would undo it. Returns `model`.
    """
    for m in _mixers(model):
        if recipe.no_decay:
            m.A_log.fill_(recipe.A_log)
        bias = m.dt_bias if isinstance(m, Mamba2) else m.dt_proj.bias
        if recipe.unit_step:
            bias.copy_(inverse_softplus(torch.ones_like(bias)))
        if recipe.tie:
            if isinstance(m, Mamba2):
                _tie(m.in_proj.weight, m.in_proj_slices(), recipe.tie_noise, generator)
                c = m.conv_slices()
                m.conv1d.weight[c["C"]] = m.conv1d.weight[c["B"]]
                m.conv1d.bias[c["C"]] = m.conv1d.bias[c["B"]]
            else:
                _tie(m.x_proj.weight, m.x_proj_slices(), recipe.tie_noise, generator)
        if recipe.identity_conv:
            m.conv1d.weight.zero_()
            m.conv1d.weight[..., -1] = 1.0
            m.conv1d.bias.zero_()
    return model


def _tie(weight, slices, noise: float, generator):
    WB = weight[slices["B"]]
    WC = WB.clone()
    if noise:
        WC += noise * WB.std() * torch.randn(WB.shape, generator=generator)
    weight[slices["C"]] = WC


def per_step_decay(mixer) -> torch.Tensor:
    """exp(softplus(b)·A) per head (Mamba-2) or per channel and state (Mamba-1): the decay at δ = 0."""
    if isinstance(mixer, Mamba2):
        return torch.exp(torch.nn.functional.softplus(mixer.dt_bias) * -torch.exp(mixer.A_log))
    if isinstance(mixer, Mamba1):
        return torch.exp(F.softplus(mixer.dt_proj.bias)[:, None] * -torch.exp(mixer.A_log))
    raise TypeError(f"mixer must be a Mamba1 or Mamba2; got {type(mixer).__name__}")


def memory_length(A_log: float, dt_bias: float, threshold: float = 0.01) -> float:
    """Tokens until the decay mask exp(t·Δ·A) falls below `threshold` (Δ = softplus(b), δ = 0)."""
    A_log, dt_bias = _check.real("A_log", A_log), _check.real("dt_bias", dt_bias)
    threshold = _check.real("threshold", threshold, low=0, high=1, low_open=True, high_open=True)
    rate = math.exp(A_log) * F.softplus(torch.tensor(dt_bias, dtype=torch.float64)).item()
    return math.log(1 / threshold) / rate


def mass_share(maps, length: int) -> float:
    """s = Σ|M_ij| over the answer rows i ≥ L+1 and first-copy columns j < L (BOS included), over
    Σ|M_ij| of those rows over all columns; `maps` (…, T, T) are summed over the leading axes."""
    length = _check.integer("length", length, low=1)
    M = torch.as_tensor(maps).abs()
    rows = M[..., length + 1:, :]
    return (rows[..., :length].sum() / rows.sum()).item()
