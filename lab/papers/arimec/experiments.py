"""The experiments of the ARIMEC chapter (Sokota et al., arXiv 2405.19540), one config per scale.

* E1 :func:`merge_experiment` — FIMEC on 8 uniform bits written as k components, with and
  without merging: the estimated joint entropy Ĥ(X, Y) against k.
* E2 :func:`stego_experiment` — unencrypted steganography on synthetic Markov worlds: ARIMEC with
  the message's true (Markov) prior against FIMEC with a uniform prior, decoding error against
  covertext length.
* E3 :func:`causal_experiment` — entropic causal inference with greedy MEC.
* :func:`stego_roundtrip` — a readable stegotext demo with the n-gram (or, at ``gpu``, GPT-2)
  language models of :mod:`lab.papers.arimec.textlm`.

The worlds are fixed by the constants in the configs; ``LAB_SEED`` drives every draw.
"""
from __future__ import annotations

import dataclasses
import math
import string

import numpy as np

from ... import _check
from . import method as mec
from . import textlm

WORLDS = ((2, 3), (12, 13), (22, 23))     # (seed of the message prior, seed of the covertext model)


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    bits: int = 8                          # X = `bits` uniform bits, H(X) = bits·ln 2
    ks: tuple[int, ...] = (1, 2, 4, 8)     # number of components X is written as
    y_branching: int = 4
    y_length: int = 5
    y_alpha: float = 1.0
    y_seed: int = 1
    draws: int = 1000


@dataclasses.dataclass(frozen=True)
class StegoConfig:
    worlds: tuple[tuple[int, int], ...] = WORLDS
    x_branching: int = 8
    x_length: int = 6
    x_alpha: float = 0.3
    y_branching: int = 8
    y_alpha: float = 1.0
    lengths: tuple[int, ...] = (4, 8, 12, 16, 24)
    messages: int = 100


@dataclasses.dataclass(frozen=True)
class CausalConfig:
    dim: int = 100
    samples: int = 10_000


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    lm: str = "ngram"                      # "ngram" (offline, tiny) or "gpt2" (hub, gpu)
    message: str = "simple is better"
    examples: tuple[str, ...] = ("simple is better", "flat beats nested", "meet at noon")
    message_order: int = 3
    cover_order: int = 2
    cover_top_k: int = 16
    cover_lengths: tuple[int, ...] = (10, 20, 30, 45, 60, 80)


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    merge: MergeConfig = MergeConfig()
    stego: StegoConfig = StegoConfig()
    causal: CausalConfig = CausalConfig()
    demo: DemoConfig = DemoConfig()
    minutes: float = 1.5


PRESETS = {
    "tiny": ChapterConfig(),
    "gpu": ChapterConfig(merge=MergeConfig(draws=5000), stego=StegoConfig(messages=300),
                         demo=DemoConfig(lm="gpt2", cover_lengths=(8, 16, 24, 32, 48)), minutes=15.0),
    "paper": ChapterConfig(merge=MergeConfig(draws=5000), stego=StegoConfig(messages=1000),
                           demo=DemoConfig(lm="gpt2", cover_lengths=(8, 16, 24, 32, 48, 64)),
                           minutes=60.0),
}


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


# ---------------------------------------------------------------------------------------------
# E1: merging against factorisation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MergeResult:
    h_x: float
    h_y: float
    nll: dict            # (k, merge) -> array of −log p(x, y), one per draw

    def mean(self, k: int, merge: bool) -> float:
        return float(self.nll[(k, merge)].mean())

    def stderr(self, k: int, merge: bool) -> float:
        v = self.nll[(k, merge)]
        return float(v.std(ddof=1) / math.sqrt(len(v)))

    @property
    def bounds(self) -> tuple[float, float]:
        return max(self.h_x, self.h_y), self.h_x + self.h_y


