"""The mimetic-init chapter's experiments: the copy and MQAR tasks, training runs of each
initialisation in worker processes, and the measurements behind the claims; one config per scale.
"""
from __future__ import annotations

import dataclasses
import os
import time

import torch
import torch.nn.functional as F

from ... import _check
from ...data.tasks import copy_batch
from ...nn.ssm import SSMLM
from ...train import TrainConfig, train
from .method import PARTS, mass_share, mimetic_, recipe


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------
def mqar_batch(batch: int, seq_len: int, vocab: int, num_kv: int, generator: torch.Generator | None = None,
               power_a: float = 0.01):
    """Multi-query associative recall (Zoology semantics). κ = `num_kv` distinct keys from
    [1, V/2) with values from [V/2, V) come first as k v k v …; each key is then queried once at
    slot 2g of the rest, the gaps g drawn without replacement with p(g) ∝ g^{a−1}; other slots hold
    random tokens. Returns (inputs, targets) of length `seq_len`, −100 where no answer is due."""
    batch = _check.integer("batch", batch, low=1)
    seq_len = _check.integer("seq_len", seq_len, low=4)
    vocab = _check.integer("vocab", vocab, low=4)
    num_kv = _check.integer("num_kv", num_kv, low=1)
    power_a = _check.real("power_a", power_a, low=0, low_open=True)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even; got {seq_len}")
    if vocab <= seq_len:
        raise ValueError(f"vocab must exceed seq_len = {seq_len}; got {vocab}")
    if 4 * num_kv > seq_len:
        raise ValueError(f"num_kv must satisfy 4·num_kv ≤ seq_len = {seq_len}; got {num_kv}")
    half = vocab // 2
    if num_kv > half - 1:
        raise ValueError(f"num_kv must be < vocab/2 = {half}; got {num_kv}")
    ctx = 2 * num_kv
    dev = generator.device if generator is not None else None
    keys = torch.rand(batch, half - 1, generator=generator, device=dev).argsort(-1)[:, :num_kv] + 1
    values = torch.rand(batch, vocab - half, generator=generator, device=dev).argsort(-1)[:, :num_kv] + half
    total = seq_len + 1
    seq = torch.randint(0, vocab, (batch, total), generator=generator, device=dev)
    seq[:, 0:ctx:2], seq[:, 1:ctx:2] = keys, values
    space = (total - ctx) // 2
    p = torch.arange(1, space + 1, dtype=torch.float64, device=seq.device) ** (power_a - 1)
    gaps = torch.multinomial(p.expand(batch, space), num_kv, replacement=False, generator=generator)
    qpos = ctx + 2 * gaps                                     # query slots; the answer follows
    labels = torch.full((batch, total), -100, device=seq.device)
    seq.scatter_(1, qpos, keys)
    seq.scatter_(1, qpos + 1, values)
    labels.scatter_(1, qpos + 1, values)
    return seq[:, :-1], labels[:, 1:]


