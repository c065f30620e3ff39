"""Easy Consistency Tuning: reference values of the mapping, preconditioning, weights, loss and samplers."""
import math

import numpy as np
import pytest
import torch

from lab.data import draw, ring
from lab.metrics import frechet_distance, in_mode_precision, sliced_wasserstein
from lab.nn import ResidualMLP
from lab.papers.ect import experiments as ex
from lab.papers.ect import method as ect
from lab.train import TrainConfig, train

A = dict(abs=1e-6)


# -- mapping ------------------------------------------------------------------------------------
def test_n_of_t_reference_values():
    for t, n in ((0.1, 4.800167), (1, 3.151531), (5, 1.053543), (80, 1.0)):
        assert ect.mapping_n(t) == pytest.approx(n, **A)
    assert ect.mapping_n(torch.tensor([1.0]))[0].item() == pytest.approx(3.151531, **A)


@pytest.mark.parametrize("t,stage,r", [(1, 0, 0.0), (1, 1, 0.212117), (1, 2, 0.606059), (1, 3, 0.803029),
                                       (5, 0, 2.366143), (2, 0, 0.046377), (80, 0, 40.0), (80, 7, 79.6875)])
def test_r_of_t_reference_values(t, stage, r):
    assert ect.r_of_t(t, stage, q=2) == pytest.approx(r, **A)


def test_q256_stage0_equals_q2_stage7_and_const_mapping():
    t = torch.logspace(-3, math.log10(80), 200, dtype=torch.float64)
    assert torch.allclose(ect.r_of_t(t, 0, q=256), ect.r_of_t(t, 7, q=2), atol=1e-12)
    assert ect.r_of_t(1.0, 0, q=256) == pytest.approx(0.987689, **A)
    assert ect.r_of_t(0.1, 0, q=256) == pytest.approx(0.098125, **A)
    assert ect.r_of_t(5.0, 0, mapping="const") == pytest.approx(2.5, **A)
    for s in range(6):
        r = ect.r_of_t(t, s, mapping="const")
        assert torch.allclose(r, t * (1 - 2.0 ** -(s + 1)))
        for mapping in ect.MAPPINGS:
            r = ect.r_of_t(t, s, mapping=mapping)
            assert bool((r >= 0).all()) and bool((r < t).all())


def test_clamp_thresholds():
    assert ect.clamp_threshold(0) == pytest.approx(math.log(7), **A)
    assert ect.clamp_threshold(0) == pytest.approx(1.945910, **A)
    assert ect.clamp_threshold(1) == pytest.approx(0.510826, **A)
    assert ect.clamp_threshold(2) == 0.0 and ect.clamp_threshold(5) == 0.0
    t = torch.logspace(-3, 1, 2000, dtype=torch.float64)
    for s in (0, 1):
        clamped = ect.r_of_t(t, s) == 0
        assert torch.equal(clamped, t <= ect.clamp_threshold(s))
    assert not bool((ect.r_of_t(t, 2) == 0).any())


def test_stage_at():
    assert [ect.stage_at(i, 500) for i in (0, 499, 500, 2999)] == [0, 0, 1, 5]


# -- preconditioning and weights ----------------------------------------------------------------
def test_precond_train_form_identities():
    t = torch.logspace(-3, math.log10(80), 300, dtype=torch.float64)
    for sd in (0.5, 0.709):
        c_skip, c_out, _, _ = ect.precond(t, sd)
        assert torch.allclose(c_skip + c_out ** 2 / sd ** 2, torch.ones_like(t), atol=1e-12)
    c_skip, c_out, c_in, c_noise = ect.precond(1.0, 0.5)
    assert (c_skip, c_out, c_in) == (pytest.approx(0.2, **A), pytest.approx(0.447214, **A),
                                     pytest.approx(0.894427, **A))
    assert c_noise == pytest.approx(0.0, **A)


def test_precond_eval_form_boundary():
    c_skip, c_out, _, _ = ect.precond(0.003, 0.5, form="eval", sigma_min=0.003)
    assert c_skip == 1.0 and c_out == 0.0
    c_skip, c_out, _, _ = ect.precond(0.821, 0.5, form="eval", sigma_min=0.003)
    assert c_skip == pytest.approx(0.271998, **A) and c_out == pytest.approx(0.425479, **A)
    torch.manual_seed(0)
    model = ect.EDMPrecond(ResidualMLP(2, 16, 1), 0.5, sigma_min=0.003).eval()
    x = torch.randn(10, 2)
    assert torch.equal(model(x, 0.003), x)                      # f(x, σ_min) = x exactly
    assert not torch.allclose(model(x, 0.003, form="train"), x)


