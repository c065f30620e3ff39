"""The ADO chapter's experiments: a simulated world with known loss curves, and a small GPT on
four token languages under natural, uniform and ADO mixtures; one config per scale.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ... import _check
from ...data.tokens import TokenMixture, check_weights, cycle, markov, markov2, noise
from ...nn import GPT, GPTConfig, sequence_losses
from ...train import TrainConfig, resolve_run_dir, train
from .method import (
    PILE_BOUNDS,
    SMALL_GRID,
    SYNTHETIC_BOUNDS,
    ADOConfig,
    ADOPolicy,
    MixturePolicy,
    domain_batch_stats,
    make_policy,
)


# ---------------------------------------------------------------------------------------------
# A simulated world: known loss curves, no network (seconds)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SimDomain:
    """Ground truth L(n_k) = ε + β (n_k + offset)^(−α), driven by the domain's own sample count."""
    name: str
    prior: float
    eps: float
    beta: float
    alpha: float

    def loss(self, n, offset: float = 64.0):
        return self.eps + self.beta * (np.asarray(n, dtype=np.float64) + offset) ** (-self.alpha)

    def slope(self, n, offset: float = 64.0):
        return self.alpha * self.beta * (np.asarray(n, dtype=np.float64) + offset) ** (-self.alpha - 1)


SIM_WORLD = (SimDomain("noise", 0.40, 3.4, 0.05, 0.05), SimDomain("easy", 0.30, 0.1, 3.0, 0.6),
             SimDomain("medium", 0.20, 1.0, 4.0, 0.35), SimDomain("hard", 0.10, 1.5, 6.0, 0.25))


@dataclasses.dataclass(frozen=True)
class SimConfig:
    steps: int = 3000
    batch: int = 64
    noise: float = 0.02               # observation noise of a domain's batch mean: noise/√count
    ado: ADOConfig = ADOConfig(update_interval=200, start_step=200, ignore_steps=50, savgol_window=101,
                               subsample=10, bounds=SYNTHETIC_BOUNDS, grid=tuple(map(tuple, SMALL_GRID)))


def simulate(policy: MixturePolicy, world: Sequence[SimDomain] = SIM_WORLD, cfg: SimConfig = SimConfig(),
             *, seed: int = 0, oracle: bool = False) -> dict:
    """Run `policy` against the simulated world: each step draws the batch's domain counts from π,
    advances every domain's count, and reports noisy batch losses. ``oracle=True`` (ADO only)
    replaces the fitted slopes with the true dL/dn at each step (fast; used for live sliders).
    Returns the policy's record plus the final excess losses L_k − ε_k."""
    rng = np.random.default_rng(_check.integer("seed", seed))
    n = np.zeros(len(world))
    eps = np.array([d.eps for d in world])
    for _ in range(cfg.steps):
        counts = rng.multinomial(cfg.batch, policy.weights()).astype(np.float64)
        n += counts
        loss = np.array([d.loss(m) for d, m in zip(world, n)])
        obs = loss + cfg.noise / np.sqrt(np.maximum(counts, 1)) * rng.normal(size=len(world))
        if oracle:
            policy.oracle_slopes = np.array([d.slope(m) for d, m in zip(world, n)])
        policy.observe(counts, obs * counts)
    out = policy.record()
    out["excess"] = np.array([d.loss(m) for d, m in zip(world, n)]) - eps
    out["alpha_min"] = policy.config.bounds.alpha_min if isinstance(policy, ADOPolicy) else None
    return out


# ---------------------------------------------------------------------------------------------
# The chapter's main experiment: a small GPT on four token languages
# ---------------------------------------------------------------------------------------------
PRIOR = (0.35, 0.25, 0.25, 0.15)
WORLDS = ("languages", "delayed", "text")
ARCHITECTURES = ("gpt", "pythia-70m", "pythia-160m")


def language_world(seed: int, length: int = 32) -> TokenMixture:
    """The four languages of the chapter, their tables drawn from `seed`:
    ``noise`` (uniform over 16, H = log 16), ``easy`` (a 16-cycle, H = 0), ``bigram16``
    (16 states, Dirichlet(0.3) rows) and ``bigram128`` (128 states, Dirichlet(0.05) rows)."""
    seed = _check.integer("seed", seed)
    return TokenMixture([noise(16), cycle(16, seed), markov(16, 0.3, 1000 + seed),
                         markov(128, 0.05, 2000 + seed)], length)


