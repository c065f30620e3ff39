"""Figures, tables and explorers of the prompt-recovery chapter."""
from __future__ import annotations

import numpy as np
import torch

from ... import _check, discrete
from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp
from . import experiments as ex
from . import method as pr

SOURCE_COLOURS = {ex.TRUTH: "#222222", ex.CAPTIONER: PALETTE["oracle"], "PEZ": "#4C72B0",
                  "GCG": PALETTE["accent"], "random search": "#DD8452",
                  "AutoDAN, greedy": "#8172B3", "AutoDAN, beam 4": "#937860",
                  "AutoDAN + LM, greedy": "#DA8BC3", "AutoDAN + LM, beam 4": "#8C8C8C"}
COLUMNS = {"proxy": "proxy ↑", "regen_proxy": "regen cos ↑", "regen_evaluator": "regen cos, indep. ↑",
           "regen_mse": "regen MSE ↓", "regen_attr": "regen attr. acc.", "recall": "attr. recall",
           "word_recall": "word recall", "order": "order sim ↑"}
REPLAY = {"PEZ": "pez", "GCG": "gcg", "random search": "random", "AutoDAN + LM, beam 4": "autodan"}


def _show(images) -> np.ndarray:
    return np.clip(torch.as_tensor(images).permute(0, 2, 3, 1).numpy(), 0, 1)


class Table:
    """A Markdown table: rows of named values (numbers formatted, text kept)."""

    def __init__(self, head: list[str], rows: list[list]):
        self.head, self.rows = head, rows

    def markdown(self) -> str:
        cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
        lines = ["| " + " | ".join(self.head) + " |", "|---" * len(self.head) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in self.rows]
        return "\n".join(lines)

    _repr_markdown_ = markdown

    def __repr__(self) -> str:
        return self.markdown()


def results_table(scores: dict) -> Table:
    """Mean of every metric per prompt source (the chapter's main table)."""
    mu = ex.means(scores)
    keys = [k for k in COLUMNS if k in next(iter(mu.values()))]
    return Table(["prompt source"] + [COLUMNS[k] for k in keys],
                 [[s] + [m[k] for k in keys] for s, m in mu.items()])


def prompts_table(prompts: dict, targets: ex.Targets, n: int = 4) -> Table:
    """The prompts each source gives for the first `n` targets."""
    return Table(["source"] + [f"target {i}" for i in range(n)],
                 [[s] + [f"`{t}`" for t in texts[:n]] for s, texts in prompts.items()])


def budget_table(recovered: dict) -> Table:
    rows = ex.budget_table(recovered)
    return Table(["optimiser", "evaluations / target", "gradient passes / target",
                  "CPU s / target", "wall s / target"],
                 [[k, f"{v['evaluations']:.0f}", f"{v['gradient passes']:.0f}", v["CPU s"],
                   v["wall s"]] for k, v in rows.items()])


def regeneration_figure(targets: ex.Targets, scores: dict, scale: str, seed: int,
                        sources=(ex.TRUTH, ex.CAPTIONER, "PEZ", "GCG", "random search"), n=6):
    """Targets (top row) and the images regenerated from each source's prompt."""
    n = min(n, len(targets.images))
    fig, axes = figure(n, len(sources) + 1, width=7.5, height=1.25 * (len(sources) + 1))
    rows = [("target", targets.images[:n])] + [(s, scores[s]["images"][:n]) for s in sources]
    for r, (name, imgs) in enumerate(rows):
        for c, img in enumerate(_show(imgs)):
            ax = axes[r, c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name.replace("ground-truth caption", "truth"), fontsize=9)
    stamp(fig, scale, seed)
    return fig


def thesis_figure(scores: dict, scale: str, seed: int, metric: str = "regen_proxy"):
    """The thesis scatter: proxy cosine against regenerated-image cosine, one point per
    (target, source), source means as large markers, the truth's mean regeneration as a line."""
    _check.choice("metric", metric, ("regen_proxy", "regen_evaluator", "regen_mse"))
    fig, ax = figure(1, 1, width=7.5, height=4.2)
    for s, m in scores.items():
        colour = SOURCE_COLOURS.get(s, "#999999")
        ax.scatter(m["proxy"], m[metric], s=14, color=colour, alpha=0.45)
        ax.scatter([m["proxy"].mean()], [m[metric].mean()], s=90, color=colour,
                   edgecolor="black", label=s)
    ax.axhline(float(scores[ex.TRUTH][metric].mean()), color="#222222", ls=":", lw=1)
    ax.set_xlabel("proxy: cos(text of the prompt, target image)")
    ax.set_ylabel({"regen_proxy": "cos(regenerated, target)", "regen_mse": "pixel MSE",
                   "regen_evaluator": "cos(regenerated, target), indep."}[metric])
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    stamp(fig, scale, seed)
    return fig


