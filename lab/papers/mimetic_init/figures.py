"""Figures and explorers of the mimetic-initialisation chapter."""
from __future__ import annotations

import math

import numpy as np
import torch

from ... import _check
from ...viz.explorer import Explorer
from ...viz.maps import causal_heatmap, colour_top
from ...viz.style import PALETTE, figure, stamp
from . import experiments as ex
from . import method as mm

ARM_COLOURS = {"default": PALETTE["grey"], "mimetic": PALETTE["accent"], "A only": "#4C72B0",
               "BC only": "#55A868", "no unit step": "#8172B2", "identity conv": "#CCB974"}
PART_LABELS = {"full": "full M", "cb": "C·Bᵀ only", "decay": "decay only"}


def curves_figure(runs: dict, scale: str, seed: int):
    """Token and whole-string accuracy (teacher-forced) against training steps, every arm and seed."""
    fig, (ax1, ax2) = figure(2, width=9, height=3.3)
    for (arm, s), run in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        style = "-" if s == seed else "--"
        colour = ARM_COLOURS.get(arm, "black")
        ax1.plot(run.steps, run.token_acc, style, color=colour, label=f"{arm} · seed {s}")
        ax2.plot(run.steps, run.string_acc, style, color=colour)
    vocab = next(iter(runs.values())).model.vocab - 2
    ax1.axhline(1 / vocab, color="black", lw=0.6, ls=":")
    ax1.text(0, 1 / vocab + 0.02, "chance", fontsize=9)
    ax1.set(xlabel="step", ylabel="token accuracy", ylim=(0, 1.02), title="copy: token accuracy")
    ax2.set(xlabel="step", ylabel="whole-string accuracy", ylim=(0, 1.02), title="copy: whole string")
    ax1.legend(fontsize=9, loc="upper left")
    stamp(fig, scale, seed)
    return fig


def _top(part: str, maps) -> float:
    """One colour range for panels shown side by side: |C·Bᵀ| max, or log₁₀ of the |M| max."""
    return colour_top("signed" if part == "cb" else "log", maps)


def _heatmap(ax, M: np.ndarray, part: str, length: int, title: str, top: float | None = None):
    ticks = [0, length, M.shape[0] - 1]
    im = causal_heatmap(ax, M, title, "signed" if part == "cb" else "log", top, ticks)
    rows = np.arange(length + 1, M.shape[0])
    for offset in (-2.5, 2.5):          # bracket the copy target j = i − L, leaving it visible
        ax.plot(rows - length + offset, rows, color="#2ca02c", lw=0.7, ls="--")
    return im


def _pick(maps: list[torch.Tensor], layer: int, head) -> np.ndarray:
    M = maps[layer]
    return (M.mean(0) if head == "mean" else M[head]).numpy()


def initial_maps_figure(cfg: ex.CopyConfig, seed: int, scale: str, layer: int = 0):
    """Untrained maps of one string, default vs mimetic (head mean), with claim 4's share s."""
    probe = cfg.map_input()[:1]
    fig, axes = figure(2, width=8, height=3.8)
    with torch.no_grad():
        maps = {init: cfg.model(init, seed).attention_maps(probe) for init in ("default", "mimetic")}
    shown = {init: _pick([M[0] for M in m], layer, "mean") for init, m in maps.items()}
    top = _top("full", shown.values())
    for ax, init in zip(axes, shown):
        share = mm.mass_share(maps[init][layer], cfg.length)
        im = _heatmap(ax, shown[init], "full", cfg.length, f"{init} init · layer {layer} · s = {share:.2f}", top)
    fig.colorbar(im, ax=axes, shrink=0.8, label="log₁₀|M| (head mean)")
    stamp(fig, scale, seed, "green dashes: either side of the copy target j = i − L")
    return fig


def map_explorer(runs: dict, seed: int, scale: str, length: int,
                 steps: tuple[int, ...] = (0, 100, 200, 300)) -> Explorer:
    """The attention-map viewer: default and mimetic side by side for one (layer, head), one part
    of M (C·Bᵀ only, decay only, full), at a training checkpoint."""
    left, right = runs["default", seed], runs["mimetic", seed]
    steps = tuple(s for s in steps if s in left.steps)
    n_layer = len(left.maps[0]["full"])
    H = left.maps[0]["full"][0].shape[0]
    heads = (0, "mean") if H > 1 else (0,)

    def render(layer, head, part, step):
        fig, axes = figure(2, width=8, height=3.8)
        shown = [_pick(run.maps[run.steps.index(step)][part], layer, head) for run in (left, right)]
        top = _top(part, shown)
        for ax, run, M in zip(axes, (left, right), shown):
            im = _heatmap(ax, M, part, length, f"{run.init} · {PART_LABELS[part]} · step {step}", top)
        fig.colorbar(im, ax=axes, shrink=0.8, label="C·Bᵀ (signed)" if part == "cb" else "log₁₀|M|")
        stamp(fig, scale, seed, f"layer {layer} · head {head} · green dashes: either side of the copy target")
        return fig

    return Explorer(render, {"layer": list(range(n_layer)), "head": list(heads),
                             "part": list(PART_LABELS), "step": list(steps)},
                    title="SSM attention maps: default vs mimetic init during training",
                    defaults={"part": "full", "step": steps[0]}, dpi=80)


def default_decay_band(cfg: ex.CopyConfig, seed: int) -> tuple[float, float]:
    """(fastest, slowest) per-step decay over the heads of a default-initialised model."""
    model = cfg.model("default", seed)
    rates = torch.cat([mm.per_step_decay(m).flatten() for m in model.mixers]).detach()
    return float(rates.min()), float(rates.max())


def decay_explorer(band: tuple[float, float], scale: str, seed: int,
                   A_logs=(-8.0, -6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 2.77),
                   dt_biases=(-6.9, -4.6, -3.0, -2.0, -1.0, 0.0, 0.5413, 1.0, 2.0)) -> Explorer:
    """The decay explorer: Â and b set the per-step decay exp(softplus(b)·(−e^Â)); the row profile
    exp(t·Δ·A) over t tokens back, its memory length (mask < 1 %), the default init's range as a band."""
    t = np.unique(np.round(np.logspace(0, 3.3, 200)))
    lo, hi = (_check.real("band[0]", band[0], low=0, high=1), _check.real("band[1]", band[1], low=0, high=1))

    def render(A_log, dt_bias):
        fig, ax = figure(1, width=7, height=3.2)
        ax.fill_between(t, lo ** t, hi ** t, color=PALETTE["grey"], alpha=0.3, label="default init, all heads")
        rate = math.exp(A_log) * math.log1p(math.exp(dt_bias))
        ax.plot(t, np.exp(-rate * t), color=PALETTE["accent"], lw=2, label=f"Â = {A_log:g}, b = {dt_bias:g}")
        ax.axhline(0.01, color="black", lw=0.6, ls=":")
        mem = mm.memory_length(A_log, dt_bias)
        ax.set(xscale="log", ylim=(0, 1.02), xlabel="tokens back (i − j)", ylabel="decay mask exp(Σ Δ·A)",
               title=f"per-step decay {math.exp(-rate):.4f} · memory (mask > 1 %): "
                     + (f"{mem:,.0f} tokens" if mem < 1e7 else "≫ 10⁷ tokens"))
        ax.legend(fontsize=9, loc="lower left")
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"A_log": list(A_logs), "dt_bias": list(dt_biases)},
                    title="Decay explorer: how far back can a head see at init?",
                    defaults={"A_log": -6.0, "dt_bias": 0.5413}, dpi=80)
