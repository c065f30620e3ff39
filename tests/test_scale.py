import pytest

from lab import scale


def test_scale_and_seed_from_environment(monkeypatch):
    monkeypatch.setenv("LAB_SCALE", "gpu")
    monkeypatch.setenv("LAB_SEED", "7")
    assert scale.current_scale() == "gpu" and scale.current_seed() == 7
    monkeypatch.setenv("LAB_SCALE", "huge")
    with pytest.raises(ValueError, match="LAB_SCALE must be one of 'tiny', 'gpu', 'paper'"):
        scale.current_scale()
    monkeypatch.setenv("LAB_SEED", "1.5")
    with pytest.raises(ValueError, match="LAB_SEED must be an integer"):
        scale.current_seed()
    monkeypatch.delenv("LAB_SEED")
    assert scale.current_seed() == 0


def test_default_scale_follows_hardware(monkeypatch):
    monkeypatch.delenv("LAB_SCALE", raising=False)
    import torch
    assert scale.current_scale() == ("gpu" if torch.cuda.is_available() else "tiny")


def test_explicit_values_are_checked():
    assert scale.current_seed("3") == 3
    with pytest.raises(ValueError, match="seed must be an integer"):
        scale.current_seed("x")
    with pytest.raises(TypeError, match="seed must be an integer"):
        scale.current_seed(2.0)
    with pytest.raises(ValueError, match="scale must be one of"):
        scale.current_scale("large")


def test_preset_and_start(monkeypatch):
    assert scale.preset({"tiny": 1, "gpu": 2}, "gpu") == 2
    with pytest.raises(ValueError, match="no preset"):
        scale.preset({"tiny": 1}, "paper")
    monkeypatch.setenv("LAB_SCALE", "tiny")
    session, cfg, ledger = scale.start("mode-interpolation", seed=5)
    assert session.scale == "tiny" and session.seed == 5 and str(session.device) == "cpu"
    assert session.threads == 1 and "seed 5" in str(session)
    from lab.papers.mode_interpolation.experiments import PRESETS
    assert cfg is PRESETS["tiny"]
    assert (ledger.chapter, ledger.scale, ledger.seed) == ("mode-interpolation", "tiny", 5)
    with pytest.raises(ValueError, match="chapter must be one of"):
        scale.start("nope")


def test_start_applies_the_chapter_environment_hook(monkeypatch):
    monkeypatch.setenv("LAB_SCALE", "tiny")
    monkeypatch.setenv("LAB_ABLATIONS", "1")
    _, cfg, _ = scale.start("mimetic-init")
    assert "A only" in cfg.ablations
    monkeypatch.setenv("LAB_ABLATIONS", "")
    _, cfg, _ = scale.start("mimetic-init")
    assert cfg.ablations == ()
