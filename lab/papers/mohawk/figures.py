"""Figures and explorers of the MOHAWK chapter: the stages' losses, the teacher's attention beside
the student's materialised matrix during stage 1, which matrix class fits an attention map, the
student's decays before and after stage 1, the arms of the budget worlds, the token-budget
allocator, and a stage-1 fit to a real Phi layer."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.patches import Rectangle

from ... import _check
from ...viz.explorer import Explorer
from ...viz.maps import causal_heatmap, colour_top
from ...viz.style import PALETTE, figure, stamp
from . import method as mm

ARM_LABELS = {"mohawk": "MOHAWK (1+2+3)", "stages_13": "stages 1+3", "stages_23": "stages 2+3",
              "kd_transfer": "KD after transfer", "kd_scratch": "KD from scratch"}
ARM_SHORT = {"mohawk": "1+2+3", "stages_13": "1+3", "stages_23": "2+3", "kd_transfer": "3, transfer",
             "kd_scratch": "3, scratch"}
ARM_COLOURS = {"mohawk": PALETTE["accent"], "stages_13": "#DD8452", "stages_23": "#8172B3",
               "kd_transfer": "#4C72B0", "kd_scratch": PALETTE["grey"]}
CLASS_LABELS = {"ssd": "SSD (semiseparable)", "linear_attention": "linear attention",
                "toeplitz": "causal Toeplitz", "low_rank": "causal low-rank"}


def stages_figure(run, scale: str, seed: int):
    """Left: each stage's training loss against its steps. Right: stage 1's per-layer Frobenius
    error ‖T_S − A‖_F on the probe sequences against stage-1 steps."""
    fig, (ax1, ax2) = figure(2, width=9, height=3.2)
    offset = 0
    for stage in (1, 2, 3):
        losses = run.losses.get(stage)
        if not losses:
            continue
        steps = np.arange(offset + 1, offset + len(losses) + 1)
        ax1.plot(steps, losses, label=f"stage {stage}")
        offset += len(losses)
    ax1.set(xlabel="student step", ylabel="stage loss", yscale="log", title="the three stages' losses")
    ax1.legend(fontsize=9)
    steps = [s for s, _ in run.frob_curve]
    per_layer = np.array([v for _, v in run.frob_curve])
    for layer in range(per_layer.shape[1]):
        ax2.plot(steps, per_layer[:, layer], marker="o", ms=3, label=f"layer {layer}")
    ax2.set(xlabel="stage-1 step", ylabel="mean ‖T_S − A‖_F", ylim=(0, None),
            title="matrix orientation (stage 1)")
    ax2.legend(fontsize=9)
    stamp(fig, scale, seed)
    return fig


def matrix_explorer(run, teacher_maps: list[torch.Tensor], scale: str, seed: int) -> Explorer:
    """Teacher vs student matrix: pick a layer, a head (the first four) and a stage-1 step; panels
    A, T_S, |A − T_S| (one probe sequence) and the per-layer Frobenius curve with the step marked."""
    if not run.maps:
        raise ValueError("run must be a MOHAWK arm with stage-1 snapshots (run.maps is empty)")
    steps = [s for s, _ in run.maps]
    n_layers, n_heads = len(teacher_maps), min(4, teacher_maps[0].shape[0])
    curve_steps = [s for s, _ in run.frob_curve]
    curve = np.array([v for _, v in run.frob_curve])

    def render(layer, head, step):
        fig, axes = figure(4, width=9, height=2.6)
        A = teacher_maps[layer][head].numpy()
        S = dict(run.maps)[step][layer][head].numpy()
        top = colour_top("log", [A, S])
        causal_heatmap(axes[0], A, f"teacher A · layer {layer} · head {head}", "log", top)
        causal_heatmap(axes[1], S, f"student T_S · step {step}", "log", top)
        im = causal_heatmap(axes[2], np.abs(A - S), f"|A − T_S| · ‖·‖_F = {np.linalg.norm(A - S):.2f}",
                            "log", top)
        fig.colorbar(im, ax=axes[:3], shrink=0.7, label="log₁₀|·|")
        for lay in range(n_layers):
            axes[3].plot(curve_steps, curve[:, lay], lw=2 if lay == layer else 1,
                         alpha=1 if lay == layer else 0.5, label=f"layer {lay}")
        axes[3].axvline(step, color="black", lw=0.8, ls=":")
        axes[3].set(xlabel="stage-1 step", ylim=(0, None), title="mean ‖T_S − A‖_F")
        axes[3].legend(fontsize=9)
        stamp(fig, scale, seed, "one probe sequence; the curve: mean over the probe batch and heads")
        return fig

    return Explorer(render, {"layer": list(range(n_layers)), "head": list(range(n_heads)), "step": steps},
                    title="Teacher attention vs student SSD matrix during matrix orientation",
                    defaults={"step": steps[-1]}, dpi=72)


def pick_maps(teacher_maps: list[torch.Tensor], count: int) -> list[tuple[int, int]]:
    """`count` (layer, head) pairs spread over the layers: head h of every layer in turn."""
    count = _check.integer("count", count, low=1)
    n_layers, n_heads = len(teacher_maps), teacher_maps[0].shape[0]
    pairs = [(layer, head) for head in range(n_heads) for layer in range(n_layers)]
    return pairs[:count]


def fit_classes(teacher_maps: list[torch.Tensor], count: int, rank: int, steps: int) -> dict:
    """Fit `count` teacher maps with every matrix class; rank `rank` for SSD and rank + 1 for
    linear attention and low-rank (so that they hold at least SSD's parameters). Returns
    {"pairs", "targets" (n, T, T), "fits": {cls: (n, T, T)}, "errors": {cls: (n,)}, "sizes"}."""
    pairs = pick_maps(teacher_maps, count)
    targets = torch.stack([teacher_maps[layer][head] for layer, head in pairs]).double()
    T = targets.shape[-1]
    fits, errors, sizes = {}, {}, {}
    for cls in mm.MATRIX_CLASSES:
        r = rank if cls == "ssd" else rank + 1
        fits[cls], errors[cls] = mm.fit_class(targets, cls, r, steps)
        sizes[cls] = mm.class_size(cls, T, r)
    return {"pairs": pairs, "targets": targets, "fits": fits, "errors": errors, "sizes": sizes}


def class_explorer(fits: dict, scale: str, seed: int) -> Explorer:
    """Which matrix class fits this attention? One teacher map beside its best fit in each class,
    with the relative Frobenius error and the number of parameters."""
    names = [f"layer {layer} · head {head}" for layer, head in fits["pairs"]]

    def render(attention_map):
        i = names.index(attention_map)
        fig, axes = figure(5, width=9, height=2.3)
        A = fits["targets"][i].numpy()
        shown = [A] + [fits["fits"][cls][i].numpy() for cls in mm.MATRIX_CLASSES]
        top = colour_top("log", shown)
        causal_heatmap(axes[0], A, f"teacher · {attention_map}", "log", top)
        for ax, cls, M in zip(axes[1:], mm.MATRIX_CLASSES, shown[1:]):
            err = float(fits["errors"][cls][i])
            causal_heatmap(ax, M, f"{CLASS_LABELS[cls]}\n{fits['sizes'][cls]} params · err {err:.2f}",
                           "log", top)
        stamp(fig, scale, seed, "err = ‖fit − A‖_F / ‖A‖_F after Adam on the Frobenius loss")
        return fig

    return Explorer(render, {"attention_map": names}, title="Which matrix class can fit this attention?",
                    dpi=72)


def class_errors_figure(fits: dict, scale: str, seed: int):
    """Relative Frobenius error of each class on each fitted map (bars)."""
    fig, ax = figure(1, width=8, height=3)
    n = len(fits["pairs"])
    width = 0.8 / len(mm.MATRIX_CLASSES)
    for k, cls in enumerate(mm.MATRIX_CLASSES):
        ax.bar(np.arange(n) + k * width, fits["errors"][cls].numpy(), width,
               label=f"{CLASS_LABELS[cls]} ({fits['sizes'][cls]} params)")
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [f"L{la} H{h}" for la, h in fits["pairs"]])
    ax.set(ylabel="‖fit − A‖_F / ‖A‖_F", ylim=(0, None), title="fitting teacher attention maps")
    ax.legend(fontsize=9)
    stamp(fig, scale, seed)
    return fig


def decay_explorer(run, scale: str, seed: int) -> Explorer:
    """α_{t,h} along one probe sequence, per head, before and after stage 1, one layer at a time."""
    n_layers = len(run.decays["before"])

    def render(layer):
        fig, axes = figure(2, width=9, height=2.8)
        for ax, when in zip(axes, ("before", "after")):
            alpha = run.decays[when][layer].numpy()
            for h in range(alpha.shape[1]):
                ax.plot(alpha[:, h], label=f"head {h}")
            ax.set(xlabel="token t", ylabel="α_t", ylim=(0, 1.02),
                   title=f"layer {layer} · {when} stage 1")
        axes[0].legend(fontsize=9, loc="lower left")
        stamp(fig, scale, seed, "α = how much of its state a head keeps at token t; one probe sequence")
        return fig

    return Explorer(render, {"layer": list(range(n_layers))}, title="Decay view: what the student keeps",
                    dpi=72)


def arms_figure(results: dict, domains: tuple[str, ...], scale: str, seed: int):
    """KL(teacher ‖ student) per domain for each arm and schedule of a budget world."""
    keys = sorted(results, key=lambda k: (k[1], list(ARM_LABELS).index(k[0])))
    fig, axes = figure(len(domains), width=9, height=3.2)
    axes = np.atleast_1d(axes)
    for ax, dom in zip(axes, domains):
        vals = [results[k].final[f"kl_{dom}"] for k in keys]
        colours = [ARM_COLOURS[a] for a, _ in keys]
        hatches = ["" if s == "onecycle" else "//" for _, s in keys]
        bars = ax.bar(range(len(keys)), vals, color=colours)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        ax.set_xticks(range(len(keys)), [ARM_SHORT[a] for a, _ in keys], fontsize=8, rotation=90)
        ax.set(ylabel="KL per token", title=f"domain: {dom}")
    if any(s != "onecycle" for _, s in keys):
        stamp(fig, scale, seed, "stages run by each arm; hatched: per-stage warmup–stable–decay")
    else:
        stamp(fig, scale, seed, "stages run by each arm; OneCycle")
    return fig


def allocator_explorer(grid: dict, scratch, domains: tuple[str, ...], scale: str, seed: int) -> Explorer:
    """The token-budget allocator: pick how many of the fixed budget's steps go to stage 1 and to
    stage 2 (stage 3 gets the rest). Left: the summed KL of every split that was run, the pick
    outlined; right: the pick's KL per domain beside KD from scratch (`scratch`, or None)."""
    if not grid:
        raise ValueError("grid must hold at least one run ({(s1, s2, s3): ArmResult})")
    budgets = {sum(k) for k in grid}
    if len(budgets) != 1:
        raise ValueError(f"grid must hold splits of one budget; got budgets {sorted(budgets)}")
    budget = budgets.pop()
    s1s, s2s = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})

    def total(r):
        return sum(r.final[f"kl_{d}"] for d in domains)

    table = np.full((len(s1s), len(s2s)), np.nan)
    for (a, b, _), r in grid.items():
        table[s1s.index(a), s2s.index(b)] = total(r)

    def render(stage_1, stage_2):
        fig, (ax1, ax2) = figure(2, width=9, height=3.2)
        im = ax1.imshow(table, cmap="viridis_r", origin="lower", aspect="auto")
        for i in range(len(s1s)):
            for j in range(len(s2s)):
                text = "not run" if np.isnan(table[i, j]) else f"{table[i, j]:.3f}"
                ax1.text(j, i, text, ha="center", va="center", fontsize=9, color="white",
                         bbox={"facecolor": "black", "alpha": 0.4, "lw": 0, "pad": 1})
        i, j = s1s.index(stage_1), s2s.index(stage_2)
        ax1.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=3, ec=PALETTE["accent"]))
        ax1.set_xticks(range(len(s2s)), s2s)
        ax1.set_yticks(range(len(s1s)), s1s)
        ax1.set(xlabel="stage-2 steps", ylabel="stage-1 steps", title=f"summed KL, budget {budget}")
        fig.colorbar(im, ax=ax1, shrink=0.8)
        run = grid.get((stage_1, stage_2, budget - stage_1 - stage_2))
        x = np.arange(len(domains))
        if run is None:
            ax2.text(0.5, 0.5, "this split was not run\nat this scale", ha="center", va="center",
                     transform=ax2.transAxes)
        else:
            ax2.bar(x - 0.2, [run.final[f"kl_{d}"] for d in domains], 0.4, color=PALETTE["accent"],
                    label=f"split {stage_1}/{stage_2}/{budget - stage_1 - stage_2}")
        if scratch is not None:
            ax2.bar(x + 0.2, [scratch.final[f"kl_{d}"] for d in domains], 0.4,
                    color=ARM_COLOURS["kd_scratch"], label="KD from scratch")
        ax2.set_xticks(x, domains)
        ax2.set(ylabel="KL per token", title="KL per domain")
        ax2.legend(fontsize=9)
        stamp(fig, scale, seed, "every split starts from the transferred weights; OneCycle per stage")
        return fig

    return Explorer(render, {"stage_1": s1s, "stage_2": s2s},
                    title="Token-budget allocator: stage 1 and 2 steps at a fixed budget",
                    defaults={"stage_1": s1s[-1], "stage_2": s2s[-1]}, dpi=72)


