"""Figures and explorers of the context-parametric inversion chapter."""
from __future__ import annotations

import numpy as np

from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp

METRIC_STYLE = {"M_C": ("M_C (soft reliance)", PALETTE["accent"], "-"),
                "CF": ("CF accuracy", "#4C72B0", "--"),
                "PAR": ("PAR (memory answer)", PALETTE["grey"], ":"),
                "attn_ctx": ("attention on context", "#55A868", "-.")}
GROUP_COLOURS = {"C": "#4C72B0", "C+S": PALETTE["accent"], "S": "#CCB974", "CF": "#55A868"}
CURSOR_STEPS = (0, 15, 40, 80, 150, 300)


def _curves(ax, trace, title: str, cursor: int | None = None, legend: bool = False):
    for key, (label, colour, style) in METRIC_STYLE.items():
        ax.plot(trace.steps, getattr(trace, key), style, color=colour, label=label, lw=1.4)
    if cursor is not None:
        ax.axvline(cursor, color="black", lw=0.8)
    ax.set(xlabel="IFT step", ylim=(-0.03, 1.03), title=title)
    if legend:
        ax.legend(fontsize=7, loc="center right")


def reliance_figure(traces: dict, scale: str, seed: int):
    """M_C, CF, PAR and attention on the context over IFT, one panel per variant."""
    names = list(traces)
    fig, axes = figure(len(names), width=2.6 * len(names), height=2.9, sharey=True)
    axes = np.atleast_1d(axes)
    for i, (ax, name) in enumerate(zip(axes, names)):
        _curves(ax, traces[name], name, legend=(i == 0))
    stamp(fig, scale, seed, "counterfactual test items: memorised subject, conflicting context")
    return fig


def contributions_figure(trace, scale: str, seed: int, steps: int = 120):
    """Per-group first-order contributions to the test margin (left) and the margin (right)."""
    fig, (ax1, ax2) = figure(2, width=9.5, height=3.0)
    upto = trace.steps <= steps
    for group, values in trace.contrib.items():
        ax1.plot(trace.steps[upto], values[upto], color=GROUP_COLOURS[group], label=f"group {group}")
    ax1.axhline(0, color="black", lw=0.6)
    ax1.set(xlabel="IFT step", ylabel="⟨−∇L_g, ∇margin⟩", title="who pushes the margin")
    ax1.legend(fontsize=7)
    ax2.plot(trace.steps[upto], trace.margin[upto], color="black")
    ax2.axhline(0, color="black", lw=0.6, ls=":")
    ax2.set(xlabel="IFT step", ylabel="logit(a_ctx) − logit(a_mem)", title="test margin")
    stamp(fig, scale, seed, "standard variant")
    return fig


def reliance_explorer(traces: dict, scale: str, seed: int) -> Explorer:
    """Variant picker and step cursor: the curves with the cursor, and the values at it."""

    def render(variant: str, step: int):
        trace = traces[variant]
        fig, (ax1, ax2) = figure(2, width=9.5, height=3.1, width_ratios=(2.2, 1))
        _curves(ax1, trace, variant, cursor=step, legend=True)
        i = int(np.searchsorted(trace.steps, step))
        keys = list(METRIC_STYLE)
        values = [float(getattr(trace, k)[i]) for k in keys]
        ax2.barh(range(len(keys)), values, color=[METRIC_STYLE[k][1] for k in keys])
        ax2.set_yticks(range(len(keys)), [METRIC_STYLE[k][0] for k in keys], fontsize=7)
        for y, v in enumerate(values):
            ax2.text(min(v + 0.02, 0.8), y, f"{v:.3f}", va="center", fontsize=7)
        ax2.set(xlim=(0, 1), title=f"at step {step}")
        ax2.invert_yaxis()
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"variant": list(traces), "step": list(CURSOR_STEPS)},
                    title="Reliance over training", defaults={"step": 15})