# ---------------------------------------------------------------------------------------------
# Explorer 1: optimiser replay
# ---------------------------------------------------------------------------------------------
PROGRESS = (0, 20, 40, 60, 80, 100)


def replay_figure(recovered: dict, targets: ex.Targets, generator, clip, name: str,
                  target: int, progress: int, scale: str, seed: int):
    """One optimiser on one target at `progress` % of its run: the prompt at that step, the
    proxy-loss curve with the best so far, the target and the image regenerated from the prompt."""
    _check.choice("name", name, recovered)
    trace = recovered[name][target].trace
    if trace is None:
        raise ValueError(f"target {target} has no stored trace (cfg.traced_targets)")
    _check.integer("progress", progress, low=0, high=100)
    step = max(1, round(progress / 100 * len(trace)))
    entry = trace[step - 1]
    text = ex.decode(clip, entry["tokens"])
    fig, axes = figure(3, 1, width=9, height=2.9, gridspec_kw={"width_ratios": [3, 1, 1]})
    steps = [e["step"] for e in trace]
    axes[0].plot(steps, [e["loss"] for e in trace], color=PALETTE["grey"], lw=1, label="iterate")
    axes[0].plot(steps, [e["best_loss"] for e in trace], color=PALETTE["accent"], lw=1.5,
                 label="best so far")
    axes[0].axvline(step, color="black", lw=0.8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("proxy loss 1 − cos")
    axes[0].legend(fontsize=9)
    axes[0].set_title(f"{name}, step {step}: “{text}”", fontsize=9, loc="left")
    regen = ex.draw(generator, clip, [text], targets)
    for ax, img, title in ((axes[1], targets.images[target:target + 1], "target"),
                           (axes[2], regen, "regenerated")):
        ax.imshow(_show(img)[0])
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    stamp(fig, scale, seed, f"true: “{targets.captions[target]}”")
    return fig


def replay_names(recovered: dict) -> tuple[str, ...]:
    """The optimisers the replay offers: those of :data:`REPLAY` that ran (at a hub scale,
    where AutoDAN runs without the prior, "AutoDAN, beam 4" in its place)."""
    names = [n for n in REPLAY if n in recovered]
    if "AutoDAN + LM, beam 4" not in recovered and "AutoDAN, beam 4" in recovered:
        names.append("AutoDAN, beam 4")
    return tuple(names)


def replay_explorer(recovered, targets, generator, clip, scale: str, seed: int,
                    names=None) -> Explorer:
    names = replay_names(recovered) if names is None else tuple(names)
    traced = [i for i in range(len(targets.images)) if recovered[names[0]][i].trace is not None]
    return Explorer(lambda optimiser, target, progress: replay_figure(
        recovered, targets, generator, clip, optimiser, target, progress, scale, seed),
        {"optimiser": list(names), "target": traced, "progress": list(PROGRESS)},
        title="Optimiser replay: the prompt, the proxy loss and the regenerated image",
        defaults={"progress": 100})


# ---------------------------------------------------------------------------------------------
# Explorer 2: is the gradient right?
# ---------------------------------------------------------------------------------------------
def swap_maps(objective: pr.ProxyObjective, tokens) -> dict:
    """Exact change of every single swap to the tokens the objective shows (every free word at
    tiny scale, 48 drawn tokens of a hub CLIP's vocabulary), its first-order estimate and the
    rank correlation."""
    tokens = torch.as_tensor(tokens).long().cpu()
    shown = list(objective.shown)
    g = objective.grad(tokens)
    est = discrete.swap_estimates(g, tokens)[:, shown].double()
    exact = discrete.exact_swap_changes(objective.loss, tokens, objective.vocab,
                                        allowed=shown)[:, shown]
    keep = torch.ones_like(est, dtype=torch.bool)
    for i, t in enumerate(tokens.tolist()):
        if t in shown:
            keep[i, shown.index(t)] = False
    rho = pr.spearman(est[keep], exact.double()[keep])
    return {"tokens": tokens, "grad": g, "estimate": est, "exact": exact.double(), "rho": rho,
            "shown": shown, "allowed": list(objective.allowed), "decode": objective.decode}


def gradient_figure(maps: dict, k: int, scale: str, seed: int):
    """Positions × words heat maps of the exact Δℓ and the first-order estimate, with each
    position's top-k shortlist outlined and the rank correlation in the title."""
    shown, decode = maps["shown"], maps["decode"]
    _check.integer("k", k, low=1, high=len(maps["allowed"]) - 1)
    words = [decode([t]) for t in shown]
    tokens = maps["tokens"]
    g = maps["grad"].clone()
    g[torch.arange(len(tokens)), tokens] = float("inf")
    short = discrete.shortlist(g, k, maps["allowed"])
    fig, axes = figure(1, 2, width=9, height=4.6, sharex=True)
    for ax, key, title in ((axes[0], "exact", "exact change of ℓ"),
                           (axes[1], "estimate", "first-order estimate G[i,v] − G[i,u]")):
        m = maps[key].numpy()
        lim = float(np.nanmax(np.abs(m)))
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        for i, row in enumerate(short.tolist()):
            for v in row:
                if v in shown:
                    ax.add_patch(_box(shown.index(v), i))
        ax.set_yticks(range(len(tokens)), [f"{i}: {decode([t])}" for i, t in enumerate(tokens)],
                      fontsize=9)
        ax.set_title(title, fontsize=9, loc="left")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[1].set_xticks(range(len(words)), words, rotation=90, fontsize=9)
    fig.suptitle(f"prompt “{decode(tokens)}”: Spearman ρ(estimate, exact) = "
                 f"{maps['rho']:.2f}; boxes = top-{k} shortlist per position", fontsize=9)
    stamp(fig, scale, seed)
    return fig


def _box(j, i):
    from matplotlib.patches import Rectangle
    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.2)


