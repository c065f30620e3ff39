import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.data import TokenMixture, cycle, markov, markov2, noise, recall
from lab.nn import GPT, GPTConfig, sequence_losses
from lab.papers.ado import experiments as ex
from lab.papers.ado import method as ado

N = np.geomspace(1e3, 1e6, 100)
TRUTH = ado.PowerLaw(beta=5.0, eps=2.0, alpha=0.3)
ROOT = Path(__file__).resolve().parent.parent


# -- the fitter -----------------------------------------------------------------------------------
def test_fit_recovers_noiseless_law():
    law, value = ado.fit_power_law(N, TRUTH(N), bounds=ado.SYNTHETIC_BOUNDS)
    assert law.beta == pytest.approx(5.0, rel=1e-3)
    assert law.eps == pytest.approx(2.0, rel=1e-3)
    assert law.alpha == pytest.approx(0.3, rel=1e-3)
    assert value < 1e-12


def test_fit_with_noise_is_unbiased_and_optimal():
    """1 % log-noise: every fit reaches at least the truth's objective, and the median over 20 noise
    draws recovers α within 0.01, ε within 0.02 and β within 5 % (one draw scatters by ~0.02 in α)."""
    fits = []
    for seed in range(20):
        y = TRUTH(N) * np.exp(0.01 * np.random.default_rng(seed).normal(size=N.size))
        law, value = ado.fit_power_law(N, y, bounds=ado.SYNTHETIC_BOUNDS)
        truth_value = ado.fit_objective(TRUTH.params, np.log(N), np.log(y), ado.SYNTHETIC_BOUNDS)
        assert value <= truth_value + 1e-12
        fits.append((law.beta, law.eps, law.alpha))
    beta, eps, alpha = np.median(fits, axis=0)
    assert abs(alpha - 0.3) <= 0.01 and abs(eps - 2.0) <= 0.02 and abs(beta / 5 - 1) <= 0.05


def test_slope_on_a_short_window():
    n = np.geomspace(1e3, 2e4, 100)
    y = TRUTH(n) * np.exp(0.003 * np.random.default_rng(0).normal(size=n.size))
    law, _ = ado.fit_power_law(n, y, bounds=ado.SYNTHETIC_BOUNDS)
    assert law.slope(2e4) == pytest.approx(TRUTH.slope(2e4), rel=0.10)


def test_bounds_matter():
    truth = ado.PowerLaw(beta=3.0, eps=0.2, alpha=0.5)
    pinned, _ = ado.fit_power_law(N, truth(N))                       # official (Pile) bounds
    assert pinned.eps == pytest.approx(math.exp(0.5), rel=2e-3)
    assert pinned.alpha == pytest.approx(0.8, abs=5e-3)
    free, _ = ado.fit_power_law(N, truth(N), bounds=ado.FitBounds(log_eps_min=-10))
    assert (free.beta, free.eps, free.alpha) == pytest.approx((3.0, 0.2, 0.5), rel=0.01)


def test_analytic_slope_is_the_derivative():
    for n in (1e3, 5e4, 1e6):
        h = n * 1e-5
        fd = -(TRUTH(n + h) - TRUTH(n - h)) / (2 * h)
        assert TRUTH.slope(n) == pytest.approx(fd, rel=1e-6)
    flat = ado.PowerLaw(1.0, 1.0, 0.01)
    assert flat.slope(100.0, alpha_min=0.05) == pytest.approx(5 * flat.slope(100.0))


