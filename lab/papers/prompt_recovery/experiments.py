"""The prompt-recovery chapter's experiments: configs per scale, the stand-in models (trained once
and cached), the recovery runs of every optimiser on every target, and their evaluation.

At ``tiny`` the models are the shapes world's stand-ins; at ``gpu`` and ``paper`` (``cfg.hub``
names hub models) the same entry points load Stable Diffusion, a hub CLIP proxy, BLIP-2 and an
independent CLIP through :mod:`.hub`, make the targets with the generator, and run the same
:mod:`lab.discrete` optimisers on the hub proxy (:func:`run_study` runs it all in one call)."""
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
from . import hub
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
    prompts: tuple[str, ...] | None = None   # hub scales: the true prompts of the targets
    sampler_steps: int = 30                  # hub scales: the pipeline's sampler steps
    regen_seeds: int = 2                     # hub scales: new seeds per regenerated prompt
    bounds: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = tuple(
        (k, tuple(v.items())) for k, v in TINY_BOUNDS.items())
    minutes: float = 3.0

    def __post_init__(self):
        for name in ("n_targets", "length", "pez_steps", "gcg_steps", "gcg_k", "gcg_batch",
                     "random_steps", "random_batch", "autodan_batch", "beam", "generator_batch",
                     "captioner_batch", "sampler_steps", "regen_seeds"):
            _check.integer(name, getattr(self, name), low=1)
        _check.integer("traced_targets", self.traced_targets, low=0, high=self.n_targets)
        if self.hub is None and self.gcg_k > len(pr.FREE_TOKENS):
            raise ValueError(f"gcg_k = {self.gcg_k} is larger than the vocabulary of "
                             f"{len(pr.FREE_TOKENS)} free words")
        if self.hub is None and self.autodan_batch > len(pr.FREE_TOKENS):
            raise ValueError(f"autodan_batch = {self.autodan_batch} is larger than the "
                             f"{len(pr.FREE_TOKENS)} free words")
        if self.hub is not None and (self.prompts is None or len(self.prompts) < self.n_targets
                                     or not all(hub.words(p) for p in self.prompts)):
            raise ValueError(f"prompts must give at least n_targets = {self.n_targets} non-empty "
                             "prompts when cfg.hub names hub models")

    def claim_bounds(self, claim_id: str) -> dict:
        """The bound(s) of one claim at this scale, as keyword arguments of ``ledger.check``."""
        table = dict(self.bounds)
        if claim_id not in table:
            raise ValueError(f"claim_id must be one of {', '.join(table)}; got {claim_id!r}")
        return dict(table[claim_id])


# spec §4: "12–20 prompts (varied subjects and styles)"; target i is drawn from prompt i.
HUB_PROMPTS = (
    "a red fox sitting in fresh snow, wildlife photograph",
    "a lighthouse on a rocky coast at sunset, oil painting",
    "a bowl of ramen with a soft boiled egg, top-down food photo",
    "an astronaut riding a horse on the moon, digital art",
    "a cozy reading nook with a window and rain outside, watercolor",
    "a vintage red bicycle leaning against a brick wall",
    "a futuristic city skyline at night with neon lights, cyberpunk",
    "a golden retriever puppy playing with a ball in the grass",
    "a steaming cup of coffee on a wooden table, morning light",
    "a medieval castle on a hill surrounded by fog, fantasy illustration",
    "a close-up of a hummingbird drinking from a purple flower",
    "a sailboat on a calm lake with mountains in the background",
    "a portrait of an old fisherman with a white beard, charcoal drawing",
    "a plate of colorful macarons on a pastel background",
    "a snowy pine forest under the northern lights",
    "a steam locomotive crossing a stone bridge, black and white photo",
    "a cat wearing sunglasses on a beach chair, cartoon",
    "a bustling market street in marrakech, travel photography",
    "a tree house in a giant oak tree, children's book illustration",
    "a glass of orange juice with ice cubes, studio product shot",
)