def gradient_explorer(objective: pr.ProxyObjective, prompts: dict, k: int, scale: str,
                      seed: int) -> Explorer:
    maps = {name: swap_maps(objective, t) for name, t in prompts.items()}
    return Explorer(lambda prompt: gradient_figure(maps[prompt], k, scale, seed),
                    {"prompt": list(maps)}, title="Is the gradient right? Exact swaps vs the "
                    "first-order estimate")


# ---------------------------------------------------------------------------------------------
# Explorer 3: PEZ in embedding space
# ---------------------------------------------------------------------------------------------
def pez_figure(trace: list[dict], objective, step: int, scale: str, seed: int):
    """PCA of the unit-norm embeddings of the words the objective shows (the projection is by
    cosine; every free word at tiny scale) with the soft rows' paths up to `step`; each row is
    joined to the word it snaps to."""
    _check.integer("step", step, low=1, high=len(trace))
    table, decode = objective.table.detach().cpu(), objective.decode
    snapped = trace[step - 1]["tokens"].cpu()
    shown = list(objective.shown)
    shown += [t for t in dict.fromkeys(snapped.tolist()) if t not in shown]
    words = torch.nn.functional.normalize(table[shown].double(), dim=1)
    mean = words.mean(0)
    _, _, V = torch.linalg.svd(words - mean, full_matrices=False)
    proj = lambda x: ((torch.nn.functional.normalize(x.double(), dim=-1) - mean) @ V[:2].T).numpy()
    w2 = proj(table[shown])
    fig, ax = figure(1, 1, width=8, height=5.2)
    ax.scatter(w2[:, 0], w2[:, 1], s=10, color=PALETTE["grey"])
    for (x, y), t in zip(w2, shown, strict=True):
        ax.annotate(decode([t]), (x, y), fontsize=9, color="#555555")
    path = np.stack([proj(e["soft"].cpu()) for e in trace[:step]])      # (step, s, 2)
    colours = [PALETTE["in"], PALETTE["accent"], PALETTE["oracle"], "#DD8452", "#8172B3",
               "#937860", "#DA8BC3", "#222222"]
    for i in range(path.shape[1]):
        c = colours[i % len(colours)]
        ax.plot(path[:, i, 0], path[:, i, 1], color=c, lw=1, alpha=0.8)
        ax.scatter(path[-1, i, 0], path[-1, i, 1], color=c, s=40, marker="s", label=f"row {i}")
        tgt = w2[shown.index(int(snapped[i]))]
        ax.plot([path[-1, i, 0], tgt[0]], [path[-1, i, 1], tgt[1]], color=c, ls=":", lw=1)
    ax.set_title(f"PEZ step {step}: “{decode(snapped)}” (loss {trace[step - 1]['loss']:.3f})",
                 fontsize=9, loc="left")
    ax.set_xlabel("PC 1 of the unit word embeddings")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    stamp(fig, scale, seed)
    return fig


def pez_explorer(trace: list[dict], objective, scale: str, seed: int) -> Explorer:
    n = len(trace)
    steps = sorted({1, *(max(1, round(f * n)) for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0))})
    return Explorer(lambda step: pez_figure(trace, objective, step, scale, seed), {"step": steps},
                    title="PEZ in embedding space: soft rows and the words they snap to",
                    defaults={"step": steps[-1]})
