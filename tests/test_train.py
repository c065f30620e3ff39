import dataclasses
import itertools
import json
import math

import pytest
import torch

from lab.train import EMA, TrainConfig, learning_rate, train


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    w = torch.tensor([[1.0], [-2.0], [0.5]])

    def loss_fn(net, g):
        x = torch.randn(16, 3, generator=g)
        return (net(x) - x @ w).pow(2).mean()
    return model, loss_fn


def test_cosine_schedule_values():
    cfg = TrainConfig(steps=5000, lr=1e-3, lr_final=1e-5)
    assert learning_rate(0, cfg) == pytest.approx(1e-3)
    assert learning_rate(2500, cfg) == pytest.approx(5.05e-4)
    assert learning_rate(5000, cfg) == pytest.approx(1e-5)
    assert learning_rate(1234, TrainConfig(steps=10, lr=3e-4)) == 3e-4


def test_ema_after_one_step():
    net = torch.nn.Linear(2, 1)
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    ema = EMA(net, 0.999)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for k, v in net.state_dict().items():
        assert torch.allclose(ema.shadow[k], 0.999 * theta0[k] + 0.001 * v)


def _ema_of(values, beta, bias_correction):
    """The EMA's value after each of `values` (a scalar parameter set to each in turn), from θ₀ = 5."""
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(5.0)
    ema = EMA(net, beta, bias_correction)
    out = []
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        ema.update(net)
        out.append(float(ema.shadow["weight"]))
    assert ema.updates == len(values)
    return out


def test_bias_corrected_ema_by_hand():
    # β = 1/2, θ = 1, 2, 3: debiased averages 1, (½·1 + 2)/(3/2) = 5/3, (¼·1 + ½·2 + 3)/(7/4) = 17/7
    assert _ema_of([1.0, 2.0, 3.0], 0.5, True) == pytest.approx([1.0, 5 / 3, 17 / 7], abs=1e-6)
    # plain: the initial 5 keeps the weight β^k
    assert _ema_of([1.0, 2.0, 3.0], 0.5, False) == pytest.approx([3.0, 2.5, 2.75], abs=1e-6)
    # a constant parameter: the debiased average is that constant from the first step on,
    # the plain one still holds (θ₀ − c)·β^k of the initial weights
    c, beta = 0.3, 0.999
    assert _ema_of([c] * 50, beta, True) == pytest.approx([c] * 50, rel=1e-6)   # float32 rounding
    plain = _ema_of([c] * 3000, beta, False)
    assert plain[-1] == pytest.approx(c + (5.0 - c) * beta ** 3000, rel=1e-4)


def test_training_reduces_loss_and_is_deterministic():
    cfg = TrainConfig(steps=60, lr=1e-2, lr_final=1e-4, ema=0.9)
    a = train(*tiny_problem(), cfg, seed=3)
    b = train(*tiny_problem(), cfg, seed=3)
    assert a.losses[-10:].mean() < a.losses[:10].mean() / 3
    assert torch.equal(a.losses, b.losses)
    assert a.ema_model is not None and a.resumed_from == 0


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("bias_correction", [False, True])
def test_exact_resume_after_a_crash(tmp_path, bias_correction):
    cfg = TrainConfig(steps=40, lr=1e-2, lr_final=1e-4, ema=0.95, ema_bias_correction=bias_correction,
                      checkpoint_every=10)
    straight = train(*tiny_problem(), cfg, seed=1)

    model, loss_fn = tiny_problem()
    calls = {"n": 0}

    def crashing(net, g):
        calls["n"] += 1
        if calls["n"] == 26:          # dies after the checkpoint at step 20
            raise Crash()
        return loss_fn(net, g)

    with pytest.raises(Crash):
        train(model, crashing, cfg, seed=1, run_dir=tmp_path)
    model, loss_fn = tiny_problem()
    resumed = train(model, loss_fn, cfg, seed=1, run_dir=tmp_path)
    assert resumed.resumed_from == 20
    assert torch.equal(resumed.losses, straight.losses)
    for (k, v), (_, w) in zip(resumed.model.state_dict().items(), straight.model.state_dict().items()):
        assert torch.equal(v, w), k
    for (k, v), (_, w) in zip(resumed.ema_model.state_dict().items(), straight.ema_model.state_dict().items()):
        assert torch.equal(v, w), k
    # a finished run loads and trains no further
    again = train(*tiny_problem(), cfg, seed=1, run_dir=tmp_path)
    assert again.resumed_from == 40 and torch.equal(again.losses, straight.losses)