def test_fit_fits_rows_independently_and_checks_input():
    laws, _ = ado.fit_power_laws(N, np.stack([TRUTH(N), 1 + 2 * N ** -0.5]), bounds=ado.SYNTHETIC_BOUNDS)
    assert laws[1].eps == pytest.approx(1.0, rel=1e-3) and laws[0].alpha == pytest.approx(0.3, rel=1e-3)
    with pytest.raises(ValueError, match="≥ 4 points"):
        ado.fit_power_law(N[:3], TRUTH(N[:3]))
    with pytest.raises(ValueError, match="finite"):
        ado.fit_power_law(N, np.where(N > 1e5, np.nan, TRUTH(N)))
    with pytest.raises(ValueError, match="positive"):
        ado.fit_power_law(N, -TRUTH(N))
    with pytest.raises(TypeError, match="bounds"):
        ado.fit_power_law(N, TRUTH(N), bounds=(0, 1))


def test_savgol_matches_reference_and_keeps_cubics():
    x = np.arange(60, dtype=float)
    cubic = 0.001 * x ** 3 - 0.05 * x ** 2 + x
    assert np.allclose(ado.savgol(cubic, 11), cubic)
    y = np.sin(x / 5) + np.random.default_rng(0).normal(0, 0.1, x.size)
    signal = pytest.importorskip("scipy.signal")
    assert np.allclose(ado.savgol(y, 11), signal.savgol_filter(y, 11, 3), atol=1e-10)
    assert np.allclose(ado.savgol(y[:7], 11), signal.savgol_filter(y[:7], 7, 3), atol=1e-10)


# -- the policy -----------------------------------------------------------------------------------
def test_fixed_point_of_the_policy():
    """Slopes held fixed, h tracking the expected batch shares: π → (μ g)^(1/(1−s)) normalised."""
    mu, g = np.array([0.4, 0.3, 0.2, 0.1]), np.array([1.0, 2.0, 1.0, 3.0])
    h, rho_bar, pi = mu.copy(), mu.copy(), mu.copy()
    for t in range(100, 200_000):
        h = ado.update_credit(h, pi, 0.1)
        rho = ado.preference(mu, h, g, 0.5, 0.01)
        pi, rho_bar = ado.smooth(rho, rho_bar, t, 0.1)
    expected = (mu * g) ** 2 / ((mu * g) ** 2).sum()
    assert np.abs(pi - expected).max() <= 0.01
    assert expected == pytest.approx([0.246, 0.554, 0.062, 0.138], abs=1e-3)


def test_clip_min_official_and_strict():
    p = np.array([0.001, 0.002, 0.3, 0.697])
    out = ado.clip_min(p, 0.01)
    assert out.sum() == pytest.approx(1.0) and np.all(np.diff(out[1:]) >= 0)
    assert 0.98 * 0.01 <= out.min() < 0.01
    assert out[0] == pytest.approx(0.01 / 1.017)
    assert out[3] / out[2] == pytest.approx(0.697 / 0.3)
    strict = ado.clip_min(p, 0.01, strict=True)
    assert strict.sum() == pytest.approx(1.0) and strict.min() >= 0.01
    assert strict[3] / strict[2] == pytest.approx(0.697 / 0.3)
    assert ado.clip_min([0.25] * 4, 0.01) == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError, match="delta_min"):
        ado.clip_min(p, 0.3)


def test_smoothing_arithmetic():
    rho_bar = np.array([0.5, 0.5])
    pi, new_bar = ado.smooth(np.array([1.0, 0.0]), rho_bar, 3, 0.1)
    assert pi == pytest.approx([0.55, 0.45])
    assert new_bar == pytest.approx([0.75 * 0.5 + 0.25, 0.75 * 0.5])


def test_credit_converges_geometrically():
    h, p = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
    gaps = []
    for _ in range(20):
        h = ado.update_credit(h, p, 0.1)
        gaps.append(np.abs(h - p).max())
    assert np.allclose(np.array(gaps[1:]) / gaps[:-1], 0.9)


def _ado(**kw):
    cfg = ado.ADOConfig(update_interval=20, start_step=20, ignore_steps=0, savgol_window=5, subsample=1,
                        bounds=ado.SYNTHETIC_BOUNDS, grid=tuple(map(tuple, ado.SMALL_GRID)), **kw)
    return ado.ADOPolicy(["a", "b", "c"], [0.5, 0.3, 0.2], cfg)


