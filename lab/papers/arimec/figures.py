"""Figures and explorers of the ARIMEC chapter: greedy coupling, IMEC step by step, merging,
steganography."""
from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.patches import Rectangle

from ...viz.explorer import Explorer
from ...viz.style import PALETTE, figure, stamp
from . import experiments as am
from . import method as mec

GREEDY_EXAMPLES = {
    "tie-break": ([0.5, 0.25, 0.25], [0.4, 0.4, 0.2]),
    "3 × 4": ([0.7, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]),
    "random 6 × 6": tuple(np.random.default_rng(7).dirichlet(np.ones(6), size=2)),
}
METHOD_COLOURS = {"ARIMEC": PALETTE["learned"], "FIMEC-uniform": PALETTE["accent"]}


# ---------------------------------------------------------------------------------------------
# Greedy MEC, round by round
# ---------------------------------------------------------------------------------------------
def greedy_stepper(scale: str, seed: int) -> Explorer:
    """Pick an example and a round: what is left of each marginal, the cell that takes δ, the
    joint so far and its entropy against the bounds max H(pᵢ) ≤ H(M) ≤ Σ H(pᵢ)."""
    traces = {name: mec.greedy_trace(*ms) for name, ms in GREEDY_EXAMPLES.items()}
    n_rounds = max(len(t) for t in traces.values())

    def render(example, round):
        p, q = (np.asarray(m, float) for m in GREEDY_EXAMPLES[example])
        trace = traces[example]
        r = min(round, len(trace))
        joint = np.zeros((len(p), len(q)))
        for cell, delta, _ in trace[:r]:
            joint[cell] = delta
        left = trace[r - 1][2] if r else [p, q]
        fig, axes = figure(ncols=3, width=9, height=3.4, gridspec_kw={"width_ratios": [1, 2, 1]})
        axes[0].barh(np.arange(len(p)), p, color="#dddddd", label="p")
        axes[0].barh(np.arange(len(p)), left[0], color=PALETTE["in"], label="remaining")
        axes[0].invert_yaxis(), axes[0].invert_xaxis()
        axes[0].set(title="row marginal p:\nwhat remains", yticks=range(len(p)))
        axes[1].imshow(joint, cmap="Blues", vmin=0, vmax=max(p.max(), q.max()))
        for (i, j), v in np.ndenumerate(joint):
            if v > 0:
                axes[1].text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=9)
        if r:
            (i, j), delta, _ = trace[r - 1]
            axes[1].add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=PALETTE["accent"], lw=2))
        h_lo, h_hi = mec.coupling_bounds(p, q)
        step = f"round {r}/{len(trace)}" + (f": cell ({i}, {j}) takes δ = {delta:.3f}" if r else "")
        axes[1].set(title=f"{step}\nH(M) = {mec.entropy(joint):.3f} · bounds [{h_lo:.3f}, {h_hi:.3f}]",
                    xticks=range(len(q)), yticks=range(len(p)), xlabel="column marginal q")
        axes[2].bar(np.arange(len(q)), q, color="#dddddd")
        axes[2].bar(np.arange(len(q)), left[1], color=PALETTE["oracle"])
        axes[2].set(title="column marginal q:\nwhat remains", xticks=range(len(q)))
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"example": list(GREEDY_EXAMPLES), "round": list(range(n_rounds + 1))},
                    title="Greedy MEC, one round at a time", defaults={"round": 1})


# ---------------------------------------------------------------------------------------------
# IMEC step-through
# ---------------------------------------------------------------------------------------------
STEP_PRIOR = mec.Markov([0.6, 0.4], [[0.7, 0.3], [0.2, 0.8]], 3)
STEP_COVER = mec.Markov.iid([0.5, 0.3, 0.2], 4)
STEP_MESSAGES = ((0, 0, 0), (1, 1, 1), (0, 1, 0))
MAX_STEPS = 10


