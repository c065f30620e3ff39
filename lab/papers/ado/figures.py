"""Figures and explorers of the ADO chapter."""
from __future__ import annotations

import dataclasses

import numpy as np

from ... import _check
from ...viz.explorer import Explorer
from ...viz.style import figure, stamp
from . import method as ado

COLOURS = ("#8C8C8C", "#55A868", "#4C72B0", "#C44E52")
POLICY_COLOURS = {"natural": "#8C8C8C", "uniform": "#DD8452", "ado": "#4C72B0"}


def _colour(k: int) -> str:
    return COLOURS[k % len(COLOURS)]


def _stack(ax, pi: np.ndarray, names, step: int | None = None):
    t = np.arange(len(pi))
    ax.stackplot(t, pi.T, colors=[_colour(k) for k in range(pi.shape[1])], labels=names, alpha=0.85)
    if step is not None:
        ax.axvline(step, color="k", lw=1)
    ax.set(xlim=(0, len(pi) - 1), ylim=(0, 1), xlabel="step", ylabel="mixture weight π(t)")


def mixture_figure(records: dict, scale: str, seed: int):
    """π(t) of ADO as a stacked area, with the fixed mixtures' weights as ticks on the right."""
    rec = records["ado"]
    fig, ax = figure(width=8, height=2.8)
    _stack(ax, rec["pi"], rec["names"])
    for r in rec["refits"]:
        ax.axvline(r.step, color="w", lw=0.4, alpha=0.6)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, reverse=True)
    ax.set_title("ADO's mixture over training (white lines: refits of the laws)")
    stamp(fig, scale, seed)
    return fig


def results_figure(records: dict, scale: str, seed: int, *, value: str = "excess"):
    """Per-domain final losses for every policy, and their unweighted mean: the excess over the
    entropy rate (``value="excess"``, synthetic languages) or the held-out loss (``"val"``, text,
    whose entropy rate is unknown)."""
    labels = {"excess": "validation loss − entropy rate (nats)", "val": "held-out loss (nats per token)"}
    _check.choice("value", value, labels)
    kinds = list(records)
    names = records[kinds[0]]["names"] + ["mean"]
    fig, ax = figure(width=8, height=2.6)
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        ex = np.asarray(records[kind][value])
        vals = np.r_[ex, ex.mean()]
        ax.bar(np.arange(len(names)) + (j - (len(kinds) - 1) / 2) * width, vals, width,
               color=POLICY_COLOURS.get(kind, "#777777"), label=kind)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(ylabel=labels[value], title="Final loss per domain, same budget")
    ax.legend(frameon=False)
    stamp(fig, scale, seed)
    return fig


def _domain_panel(ax, rec: dict, k: int, refit: "ado.Refit", step: int):
    loss = np.asarray(rec["loss"])[:step, k]
    n = np.asarray(rec["n"])[:, k]
    H = rec["entropies"][k]
    seen = refit.smoothed[k] - H
    ax.plot(n[:step], loss - H, color=_colour(k), lw=0.4, alpha=0.35)
    ax.plot(refit.n[k], seen, ".", ms=2, color=_colour(k))
    law = refit.laws[k]
    if law is not None:
        grid = np.geomspace(refit.n[k][0], n[-1], 100)
        ax.plot(grid, law(grid) - H, color="k", lw=1, ls="--")
        g = law.slope(n[step - 1], ado.SYNTHETIC_BOUNDS.alpha_min)
        ax.set_title(f"{rec['names'][k]}: g·n = {g * n[step - 1]:.3f}", fontsize=8)
        ax.axvline(n[step - 1], color="k", lw=0.5, ls=":")
    pad = 0.1 * (seen.max() - seen.min()) + 1e-3
    ax.set_ylim(seen.min() - pad, seen.max() + pad)
    ax.set_xscale("log")
    ax.tick_params(labelsize=7)


