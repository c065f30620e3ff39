"""The chapter's experiments: the exact one-layer toy in its five variants, the data-mix scan
and the grid behind the "who pushes the margin" explorer; one config per scale.

The toy is exact and costs seconds, so every scale runs it as it is. The `gpu` study of the
spec (a Pythia model finetuned with LoRA, probed on counterfactual world facts) is described in
the chapter and not built yet: `GPUStudy` holds its settings and `run_gpu_study` says so.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ... import _check
from .method import VARIANTS, ToyConfig, Trace, build, finetune, variant


@dataclasses.dataclass(frozen=True)
class GPUStudy:
    """Spec §4 (not built yet): Pythia with LoRA r 16 (and a QK-only LoRA) on 5–10 k instruction
    examples, counterfactual world-fact probe of about 500 items, checkpoints every 50 steps."""
    model: str = "EleutherAI/pythia-410m"
    lora_rank: int = 16
    examples: int = 8000
    probe_items: int = 500
    checkpoint_every: int = 50


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
    gpu: GPUStudy | None = None
    minutes: float = 1.0


PRESETS = {
    "tiny": ChapterConfig(),
    "gpu": ChapterConfig(gpu=GPUStudy(), minutes=1.0),
    "paper": ChapterConfig(gpu=GPUStudy(model="EleutherAI/pythia-6.9b", lora_rank=128,
                                        examples=100_000), minutes=1.0),
}


def run_gpu_study(study: GPUStudy):
    """The Pythia study is not part of this book yet: refuse clearly instead of pretending."""
    if not isinstance(study, GPUStudy):
        raise TypeError(f"study must be a GPUStudy; got {type(study).__name__}")
    raise NotImplementedError(
        "the Pythia + LoRA study of this chapter is not built yet; every scale runs the exact toy")


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
