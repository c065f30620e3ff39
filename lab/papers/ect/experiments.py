"""The ECT chapter's experiments: the 2-D ring (diffusion pretraining, ECT, consistency training
from scratch), its configs per scale and scores, and the paper's CIFAR-10 recipe, documented.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ... import _check
from ...data import Mixture, draw, ring
from ...metrics import in_mode_precision, sliced_wasserstein
from ...nn import ResidualMLP
from ...train import TrainConfig, TrainResult, resolve_run_dir, train
from .method import (
    SIGMA_MAX,
    SIGMA_MIN,
    ECTConfig,
    EDMPrecond,
    EMAProbe,
    check_noise_level,
    consistency_sample,
    ect_loss_fn,
    edm_loss,
    heun_sample,
    intermediate_levels,
    nfe,
)


# ---------------------------------------------------------------------------------------------
# The toy experiment: an 8-mode ring; diffusion pretraining, ECT, consistency training from scratch
# ---------------------------------------------------------------------------------------------
# Both stages sample from a bias-corrected EMA: a plain one would keep 0.999³⁰⁰⁰ ≈ 5 % of the
# initial weights, random ones for consistency training from scratch. Adam, not the paper's RAdam:
# at this lr and budget RAdam gave worse samples on all of seeds 0–7 (its rectification still
# scales the step by 0.65 at step 1 000 and 0.92 at step 3 000; the paper's runs are 100× longer).
RING_PRETRAIN = TrainConfig(steps=3000, lr=1e-3, ema=0.999, ema_bias_correction=True)
RING_TUNE = TrainConfig(steps=3000, lr=5e-4, ema=0.999, ema_bias_correction=True)


@dataclasses.dataclass(frozen=True)
class RingConfig:
    """The 2-D study: data, network, the three training runs and the evaluation."""
    modes: int = 8
    radius: float = 1.0
    sigma: float = 0.05
    width: int = 128
    blocks: int = 3
    sigma_min: float = SIGMA_MIN
    pretrain: TrainConfig = RING_PRETRAIN
    pretrain_batch: int = 512
    pretrain_p_mean: float = -1.2
    pretrain_p_std: float = 1.2
    tune: TrainConfig = RING_TUNE
    tune_batch: int = 512
    ect: ECTConfig = ECTConfig()
    n_eval: int = 4000
    probe_every: int = 500
    t_mid: float = 0.821
    heun_steps: int = 18

    def __post_init__(self):
        for name in ("modes", "width", "blocks", "pretrain_batch", "tune_batch", "n_eval", "probe_every",
                     "heun_steps"):
            _check.integer(name, getattr(self, name), low=1)
        check_noise_level("t_mid", self.t_mid, self.sigma_min, SIGMA_MAX)

    def mixture(self) -> Mixture:
        return ring(self.modes, self.radius, self.sigma)


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Provisional `gpu` settings (not yet calibrated on a GPU; claims are reported until then)."""
    base: int = 64
    mults: tuple[int, ...] = (1, 2, 2)
    dropout: float = 0.1
    batch: int = 256
    pretrain: TrainConfig = TrainConfig(steps=30_000, lr=2e-4, ema=0.999, ema_bias_correction=True,
                                        checkpoint_every=5000)
    tune: TrainConfig = TrainConfig(steps=12_000, lr=2e-4, ema=0.999, ema_bias_correction=True,
                                    checkpoint_every=3000)
    ect: ECTConfig = ECTConfig(stage_steps=2000)
    classifier: TrainConfig = TrainConfig(steps=1500, lr=1e-3)
    t_mid: float = 0.821


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    ring: RingConfig
    digits: DigitsConfig | None = None   # the image study (lab.papers.ect.digits), gpu scale
    minutes: float = 3.0


