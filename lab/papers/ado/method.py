"""Adaptive Data Optimization (Jiang et al., arXiv 2410.11820): mixture weights that learn online.

For each domain k, ADO keeps fitting a small power law of the domain's training loss against the
amount of data seen, L_k(n) = ε_k + β_k n^(−α_k), and reads off the slope
−dL_k/dn = α_k (L_k(n) − ε_k) / n: how fast the loss is still falling. It discounts the slope by
the domain's recent share of the data ("credit" h_k, λ_k = h_k^s), weights it by the prior μ_k,
and samples more from domains that still promise a large decrease:

    ρ_k ∝ μ_k h_k^s g_k   (clipped to ≥ δ_min),   π(t) = γ₂ ρ(t) + (1 − γ₂) ρ̄(t−1),

with ρ̄ the running mean of ρ over all steps (started at μ). No proxy model, no extra forward pass.

This module holds the fitter (log-space Huber, multi-start quasi-Newton with analytic gradients,
every bound an argument), the policy pieces as pure functions, the policies (fixed mixtures and
ADO behind one interface) and the cross-process reduction of per-domain statistics.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Sequence

import numpy as np
import torch

from ... import _check
from ...data.tokens import check_weights


# ---------------------------------------------------------------------------------------------
# The per-domain law and its fit
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FitBounds:
    """The soft box of the fit and the slope's exponent floor.

    The defaults are the official ones, tuned to Pile losses (ε ≥ e^0.5 ≈ 1.65 nats, α ≤ 0.8);
    with low-entropy synthetic data they pin the fit to the box, so the book uses
    ``log_eps_min=-5`` (:data:`SYNTHETIC_BOUNDS`).
    """
    alpha_max: float = 0.8
    log_beta_max: float = 6.5
    log_eps_min: float = 0.5
    alpha_min: float = 0.05          # floor on α when computing slopes (not in the fit)

    def __post_init__(self):
        for name in ("alpha_max", "log_beta_max", "log_eps_min"):
            _check.real(name, getattr(self, name))
        _check.real("alpha_min", self.alpha_min, low=0)


PILE_BOUNDS = FitBounds()
SYNTHETIC_BOUNDS = FitBounds(log_eps_min=-5.0)


def start_grid(log_beta=(0.0, 2.0, 4.0), log_eps=(-1.0, 0.0, 1.0), alpha=(0.1, 0.3, 0.6)) -> np.ndarray:
    """All combinations of starting points (a = log β, e = log ε, α), shape (S, 3).
    The official grid is ``start_grid(range(-2, 6), np.arange(-2, 2, .5), np.arange(0, .8, .1))``."""
    axes = [_check.array(n, v, ndim=1, min_len=1) for n, v in
            (("log_beta", log_beta), ("log_eps", log_eps), ("alpha", alpha))]
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


SMALL_GRID = start_grid()
OFFICIAL_GRID = start_grid(np.arange(-2, 6, 1.0), np.arange(-2, 2, 0.5), np.arange(0, 0.8, 0.1))


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(n) = ε + β n^(−α)."""
    beta: float
    eps: float
    alpha: float

    @classmethod
    def from_params(cls, p) -> "PowerLaw":
        a, e, alpha = (float(v) for v in p)
        return cls(math.exp(a), math.exp(e), alpha)

    @property
    def params(self) -> np.ndarray:
        return np.array([math.log(self.beta), math.log(self.eps), self.alpha])

    def __call__(self, n):
        return self.eps + self.beta * np.asarray(n, dtype=np.float64) ** (-self.alpha)

    def slope(self, n, alpha_min: float = 0.0):
        """The learning potential −dL/dn = α (L(n) − ε)/n, α floored at `alpha_min`."""
        n = np.asarray(n, dtype=np.float64)
        return max(self.alpha, alpha_min) * (self(n) - self.eps) / n


def huber(r, delta: float):
    """½r² for |r| ≤ δ, δ(|r| − δ/2) beyond: quadratic at the optimum, L1 against outliers."""
    r = np.abs(r)
    return np.where(r > delta, delta * (r - 0.5 * delta), 0.5 * r * r)