def test_weights():
    t, r = torch.tensor([0.1, 1.0, 80.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    w = ect.loss_weight(t, r, "snrpk", 0.5)
    assert w.tolist() == [pytest.approx(104.0, **A), pytest.approx(5.0, **A), pytest.approx(4.000156, **A)]
    r = torch.tensor([0.05, 0.5, 40.0], dtype=torch.float64)
    assert torch.allclose(ect.loss_weight(t, r, "inv_dt", 0.5), 1 / (t - r))


# -- the loss -----------------------------------------------------------------------------------
def _model(dropout=0.0, dim=2, seed=0):
    torch.manual_seed(seed)
    return ect.EDMPrecond(ResidualMLP(dim, 32, 2, dropout=dropout), 0.5).train()


def _batch(n=64, dim=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, dim, generator=g) * 0.5
    t = (torch.randn(n, generator=g) * 1.5 - 0.5).exp()
    eps = torch.randn(n, dim, generator=g)
    return y, t, eps


def test_shared_dropout_mask_makes_teacher_equal_student():
    model = _model(dropout=0.5)
    y, t, eps = _batch()
    shared = ect.ect_loss(model, y, t, t.clone(), eps, weighting="uniform")
    assert torch.allclose(shared, torch.zeros_like(shared), atol=1e-6)
    independent = ect.ect_loss(model, y, t, t.clone(), eps, weighting="uniform", share_dropout=False)
    assert bool((independent > 1e-3).all())


def test_r_zero_rows_target_clean_data():
    model = _model()
    y, t, eps = _batch()
    r = torch.zeros_like(t)
    loss = ect.ect_loss(model, y, t, r, eps)
    expected = (model(y + t[:, None] * eps, t, form="train") - y).norm(dim=1) / t
    assert torch.allclose(loss, expected, rtol=1e-6)
    # mixed batch: r = 0 rows still get y as target, r > 0 rows the stop-gradient teacher
    r = ect.r_of_t(t, 0)
    assert bool((r == 0).any()) and bool((r > 0).any())
    loss = ect.ect_loss(model, y, t, r, eps)
    assert bool(torch.isfinite(loss).all())
    keep = r > 0
    with torch.no_grad():
        teacher = model(y + r[:, None] * eps, r.clamp(min=1e-8), form="train")
    target = torch.where(keep[:, None], teacher, y)
    expected = (model(y + t[:, None] * eps, t, form="train") - target).norm(dim=1) / (t - r)
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_teacher_is_stop_gradient():
    model = _model()
    y, t, eps = _batch()
    r = ect.r_of_t(t, 2)
    ect.ect_loss(model, y, t, r, eps).mean().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.no_grad():
        target = model(y + r[:, None] * eps, r, form="train")
    ((model(y + t[:, None] * eps, t, form="train") - target).norm(dim=1) / (t - r)).mean().backward()
    for a, p in zip(got, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-5, atol=1e-8)


def test_distance_scaling_and_pseudo_huber_limits():
    diff = torch.randn(16, 3, dtype=torch.float64)
    assert torch.allclose(ect.distance(2 * diff), 2 * ect.distance(diff), rtol=1e-6)
    small, c = diff * 1e-4, 1.0
    L = small.norm(dim=1)
    assert torch.allclose(ect.distance(small, c), L ** 2 / (2 * c), rtol=1e-3)
    big = diff * 1e4
    L = big.norm(dim=1)
    assert torch.allclose(ect.distance(big, c), L - c, rtol=1e-3)


def test_sanitised_gradients_are_finite_when_student_equals_target():
    y, t, eps = _batch()
    model = _model()
    ect.ect_loss(model, y, t, t.clone(), eps, weighting="uniform").mean().backward()
    assert not all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())   # ∂√u at 0
    model = _model()
    ect.sanitize_gradients(model)
    ect.ect_loss(model, y, t, t.clone(), eps, weighting="uniform").mean().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_loss_fn_follows_stages_through_the_iteration_buffer():
    cfg = ect.ECTConfig(stage_steps=3)
    mixture = ring()
    fn = ect.ect_loss_fn(lambda n, g: draw(mixture, n, g), cfg, 32)
    model = _model()
    g = torch.Generator().manual_seed(0)
    for _ in range(7):
        assert torch.isfinite(fn(model, g))
    assert int(model.iteration) == 7
    assert "iteration" in model.state_dict()


# -- samplers -----------------------------------------------------------------------------------
def test_two_step_adds_exactly_t_mid_noise():
    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.sigma_min, self.sigma_data = 0.002, 0.5

        def forward(self, x, t, form=None):
            return x * 0 if float(t) == 80.0 else x         # f(·, 80) = 0, then the identity
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = ect.consistency_sample(Identity(), 100, g1, t_mids=(0.821,), dim=2)
    torch.randn((100, 2), generator=g2)
    assert torch.allclose(x, 0.821 * torch.randn((100, 2), generator=g2))


def test_karras_levels_and_nfe():
    t = ect.karras_levels(18, 0.002, 80.0)
    assert len(t) == 19 and t[0] == pytest.approx(80.0) and t[17] == pytest.approx(0.002) and t[18] == 0
    assert bool((t[1:] < t[:-1]).all())
    assert ect.nfe(18) == 35 and ect.nfe(18, heun=False) == 18


def test_heun_with_exact_gaussian_denoiser_recovers_the_data_scale():
    class Exact(torch.nn.Module):            # D*(x, t) = x·s²/(s² + t²) for y ~ N(0, s²)
        def __init__(self, s):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.s, self.sigma_min, self.sigma_data = s, 0.002, s

        def forward(self, x, t, form=None):
            return x * self.s ** 2 / (self.s ** 2 + float(t) ** 2)
    g = torch.Generator().manual_seed(0)
    z_std = float((80 * torch.randn((20000, 1), generator=g)).std()) / 80
    exact = z_std * 0.5 * 80 / math.sqrt(0.25 + 80 ** 2)     # x(t) ∝ √(s² + t²)
    fine = ect.heun_sample(Exact(0.5), 20000, torch.Generator().manual_seed(0), dim=1, steps=200)
    assert float(fine.std()) == pytest.approx(exact, rel=2e-3)
    edm = ect.heun_sample(Exact(0.5), 20000, torch.Generator().manual_seed(0), dim=1)
    euler = ect.heun_sample(Exact(0.5), 20000, torch.Generator().manual_seed(0), dim=1, heun=False)
    assert abs(float(edm.std()) - exact) < abs(float(euler.std()) - exact) < 0.1


def test_untrained_dm_one_step_is_poor_on_the_ring():
    mixture = ring()
    ref = mixture.sample(2000, 1)
    model = _model()
    x = ex.generate(model, "1-step", 2000, 0)
    assert in_mode_precision(x, mixture) < 0.05
    assert sliced_wasserstein(x, ref) > 0.3


# -- metrics ------------------------------------------------------------------------------------
def test_sliced_wasserstein_of_a_shift():
    x = np.random.default_rng(0).standard_normal((500, 2))
    assert sliced_wasserstein(x, x) == 0.0
    shift = np.array([0.3, 0.0])
    v = __import__("lab.metrics", fromlist=["x"]).random_directions(2, 256, 0)
    expected = np.sqrt(np.mean((v @ shift) ** 2))
    assert sliced_wasserstein(x + shift, x) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 2))
    y = x * 2 + np.array([1.0, 0.0])        # N((1, 0), 4I): FD = 1 + 2·(1 + 4 − 2·2) = 3
    assert frechet_distance(x, y) == pytest.approx(3.0, rel=0.01)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_ring_is_a_mixture_with_the_spec_sigma_data():
    mixture = ring()
    assert np.allclose(np.linalg.norm(mixture.modes, axis=1), 1.0)
    assert ect.estimate_sigma_data(mixture.sample(40000, 0)) == pytest.approx(0.709, abs=0.005)
    y = draw(mixture, 4000, torch.Generator().manual_seed(0))
    assert in_mode_precision(y.numpy(), mixture) > 0.99


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="q must be > 1"):
        ect.r_of_t(1.0, 0, q=1.0)
    with pytest.raises(ValueError, match="q must be > 1"):
        ect.ECTConfig(q=0.5)
    with pytest.raises(ValueError, match="mapping must be one of"):
        ect.r_of_t(1.0, 0, mapping="linear")
    with pytest.raises(ValueError, match="weighting must be one of"):
        ect.ECTConfig(weighting="adaptive")
    with pytest.raises(ValueError, match="weighting must be one of"):
        ect.loss_weight(torch.ones(2), torch.zeros(2), "lpips", 0.5)
    model = _model().eval()
    for bad in (0.001, 0.002, 80.0, 100.0):
        with pytest.raises(ValueError, match="t_mid must lie in"):
            ect.consistency_sample(model, 4, torch.Generator(), t_mids=(bad,))
    with pytest.raises(ValueError, match="t_mid must lie in"):
        ex.RingConfig(t_mid=0.0001)
    y, t, eps = _batch()
    y[0, 0] = float("nan")
    with pytest.raises(ValueError, match="y .* must be finite"):
        ect.ect_loss(_model(), y, t, t * 0, eps)
    with pytest.raises(ValueError, match="data must be finite"):
        ect.estimate_sigma_data(np.array([[0.0, np.inf], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="x must be finite"):
        sliced_wasserstein(np.full((3, 2), np.nan), np.zeros((3, 2)))


# -- the exact consistency function of 1-D Gaussian data (about a minute) -------------------------
@pytest.mark.slow
def test_ect_learns_the_exact_consistency_function_of_gaussian_data():
    s = 0.5
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ect.EDMPrecond(ResidualMLP(1, 64, 2), s, sigma_min=0.002)

    def data(n, g):
        return s * torch.randn((n, 1), generator=g)

    def pre_loss(net, g):
        return ect.edm_loss(net, data(512, g), g)
    pre = train(model, pre_loss, TrainConfig(steps=2000, lr=1e-3, ema=0.999), seed=0, desc="EDM")
    start = pre.ema_model.train()
    start.iteration.zero_()
    fn = ect.ect_loss_fn(data, ect.ECTConfig(stage_steps=750), 512)
    tuned = train(start, fn, TrainConfig(steps=6000, lr=5e-4, ema=0.999), seed=1, desc="ECT").ema_model
    grid = torch.linspace(-1, 1, 41)
    grid = grid[grid.abs() > 1e-6][:, None]
    for t in (0.5, 1.0, 2.0):
        with torch.no_grad():
            slope = float((tuned(grid, t, form="eval") / grid).median())
        exact, denoiser = s / math.sqrt(s ** 2 + t ** 2), s ** 2 / (s ** 2 + t ** 2)
        assert abs(slope - exact) < 0.05, (t, slope, exact)
        assert abs(slope - exact) < 0.5 * abs(slope - denoiser), (t, slope, exact, denoiser)


# -- the gpu-scale digits study, on a stand-in (scikit-learn is not needed) ----------------------
@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # small convolutions: far faster on one thread of a busy CPU
    yield
    torch.set_num_threads(threads)


def test_digits_study_runs_end_to_end_on_a_stand_in(one_thread):
    import dataclasses

    from lab.papers.ect import digits as ect_digits
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(48) % 2
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((xx - 5) ** 2 + (yy - 8) ** 2) / 8)
    images = torch.stack([blob if c == 0 else blob.flip(1) for c in labels])[:, None] * 2 - 1
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    tiny = dataclasses.replace(ex.DigitsConfig(), base=8, mults=(1, 2), batch=8,
                               pretrain=TrainConfig(steps=3), tune=TrainConfig(steps=4, ema=0.9),
                               ect=ect.ECTConfig(stage_steps=2), classifier=TrainConfig(steps=3))
    out = ect_digits.study(tiny, images, labels, seed=0, checkpoints=False)
    assert set(out["rows"]) == {("diffusion", "1-step"), ("diffusion", "heun"), ("ECT", "1-step"),
                                ("ECT", "2-step"), ("CT from scratch", "1-step"), ("CT from scratch", "2-step")}
    assert all(np.isfinite(r["fd"]) and 0 <= r["confident"] <= 1 for r in out["rows"].values())
    assert sorted(out["ect_curve"]) == [2, 4]
    with pytest.raises(ValueError, match="images must be finite"):
        ect_digits.study(tiny, images * float("nan"), labels, seed=0, checkpoints=False)


def test_digits_loader_names_the_missing_package():
    from lab.papers.ect import digits as ect_digits
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"needs scikit-learn.*explorable-papers\[gpu\]"):
            ect_digits.load_digits()
    else:
        images, labels = ect_digits.load_digits()
        assert images.shape == (1797, 1, 16, 16) and float(images.min()) >= -1 and float(images.max()) <= 1


