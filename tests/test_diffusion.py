import math

import pytest
import torch

from lab.papers.mode_interpolation.ddpm import DDPMSchedule, sample


@pytest.fixture(scope="module")
def sched():
    return DDPMSchedule(1000, 0.001, 0.2)


def test_schedule_values(sched):
    b, ab = sched.betas, sched.alpha_bars
    assert b[0] == pytest.approx(0.001, abs=1e-12)
    assert b[1] == pytest.approx(0.0011991992, abs=1e-9)
    assert b[999] == pytest.approx(0.2, abs=1e-12)
    for t, ref in [(0, 0.999), (9, 0.981195442564), (99, 0.334986116527), (299, 8.054320e-5), (999, 1.2895e-47)]:
        assert float(ab[t]) == pytest.approx(ref, rel=1e-6)
    assert int((ab < 1e-4).nonzero()[0]) == 296
    assert float(sched.posterior_variance[1]) == pytest.approx(5.455865e-4, rel=1e-6)
    assert math.sqrt(1 - float(ab[9])) == pytest.approx(0.137130, abs=1e-6)
    assert math.sqrt(1 - float(DDPMSchedule(100, 0.001, 0.2).alpha_bars[9])) == pytest.approx(0.310140, abs=1e-6)


def test_posterior_identities(sched):
    ab, abp = sched.alpha_bars[1:], sched.alpha_bars_prev[1:]
    c1, c2, bt = sched.c1[1:], sched.c2[1:], sched.posterior_variance[1:]
    assert torch.allclose(c1 + c2 * ab.sqrt(), abp.sqrt(), atol=1e-12, rtol=0)
    assert torch.allclose(c2 ** 2 * (1 - ab), 1 - abp - bt, atol=1e-12, rtol=0)
    assert float(sched.c1[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(sched.c2[0]) == pytest.approx(0.0, abs=1e-12)
    # fixed-large: beta_t for t >= 1, the posterior variance of index 1 at index 0
    assert torch.equal(sched.sampling_variance[1:], sched.betas[1:])
    assert float(sched.sampling_variance[0]) == float(sched.posterior_variance[1])


def test_predict_x0_inverts_q_sample(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g)
    eps = torch.randn(64, 2, generator=g)
    for t in (0, 9, 250):
        xt = sched.q_sample(x0, torch.full((64,), t), eps)
        assert torch.allclose(sched.predict_x0(xt, t, eps), x0, atol=1e-5 if t < 100 else 1e-2)


def test_sampler_records_x0_and_last_step_is_x0(sched):
    small = DDPMSchedule(50, 0.001, 0.2)
    out = sample(lambda x, t: torch.zeros_like(x), small, 7, 1, generator=torch.Generator().manual_seed(1),
                 record_last=5)
    assert out.x0_path.shape == (7, 5, 1) and out.x_path.shape == (7, 5, 1)
    assert torch.equal(out.x, out.x0_path[:, -1])          # at t = 0 the output is x̂0
    # with zero predicted noise x̂0 = x_t / sqrt(alpha_bar_t), for every recorded step
    for j in range(5):
        t = 4 - j
        assert torch.allclose(out.x0_path[:, j], out.x_path[:, j] / float(small.alpha_bars[t]) ** 0.5)


def test_loss_is_mean_square_error(sched):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x0 = torch.randn(32, 1)
    loss = sched.loss(lambda x, t: torch.zeros_like(x), x0, g1)
    torch.randint(0, 1000, (32,), generator=g2)
    eps = torch.randn(32, 1, generator=g2)
    assert float(loss) == pytest.approx(float(eps.pow(2).mean()))


@pytest.mark.parametrize("kw, match", [({"timesteps": 1}, "timesteps"), ({"beta_start": 0.0}, "beta_start"),
                                       ({"beta_end": 1.5}, "beta_end"), ({"timesteps": 10.0}, "timesteps")])
def test_schedule_rejects_bad_input(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DDPMSchedule(**kw)


def test_step_needs_noise_above_t0(sched):
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match="noise"):
        sched.step(x, 5, x)
    x_prev, x0 = sched.step(x, 0, x)
    assert torch.allclose(x_prev, x0)


def test_sampler_rejects_bad_input(sched):
    with pytest.raises(ValueError, match="record_last"):
        sample(lambda x, t: x, sched, 4, 1, generator=torch.Generator(), record_last=2000)
    with pytest.raises(ValueError, match="n must"):
        sample(lambda x, t: x, sched, 0, 1, generator=torch.Generator())
