"""Figures and explorers of the FUSE chapter (each explorer has a static twin: every setting
pre-rendered)."""
from __future__ import annotations

import numpy as np
import torch

from ...data import shapes
from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp
from . import experiments as ex
from . import method as M

COLOURS = {"fuse": PALETTE["learned"], "face": PALETTE["oracle"], "random": PALETTE["accent"],
           "none": PALETTE["grey"]}


# ---------------------------------------------------------------------------------------------
# 1. Tokenizer explorer
# ---------------------------------------------------------------------------------------------
def word_view(model, maps, word: str) -> dict:
    """A word's ids in both models, its tensors X_A, X_B, X_A ∗ T_k and the error."""
    a, b = ex.ids_A(model, word), ex.ids_B(model, word)
    k = len(b)
    dtype = next(iter(maps.maps.values())).dtype
    XA = M.word_tensor(model.table_A.detach().to(dtype), a, k)
    XB = M.word_tensor(model.table_B.detach().to(dtype), b, k)
    fit = M.surrogate(XA, maps, k)
    return {"word": word, "ids_A": a, "ids_B": b, "chunks": [model.chunker.vocab[i] for i in b],
            "k": k, "XA": XA[0].numpy(), "XB": XB[0].numpy(), "fit": fit[0].numpy(),
            "error": float((fit - XB).abs().max())}


def word_figure(view: dict, scale: str, seed: int):
    fig, axes = figure(4, 1, width=9, height=3.4, gridspec_kw={"width_ratios": [1.4, 1, 1, 1]})
    axes[0].axis("off")
    axes[0].text(0, 0.95, f"“{view['word']}”", fontsize=14, va="top", weight="bold")
    axes[0].text(0, 0.72, f"A (word LM): id {view['ids_A'][0]}\n"
                          f"B (chunk CLIP): {' | '.join(view['chunks'])}\n"
                          f"   ids {view['ids_B']}\n"
                          f"k = k_B = {view['k']}: map T_{view['k']}\n"
                          f"max |X_A ∗ T_k − X_B|\n   = {view['error']:.1e}", va="top", fontsize=10)
    lim = float(np.abs(view["XB"]).max())
    for ax, key, title in zip(axes[1:], ("XA", "XB", "fit"),
                              ("X_A (64 × k)", "X_B (48 × k)", "X_A ∗ T_k (48 × k)")):
        ax.imshow(view[key], aspect="auto", cmap="RdBu_r", vmin=-lim if key != "XA" else None,
                  vmax=lim if key != "XA" else None, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(view["k"]))
        ax.set_xlabel("sub-token (tube index)")
    axes[1].set_ylabel("embedding dimension")
    stamp(fig, scale, seed)
    return fig


def tokenizer_explorer(model, maps, scale: str, seed: int) -> Explorer:
    views = {w: word_view(model, maps, w) for w in ex.FREE_WORDS}
    return Explorer(lambda word: word_figure(views[word], scale, seed), {"word": list(views)},
                    title="Tokenizer explorer: one word in both models", defaults={"word": "triangle"})


# ---------------------------------------------------------------------------------------------
# 2. t-product playground
# ---------------------------------------------------------------------------------------------
PLAYGROUND_N = (5, 20, 40, 64, 100, 150, 200)