def merge_experiment(cfg: MergeConfig, seed: int) -> MergeResult:
    """Ĥ(X, Y) = mean −log p(x, y) over joint draws of FIMEC, for each k and merge on/off."""
    seed = _check.integer("seed", seed)
    nu = mec.Markov.random(cfg.y_branching, cfg.y_length, cfg.y_alpha, cfg.y_seed)
    out = {}
    for k in cfg.ks:
        size = round(2 ** (cfg.bits / k))
        if size ** k != 2 ** cfg.bits:
            raise ValueError(f"ks must divide bits={cfg.bits}; got k = {k}")
        for merge in (True, False):
            imec = mec.FIMEC([uniform(size)] * k, nu, merge=merge)
            rng = np.random.default_rng([seed, k, int(merge)])
            out[(k, merge)] = np.array([-imec.sample(rng)[2] for _ in range(cfg.draws)])
    return MergeResult(cfg.bits * math.log(2), nu.entropy(), out)


# ---------------------------------------------------------------------------------------------
# E2: unencrypted steganography, correct prior against uniform prior
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StegoResult:
    worlds: tuple
    lengths: tuple
    h_x: dict             # world -> H(X) under the Markov prior
    h_uniform: float      # H(X) under the uniform prior
    h_y_per_token: dict   # world -> H(Y) / L at the longest L
    errors: dict          # (world, method, L) -> error rate
    searched: dict        # world -> mean nodes ARIMEC's search evaluated per step

    def error(self, world, method: str, L: int) -> float:
        return self.errors[(tuple(world), method, L)]

    def worst(self, method: str, L: int) -> float:
        return max(self.error(w, method, L) for w in self.worlds)


def stego_worlds(cfg: StegoConfig, world) -> tuple[mec.Markov, dict[int, mec.Markov]]:
    wx, wy = world
    prior = mec.Markov.random(cfg.x_branching, cfg.x_length, cfg.x_alpha, wx)
    covers = {L: mec.Markov.random(cfg.y_branching, L, cfg.y_alpha, wy) for L in cfg.lengths}
    return prior, covers


def stego_experiment(cfg: StegoConfig, seed: int) -> StegoResult:
    """For each world and covertext length: encode `messages` messages x ~ prior with ARIMEC
    (true prior) and with FIMEC (uniform prior over every token), decode each from its
    covertext alone, and count the messages not recovered exactly."""
    seed = _check.integer("seed", seed)
    errors, h_x, h_y, searched = {}, {}, {}, {}
    for w, world in enumerate(cfg.worlds):
        prior, covers = stego_worlds(cfg, world)
        h_x[world] = prior.entropy()
        rng = np.random.default_rng([seed, w])
        messages = [prior.sample(rng)[0] for _ in range(cfg.messages)]
        nodes = []
        for L, cover in covers.items():
            methods = {"ARIMEC": mec.ARIMEC(prior, cover),
                       "FIMEC-uniform": mec.FIMEC([uniform(cfg.x_branching)] * cfg.x_length, cover)}
            for name, imec in methods.items():
                wrong = 0
                for x in messages:
                    y, _ = imec.sample_y_given_x(x, rng)
                    post = imec.posterior_given_y(y)
                    x_hat, _ = post.estimate(lambda p: int(np.argmax(p)))
                    wrong += tuple(x_hat) != tuple(x)
                    if name == "ARIMEC":
                        nodes.extend(post.searched_per_step)
                errors[(world, name, L)] = wrong / cfg.messages
        h_y[world] = covers[max(cfg.lengths)].entropy() / max(cfg.lengths)
        searched[world] = float(np.mean(nodes))
    return StegoResult(tuple(cfg.worlds), tuple(cfg.lengths), h_x,
                       cfg.x_length * math.log(cfg.x_branching), h_y, errors, searched)