PRESETS = {
    "tiny": ChapterConfig(RingConfig(), minutes=2.5),
    "gpu": ChapterConfig(RingConfig(tune=dataclasses.replace(RING_TUNE, steps=6000),
                                    ect=ECTConfig(stage_steps=750)),
                         digits=DigitsConfig(), minutes=20.0),
    "paper": ChapterConfig(RingConfig(tune=dataclasses.replace(RING_TUNE, steps=6000),
                                      ect=ECTConfig(stage_steps=750)), minutes=60.0),
}


def held_out(cfg: RingConfig, seed: int) -> np.ndarray:
    """n_eval held-out data points (the reference sample of every metric)."""
    return cfg.mixture().sample(cfg.n_eval, 50_000 + seed)


def make_model(cfg: RingConfig, sigma_data: float, seed: int, device="cpu") -> EDMPrecond:
    """A freshly initialised EDM-preconditioned residual MLP (weights drawn from `seed`)."""
    torch.manual_seed(seed)
    return EDMPrecond(ResidualMLP(2, cfg.width, cfg.blocks), sigma_data, cfg.sigma_min).to(device)


def pretrain(cfg: RingConfig, sigma_data: float, *, seed: int, device="cpu", run_dir=True) -> TrainResult:
    """Stage A, the stand-in for an EDM checkpoint: the denoising loss on fresh ring samples."""
    mixture = cfg.mixture()
    model = make_model(cfg, sigma_data, seed, device)

    def loss_fn(net, generator):
        y = draw(mixture, cfg.pretrain_batch, generator)
        return edm_loss(net, y, generator, p_mean=cfg.pretrain_p_mean, p_std=cfg.pretrain_p_std)

    run_dir = resolve_run_dir(run_dir, "ect", "pretrain", dataclasses.asdict(cfg), sigma_data, seed)
    began = time.time()
    result = train(model, loss_fn, cfg.pretrain, seed=seed, run_dir=run_dir, desc="diffusion pretraining",
                   device=device)
    result.seconds = _wall_time(run_dir, time.time() - began, result.resumed_from == cfg.pretrain.steps)
    return result


def _wall_time(run_dir, seconds: float, resumed_complete: bool) -> float:
    """The training time of a run: measured now, or read back when a finished run was reloaded."""
    if run_dir is None:
        return seconds
    path = Path(run_dir) / "seconds.txt"
    if resumed_complete and path.exists():
        return float(path.read_text())
    if not resumed_complete:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(repr(seconds))
    return seconds


@dataclasses.dataclass
class TuneResult:
    """A consistency run: the trained weights, its EMA, losses and EMA snapshots by step."""
    result: TrainResult
    snapshots: dict[int, dict[str, torch.Tensor]]
    seconds: float

    @property
    def model(self) -> EDMPrecond:
        return self.result.ema_model


def consistency_train(cfg: RingConfig, start: EDMPrecond | None, sigma_data: float, *, seed: int,
                      device="cpu", run_dir=True, name: str = "ect") -> TuneResult:
    """ECT from the weights of `start` (a pretrained diffusion model), or consistency training
    from scratch (`start` None: random init). Same objective, stages and budget either way."""
    if start is None:
        model = make_model(cfg, sigma_data, seed + 7, device)
    else:
        if not isinstance(start, EDMPrecond):
            raise TypeError(f"start must be an EDMPrecond or None; got {type(start).__name__}")
        model = copy.deepcopy(start).to(device)
        model.iteration.zero_()
    mixture = cfg.mixture()
    probe = EMAProbe(model, cfg.probe_every, cfg.tune.ema or 0.999, cfg.tune.steps,
                     bias_correction=cfg.tune.ema_bias_correction)
    loss_fn = ect_loss_fn(lambda n, g: draw(mixture, n, g), cfg.ect, cfg.tune_batch)
    run_dir = resolve_run_dir(run_dir, "ect", name, dataclasses.asdict(cfg), sigma_data, seed, start is None)
    began = time.time()
    result = train(model, loss_fn, cfg.tune, seed=seed + 1, run_dir=run_dir, desc=name, device=device,
                   on_step=probe.on_step)
    complete = result.resumed_from == cfg.tune.steps
    seconds = _wall_time(run_dir, time.time() - began, complete)
    snapshots = probe.snapshots
    if run_dir is not None:
        snapshots = _keep_snapshots(Path(run_dir), snapshots)
    return TuneResult(result, snapshots, seconds)


