"""Easy Consistency Tuning (Geng et al., arXiv 2406.14548): preconditioning, mapping, losses, samplers.

A consistency model f(x_t, t) maps every point of a probability-flow trajectory to its clean end
point. ECT starts from a diffusion model (EDM preconditioning) and asks the network at noise
level t to agree with its own stop-gradient output at a smaller level r on the *same* noise
direction. The gap Δt = t − r shrinks in stages: r = max(0, t·(1 − n(t)/q^(s+1))) with
n(t) = 1 + k·sigmoid(−b·t). Where r = 0 the target is the clean data, so stage 0 is still
partly diffusion training. Conventions follow the official code (q^(s+1), not the paper's q^s).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ... import _check
from ...train import EMA

SIGMA_MAX = 80.0          # the VE prior: x_T = 80·z
SIGMA_MIN = 0.002         # the eval form's boundary f(x, σ_min) = x (images: 0.002 EDM, 0.003 ECT)
MAPPINGS = ("sigmoid", "const")
WEIGHTINGS = ("inv_dt", "snrpk", "uniform")
FORMS = ("train", "eval")
GRAD_CLAMP = 1e5          # gradients: NaN → 0, ±inf → ±1e5 (as the official loop)


# ---------------------------------------------------------------------------------------------
# EDM preconditioning: D(x, t) = c_skip·x + c_out·F(c_in·x, c_noise)
# ---------------------------------------------------------------------------------------------
def _precond_args(t, sigma_data: float, *, form: str = "train", sigma_min: float = SIGMA_MIN) -> None:
    _check.choice("form", form, FORMS)
    _check.real("sigma_data", sigma_data, low=0, low_open=True)
    _check.real("sigma_min", sigma_min, low=0)


@_check.checked(_precond_args)
def precond(t, sigma_data: float, *, form: str = "train", sigma_min: float = SIGMA_MIN):
    """(c_skip, c_out, c_in, c_noise) at noise level(s) `t` (float or tensor).

    ``train``: EDM's c_skip = σd²/(t²+σd²), c_out = tσd/√(t²+σd²) (an EDM checkpoint
    loads unchanged). ``eval``: t − σ_min replaces t in c_skip and in c_out's numerator,
    so c_skip = 1 and c_out = 0 at t = σ_min: f(x, σ_min) = x exactly.
    Both: c_in = 1/√(t²+σd²), c_noise = ¼ ln t.
    """
    dtype = t.dtype if torch.is_tensor(t) else torch.float64
    t_tensor = torch.as_tensor(t, dtype=dtype)
    s = t_tensor - sigma_min if form == "eval" else t_tensor
    root = (t_tensor ** 2 + sigma_data ** 2).sqrt()
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s * sigma_data / root
    c_in = 1 / root
    c_noise = t_tensor.log() / 4
    if not torch.is_tensor(t):
        return tuple(float(c) for c in (c_skip, c_out, c_in, c_noise))
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """A raw network F(x_in, c_noise) wrapped with EDM preconditioning.

    ``forward(x, t, form=None)``: `form` defaults to ``train`` in training mode and ``eval`` in
    eval mode (the consistency function used for sampling). A diffusion sampler asks for
    ``form="train"`` explicitly, the EDM denoiser. The buffer ``iteration`` counts the optimiser
    steps of consistency tuning; it is saved in checkpoints, so a resumed run stays in its stage.
    """

    def __init__(self, net: nn.Module, sigma_data: float, sigma_min: float = SIGMA_MIN):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module; got {type(net).__name__}")
        self.net = net
        self.sigma_data = _check.real("sigma_data", sigma_data, low=0, low_open=True)
        self.sigma_min = _check.real("sigma_min", sigma_min, low=0, low_open=True)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, t, form: str | None = None) -> torch.Tensor:
        form = ("train" if self.training else "eval") if form is None else _check.choice("form", form, FORMS)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t.reshape(-1)
        c_skip, c_out, c_in, c_noise = precond(t, self.sigma_data, form=form, sigma_min=self.sigma_min)
        shape = (-1,) + (1,) * (x.dim() - 1)
        out = self.net(x * c_in.view(shape), c_noise)
        return c_skip.view(shape) * x + c_out.view(shape) * out


def estimate_sigma_data(data) -> float:
    """σ_d: the data's standard deviation per coordinate, pooled (√ of the mean variance)."""
    data = _check.array("data", data, ndim=2, min_len=2)
    return float(np.sqrt(data.var(axis=0).mean()))


# ---------------------------------------------------------------------------------------------
# The mapping r(t) and its stages
# ---------------------------------------------------------------------------------------------
def _mapping_args(q, k, b, mapping):
    q = _check.real("q", q)
    if q <= 1:
        raise ValueError(f"q must be > 1 (the gap shrinks by q per stage); got {q:g}")
    return q, _check.real("k", k, low=0), _check.real("b", b, low=0), _check.choice("mapping", mapping, MAPPINGS)


