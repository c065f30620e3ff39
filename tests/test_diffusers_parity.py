"""The hand-written samplers against `diffusers`' schedulers, with the same inputs and the same noise.

The chapters print their own DDPM schedule and sampler (mode interpolation) and ECT's EDM and
consistency samplers; these tests hold them equal to the field's library step by step:

* ``DDPMSchedule`` / ``sample``  ↔  ``DDPMScheduler`` (linear β, ``fixed_large``, no clipping, ε).
  diffusers keeps its tables in float32, the lab in float64: for the book's own schedule
  (T = 1000, β up to 0.2) diffusers' ᾱ_t turns subnormal at t = 902 and 0 at t = 981, where its
  step returns inf/NaN (ᾱ_999 = 1.3e−47 needs float64), and at small β its 1 − ᾱ_t/ᾱ_{t−1}
  loses digits. So diffusers is run both as shipped, where float32 allows, and with the lab's
  float64 tables put in its place, which tests its step formula at the lab's precision.
* ``karras_levels``  ↔  the Karras σ of ``EDMEulerScheduler``, ``HeunDiscreteScheduler`` and
  ``CMStochasticIterativeScheduler``.
* ``heun_sample(heun=False)``  ↔  ``EDMEulerScheduler`` (EDM preconditioning included);
  ``heun_sample``  ↔  ``HeunDiscreteScheduler`` driven by the same EDM denoiser.
* ``consistency_sample``  ↔  ``CMStochasticIterativeScheduler`` (eval-form c_skip/c_out included).

Both sides draw their noise from generators seeded alike, in the same order, so equal samplers
give equal numbers; each test's tolerance is the float32 round-off it states.
"""
import math

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.filterwarnings(        # numpy 2 on diffusers' np.array(tensor)
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[test]')")

from lab.papers.ect import method as ect                                      # noqa: E402
from lab.papers.mode_interpolation.ddpm import DDPMSchedule, sample           # noqa: E402

BOOK = (1000, 0.001, 0.2)        # the mode-interpolation chapter's schedule
HO = (1000, 1e-4, 0.02)          # Ho et al.'s CIFAR-10 schedule
SHORT = (50, 0.001, 0.2)
F32_NORMAL = 1.1754944e-38       # below this float32 is subnormal


def ddpm_scheduler(T, beta_start, beta_end):
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end,
                                   beta_schedule="linear", variance_type="fixed_large", clip_sample=False,
                                   prediction_type="epsilon")


def gaussian_eps(schedule: DDPMSchedule, mu, s: float):
    """The exact ε(x_t, t) = E[ε | x_t] for data N(μ, s²I): √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱs² + 1 − ᾱ)."""
    mu = torch.tensor(mu)

    def eps(x, t):
        ab = float(schedule.alpha_bars[t])
        return (1 - ab) ** 0.5 * (x - ab ** 0.5 * mu) / (ab * s * s + 1 - ab)
    return eps


# -- DDPM ---------------------------------------------------------------------------------------
U32 = 2.0 ** -24                 # float32 unit round-off


def float64_tables(ref, lab: DDPMSchedule):
    """`ref` with the lab's float64 β, α, ᾱ in place of its float32 ones: diffusers' step then
    computes its coefficients in float64 and casts them onto the float32 sample, as the lab does."""
    ref.betas, ref.alphas, ref.alphas_cumprod = lab.betas.clone(), lab.alphas.clone(), lab.alpha_bars.clone()
    return ref


@pytest.mark.parametrize("T, b0, b1", [BOOK, HO, SHORT])
def test_ddpm_tables_equal_diffusers(T, b0, b1):
    """β_t and ᾱ_t equal diffusers' float32 tables to float32 round-off: β to 3e−7 relative
    (≈ 2 ulp), ᾱ_t to 5e−6 relative (float32's cumprod error grows with t) wherever diffusers'
    ᾱ_t is still a normal float32 (with a margin of 10³)."""
    lab, ref = DDPMSchedule(T, b0, b1), ddpm_scheduler(T, b0, b1)
    torch.testing.assert_close(ref.betas.double(), lab.betas, rtol=3e-7, atol=0)
    normal = lab.alpha_bars > 1e3 * F32_NORMAL
    torch.testing.assert_close(ref.alphas_cumprod.double()[normal], lab.alpha_bars[normal], rtol=5e-6, atol=0)


