"""Real text as domains (lab.data.text), the Pythia architecture built from a config
(lab.nn.hublm) and ADO's text study, on local stand-ins: small corpora written here, the byte
tokenizer or a tokenizer saved to a local folder; nothing is downloaded."""
import dataclasses
import sys

import numpy as np
import pytest
import torch

from lab.data import text
from lab.papers.ado import experiments as ex
from lab.papers.ado import method as ado
from lab.train import TrainConfig

WORDS = {"prose": "the cat sat on the mat and looked at the door. ",
         "code": "def f(x):\n    return x * 2\n",
         "math": "12 + 30 = 42; 7 * 6 = 42. "}


@pytest.fixture
def corpora(tmp_path):
    folder = tmp_path / "corpora"
    folder.mkdir()
    for i, (name, unit) in enumerate(WORDS.items()):
        (folder / f"{name}.txt").write_text(unit * (40 + 30 * i))
    return folder


def test_text_mixture_windows_come_from_the_right_part_of_each_corpus(corpora):
    ids = text.load_corpora(corpora, text.ByteTokenizer())
    world = text.TextMixture(ids, 256, 16, val_fraction=0.1)
    assert world.names == sorted(WORDS) and world.vocab == 256
    assert np.isnan(world.entropies).all()
    sizes = np.array([len(world.domains[k].train) for k in range(3)])
    assert world.token_share == pytest.approx(sizes / sizes.sum())
    g = torch.Generator().manual_seed(0)
    tokens, which = world.sample([0.2, 0.3, 0.5], 64, g)
    assert tokens.shape == (64, 16) and which.shape == (64,)

    def inside(window, ids):
        hay = ids.tolist()
        w = window.tolist()
        return any(hay[i:i + len(w)] == w for i in range(len(hay) - len(w) + 1))

    for row, k in zip(tokens[:12], which[:12], strict=True):
        assert inside(row, world.domains[int(k)].train)
    for k, val in enumerate(world.validation(5, seed=1)):
        assert val.shape == (5, 16) and all(inside(row, world.domains[k].held_out) for row in val)
    assert torch.equal(world.validation(5, seed=1)[0], world.validation(5, seed=1)[0])


def test_load_corpora_caches_the_ids_and_notices_a_changed_file(corpora):
    tok = text.ByteTokenizer()
    first = text.load_corpora(corpora, tok)
    assert len(list(corpora.glob("*.npy"))) == 3
    again = text.load_corpora(corpora, tok)
    assert all(torch.equal(first[k], again[k]) for k in first)
    (corpora / "math.txt").write_text("1 + 1 = 2. " * 200)
    changed = text.load_corpora(corpora, tok)
    assert bytes(changed["math"][:11].tolist()).decode() == "1 + 1 = 2. "


def test_text_inputs_are_checked(corpora, tmp_path):
    ids = text.load_corpora(corpora, text.ByteTokenizer())
    with pytest.raises(FileNotFoundError, match="prepare_corpora"):
        text.load_corpora(tmp_path / "nowhere", text.ByteTokenizer())
    with pytest.raises(ValueError, match="corpora"):
        text.TextMixture({}, 256, 16)
    with pytest.raises(ValueError, match="too few"):
        text.TextMixture({"short": torch.arange(10)}, 256, 16)
    with pytest.raises(ValueError, match="outside"):
        text.TextMixture(ids, 100, 16)
    with pytest.raises(ValueError, match="length"):
        text.TextMixture(ids, 256, 1)
    with pytest.raises(TypeError, match="text"):
        text.ByteTokenizer()(b"bytes")


def test_without_the_network_or_packages_the_errors_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(RuntimeError, match="datasets"):
        text.prepare_corpora(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RuntimeError, match="transformers"):
        text.hub_tokenizer("EleutherAI/pythia-70m")
    from lab.nn.hublm import pythia_from_scratch
    with pytest.raises(RuntimeError, match="transformers"):
        pythia_from_scratch("pythia-70m", vocab=256)


def test_a_hub_tokenizer_loads_from_a_local_folder_and_fails_clearly_when_absent(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "on", "mat"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    tok = text.hub_tokenizer(str(tmp_path / "tok"), local_files_only=True)
    assert tok("the cat sat on the mat") == [1, 2, 3, 4, 1, 5] and tok.vocab == 6
    with pytest.raises(RuntimeError, match="hub"):
        text.hub_tokenizer("no-such-owner/no-such-tokenizer", local_files_only=True)


def test_the_pythia_70m_architecture_has_the_suites_non_embedding_size():
    pytest.importorskip("transformers")
    from lab.nn import sequence_losses
    from lab.nn.hublm import pythia_from_scratch
    model = pythia_from_scratch("pythia-70m", vocab=256, context=32)
    total = sum(p.numel() for p in model.parameters())
    assert total - 2 * 256 * 512 == 18_915_328            # Pythia-70m's non-embedding parameters
    tokens = torch.randint(0, 256, (2, 12))
    assert model(tokens).shape == (2, 12, 256) and sequence_losses(model, tokens).shape == (2,)
    with pytest.raises(ValueError, match="size"):
        pythia_from_scratch("pythia-7b")


def test_the_text_study_runs_every_policy_on_local_corpora(corpora, tmp_path):
    cfg = ex.LMConfig(world="text", prior=None, corpora=str(corpora), tokenizer="bytes", length=16,
                      d_model=32, n_layers=1, n_heads=2, d_mlp=64, batch=16, n_val=8,
                      train=TrainConfig(steps=40, lr=3e-3, optimizer="adamw", progress_every=20),
                      ado=dataclasses.replace(ex.LMConfig.ado, update_interval=10, start_step=10,
                                              ignore_steps=0, savgol_window=5, min_points=5, subsample=1))
    runs = ex.run_text_study(cfg, seed=0, run_dir=tmp_path / "runs")
    assert list(runs) == ["natural", "uniform", "ado"]
    world = cfg.mixture(0)
    assert runs["natural"]["pi"][-1] == pytest.approx(world.token_share)
    for rec in runs.values():
        assert rec["val"].shape == (3,) and np.isfinite(rec["val"]).all() and rec["val"].mean() < np.log(256)
    assert len(runs["ado"]["refits"]) >= 2
    with pytest.raises(ValueError, match="text"):
        ex.run_text_study(ex.LMConfig(), seed=0)
    with pytest.raises(ValueError, match="prior"):
        ex.LMConfig(prior=None)
    with pytest.raises(ValueError, match="architecture"):
        ex.LMConfig(architecture="pythia-7b")


def test_the_gpu_preset_is_the_specifications_text_study():
    text_cfg = ex.PRESETS["gpu"].text
    assert text_cfg.world == "text" and text_cfg.architecture == "pythia-70m" and text_cfg.prior is None
    assert text_cfg.ado.update_interval == text_cfg.ado.start_step == 250 and text_cfg.ado.ignore_steps == 100
    assert len(text_cfg.ado.grid) == len(ado.OFFICIAL_GRID) == 512 and text_cfg.ado.bounds.log_eps_min == 0
    assert ex.PRESETS["tiny"].text is None
