"""The prompt-recovery chapter's experiments: configs per scale, the stand-in models (trained once
and cached), the recovery runs of every optimiser on every target, and their evaluation."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import _check
from ...data import shapes
from ...pretrained import batch_rng, pretrained_tiny_clip, pretrained_word_lm
from ...train import TrainConfig, resolve_run_dir, train
from . import method as pr

# The claims' bounds at tiny scale, from the chapter's spec (never moved to make a claim pass).
TINY_BOUNDS = {
    "C1": {"at_least": 0.05},     # proxy: each of PEZ/GCG/random − captioner
    "C2": {"at_least": 0.07},     # regeneration cosine (proxy tower): captioner − each optimiser
    "C2m": {"at_least": 0.01},    # pixel MSE: each optimiser − captioner
    "C3a": {"at_least": 1},       # sources that regenerate better than the best-proxy source
    "C3b": {"at_most": 0.5},      # Spearman ρ(proxy, regeneration) over five sources
    "C4": {"at_least": 0.4},      # order similarity: captioner − best optimiser
    "S1": {"at_least": 0.9},      # truth: proxy cosine
    "S2": {"at_least": 0.7},      # truth: regenerated cosine (proxy tower)
}

# Prompt sources in display order; the first two are not optimisers.
TRUTH, CAPTIONER = "ground-truth caption", "captioner"
OPTIMIZERS = {                     # name → (method, AutoDAN beam, LM prior weight)
    "PEZ": ("pez", 1, 0.0),
    "GCG": ("gcg", 1, 0.0),
    "random search": ("random", 1, 0.0),
    "AutoDAN, greedy": ("autodan", 1, 0.0),
    "AutoDAN, beam 4": ("autodan", 4, 0.0),
    "AutoDAN + LM, greedy": ("autodan", 1, 1.0),
    "AutoDAN + LM, beam 4": ("autodan", 4, 1.0),
}
MAIN = ("PEZ", "GCG", "random search")          # the optimisers the claims compare


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    """Targets, optimiser budgets and the stand-in models' recipes (spec §3).

    ``target_stream``: targets are rendered with generator seed ``target_stream + seed``; target
    ``i`` is optimised with seed ``1000·seed + i`` (seed 0: the spec's targets and seeds)."""
    n_targets: int = 10
    target_stream: int = 42
    length: int = 6
    pez_steps: int = 200
    pez_lr: float = 0.1
    pez_weight_decay: float = 0.1
    gcg_steps: int = 200
    gcg_k: int = 8
    gcg_batch: int = 64
    random_steps: int = 200
    random_batch: int = 64
    autodan_batch: int = 8
    beam: int = 4
    generator: TrainConfig = TrainConfig(steps=400, lr=2e-3, progress_every=50)
    generator_batch: int = 128
    captioner: TrainConfig = TrainConfig(steps=200, lr=2e-3, progress_every=50)
    captioner_batch: int = 128
    captioner_data_seed: int = 1
    proxy_seed: int = 0
    evaluator_seed: int = 1
    traced_targets: int = 2
    hub: tuple[tuple[str, str], ...] | None = None
    bounds: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = tuple(
        (k, tuple(v.items())) for k, v in TINY_BOUNDS.items())
    minutes: float = 3.0

    def __post_init__(self):
        for name in ("n_targets", "length", "pez_steps", "gcg_steps", "gcg_k", "gcg_batch",
                     "random_steps", "random_batch", "autodan_batch", "beam", "generator_batch",
                     "captioner_batch"):
            _check.integer(name, getattr(self, name), low=1)
        _check.integer("traced_targets", self.traced_targets, low=0, high=self.n_targets)
        if self.hub is None and self.gcg_k > len(pr.FREE_TOKENS):
            raise ValueError(f"gcg_k = {self.gcg_k} is larger than the vocabulary of "
                             f"{len(pr.FREE_TOKENS)} free words")
        if self.hub is None and self.autodan_batch > len(pr.FREE_TOKENS):
            raise ValueError(f"autodan_batch = {self.autodan_batch} is larger than the "
                             f"{len(pr.FREE_TOKENS)} free words")

    def claim_bounds(self, claim_id: str) -> dict:
        """The bound(s) of one claim at this scale, as keyword arguments of ``ledger.check``."""
        table = dict(self.bounds)
        if claim_id not in table:
            raise ValueError(f"claim_id must be one of {', '.join(table)}; got {claim_id!r}")
        return dict(table[claim_id])


PRESETS = {
    "tiny": ChapterConfig(),
    # spec §4: Stable Diffusion 1.5 with its own text encoder's CLIP (ViT-L/14) as the proxy, a
    # BLIP-2 captioner, an independent CLIP as judge; 16 free tokens. Not yet run on a GPU.
    "gpu": ChapterConfig(n_targets=12, length=16, pez_steps=1000, gcg_steps=300, gcg_k=256,
                         gcg_batch=256, random_steps=300, random_batch=256, autodan_batch=256,
                         traced_targets=2, minutes=20.0,
                         hub=(("generator", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                              ("proxy", "openai/clip-vit-large-patch14"),
                              ("captioner", "Salesforce/blip2-opt-2.7b"),
                              ("evaluator", "openai/clip-vit-base-patch32"))),
    # the paper-like pair (PEZ's defaults): documented, not run by the book's checks
    "paper": ChapterConfig(n_targets=20, length=16, pez_steps=3000, gcg_steps=3000, gcg_k=256,
                           gcg_batch=512, random_steps=3000, random_batch=512,
                           autodan_batch=256, minutes=600.0,
                           hub=(("generator", "stabilityai/stable-diffusion-2-1-base"),
                                ("proxy", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
                                ("captioner", "Salesforce/blip2-opt-2.7b"),
                                ("evaluator", "openai/clip-vit-base-patch32"))),
}


def _fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


# ---------------------------------------------------------------------------------------------
# The stand-in models
# ---------------------------------------------------------------------------------------------
def proxy_model(cfg: ChapterConfig, *, device="cpu"):
    """The proxy CLIP: the shapes world's shared tiny CLIP (seed 0), cached."""
    _require_tiny(cfg)
    return pretrained_tiny_clip(cfg.proxy_seed, device=device)


def evaluator_model(cfg: ChapterConfig, *, device="cpu"):
    """An independent tiny CLIP (seed 1) whose image tower judges regeneration."""
    _require_tiny(cfg)
    return pretrained_tiny_clip(cfg.evaluator_seed, device=device)


def _require_tiny(cfg: ChapterConfig) -> None:
    if cfg.hub is not None:
        raise NotImplementedError(
            "this scale's models (Stable Diffusion, a hub CLIP proxy, BLIP-2) load with "
            "lab.papers.prompt_recovery.hub.load_hub_models, and the optimisers run on them through "
            "hub.HubProxyObjective; the chapter's cells are wired for LAB_SCALE=tiny only so far")


def train_generator(clip, cfg: ChapterConfig, *, device="cpu", cache: bool = True):
    """The caption-conditioned generator (Stable Diffusion stand-in), trained by MSE to rendered
    images of the caption with the proxy's frozen text tower; returns the training result."""
    torch.manual_seed(0)
    model = pr.Generator().to(device)

    def loss_fn(net, generator):
        images, _, captions = shapes.images_with_captions(cfg.generator_batch, batch_rng(generator))
        cond = pr.condition(clip, clip.tokenize(captions))
        return F.mse_loss(net(cond), torch.from_numpy(images).to(device))

    run_dir = resolve_run_dir(cache, "prompt-recovery", "generator",
                              dataclasses.asdict(cfg.generator), cfg.generator_batch,
                              _fingerprint(clip))
    result = train(model, loss_fn, cfg.generator, seed=0, run_dir=run_dir,
                   desc="generator", device=device)
    for p in result.model.parameters():
        p.requires_grad_(False)
    return result


def train_captioner(cfg: ChapterConfig, *, device="cpu", cache: bool = True):
    """The captioner (BLIP-2 stand-in): four attribute heads, summed cross-entropies."""
    torch.manual_seed(0)
    model = pr.Captioner().to(device)

    def loss_fn(net, generator):
        images, attrs, _ = shapes.images_with_captions(cfg.captioner_batch, batch_rng(generator))
        return net.loss(torch.from_numpy(images).to(device), torch.from_numpy(attrs).to(device))

    run_dir = resolve_run_dir(cache, "prompt-recovery", "captioner",
                              dataclasses.asdict(cfg.captioner), cfg.captioner_batch)
    result = train(model, loss_fn, cfg.captioner, seed=cfg.captioner_data_seed, run_dir=run_dir,
                   desc="captioner", device=device)
    for p in result.model.parameters():
        p.requires_grad_(False)
    return result


def word_lm(*, device="cpu"):
    """The word-level language model behind AutoDAN's prior (shared, cached)."""
    return pretrained_word_lm(0, device=device)


def lm_prior(lm):
    """AutoDAN's prior: the LM's next-word logits given "a" + the tokens so far."""
    start = shapes.VOCAB.index("a")

    @torch.no_grad()
    def prior(prefix: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([torch.tensor([start]), torch.as_tensor(prefix).long()])[None]
        return lm(ids)[0, -1]

    return prior


# ---------------------------------------------------------------------------------------------
# Targets and recovery
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Targets:
    images: torch.Tensor
    attrs: np.ndarray
    captions: list[str]


def make_targets(cfg: ChapterConfig, seed: int) -> Targets:
    """The target images of this seed: rendered with generator seed ``target_stream + seed``."""
    seed = _check.integer("seed", seed, low=0)
    images, attrs, captions = shapes.images_with_captions(cfg.n_targets, cfg.target_stream + seed)
    return Targets(torch.from_numpy(images), attrs, captions)


@dataclasses.dataclass
class Recovery:
    """One optimiser on one target: the prompt, its proxy loss, the budget spent and the trace."""
    tokens: list[int]
    text: str
    loss: float
    evaluations: int
    gradient_calls: int
    cpu_s: float
    trace: list[dict] | None


def optimizer_settings(cfg: ChapterConfig, name: str) -> dict:
    """Keyword arguments of :func:`method.run_optimizer` for the named optimiser."""
    _check.choice("name", name, OPTIMIZERS)
    method, beam, weight = OPTIMIZERS[name]
    if method == "pez":
        return {"method": method, "steps": cfg.pez_steps, "lr": cfg.pez_lr,
                "weight_decay": cfg.pez_weight_decay}
    if method == "gcg":
        return {"method": method, "steps": cfg.gcg_steps, "k": cfg.gcg_k, "batch": cfg.gcg_batch}
    if method == "random":
        return {"method": method, "steps": cfg.random_steps, "batch": cfg.random_batch}
    return {"method": method, "steps": cfg.length, "batch": cfg.autodan_batch,
            "beam": cfg.beam if beam > 1 else 1, "weight": weight}


def recover(clip, targets: Targets, cfg: ChapterConfig, seed: int, lm=None,
            names=tuple(OPTIMIZERS)) -> dict[str, list[Recovery]]:
    """Run every named optimiser on every target (target i with seed ``1000·seed + i``)."""
    seed = _check.integer("seed", seed, low=0)
    prior = lm_prior(lm) if lm is not None else None
    out = {}
    for name in names:
        settings = optimizer_settings(cfg, name)
        if settings.get("weight", 0.0) and prior is None:
            raise ValueError(f"{name} needs the language model: pass lm")
        runs = []
        for i in range(len(targets.images)):
            objective = pr.ProxyObjective(clip, targets.images[i])
            started = time.process_time()
            res = pr.run_optimizer(objective=objective, length=cfg.length, seed=1000 * seed + i,
                                   prior=prior, **settings)
            cpu = time.process_time() - started
            keep = i < cfg.traced_targets
            runs.append(Recovery(res.tokens.tolist(), pr.decode(res.tokens), res.loss,
                                 res.evaluations, res.gradient_calls, cpu,
                                 res.trace if keep else None))
        out[name] = runs
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
METRICS = ("proxy", "regen_proxy", "regen_evaluator", "regen_mse", "regen_attr", "recall", "order")


def prompts_by_source(targets: Targets, captioner, recovered: dict) -> dict[str, list[str]]:
    """Every source's prompt per target: the truth, the captioner's caption, each optimiser."""
    out = {TRUTH: list(targets.captions), CAPTIONER: captioner.caption(targets.images)}
    out.update({name: [r.text for r in runs] for name, runs in recovered.items()})
    return out


def evaluate(prompts: dict[str, list[str]], targets: Targets, clip, generator, captioner,
             evaluator=None) -> dict[str, dict]:
    """Per source, per target: proxy cosine; regenerated-vs-target cosine under the proxy's image
    tower (and the independent evaluator's, when given); pixel MSE; attribute accuracy of the
    regenerated image read by the captioner; attribute recall and order similarity of the text.
    Also the regenerated images."""
    attrs = torch.from_numpy(targets.attrs)
    out = {}
    for source, texts in prompts.items():
        regen = pr.regenerate(generator, clip, texts)
        m = {"proxy": pr.text_image_cosine(clip, texts, targets.images),
             "regen_proxy": pr.image_cosine(clip, regen, targets.images),
             "regen_mse": ((regen - targets.images) ** 2).mean(dim=(1, 2, 3)),
             "regen_attr": (captioner.attributes(regen) == attrs).float().mean(dim=1),
             "recall": torch.tensor([pr.attribute_recall(t, a) for t, a in zip(texts, targets.attrs)]),
             "order": torch.tensor([pr.order_similarity(t, c)
                                    for t, c in zip(texts, targets.captions)])}
        if evaluator is not None:
            m["regen_evaluator"] = pr.image_cosine(evaluator, regen, targets.images)
        out[source] = {"texts": texts, "images": regen, **{k: v.double() for k, v in m.items()}}
    return out


def means(scores: dict) -> dict[str, dict[str, float]]:
    """The mean of every metric per source."""
    return {s: {k: float(v.mean()) for k, v in m.items() if k in METRICS} for s, m in scores.items()}


def claim_values(scores: dict) -> dict[str, float]:
    """The measured value of every claim from the per-target scores (spec §3)."""
    mu = means(scores)
    opt = list(MAIN)
    four = [CAPTIONER, *opt]
    best_proxy = max(four, key=lambda s: mu[s]["proxy"])
    five = [TRUTH, *four]
    all_opt = [s for s in scores if s not in (TRUTH, CAPTIONER)]
    return {
        "C1": min(mu[s]["proxy"] for s in opt) - mu[CAPTIONER]["proxy"],
        "C2": mu[CAPTIONER]["regen_proxy"] - max(mu[s]["regen_proxy"] for s in opt),
        "C2m": min(mu[s]["regen_mse"] for s in opt) - mu[CAPTIONER]["regen_mse"],
        "C3a": sum(mu[s]["regen_proxy"] > mu[best_proxy]["regen_proxy"] for s in four),
        "C3b": pr.spearman([mu[s]["proxy"] for s in five], [mu[s]["regen_proxy"] for s in five]),
        "C4": mu[CAPTIONER]["order"] - max(mu[s]["order"] for s in all_opt),
        "S1": mu[TRUTH]["proxy"],
        "S2": mu[TRUTH]["regen_proxy"],
    }


def budget_table(recovered: dict) -> dict[str, dict[str, float]]:
    """Per optimiser: evaluations, gradient passes and CPU seconds per target (means)."""
    return {name: {"evaluations": float(np.mean([r.evaluations for r in runs])),
                   "gradient passes": float(np.mean([r.gradient_calls for r in runs])),
                   "CPU s": float(np.mean([r.cpu_s for r in runs]))}
            for name, runs in recovered.items()}