def test_checkpoint_is_safetensors_and_config_is_checked(tmp_path):
    cfg = TrainConfig(steps=5, lr=1e-2)
    train(*tiny_problem(), cfg, seed=0, run_dir=tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        assert "rng/generator" in f.keys() and "losses" in f.keys()
    with pytest.raises(ValueError, match="another config"):
        train(*tiny_problem(), TrainConfig(steps=6, lr=1e-2), seed=0, run_dir=tmp_path)


def test_a_run_resumed_at_its_last_step_counts_as_cached(tmp_path):
    from lab import train as train_module
    cfg = TrainConfig(steps=5, lr=1e-2)
    before = train_module.cached_runs()
    train(*tiny_problem(), cfg, seed=0, run_dir=tmp_path)      # trains: not cached
    assert train_module.cached_runs() == before
    train(*tiny_problem(), cfg, seed=0, run_dir=tmp_path)      # finds the finished checkpoint
    assert train_module.cached_runs() == before + 1


@pytest.mark.parametrize("bias_correction", [False, True])
def test_trainer_ema_is_the_weighted_sum_of_its_iterates(bias_correction):
    beta, steps = 0.9, 30
    iterates = []
    model, loss_fn = tiny_problem()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=steps, lr=1e-2, ema=beta, ema_bias_correction=bias_correction)
    result = train(model, loss_fn, cfg, seed=4,
                   on_step=lambda step, net: iterates.append({k: v.clone() for k, v in net.state_dict().items()}))
    for key, value in result.ema_model.state_dict().items():
        expected = sum((1 - beta) * beta ** (steps - j) * it[key].double() for j, it in enumerate(iterates, 1))
        if bias_correction:
            expected = expected / (1 - beta ** steps)       # started from zeros, debiased
        else:
            expected = expected + beta ** steps * theta0[key].double()
        assert torch.allclose(value.double(), expected, atol=1e-6), key


def test_checkpoint_without_newer_fields_resumes_with_their_defaults(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    cfg = TrainConfig(steps=20, lr=1e-2, ema=0.9, checkpoint_every=10)
    straight = train(*tiny_problem(), cfg, seed=5)
    path = tmp_path / "checkpoint.safetensors"
    calls = {"n": 0}

    def crashing(net, g, loss_fn=tiny_problem()[1]):
        calls["n"] += 1
        if calls["n"] == 15:
            raise Crash()
        return loss_fn(net, g)
    with pytest.raises(Crash):
        train(tiny_problem()[0], crashing, cfg, seed=5, run_dir=tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lab"])
    del meta["config"]["ema_bias_correction"], meta["ema_updates"]     # as written before they existed
    save_file(load_file(str(path)), str(path), metadata={"lab": json.dumps(meta)})
    resumed = train(*tiny_problem(), cfg, seed=5, run_dir=tmp_path)
    assert resumed.resumed_from == 10
    for (k, v), (_, w) in zip(resumed.ema_model.state_dict().items(), straight.ema_model.state_dict().items()):
        assert torch.equal(v, w), k


def test_non_finite_loss_is_reported():
    model, _ = tiny_problem()
    with pytest.raises(FloatingPointError, match="step 0"):
        train(model, lambda net, g: torch.tensor(math.nan, requires_grad=True), TrainConfig(steps=3), seed=0)


@pytest.mark.parametrize("kw, match", [({"steps": 0}, "steps"), ({"steps": 5, "lr": -1.0}, "lr"),
                                       ({"steps": 5, "ema": 1.0}, "ema"),
                                       ({"steps": 5, "ema": 0.9, "ema_bias_correction": 1}, "ema_bias_correction"),
                                       ({"steps": 5, "lr": 1e-3, "lr_final": 1e-2}, "lr_final")])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kw)


def test_train_rejects_bad_arguments():
    model, loss_fn = tiny_problem()
    with pytest.raises(TypeError, match="config"):
        train(model, loss_fn, {"steps": 3}, seed=0)
    with pytest.raises(TypeError, match="seed"):
        train(model, loss_fn, TrainConfig(steps=3), seed="0")


def test_warmup_and_linear_decay():
    cfg = TrainConfig(steps=1500, lr=3e-3, lr_final=3e-4, warmup_steps=100, decay="linear")
    assert learning_rate(0, cfg) == pytest.approx(3e-5)
    assert learning_rate(99, cfg) == pytest.approx(3e-3)
    assert learning_rate(100, cfg) == pytest.approx(3e-3)
    assert learning_rate(800, cfg) == pytest.approx(3e-3 - 0.5 * (3e-3 - 3e-4))
    assert learning_rate(1500, cfg) == pytest.approx(3e-4)
    constant = TrainConfig(steps=10, lr=1e-3, warmup_steps=4)
    assert [round(learning_rate(i, constant), 6) for i in (0, 3, 4, 9)] == [2.5e-4, 1e-3, 1e-3, 1e-3]


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("radam", torch.optim.RAdam)])
def test_optimizer_choice(name, cls):
    from lab.train import make_optimizer
    opt = make_optimizer(torch.nn.Linear(2, 1).parameters(), TrainConfig(steps=3, optimizer=name, weight_decay=0.1))
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 0.1
    result = train(*tiny_problem(), TrainConfig(steps=5, lr=1e-2, optimizer=name), seed=0)
    assert torch.isfinite(result.losses).all()