# ---------------------------------------------------------------------------------------------
# E3: entropic causal inference
# ---------------------------------------------------------------------------------------------
def causal_data(cfg: CausalConfig, seed: int) -> np.ndarray:
    """Empirical joint of (X, Y): X ~ Dirichlet(1) over `dim` values, Y | X = x uniform on two
    random values; `samples` draws."""
    rng = np.random.default_rng(_check.integer("seed", seed))
    px = rng.dirichlet(np.ones(cfg.dim))
    pairs = np.array([rng.choice(cfg.dim, 2, replace=False) for _ in range(cfg.dim)])
    xs = rng.choice(cfg.dim, cfg.samples, p=px)
    ys = pairs[xs, rng.integers(0, 2, cfg.samples)]
    joint = np.zeros((cfg.dim, cfg.dim))
    np.add.at(joint, (xs, ys), 1.0 / cfg.samples)
    return joint


def causal_experiment(cfg: CausalConfig, seed: int) -> dict[str, float]:
    joint = causal_data(cfg, seed)
    return {"X→Y": mec.causal_complexity(joint, 0), "Y→X": mec.causal_complexity(joint, 1)}


# ---------------------------------------------------------------------------------------------
# Readable steganography
# ---------------------------------------------------------------------------------------------
MESSAGE_ALPHABET = string.ascii_lowercase + " .,!?'"


@dataclasses.dataclass
class StegoDemo:
    """The two language models of the demo: a message prior and a covertext model. Each has
    ``encode``/``decode`` and ``with_length`` (the same model over a given number of tokens)."""
    message_lm: object
    cover_lm: object


def demo_models(cfg: DemoConfig) -> StegoDemo:
    """n-gram models fitted on the Zen of Python (``ngram``) or GPT-2 for both (``gpt2``)."""
    lm = _check.choice("cfg.lm", cfg.lm, ("ngram", "gpt2"))
    if lm == "gpt2":
        return StegoDemo(_GPT2Text(textlm.gpt2(1, top_k=2000)),
                         _GPT2Text(textlm.gpt2(max(cfg.cover_lengths), top_k=50)))
    text = textlm.zen_text()
    message_lm = textlm.NGramLM(text, unit="char", order=cfg.message_order, length=1,
                                smoothing=0.05, vocab=MESSAGE_ALPHABET)
    cover_lm = textlm.NGramLM(text, unit="word", order=cfg.cover_order, length=max(cfg.cover_lengths),
                              smoothing=0.01, top_k=cfg.cover_top_k)
    return StegoDemo(message_lm, cover_lm)


class _GPT2Text:
    """Text in and out of a GPT-2 :class:`~lab.papers.arimec.textlm.TorchLM` (same interface as NGramLM)."""

    def __init__(self, lm):
        self.lm, self.branching, self.length = lm, lm.branching, lm.length

    def conditional(self, prefix):
        return self.lm.conditional(prefix)

    def is_terminal(self, prefix):
        return len(prefix) >= self.length

    def with_length(self, length):
        clone = _GPT2Text(self.lm)
        clone.length = length
        return clone

    def encode(self, text):
        return tuple(self.lm.tokenizer.encode(text))

    def decode(self, ids):
        return self.lm.tokenizer.decode(list(ids))


@dataclasses.dataclass
class Roundtrip:
    message: str
    prior: str
    cover_tokens: int
    covertext: str
    decoded: str
    exact: bool
    message_nats: float          # −log prior(message)
    nats_per_token: float        # H of the covertext model per token (ν's average)


