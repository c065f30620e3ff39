"""The MOHAWK chapter's experiments: two worlds (a copy language; a budget-limited mixture of a
Markov "knowledge" language and a mixer skill, recall or copy), a trained teacher, and the student
arms at a fixed step budget (MOHAWK's three stages; the ablations 1+3 and 2+3; KD after weight
transfer; KD from scratch), with the measurements behind the claims; one config per scale.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time

import torch
import torch.nn.functional as F

from ... import _check
from ...data.tasks import copy_batch
from ...data.tokens import Domain, markov, markov2, recall
from ...nn.gpt import GPTConfig
from ...parallel import run_jobs
from ...train import TrainConfig, resolve_run_dir, train
from .method import (
    DiscreteMamba2,
    ParallelLM,
    hidden_errors,
    kd_loss,
    matrix_errors,
    matrix_loss,
    phi_mamba,
    phi_teacher,
    run_stage,
    teacher_trace,
    transfer_weights,
)

ARMS = ("mohawk", "stages_13", "stages_23", "kd_transfer", "kd_scratch")


def arm_steps(arm: str, split: tuple[int, int, int]) -> tuple[int, int, int]:
    """The steps an arm spends on stages 1, 2, 3 at the budget ``sum(split)``: "mohawk" the split
    itself; "stages_13" / "stages_23" drop stage 2 / stage 1 and give its steps to stage 3;
    "kd_transfer" and "kd_scratch" spend the whole budget on stage 3."""
    arm = _check.choice("arm", arm, ARMS)
    if len(split) != 3:
        raise ValueError(f"split must hold three step counts; got {split!r}")
    s1, s2, s3 = (_check.integer(f"split[{i}]", n, low=0) for i, n in enumerate(split))
    return {"mohawk": (s1, s2, s3), "stages_13": (s1, 0, s2 + s3), "stages_23": (0, s2, s1 + s3),
            "kd_transfer": (0, 0, s1 + s2 + s3), "kd_scratch": (0, 0, s1 + s2 + s3)}[arm]


# ---------------------------------------------------------------------------------------------
# The copy language
# ---------------------------------------------------------------------------------------------
def copy_sequences(batch: int, length: int, vocab: int, generator: torch.Generator | None = None):
    """The copy task of :func:`lab.data.tasks.copy_batch` with every next token as a target
    (distillation reads all positions); positions ≥ L + 1 predict the second copy."""
    return copy_batch(batch, length, vocab, generator, mask=False)


@torch.no_grad()
def copy_accuracy(model: ParallelLM, inputs: torch.Tensor, targets: torch.Tensor, length: int) -> float:
    """Token accuracy of argmax predictions on the second copy (teacher-forced)."""
    pred = model(inputs).argmax(-1)
    return (pred[:, length:] == targets[:, length:]).float().mean().item()


# ---------------------------------------------------------------------------------------------
# The budget-limited world: Markov "knowledge" mixed with a mixer skill (copy or recall)
# ---------------------------------------------------------------------------------------------
SKILLS = ("copy", "recall")


def knowledge(n_tokens: int, concentration: float, seed: int) -> Domain:
    """P(c | a, b) = ½·P1(c | b) + ½·P2(c | a, b), rows Dirichlet(`concentration`): a first-order
    signal the teacher finds early, and a second-order part that takes it thousands of steps."""
    P1 = markov(n_tokens, concentration, seed).table
    P2 = markov2(n_tokens, concentration, seed + 1).table
    start = torch.full((n_tokens, n_tokens), 1.0 / n_tokens ** 2, dtype=torch.float64)
    return Domain("knowledge", "markov2", n_tokens, None, 0.5 * P1[None] + 0.5 * P2, start)


def recall_pairs(batch: int, n_tokens: int, pairs: int, queries: int, generator: torch.Generator):
    """`pairs` key–value pairs (distinct keys; values uniform), then `queries` (key, value) queries
    of keys drawn from the pairs; local ids 0 … n_tokens − 1. Returns (batch, 2·(pairs + queries))."""
    keys = torch.rand(batch, n_tokens, generator=generator).argsort(-1)[:, :pairs]
    values = torch.randint(0, n_tokens, (batch, pairs), generator=generator)
    asked = torch.randint(0, pairs, (batch, queries), generator=generator)
    context = torch.stack([keys, values], -1).flatten(1)
    q = torch.stack([keys.gather(1, asked), values.gather(1, asked)], -1).flatten(1)
    return torch.cat([context, q], 1)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """A domain-prefix token + `length` tokens; domain 0 the knowledge language (ids 0 … n − 1),
    domain 1 the skill (ids n … 2n − 1), 50/50; prefixes 2n, 2n + 1."""
    skill: str = "copy"
    n_tokens: int = 32
    length: int = 32
    concentration: float = 0.1
    pairs: int = 4

    def __post_init__(self):
        _check.choice("skill", self.skill, SKILLS)
        for name in ("n_tokens", "length", "pairs"):
            _check.integer(name, getattr(self, name), low=2)
        _check.real("concentration", self.concentration, low=0, low_open=True)
        if self.skill == "copy" and self.length % 2:
            raise ValueError(f"length must be even for the copy skill; got {self.length}")
        if self.skill == "recall" and (self.length % 2 or self.length <= 2 * self.pairs
                                       or self.pairs > self.n_tokens):
            raise ValueError(f"length must be even and > 2·pairs, pairs ≤ n_tokens; got {self.length}, "
                             f"{self.pairs}")

    @property
    def vocab(self) -> int:
        return 2 * self.n_tokens + 2

    def sample_domain(self, k: int, batch: int, generator: torch.Generator, world: Domain) -> torch.Tensor:
        """`batch` sequences of domain `k` with their prefix: (batch, length + 1)."""
        n = self.n_tokens
        if k == 0:
            body = world.sample(batch, self.length, generator)
        elif self.skill == "copy":
            body = recall(n, self.length // 2, self.length).sample(batch, self.length, generator) + n
        else:
            body = recall_pairs(batch, n, self.pairs, self.length // 2 - self.pairs, generator) + n
        return torch.cat([torch.full((batch, 1), 2 * n + k), body], 1)

    def answers(self) -> slice:
        """Positions of the inputs (prefix + length − 1 tokens) whose target the skill determines."""
        half = self.length // 2
        return slice(half, self.length) if self.skill == "copy" else slice(2 * self.pairs + 1, self.length, 2)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
SCHEDULES = ("onecycle", "wsd")


def one_cycle(steps: int, lr: float) -> TrainConfig:
    """AdamW (no weight decay), torch's OneCycle with 10 % warm-up and its momentum cycle (a
    stand-in for the paper's warmup–stable–decay), gradient norm clipped to 1."""
    return TrainConfig(steps=steps, lr=lr, lr_final=lr / (25 * 1e4), optimizer="adamw",
                       warmup_steps=max(2, steps // 10), decay="onecycle", grad_clip=1.0,
                       cycle_momentum=True, progress_every=10, checkpoint_every=500)


def wsd(steps: int, lr: float) -> TrainConfig:
    """AdamW, warmup–stable–decay as the paper restarts it per stage: linear warm-up over 10 %
    of the steps, the rate held, a linear fall to lr/100 over the last 20 %; clip 1."""
    return TrainConfig(steps=steps, lr=lr, lr_final=lr / 100, optimizer="adamw",
                       warmup_steps=max(1, steps // 10), decay="wsd", decay_steps=max(1, steps // 5),
                       grad_clip=1.0, progress_every=10, checkpoint_every=500)


def stage_config(schedule: str, steps: int, lr: float) -> TrainConfig:
    return {"onecycle": one_cycle, "wsd": wsd}[_check.choice("schedule", schedule, SCHEDULES)](steps, lr)


@dataclasses.dataclass(frozen=True)
class MohawkConfig:
    """Data, teacher, student and budget of one chapter run. `world` None: the copy language
    (BOS x COPY x, `vocab` data tokens, `length`); else the budget-limited mixture it describes."""
    vocab: int = 16
    length: int = 16
    world: WorldConfig | None = None
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_state: int = 16
    a_bias: float = -4.0
    teacher_batch: int = 32
    teacher_steps: int = 400
    teacher_lr: float = 3e-3
    batch: int = 32
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
                     "teacher_batch", "eval_size", "probe_size", "frame_every"):
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
        if self.world is not None and not isinstance(self.world, WorldConfig):
            raise TypeError(f"world must be a WorldConfig or None; got {type(self.world).__name__}")

    @property
    def gpt(self) -> GPTConfig:
        if self.world is None:
            vocab, context = self.vocab + 2, 2 * self.length + 1
        else:
            vocab, context = self.world.vocab, self.world.length
        return GPTConfig(vocab=vocab, context=context, d_model=self.d_model,
                         n_layers=self.n_layers, n_heads=self.n_heads, d_mlp=4 * self.d_model)

    @property
    def budget(self) -> int:
        return sum(self.split)

    def data(self, seed: int) -> Data:
        return _data(self, _check.integer("seed", seed))


def host_generator(generator: torch.Generator) -> torch.Generator:
    """`generator` itself when it lives on the CPU. The training loop's generator lives on the
    model's device; on an accelerator, one draw from it seeds a CPU generator for the world's
    samplers, so a resumed run still replays the same batches."""
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@functools.lru_cache(maxsize=4)
def _data(cfg: MohawkConfig, seed: int) -> Data:
    # one world per (config, seed): building the knowledge language's stationary law takes ~1 s
    return Data(cfg, seed)


class Data:
    """Training batches and fixed evaluation sets of one config's world for one seed."""

    def __init__(self, cfg: MohawkConfig, seed: int):
        self.cfg, self.seed = cfg, _check.integer("seed", seed)
        w = cfg.world
        self.knowledge = knowledge(w.n_tokens, w.concentration, 1000 + seed) if w is not None else None
        g = torch.Generator().manual_seed(cfg.eval_seed + seed)
        if w is None:
            self.eval = {"copy": copy_sequences(cfg.eval_size, cfg.length, cfg.vocab, g)}
            self.probe = copy_sequences(cfg.probe_size, cfg.length, cfg.vocab, g)[0]
        else:
            self.eval = {name: self._split(w.sample_domain(k, cfg.eval_size, g, self.knowledge))
                         for k, name in enumerate(("knowledge", w.skill))}
            self.probe = torch.cat([self.eval["knowledge"][0][:cfg.probe_size // 2],
                                    self.eval[w.skill][0][:cfg.probe_size // 2]])

    @staticmethod
    def _split(seq):
        return seq[:, :-1], seq[:, 1:]

    def batch(self, size: int, generator: torch.Generator):
        """(inputs, next-token targets) of `size` training sequences, on the CPU (an accelerator's
        generator seeds a CPU one: see :func:`host_generator`)."""
        generator = host_generator(generator)
        w = self.cfg.world
        if w is None:
            return copy_sequences(size, self.cfg.length, self.cfg.vocab, generator)
        which = torch.rand(size, generator=generator) < 0.5
        seq = torch.empty(size, w.length + 1, dtype=torch.long)
        for k, rows in enumerate((~which, which)):
            idx = rows.nonzero().squeeze(1)
            if len(idx):
                seq[idx] = w.sample_domain(k, len(idx), generator, self.knowledge)
        return self._split(seq)

    @torch.no_grad()
    def evaluate(self, model: ParallelLM, teacher: ParallelLM) -> dict[str, float]:
        """KL(teacher ‖ student) per token on each domain (and on the skill's determined answers);
        copy accuracy on the copy language."""
        out, device = {}, _device_of(model)
        for name, (x, y) in self.eval.items():
            x, y = x.to(device), y.to(device)
            logits, target = model(x), teacher(x)
            out[f"kl_{name}"] = kd_loss(logits, target).item()
            if self.cfg.world is None:
                out["acc"] = copy_accuracy(model, x, y, self.cfg.length)
            elif name == self.cfg.world.skill:
                a = self.cfg.world.answers()
                out[f"kl_{name}_answers"] = kd_loss(logits[:, a], target[:, a]).item()
                out[f"acc_{name}_answers"] = (logits[:, a].argmax(-1) == y[:, a]).float().mean().item()
        return out


WORLD_V4 = MohawkConfig(world=WorldConfig("copy"), teacher_batch=64, teacher_steps=4000,
                        split=(30, 30, 240), arms=ARMS, eval_size=512)
WORLD_V2 = dataclasses.replace(WORLD_V4, world=WorldConfig("recall"))

@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    """One scale's chapter: the copy language (spec §3); the budget-limited world (spec §3b's v2,
    recall) with its arms under OneCycle and, for `wsd_arms`, under per-stage warmup–stable–decay
    at `wsd_lrs` (a rate per stage, chosen on seeds 0–1); the same world with a copy skill
    (`budget_copy`, spec §3b's v4), its arms under OneCycle; more MOHAWK splits of the budget
    world for the token-budget allocator (`grid`, each summing to its budget); every budget-world
    arm again at each decay shift of `a_biases`; and the matrix-class fits."""
    copy: MohawkConfig
    budget: MohawkConfig
    wsd_lrs: tuple[float, float, float]
    wsd_arms: tuple[str, ...] = ("mohawk", "kd_transfer")
    budget_copy: MohawkConfig | None = None
    grid: tuple[tuple[int, int, int], ...] = ()
    a_biases: tuple[float, ...] = ()
    fit_steps: int = 200
    fit_maps: int = 4
    workers: int = 1                        # processes for the student runs (1: this one)
    minutes: float = 3.0

    def __post_init__(self):
        _check.integer("workers", self.workers, low=1)
        for name in ("copy", "budget"):
            if not isinstance(getattr(self, name), MohawkConfig):
                raise TypeError(f"{name} must be a MohawkConfig; got {type(getattr(self, name)).__name__}")
        if self.budget.world is None:
            raise ValueError("budget must describe a budget-limited world (its world is None)")
        if self.budget_copy is not None and (not isinstance(self.budget_copy, MohawkConfig)
                                             or self.budget_copy.world is None):
            raise ValueError("budget_copy must be None or a MohawkConfig with a world")
        for arm in self.wsd_arms:
            _check.choice("wsd_arms", arm, ARMS)
        if len(self.wsd_lrs) != 3:
            raise ValueError(f"wsd_lrs must hold three rates; got {self.wsd_lrs!r}")
        for i, split in enumerate(self.grid):
            budget_split(self.budget, split, f"grid[{i}]")
        for b in self.a_biases:
            _check.real("a_biases", b)


def budget_split(cfg: MohawkConfig, split, name: str = "split") -> tuple[int, int, int]:
    """`split` as a tuple, checked as ``cfg.split`` is and required to spend ``cfg.budget`` steps."""
    split = dataclasses.replace(cfg, split=tuple(split)).split
    if sum(split) != cfg.budget:
        raise ValueError(f"{name} must spend the {cfg.budget} steps of the budget; got {split!r}")
    return split


TINY_BUDGET = dataclasses.replace(WORLD_V2, teacher_steps=1000, split=(20, 20, 160), eval_size=256)
GPU_BUDGET = dataclasses.replace(WORLD_V2, world=WorldConfig("recall", length=128, pairs=8),
                                 d_model=256, n_layers=4, n_heads=8, d_state=32,
                                 teacher_steps=4000, split=(54, 106, 1840), batch=64)


def _with_copy_skill(cfg: MohawkConfig) -> MohawkConfig:
    """The same budget world with copy as its mixer skill (spec §3b's v4), three arms."""
    return dataclasses.replace(cfg, world=dataclasses.replace(cfg.world, skill="copy"),
                               arms=("mohawk", "kd_transfer", "kd_scratch"))


PRESETS = {
    "tiny": ChapterConfig(copy=MohawkConfig(), budget=TINY_BUDGET, wsd_lrs=(3e-3, 3e-3, 3e-3),
                          wsd_arms=("mohawk", "kd_transfer", "kd_scratch"),
                          budget_copy=_with_copy_skill(TINY_BUDGET), workers=2),
    # not yet run on a GPU: a deeper teacher, longer sequences, the paper's split 2.7/5.3/92 %,
    # and spec §4's ablation grid: the five arms at b_a = −4 and 0, and MOHAWK at the tiny split too
    "gpu": ChapterConfig(
        copy=MohawkConfig(vocab=32, length=64, d_model=256, n_layers=4, n_heads=8, d_state=32,
                          teacher_batch=64, teacher_steps=4000, batch=64, split=(54, 106, 1840),
                          eval_size=512, probe_size=64, frame_every=18, minutes=20),
        budget=GPU_BUDGET, wsd_lrs=(3e-3, 3e-3, 3e-3),
        wsd_arms=("mohawk", "kd_transfer", "kd_scratch"), budget_copy=_with_copy_skill(GPU_BUDGET),
        grid=((200, 200, 1600),), a_biases=(0.0,), fit_steps=500, minutes=20),
}


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
def train_teacher(cfg: MohawkConfig, seed: int, run_dir=True, progress: bool = True, device="cpu"):
    """The teacher on next-token cross-entropy at every position, on `device`; cached
    (resumable) in `run_dir` (True: the default folder keyed on the config and seed).
    Returns (teacher, its evaluation)."""
    seed = _check.integer("seed", seed)
    data = cfg.data(seed)
    torch.manual_seed(seed)
    teacher = phi_teacher(cfg.gpt).to(device)

    def loss_fn(model, generator):
        x, y = (t.to(_device_of(model)) for t in data.batch(cfg.teacher_batch, generator))
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    tcfg = one_cycle(cfg.teacher_steps, cfg.teacher_lr)
    key = (dataclasses.asdict(cfg.gpt), repr(cfg.world), cfg.vocab, cfg.length, cfg.teacher_batch,
           dataclasses.asdict(tcfg), seed, "torch-init")
    run_dir = resolve_run_dir(run_dir, "mohawk", "teacher", *key)
    teacher = train(teacher, loss_fn, tcfg, seed=seed, run_dir=run_dir, desc=f"teacher · seed {seed}",
                    progress=progress).model.eval().requires_grad_(False)
    scores = {}
    with torch.no_grad():
        for name, (x, y) in data.eval.items():
            x, y = x.to(_device_of(teacher)), y.to(_device_of(teacher))
            logits = teacher(x)
            scores[f"ce_{name}"] = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
            if cfg.world is None:
                scores["acc"] = copy_accuracy(teacher, x, y, cfg.length)
            elif name == cfg.world.skill:
                a = cfg.world.answers()
                scores[f"acc_{name}_answers"] = (logits[:, a].argmax(-1) == y[:, a]).float().mean().item()
    return teacher, scores


@dataclasses.dataclass
class ArmResult:
    arm: str
    seed: int
    frob_init: list[float]                  # per layer, after transfer, before stage 1
    frob_stage1: list[float]                # per layer, after stage 1
    frob_curve: list[tuple[int, list[float]]]   # (stage-1 step, per layer)
    rel_stage2: list[float]                 # per layer rel₂ after stage 2
    after_stages12: dict[str, float]        # evaluation after stages 1–2
    frob_final: list[float]
    final: dict[str, float]                 # evaluation at the end of the budget
    losses: dict[int, list[float]]          # per stage
    seconds: float
    schedule: str = "onecycle"
    maps: list[tuple[int, list[torch.Tensor]]] = dataclasses.field(default_factory=list)
    # (stage-1 step, per layer T_S (H, T, T) of the first probe sequence)
    decays: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)
    # "before" / "after" stage 1: per layer α (T, H) of the first probe sequence
    steps: tuple[int, int, int] = (0, 0, 0)  # steps spent on stages 1, 2, 3


def student(cfg: MohawkConfig, seed: int) -> ParallelLM:
    torch.manual_seed(10_000 + _check.integer("seed", seed))
    return phi_mamba(cfg.gpt, d_state=cfg.d_state, a_bias=cfg.a_bias)


@torch.no_grad()
def probe_maps(model: ParallelLM, teacher: ParallelLM, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the student's materialised matrices (H, T, T) of the first sequence of `tokens`,
    each layer fed the teacher's input (teacher-forced, as stage 1 sees it)."""
    trace = teacher_trace(teacher, tokens[:1].to(_device_of(teacher)))
    return [b.mixer.mixing_matrix(b.ln(h))[0].cpu() for b, h in zip(model.blocks, trace.hidden)]


@torch.no_grad()
def probe_decays(model: ParallelLM, teacher: ParallelLM, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, α (T, H) of the first sequence of `tokens`, teacher-forced."""
    trace = teacher_trace(teacher, tokens[:1].to(_device_of(teacher)))
    return [b.mixer.decays(b.ln(h))[0].cpu() for b, h in zip(model.blocks, trace.hidden)]


@torch.no_grad()
def teacher_maps(teacher: ParallelLM, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the teacher's attention matrices A (H, T, T) of the first sequence of `tokens`."""
    return [A[0].cpu() for A in teacher_trace(teacher, tokens[:1].to(_device_of(teacher))).maps]


def distill(cfg: MohawkConfig, teacher: ParallelLM, arm: str, seed: int, progress: bool = True,
            split: tuple[int, int, int] | None = None, lrs: tuple[float, float, float] | None = None,
            schedule: str = "onecycle", device="cpu") -> ArmResult:
    """One student arm at the budget ``sum(cfg.split)`` (or ``sum(split)``): every arm but
    "kd_scratch" starts by copying the teacher's non-mixer weights, then spends its steps on the
    stages as :func:`arm_steps` allots them. `lrs`: a rate per stage; `schedule`: each stage's
    schedule, restarted per stage ("onecycle" or "wsd"). Student and teacher run on `device`."""
    arm = _check.choice("arm", arm, ARMS)
    seed = _check.integer("seed", seed)
    schedule = _check.choice("schedule", schedule, SCHEDULES)
    split = cfg.split if split is None else dataclasses.replace(cfg, split=tuple(split)).split
    steps = arm_steps(arm, split)
    lrs = (cfg.lr,) * 3 if lrs is None else lrs
    if len(lrs) != 3:
        raise ValueError(f"lrs must hold three rates; got {lrs!r}")
    start = time.time()
    data = cfg.data(seed)
    model = student(cfg, seed).to(device)
    teacher = teacher.to(device)
    if arm != "kd_scratch":
        transfer_weights(teacher, model)
    probe = data.probe.to(device)
    frob_init = matrix_errors(model, teacher, probe).tolist()
    losses, curve = {}, [(0, frob_init)]
    maps = [(0, probe_maps(model, teacher, probe))] if steps[0] else []
    decays = {"before": probe_decays(model, teacher, probe)}

    def batch(generator):
        return data.batch(cfg.batch, generator)[0].to(device)

    def frames(step, m):
        if step % cfg.frame_every == 0:
            curve.append((step, matrix_errors(m, teacher, probe).tolist()))
            maps.append((step, probe_maps(m, teacher, probe)))

    for stage, n in zip((1, 2, 3), steps):
        if n:
            result = run_stage(stage, model, teacher, batch, stage_config(schedule, n, lrs[stage - 1]),
                               seed=100 * seed + stage, desc=f"{arm} · stage {stage}",
                               on_step=frames if stage == 1 else None, progress=progress)
            losses[stage] = result.losses.tolist()
        if stage == 1:
            frob_stage1 = matrix_errors(model, teacher, probe).tolist()
            decays["after"] = probe_decays(model, teacher, probe)
        if stage == 2:
            rel = hidden_errors(model, teacher, probe).tolist()
            after12 = data.evaluate(model, teacher)
    return ArmResult(arm, seed, frob_init, frob_stage1, curve, rel, after12,
                     matrix_errors(model, teacher, probe).tolist(), data.evaluate(model, teacher),
                     losses, time.time() - start, schedule, maps, decays, steps)


def run_budget(cfg: MohawkConfig, seed: int, wsd_lrs: tuple[float, float, float] | None = None,
               progress: bool = True, wsd_arms: tuple[str, ...] | None = None,
               splits: tuple[tuple[int, int, int], ...] = (), a_biases: tuple[float, ...] = (),
               workers: int = 1, device="cpu") -> dict:
    """A budget-limited world: its teacher, then every arm of ``cfg.arms`` under OneCycle at
    ``cfg.lr``; with `wsd_lrs`, the arms `wsd_arms` (default all) under per-stage
    warmup–stable–decay at those rates; MOHAWK at each split of `splits` (same budget); and every
    arm of ``cfg.arms`` again under OneCycle with the decay shift b_a of each of `a_biases`.
    Everything runs on `device`; the student runs go to `workers` processes
    (:func:`lab.parallel.run_jobs`; each run seeds itself, so the numbers do not depend on it).
    Returns {"teacher", "teacher_scores", "teacher_seconds",
    "arms": {(arm, schedule): ArmResult},
    "grid": {steps (s1, s2, s3): ArmResult} (every run that starts from the transferred weights,
    OneCycle, ``cfg.a_bias``: the allocator's grid), "biases": {(arm, b_a): ArmResult}}."""
    if not isinstance(cfg, MohawkConfig) or cfg.world is None:
        raise TypeError(f"cfg must be a MohawkConfig with a world; got {cfg!r:.80}")
    splits = [budget_split(cfg, split, f"splits[{i}]") for i, split in enumerate(splits)]
    biases_asked = [_check.real("a_biases", b) for b in a_biases]
    workers = _check.integer("workers", workers, low=1)
    t0 = time.time()
    teacher, scores = train_teacher(cfg, seed, progress=progress, device=device)
    teacher_seconds = time.time() - t0
    keys, jobs = [], []                     # keys: ("arms", arm, schedule), ("grid", split), ("biases", arm, b_a)

    def add(key, c, arm, split=None, lrs=None, schedule="onecycle"):
        keys.append(key)
        jobs.append((c, teacher, arm, seed, progress and workers == 1, split, lrs, schedule, device))

    for schedule, lrs in (("onecycle", None), ("wsd", wsd_lrs)):
        if schedule == "wsd" and wsd_lrs is None:
            continue
        for arm in cfg.arms:
            if schedule == "wsd" and wsd_arms is not None and arm not in wsd_arms:
                continue
            add(("arms", arm, schedule), cfg, arm, lrs=lrs, schedule=schedule)
    named = {arm_steps(arm, cfg.split) for arm in cfg.arms if arm != "kd_scratch"}
    for split in dict.fromkeys(splits):
        if split not in named:
            add(("grid", split), cfg, "mohawk", split=split)
    for b in dict.fromkeys(biases_asked):
        if b != cfg.a_bias:
            for arm in cfg.arms:
                add(("biases", arm, b), dataclasses.replace(cfg, a_bias=b), arm)
    done = {part: {} for part in ("arms", "grid", "biases")}
    for (part, *key), result in zip(keys, run_jobs(distill, jobs, workers, desc="student runs")):
        done[part][key[0] if part == "grid" else tuple(key)] = result
    arms = done["arms"]
    grid = {r.steps: r for (arm, schedule), r in arms.items() if schedule == "onecycle" and arm != "kd_scratch"}
    grid.update(done["grid"])
    biases = {(arm, b): arms[arm, "onecycle"] if b == cfg.a_bias else done["biases"][arm, b]
              for b in dict.fromkeys(biases_asked) for arm in cfg.arms}
    return {"teacher": teacher, "teacher_scores": scores, "teacher_seconds": teacher_seconds,
            "arms": arms, "grid": grid, "biases": biases}


def run_experiment(cfg: MohawkConfig, seed: int, progress: bool = True, workers: int = 1,
                   device="cpu") -> dict:
    """The teacher, then every arm of ``cfg.arms`` on `seed` (on `device`, in `workers` processes)."""
    if not isinstance(cfg, MohawkConfig):
        raise TypeError(f"cfg must be a MohawkConfig; got {type(cfg).__name__}")
    workers = _check.integer("workers", workers, low=1)
    t0 = time.time()
    teacher, scores = train_teacher(cfg, seed, progress=progress, device=device)
    teacher_seconds = time.time() - t0
    jobs = [(cfg, copy.deepcopy(teacher), arm, seed, progress and workers == 1, None, None, "onecycle", device)
            for arm in cfg.arms]
    arms = dict(zip(cfg.arms, run_jobs(distill, jobs, workers, desc="student runs")))
    return {"teacher": teacher, "teacher_scores": scores, "teacher_seconds": teacher_seconds, "arms": arms}


# ---------------------------------------------------------------------------------------------
# Optional: a real teacher (Phi-1.5) through transformers (network or a local copy required)
# ---------------------------------------------------------------------------------------------
PHI = "microsoft/phi-1_5"


def load_phi(name_or_path: str = PHI, local_only: bool | None = None, tokenizer: bool = False):
    """Phi-1.5 (or any Phi checkpoint: a hub id or a local folder) with eager attention, so that
    it returns its post-softmax attention matrices; with `tokenizer`, (model, its tokenizer).
    `local_only` (default: True when ``HF_HUB_OFFLINE`` is set) forbids downloads. Raises
    RuntimeError with the reason when ``transformers`` is missing or the weights cannot be had
    offline."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"name_or_path must be a hub id or a folder; got {name_or_path!r}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise RuntimeError("load_phi needs the `transformers` package (the gpu extra): "
                           "pip install transformers") from err
    import os
    local_only = bool(os.environ.get("HF_HUB_OFFLINE")) if local_only is None else local_only
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, attn_implementation="eager",
                                                     local_files_only=local_only,
                                                     torch_dtype=torch.float32, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only) if tokenizer else None
    except (OSError, ValueError) as err:
        raise RuntimeError(f"could not load {name_or_path!r} (offline, or not downloaded yet: it "
                           f"needs the network once); the loader said: {err}") from err
    model = model.eval().requires_grad_(False)
    return (model, tok) if tokenizer else model


@torch.no_grad()
def phi_trace(model, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(inputs of each layer's mixer = input LayerNorm of the layer's hidden state, attention
    matrices (b, h, T, T)) of a transformers Phi model."""
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        raise TypeError(f"tokens must be an integer tensor (batch, T); got {tokens!r:.60}")
    out = model(tokens, output_attentions=True, output_hidden_states=True)
    layers = model.model.layers
    inputs = [layer.input_layernorm(h) for layer, h in zip(layers, out.hidden_states)]
    return inputs, list(out.attentions)


def phi_stage1(model, tokens: torch.Tensor, layer: int, steps: int = 100, lr: float = 1e-3,
               d_state: int = 64, a_bias: float = 0.0, seed: int = 0) -> tuple[DiscreteMamba2, list[float]]:
    """Matrix orientation of one Phi layer: a fresh discrete Mamba-2 mixer (H_v = Phi's heads),
    fed the layer's teacher input, fitted to its attention matrices; returns (mixer, losses)."""
    inputs, maps = phi_trace(model, tokens)
    layer = _check.integer("layer", layer, low=0, high=len(maps) - 1)
    steps = _check.integer("steps", steps, low=1)
    cfg = model.config
    torch.manual_seed(_check.integer("seed", seed))
    mixer = DiscreteMamba2(cfg.hidden_size, cfg.num_attention_heads, d_state=d_state, a_bias=a_bias)
    opt = torch.optim.AdamW(mixer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = matrix_loss(mixer.mixing_matrix(inputs[layer]), maps[layer].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return mixer, losses