def fit_objective(params, log_n, log_loss, bounds: FitBounds = PILE_BOUNDS, delta: float = 1e-3):
    """Σ_t Huber_δ(logsumexp(a − α log n_t, e) − log L_t) + soft linear penalties outside the box.
    `params` (..., 3) against `log_n`, `log_loss` (..., T) broadcast; returns (...,)."""
    value, _ = _value_grad(np.asarray(params, dtype=np.float64), np.asarray(log_n), np.asarray(log_loss),
                           bounds, delta, grad=False)
    return value


def _value_grad(P, log_n, log_y, bounds: FitBounds, delta: float, grad: bool = True):
    a, e, al = P[..., 0:1], P[..., 1:2], P[..., 2:3]
    u = a - al * log_n
    pred = np.logaddexp(u, e)
    r = pred - log_y
    value = huber(r, delta).sum(-1)
    value = value + (np.maximum(al - bounds.alpha_max, 0) + np.maximum(-al, 0)
                     + np.maximum(a - bounds.log_beta_max, 0) + np.maximum(bounds.log_eps_min - e, 0))[..., 0]
    if not grad:
        return value, None
    w = np.exp(u - pred)                       # ∂pred/∂a; ∂pred/∂e = 1 − w
    dh = np.clip(r, -delta, delta)             # Huber'(r)
    g = np.stack([(dh * w).sum(-1) + (a[..., 0] > bounds.log_beta_max),
                  (dh * (1 - w)).sum(-1) - (e[..., 0] < bounds.log_eps_min),
                  -(dh * w * log_n).sum(-1) + (al[..., 0] > bounds.alpha_max) - (al[..., 0] < 0)], -1)
    return value, g


_STEPS = 2.0 ** np.arange(3, -25, -1)          # the line search tries every one of these step sizes


def _minimise(P, log_n, log_y, bounds, delta, max_iter, tol):
    """Vectorised BFGS over independent problems (rows of P, each against its row of data), with an
    exhaustive line search on a log grid of step sizes. A problem stops when its gradient norm is
    ≤ `tol` (the official stopping rule) or no step lowers its objective. Returns (params, objective)."""
    M = len(P)
    f, g = _value_grad(P, log_n, log_y, bounds, delta)
    H = np.broadcast_to(np.eye(3), (M, 3, 3)).copy()
    active = np.isfinite(f)
    for _ in range(max_iter):
        active &= np.sqrt((g ** 2).sum(-1)) > tol
        d = -np.einsum("mij,mj->mi", H, g)
        gd = (g * d).sum(-1)
        bad = ~(gd < 0)
        if bad.any():                          # not a descent direction: restart from steepest descent
            H[bad] = np.eye(3)
            d[bad], gd[bad] = -g[bad], -(g[bad] ** 2).sum(-1)
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        trial = P[idx, None, :] + _STEPS[None, :, None] * d[idx, None, :]
        F, _ = _value_grad(trial, log_n[idx, None, :], log_y[idx, None, :], bounds, delta, grad=False)
        F = np.where(np.isfinite(F), F, np.inf)
        best = F.argmin(1)
        f_new = F[np.arange(len(idx)), best]
        improved = f_new < f[idx] - 1e-15 * np.maximum(1.0, np.abs(f[idx]))
        active[idx[~improved]] = False
        idx = idx[improved]
        if not len(idx):
            break
        s = _STEPS[best[improved], None] * d[idx]
        P_new = P[idx] + s
        f_i, g_i = _value_grad(P_new, log_n[idx], log_y[idx], bounds, delta)
        y = g_i - g[idx]
        sy = (s * y).sum(-1)
        ok = sy > 1e-18
        rho = np.where(ok, 1.0 / np.where(ok, sy, 1.0), 0.0)
        I = np.eye(3)[None]
        V = I - rho[:, None, None] * s[:, :, None] * y[:, None, :]
        H_new = V @ H[idx] @ V.transpose(0, 2, 1) + rho[:, None, None] * s[:, :, None] * s[:, None, :]
        H[idx] = np.where(ok[:, None, None], H_new, H[idx])
        P[idx], f[idx], g[idx] = P_new, f_i, g_i
    return P, f