def test_cifar10_recipe_is_documented_and_fails_clearly_offline():
    recipe = ex.cifar10_recipe("1hour", check_online=False)
    assert recipe["q"] == 256 and recipe["lr"] == 1e-4 and recipe["ema"] == 0.9993
    assert ect.r_of_t(1.0, 0, q=recipe["q"]) == pytest.approx(ect.r_of_t(1.0, 7, q=2))
    with pytest.raises(ValueError, match="name must be one of"):
        ex.cifar10_recipe("imagenet", check_online=False)


def test_tuning_cost_ratio():
    ect_curve = {500: 0.3, 1000: 0.12, 1500: 0.09, 2000: 0.07}
    scratch_curve = {500: 0.4, 1000: 0.2, 1500: 0.15, 2000: 0.1}
    cost = ex.tuning_cost(ect_curve, scratch_curve, ect_seconds=40.0, scratch_seconds=38.0, pretrain_seconds=30.0)
    assert cost.target_swd == 0.1 and cost.ect_steps == 1500
    assert cost.step_ratio == pytest.approx(0.75) and cost.ect_seconds == pytest.approx(30.0)
    assert cost.time_ratio == pytest.approx(30 / 38) and cost.total_time_ratio == pytest.approx(60 / 38)
    never = ex.tuning_cost({500: 0.5, 2000: 0.2}, scratch_curve, 40.0, 38.0, 30.0)
    assert never.ect_steps is None and math.isnan(never.step_ratio) and "did not reach" in str(never)
    assert ex.steps_to_reach({1: 0.5, 2: 0.1}, 0.1) == 2