def phi_stage1_figure(model, tokens: torch.Tensor, layer: int, head: int = 0, steps: int = 100,
                      scale: str = "gpu", seed: int = 0, **fit_kw):
    """A real Phi layer's attention A (one head, first sequence of `tokens`) beside a fresh discrete
    Mamba-2 mixer's T_S after `steps` steps of stage 1 on that layer, and the stage-1 loss."""
    from .experiments import phi_stage1, phi_trace
    mixer, losses = phi_stage1(model, tokens, layer, steps=steps, seed=seed, **fit_kw)
    inputs, maps = phi_trace(model, tokens[:1])
    head = _check.integer("head", head, low=0, high=maps[layer].shape[1] - 1)
    with torch.no_grad():
        A = maps[layer][0, head].float().numpy()
        S = mixer.mixing_matrix(inputs[layer])[0, head].numpy()
    fig, axes = figure(3, width=9, height=2.8)
    top = colour_top("log", [A, S])
    causal_heatmap(axes[0], A, f"Phi · layer {layer} · head {head}", "log", top)
    causal_heatmap(axes[1], S, f"student T_S after {steps} steps", "log", top)
    axes[2].plot(np.arange(1, len(losses) + 1), losses)
    axes[2].set(xlabel="stage-1 step", ylabel="mean ‖T_S − A‖_F", yscale="log", title="stage-1 loss")
    stamp(fig, scale, seed, "one layer fitted alone, fed Phi's own input to it")
    return fig
