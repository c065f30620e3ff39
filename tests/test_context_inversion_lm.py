"""The context-inversion chapter's trained tiny transformer (lab.papers.context_inversion.tinylm):
the worlds' items, the QK-only restriction, caching and determinism, on small settings."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lab.papers.context_inversion import tinylm as tl

SMALL = tl.WorldConfig(answers=8, memorised_ift=6, memorised_heldout=5, unmemorised=7, d_model=16,
                       n_heads=2, d_mlp=32, pretrain_steps=6, pretrain_batch=16, ift_steps=6,
                       ift_batch=8, eval_every=2)


def test_slots_items_hold_the_answer_and_maybe_a_distractor():
    cfg = tl.WorldConfig()
    world = tl.make_world(cfg, 0)
    g = torch.Generator().manual_seed(0)
    subject = world.ift_subjects[:200 % len(world.ift_subjects)]
    answer = world.a_mem[subject]
    flags = torch.arange(len(subject)) % 2 == 0
    tokens = tl.encode(world, subject, answer, flags, g)
    assert tokens.shape == (len(subject), cfg.length) and cfg.vocab == 555
    slots = tokens[:, 1:3]
    assert torch.all((slots == answer[:, None]).sum(1) == 1)               # the answer, once
    pad = cfg.marker("PAD")
    assert torch.all((slots == pad).any(1) == ~flags)                      # a pad iff no distractor
    assert torch.all(tokens[:, -2] == cfg.answers + subject)
    closed = tl.encode(world, subject, None, None, g)
    assert torch.all(closed[:, 0] == cfg.marker("NOC")) and torch.all(closed[:, 1:3] == pad)


def test_pairs_items_name_the_question_subject_once_with_its_answer():
    cfg = tl.WorldConfig(world="pairs")
    world = tl.make_world(cfg, 1)
    g = torch.Generator().manual_seed(1)
    subject = world.unmemorised_subjects
    answer = world.c_answer[subject]
    tokens = tl.encode(world, subject, answer, None, g)
    subj, ans = tokens[:, 1:7:2] - cfg.answers, tokens[:, 2:7:2]
    hit = subj == subject[:, None]
    assert torch.all(hit.sum(1) == 1)
    assert torch.all(ans[hit] == answer)


def test_world_groups_and_batches():
    world = tl.make_world(tl.WorldConfig(), 2)
    groups = torch.cat([world.ift_subjects, world.heldout_subjects, world.unmemorised_subjects])
    assert sorted(groups.tolist()) == list(range(500))
    assert torch.all(world.a_mem[world.unmemorised_subjects] == -1)
    assert torch.all(world.a_mem[world.ift_subjects] >= 0)
    g = torch.Generator().manual_seed(0)
    tokens, target = tl.ift_batch(world, 4000, g)
    subject = tokens[:, -2] - world.cfg.answers
    is_c = world.a_mem[subject] < 0
    assert 0.22 < float(is_c.float().mean()) < 0.28
    assert torch.all(target[is_c] == world.c_answer[subject[is_c]])        # the fixed C answers
    assert torch.all(target[~is_c] == world.a_mem[subject[~is_c]])
    assert set(subject[~is_c].tolist()) <= set(world.ift_subjects.tolist())
    tokens, target = tl.pretrain_batch(world, 4000, g)
    has_ctx = tokens[:, 0] == world.cfg.marker("CTX")
    assert 0.45 < float(has_ctx.float().mean()) < 0.55


def test_probe_items_are_counterfactual_and_clean():
    world = tl.make_world(tl.WorldConfig(), 3)
    probe = tl.make_probe(world, 3)
    tokens, a_ctx, a_mem = probe.cf_seen
    assert torch.all(a_ctx != a_mem) and len(a_ctx) == 150
    assert torch.all(tokens[:, 1:3].eq(world.cfg.marker("PAD")).sum(1) == 1)   # no distractor


def test_qk_only_trains_queries_and_keys_only_and_caching_is_exact(tmp_path):
    world = tl.make_world(SMALL, 0)
    probe = tl.make_probe(world, 0)
    model = tl.pretrain(world, 0, run_dir=tmp_path / "pre", progress=False)
    again = tl.pretrain(world, 0, run_dir=tmp_path / "pre", progress=False)      # from the cache
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handles = tl.qk_only(model)
    from lab.train import TrainConfig, train

    def loss_fn(m, g):
        return tl.last_loss(m, *tl.ift_batch(world, 8, g), SMALL.answers)

    train(model, loss_fn, TrainConfig(steps=5, lr=1e-2), seed=0, progress=False)
    for h in handles:
        h.remove()
    after = model.state_dict()
    d = SMALL.d_model
    for name, value in after.items():
        if name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            assert torch.equal(value[2 * d:], before[name][2 * d:])             # the value rows
            assert not torch.equal(value[:2 * d], before[name][:2 * d])
        else:
            assert torch.equal(value, before[name]), name
    a = tl.finetune_lm(again, world, probe, 0, "full", progress=False)
    b = tl.finetune_lm(again, world, probe, 0, "full", progress=False)
    assert a.steps.tolist() == [0, 2, 4, 6]
    assert all((a[k] == b[k]).all() for k in a.metrics)
    s = tl.lm_summary(a)
    assert s["peak"] >= max(s["start"], s["final"]) and 0 <= s["final"] <= 1


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="world"):
        tl.WorldConfig(world="grid")
    with pytest.raises(ValueError, match="distractor"):
        tl.WorldConfig(distractor=1.5)
    with pytest.raises(ValueError, match="pairs"):
        dataclasses.replace(SMALL, world="pairs", pairs=100)
    with pytest.raises(TypeError, match="cfg"):
        tl.make_world({"world": "slots"}, 0)
    world = tl.make_world(SMALL, 0)
    with pytest.raises(ValueError, match="variant"):
        tl.finetune_lm(tl.new_model(SMALL, 0), world, tl.make_probe(world, 0), 0, "LoRA")
    with pytest.raises(TypeError, match="pretrained"):
        tl.finetune_lm(torch.nn.Linear(2, 2), world, tl.make_probe(world, 0), 0)
    with pytest.raises(TypeError, match="model"):
        tl.qk_only(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="seed"):
        tl.make_world(SMALL, -1)
