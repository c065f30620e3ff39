"""The context-inversion chapter: the exact one-layer toy (spec §6 checks) and its experiments."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from lab.papers.context_inversion import answers
from lab.papers.context_inversion import experiments as ex
from lab.papers.context_inversion import method as m

SHORT = dataclasses.replace(m.ToyConfig(), steps=40)


@pytest.fixture(scope="module")
def toy():
    return m.build(m.ToyConfig(), seed=3)


def test_embeddings_are_unit_and_share_only_their_type(toy):
    emb = toy.emb
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb), dtype=torch.float64), atol=1e-12)
    gram = emb @ emb.T
    kind = emb[:, -3:].argmax(1)                      # the type direction of each token
    same = kind[:, None] == kind[None, :]
    off = ~torch.eye(len(emb), dtype=torch.bool)
    assert torch.allclose(gram[off & same], torch.tensor(0.5, dtype=torch.float64))
    assert torch.all(gram[off & ~same] == 0)


def test_built_memory_and_copy_probabilities(toy):
    w_v = toy.memory0 * toy.memory_mask + toy.copy
    for keys, target, _ in (toy.items["C+S"],):
        p_mem = torch.softmax(toy.emb[keys[:, 1]] @ w_v.T, 1)[torch.arange(len(target)), target]
        assert torch.allclose(p_mem, torch.full_like(p_mem, 0.6), atol=1e-6)
    keys, target, _ = toy.items["C"]
    p_copy = torch.softmax(toy.emb[keys[:, 0]] @ w_v.T, 1)[torch.arange(len(target)), target]
    assert torch.allclose(p_copy, torch.full_like(p_copy, 0.2), atol=1e-6)
    keys, _ = toy.fresh                              # unmemorised subjects carry no memory
    assert torch.all(toy.emb[keys[:, 1]] @ w_v.T == 0)


def test_M_C_at_initialisation_is_analytic(toy):
    w_kq = torch.zeros(toy.emb.shape[1], toy.emb.shape[1], dtype=torch.float64)
    keys, a_ctx, a_mem = toy.test
    logits, attn = m.forward(toy, w_kq, toy.memory0, keys)
    assert torch.allclose(attn, torch.full_like(attn, 0.5))
    K = toy.cfg.answers
    margin = 0.5 * (m.logit_for(0.2, K) - m.logit_for(0.6, K))   # = ½ ln(1/6) for any K
    expected = 1 / (1 + math.exp(-margin))
    assert m.reliance(logits, a_ctx, a_mem)["M_C"] == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1 / (1 + math.sqrt(6)), abs=1e-12)
    assert expected == pytest.approx(0.290, abs=5e-4)


def _reference_contributions(toy, w_kq, memory):
    """The plain definition: one backward pass per group."""
    w_kq, memory = w_kq.clone().requires_grad_(), memory.clone().requires_grad_()
    params = (w_kq, memory) if toy.cfg.train_memory else (w_kq,)
    g_margin = torch.autograd.grad(m.test_margin(toy, w_kq, memory), params)
    n = len(toy.train_target)
    out = {}
    for i, group in enumerate(toy.items):
        loss = m.item_losses(toy, w_kq, memory)[toy.train_group == i].sum() / n
        g_loss = torch.autograd.grad(loss, params)
        out[group] = -sum(float((a * b).sum()) for a, b in zip(g_loss, g_margin))
    return out


@pytest.mark.parametrize("name", m.VARIANTS)
def test_forward_mode_contributions_equal_the_reference(name):
    toy = m.build(m.variant(name), seed=1)
    trace = m.finetune(toy, steps=5)          # a point away from the start
    fast = m.contributions(toy, trace.w_kq, trace.memory)
    ref = _reference_contributions(toy, trace.w_kq, trace.memory)
    assert fast.keys() == ref.keys()
    for g in fast:
        assert fast[g] == pytest.approx(ref[g], rel=1e-10, abs=1e-13)


def test_step_zero_signs_and_finite_difference(toy):
    w_kq = torch.zeros(toy.emb.shape[1], toy.emb.shape[1], dtype=torch.float64)
    memory = toy.memory0.clone()
    contrib = m.contributions(toy, w_kq, memory)
    assert contrib["C"] > 0 > contrib["C+S"]
    eta, n = 1e-4, len(toy.train_target)
    base = float(m.test_margin(toy, w_kq, memory))
    for i, group in enumerate(toy.items):
        wq, mem = w_kq.clone().requires_grad_(), memory.clone().requires_grad_()
        loss = m.item_losses(toy, wq, mem)[toy.train_group == i].sum() / n
        gw, gm = torch.autograd.grad(loss, (wq, mem))
        moved = float(m.test_margin(toy, w_kq - eta * gw, memory - eta * gm)) - base
        assert moved / eta == pytest.approx(contrib[group], rel=0.05)


def test_contributions_add_up_to_the_full_loss_step(toy):
    trace = m.finetune(toy, steps=3)
    contrib = m.contributions(toy, trace.w_kq, trace.memory)
    wq, mem = trace.w_kq.clone().requires_grad_(), trace.memory.clone().requires_grad_()
    gl = torch.autograd.grad(m.item_losses(toy, wq, mem).mean(), (wq, mem))
    gmar = torch.autograd.grad(m.test_margin(toy, wq, mem), (wq, mem))
    full = -sum(float((a * b).sum()) for a, b in zip(gl, gmar))
    assert sum(contrib.values()) == pytest.approx(full, rel=1e-10)


def test_qk_only_leaves_the_memory_bit_identical():
    toy = m.build(m.variant("QK-only", SHORT), seed=0)
    trace = m.finetune(toy)
    assert torch.equal(trace.memory, toy.memory0)
    assert trace.w_kq.abs().max() > 0
    assert set(trace.contrib) == {"C", "C+S"}


def test_float64_runs_are_deterministic():
    a = m.finetune(m.build(SHORT, seed=2))
    b = m.finetune(m.build(SHORT, seed=2))
    for key in ("M_C", "CF", "PAR", "margin", "attn_ctx", "loss"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert all(np.array_equal(a.contrib[g], b.contrib[g]) for g in a.contrib)
    assert a.w_kq.dtype == torch.float64


def test_contributions_at_chosen_steps_equal_the_full_record():
    full = m.finetune(m.build(SHORT, seed=4))
    some = m.finetune(m.build(SHORT, seed=4), record=(0, 7, 40))
    for g in full.contrib:
        kept = ~np.isnan(some.contrib[g])
        assert list(np.nonzero(kept)[0]) == [0, 7, 40]
        assert np.array_equal(some.contrib[g][kept], full.contrib[g][[0, 7, 40]])
    assert np.array_equal(some.M_C, full.M_C)
    with pytest.raises(ValueError, match="record step"):
        m.finetune(m.build(SHORT, seed=4), record=(41,))


def test_metric_sanity_over_a_run():
    trace = m.finetune(m.build(SHORT, seed=0))
    assert np.all(trace.CF + trace.PAR <= 1 + 1e-12)
    assert np.all((trace.M_C >= 0) & (trace.M_C <= 1))
    assert np.all((trace.attn_ctx >= 0) & (trace.attn_ctx <= 1))


def test_reliance_refuses_agreeing_items_and_bad_shapes():
    logits = torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="not counterfactual"):
        m.reliance(logits, torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match="items × answers"):
        m.reliance(logits[0], torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="one answer per item"):
        m.reliance(logits, torch.tensor([0, 1]), torch.tensor([1, 2]))
    out = m.reliance(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([0]), torch.tensor([2]))
    assert out["CF"] == 1 and out["PAR"] == 0
    assert out["M_C"] == pytest.approx(1 / (1 + math.exp(-1)))


def test_test_items_conflict_and_use_ift_answers():
    for name in m.VARIANTS:
        toy = m.build(m.variant(name), seed=5)
        _, a_ctx, a_mem = toy.test
        assert torch.all(a_ctx != a_mem)
        used = set(toy.train_target.tolist())
        assert set(a_ctx.tolist()) <= used and set(a_mem.tolist()) <= used
        if "CF" in toy.items:
            k, target, _ = toy.items["CF"]
            assert torch.all(target != toy.a_mem[k[:, 1]])


@pytest.mark.parametrize("change, match", [
    ({"n_c": -1}, "n_c"), ({"n_cs": -3}, "n_cs"), ({"n_test": 0}, "n_test"),
    ({"n_c": 0, "n_cs": 0}, "group sizes"), ({"p_mem": 1.0}, "p_mem"), ({"p_copy": 0.0}, "p_copy"),
    ({"p_mem": -0.2}, "p_mem"), ({"answers": 1}, "answers"), ({"lr": 0.0}, "lr"),
])
def test_bad_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(m.ToyConfig(), **change)


def test_bad_variant_seed_and_config_type():
    with pytest.raises(ValueError, match="variant"):
        m.variant("filtered")
    with pytest.raises(ValueError, match="variant"):
        ex.run_variants(ex.PRESETS["tiny"], 0, names=("nope",))
    with pytest.raises(TypeError, match="cfg"):
        m.build({"n_c": 20})
    with pytest.raises(TypeError, match="toy"):
        m.finetune(m.ToyConfig())
    with pytest.raises(ValueError, match="seed"):
        m.build(m.ToyConfig(), seed=-1)


def test_presets_and_summary():
    for scale in ("tiny", "gpu", "paper"):
        assert isinstance(ex.PRESETS[scale], ex.ChapterConfig)
    trace = m.finetune(m.build(SHORT, seed=0), record=False)
    s = ex.summary(trace)
    assert s["start"] == pytest.approx(trace.M_C[0]) and s["peak"] >= s["start"]
    assert set(trace.contrib) == {"C", "C+S"} and all(len(v) == 0 for v in trace.contrib.values())
    assert ex.first_step(trace, lambda t: t.M_C > 2) is None


def test_exercise_answers():
    assert answers.initial_reliance() == pytest.approx(1 / (1 + math.sqrt(6)))
    assert answers.initial_margin() == pytest.approx(0.5 * math.log(1 / 6))
    a = answers.attention_to_win()
    cfg = m.ToyConfig()
    assert a * m.logit_for(cfg.p_copy, 100) == pytest.approx((1 - a) * m.logit_for(cfg.p_mem, 100))