def sequence_loss(model, inputs, targets) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not −100."""
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


@torch.no_grad()
def accuracy(model, inputs, targets) -> tuple[float, float]:
    """(token accuracy, whole-string accuracy) of argmax predictions, teacher-forced."""
    was = model.training
    model.eval()
    pred = model(inputs).argmax(-1)
    model.train(was)
    due = targets != -100
    right = (pred == targets) & due
    token = right.sum().item() / due.sum().item()
    whole = (right.sum(1) == due.sum(1)).float().mean().item()
    return token, whole


# ---------------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------------
RECIPES = {
    # the chapter's: Adam at a constant 3·10⁻³, no clipping
    "constant": TrainConfig(steps=300, lr=3e-3, progress_every=25),
    # the recipe the thresholds were first measured under: AdamW (no weight decay), torch's
    # OneCycleLR (10 % cosine warm-up from lr/25, cosine fall to lr/(25·10⁴)), gradient norm ≤ 1
    "one-cycle": TrainConfig(steps=300, lr=3e-3, lr_final=3e-3 / (25 * 1e4), optimizer="adamw",
                             warmup_steps=30, decay="onecycle", grad_clip=1.0, progress_every=25),
}


@dataclasses.dataclass(frozen=True)
class CopyConfig:
    """One copy-task run: data, model and optimisation (the reference setting of the chapter)."""
    vocab: int = 16
    length: int = 32
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 32
    headdim: int = 16
    mixer: str = "mamba2"
    batch: int = 16
    train: TrainConfig = RECIPES["constant"]
    eval_every: int = 50
    eval_size: int = 256
    eval_seed: int = 7
    map_strings: int = 8

    def __post_init__(self):
        for name in ("vocab", "length", "d_model", "n_layer", "d_state", "headdim", "batch",
                     "eval_every", "eval_size", "map_strings"):
            _check.integer(name, getattr(self, name), low=1)
        _check.choice("mixer", self.mixer, ("mamba2", "mamba1"))

    def model(self, init: str = "default", seed: int = 0) -> SSMLM:
        """A fresh model with the library's init (drawn from `seed`), then the named recipe."""
        rec = recipe(init)
        torch.manual_seed(_check.integer("seed", seed))
        kw = (dict(d_state=self.d_state, headdim=self.headdim) if self.mixer == "mamba2"
              else dict(d_state=self.d_state))
        model = SSMLM(self.vocab + 2, self.d_model, self.n_layer, self.mixer, **kw)
        return mimetic_(model, rec) if rec is not None else model

    def eval_data(self):
        return copy_batch(self.eval_size, self.length, self.vocab, torch.Generator().manual_seed(self.eval_seed))

    def map_input(self):
        """The fixed strings whose maps the figures and claim 4 use."""
        return copy_batch(self.map_strings, self.length, self.vocab, torch.Generator().manual_seed(self.eval_seed + 1))[0]


@dataclasses.dataclass
class Run:
    init: str
    seed: int
    steps: list[int]
    token_acc: list[float]
    string_acc: list[float]
    losses: torch.Tensor
    maps: list[dict[str, list[torch.Tensor]]]   # per checkpoint and part: per layer (H, T, T) of map_input()[0]
    seconds: float
    model: SSMLM

    def at(self, step: int) -> float:
        return self.token_acc[self.steps.index(step)]


def train_copy(cfg: CopyConfig, init: str, seed: int, device: torch.device | str | None = None,
               progress: bool = True) -> Run:
    """Train one arm on the copy task with :func:`lab.train.train`, evaluating every
    ``cfg.eval_every`` steps (teacher-forced accuracy on fixed strings) and keeping each
    checkpoint's maps of one fixed string. ``progress=False``: no progress bar."""
    if not isinstance(cfg, CopyConfig):
        raise TypeError(f"cfg must be a CopyConfig; got {type(cfg).__name__}")
    seed = _check.integer("seed", seed)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = cfg.model(init, seed).to(device)
    ex, ey = (t.to(device) for t in cfg.eval_data())
    probe = cfg.map_input()[:1].to(device)
    steps, tok, whole, maps = [], [], [], []

    def record(step, m):
        t, w = accuracy(m, ex, ey)
        steps.append(step)
        tok.append(t)
        whole.append(w)
        with torch.no_grad():
            maps.append({part: [M[0].cpu() for M in m.attention_maps(probe, part)] for part in PARTS})

    def on_step(step, m):
        if step % cfg.eval_every == 0 and step < cfg.train.steps:
            record(step, m)

    def loss_fn(m, generator):
        x, y = copy_batch(cfg.batch, cfg.length, cfg.vocab, generator)
        return sequence_loss(m, x, y)

    start = time.time()
    record(0, model)
    result = train(model, loss_fn, cfg.train, seed=1000 + seed, desc=f"{init} · seed {seed}",
                   device=device, on_step=on_step, progress=progress)
    record(cfg.train.steps, result.model)
    return Run(init, seed, steps, tok, whole, result.losses, maps, time.time() - start, result.model)


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    copy: CopyConfig
    seeds: int = 2                          # seeds LAB_SEED, LAB_SEED+1, …
    arms: tuple[str, ...] = ("default", "mimetic")
    ablations: tuple[str, ...] = ()         # extra arms, first seed only
    init_seeds: tuple[int, ...] = (0, 1, 2, 3)   # for the initial-map claim
    minutes: float = 2.5
    workers: int = 2                        # processes for the runs (1: in this process)

    def with_ablations(self) -> "ChapterConfig":
        return dataclasses.replace(self, ablations=("A only", "BC only", "no unit step", "identity conv"))