PRESETS = {
    "tiny": ChapterConfig(),
    # spec §4: Stable Diffusion 1.5 with its own text encoder's CLIP (ViT-L/14) as the proxy, a
    # BLIP-2 captioner, an independent CLIP as judge; 16 free tokens. Not yet run on a GPU: the
    # time is the spec's estimate, the claims' bounds are tiny's (to calibrate on a first run).
    "gpu": ChapterConfig(n_targets=12, length=16, pez_steps=1000, gcg_steps=300, gcg_k=256,
                         gcg_batch=256, random_steps=300, random_batch=256, autodan_batch=256,
                         traced_targets=2, minutes=20.0, prompts=HUB_PROMPTS,
                         hub=(("generator", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                              ("proxy", "openai/clip-vit-large-patch14"),
                              ("captioner", "Salesforce/blip2-opt-2.7b"),
                              ("evaluator", "openai/clip-vit-base-patch32"))),
    # the paper-like pair (PEZ's defaults): documented, not run by the book's checks
    "paper": ChapterConfig(n_targets=20, length=16, pez_steps=3000, gcg_steps=3000, gcg_k=256,
                           gcg_batch=512, random_steps=3000, random_batch=512,
                           autodan_batch=256, minutes=600.0, prompts=HUB_PROMPTS,
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
    """The proxy CLIP: the shapes world's shared tiny CLIP (seed 0), cached; at a hub scale the
    hub CLIP ``cfg.hub["proxy"]`` (a :class:`hub.HubCLIP`)."""
    if cfg.hub is not None:
        return hub.model(cfg, "proxy", device=device)
    return pretrained_tiny_clip(cfg.proxy_seed, device=device)


def evaluator_model(cfg: ChapterConfig, *, device="cpu"):
    """An independent tiny CLIP (seed 1) whose image tower judges regeneration; at a hub scale
    the hub CLIP ``cfg.hub["evaluator"]``."""
    if cfg.hub is not None:
        return hub.model(cfg, "evaluator", device=device)
    return pretrained_tiny_clip(cfg.evaluator_seed, device=device)


def _require_tiny(cfg: ChapterConfig, what: str) -> None:
    if cfg.hub is not None:
        raise ValueError(f"{what} is a tiny-scale stand-in; cfg.hub names hub models: use "
                         "load_models(clip, cfg) instead")


def train_generator(clip, cfg: ChapterConfig, *, device="cpu", cache: bool = True):
    """The caption-conditioned generator (Stable Diffusion stand-in), trained by MSE to rendered
    images of the caption with the proxy's frozen text tower; returns the training result."""
    _require_tiny(cfg, "train_generator")
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
    _require_tiny(cfg, "train_captioner")
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


@dataclasses.dataclass
class Models:
    """What regenerates, captions and judges: the stand-ins at tiny, hub models otherwise."""
    generator: object
    captioner: object
    lm: object | None
    evaluator: object | None
    note: str


def load_models(clip, cfg: ChapterConfig, *, device="cpu") -> Models:
    """Tiny: train (or load from the cache) the generator and the captioner, and load the word
    LM; no evaluator (the seed-1 CLIP is optional, :func:`evaluator_model`). Hub scales: the
    text-to-image pipeline, BLIP-2 and the independent CLIP; no LM (AutoDAN runs without a prior:
    a language model would have to share the proxy's tokenizer)."""
    if cfg.hub is not None:
        ids = dict(cfg.hub)
        models = Models(hub.model(cfg, "generator", device=device),
                        hub.model(cfg, "captioner", device=device), None,
                        evaluator_model(cfg, device=device), "")
        models.note = (f"generator {ids['generator']} ({cfg.sampler_steps} sampler steps), "
                       f"captioner {ids['captioner']}, proxy {ids['proxy']}, "
                       f"judge {ids['evaluator']}")
        return models
    gen_run = train_generator(clip, cfg, device=device)
    captioner = train_captioner(cfg, device=device).model
    lm = word_lm(device=device)
    return Models(gen_run.model, captioner, lm, None,
                  f"generator MSE over its last 50 steps: {gen_run.losses[-50:].mean():.4f}")


# ---------------------------------------------------------------------------------------------
# Targets and recovery
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Targets:
    """Target images (n, 3, H, W) in [0, 1] with their true prompts. At a hub scale also the
    generator's full-size images (``full``, PIL) and the seeds that regenerate every prompt."""
    images: torch.Tensor
    attrs: np.ndarray | None
    captions: list[str]
    full: list | None = None
    regen_seeds: tuple[int, ...] = ()


def make_targets(cfg: ChapterConfig, seed: int, *, device="cpu") -> Targets:
    """The target images of this seed: rendered with generator seed ``target_stream + seed``.
    At a hub scale: the generator draws prompt ``i`` of ``cfg.prompts`` once with the seed
    ``target_stream + seed``; every prompt is later regenerated with the ``cfg.regen_seeds``
    seeds after it."""
    seed = _check.integer("seed", seed, low=0)
    if cfg.hub is not None:
        prompts = list(cfg.prompts[:cfg.n_targets])
        first = cfg.target_stream + seed
        full = hub.model(cfg, "generator", device=device).draw(prompts, [first])
        return Targets(hub.to_tensor(full), None, prompts, full,
                       tuple(first + 1 + j for j in range(cfg.regen_seeds)))
    images, attrs, captions = shapes.images_with_captions(cfg.n_targets, cfg.target_stream + seed)
    return Targets(torch.from_numpy(images), attrs, captions)


def objective(clip, targets: Targets, i: int):
    """The proxy loss of target ``i``: :class:`method.ProxyObjective` for the tiny CLIP,
    :class:`hub.HubProxyObjective` for a hub CLIP."""
    _check.integer("i", i, low=0, high=len(targets.captions) - 1)
    if isinstance(clip, hub.HubCLIP):
        return clip.objective([targets.full[i]])
    return pr.ProxyObjective(clip, targets.images[i])


def decode(clip, ids) -> str:
    """Prompt ids → text with the proxy's vocabulary."""
    return clip.decode(ids) if isinstance(clip, hub.HubCLIP) else pr.decode(ids)


def draw(generator, clip, texts, targets: Targets) -> torch.Tensor:
    """What the generator makes of prompts, as an image batch in [0, 1] (at a hub scale, with
    the first regeneration seed)."""
    if isinstance(generator, hub.HubGenerator):
        return hub.to_tensor(generator.draw(list(texts), targets.regen_seeds[:1]))
    return pr.regenerate(generator, clip, texts)


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
    wall_s: float = 0.0


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


def optimizer_names(cfg: ChapterConfig) -> tuple[str, ...]:
    """The optimisers a scale runs: all seven at tiny; at a hub scale PEZ, GCG, random search
    and AutoDAN with beam 4 and no language-model prior (spec §4)."""
    if cfg.hub is None:
        return tuple(OPTIMIZERS)
    return (*MAIN, "AutoDAN, beam 4")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def recover(clip, targets: Targets, cfg: ChapterConfig, seed: int, lm=None,
            names=None) -> dict[str, list[Recovery]]:
    """Run every named optimiser (default: :func:`optimizer_names`) on every target (target i
    with seed ``1000·seed + i``)."""
    seed = _check.integer("seed", seed, low=0)
    names = optimizer_names(cfg) if names is None else tuple(names)
    prior = lm_prior(lm) if lm is not None else None
    is_hub = isinstance(clip, hub.HubCLIP)
    device = clip.device if is_hub else "cpu"
    out = {}
    for name in names:
        settings = optimizer_settings(cfg, name)
        if settings.get("weight", 0.0) and prior is None:
            raise ValueError(f"{name} needs the language model: pass lm")
        runs = []
        for i in range(len(targets.captions)):
            obj = objective(clip, targets, i)
            started, wall = time.process_time(), time.perf_counter()
            res = pr.run_optimizer(objective=obj, length=cfg.length, seed=1000 * seed + i,
                                   prior=prior, **settings)
            _sync(device)
            cpu, wall = time.process_time() - started, time.perf_counter() - wall
            keep = i < cfg.traced_targets
            tokens = res.tokens.cpu()
            runs.append(Recovery(tokens.tolist(), decode(clip, tokens), res.loss,
                                 res.evaluations, res.gradient_calls, cpu,
                                 res.trace if keep else None, wall))
        out[name] = runs
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
METRICS = ("proxy", "regen_proxy", "regen_evaluator", "regen_mse", "regen_attr", "recall",
           "word_recall", "order")


def prompts_by_source(targets: Targets, captioner, recovered: dict) -> dict[str, list[str]]:
    """Every source's prompt per target: the truth, the captioner's caption, each optimiser."""
    images = targets.images if targets.full is None else targets.full   # hub: full-size images
    out = {TRUTH: list(targets.captions), CAPTIONER: captioner.caption(images)}
    out.update({name: [r.text for r in runs] for name, runs in recovered.items()})
    return out


def evaluate(prompts: dict[str, list[str]], targets: Targets, clip, generator, captioner,
             evaluator=None) -> dict[str, dict]:
    """Per source, per target: proxy cosine; regenerated-vs-target cosine under the proxy's image
    tower (and the independent evaluator's, when given); pixel MSE; attribute accuracy of the
    regenerated image read by the captioner; attribute recall and order similarity of the text.
    Also the regenerated images. At a hub scale see :func:`evaluate_hub` (called from here)."""
    if isinstance(generator, hub.HubGenerator):
        return evaluate_hub(prompts, targets, clip, generator, evaluator)
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


def evaluate_hub(prompts: dict[str, list[str]], targets: Targets, clip, generator,
                 evaluator=None) -> dict[str, dict]:
    """The hub scales' evaluation, per source and target: proxy cosine (the prompt as text,
    tokenized afresh); the generator redraws every prompt with each of ``targets.regen_seeds``,
    and each drawing is compared with the target by cosine under the proxy's image tower, under
    the independent CLIP's (``evaluator``) and by pixel MSE at 128×128 (means over the seeds);
    word recall and order similarity of the lower-cased words against the true prompt. The
    drawings of the first seed are kept for figures."""
    n, seeds = len(targets.captions), list(targets.regen_seeds)
    if not seeds or targets.full is None:
        raise ValueError("targets hold no full-size images or regeneration seeds: make them with "
                         "make_targets at the hub scale")
    paired = [im for im in targets.full for _ in seeds]             # prompt-major, as drawn
    small = targets.images.repeat_interleave(len(seeds), dim=0)
    out = {}
    for source, texts in prompts.items():
        if len(texts) != n:
            raise ValueError(f"prompts[{source!r}] has {len(texts)} prompts for {n} targets")
        regen = generator.draw(texts, seeds)
        shown = hub.to_tensor(regen)
        per_seed = lambda v: v.view(n, len(seeds)).mean(dim=1)
        m = {"proxy": clip.text_image_cosine(texts, targets.full),
             "regen_proxy": per_seed(clip.image_cosine(regen, paired)),
             "regen_mse": per_seed(((shown - small) ** 2).mean(dim=(1, 2, 3))),
             "word_recall": torch.tensor([hub.word_recall(t, c)
                                          for t, c in zip(texts, targets.captions)]),
             "order": torch.tensor([pr.order_similarity(" ".join(hub.words(t)),
                                                        " ".join(hub.words(c)))
                                    for t, c in zip(texts, targets.captions)])}
        if evaluator is not None:
            m["regen_evaluator"] = per_seed(evaluator.image_cosine(regen, paired))
        out[source] = {"texts": list(texts), "images": shown[::len(seeds)],
                       **{k: v.double() for k, v in m.items()}}
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
    """Per optimiser: evaluations, gradient passes, CPU and wall seconds per target (means)."""
    return {name: {"evaluations": float(np.mean([r.evaluations for r in runs])),
                   "gradient passes": float(np.mean([r.gradient_calls for r in runs])),
                   "CPU s": float(np.mean([r.cpu_s for r in runs])),
                   "wall s": float(np.mean([r.wall_s for r in runs]))}
            for name, runs in recovered.items()}


def run_study(cfg: ChapterConfig, seed: int = 0, *, device="cpu") -> dict:
    """The chapter's whole experiment in one call, at any scale: targets, the models, every
    optimiser on every target, the captioner, regeneration and every metric, and the claims'
    values. Returns ``{"targets", "models", "recovered", "prompts", "scores", "claims",
    "seconds"}`` (the notebook's cells build the same objects one at a time)."""
    seconds, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        _sync(device)
        seconds[name], t = time.perf_counter() - t, time.perf_counter()

    clip = proxy_model(cfg, device=device)
    targets = make_targets(cfg, seed, device=device)
    models = load_models(clip, cfg, device=device)
    lap("models and targets")
    recovered = recover(clip, targets, cfg, seed, models.lm)
    lap("optimisers")
    prompts = prompts_by_source(targets, models.captioner, recovered)
    lap("captioner")
    scores = evaluate(prompts, targets, clip, models.generator, models.captioner, models.evaluator)
    lap("regeneration and metrics")
    return {"targets": targets, "models": models, "recovered": recovered, "prompts": prompts,
            "scores": scores, "claims": claim_values(scores), "seconds": seconds}
