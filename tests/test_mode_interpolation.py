import dataclasses
import math

import numpy as np
import pytest
import torch

from lab.data import gaussian_1d, gaussian_grid
from lab.metrics import auroc, roc_curve
from lab.nn import Decoder, timestep_embedding
from lab.papers.mode_interpolation import experiments as ex
from lab.papers.mode_interpolation import method as mi
from lab.papers.mode_interpolation.ddpm import DDPMSchedule
from lab.saved import Pending
from lab.scale import preset
from lab.train import TrainConfig

SCHED = DDPMSchedule()


def test_oracle_symmetry_and_midpoints():
    mix = gaussian_1d((1, 2, 3))
    for t in (0, 5, 50, 500):
        ab = float(SCHED.alpha_bars[t])
        x = torch.tensor([[2 * ab ** 0.5]], dtype=torch.float64)
        assert float(mi.oracle_posterior_mean(x, t, mix, SCHED)) == pytest.approx(2.0, abs=1e-9)
    x = torch.tensor([[1.5 * 0.999 ** 0.5]], dtype=torch.float64)
    assert float(mi.oracle_posterior_mean(x, 0, mix, SCHED)) == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize("t, slope", [(0, 21.142), (9, 10.422)])
def test_oracle_midpoint_slope(t, slope):
    mix, h = gaussian_1d((1, 2)), 1e-5
    ab = float(SCHED.alpha_bars[t])
    x = torch.tensor([[1.5 - h], [1.5 + h]], dtype=torch.float64) * ab ** 0.5
    m = mi.oracle_posterior_mean(x, t, mix, SCHED)[:, 0]
    assert float((m[1] - m[0]) / (2 * h * ab ** 0.5)) == pytest.approx(slope, rel=1e-3)


def test_oracle_eps_is_exact_for_a_single_gaussian():
    # one mode: E[x0|x_t] is linear and eps* is the exact conditional mean of the noise
    mix = gaussian_1d((0.5,))
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    t = 30
    ab = float(SCHED.alpha_bars[t])
    v = ab * mix.sigma ** 2 + 1 - ab
    expected = 0.5 + ab ** 0.5 * mix.sigma ** 2 / v * (x - ab ** 0.5 * 0.5)
    assert torch.allclose(mi.oracle_posterior_mean(x, t, mix, SCHED), expected, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_sampler_does_not_hallucinate(seed):
    run = ex.ToyConfig(n_samples=20_000, record_last=10, sample_batch=20_000)
    out = ex.sample_oracle(run, seed=seed)
    mix = run.mixture()
    x = out.x[:, 0].numpy()
    assert mi.hallucinated(out.x.numpy(), mix).sum() <= 10
    nearest = np.abs(x[:, None] - mix.modes[:, 0][None]).argmin(1)
    for k in range(3):
        assert (nearest == k).mean() == pytest.approx(1 / 3, abs=0.015)
        assert 0.044 <= x[nearest == k].std() <= 0.050


def test_trajectory_variance():
    assert mi.trajectory_variance(np.full((3, 12), 1.7), 10) == pytest.approx(np.zeros(3))
    alt = np.tile([0.0, 1.0], 10)[None]
    assert mi.trajectory_variance(alt, 10)[0] == pytest.approx(0.25)
    path = np.random.default_rng(0).normal(size=(5, 30))
    changed = path.copy()
    changed[:, :20] = 99.0                                   # outside the last K = 10 steps
    assert np.allclose(mi.trajectory_variance(path, 10), mi.trajectory_variance(changed, 10))
    two_d = np.random.default_rng(1).normal(size=(4, 15, 2))
    per_coord = [two_d[:, -10:, c].var(axis=1) for c in range(2)]
    assert np.allclose(mi.trajectory_variance(two_d, 10), np.mean(per_coord, axis=0))
    with pytest.raises(ValueError, match="K must be in"):
        mi.trajectory_variance(path, 31)
    with pytest.raises(ValueError, match="K must be in"):
        mi.trajectory_variance(path, 1)
    with pytest.raises(ValueError, match="x0_path"):
        mi.trajectory_variance(np.zeros(5), 2)


def test_operating_point_and_auroc():
    hal = np.r_[np.arange(100.0), [50.0, 96.0, 200.0]]
    labels = np.r_[np.zeros(100, bool), np.ones(3, bool)]
    op = mi.operating_point(hal, labels, 0.96)
    assert op.threshold == pytest.approx(95.04)
    assert op.removal == pytest.approx(2 / 3)
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)   # ties averaged
    fpr, tpr, _ = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="retain"):
        mi.operating_point(hal, labels, 1.0)
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def test_filters():
    hal = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert list(mi.keep_lowest(hal, 3)) == [1, 3, 4]
    idx = mi.keep_random(100, 40, seed=3)
    assert len(set(idx)) == 40 and idx.max() < 100
    assert list(mi.keep_random(100, 40, seed=3)) == list(idx)
    with pytest.raises(ValueError, match="n must be in"):
        mi.keep_lowest(hal, 6)