def _keep_snapshots(run_dir: Path, snapshots: dict):
    """Save the probe's snapshots beside the checkpoint; a run resumed after it finished reads them.
    (A run interrupted mid-way keeps the snapshots taken after it resumed.)"""
    from safetensors.torch import load_file, save_file
    path = run_dir / "snapshots.safetensors"
    if snapshots:
        flat = {f"{step}/{k}": v for step, sd in snapshots.items() for k, v in sd.items()}
        run_dir.mkdir(parents=True, exist_ok=True)
        save_file(flat, str(path))
        return snapshots
    if not path.exists():
        return snapshots
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        step, name = key.split("/", 1)
        out.setdefault(int(step), {})[name] = value
    return dict(sorted(out.items()))


def load_snapshot(model: EDMPrecond, state: dict) -> EDMPrecond:
    """A copy of `model` (eval mode) holding the weights `state`."""
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out.eval()


@dataclasses.dataclass(frozen=True)
class Score:
    swd: float
    precision: float


def score(x, reference, mixture: Mixture) -> Score:
    """SWD against the held-out `reference` and in-mode precision of the samples `x`."""
    x = _check.array("x", x, ndim=2)
    return Score(sliced_wasserstein(x, reference), in_mode_precision(x, mixture))


def generate(model: EDMPrecond, sampler: str, n: int, seed: int, *, t_mid: float = 0.821,
             steps: int = 18) -> np.ndarray:
    """Samples by name: ``1-step`` / ``2-step`` (consistency sampler), ``heun`` / ``euler``
    (EDM sampler with `steps` levels). The noise comes from `seed` (same seed, same noise)."""
    _check.choice("sampler", sampler, ("1-step", "2-step", "heun", "euler"))
    generator = torch.Generator(next(model.parameters()).device).manual_seed(90_000 + seed)
    model = model.eval()
    if sampler in ("1-step", "2-step"):
        x = consistency_sample(model, n, generator, t_mids=(t_mid,) if sampler == "2-step" else ())
    else:
        x = heun_sample(model, n, generator, steps=steps, heun=sampler == "heun")
    return x.double().cpu().numpy()


def curve(tune: TuneResult, reference, cfg: RingConfig, seed: int, sampler: str = "2-step") -> dict[int, float]:
    """SWD of the EMA weights against tuning steps (snapshots, then the final EMA)."""
    out = {}
    for step, state in tune.snapshots.items():
        x = generate(load_snapshot(tune.model, state), sampler, cfg.n_eval, seed, t_mid=cfg.t_mid)
        out[step] = sliced_wasserstein(x, reference)
    x = generate(tune.model, sampler, cfg.n_eval, seed, t_mid=cfg.t_mid)
    out[cfg.tune.steps] = sliced_wasserstein(x, reference)
    return out


