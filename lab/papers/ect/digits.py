"""ECT on images at `gpu` scale, offline: scikit-learn's 8×8 digits upsampled to 16×16.

The same three runs as the ring study (EDM pretraining, ECT, consistency training from scratch)
with a small UNet, scored by a Fréchet distance in the penultimate layer of a small digit
classifier trained here, and by classifier-confidence precision (the share of samples the
classifier labels with probability ≥ 0.9). The digits ship inside scikit-learn, which is
imported lazily: ``pip install scikit-learn``. Every step takes a data tensor, so the code runs
on any stand-in of shape (n, 1, 16, 16) in [−1, 1].
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from ... import _check
from ...metrics import frechet_distance
from ...nn import SmallUNet
from ...saved import Pending
from ...train import TrainConfig, resolve_run_dir, train
from .experiments import DigitsConfig, load_snapshot
from .method import (
    EDMPrecond,
    EMAProbe,
    consistency_sample,
    ect_loss_fn,
    edm_loss,
    heun_sample,
    nfe,
)

CONFIDENT = 0.9


def load_digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1 797 digits of scikit-learn as (n, 1, size, size) images in [−1, 1], and their labels."""
    size = _check.integer("size", size, low=8)
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ImportError("the digits study needs scikit-learn (the digits ship inside it): "
                          "pip install 'explorable-papers[gpu]' (or scikit-learn) — gpu scale only") from None
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images * 2 - 1, torch.tensor(bunch.target)


def _check_images(images) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"images must be a tensor of shape (n, channels, H, W); got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images must be finite; they contain NaN or inf")
    return images


def make_unet(cfg: DigitsConfig, sigma_data: float, seed: int, device="cpu", channels: int = 1) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(SmallUNet(channels, cfg.base, cfg.mults, dropout=cfg.dropout), sigma_data).to(device)


def _batches(images: torch.Tensor, batch: int):
    def data_fn(n, generator):
        idx = torch.randint(0, len(images), (n,), generator=generator, device=generator.device)
        return images[idx.to(images.device)]
    return data_fn


def pretrain(cfg: DigitsConfig, images, *, seed: int, device="cpu", run_dir=None):
    """EDM pretraining of the UNet on `images` (the stand-in for the EDM checkpoint)."""
    images = _check_images(images).to(device)
    sigma_data = float(images.std())
    model = make_unet(cfg, sigma_data, seed, device, images.shape[1])
    data_fn = _batches(images, cfg.batch)
    return train(model, lambda net, g: edm_loss(net, data_fn(cfg.batch, g), g), cfg.pretrain,
                 seed=seed, run_dir=run_dir, desc="EDM pretraining (digits)", device=device)


def tune(cfg: DigitsConfig, images, start: EDMPrecond | None, *, seed: int, device="cpu", run_dir=None):
    """ECT from `start`, or consistency training from scratch when `start` is None."""
    images = _check_images(images).to(device)
    if start is None:
        model = make_unet(cfg, float(images.std()), seed + 7, device, images.shape[1])
    else:
        model = copy.deepcopy(start).to(device)
        model.iteration.zero_()
    probe = EMAProbe(model, cfg.ect.stage_steps, cfg.tune.ema or 0.999, cfg.tune.steps,
                     bias_correction=cfg.tune.ema_bias_correction)
    fn = ect_loss_fn(_batches(images, cfg.batch), cfg.ect, cfg.batch)
    result = train(model, fn, cfg.tune, seed=seed + 1, run_dir=run_dir,
                   desc="ECT (digits)" if start is not None else "CT from scratch (digits)", device=device,
                   on_step=probe.on_step)
    return result, probe.snapshots


class DigitClassifier(nn.Module):
    """A small CNN; ``features`` is its 128-dimensional penultimate layer."""

    def __init__(self, channels: int = 1, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(512, 128), nn.ReLU())
        self.head = nn.Linear(128, _check.integer("classes", classes, low=2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(images, labels, config: TrainConfig, *, seed: int, device="cpu", noise: float = 0.1,
                     batch: int = 256):
    """The feature network of the Fréchet distance, trained on the real digits (with a little
    Gaussian input noise so that its features do not break on slightly imperfect samples)."""
    images = _check_images(images).to(device)
    labels = torch.as_tensor(labels).to(device)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},); got {tuple(labels.shape)}")
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[1], int(labels.max()) + 1).to(device)

    def loss_fn(net, g):
        idx = torch.randint(0, len(images), (batch,), generator=g, device=g.device).to(images.device)
        x = images[idx] + noise * torch.randn(images[idx].shape, generator=g, device=g.device).to(images.device)
        return nn.functional.cross_entropy(net(x), labels[idx])

    return train(model, loss_fn, config, seed=seed, desc="digit classifier", device=device).model


