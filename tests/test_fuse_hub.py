"""The FUSE chapter's gpu scale on a local stand-in: word list, float32 fit vs the float64
reference, the safetensors cache, and clear errors offline."""
import pytest
import torch

from lab.papers.fuse import experiments as ex
from lab.papers.fuse import hub
from lab.papers.fuse import method as M


def stand_in(n_words=300, dA=16, dB=12, vocab_A=400, vocab_B=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    tA = torch.randn(vocab_A, dA, generator=g)
    tB = torch.randn(vocab_B, dB, generator=g)
    words = [f"w{i}" for i in range(n_words)]
    ids_A = {w: [int(i) for i in torch.randint(vocab_A, (1 + i % 2,), generator=g)]
             for i, w in enumerate(words)}
    ids_B = {w: [int(i) for i in torch.randint(vocab_B, (1 + i % 5,), generator=g)]
             for i, w in enumerate(words)}
    return words, ids_A.get, ids_B.get, tA, tB


def test_words_from_lines_are_unique_lower_case_shuffled_and_capped():
    words = hub.words_from_lines(["The cat sat", "the Dog"], n_max=3, seed=1)
    assert len(words) == 3 and set(words) <= {"the", "cat", "sat", "dog"}
    assert hub.words_from_lines(["b a", "A"], seed=0) in (["a", "b"], ["b", "a"])
    with pytest.raises(ValueError, match="lines"):
        hub.words_from_lines([" "])


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_float32_fit_equals_the_float64_reference(device):
    words, ids_A, ids_B, tA, tB = stand_in()
    fast = hub.fit_maps(words, ids_A, ids_B, tA, tB, n_max=50, device=device, dtype=torch.float32)
    ref = hub.fit_maps(words, ids_A, ids_B, tA.double(), tB.double(), n_max=50, device="cpu",
                       dtype=torch.float64)
    assert set(fast.maps) == {1, 2, 3, 4} and all(len(v) == 50 for v in fast.words.values())
    for k in ref.maps:
        assert fast.maps[k].device.type == device and fast.maps[k].dtype == torch.float32
        torch.testing.assert_close(fast.maps[k].cpu().double(), ref.maps[k], atol=1e-4, rtol=1e-3)
    # N = 50 > d_A = 16: least squares; the normal equations hold for the reference
    k = 2
    XA = torch.cat([M.word_tensor(tA.double(), ids_A(w), k) for w in ref.words[k]])
    XB = torch.cat([M.word_tensor(tB.double(), ids_B(w), k) for w in ref.words[k]])
    normal = M.t_product(M.t_transpose(XA), M.t_product(XA, ref.maps[k]) - XB)
    assert normal.abs().max() < 1e-8


def test_maps_round_trip_through_safetensors(tmp_path):
    words, ids_A, ids_B, tA, tB = stand_in()
    maps = hub.fit_maps(words, ids_A, ids_B, tA, tB, n_max=20)
    back = hub.load_maps(hub.save_maps(maps, tmp_path / "maps.safetensors"))
    assert back.words == maps.words and (back.d_A, back.d_B) == (maps.d_A, maps.d_B)
    for k in maps.maps:
        torch.testing.assert_close(back.maps[k], maps.maps[k], atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="path"):
        hub.load_maps(tmp_path / "missing.safetensors")


def test_offline_hub_load_fails_with_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match="LAB_SCALE=tiny"):
        hub.load_models({"lm": "no-such-org/no-such-lm", "clip": "no-such-org/no-such-clip"})
    with pytest.raises(ValueError, match="setup"):
        hub.load_models({"lm": "", "clip": "x/y"})


def test_gpu_preset_names_the_code_defaults_and_captioning_says_it_is_not_built():
    cfg = ex.PRESETS["gpu"]
    assert cfg.gpu["lm"] == "gpt2-medium" and cfg.gpu["clip"] == "openai/clip-vit-base-patch32"
    assert ex.PRESETS["paper"].gpu["n_max"] == 16834
    with pytest.raises(NotImplementedError, match="LAB_SCALE=tiny"):
        ex.captioning(None, None, cfg, 0)