def steps_to_reach(swd_by_step: dict[int, float], target: float) -> int | None:
    """The first evaluated step whose SWD is at most `target` (None if never)."""
    target = _check.real("target", target)
    for step in sorted(swd_by_step):
        if swd_by_step[step] <= target:
            return step
    return None


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table."""
    model: str
    sampler: str
    nfe: int
    swd: float
    precision: float


class Table:
    """The table "model, sampler, NFE, SWD, in-mode precision"; renders in notebooks and terminals."""
    HEAD = ("model", "sampler", "NFE", "SWD ↓", "in-mode ↑")

    def __init__(self, rows: Sequence[Row]):
        self.rows = list(rows)

    def get(self, model: str, sampler: str) -> Row:
        for row in self.rows:
            if row.model == model and row.sampler == sampler:
                return row
        raise KeyError(f"no row for model {model!r} with sampler {sampler!r}")

    def _cells(self):
        return [(r.model, r.sampler, str(r.nfe), f"{r.swd:.3f}", f"{r.precision:.3f}") for r in self.rows]

    def _repr_html_(self) -> str:
        import html
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.HEAD)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                       for cells in self._cells())
        return f"<table class='lab-results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        cells = [self.HEAD] + self._cells()
        widths = [max(len(c[i]) for c in cells) for i in range(len(self.HEAD))]
        return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) for c in cells)


SAMPLERS = {"1-step": 1, "2-step": 2, "heun": None}


def evaluate(models: dict[str, tuple[EDMPrecond, Sequence[str]]], reference, cfg: RingConfig,
             seed: int) -> tuple[Table, dict[tuple[str, str], np.ndarray]]:
    """Sample every (model, sampler) pair on the same noise and score it against `reference`.
    `models` maps a name to (model, sampler names). Returns the table and the samples."""
    mixture, rows, samples = cfg.mixture(), [], {}
    for name, (model, samplers) in models.items():
        for sampler in samplers:
            x = generate(model, sampler, cfg.n_eval, seed, t_mid=cfg.t_mid, steps=cfg.heun_steps)
            s = score(x, reference, mixture)
            count = SAMPLERS.get(sampler) or nfe(cfg.heun_steps, sampler == "heun")
            rows.append(Row(name, sampler, count, s.swd, s.precision))
            samples[name, sampler] = x
    return Table(rows), samples


@dataclasses.dataclass(frozen=True)
class TuningCost:
    """What ECT needs to match consistency training from scratch (2-step SWD at scratch's budget)."""
    target_swd: float          # scratch's final 2-step SWD
    scratch_steps: int
    ect_steps: int | None      # first evaluated ECT step at or below the target (None: never)
    ect_seconds: float | None  # its share of ECT's wall time (ECT steps cost the same throughout)
    scratch_seconds: float
    pretrain_seconds: float

    @property
    def step_ratio(self) -> float:
        return float("nan") if self.ect_steps is None else self.ect_steps / self.scratch_steps

    @property
    def time_ratio(self) -> float:
        return float("nan") if self.ect_seconds is None else self.ect_seconds / self.scratch_seconds

    @property
    def total_time_ratio(self) -> float:
        """Counting the diffusion pretraining that ECT starts from."""
        if self.ect_seconds is None:
            return float("nan")
        return (self.ect_seconds + self.pretrain_seconds) / self.scratch_seconds

    def __str__(self) -> str:
        if self.ect_steps is None:
            return (f"ECT did not reach scratch's 2-step SWD {self.target_swd:.3f} within its budget")
        return (f"ECT reaches scratch's final 2-step SWD {self.target_swd:.3f} after {self.ect_steps} "
                f"of {self.scratch_steps} steps:\n"
                f"  {self.step_ratio:.2f}x the iterations, {self.time_ratio:.2f}x the wall time "
                f"({self.ect_seconds:.0f} s vs {self.scratch_seconds:.0f} s);\n"
                f"  {self.total_time_ratio:.2f}x the wall time counting pretraining "
                f"({self.pretrain_seconds:.0f} s)")


def tuning_cost(ect_curve: dict[int, float], scratch_curve: dict[int, float], ect_seconds: float,
                scratch_seconds: float, pretrain_seconds: float) -> TuningCost:
    """Steps (and wall time) ECT needs to reach the final 2-step SWD of the scratch run."""
    scratch_steps = max(scratch_curve)
    target = scratch_curve[scratch_steps]
    reached = steps_to_reach(ect_curve, target)
    seconds = None if reached is None else ect_seconds * reached / max(ect_curve)
    return TuningCost(target, scratch_steps, reached, seconds, float(scratch_seconds), float(pretrain_seconds))


PLAYGROUND_T_MID = (0.1, 0.18, 0.3, 0.5, 0.821, 1.3, 2.0, 3.2, 5.0, 8.0)


def playground(model: EDMPrecond, dm: EDMPrecond, reference, cfg: RingConfig, seed: int,
               steps: Sequence[int] = (1, 2, 3, 4), t_mids: Sequence[float] = PLAYGROUND_T_MID) -> dict:
    """Few-step samples of the tuned `model` for every (steps, t_mid), with their SWD, and the
    diffusion model's Euler sampler at the same number of network calls."""
    out = {"samples": {}, "swd": {}, "euler": {}}
    for n in steps:
        x = generate(dm, "euler", cfg.n_eval, seed, steps=n)
        out["euler"][n] = sliced_wasserstein(x, reference)
        for t_mid in t_mids:
            g = torch.Generator(next(model.parameters()).device).manual_seed(90_000 + seed)
            x = consistency_sample(model.eval(), cfg.n_eval, g, t_mids=intermediate_levels(n, t_mid))
            x = x.double().cpu().numpy()
            out["samples"][n, t_mid] = x
            out["swd"][n, t_mid] = sliced_wasserstein(x, reference)
    return out


# ---------------------------------------------------------------------------------------------
# The paper's CIFAR-10 recipe (documented; needs the internet and NVIDIA's EDM code)
# ---------------------------------------------------------------------------------------------
EDM_CHECKPOINT = ("https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
                  "edm-cifar10-32x32-uncond-vp.pkl")
CIFAR10_RECIPES = {
    "1hour": dict(batch=128, optimizer="RAdam", lr=1e-4, betas=(0.9, 0.999), dropout=0.2, ema=0.9993,
                  q=2 ** 8, k=8, b=1, c=0.0, weighting="inv_dt", stage_steps=10**9, iterations=16_000,
                  p_mean=-1.1, p_std=2.0, sigma_min=0.002, t_mid=0.821,
                  expected="2-step FID ≈ 2.7–3, 1-step ≈ 4–5 after ≈ 1 A100-hour"),
    "paper": dict(batch=128, optimizer="RAdam", lr=1e-4, betas=(0.9, 0.999), dropout=0.2, ema=0.9999,
                  q=2, k=8, b=1, c=0.0, weighting="inv_dt", stage_steps=25_000, iterations=200_000,
                  p_mean=-1.1, p_std=2.0, sigma_min=0.002, t_mid=0.821,
                  expected="1-step FID 3.86, 2-step 2.15 at 200k iterations (README); EDM 2.01 at 35 NFE"),
}


def cifar10_recipe(name: str = "1hour", *, check_online: bool = True) -> dict:
    """The paper's CIFAR-10 settings (``1hour`` = run_ecm_1hour.sh, ``paper`` = run_ecm.sh).

    Running them needs the EDM checkpoint (:data:`EDM_CHECKPOINT`, loaded by NVIDIA's ``edm``
    code, which defines the 55.7M-parameter DDPM++ network), CIFAR-10 and an FID evaluator; with
    `check_online` this raises a RuntimeError saying what is missing when any of it is out of reach.
    """
    recipe = dict(CIFAR10_RECIPES[_check.choice("name", name, tuple(CIFAR10_RECIPES))])
    if check_online:
        import importlib.util
        import urllib.request
        missing = []
        if importlib.util.find_spec("dnnlib") is None or importlib.util.find_spec("torch_utils") is None:
            missing.append("NVIDIA's EDM code (git clone https://github.com/NVlabs/edm and add it to "
                           "sys.path: the checkpoint unpickles its DDPM++ network)")
        try:
            urllib.request.urlopen(urllib.request.Request(EDM_CHECKPOINT, method="HEAD"), timeout=5)
        except Exception as err:  # offline, proxy, DNS: all mean "cannot fetch"
            missing.append(f"the EDM checkpoint at {EDM_CHECKPOINT} ({type(err).__name__}: offline?)")
        if missing:
            raise RuntimeError("the CIFAR-10 recipe cannot run here; missing: " + "; ".join(missing)
                               + ". It needs a GPU with internet (e.g. Colab); the toy runs offline.")
    return recipe