def playground_data(model, maps, seed: int = 0) -> dict:
    """Fits of T_3 on the two real three-chunk words plus random extra words (drawn with the
    tables' scale), for each N; and the adjoint error of both transposes."""
    g = torch.Generator().manual_seed(seed)
    real = maps.words.get(3, [])
    tA, tB = model.table_A.detach().double(), model.table_B.detach().double()
    XA = torch.cat([M.word_tensor(tA, ex.ids_A(model, w), 3) for w in real])
    XB = torch.cat([M.word_tensor(tB, ex.ids_B(model, w), 3) for w in real])
    n_extra = max(PLAYGROUND_N) - len(real)
    extraA = torch.zeros(n_extra, tA.shape[1], 3, dtype=torch.float64)
    extraA[:, :, 0] = torch.randn(n_extra, tA.shape[1], generator=g, dtype=torch.float64) * tA.std()
    extraB = torch.randn(n_extra, tB.shape[1], 3, generator=g, dtype=torch.float64) * tB.std()
    XA, XB = torch.cat([XA, extraA]), torch.cat([XB, extraB])
    out = {"N": list(PLAYGROUND_N), "residual": [], "real_error": [], "maps": {}}
    for n in PLAYGROUND_N:
        T = M.fit_map(XA[:n], XB[:n])
        res = M.t_product(XA[:n], T) - XB[:n]
        out["residual"].append(float(res.norm() / XB[:n].norm()))
        out["real_error"].append(float(res[:len(real)].abs().max()))
        out["maps"][n] = T
    G = torch.randn(1, tB.shape[1], 3, generator=g, dtype=torch.float64)
    X = torch.randn(1, tA.shape[1], 3, generator=g, dtype=torch.float64)
    out["adjoint"] = {}
    for n, T in out["maps"].items():
        lhs = float((G * M.t_product(X, T)).sum())
        out["adjoint"][n] = {name: abs(lhs - float((M.t_product(G, flip(T)) * X).sum())) / abs(lhs)
                             for name, flip in M.TRANSPOSES.items()}
    return out


def playground_figure(data: dict, n: int, transpose: str, scale: str, seed: int):
    fig, axes = figure(3, 1, width=9, height=3.2)
    T = data["maps"][n][:6, :6]
    axes[0].imshow(M.block_circulant(T).numpy(), cmap="RdBu_r", interpolation="nearest")
    axes[0].set_title("block-circulant form of T_3\n(6 × 6 corner of each face)", fontsize=10)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[1].plot(data["N"], data["residual"], "o-", color=PALETTE["grey"])
    i = data["N"].index(n)
    axes[1].plot([n], [data["residual"][i]], "o", ms=10, color=PALETTE["accent"])
    axes[1].axvline(64, ls=":", color=PALETTE["grey"])
    axes[1].text(66, max(data["residual"]) * 0.1, "N = d_A", fontsize=9)
    axes[1].set_xlabel("words N")
    axes[1].set_ylabel("‖X_A ∗ T − X_B‖ / ‖X_B‖")
    axes[1].set_title(f"N = {n}: {'exact interpolation' if n <= 64 else 'least squares'}\n"
                      f"real words' max error {data['real_error'][i]:.1e}", fontsize=10)
    errs = data["adjoint"][n]
    names = list(errs)
    axes[2].bar(names, [max(errs[k], 1e-17) for k in names],
                color=[PALETTE["accent"] if k == transpose else PALETTE["grey"] for k in names])
    axes[2].set_yscale("log")
    axes[2].set_ylim(1e-17, 10)
    axes[2].set_title(f"adjoint error, {transpose} transpose:\n"
                      f"|⟨G, X∗T⟩ − ⟨G∗T', X⟩| / |⟨G, X∗T⟩| = {errs[transpose]:.1e}", fontsize=10)
    stamp(fig, scale, seed)
    return fig


def playground_explorer(data: dict, scale: str, seed: int) -> Explorer:
    return Explorer(lambda N, transpose: playground_figure(data, N, transpose, scale, seed),
                    {"N": data["N"], "transpose": list(M.TRANSPOSES)},
                    title="t-product playground: from interpolation to least squares",
                    defaults={"N": 64})


# ---------------------------------------------------------------------------------------------
# 3. Does the gradient know?
# ---------------------------------------------------------------------------------------------
def knowledge_figure(state: dict, scale: str, seed: int):
    fig, axes = figure(4, 1, width=9, height=3.0, sharey=True)
    for ax, v in zip(axes, ex.VARIANTS):
        ax.scatter(state["estimates"][v], state["exact"], s=8, alpha=0.6, color=COLOURS[v])
        ax.axhline(0, lw=0.5, color="k")
        ax.axvline(0, lw=0.5, color="k")
        ax.set_title(f"{v}: ρ = {state['rho'][v]:+.2f}", fontsize=10)
        ax.set_xlabel("first-order estimate")
    axes[0].set_ylabel("exact ΔJ")
    fig.suptitle(f"every single-word swap of “{state['text']}”", fontsize=10)
    stamp(fig, scale, seed)
    return fig


