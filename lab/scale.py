"""The scale dial, the seed, device choice and seeding.

One switch decides how big every experiment is: ``LAB_SCALE`` = ``tiny`` | ``gpu`` | ``paper``
(default: ``gpu`` when CUDA is present, else ``tiny``). ``LAB_SEED`` is an integer, default 0.
Each chapter keeps one config per scale and picks it with :func:`preset`; nothing else in a
notebook branches on the scale.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Mapping, TypeVar

from . import _check

SCALES = ("tiny", "gpu", "paper")
T = TypeVar("T")


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def current_scale(value: str | None = None) -> str:
    """The scale in force: `value` if given, else ``$LAB_SCALE``, else by hardware."""
    if value is None:
        value = os.environ.get("LAB_SCALE", "").strip() or None
        if value is None:
            return "gpu" if _cuda_available() else "tiny"
        return _check.choice("LAB_SCALE", value, SCALES)
    return _check.choice("scale", value, SCALES)


def current_seed(value: int | str | None = None) -> int:
    """The seed in force: `value` if given, else ``$LAB_SEED``, else 0."""
    if value is None:
        raw = os.environ.get("LAB_SEED", "").strip()
        if not raw:
            return 0
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"LAB_SEED must be an integer; got {raw!r}") from None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"seed must be an integer; got {value!r}") from None
    return _check.integer("seed", value)


def preset(presets: Mapping[str, T], scale: str | None = None) -> T:
    """Pick the config for `scale` (default: the current scale) from ``{scale: config}``."""
    scale = current_scale(scale)
    if scale not in presets:
        raise ValueError(f"scale {scale!r} has no preset here; this experiment has "
                         f"{', '.join(map(repr, presets))}")
    return presets[scale]


def pick_device(scale: str | None = None):
    """CUDA when present and the scale is not ``tiny``; the CPU otherwise."""
    import torch
    if current_scale(scale) != "tiny" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    import numpy as np
    import torch
    seed = _check.integer("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(scale: str) -> int:
    """Tiny ops on a small CPU run fastest single-threaded (measured); elsewhere keep torch's choice."""
    import torch
    if current_scale(scale) == "tiny" and not os.environ.get("LAB_THREADS"):
        torch.set_num_threads(1)
    elif os.environ.get("LAB_THREADS"):
        torch.set_num_threads(_check.integer("LAB_THREADS", int(os.environ["LAB_THREADS"]), low=1))
    return torch.get_num_threads()


@dataclasses.dataclass(frozen=True)
class Session:
    """What a chapter runs with: printed by its setup cell."""
    chapter: str
    scale: str
    seed: int
    device: object
    threads: int
    started: float

    def __str__(self) -> str:
        return (f"chapter {self.chapter} · scale {self.scale} · seed {self.seed} · "
                f"device {self.device} · torch threads {self.threads}")


def start(chapter: str, scale: str | None = None, seed: int | None = None):
    """A chapter's first call: resolve scale, seed and device, seed everything, set threads, print
    the session and the estimated time. Returns ``(session, config, ledger)``: the session, this
    scale's preset from ``lab.papers.<chapter>.experiments.PRESETS`` (passed through the module's
    ``from_environment(cfg)`` where it has one) and the chapter's claims :class:`~lab.claims.Ledger`."""
    import importlib

    from .chapters import get
    from .claims import Ledger
    chapter = get(chapter)  # rejects unknown ids
    scale, seed = current_scale(scale), current_seed(seed)
    seed_everything(seed)
    threads = configure_threads(scale)
    session = Session(chapter.id, scale, seed, pick_device(scale), threads, time.time())
    experiments = importlib.import_module(f"{chapter.package}.experiments")
    cfg = preset(experiments.PRESETS, scale)
    if hasattr(experiments, "from_environment"):
        cfg = experiments.from_environment(cfg)
    print(session)
    minutes = getattr(cfg, "minutes", None)
    if minutes is not None:
        print(f"estimated time at this scale: about {minutes:g} minutes")
    return session, cfg, Ledger(chapter.id, scale, seed)