@pytest.mark.parametrize("kw, match", [({"optimizer": "sgd"}, "optimizer must be one of"),
                                       ({"decay": "step"}, "decay must be one of"),
                                       ({"warmup_steps": 5}, "warmup_steps"),
                                       ({"weight_decay": -1.0}, "weight_decay")])
def test_new_options_reject_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(steps=5, **kw)


def test_gradient_clipping_bounds_each_update():
    model, loss_fn = tiny_problem()
    big = lambda net, g: 1e6 * loss_fn(net, g)          # noqa: E731  (huge gradients)
    result = train(model, big, TrainConfig(steps=1, lr=1.0, grad_clip=1e-3), seed=0)
    # Adam normalises its step, so look at the gradient the optimiser was given
    grads = [p.grad for p in result.model.parameters() if p.grad is not None]
    assert torch.sqrt(sum((g ** 2).sum() for g in grads)) <= 1e-3 + 1e-9
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(steps=1, grad_clip=0.0)


def test_on_step_sees_every_step_and_keeps_training_unchanged():
    seen = []
    cfg = TrainConfig(steps=12, lr=1e-2)
    plain = train(*tiny_problem(), cfg, seed=2)
    hooked = train(*tiny_problem(), cfg, seed=2, on_step=lambda step, net: seen.append(step))
    assert seen == list(range(1, 13))
    assert torch.equal(plain.losses, hooked.losses)


def test_resolve_run_dir(tmp_path, monkeypatch):
    from lab.train import resolve_run_dir, run_key
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    assert resolve_run_dir(True, "ect", "pretrain", {"a": 1}, 3) == tmp_path / "ect" / f"pretrain-{run_key({'a': 1}, 3)}"
    assert resolve_run_dir(False, "ect", "x") is None and resolve_run_dir(None, "ect", "x") is None
    assert resolve_run_dir(str(tmp_path / "mine"), "ect", "x") == tmp_path / "mine"