def step_instances(merge: bool = True) -> dict[str, mec.IMEC]:
    """The three instances on one 3-bit message space: TIMEC (the 8 outcomes, flattened),
    FIMEC (three independent bits with the chain's marginals per position), ARIMEC (the chain)."""
    seqs = mec.enumerate_sequences(STEP_PRIOR)
    state, per_bit = STEP_PRIOR.initial, []
    for _ in range(STEP_PRIOR.length):
        per_bit.append(state)
        state = state @ STEP_PRIOR.transition
    return {"TIMEC": mec.TIMEC([p for _, p in seqs], STEP_COVER, merge=merge),
            "FIMEC": mec.FIMEC(per_bit, STEP_COVER, merge=merge),
            "ARIMEC": mec.ARIMEC(STEP_PRIOR, STEP_COVER, merge=merge)}


def _as_bits(method: str, x) -> str:
    seqs = [s for s, _ in mec.enumerate_sequences(STEP_PRIOR)]
    seq = seqs[x] if method == "TIMEC" else x
    return "".join(map(str, seq))


def _partition_label(method: str, handle, n_blocks: int) -> list[str]:
    if method == "TIMEC":
        return [_as_bits("TIMEC", i) for i in range(n_blocks)]
    if method == "FIMEC":
        return [f"bit {handle} = {v}" for v in range(n_blocks)]
    prefix = "".join(map(str, handle.prefix))
    return [f"{prefix}{c}·" for c in range(n_blocks - 1)] + ([f"not {prefix}·"] if handle.prefix else ["—"])


def imec_steps(seed: int) -> dict:
    """Record every coupling round of each instance encoding each step message."""
    out = {}
    for method, imec in step_instances().items():
        xs = [x for x, _ in mec.outcomes(imec)]
        for message in STEP_MESSAGES:
            x = message if method != "TIMEC" else [s for s, _ in mec.enumerate_sequences(STEP_PRIOR)].index(message)
            rng = np.random.default_rng([seed, sum(message), len(method)])
            y, _ = imec.sample_y_given_x(x, rng, record=True)
            out[(method, message)] = (imec.steps, xs, x, y)
    return out