def fit_power_law(n, loss, *, bounds: FitBounds = PILE_BOUNDS, starts=None, delta: float = 1e-3,
                  max_iter: int = 200, tol: float = 1e-5) -> tuple[PowerLaw, float]:
    """Fit L(n) = ε + β n^(−α) to one curve; see :func:`fit_power_laws`. Returns (law, objective)."""
    laws, values = fit_power_laws(np.asarray(n, dtype=np.float64)[None],
                                  np.asarray(loss, dtype=np.float64)[None],
                                  bounds=bounds, starts=starts, delta=delta, max_iter=max_iter, tol=tol)
    return laws[0], values[0]


def fit_power_laws(n, loss, *, bounds: FitBounds = PILE_BOUNDS, starts=None, delta: float = 1e-3,
                   max_iter: int = 200, tol: float = 1e-5) -> tuple[list[PowerLaw | None], np.ndarray]:
    """Fit one power law per row of `loss` (K, T) against counts `n` (K, T) or (T,).

    Log space: predict log L = logsumexp(a − α log n, e), minimise the Huber loss (δ = 1e−3, so
    nearly L1) plus soft penalties outside `bounds`, from every starting point in `starts`
    ((S, 3) shared or (K, S, 3) per row; default :data:`SMALL_GRID`), keep the lowest objective.
    Each start runs at most `max_iter` quasi-Newton steps and stops once its gradient norm is
    ≤ `tol` (official: 200 and 1e−5). On a flat curve the law is not identifiable (ε ≈ L with any
    α, or α ≈ 0 with any ε): the tolerance then keeps a start where it lands instead of sliding
    along the valley. A row whose every start ends non-finite gives None. Needs ≥ 4 positive,
    finite points.
    """
    if not isinstance(bounds, FitBounds):
        raise TypeError(f"bounds must be a FitBounds; got {type(bounds).__name__}")
    loss = _check.array("loss", loss, ndim=2)
    n = _check.array("n", n, ndim=(1, 2))
    n = np.broadcast_to(n, loss.shape) if n.ndim == 1 else n
    if n.shape != loss.shape:
        raise ValueError(f"n must have shape {loss.shape} or ({loss.shape[1]},); got {n.shape}")
    if loss.shape[1] < 4:
        raise ValueError(f"a power law has 3 parameters: loss needs ≥ 4 points per curve; got {loss.shape[1]}")
    if (n <= 0).any() or (loss <= 0).any():
        raise ValueError("n and loss must be positive (the fit works in log space)")
    delta = _check.real("delta", delta, low=0, low_open=True)
    max_iter = _check.integer("max_iter", max_iter, low=1)
    tol = _check.real("tol", tol, low=0)
    K = loss.shape[0]
    starts = SMALL_GRID if starts is None else _check.array("starts", starts, ndim=(2, 3))
    if starts.shape[-1] != 3 or (starts.ndim == 3 and starts.shape[0] != K):
        raise ValueError(f"starts must have shape (S, 3) or ({K}, S, 3); got {starts.shape}")
    starts = np.broadcast_to(starts, (K,) + starts.shape[-2:]) if starts.ndim == 2 else starts
    S = starts.shape[1]
    log_n = np.repeat(np.log(n), S, axis=0)
    log_y = np.repeat(np.log(loss), S, axis=0)
    P, f = _minimise(starts.reshape(K * S, 3).copy(), log_n, log_y, bounds, delta, max_iter, tol)
    P, f = P.reshape(K, S, 3), np.where(np.isfinite(f), f, np.inf).reshape(K, S)
    laws, values = [], np.full(K, np.inf)
    for k in range(K):
        j = int(f[k].argmin())
        if np.isfinite(f[k, j]) and np.all(np.isfinite(P[k, j])):
            laws.append(PowerLaw.from_params(P[k, j]))
            values[k] = f[k, j]
        else:
            laws.append(None)
    return laws, values