def delayed_world(seed: int, length: int = 32) -> TokenMixture:
    """The trap: ``bigram128`` replaced by a second-order chain whose loss plateaus before the
    model learns to use two positions (ADO, a local extrapolator, under-samples it)."""
    seed = _check.integer("seed", seed)
    return TokenMixture([noise(16), cycle(16, seed), markov(16, 0.3, 1000 + seed),
                         markov2(16, 0.1, 3000 + seed, name="order2")], length)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """One training run of the small GPT on a domain mixture (same budget for every policy)."""
    world: str = "languages"            # "languages" | "delayed" | "text"
    prior: tuple | None = PRIOR         # None: each domain's share of the tokens (text)
    length: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256
    batch: int = 32
    # The specification's schedule: AdamW, 100 warm-up steps, then a linear decay to a tenth.
    # (With a cosine decay the noise domain's loss creeps down while the rate anneals, and the
    # late refits read that as a slow power law.)
    train: TrainConfig = TrainConfig(steps=1500, lr=3e-3, lr_final=3e-4, warmup_steps=100, decay="linear",
                                     optimizer="adamw", progress_every=100)
    n_val: int = 256
    ado: ADOConfig = ADOConfig(update_interval=100, start_step=100, ignore_steps=20, savgol_window=51,
                               subsample=5, bounds=SYNTHETIC_BOUNDS, grid=tuple(map(tuple, SMALL_GRID)))

    # the "text" world: one <domain>.txt per domain in `corpora` (None: lab.data.text's default
    # folder), read through `tokenizer` ("bytes" or a hub tokenizer's name)
    corpora: str | None = None
    tokenizer: str = "bytes"
    architecture: str = "gpt"           # "gpt" (lab.nn.GPT, the fields above) or a Pythia size

    def __post_init__(self):
        _check.choice("world", self.world, WORLDS)
        _check.choice("architecture", self.architecture, ARCHITECTURES)
        for name in ("length", "batch", "n_val"):
            _check.integer(name, getattr(self, name), low=2)
        if self.prior is not None:
            check_weights(self.prior, len(self.prior), "prior")
        elif self.world != "text":
            raise ValueError("prior may be None only for the text world (its token shares)")

    def mixture(self, seed: int) -> TokenMixture:
        if self.world == "text":
            from ...data import text
            tok = text.ByteTokenizer() if self.tokenizer == "bytes" else text.hub_tokenizer(self.tokenizer)
            folder = self.corpora if self.corpora is not None else text.default_corpora_dir()
            return text.TextMixture(text.load_corpora(folder, tok), tok.vocab, self.length)
        make = language_world if self.world == "languages" else delayed_world
        return make(seed, self.length)

    def model(self, vocab: int) -> torch.nn.Module:
        if self.architecture != "gpt":
            from ...nn.hublm import PYTHIA_VOCAB, pythia_from_scratch
            padded = PYTHIA_VOCAB if vocab <= PYTHIA_VOCAB and self.tokenizer != "bytes" else vocab
            return pythia_from_scratch(self.architecture, vocab=padded, context=self.length)
        return GPT(GPTConfig(vocab, self.length, self.d_model, self.n_layers, self.n_heads, self.d_mlp))


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    """The chapter at one scale: the simulated world, the main experiment (`lm`), the
    delayed-learning world (`delayed`, same model and budget), the policies compared, and how
    many worker processes train the runs (each run is seeded by its own policy and seed, so the
    numbers do not depend on the workers). `text`, when set, is the real-text study
    (:func:`run_text_study`)."""
    sim: SimConfig
    lm: LMConfig
    delayed: LMConfig
    policies: tuple = ("natural", "uniform", "ado")
    delayed_policies: tuple = ("uniform", "ado")   # the comparison that shows the trap (time budget)
    workers: int = 1
    minutes: float = 3.0
    text: LMConfig | None = None

    def __post_init__(self):
        _check.integer("workers", self.workers, low=1)
        if self.delayed.world != "delayed":
            raise ValueError(f"delayed must be an LMConfig with world='delayed'; got {self.delayed.world!r}")
        if self.text is not None and self.text.world != "text":
            raise ValueError(f"text must be an LMConfig with world='text'; got {self.text.world!r}")


def _with_delayed(sim: SimConfig, lm: LMConfig, **kw) -> ChapterConfig:
    return ChapterConfig(sim, lm, dataclasses.replace(lm, world="delayed"), **kw)


_GPU_LM = LMConfig(d_model=256, n_layers=4, n_heads=8, d_mlp=1024, length=64, batch=64,
                   train=TrainConfig(steps=5000, lr=1e-3, lr_final=1e-4, warmup_steps=250, decay="linear",
                                     optimizer="adamw", progress_every=100),
                   ado=dataclasses.replace(LMConfig.ado, update_interval=250, start_step=250, ignore_steps=100,
                                           savgol_window=101))