def imec_stepper(scale: str, seed: int) -> Explorer:
    """Per coupling round: the chosen partition's block probabilities, the coupling with the
    covertext token (chosen row, merged rows, the message's column), and the posterior over all
    eight messages with the nats still to send."""
    recorded = imec_steps(seed)

    def render(method, message, step):
        steps, xs, x, y = recorded[(method, tuple(int(c) for c in message))]
        s = steps[min(step, len(steps) - 1)]
        fig, axes = figure(ncols=3, width=9, height=3.8, gridspec_kw={"width_ratios": [1.1, 1.2, 1.4]})
        labels = _partition_label(method, s.handle, len(s.blocks))
        pos = np.arange(len(s.blocks))
        axes[0].bar(pos - 0.2, s.blocks, 0.4, color="#bbbbbb", label="before")
        axes[0].bar(pos + 0.2, s.posterior_blocks, 0.4, color=PALETTE["in"], label="after")
        axes[0].set_xticks(range(len(s.blocks)), labels, rotation=45, fontsize=9)
        axes[0].set(title=f"chosen partition (H = {mec.entropy(s.blocks):.2f})", ylim=(0, 1))
        axes[0].legend(frameon=False, fontsize=9)
        if s.coupling is None:
            axes[1].text(0.5, 0.5, "blocks deterministic:\ny drawn from ν alone", ha="center", va="center")
            axes[1].set_axis_off()
        else:
            axes[1].imshow(s.coupling, cmap="Blues", aspect="auto")
            col = _column(method, s.handle, x)
            axes[1].axvline(col, color=PALETTE["oracle"], lw=2, alpha=0.6)
            for g in s.group:
                row = int(np.flatnonzero(s.token_ids == g)[0])
                axes[1].axhline(row, color=PALETTE["accent"], lw=6 if g == s.token_ids[s.chosen] else 2, alpha=0.4)
            axes[1].set_yticks(range(len(s.token_ids)), [f"y={t}" for t in s.token_ids], fontsize=9)
            axes[1].set_xticks(range(len(labels)), labels, rotation=45, fontsize=9)
            merged = f", merged {list(map(int, s.group))}" if len(s.group) > 1 else ""
            axes[1].set_title(f"coupling: chose y={int(s.token_ids[s.chosen])}{merged}\n"
                              "green: message's block", fontsize=9)
        post = np.array([s.posterior.prob(v) for v in xs])
        colours = [PALETTE["accent"] if _same(method, v, x) else PALETTE["grey"] for v in xs]
        axes[2].bar(range(len(xs)), post, color=colours)
        axes[2].set_xticks(range(len(xs)), [_as_bits(method, v) for v in xs], rotation=45, fontsize=9)
        axes[2].set(ylim=(0, 1), title=f"posterior over messages:\n{mec.entropy(post):.2f} nats left to send")
        searched = getattr(s.posterior, "searched_per_step", None)
        search = f" · search evaluated {searched[-1]} node(s)" if searched else ""
        fig.suptitle(f"{method} · message {''.join(map(str, message))} · round {step + 1}/{len(steps)} "
                     f"(covertext token {s.token_index + 1}) · covertext {list(y)}{search}", fontsize=9)
        stamp(fig, scale, seed)
        return fig

    n = min(MAX_STEPS, max(len(v[0]) for v in recorded.values()))
    return Explorer(render, {"method": ["TIMEC", "FIMEC", "ARIMEC"],
                             "message": ["".join(map(str, m)) for m in STEP_MESSAGES],
                             "step": list(range(n))},
                    title="IMEC step by step: partition, coupling, posterior", defaults={"method": "ARIMEC"})


def _column(method, handle, x) -> int:
    if method == "TIMEC":
        return x
    if method == "FIMEC":
        return x[handle]
    depth = len(handle.prefix)
    return x[depth] if tuple(x[:depth]) == handle.prefix else len(handle.dist) - 1


def _same(method, v, x) -> bool:
    return v == x if method == "TIMEC" else tuple(v) == tuple(x)


# ---------------------------------------------------------------------------------------------
# E1 and E2
# ---------------------------------------------------------------------------------------------
def merge_figure(result: "am.MergeResult", scale: str, seed: int):
    ks = sorted({k for k, _ in result.nll})
    fig, ax = figure(width=7, height=3.4)
    w = 0.38
    for off, merge, colour in ((-w / 2, True, PALETTE["learned"]), (w / 2, False, PALETTE["accent"])):
        means = [result.mean(k, merge) for k in ks]
        errs = [2 * result.stderr(k, merge) for k in ks]
        ax.bar(np.arange(len(ks)) + off, means, w, yerr=errs, color=colour,
               label="merging" if merge else "no merging")
    lo, hi = result.bounds
    ax.axhline(lo, color="k", ls=":", lw=1, label=f"max(H(X), H(Y)) = {lo:.2f}")
    ax.axhline(hi, color="k", ls="--", lw=1, label=f"H(X) + H(Y) = {hi:.2f}")
    ax.set_xticks(range(len(ks)), [f"k = {k}\n({round(2 ** (8 / k))}-ary)" for k in ks])
    ax.set(ylabel="Ĥ(X, Y) (nats)", ylim=(lo - 1, hi + 1.4),
           title="FIMEC on 8 uniform bits written as k components (±2 s.e.)")
    ax.legend(frameon=False, fontsize=9, ncol=2, loc="upper left")
    stamp(fig, scale, seed, f"{len(next(iter(result.nll.values())))} draws per bar")
    return fig