def push_explorer(grid: dict, scale: str, seed: int) -> Explorer:
    """Per-group contributions at the cursor step, for each group mix and memory strength."""
    sizes = sorted({(c, cs) for c, cs, _ in grid})
    p_mems = sorted({p for _, _, p in grid})
    labels = {f"{c} C / {cs} C+S": (c, cs) for c, cs in sizes}
    first = next(iter(grid.values()))
    measured = ~np.isnan(first.contrib["C"])          # the steps whose contributions were kept
    steps = [int(s) for s in first.steps[measured]]
    top = max(float(np.nanmax(np.abs(v))) for t in grid.values() for v in t.contrib.values())

    def render(groups: str, p_mem: float, step: int):
        trace = grid[(*labels[groups], p_mem)]
        fig, (ax1, ax2) = figure(2, width=9.5, height=3.0, width_ratios=(1, 1.6))
        i = int(np.searchsorted(trace.steps, step))
        names = list(trace.contrib)
        vals = [float(trace.contrib[g][i]) for g in names]
        ax1.bar(names, vals, color=[GROUP_COLOURS[g] for g in names])
        ax1.axhline(0, color="black", lw=0.6)
        ax1.set(ylim=(-top * 1.05, top * 1.05), ylabel="⟨−∇L_g, ∇margin⟩",
                title=f"contributions at step {step}")
        for x, v in enumerate(vals):
            ax1.text(x, v, f"{v:+.3f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
        ax2.plot(trace.steps, trace.M_C, color=PALETTE["accent"], label="M_C")
        ax2.plot(trace.steps, trace.attn_ctx, "-.", color="#55A868", label="attention on context")
        ax2.axvline(step, color="black", lw=0.8)
        ax2.set(xlabel="IFT step", ylim=(-0.03, 1.03), title=f"{groups}, p_mem {p_mem:g}")
        ax2.legend(fontsize=7)
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"groups": list(labels), "p_mem": p_mems, "step": steps},
                    title="Who pushes the margin", defaults={"groups": "20 C / 20 C+S", "p_mem": 0.6})


def mix_figure(rows: list[dict], scale: str, seed: int):
    """Peak and final M_C against the share of context-critical items."""
    fig, ax = figure(1, width=5.5, height=3.0)
    x = [r["fraction"] for r in rows]
    ax.plot(x, [r["peak"] for r in rows], "o-", color=PALETTE["accent"], label="peak M_C")
    ax.plot(x, [r["final"] for r in rows], "s--", color=PALETTE["grey"], label="final M_C (step 300)")
    ax.plot(x, [r["start"] for r in rows], ":", color="black", lw=0.8, label="start")
    ax.set(xlabel="share of context-critical (C) items", ylim=(-0.03, 1.03), title="data mix")
    ax.legend(fontsize=7)
    stamp(fig, scale, seed, "40 IFT items: C and C+S")
    return fig


def mix_explorer(rows: list[dict], traces_by_fraction: dict, scale: str, seed: int) -> Explorer:
    """Data-mix slider: the M_C curve at one share of C items, with its peak and final value."""

    def render(fraction: float):
        trace = traces_by_fraction[fraction]
        fig, ax = figure(1, width=6.5, height=3.0)
        _curves(ax, trace, f"{fraction:.0%} context-critical", legend=True)
        peak, at = trace.peak()
        ax.annotate(f"peak {peak:.2f} @ {at}", (at, peak), xytext=(at + 40, min(peak + 0.1, 0.95)),
                    fontsize=7, arrowprops={"arrowstyle": "->", "lw": 0.6})
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"fraction": list(traces_by_fraction)}, title="Data mix",
                    defaults={"fraction": list(traces_by_fraction)[len(traces_by_fraction) // 2]})


LM_STYLE = {"full": (PALETTE["accent"], "-"), "QK-only": ("#4C72B0", "--"),
            "no distractor": ("#55A868", "-.")}


def lm_figure(runs: dict, scale: str, seed: int):
    """M_C of the trained tiny transformer over IFT: the distractor world in each variant
    (left), the facts world (right); solid: IFT-seen subjects, dotted: held-out subjects."""
    fig, (ax1, ax2) = figure(2, width=9.0, height=3.1, sharey=True, width_ratios=(1.4, 1))
    for name, trace in runs["slots"].items():
        colour, style = LM_STYLE[name]
        ax1.plot(trace.steps, trace["M_C_seen"], style, color=colour, label=f"{name}")
        if name == "full":
            ax1.plot(trace.steps, trace["M_C_heldout"], ":", color=colour, label="full, held-out subjects")
    ax1.set(xlabel="IFT step", ylabel="M_C", ylim=(-0.03, 1.03), title="distractor world")
    ax1.legend(fontsize=7, loc="upper right")
    trace = runs["pairs"]["full"]
    ax2.plot(trace.steps, trace["M_C_seen"], color=PALETTE["accent"], label="M_C")
    ax2.plot(trace.steps, trace["M_C_heldout"], ":", color=PALETTE["accent"], label="M_C, held-out")
    ax2.plot(trace.steps, trace["fresh_c"], "--", color=PALETTE["grey"], label="p(answer), fresh C items")
    ax2.set(xlabel="IFT step", title="facts world")
    ax2.legend(fontsize=7, loc="upper right")
    stamp(fig, scale, seed, "trained 2-layer GPT; counterfactual items: memorised subject, clean context")
    return fig