def test_policy_invariants():
    policy = _ado()
    rng = np.random.default_rng(0)
    for t in range(120):
        counts = rng.multinomial(32, policy.weights()).astype(float)
        n = 32.0 * (t + 1)
        losses = np.array([1 + 3 * n ** -0.5, 2 + n ** -0.2, 0.5 + 4 * n ** -0.6])
        policy.observe(counts, losses * counts)
        assert policy.weights().sum() == pytest.approx(1.0)
        if t + 1 < 20:
            assert policy.weights() == pytest.approx(policy.prior)
    rec = policy.record()
    start = 20
    rhos = rec["rho"][start - 1:]                  # ρ of steps 20 … 120
    expected = (start * policy.prior + rhos.sum(0)) / (start + len(rhos))
    assert policy.rho_bar == pytest.approx(expected)
    assert len(policy.refits) == 6 and all(r.laws[0] is not None for r in policy.refits)


def test_policy_rejects_bad_input_and_keeps_finite():
    with pytest.raises(ValueError, match="sum to one"):
        ado.natural(["a", "b"], [0.5, 0.6])
    with pytest.raises(ValueError, match="non-negative"):
        ado.FixedPolicy(["a", "b"], [1.2, -0.2])
    with pytest.raises(ValueError, match="one entry per domain"):
        ado.natural(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="kind"):
        ado.make_policy("doremi", ["a"], [1.0])
    policy = _ado()
    with pytest.raises(ValueError, match="finite"):
        policy.observe(np.array([1.0, 1, 1]), np.array([1.0, np.nan, 1]))
    with pytest.raises(ValueError, match="delta_min"):
        ado.ADOPolicy(["a", "b"], [0.5, 0.5], ado.ADOConfig(delta_min=0.6))
    # flat curves give zero slopes: the policy keeps its previous ρ instead of dividing by zero
    for _ in range(60):
        policy.observe(np.array([10.0, 10, 12]), np.array([10.0, 20, 24]))
    assert np.all(np.isfinite(policy.weights())) and policy.weights().sum() == pytest.approx(1.0)


def test_simulated_world_ordering():
    names, prior = [d.name for d in ex.SIM_WORLD], [d.prior for d in ex.SIM_WORLD]
    cfg = dataclasses.replace(ex.SimConfig(), steps=1200)
    excess = {k: ex.simulate(ado.make_policy(k, names, prior, cfg.ado), cfg=cfg, seed=0)["excess"].mean()
              for k in ("natural", "uniform")}
    oracle = ex.simulate(ado.make_policy("ado", names, prior, cfg.ado), cfg=cfg, seed=0, oracle=True)
    assert oracle["excess"].mean() < excess["uniform"] < excess["natural"]
    assert oracle["pi"][-1][0] < 0.1 and oracle["pi"][-1].sum() == pytest.approx(1.0)


def test_the_knobs_explorer_runs_the_fitted_policy_with_the_chosen_knobs():
    from lab.papers.ado import figures as figs
    sim = dataclasses.replace(ex.SimConfig(), steps=600)
    knobs = figs.knobs_explorer(sim, [0, 2], "tiny")
    assert knobs.params == {"seed": [0, 2], "floor": [0.0, 0.05], "window": [101, 201]}
    assert knobs.defaults == {"seed": 0, "floor": sim.ado.bounds.alpha_min, "window": sim.ado.savgol_window}
    fig = knobs(seed=2, floor=0.0)
    config = dataclasses.replace(sim.ado, bounds=dataclasses.replace(sim.ado.bounds, alpha_min=0.0))
    names, prior = [d.name for d in ex.SIM_WORLD], [d.prior for d in ex.SIM_WORLD]
    rec = ex.simulate(ado.make_policy("ado", names, prior, config), cfg=sim, seed=2)
    assert f"final π(hard) {rec['pi'][-1][-1]:.2f}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="seeds"):
        figs.knobs_explorer(sim, [], "tiny")