def merge_explorer(result: "am.MergeResult", scale: str, seed: int) -> Explorer:
    """Pick k: the distribution of −log p(x, y) over the draws, with and without merging."""
    ks = sorted({k for k, _ in result.nll})

    def render(k):
        fig, ax = figure(width=7, height=2.8)
        bins = np.linspace(min(v.min() for v in result.nll.values()), max(v.max() for v in result.nll.values()), 40)
        for merge, colour in ((True, PALETTE["learned"]), (False, PALETTE["accent"])):
            v = result.nll[(k, merge)]
            ax.hist(v, bins=bins, color=colour, alpha=0.55,
                    label=f"{'merging' if merge else 'no merging'}: mean {v.mean():.2f}")
        ax.axvline(result.h_x, color="k", ls=":", lw=1, label=f"H(X) = {result.h_x:.2f}")
        ax.set(xlabel="−log p(x, y) of one draw (nats)", ylabel="draws", title=f"k = {k} components")
        ax.legend(frameon=False, fontsize=9)
        stamp(fig, scale, seed)
        return fig

    return Explorer(render, {"k": ks}, title="Merging: where the extra entropy goes", defaults={"k": ks[-1]})


def stego_figure(result: "am.StegoResult", scale: str, seed: int):
    fig, axes = figure(ncols=len(result.worlds), width=3 * len(result.worlds), height=3.3, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, world in zip(axes, result.worlds):
        for method, colour in METHOD_COLOURS.items():
            ax.plot(result.lengths, [result.error(world, method, L) for L in result.lengths], "o-",
                    color=colour, label=method)
        need = [result.h_x[world] / result.h_y_per_token[world], result.h_uniform / result.h_y_per_token[world]]
        for n, (method, colour) in zip(need, METHOD_COLOURS.items()):
            ax.axvline(n, color=colour, ls=":", lw=1, label=f"H(prior) / H(Y per token), {method}")
        ax.set(xlabel="covertext length L (tokens)", title=f"world {world}: H(X) = {result.h_x[world]:.2f}")
    axes[0].set_ylabel("message error rate")
    axes[0].legend(frameon=False, fontsize=9)
    stamp(fig, scale, seed, f"{len(result.worlds)} worlds")
    return fig


# ---------------------------------------------------------------------------------------------
# Steganography playground
# ---------------------------------------------------------------------------------------------
def roundtrip_figure(r: "am.Roundtrip", scale: str, seed: int):
    fig, ax = figure(width=9, height=2.2)
    ax.set_axis_off()
    mark = "decoded exactly" if r.exact else "decoded WRONG"
    capacity = r.cover_tokens * r.nats_per_token
    lines = [f"secret: {r.message!r}   prior: {r.prior}   needs ≈ {r.message_nats:.1f} nats; covertext "
             f"carries ≈ {capacity:.1f} nats in {r.cover_tokens} tokens",
             f"receiver reads: {r.decoded!r} → {mark} · {r.message_nats / r.cover_tokens:.2f} "
             "message nats per covertext token", ""]
    lines += textwrap.wrap("covertext: " + r.covertext, 110)[:9]
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9,
            color="#222222" if r.exact else PALETTE["accent"])
    stamp(fig, scale, seed)
    return fig


def stego_playground(cfg: "am.DemoConfig", scale: str, seed: int) -> Explorer:
    """Pick a secret, a covertext length and the receiver's prior: the stegotext and what the
    receiver decodes from it."""
    demo = am.demo_models(cfg)
    cache = {}

    def render(message, cover_tokens, prior):
        key = (message, cover_tokens, prior)
        if key not in cache:
            cache[key] = am.stego_roundtrip(demo, message, cover_tokens, prior, seed)
        return roundtrip_figure(cache[key], scale, seed)

    return Explorer(render, {"message": list(cfg.examples), "cover_tokens": list(cfg.cover_lengths),
                             "prior": ["correct", "uniform"]},
                    title="Steganography playground", defaults={"cover_tokens": cfg.cover_lengths[2]})