def savgol(y, window: int, order: int = 3) -> np.ndarray:
    """Savitzky–Golay smoothing along the last axis: a least-squares polynomial of `order` over a
    centred `window` (odd); the edges use the polynomial of the first/last full window. A series
    shorter than the window is smoothed with the largest odd window it allows (> order)."""
    y = _check.array("y", y, ndim=(1, 2))
    window, order = _check.integer("window", window, low=1), _check.integer("order", order, low=0)
    T = y.shape[-1]
    window = min(window if window % 2 else window - 1, T if T % 2 else T - 1)
    if window <= order:
        return y.copy()
    half = window // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    A = np.vander(x, order + 1, increasing=True)            # (window, order+1)
    pinv = np.linalg.pinv(A)                                 # coefficients = pinv @ window values
    y2 = np.atleast_2d(y)
    out = np.empty_like(y2)
    centre = pinv[0]                                         # value at x = 0
    for i, row in enumerate(y2):
        out[i, half:T - half] = np.convolve(row, centre[::-1], mode="valid")
        out[i, :half] = A[:half] @ (pinv @ row[:window])
        out[i, T - half:] = A[half + 1:] @ (pinv @ row[T - window:])
    return out.reshape(y.shape)


# ---------------------------------------------------------------------------------------------
# The policy, as pure functions
# ---------------------------------------------------------------------------------------------
def clip_min(p, delta_min: float, strict: bool = False) -> np.ndarray:
    """Lift small entries of a distribution to about `delta_min`.

    Official rule: floor every entry at δ_min, then renormalise; the lifted entries end slightly
    *below* δ_min (by the factor 1/Σ). ``strict=True``: entries below δ_min are set to δ_min
    exactly and the others are scaled, in ratio, to fill the remainder (water-filling).
    """
    p = check_weights(p, len(np.atleast_1d(p)), "p")
    K = len(p)
    delta_min = _check.real("delta_min", delta_min, low=0, high=1.0 / K)
    if not strict:
        out = np.maximum(p, delta_min)
        return out / out.sum()
    low = np.zeros(K, dtype=bool)
    while True:                                  # water-filling: at most K rounds
        rest = 1.0 - delta_min * low.sum()
        out = np.where(low, delta_min, p * rest / p[~low].sum())
        newly = (~low) & (out < delta_min)
        if not newly.any():
            return out
        low |= newly


def preference(prior, credit, slopes, s: float = 0.5,
               delta_min: float = 0.01) -> np.ndarray:
    """ρ ∝ μ · h^s · g, normalised and clipped to δ_min (official rule). A slope
    vector with no positive, finite mass is rejected: the caller keeps its policy."""
    prior = np.asarray(prior, dtype=np.float64)
    credit = np.asarray(credit, dtype=np.float64)
    slopes = np.asarray(slopes, dtype=np.float64)
    raw = prior * np.power(np.clip(credit, 0, None), s) * np.clip(slopes, 0, None)
    total = raw.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"slopes must give a positive, finite total; got {slopes}")
    return clip_min(raw / total, delta_min)


def update_credit(credit, shares, gamma1: float = 0.1) -> np.ndarray:
    """h(t) = (1 − γ₁) h(t−1) + γ₁ · (share of batch t from each domain)."""
    return (1 - gamma1) * np.asarray(credit) + gamma1 * np.asarray(shares)