# -- data and model -------------------------------------------------------------------------------
def test_domains_entropies_and_samples():
    g = torch.Generator().manual_seed(0)
    assert noise(16).entropy == pytest.approx(math.log(16))
    c = cycle(16, 0)
    seq = c.sample(4, 40, g)
    assert c.entropy == 0 and torch.equal(seq[:, 1:], c.table[seq[:, :-1]])
    m = markov(8, 0.5, 1)
    x = m.sample(4000, 30, g)
    pairs = torch.bincount(x[:, :-1].reshape(-1) * 8 + x[:, 1:].reshape(-1), minlength=64).double().reshape(8, 8)
    cond = pairs / pairs.sum(1, keepdim=True)
    h_emp = float(-(pairs / pairs.sum() * torch.log(cond.clamp_min(1e-12))).sum())
    assert h_emp == pytest.approx(m.entropy, abs=0.01)
    m2 = markov2(4, 0.5, 2)
    y = m2.sample(3000, 40, g)
    trip = torch.bincount((y[:, :-2] * 16 + y[:, 1:-1] * 4 + y[:, 2:]).reshape(-1), minlength=64).double()
    trip = trip.reshape(16, 4)
    h2 = float(-(trip / trip.sum() * torch.log((trip / trip.sum(1, keepdim=True)).clamp_min(1e-12))).sum())
    assert h2 == pytest.approx(m2.entropy, abs=0.02)
    r = recall(10, 4, 12).sample(3, 12, g)
    assert torch.equal(r[:, 4:8], r[:, :4])


def test_mixture_sampler_and_bad_input():
    world = ex.language_world(0)
    assert world.vocab == 16 + 16 + 16 + 128 and world.offsets == [0, 16, 32, 48]
    tokens, ids = world.sample([0.0, 0.0, 0.0, 1.0], 64, torch.Generator().manual_seed(1))
    assert (ids == 3).all() and tokens.min() >= 48 and tokens.max() < 176
    tokens, ids = world.sample([0.5, 0.5, 0, 0], 512, torch.Generator().manual_seed(1))
    assert set(ids.tolist()) == {0, 1} and abs(float((ids == 0).double().mean()) - 0.5) < 0.07
    assert ((tokens >= 16) == (ids[:, None] == 1)).all()
    with pytest.raises(ValueError, match="sum to one"):
        world.sample([0.5, 0.5, 0.5, 0], 4, torch.Generator())
    with pytest.raises(ValueError, match="non-negative"):
        world.sample([1.5, -0.5, 0, 0], 4, torch.Generator())
    with pytest.raises(ValueError, match="name must be one of"):
        world.index("bigram64")
    with pytest.raises(ValueError, match="distinct"):
        TokenMixture([noise(4), noise(4)], 8)