@torch.no_grad()
def image_scores(classifier: DigitClassifier, x: torch.Tensor, real_features: np.ndarray) -> dict:
    """Fréchet distance to the real digits' features and the share of confidently classified samples."""
    x = _check_images(x).clamp(-1, 1)
    classifier.eval()
    feats = classifier.features(x).double().cpu().numpy()
    confidence = classifier.head(torch.as_tensor(feats, dtype=torch.float32, device=x.device)).softmax(1).amax(1)
    return {"fd": frechet_distance(feats, real_features),
            "confident": float((confidence >= CONFIDENT).float().mean())}


@torch.no_grad()
def sample_images(model: EDMPrecond, sampler: str, n: int, shape, seed: int, t_mid: float = 0.821) -> torch.Tensor:
    """``1-step``, ``2-step`` (consistency sampler) or ``heun`` (EDM, 35 NFE) images."""
    _check.choice("sampler", sampler, ("1-step", "2-step", "heun"))
    g = torch.Generator(next(model.parameters()).device).manual_seed(90_000 + seed)
    model = model.eval()
    if sampler == "heun":
        return heun_sample(model, n, g, shape=tuple(shape))
    return consistency_sample(model, n, g, t_mids=(t_mid,) if sampler == "2-step" else (), shape=tuple(shape))


def study(cfg: DigitsConfig, images, labels, *, seed: int, device="cpu", checkpoints: bool = True) -> dict:
    """The whole image study: classifier, pretraining, ECT, scratch; FD and confidence per sampler.
    With `checkpoints` the runs keep resumable checkpoints under ``_build/runs/ect/``."""
    images = _check_images(images)
    classifier = train_classifier(images, labels, cfg.classifier, seed=seed, device=device, batch=cfg.batch)
    with torch.no_grad():
        real = classifier.eval().features(images.to(device)).double().cpu().numpy()
    runs = {name: resolve_run_dir(checkpoints, "ect", f"digits-{name}", dataclasses.asdict(cfg), seed,
                                  float(images.sum()), tuple(images.shape))
            for name in ("pretrain", "ect", "scratch")}
    pre = pretrain(cfg, images, seed=seed, device=device, run_dir=runs["pretrain"])
    dm = pre.ema_model or pre.model
    ect_result, ect_snaps = tune(cfg, images, dm, seed=seed, device=device, run_dir=runs["ect"])
    ct_result, _ = tune(cfg, images, None, seed=seed, device=device, run_dir=runs["scratch"])
    n, shape = len(images), images.shape[1:]
    rows = {}
    for name, model, samplers in (("diffusion", dm, ("1-step", "heun")),
                                  ("ECT", ect_result.ema_model or ect_result.model, ("1-step", "2-step")),
                                  ("CT from scratch", ct_result.ema_model or ct_result.model, ("1-step", "2-step"))):
        for sampler in samplers:
            x = sample_images(model, sampler, n, shape, seed, cfg.t_mid)
            calls = nfe(18) if sampler == "heun" else int(sampler[0])
            rows[name, sampler] = dict(image_scores(classifier, x, real), nfe=calls, samples=x[:64].cpu())
    curve = {}
    for step, state in ect_snaps.items():
        x = sample_images(load_snapshot(ect_result.model, state), "2-step", n, shape, seed, cfg.t_mid)
        curve[step] = image_scores(classifier, x, real)["fd"]
    curve[cfg.tune.steps] = rows["ECT", "2-step"]["fd"]
    return {"rows": rows, "ect_curve": curve}


def check_claims(ledger, result, cfg: DigitsConfig | None) -> None:
    """E1–E4 of the ring study with FD in place of SWD; nothing when the study did not run at this
    scale. Gating follows the sweep record at this scale (reported until it holds on seeds 0–7)."""
    if cfg is None or not isinstance(result, dict):
        return
    rows = result["rows"]
    fd = {k: v["fd"] for k, v in rows.items()}
    ledger.check("D1", "digits: ECT 1-step FD / diffusion 1-step FD", fd["ECT", "1-step"] / fd["diffusion", "1-step"],
                 at_most=0.3, fmt="{:.3f}")
    ledger.check("D2", "digits: ECT 2-step FD − ECT 1-step FD", fd["ECT", "2-step"] - fd["ECT", "1-step"],
                 at_most=0.0, fmt="{:.3f}")
    ledger.check("D3", "digits: ECT 1-step FD − scratch 1-step FD",
                 fd["ECT", "1-step"] - fd["CT from scratch", "1-step"], at_most=0.0, fmt="{:.3f}")
    ledger.check("D4", "digits: ECT 2-step FD / diffusion Heun-35 FD", fd["ECT", "2-step"] / fd["diffusion", "heun"],
                 at_most=1.5, fmt="{:.2f}")


def run(cfg: DigitsConfig | None, *, seed: int, device="cpu"):
    """The study when this scale configures one; otherwise a note that it awaits a `gpu` run."""
    if cfg is None:
        return Pending("The digits study (ECT on images, Fréchet distance in a classifier's features)")
    images, labels = load_digits()
    return study(cfg, images, labels, seed=seed, device=device)
