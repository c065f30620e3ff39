"""One training loop for every chapter: HF accelerate, tqdm progress, EMA, exact resume.

The loop is deliberately plain (nanoGPT-style). A chapter supplies ``loss_fn(model, generator)``,
which draws its own batch and noise from the generator it is given; all randomness of training
therefore flows through one ``torch.Generator`` whose state is checkpointed with the weights,
the optimiser and the EMA. Resuming from a checkpoint replays the remaining steps exactly: same
seed, same steps, same numbers, whether or not the run was interrupted. What else a run carries
from step to step (a data policy, a replay buffer) travels with the checkpoint as ``state``: any
object with ``state_dict()`` and ``load_state_dict(d)``, whose dict holds tensors and JSON values.

Checkpoints are safetensors files (tensors) with a JSON header (step, config); nothing is
unpickled on load. On several processes (``accelerate launch``) each process gets its own
generator stream, gradients are averaged by accelerate, and only the main process writes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch

from . import _check, paths

OPTIMIZERS = ("adam", "adamw", "radam")
DECAYS = ("cosine", "linear", "onecycle", "wsd")
MOMENTUM_CYCLE = (0.85, 0.95)   # OneCycleLR's base_momentum, max_momentum
_cached_runs = 0   # runs of this process that found their checkpoint already at the last step


def cached_runs() -> int:
    """How many :func:`train` calls in this process resumed from a complete checkpoint: a chapter's
    wall time that includes them measures loading, not training, and is shown as such."""
    return _cached_runs


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    The rate rises linearly over ``warmup_steps`` (0: none), then stays at ``lr`` when
    ``lr_final`` is None, or decays to ``lr_final`` at the last step along ``decay``
    (``cosine`` or ``linear``). ``decay="onecycle"`` is instead the rate of torch's
    ``OneCycleLR`` (``pct_start = warmup_steps / steps``, cosine, ``div_factor`` 25, no
    momentum cycling): a cosine rise from ``lr / 25`` to ``lr`` over ``warmup_steps`` (≥ 2),
    then a cosine fall to ``lr_final`` (required), reached at the last step; with
    ``cycle_momentum`` Adam's β₁ also follows OneCycleLR's default momentum cycle (0.95 → 0.85
    at the peak rate → 0.95 at the end, mirroring the rate). ``decay="wsd"`` is warmup–stable–
    decay: the linear warm-up, the rate held at ``lr``, then a linear fall to ``lr_final``
    (required) over the last ``decay_steps`` steps (≥ 1), reached at the last step.
    ``optimizer``: ``adam``, ``adamw`` (decoupled ``weight_decay``) or ``radam``.
    ``grad_clip``: clip the global gradient norm to it.
    ``ema``: keep an exponential moving average of the weights with this β;
    ``ema_bias_correction``: debias it (see :class:`EMA`), so that the initial weights carry no
    weight in it; off by default, where the average starts at the initial weights.
    """
    steps: int
    lr: float = 1e-3
    lr_final: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float | None = None
    ema_bias_correction: bool = False
    checkpoint_every: int = 0
    progress_every: int = 50
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay: str = "cosine"
    grad_clip: float | None = None
    cycle_momentum: bool = False
    decay_steps: int = 0

    def __post_init__(self):
        _check.integer("steps", self.steps, low=1)
        _check.real("lr", self.lr, low=0, low_open=True)
        if self.lr_final is not None:
            _check.real("lr_final", self.lr_final, low=0, high=self.lr)
        if self.ema is not None:
            _check.real("ema", self.ema, low=0, high=1, high_open=True)
        if not isinstance(self.ema_bias_correction, bool):
            raise TypeError(f"ema_bias_correction must be a bool; got {self.ema_bias_correction!r}")
        _check.integer("checkpoint_every", self.checkpoint_every, low=0)
        _check.integer("progress_every", self.progress_every, low=1)
        _check.choice("optimizer", self.optimizer, OPTIMIZERS)
        _check.real("weight_decay", self.weight_decay, low=0)
        _check.integer("warmup_steps", self.warmup_steps, low=0, high=self.steps - 1)
        _check.choice("decay", self.decay, DECAYS)
        if self.decay == "onecycle":
            if self.lr_final is None:
                raise ValueError("lr_final must be set when decay is 'onecycle'")
            _check.integer("warmup_steps", self.warmup_steps, low=2)
        if not isinstance(self.cycle_momentum, bool):
            raise TypeError(f"cycle_momentum must be a bool; got {self.cycle_momentum!r}")
        if self.cycle_momentum and (self.decay != "onecycle" or self.optimizer == "radam"):
            raise ValueError("cycle_momentum needs decay='onecycle' and optimizer 'adam' or 'adamw'")
        _check.integer("decay_steps", self.decay_steps, low=0, high=self.steps - self.warmup_steps)
        if self.decay == "wsd":
            if self.lr_final is None:
                raise ValueError("lr_final must be set when decay is 'wsd'")
            _check.integer("decay_steps", self.decay_steps, low=1)
        if self.grad_clip is not None:
            _check.real("grad_clip", self.grad_clip, low=0, low_open=True)