def mapping_n(t, k: float = 8.0, b: float = 1.0):
    """n(t) = 1 + k·sigmoid(−b·t), between 1 and 1 + k/2 for t ≥ 0."""
    k, b = _check.real("k", k, low=0), _check.real("b", b, low=0)
    if torch.is_tensor(t):
        return 1 + k * torch.sigmoid(-b * t)
    return 1 + k / (1 + math.exp(b * _check.real("t", t)))


def r_of_t(t, stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0, mapping: str = "sigmoid"):
    """The smaller level r at stage `stage`: max(0, t·(1 − n(t)/q^(s+1))) (``sigmoid``) or
    t·(1 − 1/q^(s+1)) (``const``). Works on floats and tensors; always 0 ≤ r < t for t > 0."""
    q, k, b, mapping = _mapping_args(q, k, b, mapping)
    stage = _check.integer("stage", stage, low=0)
    big_q = q ** (stage + 1)
    n = mapping_n(t, k, b) if mapping == "sigmoid" else 1.0
    r = t * (1 - n / big_q)
    return r.clamp(min=0) if torch.is_tensor(r) else max(0.0, r)


def clamp_threshold(stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0,
                    mapping: str = "sigmoid") -> float:
    """t*(s): r is clamped to 0 exactly for t ≤ t*; 0.0 when nothing is clamped.
    n(t) ≥ Q ⇔ t ≤ ln(k/(Q − 1) − 1)/b, which exists only while Q < 1 + k/2."""
    q, k, b, mapping = _mapping_args(q, k, b, mapping)
    big_q = q ** (_check.integer("stage", stage, low=0) + 1)
    if mapping == "const" or big_q >= 1 + k / 2 or b == 0:
        return 0.0
    return math.log(k / (big_q - 1) - 1) / b


def stage_at(iteration: int, stage_steps: int) -> int:
    """The stage index after `iteration` optimiser steps: floor(iteration / stage_steps)."""
    return _check.integer("iteration", iteration, low=0) // _check.integer("stage_steps", stage_steps, low=1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def sample_noise_levels(n: int, generator: torch.Generator, p_mean: float, p_std: float, *,
                        device=None, dtype=torch.float32) -> torch.Tensor:
    """t with ln t ~ N(p_mean, p_std²), shape (n,)."""
    n = _check.integer("n", n, low=1)
    p_mean, p_std = _check.real("p_mean", p_mean), _check.real("p_std", p_std, low=0)
    device = generator.device if device is None else device
    return (torch.randn(n, generator=generator, device=device, dtype=dtype) * p_std + p_mean).exp()


