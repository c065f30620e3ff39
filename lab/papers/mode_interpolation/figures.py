"""Figures and explorers of the mode-interpolation chapter."""
from __future__ import annotations

import numpy as np
import torch

from ... import _check
from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp
from . import experiments as ex
from . import method as mi

K_CHOICES = (5, 10, 20, 50, 100)
RETAIN_CHOICES = (0.80, 0.90, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
LANDSCAPE_T = (0, 1, 2, 4, 6, 9, 14, 20, 30, 50, 100, 300)


def _hist(ax, x, colour, label, bins):
    ax.hist(x, bins=bins, color=colour, alpha=0.75, label=label)
    ax.set_yscale("log")


def data_figure(data: np.ndarray, mixture, scale: str, seed: int):
    fig, ax = figure(width=7, height=2.4)
    _hist(ax, data[:, 0], PALETTE["grey"], f"{len(data):,} training points", np.linspace(0.5, 3.5, 241))
    for m in mixture.modes[:, 0]:
        ax.axvline(m, color="k", lw=0.5, ls=":")
    ax.set(xlabel="x", ylabel="count (log)", title=f"Training data: {mixture.name}, σ = {mixture.sigma:g}")
    ax.legend(frameon=False)
    stamp(fig, scale, seed)
    return fig


def loss_figure(losses: torch.Tensor, scale: str, seed: int):
    fig, ax = figure(width=7, height=2.4)
    loss = losses.numpy()
    window = max(1, len(loss) // 100)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    ax.plot(loss, color=PALETTE["grey"], lw=0.4, alpha=0.5)
    ax.plot(np.arange(len(smooth)) + window // 2, smooth, color=PALETTE["learned"])
    ax.set(yscale="log", xlabel="optimiser step", ylabel="ε-prediction loss", title="Training loss")
    stamp(fig, scale, seed)
    return fig


def samples_figure(learned: "ex.Analysis", oracle: "ex.Analysis", mixture, scale: str, seed: int):
    fig, axes = figure(ncols=2, width=9, height=2.9, sharey=True)
    bins = np.linspace(0.5, 3.5, 241)
    for ax, an, name in ((axes[0], learned, "learned network"), (axes[1], oracle, "exact score (oracle)")):
        x = an.x[:, 0]
        _hist(ax, x[~an.hallucinated], PALETTE["in"], "in support", bins)
        if an.count:
            _hist(ax, x[an.hallucinated], PALETTE["halluc"], f"hallucinated ({an.count})", bins)
        for m in mixture.modes[:, 0]:
            ax.axvspan(m - 4 * mixture.sigma, m + 4 * mixture.sigma, color="k", alpha=0.06, lw=0)
        ax.set(xlabel="sample", title=f"{name}: {an.rate:.2%} beyond 4σ")
        ax.legend(frameon=False, fontsize=9)
    axes[0].set_ylabel("count (log)")
    stamp(fig, scale, seed, "grey bands: within 4σ of a mode")
    return fig


def posterior_mean_curves(model, mixture, schedule, t: int, grid: np.ndarray):
    """Oracle and learned E[x0 | x_t] on x_t = √ᾱ_t·grid (so the modes stay at their data positions)."""
    ab = float(schedule.alpha_bars[t])
    xt = torch.tensor(grid[:, None] * ab ** 0.5, dtype=torch.float64)
    exact = mi.oracle_posterior_mean(xt, t, mixture, schedule)[:, 0].numpy()
    with torch.no_grad():
        xf = xt.float()
        learned = schedule.predict_x0(xf, t, model(xf, t))[:, 0].double().numpy()
    return exact, learned


def landscape_explorer(model, mixture, schedule, samples, analysis, scale: str, seed: int) -> Explorer:
    """Slide over t: the exact posterior mean (a near-step between modes) against the learned ramp."""
    grid = np.linspace(0.5, 3.5, 601)
    curves = {t: posterior_mean_curves(model, mixture, schedule, t, grid) for t in LANDSCAPE_T}
    R = samples.x_path.shape[1]
    born = samples.x_path[:, R - 1 - min(10, R - 1), 0].numpy() / float(schedule.alpha_bars[min(10, R - 1)]) ** 0.5
    born_h = born[analysis.hallucinated]

    def render(t):
        exact, learned = curves[t]
        fig, ax = figure(width=7.5, height=3.2)
        gap = np.abs(learned - exact) > 2 * mixture.sigma      # where the network's ramp departs
        ax.fill_between(grid, 0.5, 3.5, where=gap, color=PALETTE["halluc"], alpha=0.08, lw=0,
                        label="learned off the exact curve by > 2σ")
        ax.plot(grid, exact, color=PALETTE["oracle"], lw=2, label="exact E[x₀|x_t]")
        ax.plot(grid, learned, color=PALETTE["learned"], lw=1.5, ls="--", label="learned x̂₀(x_t)")
        if len(born_h):
            ax.plot(born_h, np.full(len(born_h), 0.6), "|", color=PALETTE["halluc"], ms=12,
                    label="hallucinations at t = 10")
        ax.set(xlim=(0.5, 3.5), ylim=(0.5, 3.5), xlabel="x_t / √ᾱ_t", ylabel="predicted clean sample",
               title=f"t = {t}, ᾱ_t = {float(schedule.alpha_bars[t]):.3g}")
        ax.legend(frameon=False, fontsize=9, loc="upper left")
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"t": LANDSCAPE_T}, title="Score landscape: exact vs learned posterior mean",
                    defaults={"t": 0})


def pick_examples(analysis: "ex.Analysis", n: int = 6, seed: int = 0) -> list[int]:
    """Up to n hallucinated samples and n in-support ones, reproducibly."""
    n = _check.integer("n", n, low=1)
    rng = np.random.default_rng(seed)
    h, ok = np.flatnonzero(analysis.hallucinated), np.flatnonzero(~analysis.hallucinated)
    pick_h = rng.choice(h, min(n, len(h)), replace=False) if len(h) else np.array([], int)
    pick_ok = rng.choice(ok, n, replace=False)
    return [int(i) for i in np.r_[pick_h, pick_ok]]


def trajectory_explorer(samples, analysis: "ex.Analysis", scale: str, seed: int) -> Explorer:
    """Pick a sample: its x̂0 over the last reverse steps, the window K, and its Hal."""
    path = samples.x0_path[:, :, 0].numpy()
    R = path.shape[1]
    picks = pick_examples(analysis, n=4, seed=seed)
    labels = [f"{'H' if analysis.hallucinated[i] else 'ok'}-{i}" for i in picks]
    index = dict(zip(labels, picks))
    t_axis = np.arange(R - 1, -1, -1)
    Ks = [K for K in K_CHOICES if K <= R]

    def render(sample, K):
        i = index[sample]
        fig, ax = figure(width=7.5, height=3.0)
        ax.plot(t_axis, path[i], color=PALETTE["halluc" if analysis.hallucinated[i] else "in"], lw=1.5)
        ax.axvspan(K - 0.5, -0.5, color="k", alpha=0.08, lw=0)
        hal = analysis.hal[K][i] if K in analysis.hal else mi.trajectory_variance(path[i:i + 1], K)[0]
        ax.set(xlim=(R - 1, 0), xlabel="reverse step t (time runs right)", ylabel="x̂₀",
               title=f"sample {i} ({'hallucinated' if analysis.hallucinated[i] else 'in support'}), "
                     f"final {analysis.x[i, 0]:.3f} · Hal(K={K}) = {hal:.2e}")
        stamp(fig, scale, seed, "shaded: the last K steps")
        return fig

    return Explorer(render, {"sample": labels, "K": Ks}, title="Trajectory explorer: x̂₀ over the last steps",
                    defaults={"K": 10})


def threshold_explorer(analysis: "ex.Analysis", scale: str, seed: int) -> Explorer:
    """Window K and retention: τ, what is removed and kept, and the ROC point."""
    Ks = [K for K in K_CHOICES if K in analysis.hal]
    rocs = {K: ex.roc_curve(analysis.hal[K], analysis.hallucinated) for K in Ks}
    h = analysis.hallucinated

    def render(K, retain):
        hal = analysis.hal[K]
        op = mi.operating_point(hal, h, retain)
        fig, (a1, a2) = figure(ncols=2, width=9, height=3.1)
        bins = np.logspace(np.log10(max(hal.min(), 1e-12)), np.log10(hal.max()), 60)
        a1.hist(hal[~h], bins=bins, color=PALETTE["in"], alpha=0.75, label="in support")
        a1.hist(hal[h], bins=bins, color=PALETTE["halluc"], alpha=0.85, label="hallucinated")
        a1.axvline(op.threshold, color="k", lw=1)
        removed_in = int((hal[~h] > op.threshold).sum())
        a1.set(xscale="log", yscale="log", xlabel=f"Hal (K = {K})", ylabel="count",
               title=f"τ = {op.threshold:.2e}: removes {int((hal[h] > op.threshold).sum())}/{int(h.sum())} "
                     f"hallucinated, {removed_in} in-support")
        a1.legend(frameon=False, fontsize=9, loc="upper right")
        fpr, tpr, _ = rocs[K]
        a2.plot(fpr, tpr, color=PALETTE["accent"])
        a2.plot([1 - op.kept], [op.removal], "o", color="k")
        a2.plot([0, 1], [0, 1], color="#bbb", lw=0.8, ls=":")
        a2.set(xlabel="in-support samples removed", ylabel="hallucinations removed",
               title=f"ROC, AUROC = {ex.auroc(hal, h):.3f}; keep {retain:.1%}")
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"K": Ks, "retain": RETAIN_CHOICES}, title="Threshold explorer: removed vs kept",
                    defaults={"K": 10, "retain": 0.96})


