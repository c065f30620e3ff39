"""Mimetic initialisation: the recipe's invariants, the tasks, claim 4's statistic, a short training smoke test."""
import dataclasses

import pytest
import torch

from lab.nn.ssm import Mamba1, Mamba2
from lab.papers.mimetic_init import experiments as ex
from lab.papers.mimetic_init import method as mm
from lab.train import TrainConfig

CFG = ex.CopyConfig()


def test_copy_batch_layout():
    x, y = ex.copy_batch(3, 5, 7, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 11)
    assert (x[:, 0] == 7).all() and (x[:, 6] == 8).all()
    assert torch.equal(x[:, 1:6][:, :4], x[:, 7:])          # the second copy, teacher-forced
    assert (y[:, :6] == -100).all() and torch.equal(y[:, 6:], x[:, 1:6])


def test_mqar_batch_semantics():
    x, y = ex.mqar_batch(4, 32, 64, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 32)
    for row_x, row_y in zip(x, y):
        keys, values = row_x[0:8:2], row_x[1:8:2]
        assert len(set(keys.tolist())) == 4 and (keys >= 1).all() and (keys < 32).all()
        assert (values >= 32).all()
        due = (row_y != -100).nonzero().flatten()
        assert len(due) == 4
        for pos in due:                                      # the input at pos is a key; answer its value
            k = row_x[pos].item()
            assert row_y[pos] == values[(keys == k).nonzero()[0, 0]]


def test_mimetic_ties_and_decay():
    torch.manual_seed(0)
    model = CFG.model("mimetic", 0)
    for m in model.mixers:
        s, c = m.in_proj_slices(), m.conv_slices()
        assert torch.equal(m.in_proj.weight[s["C"]], m.in_proj.weight[s["B"]])
        assert torch.equal(m.conv1d.weight[c["C"]], m.conv1d.weight[c["B"]])
        assert torch.equal(m.conv1d.bias[c["C"]], m.conv1d.bias[c["B"]])
        assert mm.per_step_decay(m).min() >= 0.99
    u = model.layer_inputs(CFG.map_input()[:1])[0]
    s = model.mixers[0].ssm_inputs(u)
    gram = torch.einsum("bin,bjn->bij", s["C"][:, :, 0], s["B"][:, :, 0])[0]
    scale = gram.abs().max()
    assert (gram - gram.T).abs().max() <= 1e-6 * scale
    assert torch.linalg.eigvalsh(gram.double()).min() >= -1e-5 * scale


def test_default_decay_is_fast_somewhere():
    for seed in range(4):                                   # over both layers' 16 heads
        model = CFG.model("default", seed)
        assert min(mm.per_step_decay(m).min() for m in model.mixers) < 0.8


def test_mamba1_recipe():
    torch.manual_seed(0)
    m = Mamba1(16, d_state=4)
    mm.mimetic_(m, mm.Recipe(identity_conv=True))
    s = m.x_proj_slices()
    assert torch.equal(m.x_proj.weight[s["C"]], m.x_proj.weight[s["B"]])
    assert mm.per_step_decay(m).min() >= 0.99
    assert torch.equal(m.conv1d.weight[..., -1], torch.ones_like(m.conv1d.weight[..., -1]))
    u = torch.randn(1, 10, 16)
    st = m.ssm_inputs(u)
    assert torch.allclose(st["B"], st["C"])


def test_ablation_switches():
    torch.manual_seed(0)
    m = Mamba2(32, d_state=8, headdim=8)
    before = m.A_log.clone()
    mm.mimetic_(m, mm.recipe("BC only"))
    assert torch.equal(m.A_log, before)
    s = m.in_proj_slices()
    assert torch.equal(m.in_proj.weight[s["C"]], m.in_proj.weight[s["B"]])
    mm.mimetic_(m, mm.Recipe(tie=False, tie_noise=0.1))
    assert torch.equal(m.A_log, torch.full_like(m.A_log, -6.0))
    noisy = mm.mimetic_(Mamba2(32, d_state=8, headdim=8), mm.Recipe(tie_noise=0.1),
                        generator=torch.Generator().manual_seed(0))
    d = noisy.in_proj.weight[s["C"]] - noisy.in_proj.weight[s["B"]]
    assert 0 < d.abs().max() < 1