def stego_roundtrip(demo: StegoDemo, message: str, cover_tokens: int, prior: str, seed: int) -> Roundtrip:
    """Hide `message` in `cover_tokens` tokens of covertext and decode it back from the text alone.

    `prior` = ``"correct"`` (ARIMEC with the message LM as prior) or ``"uniform"`` (FIMEC with a
    uniform prior on every character). A message outside the prior's support is a ValueError."""
    prior = _check.choice("prior", prior, ("correct", "uniform"))
    cover_tokens = _check.integer("cover_tokens", cover_tokens, low=1)
    x = demo.message_lm.encode(message)
    if not x:
        raise ValueError("message must hold at least one token")
    message_lm = demo.message_lm.with_length(len(x))
    if mec.sequence_log_prob(message_lm, x) == mec.NEG_INF:
        raise ValueError("message is outside the support of the message prior")
    cover = demo.cover_lm.with_length(cover_tokens)
    if prior == "correct":
        imec = mec.ARIMEC(message_lm, cover)
    else:
        imec = mec.FIMEC([uniform(message_lm.branching)] * len(x), cover)
    rng = np.random.default_rng(_check.integer("seed", seed))
    y, _ = imec.sample_y_given_x(x, rng)
    x_hat, _ = imec.estimate_x_given_y(y)
    text_hat = demo.message_lm.decode(x_hat)
    nats = (-mec.sequence_log_prob(message_lm, x) if prior == "correct"
            else len(x) * math.log(message_lm.branching))
    per_token = _entropy_rate(cover, np.random.default_rng(0))
    return Roundtrip(message, prior, cover_tokens, demo.cover_lm.decode(y), text_hat,
                     tuple(x_hat) == tuple(x), nats, per_token)


def _entropy_rate(lm, rng, draws: int = 20) -> float:
    """Monte Carlo estimate of the covertext model's entropy per token."""
    total = [-mec.sample_sequence(lm, rng)[1] for _ in range(draws)]
    return float(np.mean(total) / lm.length)


def check_claims(ledger, merge: MergeResult, stego: StegoResult, causal: dict) -> None:
    """The chapter's claims M1–M5, each checked against its threshold; whether each one gates is
    the sweep record's to say (see :mod:`lab.records`)."""
    k_max, k_min = max(merge.nll)[0], min(merge.nll)[0]
    ledger.check("M1", f"merging curbs the cost of a bad factorisation: Ĥ no-merge − Ĥ merge at k = {k_max}",
                 merge.mean(k_max, False) - merge.mean(k_max, True), at_least=0.4,
                 fmt="{:.2f}", paper="merging makes IMEC robust to poor partitions")
    ledger.check("M2", f"the cost grows with factorisation: Ĥ no-merge (k = {k_max}) − Ĥ (k = {k_min})",
                 merge.mean(k_max, False) - merge.mean(k_min, True), at_least=1.0, fmt="{:.2f}")
    lo, hi = merge.bounds
    values = [v.mean() for v in merge.nll.values()]
    inside = min(min(v - (lo - 0.3) for v in values), min(hi - v for v in values))
    ledger.check("M2b", "every Ĥ lies within [max H − 0.3, H(X) + H(Y)]: smallest margin (nats)",
                 inside, at_least=0.0, fmt="{:.2f}")
    ledger.check("M3a", "ARIMEC decodes a non-factorable prior: error at L = 8 (worst world)",
                 stego.worst("ARIMEC", 8), at_most=0.10, fmt="{:.2f}")
    ledger.check("M3b", "ARIMEC error at L = 12 (worst world)", stego.worst("ARIMEC", 12),
                 at_most=0.03, fmt="{:.2f}")
    uniform_err = min(stego.error(w, "FIMEC-uniform", 8) for w in stego.worlds)
    ledger.check("M4a", "a uniform prior needs more covertext: FIMEC-uniform error at L = 8 (best world)",
                 uniform_err, at_least=0.15, fmt="{:.2f}",
                 paper="ARIMEC with the right prior errs less than FIMEC with a uniform one")
    gap = min(stego.error(w, "FIMEC-uniform", 8) - 2 * stego.error(w, "ARIMEC", 8) for w in stego.worlds)
    ledger.check("M4b", "FIMEC-uniform error − 2 × ARIMEC error at L = 8 (smallest over worlds)",
                 gap, at_least=0.0, fmt="{:.2f}")
    ledger.check("M5", "entropic causal inference prefers the true direction: "
                 "complexity(Y→X) − complexity(X→Y) (nats)", causal["Y→X"] - causal["X→Y"],
                 at_least=0.3, fmt="{:.2f}")