def grids_figure(studies: dict):
    """Samples of the square and diamond grids with hallucinations in red, and their ROC curves."""
    grids = studies["grids"]
    names = [n for n in ("square", "diamond") if n in grids]
    fig, axes = figure(ncols=len(names) + 1, width=4 * (len(names) + 1), height=3.6)
    for ax, name in zip(axes, names):
        g = grids[name]["arrays"]
        ax.scatter(*g["x_rest"].T, s=0.3, color=PALETTE["in"], alpha=0.3)
        ax.scatter(*g["x_halluc"].T, s=2, color=PALETTE["halluc"])
        ax.set(aspect="equal", title=f"{name}: {grids[name]['rate']:.2%} hallucinated, "
                                     f"{grids[name]['nearest_pair_fraction']:.0%} between nearest modes")
    for name in grids:
        roc = grids[name]["arrays"]["roc"]
        axes[-1].plot(roc[0], roc[1], label=f"{name} ({grids[name]['steps']:,} steps), AUROC {grids[name]['auroc']:.3f}")
    axes[-1].set(xlabel="in-support removed", ylabel="hallucinations removed", title="ROC of Hal (K = 10)")
    axes[-1].legend(frameon=False, fontsize=9)
    stamp(fig, studies["scale"], studies["seed"], f"recorded {studies['recorded']} on {studies['device']}")
    return fig


def recursive_figure(studies: dict):
    rec = studies["recursive"]
    fig, (a1, a2) = figure(ncols=2, width=9, height=3.0)
    for kind, colour in (("variance", PALETTE["in"]), ("random", PALETTE["halluc"])):
        gens = np.arange(1, len(rec[kind]["rate"]) + 1)
        a1.plot(gens, rec[kind]["rate"], "o-", color=colour, label=f"{kind} filter")
        a2.plot(gens, rec[kind]["kl"], "o-", color=colour, label=f"{kind} filter")
    a1.set(xlabel="generation", ylabel="hallucination rate", title="Hallucinations over generations")
    a2.set(xlabel="generation", ylabel="KL(true ‖ generated)", title="Drift from the true data")
    a1.legend(frameon=False)
    stamp(fig, studies["scale"], studies["seed"], f"recorded {studies['recorded']}")
    return fig


def show_studies(studies) -> None:
    """Display the larger-scale results: the grids and recursive-training figures, or the notice
    that they await a run at that scale."""
    from IPython.display import display
    if isinstance(studies, ex.Pending):
        display(studies)
        return
    display(grids_figure(studies))
    if studies.get("recursive"):
        display(recursive_figure(studies))