def learning_rate(step: int, config: TrainConfig) -> float:
    """The rate used at optimiser step `step` (0-based): warm-up, then constant or decay to ``lr_final``."""
    if config.decay == "onecycle":
        peak = config.warmup_steps - 1                    # OneCycleLR's end of the rise
        if step <= peak:
            start, end, frac = config.lr / 25, config.lr, step / peak
        else:
            start, end, frac = config.lr, config.lr_final, (step - peak) / (config.steps - 1 - peak)
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.decay == "wsd":
        left = config.steps - 1 - step                   # steps after this one
        if left >= config.decay_steps:
            return config.lr
        return config.lr_final + (config.lr - config.lr_final) * left / config.decay_steps
    if config.lr_final is None:
        return config.lr
    frac = (step - config.warmup_steps) / (config.steps - config.warmup_steps)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if config.decay == "cosine" else 1 - frac
    return config.lr_final + (config.lr - config.lr_final) * shape


def momentum(step: int, config: TrainConfig) -> float:
    """Adam's β₁ at optimiser step `step`: ``config.betas[0]``, or with ``cycle_momentum`` the
    value torch's OneCycleLR gives it (the rate's cosine phases, mirrored between 0.95 and 0.85)."""
    if not config.cycle_momentum:
        return config.betas[0]
    low, high = MOMENTUM_CYCLE
    peak = config.warmup_steps - 1
    if step <= peak:
        start, end, frac = high, low, step / peak
    else:
        start, end, frac = low, high, (step - peak) / (config.steps - 1 - peak)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser that `config` names, at its base rate (the loop sets the rate every step)."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    kwargs = {"lr": config.lr, "betas": config.betas}
    if config.optimizer != "adam" or config.weight_decay:
        kwargs["weight_decay"] = config.weight_decay
    return kinds[config.optimizer](params, **kwargs)


class EMA:
    """Exponential moving average of a model's floating-point tensors (other tensors are copied).

    Plain: s ← β·s + (1−β)·θ from s₀ = the initial weights, which keep the weight β^k after k
    updates. With ``bias_correction`` the average starts from zeros and is divided by 1 − β^k
    (Adam's debiasing); ``shadow`` holds the debiased value directly, updated by
    s ← s + α_k·(θ − s) with α_k = (1−β)/(1−β^k): α₁ = 1, so s₁ = θ₁, and the initial weights
    drop out. ``updates`` counts the updates (k); checkpoints keep it.
    """

    def __init__(self, model: torch.nn.Module, beta: float, bias_correction: bool = False):
        self.beta = _check.real("beta", beta, low=0, high=1, high_open=True)
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool; got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def rate(self, k: int) -> float:
        """The weight α_k of the new weights at update k (counting from 1)."""
        if not self.bias_correction:
            return 1 - self.beta
        return (1 - self.beta) / (1 - self.beta ** k)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        rate = self.rate(self.updates)
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                self.shadow[key].copy_(value)
            elif self.bias_correction:
                self.shadow[key].mul_(1 - rate).add_(value.detach(), alpha=rate)
            else:
                self.shadow[key].mul_(self.beta).add_(value.detach(), alpha=1 - self.beta)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.shadow)
        return model


@dataclasses.dataclass
class TrainResult:
    model: torch.nn.Module
    ema_model: torch.nn.Module | None
    losses: torch.Tensor
    resumed_from: int
    run_dir: Path | None