def smooth(rho, rho_bar, t: int, gamma2: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """π(t) = γ₂ ρ(t) + (1 − γ₂) ρ̄(t−1); ρ̄(t) = (1 − 1/(t+1)) ρ̄(t−1) + ρ(t)/(t+1).
    Returns (π, ρ̄)."""
    pi = gamma2 * rho + (1 - gamma2) * rho_bar
    return pi, (1 - 1.0 / (t + 1)) * rho_bar + rho / (t + 1)


# ---------------------------------------------------------------------------------------------
# Policies: one interface for fixed mixtures and ADO
# ---------------------------------------------------------------------------------------------
class MixturePolicy:
    """Decides the domain weights π of every step and keeps the per-domain training record.

    Each step: the trainer samples a batch from :meth:`weights`, then calls :meth:`observe` with
    the batch's per-domain sequence counts and loss sums (already reduced across processes).
    A domain absent from a batch keeps its previous loss value in the record.
    """
    label = "policy"

    def __init__(self, names: Sequence[str], prior):
        names = list(names)
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"names must be distinct domain names; got {names}")
        self.names = names
        self.prior = check_weights(prior, len(names), "prior")
        self.step = 0
        self.pi = self.prior.copy()
        self.counts: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []
        self.pis: list[np.ndarray] = []

    @property
    def K(self) -> int:
        return len(self.names)

    def weights(self) -> np.ndarray:
        return self.pi.copy()

    def observe(self, counts, loss_sums) -> None:
        counts = _check.array("counts", counts, ndim=1)
        loss_sums = _check.array("loss_sums", loss_sums, ndim=1, finite=False)
        if counts.shape != (self.K,) or loss_sums.shape != (self.K,):
            raise ValueError(f"counts and loss_sums must have one entry per domain ({self.K})")
        if not np.all(np.isfinite(loss_sums)):
            raise ValueError(f"loss_sums must be finite at step {self.step}; got {loss_sums}")
        if (counts < 0).any() or counts.sum() <= 0:
            raise ValueError(f"counts must be non-negative with a positive total; got {counts}")
        prev = self.losses[-1] if self.losses else np.full(self.K, loss_sums.sum() / counts.sum())
        mean = np.where(counts > 0, loss_sums / np.maximum(counts, 1), prev)
        self.pis.append(self.pi.copy())
        self.counts.append(counts)
        self.losses.append(mean)
        self.step += 1
        self._advance(counts)

    def _advance(self, counts: np.ndarray) -> None:
        pass

    def record(self) -> dict:
        return {"label": self.label, "names": self.names, "prior": self.prior,
                "pi": np.array(self.pis), "loss": np.array(self.losses), "counts": np.array(self.counts)}

    # -- checkpointing: the trainer saves this with the weights (``train(..., state=policy)``) ----
    _HISTORIES = ("counts", "losses", "pis")
    _VECTORS = ("pi",)

    def state_dict(self) -> dict:
        """Everything that decides the next weights: float64 tensors (exact) and JSON values."""
        out: dict = {"step": self.step, "names": self.names}
        for name in self._VECTORS:
            out[name] = torch.from_numpy(np.array(getattr(self, name), dtype=np.float64))
        for name in self._HISTORIES:
            out[name] = torch.from_numpy(np.array(getattr(self, name), dtype=np.float64).reshape(-1, self.K))
        return out

    def load_state_dict(self, state: dict) -> None:
        if state.get("names") != self.names:
            raise ValueError(f"state is of a policy over {state.get('names')}; this one is over {self.names}")
        self.step = int(state["step"])
        for name in self._VECTORS:
            setattr(self, name, state[name].numpy().copy())
        for name in self._HISTORIES:
            setattr(self, name, list(state[name].numpy().copy()))


class FixedPolicy(MixturePolicy):
    """The same weights every step (natural: the prior; uniform: 1/K; or any given weights)."""

    def __init__(self, names: Sequence[str], weights, label: str = "fixed", prior=None):
        super().__init__(names, weights if prior is None else prior)
        self.pi = check_weights(weights, self.K)
        self.label = label


def natural(names: Sequence[str], prior) -> FixedPolicy:
    return FixedPolicy(names, prior, "natural")


def uniform(names: Sequence[str], prior=None) -> FixedPolicy:
    K = len(list(names))
    return FixedPolicy(names, np.full(K, 1.0 / K), "uniform", prior=prior)


@dataclasses.dataclass(frozen=True)
class ADOConfig:
    """ADO's knobs; the defaults are the official code's where the paper or its code states them."""
    s: float = 0.5
    gamma1: float = 0.1
    gamma2: float = 0.1
    delta_min: float = 0.01
    update_interval: int = 1000
    start_step: int = 1000
    ignore_steps: int = 1000
    savgol_window: int = 101
    savgol_order: int = 3
    subsample: int = 10
    bounds: FitBounds = PILE_BOUNDS
    grid: tuple = tuple(map(tuple, OFFICIAL_GRID))
    warm_starts: int = 4              # later refits: previous optimum + this many perturbations; 0 = full grid
    same_step_size: bool = True
    min_points: int = 5
    max_iter: int = 200

    def __post_init__(self):
        _check.real("s", self.s, low=0, high=1, high_open=True)
        for name in ("gamma1", "gamma2"):
            _check.real(name, getattr(self, name), low=0, high=1, low_open=True)
        _check.real("delta_min", self.delta_min, low=0, high=1)
        _check.integer("update_interval", self.update_interval, low=1)
        _check.integer("start_step", self.start_step, low=1)
        _check.integer("ignore_steps", self.ignore_steps, low=0)
        _check.integer("subsample", self.subsample, low=1)
        _check.integer("warm_starts", self.warm_starts, low=0)
        _check.integer("min_points", self.min_points, low=4)
        if not isinstance(self.bounds, FitBounds):
            raise TypeError(f"bounds must be a FitBounds; got {type(self.bounds).__name__}")


