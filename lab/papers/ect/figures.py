"""Figures and explorers of the Easy Consistency Tuning chapter."""
from __future__ import annotations

import math

import numpy as np

from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp
from . import experiments as ex
from . import method as ect

Q_CHOICES = (2, 4, 16, 256)
STAGES = tuple(range(8))
T_GRID = np.geomspace(0.002, 80, 300)


def _ring_axes(ax, mixture, title):
    for c in mixture.modes:
        ax.add_patch(__import__("matplotlib.patches", fromlist=["Circle"]).Circle(
            c, 4 * mixture.sigma, fill=False, lw=0.5, color="k", alpha=0.4))
    ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", xticks=[], yticks=[], title=title)


def samples_figure(samples: dict, table: "ex.Table", mixture, scale: str, seed: int, n_show: int = 2000):
    """One scatter per (model, sampler) of the results table; circles: 4σ around each mode."""
    keys = list(samples)
    ncols = math.ceil(len(keys) / 2)
    fig, axes = figure(ncols=ncols, nrows=2, width=3 * ncols, height=6.2)
    for ax, key in zip(np.ravel(axes), keys):
        row = table.get(*key)
        x = samples[key][:n_show]
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color=PALETTE["learned"], lw=0)
        _ring_axes(ax, mixture, f"{key[0]}, {key[1]} (NFE {row.nfe})\nSWD {row.swd:.3f} · in-mode {row.precision:.2f}")
    for ax in np.ravel(axes)[len(keys):]:
        ax.axis("off")
    stamp(fig, scale, seed, "circles: 4σ around each mode")
    return fig


def curves_figure(curves: dict, heun_swd: float, scale: str, seed: int):
    """SWD of the EMA weights against tuning steps; `curves` maps a label to {step: SWD}."""
    fig, ax = figure(width=7, height=3)
    styles = {"ECT": PALETTE["learned"], "CT from scratch": PALETTE["accent"]}
    for label, curve in curves.items():
        steps = sorted(curve)
        colour = next((c for k, c in styles.items() if label.startswith(k)), PALETTE["grey"])
        ax.plot(steps, [curve[s] for s in steps], marker="o", ms=3, color=colour,
                ls="-" if "2-step" in label else "--", label=label)
    ax.axhline(heun_swd, color=PALETTE["oracle"], lw=1, ls=":", label="diffusion, Heun 35 NFE")
    ax.set(yscale="log", xlabel="tuning steps", ylabel="SWD (log)", title="Quality against tuning steps")
    ax.legend(frameon=False, fontsize=9)
    stamp(fig, scale, seed)
    return fig