def run_key(*parts) -> str:
    """A short stable hash of a run's identity (configs, seed, and the lab source that trains it)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=repr).encode())
    h.update(paths.source_hash().encode())
    return h.hexdigest()[:16]


def train(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, torch.Generator], torch.Tensor],
          config: TrainConfig, *, seed: int, run_dir: Path | str | None = None,
          desc: str = "training", device: torch.device | str | None = None,
          on_step: Callable[[int, torch.nn.Module], None] | None = None,
          progress: bool = True, state=None) -> TrainResult:
    """Train `model` for ``config.steps`` optimiser steps of ``loss_fn``; resume from `run_dir` if
    it holds a checkpoint of the same run. Returns the trained model, its EMA copy and the losses.

    ``on_step(step, model)``, if given, runs after every optimiser step (``step`` counts from 1)
    with the unwrapped model: the place for evaluations and snapshots. It must not draw from the
    training generator, so that resuming stays exact. ``progress=False`` hides the progress bar
    (a worker process, whose bar would reach a notebook as stray text).

    ``state``: the run's own state beyond model, optimiser, EMA and generator, saved with every
    checkpoint and restored on resume, so that a run that changes as it trains still replays
    exactly. Any object with ``state_dict()`` → ``{name: tensor or JSON-able value}`` and
    ``load_state_dict(dict)``; tensors go into the safetensors file, the rest into its JSON
    header (nothing is unpickled)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    seed = _check.integer("seed", seed)
    if state is not None and not (callable(getattr(state, "state_dict", None))
                                  and callable(getattr(state, "load_state_dict", None))):
        raise TypeError(f"state must have state_dict() and load_state_dict(); got {type(state).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    accelerator = Accelerator(cpu=device.type == "cpu")
    model = model.to(accelerator.device)
    optimizer = make_optimizer(model.parameters(), config)
    ema = EMA(model, config.ema, config.ema_bias_correction) if config.ema is not None else None
    generator = torch.Generator(accelerator.device)
    generator.manual_seed(seed * 1009 + accelerator.process_index)
    losses = torch.zeros(config.steps)
    start = 0
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt = run_dir / "checkpoint.safetensors" if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        start = _load(ckpt, model, optimizer, ema, generator, losses, config, accelerator, state)
    if start == config.steps:
        global _cached_runs
        _cached_runs += 1
    model, optimizer = accelerator.prepare(model, optimizer)

    model.train()
    bar = tqdm(total=config.steps, initial=start, desc=desc, mininterval=1.0,
               disable=not (progress and accelerator.is_main_process))
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
            if config.cycle_momentum:
                group["betas"] = (momentum(step, config), group["betas"][1])
        loss = loss_fn(model, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.grad_clip is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        losses[step] = loss.detach().float().cpu()
        if on_step is not None:
            on_step(step + 1, accelerator.unwrap_model(model))
        if (step + 1) % config.progress_every == 0 or step + 1 == config.steps:
            bar.update(step + 1 - bar.n)
            bar.set_postfix(loss=f"{losses[max(0, step - config.progress_every + 1):step + 1].mean():.4f}",
                            refresh=False)
        done = step + 1 == config.steps
        if ckpt is not None and (done or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)):
            if accelerator.is_main_process:
                _save(ckpt, accelerator.unwrap_model(model), optimizer, ema, generator, losses, step + 1, config,
                      state)
    bar.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    ema_model = None
    if ema is not None:
        import copy
        ema_model = ema.copy_to(copy.deepcopy(model)).eval()
    return TrainResult(model, ema_model, losses, start, run_dir)


def _save(path: Path, model, optimizer, ema, generator, losses, step: int, config: TrainConfig,
          run_state=None) -> None:
    from safetensors.torch import save_file
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.cpu().contiguous() for k, v in ema.shadow.items()})
    opt = optimizer.state_dict()
    scalars = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    tensors["rng/generator"] = generator.get_state().cpu()
    tensors["losses"] = losses.clone()
    meta = {"step": step, "config": dataclasses.asdict(config), "ema_updates": ema.updates if ema else 0,
            "param_groups": opt["param_groups"], "opt_scalars": scalars}
    if run_state is not None:
        meta["state"] = {}
        for key, value in run_state.state_dict().items():
            if torch.is_tensor(value):
                tensors[f"state/{key}"] = value.detach().cpu().contiguous()
            else:
                meta["state"][key] = value
        try:
            json.dumps(meta["state"])
        except TypeError as err:
            raise TypeError(f"state.state_dict() must hold tensors and JSON-able values: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"lab": json.dumps(meta)})
    os.replace(tmp, path)


def _load(path: Path, model, optimizer, ema, generator, losses, config, accelerator, run_state=None) -> int:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lab"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # a field added to TrainConfig after the checkpoint was written had its default there
    saved = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved.update(meta["config"], betas=tuple(meta["config"]["betas"]))
    if saved != dataclasses.asdict(config):
        raise ValueError(f"run_dir {path.parent} holds a checkpoint of another config: {saved}; "
                         "use a new run_dir or delete it")
    if (run_state is not None) != ("state" in meta):
        raise ValueError(f"run_dir {path.parent} holds a checkpoint "
                         + ("without" if run_state is not None else "with") + " a run state, and this run "
                         + ("has one" if run_state is not None else "has none") + ": use a new run_dir or delete it")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    if ema is not None:
        ema.shadow = {k[4:]: v.to(accelerator.device) for k, v in tensors.items() if k.startswith("ema/")}
        ema.updates = int(meta.get("ema_updates", meta["step"]))
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["opt_scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng/generator"])
    losses.copy_(tensors["losses"])
    if run_state is not None:
        run_state.load_state_dict({**meta["state"], **{k[6:]: v for k, v in tensors.items() if k.startswith("state/")}})
    return int(meta["step"])


def default_run_dir(chapter: str, name: str, key: str) -> Path:
    """``_build/runs/<chapter>/<name>-<key>``: where a chapter's run keeps its checkpoint."""
    return paths.runs_dir() / chapter / f"{name}-{key}"


def resolve_run_dir(run_dir: Path | str | bool | None, chapter: str, name: str, *key_parts) -> Path | None:
    """A chapter function's ``run_dir`` argument made concrete: ``True`` → the default folder
    keyed on `key_parts` (see :func:`run_key`), ``False`` or None → no checkpoints, a path → itself."""
    if run_dir is True:
        return default_run_dir(chapter, name, run_key(*key_parts))
    if run_dir is False or run_dir is None:
        return None
    return Path(run_dir)