PRESETS = {                 # Adam at peak 3·10⁻³ everywhere; the longer runs decay it by cosine
    "tiny": ChapterConfig(CopyConfig()),
    "gpu": ChapterConfig(CopyConfig(vocab=32, length=64, d_model=256, n_layer=2, d_state=64, headdim=32,
                                    batch=64, train=TrainConfig(steps=2000, lr=3e-3, lr_final=3e-5,
                                                                progress_every=50),
                                    eval_every=100),
                         seeds=3, minutes=20.0, workers=1).with_ablations(),
    "paper": ChapterConfig(CopyConfig(vocab=32, length=256, d_model=256, n_layer=4, d_state=64, headdim=32,
                                      batch=64, train=TrainConfig(steps=4000, lr=3e-3, lr_final=3e-5,
                                                                  progress_every=100),
                                      eval_every=250),
                           seeds=10, minutes=600.0, workers=1).with_ablations(),
}


def from_environment(cfg: ChapterConfig) -> ChapterConfig:
    """The preset as the environment asks: ``LAB_ABLATIONS=1`` adds the ablation arms at any scale."""
    if os.environ.get("LAB_ABLATIONS", "").strip() == "1":
        return cfg.with_ablations()
    return cfg


def _single_threaded():
    torch.set_num_threads(1)


def run_experiment(cfg: ChapterConfig, seed: int,
                   device: torch.device | str | None = None) -> dict[tuple[str, int], Run]:
    """Every arm for seeds seed, seed+1, …, and the ablation arms for `seed`: {(init, seed): Run}.

    With ``cfg.workers`` > 1 the runs go to that many single-threaded worker processes (each run
    is seeded by its own arm and seed, so the numbers do not depend on the workers); they train
    without bars of their own, and one bar here counts the finished runs."""
    if not isinstance(cfg, ChapterConfig):
        raise TypeError(f"cfg must be a ChapterConfig; got {type(cfg).__name__}")
    seed = _check.integer("seed", seed)
    jobs = [(arm, s) for s in range(seed, seed + cfg.seeds) for arm in cfg.arms]
    jobs += [(arm, seed) for arm in cfg.ablations]
    if cfg.workers <= 1:
        return {(arm, s): train_copy(cfg.copy, arm, s, device) for arm, s in jobs}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_threaded) as pool:
        futures = {pool.submit(train_copy, cfg.copy, *job, device, False): job for job in jobs}
        with tqdm(total=len(jobs), desc=f"training runs ({cfg.workers} processes)") as bar:
            for future in as_completed(futures):
                bar.update(1)
        return {job: future.result() for future, job in futures.items()}


@torch.no_grad()
def initial_shares(cfg: CopyConfig, init: str, seeds) -> list[list[float]]:
    """Claim 4's statistic s for each init seed (rows) and layer (columns), before training."""
    probe = cfg.map_input()
    return [[mass_share(M, cfg.length) for M in cfg.model(init, s).attention_maps(probe)] for s in seeds]


def accuracy_at(runs: dict, arm: str, step: int) -> dict[int, float]:
    """{seed: token accuracy at `step`} for one arm of :func:`run_experiment`'s runs."""
    out = {s: run.at(step) for (a, s), run in runs.items() if a == arm}
    if not out:
        raise ValueError(f"arm must be one of the trained arms {sorted({a for a, _ in runs})}; got {arm!r}")
    return out