def mixture_explorer(records: dict, scale: str, seed: int, every: int = 1) -> Explorer:
    """Stacked π(t) with a step slider (one stop per `every`-th refit); beside it, each domain's
    loss history (excess over its entropy rate), the smoothed points the refit saw and the fitted
    law (dashed), with the slope g·n at that step (α floored at 0.05). ``reference`` overlays the
    natural or uniform mixture (dotted boundaries) and its final excess loss beside ADO's."""
    rec = records["ado"]
    every = _check.integer("every", every, low=1)
    refits = {r.step: r for r in rec["refits"] if all(law is not None for law in r.laws)}
    if not refits:
        raise ValueError("records['ado'] holds no complete refit to show")
    K = len(rec["names"])
    references = ["none"] + [k for k in ("natural", "uniform") if k in records]

    def render(step, reference):
        from matplotlib.figure import Figure
        from matplotlib.gridspec import GridSpec
        fig = Figure(figsize=(10, 3.6), layout="constrained")
        gs = GridSpec(2, 4, figure=fig, width_ratios=(2.2, 2.2, 1, 1))
        ax = fig.add_subplot(gs[:, :2])
        _stack(ax, rec["pi"], rec["names"], step)
        t = np.arange(len(rec["pi"]))
        for k in range(K):
            ax.plot(t, np.cumsum(rec["rho"], 1)[:, k], color="k", lw=0.5, ls="--", alpha=0.5)
        title = (f"π(t) (dashed: cumulative ρ), step {step}: "
                 + ", ".join(f"{p:.2f}" for p in rec["pi"][min(step, len(t) - 1)]))
        if reference != "none":
            ref = records[reference]
            for edge in np.cumsum(ref["pi"][-1])[:-1]:
                ax.axhline(edge, color="w", lw=1.2, ls=":")
            title += (f"\ndotted: {reference} mixture; final mean excess {reference} "
                      f"{ref['excess'].mean():.4f}, ADO {rec['excess'].mean():.4f}")
        ax.set_title(title, fontsize=8)
        ax.legend(loc="upper left", fontsize=7, frameon=False, reverse=True)
        for k in range(K):
            _domain_panel(fig.add_subplot(gs[k // 2, 2 + k % 2]), rec, k, refits[step], step)
        stamp(fig, scale, seed, "right: loss − H vs n; dashed: fitted law")
        return fig

    steps = sorted(refits)[::every]
    return Explorer(render, {"step": steps, "reference": references},
                    title="ADO: mixture weights over training",
                    defaults={"step": steps[len(steps) // 2]})


def fitter_explorer(record: dict, domain: str, starts, ends, scale: str, seed: int) -> Explorer:
    """The scaling-law fitter on one domain's recorded loss: choose the window [start, end) of
    steps, see the fit (official procedure: smoothed, subsampled, multi-start) and its slope."""
    names = record["names"]
    k = names.index(_check.choice("domain", domain, names))
    loss = np.asarray(record["loss"])[:, k]
    n = np.asarray(record["n"])[:, k] if "n" in record else np.cumsum(np.asarray(record["counts"]).sum(1))
    H = record["entropies"][k]
    smoothed = ado.savgol(loss, 51)
    cache = {}

    def fit(a, b):
        if (a, b) not in cache:
            idx = np.arange(a, b, 5)
            cache[(a, b)] = (ado.fit_power_law(n[idx], smoothed[idx], bounds=ado.SYNTHETIC_BOUNDS)[0]
                             if len(idx) >= 5 else None)
        return cache[(a, b)]

    def render(start, end):
        fig, ax = figure(width=7.5, height=2.8)
        ax.plot(n, loss - H, color=_colour(k), lw=0.4, alpha=0.35, label="batch loss")
        ax.plot(n, smoothed - H, color=_colour(k), lw=1, label="smoothed")
        ax.axvspan(n[min(start, len(n) - 1)], n[min(end, len(n)) - 1], color="k", alpha=0.07, lw=0)
        law = fit(start, end) if end > start else None
        shown = smoothed[start:] - H
        pad = 0.1 * (shown.max() - shown.min()) + 1e-3
        ax.set_ylim(shown.min() - pad, shown.max() + pad)
        if law is not None:
            ax.plot(n[start:], law(n[start:]) - H, "k--", lw=1.2, label="fitted law")
            g = law.slope(n[end - 1], ado.SYNTHETIC_BOUNDS.alpha_min)
            ax.set_title(f"{domain}, window steps {start}–{end}: β = {law.beta:.3g}, ε = {law.eps:.3f}, "
                         f"α = {law.alpha:.3f}; slope·n at the window's end = {g * n[end - 1]:.4f}", fontsize=8)
        else:
            ax.set_title(f"{domain}: window {start}–{end} holds too few points to fit", fontsize=8)
        ax.set(xscale="log", xlabel="sequences seen n", ylabel="loss − entropy rate")
        ax.legend(frameon=False, fontsize=7)
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"start": list(starts), "end": list(ends)},
                    title=f"Scaling-law fitter: {domain}")


def sim_figure(sims: dict, scale: str, seed: int):
    """The simulated world: π(t) under ADO (fitted slopes) and each policy's final excess."""
    fig, axes = figure(ncols=2, width=10, height=2.6)
    rec = sims["ado"]
    _stack(axes[0], rec["pi"], rec["names"])
    axes[0].legend(loc="upper left", fontsize=7, frameon=False, reverse=True)
    axes[0].set_title("simulated world: ADO's π(t)")
    kinds = list(sims)
    axes[1].bar(kinds, [sims[k]["excess"].mean() for k in kinds],
                color=[POLICY_COLOURS.get(k, "#777777") for k in kinds])
    axes[1].set(ylabel="mean excess loss L − ε", title="final mean excess (known curves)")
    stamp(fig, scale, seed)
    return fig


def _fit_panel(ax, rec: dict, k: int, refit: ado.Refit, colour: str, label: str, alpha_min: float):
    """One domain's smoothed points as a refit saw them, and the law it fitted."""
    ax.plot(refit.n[k], refit.smoothed[k], ".", ms=2, color=colour)
    law = refit.laws[k]
    if law is not None:
        n = refit.n[k]
        ax.plot(n, law(n), color=colour, lw=1, ls="--",
                label=f"{label}: ε̂ {law.eps:.2f}, α̂ {law.alpha:.3f}, g·n {law.slope(n[-1], alpha_min) * n[-1]:.3f}")


def sim_contrast_figure(runs: dict, scale: str, note: str = ""):
    """Two seeds of the simulated world side by side, `runs` = {label: (seed, ADO record)}: per
    seed ADO's π(t), the `noise` domain's first and last fits, and every domain's slope g·n at
    each refit (α floored as in the config)."""
    if not 1 <= len(runs) <= 2:
        raise ValueError(f"runs must hold one or two seeds; got {len(runs)}")
    fig, axes = figure(ncols=3, nrows=len(runs), width=11, height=2.5 * len(runs))
    axes = np.atleast_2d(axes)
    for row, (label, (seed, rec)) in zip(axes, runs.items()):
        names, refits = rec["names"], [r for r in rec["refits"] if r.laws[0] is not None]
        _stack(row[0], rec["pi"], names)
        row[0].set_title(f"{label} (seed {seed}): π(t); final mean excess {rec['excess'].mean():.3f}",
                         fontsize=8)
        row[0].legend(loc="upper left", fontsize=6, frameon=False, reverse=True)
        alpha_min = rec["alpha_min"]
        for r, colour, what in ((refits[0], "#C44E52", f"refit at step {refits[0].step}"),
                                (refits[-1], "#4C72B0", f"refit at step {refits[-1].step}")):
            _fit_panel(row[1], rec, 0, r, colour, what, alpha_min)
        row[1].set(xscale="log", xlabel="samples seen n", ylabel="noise: smoothed loss")
        row[1].legend(fontsize=6, frameon=False)
        row[1].set_title("the flat domain (noise): points the fit saw, fitted law", fontsize=8)
        steps = [r.step for r in refits]
        for k, name in enumerate(names):
            gn = [r.laws[k].slope(r.n[k][-1], alpha_min) * r.n[k][-1] if r.laws[k] is not None else np.nan
                  for r in refits]
            row[2].plot(steps, gn, "o-", ms=2, color=_colour(k), label=name)
        row[2].set(yscale="log", xlabel="step of the refit", ylabel="slope g·n at the refit")
        row[2].legend(fontsize=6, frameon=False)
        row[2].set_title("each domain's slope as the policy reads it", fontsize=8)
    stamp(fig, scale, None, note)
    return fig


def delayed_figure(records: dict, domain: str, scale: str, seed: int):
    """The delayed-learning trap: `domain`'s training loss (minus its entropy rate, smoothed)
    under each policy, ADO's π(t), and every policy's final excess per domain."""
    first = next(iter(records.values()))
    k = first["names"].index(_check.choice("domain", domain, first["names"]))
    fig, axes = figure(ncols=3, width=11, height=2.7)
    for kind, rec in records.items():
        loss = ado.savgol(np.asarray(rec["loss"])[:, k], 51) - rec["entropies"][k]
        axes[0].plot(np.arange(1, len(loss) + 1), loss, color=POLICY_COLOURS.get(kind, "#777777"), label=kind)
    axes[0].set(xlabel="step", ylabel=f"{domain}: training loss − H (smoothed)")
    axes[0].legend(frameon=False, fontsize=7)
    axes[0].set_title(f"{domain}: flat for a while, then it falls", fontsize=8)
    rec = records["ado"]
    _stack(axes[1], rec["pi"], rec["names"])
    axes[1].legend(loc="upper left", fontsize=6, frameon=False, reverse=True)
    axes[1].set_title("ADO's π(t) on this world", fontsize=8)
    kinds = list(records)
    names = first["names"] + ["mean"]
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        ex_ = records[kind]["excess"]
        axes[2].bar(np.arange(len(names)) + (j - (len(kinds) - 1) / 2) * width, np.r_[ex_, ex_.mean()], width,
                    color=POLICY_COLOURS.get(kind, "#777777"), label=kind)
    axes[2].set_xticks(np.arange(len(names)), names, fontsize=7)
    axes[2].set(ylabel="validation loss − H")
    axes[2].set_title("final excess loss, same budget", fontsize=8)
    axes[2].legend(frameon=False, fontsize=7)
    stamp(fig, scale, seed)
    return fig


def knobs_explorer(sim, seeds, scale: str, *, alpha_mins=(0.0, 0.05),
                   windows=(101, 201)) -> Explorer:
    """The policy's knobs on the simulated world, fits and all (about a second a setting):
    the world's seed (one where claim C5 holds and one where it fails), the floor on the fitted
    exponent (one of the fit's bounds) and the smoothing window the fits read. Each setting
    shows ADO's π(t) and its final mean excess against uniform's and natural's on that seed."""
    from . import experiments as ex

    seeds = [_check.integer("seeds", s, low=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed of the simulated world")
    names, prior = [d.name for d in ex.SIM_WORLD], [d.prior for d in ex.SIM_WORLD]
    fixed = {seed: ex.sim_policies(sim, seed, kinds=("natural", "uniform")) for seed in seeds}

    def render(seed, floor, window):
        config = dataclasses.replace(sim.ado, savgol_window=window,
                                     bounds=dataclasses.replace(sim.ado.bounds, alpha_min=floor))
        rec = ex.simulate(ado.make_policy("ado", names, prior, config), cfg=sim, seed=seed)
        sims = {**fixed[seed], "ado": rec}
        fig, axes = figure(ncols=2, width=9, height=2.7, gridspec_kw={"width_ratios": (2.2, 1)})
        _stack(axes[0], rec["pi"], names)
        axes[0].legend(loc="upper left", fontsize=9, frameon=False, reverse=True)
        verdict = "C5 holds" if ex.sim_claim_holds(sims) else "C5 fails"
        axes[0].set_title(f"ADO's π(t): {verdict}; final π(hard) {rec['pi'][-1][-1]:.2f}", fontsize=10)
        kinds = list(sims)
        axes[1].bar(kinds, [sims[k]["excess"].mean() for k in kinds],
                    color=[POLICY_COLOURS.get(k, "#777777") for k in kinds])
        axes[1].set(ylabel="mean excess L − ε")
        axes[1].set_title("final mean excess", fontsize=10)
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"seed": seeds, "floor": list(alpha_mins), "window": list(windows)},
                    title="Knobs of the policy (simulated world, fitted laws)",
                    defaults={"floor": sim.ado.bounds.alpha_min}
                    if sim.ado.bounds.alpha_min in alpha_mins else None)
