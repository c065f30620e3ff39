"""Discrete DDPM (Ho et al. 2020) as the mode-interpolation paper's code uses it.

ε-prediction, a linear β schedule, the ancestral sampler with the "fixed-large" variance
(noise √β_t), and no clipping of the predicted clean sample. The sampler records x̂0 for the
last reverse steps, which is what the hallucination metric needs.

Index convention: t = 0 … T−1, ᾱ_t = ∏_{s≤t}(1 − β_s), ᾱ_{−1} := 1.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ... import _check

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


class DDPMSchedule:
    """β, ᾱ and the posterior q(x_{t−1} | x_t, x0) tables, in float64.

    ``c1[t]``, ``c2[t]``: posterior mean = c1·x0 + c2·x_t. ``posterior_variance[t]`` = β̃_t.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 0.001, beta_end: float = 0.2):
        self.T = _check.integer("timesteps", timesteps, low=2)
        _check.real("beta_start", beta_start, low=0, high=1, low_open=True, high_open=True)
        _check.real("beta_end", beta_end, low=beta_start, high=1, high_open=True)
        self.betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        one_minus = 1.0 - self.alpha_bars
        self.c1 = self.betas * self.alpha_bars_prev.sqrt() / one_minus
        self.c2 = self.alphas.sqrt() * (1.0 - self.alpha_bars_prev) / one_minus
        self.posterior_variance = self.betas * (1.0 - self.alpha_bars_prev) / one_minus
        # "fixed-large": σ_t² = β_t, with the posterior variance at index 0 (no noise is added there)
        self.sampling_variance = torch.cat([self.posterior_variance[1:2], self.betas[1:]])

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, with `t` an integer tensor of shape (batch,)."""
        ab = self.alpha_bars.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def predict_x0(self, x_t: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε̂ (never clipped)."""
        ab = float(self.alpha_bars[t])
        return x_t / ab ** 0.5 - (1.0 / ab - 1.0) ** 0.5 * eps

    def step(self, x_t: torch.Tensor, t: int, eps: torch.Tensor,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t → x_{t−1} given the predicted noise `eps`; returns (x_{t−1}, x̂0).

        The mean is c1·x̂0 + c2·x_t; for t > 0 the fixed-large noise √β_t·`noise` is added
        (`noise` standard normal, x_t's shape). At t = 0 the mean is returned and `noise` is unused.
        """
        x0 = self.predict_x0(x_t, t, eps)
        mean = float(self.c1[t]) * x0 + float(self.c2[t]) * x_t
        if t == 0:
            return mean, x0
        if noise is None:
            raise ValueError(f"step at t = {t} > 0 needs standard-normal noise")
        return mean + float(self.sampling_variance[t]) ** 0.5 * noise, x0

    def loss(self, eps_model: Callable, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The ε-prediction loss: mean of (ε̂(x_t, t) − ε)² over batch and coordinates, t ~ U{0..T−1}."""
        t = torch.randint(0, self.T, (x0.shape[0],), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (eps_model(self.q_sample(x0, t, eps), t) - eps).pow(2).mean()


@dataclasses.dataclass
class Samples:
    """Final samples and the predicted clean samples of the last reverse steps.

    ``x`` has shape (n, d). ``x0_path`` has shape (n, R, d) in reverse-time order: column j holds
    x̂0 at t = R−1−j, so the last column is t = 0 (which equals the final sample).
    ``x_path`` holds x_t at the same steps (the input the network saw).
    """
    x: torch.Tensor
    x0_path: torch.Tensor
    x_path: torch.Tensor


@torch.no_grad()
def sample(eps_fn: EpsFn, schedule: DDPMSchedule, n: int, dim: int, *, generator: torch.Generator,
           record_last: int = 100, batch_size: int | None = None, dtype=torch.float32,
           device: torch.device | str = "cpu", progress: str | None = None) -> Samples:
    """Ancestral sampling from x_{T−1} ~ N(0, I); keeps x̂0 and x_t for the last `record_last` steps.

    ``eps_fn(x, t)`` takes a batch and one integer t shared by the batch.
    """
    from tqdm.auto import tqdm

    n = _check.integer("n", n, low=1)
    dim = _check.integer("dim", dim, low=1)
    record_last = _check.integer("record_last", record_last, low=1, high=schedule.T)
    batch_size = n if batch_size is None else _check.integer("batch_size", batch_size, low=1)
    xs, paths, xpaths = [], [], []
    bar = tqdm(total=schedule.T * ((n + batch_size - 1) // batch_size), desc=progress,
               disable=progress is None, mininterval=1.0)
    for lo in range(0, n, batch_size):
        m = min(batch_size, n - lo)
        x = torch.randn((m, dim), generator=generator, device=device, dtype=dtype)
        path = torch.empty((m, record_last, dim), dtype=dtype, device=device)
        xpath = torch.empty_like(path)
        for t in range(schedule.T - 1, -1, -1):
            eps = eps_fn(x, t)
            noise = torch.randn((m, dim), generator=generator, device=device, dtype=dtype) if t > 0 else None
            x_prev, x0 = schedule.step(x, t, eps, noise)
            if t < record_last:
                path[:, record_last - 1 - t] = x0
                xpath[:, record_last - 1 - t] = x
            x = x_prev
            bar.update(1)
        xs.append(x.cpu()), paths.append(path.cpu()), xpaths.append(xpath.cpu())
    bar.close()
    return Samples(torch.cat(xs), torch.cat(paths), torch.cat(xpaths))