def test_gpt_is_causal_and_gives_sequence_losses():
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab=20, context=12, d_model=16, n_layers=2, n_heads=2, d_mlp=32)).eval()
    x = torch.randint(0, 20, (3, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 20
    with torch.no_grad():
        assert torch.allclose(net(x)[:, :7], net(y)[:, :7], atol=1e-6)
        assert not torch.allclose(net(x)[:, 7:], net(y)[:, 7:])
        per_seq = sequence_losses(net, x)
        flat = torch.nn.functional.cross_entropy(net(x[:, :-1]).reshape(-1, 20), x[:, 1:].reshape(-1))
    assert per_seq.shape == (3,) and per_seq.mean() == pytest.approx(float(flat), rel=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        net(torch.zeros(2, 13, dtype=torch.long))


def test_domain_batch_stats_single_process():
    counts, sums = ado.domain_batch_stats(torch.tensor([0, 2, 2, 0, 0]), torch.tensor([1.0, 2, 3, 4, 5]), 3)
    assert counts.tolist() == [3, 0, 2] and sums.tolist() == [10, 0, 5]


# -- data-parallel: every process samples from the same policy ------------------------------------
def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_policies_identical(tmp_path):
    """Two CPU processes (gloo), launched as the chapter documents. ``accelerate launch --cpu``
    goes through accelerate's simple launcher, which starts several processes only through MPI
    (``--mpirun_hostfile``); ``--multi_gpu`` goes through torchrun and, with the model on the
    CPU, the trainer's ``Accelerator(cpu=True)`` joins the processes over gloo."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", LAB_SCALE="tiny", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           str(ROOT / "tests" / "ado_two_process.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["refits"] == ranks[1]["refits"] >= 3
    assert ranks[0]["pi"] == ranks[1]["pi"]                     # bit-identical policies
    assert ranks[0]["counts"] == ranks[1]["counts"]             # the reduced (global) counts
    assert sum(ranks[0]["counts"][0]) == 16                     # 2 processes × batch 8
    assert np.abs(np.array(ranks[0]["pi"][-1]) - np.array(ranks[0]["pi"][0])).max() > 1e-3


# -- resume: the policy travels with the checkpoint -----------------------------------------------
def _small_lm(**train):
    return dataclasses.replace(
        ex.LMConfig(), d_model=16, n_layers=1, n_heads=2, d_mlp=32, length=16, batch=8, n_val=8,
        train=ex.TrainConfig(steps=60, lr=3e-3, progress_every=60, **train),
        ado=dataclasses.replace(ex.LMConfig.ado, update_interval=10, start_step=10, ignore_steps=0,
                                savgol_window=5, subsample=1))


def test_an_interrupted_ado_run_resumes_bit_identically(tmp_path, monkeypatch):
    from lab import train as train_module
    monkeypatch.setattr(train_module, "_cached_runs", train_module.cached_runs())   # this test's reload
    cfg = _small_lm(checkpoint_every=15)
    straight = ex.train_lm(cfg, "ado", seed=3, progress=False)

    observe = ado.ADOPolicy.observe

    def dies_at_step_38(self, counts, sums):
        if self.step == 37:
            raise KeyboardInterrupt
        observe(self, counts, sums)
    with monkeypatch.context() as patch:
        patch.setattr(ado.ADOPolicy, "observe", dies_at_step_38)
        with pytest.raises(KeyboardInterrupt):
            ex.train_lm(cfg, "ado", seed=3, run_dir=tmp_path, progress=False)
    resumed = ex.train_lm(cfg, "ado", seed=3, run_dir=tmp_path, progress=False)
    assert resumed["resumed_from"] == 30 and len(straight["refits"]) == 6
    for key in ("pi", "rho", "rho_bar", "loss", "counts", "n", "train_losses", "val"):
        assert np.array_equal(resumed[key], straight[key]), key
    for a, b in zip(resumed["refits"], straight["refits"]):
        assert a.step == b.step and a.laws == b.laws and np.array_equal(a.smoothed, b.smoothed)
    # a finished run reloads with its whole policy history
    again = ex.train_lm(cfg, "ado", seed=3, run_dir=tmp_path, progress=False)
    assert again["resumed_from"] == 60 and np.array_equal(again["pi"], straight["pi"])


def test_policy_state_rejects_another_policy():
    policy = _ado()
    other = ado.ADOPolicy(["x", "y", "z"], [0.5, 0.3, 0.2], policy.config)
    with pytest.raises(ValueError, match="state is of a policy"):
        other.load_state_dict(policy.state_dict())


def test_largest_dip():
    assert ex.largest_dip([0.1, 0.3, 0.25, 0.4, 0.38]) == pytest.approx(0.05)
    assert ex.largest_dip([0.1, 0.2, 0.3]) == 0.0
    with pytest.raises(ValueError, match="series"):
        ex.largest_dip([])
