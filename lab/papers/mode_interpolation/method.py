"""Mode interpolation (Aithal et al., arXiv 2406.09358): the oracle, the metric and the filter.

A DDPM trained on well-separated narrow Gaussians also samples the empty gaps between
neighbouring modes. The exact (oracle) noise predictor of the mixture does not, so the
learned network is the cause. Such samples show a restless x̂0 during the last reverse steps:
the population variance of x̂0 over the last K steps (K = 10) flags them.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ... import _check
from ...data import Mixture
from .ddpm import DDPMSchedule

HALLUCINATION_SIGMAS = 4.0   # hallucinated ⇔ farther than 4σ from every mode centre
RETAIN = 0.96                # operating point: keep 96 % of in-support samples


# ---------------------------------------------------------------------------------------------
# The oracle: exact posterior mean and noise of a Gaussian mixture
# ---------------------------------------------------------------------------------------------
def _posterior_args(x, t: int, mixture: Mixture, schedule: DDPMSchedule) -> None:
    _check.integer("t", t, low=0, high=schedule.T - 1)
    shape = tuple(torch.as_tensor(x).shape)
    if len(shape) != 2 or shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (n, {mixture.dim}); got {shape}")


@_check.checked(_posterior_args)
def oracle_posterior_mean(x: torch.Tensor, t: int, mixture: Mixture,
                          schedule: DDPMSchedule) -> torch.Tensor:
    """E[x0 | x_t = x] for the mixture, in float64.

    v_t = ᾱσ² + 1 − ᾱ;  r_k ∝ N(x; √ᾱ μ_k, v_t I);
    E[x0|x] = Σ_k r_k [μ_k + (√ᾱ σ²/v_t)(x − √ᾱ μ_k)].
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    ab = float(schedule.alpha_bars[t])
    mu = torch.as_tensor(mixture.modes, dtype=torch.float64, device=x.device)
    v = ab * mixture.sigma ** 2 + 1.0 - ab
    diff = x[:, None, :] - ab ** 0.5 * mu[None]                 # (n, K, d)
    logits = -(diff ** 2).sum(-1) / (2 * v)                     # equal weights
    r = torch.softmax(logits, dim=1)
    gain = ab ** 0.5 * mixture.sigma ** 2 / v
    return (r[..., None] * (mu[None] + gain * diff)).sum(1)


def oracle_eps(mixture: Mixture, schedule: DDPMSchedule):
    """ε*(x, t) = (x − √ᾱ_t E[x0|x_t]) / √(1 − ᾱ_t): the noise predictor a perfect network would learn."""
    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        ab = float(schedule.alpha_bars[t])
        return (x - ab ** 0.5 * oracle_posterior_mean(x, t, mixture, schedule).to(x.dtype)) / (1 - ab) ** 0.5
    return eps


# ---------------------------------------------------------------------------------------------
# The metric, the labels, the filter
# ---------------------------------------------------------------------------------------------
def _path_args(x0_path, K: int = 10) -> None:
    path = _check.array("x0_path", x0_path, ndim=(2, 3), finite=False)
    _check.integer("K", K, low=2, high=path.shape[1])


@_check.checked(_path_args)
def trajectory_variance(x0_path, K: int = 10) -> np.ndarray:
    """Hal(x): population variance of x̂0 over the last K reverse steps (t = K−1 … 0),
    averaged over coordinates. `x0_path`: (n, R) or (n, R, d), in reverse-time order."""
    path = np.asarray(x0_path, dtype=np.float64)
    if path.ndim == 2:
        path = path[..., None]
    return path[:, -K:, :].var(axis=1, ddof=0).mean(axis=1)


def hallucinated(x, mixture: Mixture, n_sigma: float = HALLUCINATION_SIGMAS) -> np.ndarray:
    """True where a sample lies farther than `n_sigma`·σ from every mode centre."""
    n_sigma = _check.real("n_sigma", n_sigma, low=0, low_open=True)
    return mixture.nearest_mode_distance(x) > n_sigma * mixture.sigma


