"""Figures and explorers of the clip-differences chapter (PC-CLIP on the shapes world)."""
from __future__ import annotations

import math
import textwrap

import numpy as np

from ...data import shapes
from ...metrics import auroc
from ...pretrained import image_embeddings
from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp
from . import method as cd

MODEL_COLOURS = {"base": PALETTE["grey"], "PC-CLIP": PALETTE["accent"]}
METRICS = {"direction_accuracy": "direction accuracy", "size_auc": "size-ranking AUC",
           "zero_shot": "96-way zero-shot", "colour_zero_shot": "colour zero-shot ('a red')",
           "retrieval_at_1": "retrieval@1 (500 pairs)"}
# comparative sentence → (attribute column, value that should rank first)
RANK_TEXTS = {
    "the first is larger than the second": (2, shapes.SIZES.index("large")),
    "the first is smaller than the second": (2, shapes.SIZES.index("small")),
    "the first is more to the left": (3, shapes.POSITIONS.index("left")),
    "the first is more to the right": (3, shapes.POSITIONS.index("right")),
    "the first is red while the second is blue": (1, shapes.COLOUR_NAMES.index("red")),
    "the first is a cross while the second is a circle": (0, shapes.SHAPES.index("cross")),
}


def _show(ax, image):
    ax.imshow(np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def world_figure(images, captions, scale: str, seed: int, n: int = 8):
    """The first n images of a batch with their captions."""
    fig, axes = figure(n, 1, width=1.25 * n, height=1.9)
    for ax, img, cap in zip(axes, images, captions):
        _show(ax, img)
        ax.set_title(cap.replace(" on the", "\non the"), fontsize=7)
    stamp(fig, scale, seed)
    return fig


def loss_figure(clip_losses, pc_losses, batch: int, scale: str, seed: int):
    """Training curves: the tiny CLIP's contrastive loss (None for a loaded CLIP) and PC-CLIP's
    loss with chance and floor."""
    fig, (ax1, ax2) = figure(2, 1, width=9, height=2.8)
    if clip_losses is not None:
        ax1.plot(np.asarray(clip_losses), color=PALETTE["learned"], lw=0.8)
        ax1.set(xlabel="step", ylabel="CLIP loss", title="tiny CLIP, contrastive pretraining")
    else:
        ax1.axis("off")
        ax1.text(0.5, 0.5, "pretrained CLIP loaded\n(no pretraining curve)", ha="center", va="center")
    ax2.plot(np.asarray(pc_losses), color=PALETTE["accent"], lw=0.8)
    ax2.axhline(math.log(batch), color=PALETTE["grey"], ls="--", lw=0.8, label="chance log B")
    ax2.axhline(loss_floor(batch, 1.0), color=PALETTE["oracle"], ls=":", lw=1,
                label="floor log(1+(B−1)/e)")
    ax2.set(xlabel="step", ylabel="PC loss (τ = 1)", title="PC-CLIP finetuning (text blocks only)")
    ax2.legend(fontsize=7)
    stamp(fig, scale, seed)
    return fig


def loss_floor(batch: int, temperature: float) -> float:
    """Loss with perfectly aligned, mutually orthogonal pairs: log(1 + (B − 1)·e^(−1/τ))."""
    return math.log(1 + (batch - 1) * math.exp(-1 / temperature))


class MetricsTable:
    """Before/after table of the chapter's metrics (Markdown in notebooks, text elsewhere)."""

    def __init__(self, rows: dict[str, dict]):
        self.rows = rows

    def markdown(self) -> str:
        head = "| model | " + " | ".join(METRICS.values()) + " |"
        sep = "|---" * (len(METRICS) + 1) + "|"
        body = ["| " + name + " | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |"
                for name, m in self.rows.items()]
        return "\n".join([head, sep] + body)

    _repr_markdown_ = markdown

    def __repr__(self) -> str:
        return self.markdown()


def prompting_figure(base_result: dict, pc_result: dict, scale: str, seed: int):
    """Comparative prompting: accuracy on the affected classes against α, base and PC-CLIP."""
    fig, ax = figure(1, 1, width=5.5, height=3)
    for name, res in (("base", base_result), ("PC-CLIP", pc_result)):
        alphas = sorted(res["accuracy"])
        ax.plot(alphas, [res["accuracy"][a] for a in alphas], "o-", color=MODEL_COLOURS[name],
                label=f"{name}: pairs {res['pairs']}")
    ax.set(xlabel="α (1 = plain zero-shot)", ylabel="accuracy on affected classes",
           title="comparative prompting, colour zero-shot")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    stamp(fig, scale, seed)
    return fig


def averaging_figure(curve: dict, scale: str, seed: int, highlight: float | None = None):
    """Weight averaging θ = α·θ_ft + (1 − α)·θ_pre: zero-shot and direction accuracy along α
    (left) and the trade-off between them (right)."""
    alphas = sorted(curve)
    zs = [curve[a]["zero_shot"] for a in alphas]
    da = [curve[a]["direction_accuracy"] for a in alphas]
    fig, (ax1, ax2) = figure(2, 1, width=9.5, height=3.3)
    ax1.plot(alphas, zs, "o-", color=PALETTE["learned"], ms=4, label="96-way zero-shot")
    ax1.plot(alphas, da, "s-", color=PALETTE["accent"], ms=4, label="direction accuracy")
    ax1.set(xlabel="α (0 = pretrained, 1 = PC-CLIP)", ylabel="accuracy", ylim=(0.45, 1.02))
    ax1.legend(fontsize=7, loc="lower left")
    ax2.plot(da, zs, "o-", color=PALETTE["learned"], ms=4)
    for a, x, y in zip(alphas, da, zs):
        ax2.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax2.set(xlabel="direction accuracy", ylabel="96-way zero-shot accuracy")
    if highlight is not None:
        m = curve[highlight]
        for ax in (ax1,):
            ax.axvline(highlight, color=PALETTE["grey"], lw=0.8, ls="--")
        ax2.plot(m["direction_accuracy"], m["zero_shot"], "o", ms=11, mfc="none", color=PALETTE["accent"])
        fig.suptitle(f"α = {highlight:g}: zero-shot {m['zero_shot']:.3f}, direction "
                     f"{m['direction_accuracy']:.3f}, size AUC {m['size_auc']:.3f}", fontsize=9)
    stamp(fig, scale, seed, "labels on the right: α")
    return fig


def averaging_explorer(curve: dict, scale: str, seed: int) -> Explorer:
    return Explorer(lambda alpha: averaging_figure(curve, scale, seed, alpha),
                    {"alpha": sorted(curve)}, title="The α sweep: weight averaging from base to PC-CLIP",
                    defaults={"alpha": 0.5} if 0.5 in curve else None)


# ---------------------------------------------------------------------------------------------
# Pair probe
# ---------------------------------------------------------------------------------------------
def single_swaps(anchor=(0, 0, 0, 0)) -> list[tuple[str, tuple, tuple]]:
    """The 12 single-attribute swaps (label, a, b): each shape with the next one (4, cyclic),
    each colour with the next one (6, cyclic), small/large and left/right; the attributes that
    do not change are the anchor's. Every value of every attribute takes part."""
    anchor = tuple(int(x) for x in anchor)
    out = []
    for col, values in enumerate(shapes.ATTRIBUTES.values()):
        cycle = [(v, (v + 1) % len(values)) for v in range(len(values))] if len(values) > 2 \
            else [(0, 1)]
        for va, vb in cycle:
            a, b = list(anchor), list(anchor)
            a[col], b[col] = va, vb
            out.append((f"{values[va]} vs {values[vb]}", tuple(a), tuple(b)))
    return out


def single_clause_texts() -> list[str]:
    """Every one-clause difference text the world can write (2 size, 30 colour, 12 shape,
    2 position): the candidates the difference explorer ranks."""
    texts = []
    for col, values in enumerate(shapes.ATTRIBUTES.values()):
        for va in range(len(values)):
            for vb in range(len(values)):
                if va != vb:
                    a, b = [0, 0, 0, 0], [0, 0, 0, 0]
                    a[col], b[col] = va, vb
                    texts.append(shapes.difference_clauses(a, b)[0])
    return list(dict.fromkeys(texts))


def pair_probe(models: dict, a, b, seed: int = 0, top: int = 5) -> dict:
    """Images of tuples a, b (rendered with `seed`), the difference text first minus second,
    cos(text, d̂) for each model, and each model's `top` best-scoring one-clause texts."""
    rng = np.random.default_rng(seed)
    text = shapes.difference_caption(a, b, rng)
    images = shapes.render(np.array([a, b]), rng)
    candidates = single_clause_texts()
    cos, ranked = {}, {}
    for name, model in models.items():
        emb = image_embeddings(model, images)
        cos[name] = float(cd.difference_cosines(model, emb[:1], emb[1:], [text])[0])
        scores = cd.difference_cosines(model, emb[:1].expand(len(candidates), -1),
                                       emb[1:].expand(len(candidates), -1), candidates)
        order = np.argsort(-scores, kind="stable")[:top]
        ranked[name] = [(candidates[k], float(scores[k])) for k in order]
    return {"images": images, "text": text, "cosine": cos, "top": ranked}


def pair_figure(probe: dict, scale: str, seed: int):
    """The two images, cos(true text, d̂) per model, and each model's top difference texts."""
    names = list(probe["cosine"])
    fig = figure(1, 1, width=9, height=3.6 + 0.25 * len(names))[0]
    fig.clear()
    gs = fig.add_gridspec(2, 2 + 2 * len(names), height_ratios=[1, 1.1])
    for k, title in enumerate(("first", "second")):
        ax = fig.add_subplot(gs[0, k])
        _show(ax, probe["images"][k])
        ax.set_title(title, fontsize=8)
    ax = fig.add_subplot(gs[0, 2:])
    vals = [probe["cosine"][n] for n in names]
    ax.barh(names, vals, color=[MODEL_COLOURS.get(n, PALETTE["learned"]) for n in names])
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cos(text, normalised image difference)", fontsize=8)
    ax.set_title(textwrap.fill(f"true: “{probe['text']}”", 64), fontsize=8)
    for k, name in enumerate(names):
        ax = fig.add_subplot(gs[1, 2 * k + 1:2 * k + 3] if k else gs[1, :3])
        ax.axis("off")
        lines = [f"{c:+.2f}  {t.replace('the first is ', '… ')}" for t, c in probe["top"][name]]
        text = ax.text(0, 1, f"{name}: highest-scoring difference texts\n" + "\n".join(lines),
                       va="top", fontsize=7, family="monospace",
                       color="black" if name == "base" else PALETTE["accent"])
        text.set_in_layout(False)      # a long line may run past its column; keep the layout
    stamp(fig, scale, seed)
    return fig


def pair_explorer(models: dict, scale: str, seed: int) -> Explorer:
    """Embedding-difference explorer: pick one of the 12 single-attribute swaps and its order;
    see the images, the true difference text's cosine and each model's best-scoring texts."""
    swaps = {label: (a, b) for label, a, b in single_swaps()}
    cache = {}

    def render(pair, order):
        a, b = swaps[pair]
        if order == "second, first":
            a, b = b, a
        key = (pair, order)
        if key not in cache:
            cache[key] = pair_probe(models, a, b, seed)
        return pair_figure(cache[key], scale, seed)

    return Explorer(render, {"pair": list(swaps), "order": ["first, second", "second, first"]},
                    title="Embedding differences: which text points along the image difference?")


# ---------------------------------------------------------------------------------------------
# Ranker
# ---------------------------------------------------------------------------------------------
def ranking(model, images, attrs, text: str) -> dict:
    """Images sorted by cos(image, text); AUC for the attribute the sentence names (if known)."""
    scores = cd.rank_scores(model, image_embeddings(model, images), text)
    order = np.argsort(-scores, kind="stable")
    out = {"order": order, "scores": scores, "auc": None}
    if text in RANK_TEXTS:
        col, value = RANK_TEXTS[text]
        out["auc"] = auroc(scores, attrs[:, col] == value)
    return out


def ranking_figure(model, images, attrs, text: str, scale: str, seed: int, name: str = "",
                   n: int = 40):
    """The n images sorted by the comparative sentence, highest score first."""
    res = ranking(model, images[:n], attrs[:n], text)
    cols = 10
    fig, axes = figure(cols, math.ceil(n / cols), width=8, height=3.6)
    for ax, idx in zip(np.ravel(axes), res["order"]):
        _show(ax, images[idx])
        ax.set_title(f"{res['scores'][idx]:+.2f}", fontsize=6)
    auc = "" if res["auc"] is None else f" · AUC {res['auc']:.3f}"
    fig.suptitle(f"{name}: “{text}”{auc} (highest score first)", fontsize=9)
    stamp(fig, scale, seed)
    return fig


def ranker_explorer(models: dict, images, attrs, scale: str, seed: int) -> Explorer:
    return Explorer(lambda text, model: ranking_figure(models[model], images, attrs, text, scale,
                                                       seed, model),
                    {"text": list(RANK_TEXTS), "model": list(models)},
                    title="Ranker: one comparative sentence sorts the images")


# ---------------------------------------------------------------------------------------------
# Comparative prompting and the loss floor
# ---------------------------------------------------------------------------------------------
def confusion_figure(results: dict, alpha: float, scale: str, seed: int):
    """Colour confusion matrices of base and PC-CLIP at one α of comparative prompting."""
    fig, axes = figure(len(results), 1, width=8, height=3.4)
    names = shapes.COLOUR_NAMES
    for ax, (name, res) in zip(np.atleast_1d(axes), results.items()):
        conf = res["confusions"][alpha]
        ax.imshow(conf / conf.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        for (t, p), v in np.ndenumerate(conf):
            ax.text(p, t, str(v), ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{name}, α = {alpha:g}: affected-class acc {res['accuracy'][alpha]:.3f}")
    stamp(fig, scale, seed)
    return fig


def prompting_explorer(results: dict, alphas, scale: str, seed: int) -> Explorer:
    return Explorer(lambda alpha: confusion_figure(results, alpha, scale, seed),
                    {"alpha": list(alphas)}, title="Comparative prompting: confusions against α")


def loss_floor_figure(temperature: float, batch: int, scale: str = "", seed: int | None = None):
    """Chance log B and the aligned-orthogonal floor log(1 + (B − 1)e^(−1/τ)) against B."""
    bs = np.arange(2, 1025)
    fig, ax = figure(1, 1, width=5.5, height=3)
    ax.plot(bs, np.log(bs), color=PALETTE["grey"], label="chance log B")
    ax.plot(bs, [loss_floor(b, temperature) for b in bs], color=PALETTE["oracle"],
            label=f"floor at τ = {temperature:g}")
    ax.axvline(batch, color=PALETTE["accent"], lw=0.8)
    ax.set(xscale="log", xlabel="batch B", ylabel="loss",
           title=f"B = {batch}: chance {math.log(batch):.3f}, floor {loss_floor(batch, temperature):.3f}")
    ax.legend(fontsize=7)
    stamp(fig, scale, seed, "analytic")
    return fig


def loss_floor_explorer(scale: str, seed: int) -> Explorer:
    return Explorer(lambda temperature, batch: loss_floor_figure(temperature, batch, scale, seed),
                    {"temperature": [0.1, 0.5, 1.0],
                                        "batch": [32, 128, 512]},
                    title="Why the τ = 1 loss stays high", defaults={"temperature": 1.0, "batch": 128})