@pytest.mark.parametrize("steps, warmup, lr_final", [(300, 30, 3e-3 / (25 * 1e4)), (57, 11, 1e-5)])
def test_onecycle_matches_torch_step_by_step(steps, warmup, lr_final):
    cfg = TrainConfig(steps=steps, lr=3e-3, lr_final=lr_final, warmup_steps=warmup, decay="onecycle")
    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=warmup / steps, anneal_strategy="cos",
        cycle_momentum=False, div_factor=25.0, final_div_factor=cfg.lr / 25 / lr_final)
    for step in range(steps):
        assert learning_rate(step, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        opt.step()
        sched.step()
    assert learning_rate(0, cfg) == pytest.approx(cfg.lr / 25)
    assert learning_rate(warmup - 1, cfg) == pytest.approx(cfg.lr)
    assert learning_rate(steps - 1, cfg) == pytest.approx(lr_final)


@pytest.mark.parametrize("kw, match", [({"lr_final": None, "warmup_steps": 2}, "lr_final"),
                                       ({"lr_final": 1e-6, "warmup_steps": 1}, "warmup_steps")])
def test_onecycle_needs_its_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(steps=10, lr=1e-3, decay="onecycle", **kw)


class RunningTarget:
    """A run state that steers training: the target drifts with the losses seen so far."""

    def __init__(self):
        self.shift, self.history = torch.zeros(1, dtype=torch.float64), []

    def observe(self, loss: float) -> None:
        self.history.append(loss)
        self.shift += 0.01 * loss

    def state_dict(self):
        return {"shift": self.shift.clone(), "history": list(self.history)}

    def load_state_dict(self, d):
        self.shift, self.history = d["shift"].clone(), list(d["history"])


def _stateful_problem():
    model, _ = tiny_problem()
    run_state, last = RunningTarget(), []

    def loss_fn(net, g):
        x = torch.randn(16, 3, generator=g)
        loss = (net(x) - x.sum(1, keepdim=True) - run_state.shift.float()).pow(2).mean()
        last[:] = [float(loss.detach())]
        return loss
    return model, loss_fn, run_state, lambda step, net: run_state.observe(last[0])


def test_run_state_travels_with_the_checkpoint(tmp_path):
    cfg = TrainConfig(steps=30, lr=1e-2, checkpoint_every=10)
    model, loss_fn, run_state, on_step = _stateful_problem()
    straight = train(model, loss_fn, cfg, seed=2, on_step=on_step, state=run_state)
    straight_state = run_state.state_dict()

    model, loss_fn, run_state, on_step = _stateful_problem()

    def dying(step, net):
        if step == 25:
            raise Crash()
        on_step(step, net)
    with pytest.raises(Crash):
        train(model, loss_fn, cfg, seed=2, run_dir=tmp_path, on_step=dying, state=run_state)
    model, loss_fn, run_state, on_step = _stateful_problem()
    resumed = train(model, loss_fn, cfg, seed=2, run_dir=tmp_path, on_step=on_step, state=run_state)
    assert resumed.resumed_from == 20
    assert torch.equal(resumed.losses, straight.losses)
    assert torch.equal(run_state.shift, straight_state["shift"])
    assert run_state.history == straight_state["history"]
    # without its state the checkpoint is refused, and a state that is no state is rejected
    with pytest.raises(ValueError, match="run state"):
        train(*tiny_problem(), cfg, seed=2, run_dir=tmp_path)
    with pytest.raises(TypeError, match="state must have"):
        train(*tiny_problem(), cfg, seed=2, state={"shift": 1})


@pytest.mark.parametrize("steps, warmup", [(300, 30), (57, 11)])
def test_cycled_momentum_matches_torch_step_by_step(steps, warmup):
    from lab.train import momentum
    cfg = TrainConfig(steps=steps, lr=3e-3, lr_final=1e-7, warmup_steps=warmup, decay="onecycle",
                      optimizer="adamw", cycle_momentum=True)
    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=warmup / steps, anneal_strategy="cos",
        cycle_momentum=True, div_factor=25.0, final_div_factor=cfg.lr / 25 / cfg.lr_final)
    for step in range(steps):
        assert momentum(step, cfg) == pytest.approx(opt.param_groups[0]["betas"][0], rel=1e-9), step
        opt.step()
        sched.step()
    assert momentum(3, TrainConfig(steps=5, betas=(0.8, 0.99))) == 0.8
    model, loss_fn = tiny_problem()
    result = train(model, loss_fn, dataclasses.replace(cfg, steps=20, warmup_steps=4), seed=0)
    assert torch.isfinite(result.losses).all()
    with pytest.raises(ValueError, match="cycle_momentum"):
        TrainConfig(steps=10, cycle_momentum=True)


def test_warmup_stable_decay():
    cfg = TrainConfig(steps=100, lr=1e-3, lr_final=1e-5, warmup_steps=10, decay="wsd", decay_steps=20)
    rates = [learning_rate(i, cfg) for i in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(r == pytest.approx(1e-3) for r in rates[10:80])
    assert rates[80] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 19 / 20)
    assert rates[99] == pytest.approx(1e-5)
    assert all(a >= b for a, b in itertools.pairwise(rates[80:]))
    for kw, match in [({"lr_final": None}, "lr_final"), ({"decay_steps": 0}, "decay_steps"),
                      ({"decay_steps": 91}, "decay_steps")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{**dataclasses.asdict(cfg), "betas": cfg.betas, **kw})