def loss_figure(losses: dict, scale: str, seed: int, stage_steps: dict | None = None):
    """Training losses (moving mean) of the runs; `losses` maps a label to a tensor, and
    `stage_steps` maps the label of a consistency run to its steps per stage, drawn as dotted
    boundaries. A consistency loss is not comparable across stages: its weight 1/(t − r) grows
    as the gap shrinks, so it jumps at each boundary."""
    stage_steps = stage_steps or {}
    fig, axes = figure(ncols=len(losses), width=3.3 * len(losses), height=2.6)
    for i, (ax, (label, loss)) in enumerate(zip(np.atleast_1d(axes), losses.items())):
        loss = loss.numpy()
        window = max(1, len(loss) // 60)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window // 2, smooth, color=PALETTE["learned"])
        for boundary in range(stage_steps.get(label, len(loss)), len(loss), stage_steps.get(label, 1)):
            ax.axvline(boundary, color=PALETTE["grey"], lw=0.8, ls=":")
        ax.set(xlabel="step" + (" (dotted: stage boundaries)" if label in stage_steps else ""),
               ylabel="training loss (moving mean)" if i == 0 else None, title=label)
    stamp(fig, scale, seed)
    return fig


# -- explorer 1: the mapping function ---------------------------------------------------------------
def mapping_figure(q: float, stage: int, mapping: str = "sigmoid", p_mean: float = -1.1, p_std: float = 2.0,
                   k: float = 8.0, b: float = 1.0):
    """Δt = t − r(t) and Δt/t over t ∈ [0.002, 80], the noise density p(t), the clamped region t ≤ t*,
    and (thin grey) the ``const`` mapping at the same q and stage."""
    import torch
    t = torch.from_numpy(T_GRID)
    r = ect.r_of_t(t, stage, q=q, k=k, b=b, mapping=mapping).numpy()
    r_const = ect.r_of_t(t, stage, q=q, mapping="const").numpy()
    t = T_GRID
    t_star = ect.clamp_threshold(stage, q=q, k=k, b=b, mapping=mapping)
    fig, axes = figure(ncols=2, width=9, height=3.3)
    axes[0].plot(t, t - r, color=PALETTE["learned"], label="Δt = t − r(t)")
    axes[0].plot(t, t, color=PALETTE["grey"], lw=0.7, ls=":", label="Δt = t (r = 0)")
    axes[0].set(xscale="log", yscale="log", ylim=(1e-6, 100), xlabel="t", ylabel="Δt", title="the gap Δt")
    axes[1].plot(t, (t - r) / t, color=PALETTE["accent"], label=f"Δt / t ({mapping})")
    axes[1].plot(t, (t - r_const) / t, color=PALETTE["grey"], lw=0.8, label="Δt / t (const)")
    density = np.exp(-(np.log(t) - p_mean) ** 2 / (2 * p_std ** 2))
    axes[1].fill_between(t, density, color=PALETTE["grey"], alpha=0.2, lw=0, label="p(t), peak = 1")
    axes[1].set(xscale="log", ylim=(0, 1.05), xlabel="t", ylabel="Δt / t", title="relative gap Δt/t")
    axes[0].set_yticks([1e-6, 1e-4, 1e-2, 1, 100])
    for ax in axes:
        if t_star > 0:
            ax.axvspan(0.002, t_star, color=PALETTE["halluc"], alpha=0.1, lw=0)
        ax.set_xticks([0.01, 0.1, 1, 10])
        ax.minorticks_off()           # log-axis minor ticks dominate the render time of each frame
        ax.legend(frameon=False, fontsize=9, loc="lower right")
    big_q = q ** (stage + 1)
    s2 = math.log2(big_q) - 1
    same = f" ≡ q = 2, s = {s2:.0f}" if q != 2 and s2 == round(s2) else ""
    note = f"clamped (r = 0, red) for t ≤ t* = {t_star:.3f}" if t_star > 0 else "no clamping at this stage"
    fig.suptitle(f"{mapping} mapping, q = {q:g}, stage s = {stage}: Q = q^(s+1) = {big_q:g}{same} · {note}",
                 fontsize=9)
    return fig


def mapping_explorer() -> Explorer:
    """q × stage (k = 8, b = 1, sigmoid mapping; the const mapping drawn beside it)."""
    return Explorer(mapping_figure, {"q": Q_CHOICES, "stage": STAGES},
                    title="The mapping r(t): stages shrink the gap Δt")


# -- explorer 2: the few-step sampler ------------------------------------------------------------------
def playground_explorer(grid: dict, heun_swd: float, mixture, scale: str, seed: int, n_show: int = 1000) -> Explorer:
    """Steps × t_mid: the tuned model's samples and SWD against the diffusion model's Euler sampler
    at the same number of network calls (and its 35-call Heun sampler)."""
    steps = sorted(grid["euler"])
    t_mids = sorted({k[1] for k in grid["swd"]})

    def render(steps, t_mid):
        x = grid["samples"][steps, t_mid][:n_show]
        fig, axes = figure(ncols=2, width=8.5, height=3.6)
        axes[0].scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color=PALETTE["learned"], lw=0)
        levels = ect.intermediate_levels(steps, t_mid)
        _ring_axes(axes[0], mixture, f"ECT, {steps} step(s)" + (f", re-noise at {', '.join(f'{v:.3g}' for v in levels)}"
                                                               if levels else ""))
        for n in steps_list:
            axes[1].plot(t_mids, [grid["swd"][n, v] for v in t_mids], marker="o", ms=3,
                         alpha=1.0 if n == steps else 0.3, label=f"ECT {n} step(s)")
        axes[1].scatter([t_mid], [grid["swd"][steps, t_mid]], s=60, facecolor="none", edgecolor="k", zorder=5)
        axes[1].axhline(grid["euler"][steps], color=PALETTE["accent"], ls="--", lw=1,
                        label=f"diffusion Euler, {steps} NFE: {grid['euler'][steps]:.3f}")
        axes[1].axhline(heun_swd, color=PALETTE["oracle"], ls=":", lw=1, label=f"diffusion Heun, 35 NFE: {heun_swd:.3f}")
        axes[1].set(xscale="log", yscale="log", xlabel="t_mid", ylabel="SWD (log)",
                    title=f"SWD {grid['swd'][steps, t_mid]:.3f} at {steps} step(s), t_mid = {t_mid:g}")
        axes[1].set_xticks([0.1, 0.3, 1, 3, 8], ["0.1", "0.3", "1", "3", "8"])
        axes[1].minorticks_off()
        axes[1].legend(frameon=False, fontsize=9)
        stamp(fig, scale, seed)
        return fig

    steps_list = steps
    return Explorer(render, {"steps": steps, "t_mid": t_mids}, title="Few-step sampling: steps and t_mid",
                    defaults={"steps": 2, "t_mid": 0.821} if 0.821 in t_mids and 2 in steps else None)


def digits_figure(result, scale: str, seed: int, per_row: int = 12):
    """Samples of the image study, one row per (model, sampler), with FD and confidence; a pending
    study (this scale does not run it) is returned as it is, to show its note."""
    if not isinstance(result, dict):
        return result
    rows = result["rows"]
    fig, axes = figure(nrows=len(rows), width=9, height=0.95 * len(rows) + 0.4)
    for ax, ((name, sampler), row) in zip(np.atleast_1d(axes), rows.items()):
        x = row["samples"][:per_row, 0].numpy()
        ax.imshow(np.concatenate(list(x), axis=1), cmap="gray_r", vmin=-1, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.set_title(f"{name}, {sampler} (NFE {row['nfe']}): FD {row['fd']:.2f}, "
                     f"confident {row['confident']:.2f}", fontsize=9, loc="left")
    stamp(fig, scale, seed)
    return fig