def test_claim4_thresholds_on_init_seeds():
    shares = {init: torch.tensor(ex.initial_shares(CFG, init, range(4))) for init in ("default", "mimetic")}
    assert shares["mimetic"].min() >= 0.55 and shares["default"].max() <= 0.45
    assert (shares["mimetic"] - shares["default"]).mean() >= 0.20


def test_memory_length_and_mass_share():
    assert mm.memory_length(-6.0, 0.5413) == pytest.approx(4.6052 / 0.0024788, rel=1e-3)
    M = torch.zeros(5, 5)
    M[3, 0], M[3, 3], M[4, 1] = 1.0, 1.0, 2.0               # L = 2: rows 3, 4; columns < 2
    assert mm.mass_share(M, 2) == pytest.approx(3 / 4)


def test_smoke_training_mimetic_beats_default():
    cfg = dataclasses.replace(CFG, length=16, batch=16, eval_every=30, eval_size=32,
                              train=TrainConfig(steps=60, lr=3e-3, progress_every=60))
    runs = {init: ex.train_copy(cfg, init, 0) for init in ("default", "mimetic")}
    assert runs["mimetic"].losses[-10:].mean() < runs["default"].losses[-10:].mean()
    assert runs["mimetic"].steps == [0, 30, 60] and len(runs["mimetic"].maps) == 3
    assert set(runs["mimetic"].maps[0]) == {"full", "cb", "decay"}


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="init"):
        mm.recipe("xavier")
    with pytest.raises(ValueError, match="init"):
        CFG.model("orthogonal")
    with pytest.raises(ValueError, match="seq_len must be even"):
        ex.mqar_batch(1, 15, 64, 2)
    with pytest.raises(ValueError, match="vocab"):
        ex.mqar_batch(1, 16, 16, 2)
    with pytest.raises(ValueError, match="num_kv"):
        ex.mqar_batch(1, 16, 64, 5)
    with pytest.raises(TypeError, match="model"):
        mm.mimetic_(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="recipe"):
        mm.mimetic_(Mamba2(16, d_state=4, headdim=8), "mimetic")
    with pytest.raises(ValueError, match="tie_noise"):
        mm.Recipe(tie_noise=-1.0)
    with pytest.raises(ValueError, match="length"):
        ex.copy_batch(2, 0, 4)
    with pytest.raises(ValueError, match="arm"):
        ex.accuracy_at({}, "mimetic", 300)
    with pytest.raises(ValueError, match="mixer"):
        ex.CopyConfig(mixer="mamba3")


def test_recipes_are_the_named_ones():
    assert ex.PRESETS["tiny"].copy.train == ex.RECIPES["constant"]
    one = ex.RECIPES["one-cycle"]
    assert (one.optimizer, one.weight_decay, one.betas, one.grad_clip) == ("adamw", 0.0, (0.9, 0.999), 1.0)
    assert one.warmup_steps == one.steps // 10 and one.lr_final == pytest.approx(one.lr / 25e4)


# -- the batch-32 reference configuration (about 3 minutes on one thread of a busy CPU) ----------
@pytest.mark.slow
def test_batch_32_reference_configuration():
    """Batch 32, the chapter's recipe (constant-rate Adam), 300 steps, seeds 0 and 1: mimetic ≥ 0.80
    and default ≤ 0.40 token accuracy at step 300 (measured 0.903 / 0.918 and 0.085 / 0.273).
    The same configuration under AdamW with one-cycle and clipping, the recipe these thresholds
    were first stated for, reached only 0.271 / 0.574: the chapter shows that sweep too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dataclasses.replace(ex.PRESETS["tiny"], copy=dataclasses.replace(CFG, batch=32), workers=1)
        runs = ex.run_experiment(cfg, 0)
    finally:
        torch.set_num_threads(threads)
    mimetic, default = ex.accuracy_at(runs, "mimetic", 300), ex.accuracy_at(runs, "default", 300)
    assert set(mimetic) == {0, 1}
    assert min(mimetic.values()) >= 0.80, mimetic
    assert max(default.values()) <= 0.40, default