@dataclasses.dataclass
class Refit:
    step: int
    laws: list                       # one PowerLaw (or None) per domain
    n: np.ndarray                    # the x-axis the laws were fitted on, (T',) per domain
    smoothed: np.ndarray             # (K, T') the fitted targets
    seconds: float


class ADOPolicy(MixturePolicy):
    """ADO: refit the per-domain laws every ``update_interval`` steps from ``start_step``; recompute
    credit, preference and π every step (between refits n and h move, the laws stay)."""
    label = "ADO"

    def __init__(self, names: Sequence[str], prior, config: ADOConfig = ADOConfig()):
        super().__init__(names, prior)
        if not isinstance(config, ADOConfig):
            raise TypeError(f"config must be an ADOConfig; got {type(config).__name__}")
        if config.delta_min * self.K > 1:
            raise ValueError(f"delta_min must be ≤ 1/K = {1 / self.K:g}; got {config.delta_min}")
        self.config = config
        self.credit = self.prior.copy()
        self.rho_bar = self.prior.copy()
        self.rho = self.prior.copy()
        self.n = np.zeros(self.K)
        self.ns: list[np.ndarray] = []
        self.laws: list | None = None
        self.refits: list[Refit] = []
        self.rhos: list[np.ndarray] = []
        self.rho_bars: list[np.ndarray] = []
        self.slopes = np.full(self.K, np.nan)
        self.fit_seconds = 0.0
        self.policy_seconds = 0.0
        self.oracle_slopes: np.ndarray | None = None   # set: use these slopes, fit nothing

    def _advance(self, counts: np.ndarray) -> None:
        c = self.config
        t0 = time.perf_counter()
        self.n = self.n + (counts.sum() if c.same_step_size else counts)
        self.ns.append(self.n.copy())
        self.credit = update_credit(self.credit, counts / counts.sum(), c.gamma1)
        t = self.step                              # steps recorded so far
        oracle = self.oracle_slopes is not None
        due = t >= c.start_step and (t - c.start_step) % c.update_interval == 0
        if due and not oracle:
            self.refit()
            t0 = time.perf_counter()
        if t >= c.start_step and (oracle or self.laws is not None):
            slopes = (self.oracle_slopes if oracle else
                      np.array([law.slope(n, c.bounds.alpha_min)
                                for law, n in zip(self.laws, self.n)]))
            try:
                self.rho = preference(self.prior, self.credit, slopes, c.s, c.delta_min)
            except ValueError:
                pass                   # documented fallback: keep the previous ρ
            self.slopes = slopes
            self.pi, self.rho_bar = smooth(self.rho, self.rho_bar, t, c.gamma2)
        self.rhos.append(self.rho.copy())
        self.rho_bars.append(self.rho_bar.copy())
        self.policy_seconds += time.perf_counter() - t0

    def fit_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The points the next refit uses: (n (K, T'), smoothed loss (K, T'))."""
        c = self.config
        loss = savgol(np.array(self.losses).T, c.savgol_window, c.savgol_order)
        n = np.array(self.ns).T
        return n[:, c.ignore_steps::c.subsample], loss[:, c.ignore_steps::c.subsample]

    def refit(self) -> None:
        """Refit every domain's law. Too few points or a non-finite result: keep the previous law
        for that domain (documented fallback, as the official code does)."""
        c = self.config
        t0 = time.perf_counter()
        n, y = self.fit_data()
        if n.shape[1] < c.min_points or (y <= 0).any():
            self.fit_seconds += time.perf_counter() - t0
            return
        grid = np.array(c.grid, dtype=np.float64)
        if self.laws is not None and c.warm_starts and all(law is not None for law in self.laws):
            rng = np.random.default_rng(self.step)
            prev = np.array([law.params for law in self.laws])[:, None, :]
            jitter = rng.normal(0, [0.5, 0.5, 0.1], size=(self.K, c.warm_starts, 3))
            starts = np.concatenate([prev, prev + jitter], axis=1)
        else:
            starts = grid
        laws, _ = fit_power_laws(n, y, bounds=c.bounds, starts=starts, max_iter=c.max_iter)
        if self.laws is not None:
            laws = [new if new is not None else old for new, old in zip(laws, self.laws)]
        if all(law is not None for law in laws):
            self.laws = laws
        seconds = time.perf_counter() - t0
        self.fit_seconds += seconds
        self.refits.append(Refit(self.step, list(laws), n, y, seconds))

    def record(self) -> dict:
        out = super().record()
        out.update(rho=np.array(self.rhos), rho_bar=np.array(self.rho_bars), n=np.array(self.ns),
                   refits=self.refits)
        return out

    _HISTORIES = MixturePolicy._HISTORIES + ("ns", "rhos", "rho_bars")
    _VECTORS = MixturePolicy._VECTORS + ("credit", "rho_bar", "rho", "n", "slopes")

    @staticmethod
    def _law_array(laws) -> np.ndarray:
        """(K, 3) of (β, ε, α), NaN for a missing law: stored as fitted, so a reload is exact."""
        return np.array([[np.nan] * 3 if law is None else [law.beta, law.eps, law.alpha] for law in laws])

    @staticmethod
    def _laws_of(array) -> list:
        return [None if np.isnan(row).any() else PowerLaw(*map(float, row)) for row in np.asarray(array)]

    def state_dict(self) -> dict:
        out = super().state_dict()
        out.update(fit_seconds=self.fit_seconds, policy_seconds=self.policy_seconds,
                   refit_steps=[r.step for r in self.refits], refit_seconds=[r.seconds for r in self.refits],
                   has_laws=self.laws is not None)
        if self.laws is not None:
            out["laws"] = torch.from_numpy(self._law_array(self.laws))
        for i, r in enumerate(self.refits):
            out[f"refit{i}/laws"] = torch.from_numpy(self._law_array(r.laws))
            out[f"refit{i}/n"] = torch.from_numpy(np.asarray(r.n, dtype=np.float64))
            out[f"refit{i}/smoothed"] = torch.from_numpy(np.asarray(r.smoothed, dtype=np.float64))
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.fit_seconds, self.policy_seconds = float(state["fit_seconds"]), float(state["policy_seconds"])
        self.laws = self._laws_of(state["laws"].numpy()) if state["has_laws"] else None
        self.refits = [Refit(int(step), self._laws_of(state[f"refit{i}/laws"].numpy()),
                             state[f"refit{i}/n"].numpy().copy(), state[f"refit{i}/smoothed"].numpy().copy(),
                             float(seconds))
                       for i, (step, seconds) in enumerate(zip(state["refit_steps"], state["refit_seconds"]))]


def make_policy(kind: str, names: Sequence[str], prior, ado: ADOConfig | None = None,
                weights=None) -> MixturePolicy:
    """``natural`` (the prior), ``uniform``, ``ado`` (with `ado` config) or ``fixed`` (given `weights`)."""
    kind = _check.choice("kind", kind, ("natural", "uniform", "ado", "fixed"))
    if kind == "natural":
        return natural(names, prior)
    if kind == "uniform":
        return uniform(names, prior)
    if kind == "fixed":
        if weights is None:
            raise ValueError("weights must be given for kind='fixed'")
        return FixedPolicy(names, weights, prior=prior)
    return ADOPolicy(names, prior, ado or ADOConfig())


def domain_batch_stats(domain_ids: torch.Tensor, losses: torch.Tensor, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain (sequence counts, loss sums) of a batch, summed over all processes, so that every
    process updates its policy with the same numbers and samples from the same π."""
    stats = torch.stack([torch.bincount(domain_ids, minlength=K).to(torch.float64),
                         torch.bincount(domain_ids, weights=losses.detach().double(), minlength=K)])
    try:
        from accelerate.state import PartialState
        state = PartialState()
        if state.num_processes > 1:
            from accelerate.utils import reduce
            stats = reduce(stats.to(state.device), reduction="sum")
    except ImportError:  # pragma: no cover - accelerate is a dependency of lab
        pass
    stats = stats.cpu()
    return stats[0].numpy(), stats[1].numpy()