def test_digits_claims_follow_the_sweep_record(tmp_path, records_dir):
    from lab.claims import Ledger
    from lab.papers.ect import digits as ect_digits
    fd = {("diffusion", "1-step"): 10.0, ("diffusion", "heun"): 2.0, ("ECT", "1-step"): 5.0,
          ("ECT", "2-step"): 4.0, ("CT from scratch", "1-step"): 6.0}
    ledger = Ledger("ect", "gpu", 0, results_dir=tmp_path)
    ect_digits.check_claims(ledger, {"rows": {k: {"fd": v} for k, v in fd.items()}}, ex.DigitsConfig())
    assert [c.id for c in ledger.claims] == ["D1", "D2", "D3", "D4"]
    assert not any(c.gating for c in ledger.claims)           # no gpu record: reported, never raised
    assert ledger.claims[0].robustness["note"] == "no sweep record at this scale"


def test_loss_figure_marks_stage_boundaries_and_labels_its_axis():
    from lab.papers.ect import figures as figs
    losses = {"diffusion pretraining": torch.rand(3000), "ECT": torch.rand(3000)}
    fig = figs.loss_figure(losses, "tiny", 0, stage_steps={"ECT": 500})
    pre, tuned = fig.axes[:2]
    assert len(pre.lines) == 1                                     # the curve, no boundaries
    assert sorted(line.get_xdata()[0] for line in tuned.lines[1:]) == [500, 1000, 1500, 2000, 2500]
    assert pre.get_ylabel() == "training loss (moving mean)"


