"""The MOHAWK chapter's experiments: a copy language, a trained teacher, and the student arms at a
fixed step budget (MOHAWK's three stages; KD after weight transfer; KD from scratch), with the
measurements behind the claims; one config per scale.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import torch
import torch.nn.functional as F

from ... import _check
from ...nn.gpt import GPTConfig
from ...train import TrainConfig, resolve_run_dir, train
from .method import (
    ParallelLM,
    hidden_errors,
    kd_loss,
    matrix_errors,
    phi_mamba,
    phi_teacher,
    run_stage,
    transfer_weights,
)

ARMS = ("mohawk", "kd_transfer", "kd_scratch")


# ---------------------------------------------------------------------------------------------
# The copy language
# ---------------------------------------------------------------------------------------------
def copy_sequences(batch: int, length: int, vocab: int, generator: torch.Generator | None = None):
    """BOS x₁…x_L COPY x₁…x_L, x_i uniform over `vocab` data tokens (BOS = V, COPY = V + 1).
    Returns (inputs (batch, 2L + 1), next-token targets of the same shape); positions ≥ L + 1
    predict the second copy."""
    batch = _check.integer("batch", batch, low=1)
    length = _check.integer("length", length, low=1)
    vocab = _check.integer("vocab", vocab, low=2)
    x = torch.randint(0, vocab, (batch, length), generator=generator)
    seq = torch.cat([torch.full((batch, 1), vocab), x, torch.full((batch, 1), vocab + 1), x], dim=1)
    return seq[:, :-1], seq[:, 1:]


@torch.no_grad()
def copy_accuracy(model: ParallelLM, inputs: torch.Tensor, targets: torch.Tensor, length: int) -> float:
    """Token accuracy of argmax predictions on the second copy (teacher-forced)."""
    pred = model(inputs).argmax(-1)
    return (pred[:, length:] == targets[:, length:]).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
def one_cycle(steps: int, lr: float) -> TrainConfig:
    """AdamW, OneCycle with 10 % warm-up (a stand-in for the paper's warmup–stable–decay), clip 1."""
    return TrainConfig(steps=steps, lr=lr, lr_final=lr / (25 * 1e4), optimizer="adamw",
                       warmup_steps=max(2, steps // 10), decay="onecycle", grad_clip=1.0,
                       progress_every=10)


@dataclasses.dataclass(frozen=True)
class MohawkConfig:
    """Data, teacher, student and budget of one chapter run."""
    vocab: int = 16
    length: int = 16
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_state: int = 16
    a_bias: float = -4.0
    batch: int = 32
    teacher_steps: int = 400
    teacher_lr: float = 3e-3
    split: tuple[int, int, int] = (30, 30, 140)
    lr: float = 3e-3
    arms: tuple[str, ...] = ("mohawk", "kd_scratch")
    eval_size: int = 256
    probe_size: int = 64
    eval_seed: int = 10_000
    frame_every: int = 10
    minutes: float = 3.0

    def __post_init__(self):
        for name in ("vocab", "length", "d_model", "n_layers", "n_heads", "d_state", "batch",
                     "eval_size", "probe_size", "frame_every"):
            _check.integer(name, getattr(self, name), low=1)
        _check.integer("teacher_steps", self.teacher_steps, low=3)      # a one-cycle schedule
        if len(self.split) != 3:
            raise ValueError(f"split must hold three step counts; got {self.split!r}")
        for i, n in enumerate(self.split):
            if _check.integer(f"split[{i}]", n, low=0) and n < 3:
                raise ValueError(f"split[{i}] must be 0 or ≥ 3 (a one-cycle schedule); got {n}")
        if not self.split[2]:
            raise ValueError("split[2] (stage 3) must be ≥ 3 steps; got 0")
        for arm in self.arms:
            _check.choice("arms", arm, ARMS)

    @property
    def gpt(self) -> GPTConfig:
        return GPTConfig(vocab=self.vocab + 2, context=2 * self.length + 1, d_model=self.d_model,
                         n_layers=self.n_layers, n_heads=self.n_heads, d_mlp=4 * self.d_model)

    @property
    def budget(self) -> int:
        return sum(self.split)

    def batch_fn(self):
        return lambda generator: copy_sequences(self.batch, self.length, self.vocab, generator)[0]

    def eval_data(self):
        return copy_sequences(self.eval_size, self.length, self.vocab,
                              torch.Generator().manual_seed(self.eval_seed))

    def probe(self) -> torch.Tensor:
        """Fixed strings on which matrix and hidden-state errors are measured."""
        return copy_sequences(self.probe_size, self.length, self.vocab,
                              torch.Generator().manual_seed(self.eval_seed + 1))[0]


PRESETS = {
    "tiny": MohawkConfig(),
}


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
def train_teacher(cfg: MohawkConfig, seed: int, run_dir=True, progress: bool = True):
    """The teacher on next-token cross-entropy at every position; cached (resumable) in `run_dir`
    (True: the default folder keyed on the config and seed). Returns (teacher, copy accuracy)."""
    seed = _check.integer("seed", seed)
    torch.manual_seed(seed)
    teacher = phi_teacher(cfg.gpt)
    batch = cfg.batch

    def loss_fn(model, generator):
        x, y = copy_sequences(batch, cfg.length, cfg.vocab, generator)
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    tcfg = one_cycle(cfg.teacher_steps, cfg.teacher_lr)
    key = (dataclasses.asdict(cfg.gpt), cfg.batch, cfg.length, dataclasses.asdict(tcfg), seed)
    run_dir = resolve_run_dir(run_dir, "mohawk", "teacher", *key)
    teacher = train(teacher, loss_fn, tcfg, seed=seed, run_dir=run_dir, desc=f"teacher · seed {seed}",
                    progress=progress).model.eval().requires_grad_(False)
    return teacher, copy_accuracy(teacher, *cfg.eval_data(), cfg.length)


@dataclasses.dataclass
class ArmResult:
    arm: str
    seed: int
    frob_init: list[float]                  # per layer, after transfer, before stage 1
    frob_stage1: list[float]                # per layer, after stage 1
    frob_curve: list[tuple[int, list[float]]]   # (stage-1 step, per layer)
    rel_stage2: list[float]                 # per layer rel₂ after stage 2
    acc_stages12: float                     # copy accuracy after stages 1–2
    frob_final: list[float]
    acc: float                              # final copy accuracy
    kl: float                               # final KL(teacher ‖ student) per token on the eval set
    losses: dict[int, list[float]]          # per stage
    seconds: float


def student(cfg: MohawkConfig, seed: int) -> ParallelLM:
    torch.manual_seed(10_000 + _check.integer("seed", seed))
    return phi_mamba(cfg.gpt, d_state=cfg.d_state, a_bias=cfg.a_bias)


@torch.no_grad()
def eval_kl(model: ParallelLM, teacher: ParallelLM, inputs: torch.Tensor) -> float:
    return kd_loss(model(inputs), teacher(inputs)).item()


def distill(cfg: MohawkConfig, teacher: ParallelLM, arm: str, seed: int, progress: bool = True) -> ArmResult:
    """One student arm at the budget ``sum(cfg.split)``: "mohawk" (transfer, stages 1, 2, 3 with
    ``cfg.split``), "kd_transfer" (transfer, then stage 3 for the whole budget), "kd_scratch"
    (stage 3 for the whole budget from a fresh student)."""
    arm = _check.choice("arm", arm, ARMS)
    seed = _check.integer("seed", seed)
    start = time.time()
    model = student(cfg, seed)
    if arm != "kd_scratch":
        transfer_weights(teacher, model)
    probe, (ex, ey) = cfg.probe(), cfg.eval_data()
    frob_init = matrix_errors(model, teacher, probe).tolist()
    s1, s2, s3 = cfg.split if arm == "mohawk" else (0, 0, cfg.budget)
    batch, losses = cfg.batch_fn(), {}
    curve = [(0, frob_init)]

    def frames(step, m):
        if step % cfg.frame_every == 0:
            curve.append((step, matrix_errors(m, teacher, probe).tolist()))

    for stage, steps in ((1, s1), (2, s2), (3, s3)):
        if steps:
            result = run_stage(stage, model, teacher, batch, one_cycle(steps, cfg.lr),
                               seed=100 * seed + stage, desc=f"{arm} · stage {stage}",
                               on_step=frames if stage == 1 else None, progress=progress)
            losses[stage] = result.losses.tolist()
        if stage == 1:
            frob_stage1 = matrix_errors(model, teacher, probe).tolist()
        if stage == 2:
            rel = hidden_errors(model, teacher, probe).tolist()
            acc12 = copy_accuracy(model, ex, ey, cfg.length)
    return ArmResult(arm, seed, frob_init, frob_stage1, curve, rel, acc12,
                     matrix_errors(model, teacher, probe).tolist(), copy_accuracy(model, ex, ey, cfg.length),
                     eval_kl(model, teacher, ex), losses, time.time() - start)


def run_experiment(cfg: MohawkConfig, seed: int, progress: bool = True) -> dict:
    """The teacher, then every arm of ``cfg.arms`` on `seed`."""
    if not isinstance(cfg, MohawkConfig):
        raise TypeError(f"cfg must be a MohawkConfig; got {type(cfg).__name__}")
    t0 = time.time()
    teacher, teacher_acc = train_teacher(cfg, seed, progress=progress)
    teacher_seconds = time.time() - t0
    arms = {arm: distill(cfg, copy.deepcopy(teacher), arm, seed, progress) for arm in cfg.arms}
    return {"teacher": teacher, "teacher_acc": teacher_acc, "teacher_seconds": teacher_seconds, "arms": arms}