def _check_batch(y: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(y):
        raise TypeError(f"y must be a torch tensor; got {type(y).__name__}")
    if y.dim() < 2:
        raise ValueError(f"y must have shape (batch, ...); got {tuple(y.shape)}")
    if _check.reads_values(y) and not bool(torch.isfinite(y).all()):
        raise ValueError("y (the clean data) must be finite; it contains NaN or inf")
    return y


def edm_loss(denoiser: nn.Module, y: torch.Tensor, generator: torch.Generator, *,
             p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM's denoising loss: mean over the batch of λ(σ)·‖D(y + σε, σ) − y‖², λ = (σ²+σd²)/(σσd)²."""
    y = _check_batch(y)
    sigma = sample_noise_levels(len(y), generator, p_mean, p_std, device=y.device, dtype=y.dtype)
    eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    sd = denoiser.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    shape = (-1,) + (1,) * (y.dim() - 1)
    err = (denoiser(y + sigma.view(shape) * eps, sigma, form="train") - y).flatten(1).pow(2).sum(1)
    return (weight * err).mean()


def distance(diff: torch.Tensor, c: float = 0.0) -> torch.Tensor:
    """Per-sample distance of a batch of differences: ‖·‖₂ (un-squared) for c = 0, else the
    pseudo-Huber √(‖·‖² + c²) − c."""
    c = _check.real("c", c, low=0)
    sq = diff.flatten(1).pow(2).sum(1)
    return sq.sqrt() if c == 0 else (sq + c * c).sqrt() - c


def loss_weight(t: torch.Tensor, r: torch.Tensor, weighting: str, sigma_data: float) -> torch.Tensor:
    """Per-sample weight: ``inv_dt`` 1/(t − r); ``snrpk`` 1/t² + 1/σd²; ``uniform`` 1."""
    _check.choice("weighting", weighting, WEIGHTINGS)
    if weighting == "inv_dt":
        return 1 / (t - r)
    if weighting == "snrpk":
        return 1 / t ** 2 + 1 / _check.real("sigma_data", sigma_data, low=0, low_open=True) ** 2
    return torch.ones_like(t)


def _rng_state(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _ect_loss_args(model: nn.Module, y: torch.Tensor, t: torch.Tensor, r: torch.Tensor, eps: torch.Tensor,
                   **options) -> None:
    y = _check_batch(y)
    if t.shape != (len(y),) or r.shape != (len(y),):
        raise ValueError(f"t and r must have shape ({len(y)},); got {tuple(t.shape)} and {tuple(r.shape)}")
    if eps.shape != y.shape:
        raise ValueError(f"eps must have y's shape {tuple(y.shape)}; got {tuple(eps.shape)}")
    if _check.reads_values(r) and (bool((r < 0).any()) or bool((r > t).any())):
        raise ValueError("r must satisfy 0 ≤ r ≤ t")


@_check.checked(_ect_loss_args)
def ect_loss(model: nn.Module, y: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
             eps: torch.Tensor, *, c: float = 0.0, weighting: str = "inv_dt",
             share_dropout: bool = True) -> torch.Tensor:
    """Per-sample ECT loss w(t, r)·d(D(y + tε, t), target), as a (batch,) tensor.

    The student runs with gradients; the teacher is the *same* online network under
    no_grad at level r on the same ε (x_r = y + rε), with the same dropout mask (the
    device RNG is restored before its pass unless ``share_dropout=False``). Where r = 0
    the target is y; the teacher is evaluated at a valid level there (t) and its output
    discarded with ``where``, so no NaN of c_noise = ln 0 can leak. Teacher outputs are
    nan_to_num'ed before the selection.
    """
    shape = (-1,) + (1,) * (y.dim() - 1)
    state = _rng_state(y.device)
    student = model(y + t.view(shape) * eps, t, form="train")
    keep = r > 0
    if bool(keep.any()):
        r_safe = torch.where(keep, r, t)
        if share_dropout:
            _set_rng_state(y.device, state)
        with torch.no_grad():
            teacher = model(y + r_safe.view(shape) * eps, r_safe, form="train")
        teacher = torch.nan_to_num(teacher)
        target = torch.where(keep.view(shape), teacher, y)
    else:
        target = y
    d = distance(student - target, c)
    return loss_weight(t, r, weighting, _unwrap(model).sigma_data) * d


def sanitize_gradients(model: nn.Module) -> list:
    """Pass every parameter's accumulated gradient through nan_to_num (NaN → 0, ±inf → ±1e5) before
    the optimiser sees it. The un-squared L2 has an infinite slope at zero distance. Returns handles."""
    def hook(p):
        p.grad.nan_to_num_(nan=0.0, posinf=GRAD_CLAMP, neginf=-GRAD_CLAMP)
    return [p.register_post_accumulate_grad_hook(hook) for p in model.parameters() if p.requires_grad]


@dataclasses.dataclass(frozen=True)
class ECTConfig:
    """The tuning objective: noise levels, mapping, stages, distance and weighting."""
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    mapping: str = "sigmoid"
    stage_steps: int = 500           # optimiser steps per stage
    c: float = 0.0                   # pseudo-Huber constant (0: un-squared L2)
    weighting: str = "inv_dt"
    p_mean: float = -1.1
    p_std: float = 2.0

    def __post_init__(self):
        _mapping_args(self.q, self.k, self.b, self.mapping)
        _check.integer("stage_steps", self.stage_steps, low=1)
        _check.real("c", self.c, low=0)
        _check.choice("weighting", self.weighting, WEIGHTINGS)
        _check.real("p_mean", self.p_mean)
        _check.real("p_std", self.p_std, low=0)

    def r(self, t, stage: int):
        return r_of_t(t, stage, q=self.q, k=self.k, b=self.b, mapping=self.mapping)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class EMAProbe:
    """Snapshots of an EMA of the weights every `every` steps before the last (the last one is
    the run's own EMA model), to trace quality against tuning steps. Make it from the model
    before training with the run's β and ``bias_correction`` (``TrainConfig.ema`` and
    ``ema_bias_correction``), so that it averages as the trainer's EMA does, and pass
    ``probe.on_step`` to :func:`lab.train.train`."""

    def __init__(self, model: nn.Module, every: int, beta: float, steps: int, *, bias_correction: bool = False):
        self.every = _check.integer("every", every, low=1)
        self.steps = _check.integer("steps", steps, low=1)
        self.ema = EMA(model, beta, bias_correction)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_step(self, step: int, model: nn.Module) -> None:
        self.ema.update(model)
        if step % self.every == 0 and step < self.steps:
            self.snapshots[step] = {k: v.detach().clone().cpu() for k, v in self.ema.shadow.items()}


def ect_loss_fn(data_fn: Callable[[int, torch.Generator], torch.Tensor], config: ECTConfig,
                batch: int) -> Callable:
    """The closure the training loop calls: draws y, t and ε, takes r from the stage of the
    model's ``iteration`` counter, returns the mean ECT loss. It installs gradient sanitising on
    its first call."""
    if not isinstance(config, ECTConfig):
        raise TypeError(f"config must be an ECTConfig; got {type(config).__name__}")
    batch = _check.integer("batch", batch, low=1)
    installed: set[int] = set()

    def loss_fn(model, generator):
        net = _unwrap(model)
        if id(net) not in installed:
            sanitize_gradients(net)
            installed.add(id(net))
        step = int(net.iteration)
        y = data_fn(batch, generator)
        t = sample_noise_levels(batch, generator, config.p_mean, config.p_std, device=y.device, dtype=y.dtype)
        r = config.r(t, stage_at(step, config.stage_steps))
        eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        net.iteration += 1
        return ect_loss(model, y, t, r, eps, c=config.c, weighting=config.weighting).mean()

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------
def check_noise_level(name: str, value: float, sigma_min: float, sigma_max: float) -> float:
    """`value` as a float, if it lies strictly between `sigma_min` and `sigma_max`; else a
    ValueError naming `name`."""
    value = _check.real(name, value)
    if not sigma_min < value < sigma_max:
        raise ValueError(f"{name} must lie in (σ_min, σ_max) = ({sigma_min:g}, {sigma_max:g}); got {value:g}")
    return value


def intermediate_levels(steps: int, t_mid: float) -> tuple[float, ...]:
    """The re-noising levels of a `steps`-step sample: none for 1 step, (t_mid,) for 2, and for
    more steps a geometric sequence from t_mid down to t_mid/4 (a fixed, simple choice)."""
    steps = _check.integer("steps", steps, low=1)
    if steps == 1:
        return ()
    return tuple(float(v) for v in np.geomspace(t_mid, t_mid / 4, steps - 1))


@torch.no_grad()
def consistency_sample(model: EDMPrecond, n: int, generator: torch.Generator, *,
                       t_mids: Sequence[float] = (), sigma_max: float = SIGMA_MAX,
                       dim: int | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """x = σ_max·z, x ← f(x, σ_max); then for each t_mid: x ← f(x + t_mid·ε, t_mid).
    `f` is `model` in its eval form (f(x, σ_min) = x). NFE = 1 + len(t_mids)."""
    n = _check.integer("n", n, low=1)
    sigma_max = _check.real("sigma_max", sigma_max, low=0, low_open=True)
    levels = [check_noise_level("t_mid", v, model.sigma_min, sigma_max) for v in t_mids]
    shape = shape or (_check.integer("dim", dim if dim is not None else model.net.dim, low=1),)
    device = next(model.parameters()).device
    x = sigma_max * torch.randn((n, *shape), generator=generator, device=device)
    x = model(x, sigma_max, form="eval")
    for level in levels:
        x = x + level * torch.randn(x.shape, generator=generator, device=device)
        x = model(x, level, form="eval")
    return x


def karras_levels(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = 7.0) -> torch.Tensor:
    """EDM's levels t_0 = σ_max > … > t_{N−1} = σ_min, then t_N = 0 (float64, length N + 1)."""
    steps = _check.integer("steps", steps, low=1)
    rho = _check.real("rho", rho, low=0, low_open=True)
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def heun_sample(model: EDMPrecond, n: int, generator: torch.Generator, *, steps: int = 18,
                rho: float = 7.0, heun: bool = True, sigma_max: float = SIGMA_MAX,
                dim: int | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """EDM's deterministic sampler with the denoiser in its train (EDM) form: Euler steps of
    dx/dt = (x − D(x, t))/t with Heun's correction except into t = 0 (NFE 2N − 1; Euler: N)."""
    n = _check.integer("n", n, low=1)
    levels = karras_levels(steps, model.sigma_min, sigma_max, rho).tolist()
    shape = shape or (_check.integer("dim", dim if dim is not None else model.net.dim, low=1),)
    device = next(model.parameters()).device
    x = levels[0] * torch.randn((n, *shape), generator=generator, device=device)
    for i in range(steps):
        t_cur, t_next = levels[i], levels[i + 1]
        d = (x - model(x, t_cur, form="train")) / t_cur
        x_next = x + (t_next - t_cur) * d
        if heun and t_next > 0:
            d_next = (x_next - model(x_next, t_next, form="train")) / t_next
            x_next = x + (t_next - t_cur) * (d + d_next) / 2
        x = x_next
    return x


def nfe(steps: int, heun: bool = True) -> int:
    """Network evaluations of :func:`heun_sample`."""
    return 2 * steps - 1 if heun else steps