@pytest.mark.parametrize("bias_correction", [False, True])
def test_ema_probe_snapshots_match_the_runs_own_ema(bias_correction):
    import dataclasses
    tune = TrainConfig(steps=8, lr=1e-3, ema=0.9, ema_bias_correction=bias_correction, progress_every=4)
    cfg = ex.RingConfig(width=16, blocks=1, tune=tune, tune_batch=32, probe_every=4,
                        ect=ect.ECTConfig(stage_steps=4))
    long = ex.consistency_train(cfg, None, 0.7, seed=0, run_dir=False)
    short = ex.consistency_train(dataclasses.replace(cfg, tune=dataclasses.replace(tune, steps=4)), None, 0.7,
                                 seed=0, run_dir=False)
    assert sorted(long.snapshots) == [4] and not short.snapshots
    for key, value in short.model.state_dict().items():
        assert torch.equal(long.snapshots[4][key], value), key


def test_presets_share_the_ring_recipe():
    import dataclasses
    tiny = ex.PRESETS["tiny"].ring
    assert tiny.pretrain.ema_bias_correction and tiny.tune.ema_bias_correction
    assert (tiny.pretrain.optimizer, tiny.pretrain.lr, tiny.tune.lr) == ("adam", 1e-3, 5e-4)
    for name in ("gpu", "paper"):
        ring = ex.PRESETS[name].ring
        assert ring.pretrain == tiny.pretrain
        assert dataclasses.replace(ring.tune, steps=tiny.tune.steps) == tiny.tune
