"""The shapes world's tiny CLIP, trained once and shared: training, caching, embeddings, zero-shot.

:func:`pretrained_tiny_clip` trains the tiny CLIP contrastively with the book's training loop,
which checkpoints under ``_build/runs/shapes-world/`` keyed on the recipe, the seed, the
architecture (every tensor's name and shape, e.g. the text length L), the vocabulary and lab's
source: a later chapter (or a re-run) asking for the same model loads it instead of training,
and a change to any of these trains afresh.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from . import _check
from .data import shapes
from .nn.tinyclip import TinyCLIP, clip_loss
from .train import TrainConfig, resolve_run_dir, train

WORLD = "shapes-world"


@dataclasses.dataclass(frozen=True)
class TinyClipConfig:
    """The tiny CLIP recipe: 600 AdamW steps (weight decay 0.01) of 128 fresh images with captions."""
    batch: int = 128
    train: TrainConfig = TrainConfig(steps=600, lr=2e-3, progress_every=50, optimizer="adamw",
                                     weight_decay=0.01)

    def __post_init__(self):
        _check.integer("batch", self.batch, low=2)


def batch_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the training loop's torch generator (so resume stays exact)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def train_tiny_clip(seed: int, config: TinyClipConfig = TinyClipConfig(), *, device="cpu",
                    cache: bool = True):
    """Train (or load from the run cache) a tiny CLIP; returns the training loop's result."""
    seed = _check.integer("seed", seed)
    torch.manual_seed(seed)                     # image tower, text tower, scale: in this order
    model = TinyCLIP().to(device)

    def loss_fn(net, generator):
        images, _, captions = shapes.images_with_captions(config.batch, batch_rng(generator))
        x = torch.from_numpy(images).to(device)
        return clip_loss(net.encode_image(x), net.encode_text(net.tokenize(captions)), net.scale())

    if config.train.lr_final is not None:
        raise ValueError("config.train.lr_final must be None: the tiny CLIP uses a constant rate")
    run_dir = resolve_run_dir(cache, WORLD, "tiny-clip", *tiny_clip_key(config, seed, model))
    return train(model, loss_fn, config.train, seed=seed, run_dir=run_dir,
                 desc=f"tiny CLIP (seed {seed})", device=device)


def tiny_clip_key(config: TinyClipConfig, seed: int, model: TinyCLIP) -> tuple:
    """What names a cached tiny CLIP: the recipe, the seed, every tensor's name and shape (the
    text length L among them) and the vocabulary in id order."""
    shapes_of = {k: list(v.shape) for k, v in model.state_dict().items()}
    return dataclasses.asdict(config), seed, shapes_of, list(model.tokenizer.vocab)


def pretrained_tiny_clip(seed: int = 0, steps: int = 600, *, device="cpu") -> TinyCLIP:
    """The shared tiny CLIP of the shapes world for `seed`, trained once and cached on disk."""
    steps = _check.integer("steps", steps, low=1)
    config = TinyClipConfig(train=dataclasses.replace(TinyClipConfig().train, steps=steps))
    model = train_tiny_clip(seed, config, device=device).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def image_embeddings(model, images, batch: int = 500) -> torch.Tensor:
    """Unit-norm image embeddings (n, d), computed in batches without gradient."""
    x = model.prepare_images(images)
    return torch.cat([F.normalize(model.encode_image(x[i:i + batch]), dim=-1)
                      for i in range(0, len(x), batch)])


@torch.no_grad()
def text_embeddings(model, texts) -> torch.Tensor:
    """Unit-norm text embeddings (n, d) of a text or a list of texts."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("texts is empty: give at least one text")
    return F.normalize(model.encode_text(model.tokenize(texts)), dim=-1)


def class_captions() -> list[str]:
    """The 96 exact captions, in the order of :func:`lab.data.shapes.all_attributes`."""
    return [shapes.caption(a) for a in shapes.all_attributes()]


def caption_class(attrs) -> np.ndarray:
    """The caption class (0..95) of attribute tuples."""
    attrs = np.atleast_2d(np.asarray(attrs))
    sizes = [len(v) for v in shapes.ATTRIBUTES.values()]
    return np.ravel_multi_index(tuple(attrs.T), sizes)


def zero_shot_predictions(image_emb: torch.Tensor, class_emb: torch.Tensor) -> np.ndarray:
    """argmax_j cos(image_i, class_j) for unit-norm embeddings."""
    if image_emb.shape[-1] != class_emb.shape[-1]:
        raise ValueError(f"image_emb and class_emb must share their width; got "
                         f"{image_emb.shape[-1]} and {class_emb.shape[-1]}")
    return (image_emb @ class_emb.T).argmax(dim=1).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# A word-level language model of the captions (the prompt chapters' prior over next words)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WordLMConfig:
    """One pre-LN GPT layer (d 64, 4 heads, MLP 128, GELU) over the word vocabulary, trained on
    next-word cross-entropy of the 7-word captions (+ ``<eos>``): AdamW 2e−3, 300 × 128."""
    batch: int = 128
    context: int = 20
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 128
    train: TrainConfig = TrainConfig(steps=300, lr=2e-3, progress_every=50, optimizer="adamw",
                                     weight_decay=0.01)

    def __post_init__(self):
        _check.integer("batch", self.batch, low=1)


def caption_ids(n: int, rng) -> torch.Tensor:
    """Word ids of `n` sampled captions, each followed by ``<eos>``: (n, 8)."""
    attrs = shapes.sample_attributes(n, rng)
    words = [shapes.caption(a).split() + ["<eos>"] for a in attrs]
    index = {w: i for i, w in enumerate(shapes.VOCAB)}
    return torch.tensor([[index[w] for w in ws] for ws in words])


def pretrained_word_lm(seed: int = 0, config: WordLMConfig = WordLMConfig(), *, device="cpu"):
    """The shapes world's word-level language model for `seed`, trained once and cached on disk
    (a :class:`lab.nn.gpt.GPT`; ``model(ids)`` gives next-word logits)."""
    from .nn.gpt import GPT, GPTConfig, sequence_losses
    seed = _check.integer("seed", seed)
    torch.manual_seed(seed)
    gpt = GPTConfig(vocab=len(shapes.VOCAB), context=config.context, d_model=config.d_model,
                    n_layers=1, n_heads=config.n_heads, d_mlp=config.d_mlp)
    model = GPT(gpt).to(device)

    def loss_fn(net, generator):
        ids = caption_ids(config.batch, batch_rng(generator)).to(device)
        return sequence_losses(net, ids).mean()

    run_dir = resolve_run_dir(True, WORLD, "word-lm", dataclasses.asdict(config), seed,
                              list(shapes.VOCAB))
    model = train(model, loss_fn, config.train, seed=seed, run_dir=run_dir,
                  desc=f"word LM (seed {seed})", device=device).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