def knowledge_explorer(states: list[dict], scale: str, seed: int) -> Explorer:
    return Explorer(lambda state: knowledge_figure(states[state], scale, seed),
                    {"state": list(range(len(states)))},
                    title="Does the gradient know? Exact swap changes against estimates")


# ---------------------------------------------------------------------------------------------
# 4. Captioning race
# ---------------------------------------------------------------------------------------------
def race_runs(model, maps, cfg, seed: int, main: dict, *, progress: bool = True) -> dict:
    """{(image, λ): {variant: run}} for the first ``cfg.race_images`` images; λ = cfg.lam reuses
    the main runs (same seeds)."""
    images, attrs = main["images"][:cfg.race_images], main["attrs"][:cfg.race_images]
    out = {}
    from tqdm.auto import tqdm
    todo = [lam for lam in cfg.race_lams if lam != cfg.lam]
    bar = tqdm(total=len(images) * len(todo) * len(cfg.variants), desc="race", mininterval=1.0,
               disable=not progress)
    for i, (image, attr) in enumerate(zip(images, attrs)):
        for lam in cfg.race_lams:
            if lam == cfg.lam:
                out[i, lam] = {v: main["runs"][v][i] for v in cfg.variants}
                continue
            out[i, lam] = {}
            for v in cfg.variants:
                out[i, lam][v] = ex.run_one(model, maps, image, attr, v, 1000 * seed + i, cfg, lam)
                bar.update(1)
    bar.close()
    return {"images": images, "attrs": attrs, "runs": out}


def race_figure(race: dict, image: int, lam: float, scale: str, seed: int):
    fig, axes = figure(2, 1, width=9, height=3.4, gridspec_kw={"width_ratios": [1, 2.4]})
    axes[0].imshow(np.clip(race["images"][image].transpose(1, 2, 0), 0, 1))
    axes[0].set_title(shapes.caption(race["attrs"][image]), fontsize=9)
    axes[0].axis("off")
    runs = race["runs"][image, lam]
    for v, r in runs.items():
        axes[1].plot(range(1, len(r["trace"]) + 1), r["trace"], color=COLOURS[v],
                     label=f"{v}: “{r['text'][2:]}” J={r['J']:.3f}")
    axes[1].set_xlabel("GCG step")
    axes[1].set_ylabel("best J so far")
    axes[1].set_title(f"λ = {lam:g}", fontsize=10)
    axes[1].legend(fontsize=9, loc="upper right")
    stamp(fig, scale, seed)
    return fig


def race_explorer(race: dict, lams, scale: str, seed: int) -> Explorer:
    return Explorer(lambda image, lam: race_figure(race, image, lam, scale, seed),
                    {"image": list(range(len(race["images"]))), "lam": list(lams)},
                    title="Captioning race: the three gradients side by side",
                    defaults={"lam": 0.05} if 0.05 in lams else None)


# ---------------------------------------------------------------------------------------------
# Main-text figures
# ---------------------------------------------------------------------------------------------
def paired_figure(runs: dict, scale: str, seed: int):
    """Per image: J of fuse against J of each other variant (below the diagonal: fuse better)."""
    others = [v for v in runs if v != "fuse"]
    fig, axes = figure(len(others), 1, width=3.2 * len(others), height=3.2)
    axes = np.atleast_1d(axes)
    jf = ex.metric(runs["fuse"], "J")
    for ax, v in zip(axes, others):
        jo = ex.metric(runs[v], "J")
        hi = max(jf.max(), jo.max()) * 1.05
        ax.plot([0, hi], [0, hi], color="k", lw=0.5)
        ax.scatter(jo, jf, s=14, color=COLOURS[v])
        d = ex.paired(jf, jo)
        ax.set_title(f"fuse − {v}: ΔJ {d}", fontsize=10)
        ax.set_xlabel(f"final J, {v}")
        ax.set_ylabel("final J, fuse")
    stamp(fig, scale, seed)
    return fig