def between_modes(x, mixture: Mixture) -> dict[str, np.ndarray]:
    """Where each sample sits relative to its two nearest modes a, b.

    Returns ``between`` (it lies on the segment a→b: its projection falls strictly inside, and
    it is at most 4σ off the line), ``pair_distance`` (|a − b|) and ``nearest_pair`` (a, b are
    nearest neighbours in the mixture).
    """
    x = _check.array("x", x, ndim=2)
    if len(mixture.modes) < 2:
        raise ValueError("mixture needs at least two modes to speak of 'between'")
    d2 = ((x[:, None, :] - mixture.modes[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1)[:, :2]
    a, b = mixture.modes[order[:, 0]], mixture.modes[order[:, 1]]
    ab = b - a
    s = ((x - a) * ab).sum(1) / (ab ** 2).sum(1)
    off_line = np.sqrt(((x - a - s[:, None] * ab) ** 2).sum(1))
    pair = np.sqrt((ab ** 2).sum(1))
    all_pairs = np.sqrt(((mixture.modes[:, None] - mixture.modes[None]) ** 2).sum(-1))
    nearest = all_pairs[all_pairs > 0].min()
    on_segment = (s > 0) & (s < 1) & (off_line <= HALLUCINATION_SIGMAS * mixture.sigma)
    return {"between": on_segment, "pair_distance": pair,
            "nearest_pair": np.isclose(pair, nearest, rtol=1e-6)}


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    threshold: float      # τ: flag samples whose Hal exceeds it
    removal: float        # fraction of hallucinated samples flagged
    kept: float           # fraction of in-support samples kept


def operating_point(hal, is_hallucinated, retain: float = RETAIN) -> OperatingPoint:
    """τ = the `retain` quantile (linear interpolation) of in-support Hal; removal = P(Hal > τ | hallucinated)."""
    hal = _check.array("hal", hal, ndim=1)
    labels = np.asarray(is_hallucinated, dtype=bool)
    if labels.shape != hal.shape:
        raise ValueError(f"is_hallucinated must match hal in shape; got {labels.shape} and {hal.shape}")
    retain = _check.real("retain", retain, low=0, high=1, low_open=True, high_open=True)
    if labels.all():
        raise ValueError("is_hallucinated marks every sample: no in-support samples to set τ from")
    tau = float(np.quantile(hal[~labels], retain))
    removal = float((hal[labels] > tau).mean()) if labels.any() else float("nan")
    return OperatingPoint(tau, removal, float((hal[~labels] <= tau).mean()))


def keep_lowest(hal, n: int) -> np.ndarray:
    """Indices of the n samples with the smallest Hal (the official filter: keep N of N + extra)."""
    hal = _check.array("hal", hal, ndim=1)
    n = _check.integer("n", n, low=1, high=len(hal))
    return np.sort(np.argsort(hal, kind="stable")[:n])


def keep_random(n_total: int, n: int, seed: int) -> np.ndarray:
    """n distinct indices of range(n_total) at random (the baseline filter)."""
    n_total = _check.integer("n_total", n_total, low=1)
    n = _check.integer("n", n, low=1, high=n_total)
    return np.sort(np.random.default_rng(_check.integer("seed", seed)).choice(n_total, n, replace=False))


def histogram_kl(true, generated, bins: int, value_range) -> float:
    """KL(true ‖ generated) between normalised histograms (1-D or 2-D), ε = 1e−9 inside the logs."""
    true = _check.array("true", true, ndim=2)
    generated = _check.array("generated", generated, ndim=2)
    bins = _check.integer("bins", bins, low=2)
    rng = [tuple(value_range)] * true.shape[1]
    p = np.histogramdd(true, bins=bins, range=rng)[0].ravel()
    q = np.histogramdd(generated, bins=bins, range=rng)[0].ravel()
    p, q = p / p.sum(), q / max(q.sum(), 1)
    eps = 1e-9
    return float((p * (np.log(p + eps) - np.log(q + eps))).sum())