def step_cases():
    """(T, β_start, β_end, t, tables): float64 tables at every t; float32 (diffusers as shipped)
    only where its ᾱ_t is a normal float32 with a margin of 10³ (t < 866 of the book's schedule)."""
    for schedule in (BOOK, HO):
        alpha_bars = DDPMSchedule(*schedule).alpha_bars
        for t in (0, 1, 2, 10, 100, 300, 600, 850, 890, 999):
            yield (*schedule, t, "float64")
            if alpha_bars[t] > 1e3 * F32_NORMAL:
                yield (*schedule, t, "float32")


@pytest.mark.parametrize("T, b0, b1, t, tables", list(step_cases()))
def test_ddpm_step_equals_diffusers(T, b0, b1, t, tables):
    """One reverse step from the same x_t and ε̂ with the same z: x̂0 and x_{t−1} agree.
    diffusers draws z = torch.randn(shape, generator) only for t > 0, adds √β_t·z (fixed_large,
    β_t as 1 − ᾱ_t/ᾱ_{t−1}) and returns the mean at t = 0, as the lab does.

    ``float64``: diffusers' step on the lab's tables, to 1e−6. ``float32``: diffusers as shipped,
    whose 1 − ᾱ_t/ᾱ_{t−1} and 1 − ᾱ_t cancel in float32 and whose cumprod carries up to t
    round-offs: its error is about u·(1/β_t + 1/(1 − ᾱ_t) + t) (u = 2⁻²⁴; 2e−4 at t = 1 of Ho's
    schedule, where the lab's float64 tables are exact to 1e−7). Past t = 901 of the book's
    schedule its ᾱ_t is subnormal, then 0 (inf/NaN). x̂0 is compared as √ᾱ_t·x̂0, which is O(1)."""
    lab, ref = DDPMSchedule(T, b0, b1), ddpm_scheduler(T, b0, b1)
    if tables == "float64":
        ref, tol = float64_tables(ref, lab), 1e-6
    else:
        tol = 2 * U32 * (1 / float(lab.betas[t]) + 1 / float(1 - lab.alpha_bars[t]) + t) + 1e-6
    g = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    g_lab, g_ref = torch.Generator().manual_seed(100 + t), torch.Generator().manual_seed(100 + t)
    z = torch.randn(x_t.shape, generator=g_lab) if t > 0 else None
    x_prev, x0 = lab.step(x_t, t, eps, z)
    out = ref.step(eps, t, x_t, generator=g_ref)
    root = float(lab.alpha_bars[t]) ** 0.5
    torch.testing.assert_close(root * out.pred_original_sample, root * x0, rtol=0, atol=tol)
    torch.testing.assert_close(out.prev_sample, x_prev, rtol=0, atol=tol)
    if t == 0:
        torch.testing.assert_close(x_prev, x0)       # the last step adds no noise, on either side


@pytest.mark.parametrize("tables, T, b0, b1", [("float32", *HO), ("float32", *SHORT),
                                               ("float64", *BOOK), ("float64", *SHORT)])
def test_ddpm_sampler_equals_diffusers_loop(tables, T, b0, b1):
    """A whole ancestral run with the exact ε of a Gaussian: the lab's `sample` and the loop
    x ← DDPMScheduler.step(ε(x, t), t, x, generator) from x_{T−1} = randn, both generators seeded
    alike, end at the same samples (and the same x̂0 over the last recorded steps), to 1e−4.
    The book's schedule runs with float64 tables only: diffusers' float32 ᾱ_t is 0 for t ≥ 981."""
    lab, ref = DDPMSchedule(T, b0, b1), ddpm_scheduler(T, b0, b1)
    if tables == "float64":
        ref = float64_tables(ref, lab)
    eps_fn = gaussian_eps(lab, (1.0, -0.5), 0.3)
    n, dim, record = 256, 2, 5
    out = sample(eps_fn, lab, n, dim, generator=torch.Generator().manual_seed(7), record_last=record)
    g = torch.Generator().manual_seed(7)
    x = torch.randn((n, dim), generator=g)
    x0s = []
    for t in ref.timesteps:
        step = ref.step(eps_fn(x, int(t)), t, x, generator=g)
        x = step.prev_sample
        x0s.append(step.pred_original_sample)
    torch.testing.assert_close(x, out.x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack(x0s[-record:], 1), out.x0_path, rtol=1e-4, atol=1e-4)
    assert float(out.x.mean(0)[0]) == pytest.approx(1.0, abs=0.1)     # it did sample the Gaussian


