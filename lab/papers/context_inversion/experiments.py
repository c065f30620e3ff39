"""The chapter's experiments: the exact one-layer toy in its five variants, the data-mix scan
and the grid behind the "who pushes the margin" explorer, the trained tiny transformer in two
worlds (tinylm), and the `gpu` study; one config per scale.

The toy and the tiny transformer cost seconds to a minute, so every scale runs them as they
are. The `gpu` study of the spec (a Pythia model finetuned with LoRA, probed on counterfactual
facts) runs only where `cfg.gpu` is set, through `run_gpu_study` (module gpu: lazy imports,
everything downloaded at run time).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ... import _check
from . import gpu, tinylm
from .method import VARIANTS, ToyConfig, Trace, build, finetune, variant


@dataclasses.dataclass(frozen=True)
class GPUStudy:
    """Spec §4: a Pythia model with LoRA (rank 16 on attention and MLP, and a QK-only LoRA),
    finetuned on Alpaca examples, probed on counterfactual facts every `checkpoint_every` steps;
    the counterfactual-augmented run replaces `augment_share` of the examples by items of
    another set (another template)."""
    model: str = "EleutherAI/pythia-410m"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    examples: int = 8000
    batch: int = 8
    lr: float = 2e-4
    probe_set: str = "capitals"
    augment_set: str = "world_facts"
    augment_share: float = 0.1
    probe_items: int = 500
    checkpoint_every: int = 50
    length: int = 256
    variants: tuple[str, ...] = ("standard", "QK-only", "counterfactual aug.")

    def __post_init__(self):
        _check.integer("lora_rank", self.lora_rank, low=1)
        _check.integer("examples", self.examples, low=1)
        _check.integer("probe_items", self.probe_items, low=1)
        _check.integer("checkpoint_every", self.checkpoint_every, low=1)
        _check.choice("probe_set", self.probe_set, gpu.OFFICIAL_SETS)
        _check.choice("augment_set", self.augment_set, gpu.OFFICIAL_SETS)
        for v in self.variants:
            _check.choice("variants", v, GPU_VARIANTS)


GPU_VARIANTS = ("standard", "QK-only", "counterfactual aug.")


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    variants: tuple[str, ...] = VARIANTS
    # the data-mix scan: share of context-critical items among 40 IFT items
    mix_total: int = 40
    mix_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    # the "who pushes the margin" grid: group sizes (C, C+S) and memory strength p_mem
    push_sizes: tuple[tuple[int, int], ...] = ((10, 30), (20, 20), (30, 10))
    push_p_mem: tuple[float, ...] = (0.4, 0.6, 0.8)
    push_steps: tuple[int, ...] = (0, 20, 40, 80)
    # the trained tiny transformer: the distractor world (§3c) and the facts world (§3b)
    lm: tinylm.WorldConfig = dataclasses.field(default_factory=tinylm.WorldConfig)
    facts: tinylm.WorldConfig = dataclasses.field(
        default_factory=lambda: tinylm.WorldConfig(world="pairs"))
    gpu: GPUStudy | None = None
    minutes: float = 3.0


PRESETS = {
    "tiny": ChapterConfig(),
    "gpu": ChapterConfig(gpu=GPUStudy(), minutes=25.0),
    "paper": ChapterConfig(gpu=GPUStudy(model="EleutherAI/pythia-6.9b", lora_rank=128,
                                        examples=100_000), minutes=600.0),
}


def run_gpu_study(study: GPUStudy, seed: int = 0, device: str = "cuda", data_dir=None,
                  progress: bool = True) -> dict:
    """Spec §4 on a GPU: load the model, the instruction set and the counterfactual sets (all
    at run time: a network is needed), keep the probe items whose memory answer the base model
    prefers closed-book, then finetune each variant from the base model with LoRA for one epoch
    and probe it every `checkpoint_every` steps. Returns variant → probe rows."""
    if not isinstance(study, GPUStudy):
        raise TypeError(f"study must be a GPUStudy; got {type(study).__name__}")
    seed = _check.integer("seed", seed, low=0)
    probe_all = gpu.load_counterfactual(gpu.fetch_official(study.probe_set, data_dir))
    aug_items = gpu.load_counterfactual(gpu.fetch_official(study.augment_set, data_dir))
    examples = gpu.load_instructions(study.examples, seed)
    base, tokenizer = gpu.load_model(study.model, device)

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    known = [it for it in probe_all
             if gpu.answer_logprob(base, encode, gpu.prompt(it, False), it.memory_answer, device)
             > gpu.answer_logprob(base, encode, gpu.prompt(it, False), it.answer, device)]
    probe_items = known[:study.probe_items]
    if not probe_items:
        raise RuntimeError(f"{study.model} prefers the memory answer closed-book on none of the "
                           f"{len(probe_all)} probe items: nothing to probe")
    steps = study.examples // study.batch
    out = {"probe_items": len(probe_items)}
    for name in study.variants:
        model, _ = gpu.load_model(study.model, device)
        gpu.add_lora(model, study.lora_rank, study.lora_alpha, "qk" if name == "QK-only" else "all")
        data = (gpu.augment(examples, aug_items, study.augment_share, seed)
                if name == "counterfactual aug." else examples)
        out[name] = gpu.finetune_study(model, encode, data, probe_items, steps=steps, batch=study.batch,
                                       lr=study.lr, every=study.checkpoint_every, length=study.length,
                                       seed=seed, pad=tokenizer.eos_token_id or 0, device=device,
                                       progress=progress)
    return out


def run_variants(cfg: ChapterConfig, seed: int, names: tuple[str, ...] | None = None) -> dict:
    """Finetune the toy once per variant (same seed, so the same answers): name → Trace."""
    names = cfg.variants if names is None else names
    for name in names:
        _check.choice("variant", name, VARIANTS)
    return {name: finetune(build(variant(name, cfg.toy), seed)) for name in names}


def summary(trace: Trace) -> dict:
    """Start, peak (and its step), final M_C and the final CF / PAR of one run."""
    peak, at = trace.peak()
    return {"start": float(trace.M_C[0]), "peak": peak, "peak_step": at,
            "final": float(trace.M_C[-1]), "CF": float(trace.CF[-1]), "PAR": float(trace.PAR[-1]),
            "attn_peak": float(trace.attn_ctx.max()), "attn_final": float(trace.attn_ctx[-1])}


def first_step(trace: Trace, condition) -> int | None:
    """The first step where `condition(trace)` (a boolean array over steps) holds, or None."""
    hits = np.nonzero(condition(trace))[0]
    return int(trace.steps[hits[0]]) if len(hits) else None


def data_mix(cfg: ChapterConfig, seed: int) -> tuple[list[dict], dict]:
    """Peak and final M_C as the share of context-critical items among the IFT items varies:
    one summary row per share, and the runs (share → Trace)."""
    rows, traces = [], {}
    for fraction in cfg.mix_fractions:
        n_c = round(fraction * cfg.mix_total)
        toy = dataclasses.replace(cfg.toy, n_c=n_c, n_cs=cfg.mix_total - n_c)
        traces[fraction] = finetune(build(toy, seed), record=False)
        rows.append({"fraction": fraction, "n_c": n_c, **summary(traces[fraction])})
    return rows, traces


def push_grid(cfg: ChapterConfig, seed: int) -> dict:
    """Runs for the margin explorer: (n_c, n_cs, p_mem) → Trace, standard variant, with the
    contributions at the explorer's cursor steps (`cfg.push_steps`) only."""
    return {(n_c, n_cs, p): finetune(build(dataclasses.replace(cfg.toy, n_c=n_c, n_cs=n_cs, p_mem=p),
                                           seed), record=cfg.push_steps)
            for n_c, n_cs in cfg.push_sizes for p in cfg.push_p_mem}


def run_lm(cfg: ChapterConfig, seed: int, run_dir=True, progress: bool = True) -> dict:
    """The trained tiny transformer: pretrain each world once (cached under `run_dir`), then
    finetune the distractor world in every variant of tinylm.LM_VARIANTS (one shared
    pretraining) and the facts world once. Returns {"slots": {variant: LMTrace}, "pairs":
    {"full": LMTrace}}."""
    out = {}
    for key, world_cfg, variants in (("slots", cfg.lm, tinylm.LM_VARIANTS), ("pairs", cfg.facts, ("full",))):
        world = tinylm.make_world(world_cfg, seed)
        probe = tinylm.make_probe(world, seed)
        model = tinylm.pretrain(world, seed, run_dir=run_dir, progress=progress)
        out[key] = {v: tinylm.finetune_lm(model, world, probe, seed, v, progress=progress)
                    for v in variants}
    return out