def test_labels_and_between():
    mix = gaussian_1d((1, 2, 3))
    x = np.array([[1.0], [1.19], [1.21], [1.5], [3.5], [0.7]])
    assert list(mi.hallucinated(x, mix)) == [False, False, True, True, True, True]
    where = mi.between_modes(x, mix)
    assert list(where["between"]) == [False, True, True, True, False, False]   # a mode itself is not between
    grid = gaussian_grid()
    on_axis = (grid.modes[0] + grid.modes[1]) / 2 + 1e-3        # between axis neighbours
    inside_cell = grid.modes[0] + 0.25 * (grid.modes[6] - grid.modes[0])   # off every nearest segment
    w = mi.between_modes(np.stack([on_axis, inside_cell]), grid)
    assert w["nearest_pair"][0] and w["between"][0]
    assert not w["between"][1]


def test_histogram_kl():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5000, 2))
    assert mi.histogram_kl(a, a, 10, (-4, 4)) == pytest.approx(0.0, abs=1e-6)
    assert mi.histogram_kl(a, a + 1.0, 10, (-4, 4)) > 0.3


def test_data_worlds():
    mix = gaussian_1d((3, 1, 2))
    x = mix.sample(30_000, seed=0)
    nearest = np.abs(x - mix.modes[:, 0][None]).argmin(1)
    assert np.bincount(nearest).tolist() == [10_000] * 3
    assert np.array_equal(mix.sample(10, 5), mix.sample(10, 5))
    assert not np.array_equal(mix.sample(10, 5), mix.sample(10, 6))
    square, diamond = gaussian_grid(False), gaussian_grid(True)
    from lab.data.mixtures import GRID_NORMALISER
    assert GRID_NORMALISER == pytest.approx(2.828869, abs=1e-6)
    y = square.sample(2500, seed=1)
    d = ((y[:, None] - square.modes[None]) ** 2).sum(-1).argmin(1)
    assert np.bincount(d, minlength=25).tolist() == [100] * 25
    assert np.allclose(diamond.modes * GRID_NORMALISER,
                       (square.modes * GRID_NORMALISER) @ np.array([[1, -1], [1, 1]]) / 2)
    dd = np.sqrt(((diamond.modes[:, None] - diamond.modes[None]) ** 2).sum(-1))
    assert dd[dd > 0].min() * GRID_NORMALISER == pytest.approx(1.4142, abs=1e-4)
    assert dd[dd > 0].min() == pytest.approx(0.4999, abs=1e-4)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_1d((1, 2), sigma=-1)
    with pytest.raises(ValueError, match="modes"):
        gaussian_1d([[1, 2]])


def test_network_parameter_counts():
    assert sum(p.numel() for p in Decoder(1, 128, 3, shared=True).parameters()) == 66_817
    assert sum(p.numel() for p in Decoder(1, 64, 3, shared=False).parameters()) == 42_241
    net = Decoder(2, 32, 3)
    x = torch.randn(5, 2)
    t = 17
    assert torch.allclose(net(x, t), net(x, torch.full((5,), t)), atol=1e-6)  # shared-t fast path
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(5, 3), 0)


