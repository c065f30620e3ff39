"""The ARIMEC chapter's experiments, language models and explorers (small settings)."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from lab.papers.arimec import experiments as am
from lab.papers.arimec import method as mec
from lab.papers.arimec import textlm


def test_presets_exist_for_every_scale():
    for scale in ("tiny", "gpu", "paper"):
        assert isinstance(am.PRESETS[scale], am.ChapterConfig)
    assert am.PRESETS["tiny"].demo.lm == "ngram" and am.PRESETS["gpu"].demo.lm == "gpt2"


def sequence_entropy(chain) -> float:
    """H of a whole sequence by enumerating every sequence: −Σ p ln p over all of them."""
    p = np.array([p for _, p in mec.enumerate_sequences(chain, limit=300_000)])
    return float(-(p * np.log(p)).sum())


def test_merge_experiment_small():
    r = am.merge_experiment(am.MergeConfig(ks=(1, 8), draws=60), seed=0)
    assert r.h_x == pytest.approx(8 * math.log(2))
    nu = mec.Markov.random(4, 5, 1.0, am.MergeConfig().y_seed)
    assert r.h_y == pytest.approx(sequence_entropy(nu), rel=1e-9)
    lo, hi = r.bounds
    for v in r.nll.values():
        assert lo - 0.5 < v.mean() < hi
    assert r.mean(8, False) > r.mean(8, True)


def test_stego_experiment_small():
    cfg = am.StegoConfig(worlds=((2, 3),), lengths=(4, 12), messages=10)
    r = am.stego_experiment(cfg, seed=1)
    prior, _ = am.stego_worlds(cfg, (2, 3))
    assert r.h_x[(2, 3)] == pytest.approx(sequence_entropy(prior), rel=1e-9)
    assert r.error((2, 3), "ARIMEC", 12) <= 0.1
    assert r.error((2, 3), "FIMEC-uniform", 4) >= r.error((2, 3), "ARIMEC", 4)
    assert 1 <= r.searched[(2, 3)] < 10


def test_causal_complexity_equals_the_plain_greedy_loop():
    """H(cause) + H(the greedy coupling of the effect's conditionals), the coupling's entropy
    read off the reference loop's round masses, on a small world of the experiment's kind."""
    joint = am.causal_data(am.CausalConfig(dim=12, samples=2000), seed=0)
    for axis, table in ((0, joint), (1, joint.T)):
        marginal = table.sum(axis=1)
        conditionals = table[marginal > 0] / marginal[marginal > 0, None]
        masses = [delta for _, delta, _ in mec.greedy_trace(*conditionals)]
        expected = mec.entropy(marginal) + mec.entropy(masses)
        assert mec.causal_complexity(joint, axis) == pytest.approx(expected, abs=1e-9)


def test_causal_experiment_prefers_the_true_direction():
    c = am.causal_experiment(am.CausalConfig(), seed=0)
    assert c["X→Y"] < c["Y→X"]


# ---------------------------------------------------------------------------------------------
# Language models
# ---------------------------------------------------------------------------------------------
def test_ngram_is_a_distribution_and_round_trips_text():
    lm = textlm.NGramLM(textlm.zen_text(), unit="word", order=2, length=5, top_k=4)
    assert isinstance(lm, mec.Autoregressive)
    p = lm.conditional(lm.encode("beautiful is"))
    assert p.sum() == pytest.approx(1) and np.count_nonzero(p) == 4
    assert lm.decode(lm.encode("Simple is better.")) == "simple is better."
    with pytest.raises(ValueError, match="vocabulary"):
        lm.encode("quantum chromodynamics")


class TinyLM(torch.nn.Module):
    """A local stand-in for GPT-2: embedding → linear over the last token."""

    def __init__(self, vocab=5):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab)
        self.calls = 0

    def forward(self, ids):
        self.calls += 1
        return self.out(torch.tanh(self.emb(ids)))


def test_torch_adapter_caches_and_couples():
    model = TinyLM()
    prior = textlm.TorchLM(model, 5, length=2, top_k=3)
    cover = textlm.TorchLM(TinyLM(), 5, length=3)
    p = prior.conditional((1,))
    assert p.sum() == pytest.approx(1) and np.count_nonzero(p) == 3
    prior.conditional((1,))
    assert model.calls == 1, "conditionals must be cached per prefix"
    imec = mec.ARIMEC(prior, cover)
    _, _, P = mec.joint_table(imec)
    nu = np.array([q for _, q in mec.enumerate_sequences(cover)])
    np.testing.assert_allclose(P.sum(0), nu, atol=1e-9)
    x, y, ll = imec.sample(np.random.default_rng(0))
    assert ll == pytest.approx(imec.evaluate(x, y), abs=1e-9)


def test_gpt2_names_what_is_missing():
    if importlib.util.find_spec("transformers") is None:
        with pytest.raises(ImportError, match="transformers"):
            textlm.gpt2(4)
    else:  # pragma: no cover - depends on the environment
        pytest.skip("transformers installed; the offline path is exercised on the device")


# ---------------------------------------------------------------------------------------------
# Readable steganography
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return am.demo_models(am.PRESETS["tiny"].demo)


def test_stegotext_decodes_exactly(demo):
    r = am.stego_roundtrip(demo, "simple is better", 45, "correct", seed=0)
    assert r.exact and r.decoded == "simple is better"
    assert len(r.covertext.split()) >= 30


def test_stegotext_rejects_bad_input(demo):
    with pytest.raises(ValueError, match="vocabulary"):
        am.stego_roundtrip(demo, "numbers 42", 30, "correct", seed=0)
    with pytest.raises(ValueError, match="prior"):
        am.stego_roundtrip(demo, "simple", 30, "exact", seed=0)
    with pytest.raises(ValueError, match="cover_tokens"):
        am.stego_roundtrip(demo, "simple", 0, "correct", seed=0)


def test_explorers_render_one_frame_each():
    from lab.papers.arimec import figures as figs
    cfg = am.PRESETS["tiny"]
    for explorer in (figs.greedy_stepper("tiny", 0), figs.imec_stepper("tiny", 0),
                     figs.stego_playground(cfg.demo, "tiny", 0)):
        texts = [t.get_text() for t in explorer().texts]
        assert "scale: tiny · seed 0" in texts
        n = 1
        for values in explorer.params.values():
            n *= len(values)
        assert n <= 120


class CharTokenizer:
    """A stand-in for GPT-2's tokenizer over the letters a–e."""

    def encode(self, text):
        return ["abcde".index(c) for c in text]

    def decode(self, ids):
        return "".join("abcde"[i] for i in ids)


def test_the_gpt2_path_runs_on_a_local_stand_in():
    prior = textlm.TorchLM(TinyLM(), 5, length=1, top_k=4)
    cover = textlm.TorchLM(TinyLM(), 5, length=30)
    prior.tokenizer = cover.tokenizer = CharTokenizer()
    demo = am.StegoDemo(am._GPT2Text(prior), am._GPT2Text(cover))
    secret = max(("ab", "ba", "aa", "bb"), key=lambda s: mec.sequence_log_prob(
        demo.message_lm.with_length(2), CharTokenizer().encode(s)))
    r = am.stego_roundtrip(demo, secret, 30, "correct", seed=0)
    assert r.exact and r.decoded == secret and len(r.covertext) == 30