# The specification's gpu study: a Pythia-70m-shaped GPT-NeoX trained from scratch on text domains
# from a local folder (lab.data.text.prepare_corpora), the prior = the token shares, ADO with the
# official 512-start grid and relaxed bounds (log ε ≥ 0).
_TEXT_LM = LMConfig(world="text", prior=None, tokenizer="EleutherAI/pythia-70m", architecture="pythia-70m",
                    length=256, batch=32, n_val=256,
                    train=TrainConfig(steps=3000, lr=1e-3, lr_final=1e-4, warmup_steps=250, decay="linear",
                                      optimizer="adamw", progress_every=100),
                    ado=ADOConfig(update_interval=250, start_step=250, ignore_steps=100, savgol_window=101,
                                  bounds=dataclasses.replace(PILE_BOUNDS, log_eps_min=0.0)))
_PAPER_LM = LMConfig(d_model=768, n_layers=12, n_heads=12, d_mlp=3072, length=1024, batch=256,
                     train=TrainConfig(steps=60_000, lr=6e-4, lr_final=6e-5, optimizer="adamw"),
                     ado=ADOConfig(update_interval=1000, start_step=1000, ignore_steps=1000, bounds=PILE_BOUNDS))

PRESETS = {
    "tiny": _with_delayed(SimConfig(), LMConfig(), workers=2, minutes=3.0),
    "gpu": _with_delayed(SimConfig(), _GPU_LM, minutes=25.0, text=_TEXT_LM),
    "paper": _with_delayed(SimConfig(), _PAPER_LM, minutes=10_000.0),
}


@torch.no_grad()
def domain_losses(model: torch.nn.Module, sequences: Sequence[torch.Tensor], batch: int = 256) -> np.ndarray:
    """Mean next-token loss of `model` on each domain's held-out sequences, (K,)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for seqs in sequences:
        losses = [sequence_losses(model, seqs[i:i + batch].to(device)) for i in range(0, len(seqs), batch)]
        out.append(float(torch.cat(losses).mean()))
    return np.array(out)


def train_lm(cfg: LMConfig, kind: str, *, seed: int, device="cpu", desc: str | None = None,
             run_dir=None, progress: bool = True) -> dict:
    """Train the small GPT on the mixture under policy `kind` (natural | uniform | ado) and
    evaluate it. The policy picks each batch's mixture in ``loss_fn``; it sees the batch's
    per-domain losses after the step (``on_step``), before the next batch is drawn.

    The policy is the run's ``state``: its counts, credit, preferences, laws and histories are
    checkpointed with the weights, so a run resumed from `run_dir` (a path, or ``True`` for the
    chapter's default folder keyed on config, policy and seed) replays exactly.
    """
    if not isinstance(cfg, LMConfig):
        raise TypeError(f"cfg must be an LMConfig; got {type(cfg).__name__}")
    seed = _check.integer("seed", seed)
    world = cfg.mixture(seed)
    prior = cfg.prior if cfg.prior is not None else world.token_share
    policy = make_policy(kind, world.names, prior, cfg.ado)
    torch.manual_seed(seed)                                   # the initial weights
    model = cfg.model(world.vocab).to(device)
    batch_stats: list = []

    def loss_fn(net, generator):
        g = generator
        if generator.device.type != "cpu":                    # token tables live on the CPU
            g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator,
                                                                device=generator.device)))
        tokens, ids = world.sample(policy.weights(), cfg.batch, g)
        losses = sequence_losses(net, tokens.to(device))
        batch_stats[:] = [domain_batch_stats(ids.to(losses.device), losses, len(world.domains))]
        return losses.mean()

    def on_step(step, net):
        policy.observe(*batch_stats[0])

    run_dir = resolve_run_dir(run_dir, "ado", f"{cfg.world}-{kind}", dataclasses.asdict(cfg), kind, seed)
    t0 = time.perf_counter()
    result = train(model, loss_fn, cfg.train, seed=seed, desc=desc or f"training ({kind})", device=device,
                   on_step=on_step, state=policy, run_dir=run_dir, progress=progress)
    seconds = time.perf_counter() - t0
    val = domain_losses(result.model, world.validation(cfg.n_val, seed))
    rec = policy.record()
    rec.update(kind=kind, val=val, excess=val - world.entropies, entropies=world.entropies,
               seconds=seconds, train_losses=result.losses.numpy(), resumed_from=result.resumed_from,
               fit_seconds=getattr(policy, "fit_seconds", 0.0),
               policy_seconds=getattr(policy, "policy_seconds", 0.0))
    return rec


def run_text_study(cfg: LMConfig, *, seed: int, device="cpu", policies=("natural", "uniform", "ado"),
                   run_dir=True) -> dict[str, dict]:
    """The same budget under each policy on real text domains: ``{kind: record}``; each record
    holds the held-out loss per domain (``val``), the unweighted mean is the comparison, and
    ``fit_seconds / seconds`` is ADO's wall-clock overhead."""
    if not isinstance(cfg, LMConfig) or cfg.world != "text":
        raise ValueError("cfg must be an LMConfig with world='text'")
    if not policies:
        raise ValueError("policies must name at least one policy")
    return {kind: train_lm(cfg, kind, seed=seed, device=device, run_dir=_job_dir(run_dir, "text", kind),
                           desc=f"text: {kind}") for kind in policies}


def _job_dir(run_dir, world: str, kind: str):
    """One checkpoint folder per run: a path given for several runs gets a subfolder each."""
    return run_dir if isinstance(run_dir, bool) or run_dir is None else Path(run_dir) / f"{world}-{kind}"


def largest_dip(series) -> float:
    """The largest drop of a series below its running maximum (0 for a non-decreasing series)."""
    x = _check.array("series", series, ndim=1, min_len=1)
    return float((np.maximum.accumulate(x) - x).max())


def _single_threaded():
    torch.set_num_threads(1)


def _train_job(cfg: LMConfig, kind: str, seed: int, device, run_dir, progress: bool) -> dict:
    return train_lm(cfg, kind, seed=seed, device=device, run_dir=run_dir, progress=progress,
                    desc=f"{cfg.world}: {kind}")


def run_experiments(cfg: ChapterConfig, *, seed: int, device="cpu", run_dir=True) -> dict[str, dict]:
    """Every policy on the main world and on the delayed-learning world:
    ``{"languages": {kind: record}, "delayed": {kind: record}}``.

    With ``cfg.workers`` > 1 the runs go to that many single-threaded worker processes, which
    train without bars of their own; one bar here counts the finished runs."""
    if not isinstance(cfg, ChapterConfig):
        raise TypeError(f"cfg must be a ChapterConfig; got {type(cfg).__name__}")
    seed = _check.integer("seed", seed)
    kinds = {"languages": cfg.policies, "delayed": cfg.delayed_policies}
    jobs = [(world, kind) for world in kinds for kind in kinds[world]]
    lm = {"languages": cfg.lm, "delayed": cfg.delayed}
    if cfg.workers <= 1:
        done = {job: _train_job(lm[job[0]], job[1], seed, device, _job_dir(run_dir, *job), True) for job in jobs}
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from tqdm.auto import tqdm
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_single_threaded) as pool:
            futures = {pool.submit(_train_job, lm[world], kind, seed, device, _job_dir(run_dir, world, kind),
                                   False): (world, kind)
                       for world, kind in jobs}
            with tqdm(total=len(jobs), desc=f"training runs ({cfg.workers} processes)") as bar:
                for _ in as_completed(futures):
                    bar.update(1)
            done = {job: future.result() for future, job in futures.items()}
    return {world: {kind: done[world, kind] for kind in kinds[world]} for world in kinds}