def test_timestep_embedding_frequencies():
    # [sin(t f_i), cos(t f_i)], f_i = exp(-ln(1e4) i / (W/2 - 1)): f_0 = 1, f_{W/2-1} = 1e-4
    W, t = 64, torch.tensor([0, 1, 9, 999])
    f = torch.exp(-math.log(1e4) * torch.arange(W // 2, dtype=torch.float64) / (W // 2 - 1))
    arg = t[:, None].double() * f
    expected = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
    assert torch.allclose(timestep_embedding(t, W).double(), expected, atol=1e-4)
    assert f[0] == 1.0 and f[-1] == pytest.approx(1e-4, rel=1e-12)


def _spec_decoder(net, x, t):
    """The Decoder written out from its definition: in (no bias); temb = act(Lin(emb(t)));
    h <- h + Lin2(act(LN(Lin1(act(LN(h))) + Lin_t(temb)))); out = Linear(LN(h))."""
    P = dict(net.named_parameters())
    act = lambda z: torch.where(z > 0, z, 0.02 * z)

    def ln(h, name):
        mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5) * P[name + ".weight"] + P[name + ".bias"]

    temb = act(timestep_embedding(t, net.width) @ P["t_proj.0.weight"].T + P["t_proj.0.bias"])
    h = x @ P["inp.weight"].T
    for k in range(len(net.blocks)):
        b = f"blocks.{k}."
        u = act(ln(h, b + "norm1")) @ P[b + "fc1.weight"].T
        u = u + temb @ P[b + "time.weight"].T + P[b + "time.bias"]
        h = h + act(ln(u, b + "norm2")) @ P[b + "fc2.weight"].T
    return ln(h, "out_norm") @ P["out.weight"].T + P["out.bias"]


def test_decoder_matches_its_definition_and_xavier_init():
    torch.manual_seed(0)
    net = Decoder(1, 64, 3)
    for name, p in net.state_dict().items():
        if name.endswith("weight") and p.dim() == 2:        # Xavier-uniform: U(-a, a), a = sqrt(6/(in+out))
            a = math.sqrt(6 / sum(p.shape))
            assert float(p.abs().max()) <= a and float(p.abs().max()) > 0.95 * a, name
            if p.numel() >= 4096:
                assert float(p.std()) == pytest.approx(a / math.sqrt(3), rel=0.05), name
        elif name.endswith("bias"):
            assert not p.any(), name                        # biases start at zero
        else:
            assert torch.equal(p, torch.ones_like(p)), name  # LayerNorm gains start at one
    assert net.inp.bias is None and all(b.fc1.bias is None and b.fc2.bias is None for b in net.blocks)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))               # away from the init, LN affine included
        x, t = 2 * torch.randn(50, 1), torch.randint(0, 1000, (50,))
        assert torch.allclose(net(x, t), _spec_decoder(net, x, t), atol=1e-5)


def test_tiny_training_is_the_plain_loop():
    """train_denoiser = Adam(1e-3, 0.9/0.999), cosine to lr_final, EMA from the initial weights,
    ε-loss on batches drawn with replacement: the same numbers as a loop written out by hand."""
    run = ex.ToyConfig(n_data=300, width=16, batch=64,
                       train=TrainConfig(steps=20, lr=1e-3, lr_final=1e-5, ema=0.999))
    data = ex.make_data(run, 3)
    result = ex.train_denoiser(run, data, seed=3, run_dir=False)
    torch.manual_seed(3)
    net = Decoder(1, 16, 3)
    ema = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999))
    g, d = torch.Generator().manual_seed(3 * 1009), torch.as_tensor(data, dtype=torch.float32)
    for i in range(20):
        opt.param_groups[0]["lr"] = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * i / 20))
        x0 = d[torch.randint(0, len(d), (64,), generator=g)]
        t = torch.randint(0, 1000, (64,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        ab = SCHED.alpha_bars.float()[t][:, None]
        loss = (net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for k, v in net.state_dict().items():
                ema[k].mul_(0.999).add_(v, alpha=0.001)
    for k, v in net.state_dict().items():
        assert torch.allclose(result.model.state_dict()[k], v, atol=1e-6), k
        assert torch.allclose(result.ema_model.state_dict()[k], ema[k], atol=1e-6), k


def test_config_validation():
    with pytest.raises(ValueError, match="dataset"):
        ex.ToyConfig(dataset="circle")
    with pytest.raises(ValueError, match="record_last"):
        ex.ToyConfig(timesteps=50, record_last=100)
    with pytest.raises(ValueError, match="scale"):
        preset(ex.PRESETS, "huge")


def test_larger_studies_run_save_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "runs"))
    micro = ex.ToyConfig(dataset="square", n_data=500, width=16, batch=64, timesteps=50,
                         train=TrainConfig(steps=5, lr=1e-3, ema=0.9), n_samples=300, record_last=10,
                         sample_batch=300)
    cfg = ex.ChapterConfig(line=ex.ToyConfig(), grids=micro, grid_steps_long=8,
                           recursive=ex.RecursiveConfig(dataclasses.replace(micro, n_data=200, n_samples=250),
                                                        generations=2, extra=50))
    saved = tmp_path / "saved"
    results = ex.larger_studies(cfg, scale="gpu", seed=0, saved=saved)
    assert set(results["grids"]) == {"square", "diamond", "square-long"}
    assert len(results["recursive"]["variance"]["rate"]) == 2
    loaded = ex.larger_studies(ex.PRESETS["tiny"], scale="tiny", seed=0, saved=saved)
    assert loaded["grids"]["square"]["rate"] == results["grids"]["square"]["rate"]
    assert np.array_equal(loaded["grids"]["diamond"]["arrays"]["x_rest"], results["grids"]["diamond"]["arrays"]["x_rest"])
    pending = ex.larger_studies(ex.PRESETS["tiny"], scale="tiny", seed=0, saved=tmp_path / "none")
    assert isinstance(pending, Pending) and "Awaiting a gpu-scale run" in pending._repr_markdown_()