# -- ECT / EDM ----------------------------------------------------------------------------------
class FixedNet(nn.Module):
    """A fixed raw network F(x_in, c_noise) on 2-D points: smooth, nonlinear, noise-dependent."""

    def __init__(self, dim: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.w = nn.Parameter(torch.randn(dim, dim, generator=g) / dim ** 0.5, requires_grad=False)
        self.b = nn.Parameter(torch.randn(dim, generator=g), requires_grad=False)

    def forward(self, x_in, c_noise):
        c = torch.as_tensor(c_noise, dtype=x_in.dtype).reshape(-1, 1)
        return torch.tanh(x_in @ self.w + c * self.b) + 0.3 * x_in


SIGMA_DATA = 0.5


def ect_model(sigma_min: float = ect.SIGMA_MIN):
    return ect.EDMPrecond(FixedNet(), SIGMA_DATA, sigma_min=sigma_min).eval()


def edm_euler():
    return diffusers.EDMEulerScheduler(sigma_min=ect.SIGMA_MIN, sigma_max=ect.SIGMA_MAX, sigma_data=SIGMA_DATA,
                                       sigma_schedule="karras", rho=7.0, prediction_type="epsilon")


def edm_heun():
    """HeunDiscreteScheduler with EDM's Karras levels: its Karras conversion reads sigma_min and
    sigma_max from the config when present (else the VP betas' range), so they are registered."""
    sch = diffusers.HeunDiscreteScheduler(use_karras_sigmas=True, prediction_type="sample")
    sch.register_to_config(sigma_min=ect.SIGMA_MIN, sigma_max=ect.SIGMA_MAX)
    return sch


@pytest.mark.parametrize("steps", [1, 2, 18, 40])
def test_karras_levels_equal_diffusers(steps):
    """σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, then 0. EDMEulerScheduler and
    HeunDiscreteScheduler (each inner level doubled for its two evaluations) end at 0 as the lab
    does and store float32; CMStochasticIterativeScheduler's training levels stop at σ_min (float64)."""
    lab = ect.karras_levels(steps, ect.SIGMA_MIN, ect.SIGMA_MAX, 7.0)
    euler = edm_euler()
    euler.set_timesteps(steps)
    # float32 levels: diffusers 0.42 rounds float64 ones (3e−7), 0.30 computes them in float32 (1e−6)
    torch.testing.assert_close(euler.sigmas.double(), lab, rtol=2e-6, atol=0)
    heun = edm_heun()
    heun.set_timesteps(steps)
    inner = lab[1:-1].repeat_interleave(2)
    torch.testing.assert_close(heun.sigmas.double(), torch.cat([lab[:1], inner, lab[-1:]]), rtol=3e-7, atol=0)
    if steps > 1:
        cm = diffusers.CMStochasticIterativeScheduler(num_train_timesteps=steps, sigma_min=ect.SIGMA_MIN,
                                                      sigma_max=ect.SIGMA_MAX, rho=7.0)
        torch.testing.assert_close(cm.sigmas, lab[:-1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", [1, 4, 18])
def test_euler_sampler_equals_edm_euler_scheduler(steps):
    """heun_sample(heun=False) ↔ EDMEulerScheduler fed the raw network output F: this also holds
    the lab's train-form preconditioning (c_in, c_noise = ¼ ln σ, c_skip, c_out) equal to
    diffusers'. Differs only in the start: diffusers' init_noise_sigma is √(σ_max² + 1), the lab
    (and EDM) start at σ_max·z, which the loop here uses."""
    model = ect_model()
    lab = ect.heun_sample(model, 128, torch.Generator().manual_seed(3), steps=steps, heun=False, dim=2)
    sch = edm_euler()
    sch.set_timesteps(steps)
    x = ect.SIGMA_MAX * torch.randn((128, 2), generator=torch.Generator().manual_seed(3))
    for t in sch.timesteps:                       # t is c_noise = ¼ ln σ
        x = sch.step(model.net(sch.scale_model_input(x, t), t), t, x).prev_sample
    torch.testing.assert_close(x, lab, rtol=5e-5, atol=5e-5)      # 5e−5: float32 levels in diffusers 0.30


@pytest.mark.parametrize("steps", [2, 5, 18])
def test_heun_sampler_equals_heun_discrete_scheduler(steps):
    """heun_sample ↔ HeunDiscreteScheduler (prediction_type="sample") given the same EDM denoiser
    D(x, σ) at σ = scheduler.sigmas[i]: Heun steps, Euler into σ = 0, 2N − 1 evaluations on both."""
    model = ect_model()
    lab = ect.heun_sample(model, 128, torch.Generator().manual_seed(4), steps=steps, dim=2)
    sch = edm_heun()
    sch.set_timesteps(steps)
    sch.set_begin_index(0)                        # its timesteps come from VP betas and may repeat
    x = ect.SIGMA_MAX * torch.randn((128, 2), generator=torch.Generator().manual_seed(4))
    for i, t in enumerate(sch.timesteps):
        x = sch.step(model(x, float(sch.sigmas[i]), form="train"), t, x).prev_sample
    assert len(sch.timesteps) == ect.nfe(steps)
    torch.testing.assert_close(x, lab, rtol=1e-5, atol=1e-5)


def cm_scheduler(timesteps, sigma_min, **kw):
    sch = diffusers.CMStochasticIterativeScheduler(sigma_min=sigma_min, sigma_max=ect.SIGMA_MAX,
                                                   sigma_data=SIGMA_DATA, clip_denoised=False, **kw)
    sch.set_timesteps(timesteps=timesteps)
    return sch


def cm_loop(model, sch, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = sch.init_noise_sigma * torch.randn((n, 2), generator=g)
    for t in sch.timesteps:                       # t = 1000·¼ ln σ, what diffusers' CM UNets take
        x = sch.step(model.net(sch.scale_model_input(x, t), t / 1000), t, x, generator=g).prev_sample
    return x


# σ_min = 0.25 besides the book's 0.002, so that σ_min's part (eval form, re-noising) is far above
# round-off. 0.25 is exact in float32: diffusers' last step adds z·√(fl32(σ_min)² − σ_min²), which is
# 0 only then (3.5e−5·z for σ_min = 0.2; 6e−7·z for 0.002).
@pytest.mark.parametrize("sigma_min", [ect.SIGMA_MIN, 0.25])
def test_one_step_consistency_sample_equals_cm_scheduler(sigma_min):
    """One step: f(σ_max·z, σ_max) with the eval form c_skip = σd²/((σ − σ_min)² + σd²),
    c_out = (σ − σ_min)σd/√(σ² + σd²), c_in = 1/√(σ² + σd²): diffusers' boundary-condition scalings."""
    model = ect_model(sigma_min)
    lab = ect.consistency_sample(model, 128, torch.Generator().manual_seed(5), dim=2)
    sch = cm_scheduler([0], sigma_min)
    assert sch.init_noise_sigma == ect.SIGMA_MAX
    torch.testing.assert_close(cm_loop(model, sch, 128, 5), lab, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma_min", [ect.SIGMA_MIN, 0.25])
def test_two_step_consistency_sample_equals_cm_scheduler(sigma_min):
    """Two steps at the CM scheduler's level 24 of 40 (σ = 0.8229 for σ_min = 0.002; ECT's t_mid
    is 0.821). A difference in convention: diffusers re-noises to x = f + z·s_noise·√(t² − σ_min²) (CM's
    Algorithm 1), ECT to f + t·z; with s_noise = t/√(t² − σ_min²) the two are the same sampler.
    (diffusers also draws one more z after the last step and scales it by 0.)"""
    model = ect_model(sigma_min)
    t_mid = float(cm_scheduler([24, 0], sigma_min).sigmas[1])
    assert sigma_min != ect.SIGMA_MIN or t_mid == pytest.approx(0.8229, abs=1e-4)
    sch = cm_scheduler([24, 0], sigma_min, s_noise=t_mid / math.sqrt(t_mid ** 2 - sigma_min ** 2))
    lab = ect.consistency_sample(model, 128, torch.Generator().manual_seed(6), t_mids=(t_mid,), dim=2)
    torch.testing.assert_close(cm_loop(model, sch, 128, 6), lab, rtol=1e-5, atol=1e-5)