def sim_policies(cfg: SimConfig, seed: int, kinds: Sequence[str] = ("natural", "uniform", "ado")) -> dict:
    """The simulated world under each policy: {kind: record}."""
    names, prior = [d.name for d in SIM_WORLD], [d.prior for d in SIM_WORLD]
    return {kind: simulate(make_policy(kind, names, prior, cfg.ado), cfg=cfg, seed=seed) for kind in kinds}


def sim_claim_holds(sims: dict) -> bool:
    """Claim C5 on one seed: excess ADO < uniform < natural and final π(hard) ≥ 0.5."""
    ex_ = {k: sims[k]["excess"].mean() for k in ("natural", "uniform", "ado")}
    return bool(ex_["ado"] < ex_["uniform"] < ex_["natural"] and sims["ado"]["pi"][-1][-1] >= 0.5)


def contrasting_seed(cfg: SimConfig, seed: int, holds: bool, seeds: Sequence[int] = range(8)):
    """The first of `seeds` (other than `seed`) on which C5 goes the other way, with its runs:
    ``(seed, sims)``, or None when every seed goes the same way."""
    for other in seeds:
        if other != seed:
            sims = sim_policies(cfg, other)
            if sim_claim_holds(sims) != holds:
                return other, sims
    return None


def with_alpha_min(cfg: SimConfig, alpha_min: float) -> SimConfig:
    """`cfg` with ADO's floor on the fitted exponent (used for slopes) set to `alpha_min`."""
    bounds = dataclasses.replace(cfg.ado.bounds, alpha_min=alpha_min)     # FitBounds checks it
    return dataclasses.replace(cfg, ado=dataclasses.replace(cfg.ado, bounds=bounds))
