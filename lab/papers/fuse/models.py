"""The two tiny models of the chapter, trained together on the shapes world.

* Model A, the GPT-2 stand-in: a word-level causal LM (:class:`lab.nn.gpt.GPT`, 1 pre-LN layer,
  width 64, 4 heads, MLP 128 with GELU, head without bias) over the world's 35 word ids.
* Model B, the CLIP stand-in: the shapes world's image tower and a text tower (the shared
  :class:`lab.nn.tinyclip.TextTower`) that reads the 3-character chunk tokenizer: 55 ids,
  length 32, width 48, 2 layers, 4 heads, feed-forward 96, projection 48 → 64.

Loss: CLIP's symmetric InfoNCE plus the LM's next-word cross-entropy on the caption's seven
words and its <eos>. Trained once per seed with the book's loop and cached (safetensors) under
``_build/runs/fuse/``, keyed on the recipe, the seed, every tensor's shape and both vocabularies.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ... import _check
from ...data import shapes
from ...nn.gpt import GPT, GPTConfig
from ...nn.tinyclip import (
    MAX_LOGIT_SCALE,
    ImageTower,
    TextTower,
    check_images,
    clip_loss,
)
from ...pretrained import batch_rng
from ...train import TrainConfig, resolve_run_dir, train

LM_CONFIG = GPTConfig(vocab=len(shapes.VOCAB), context=20, d_model=64, n_layers=1, n_heads=4,
                      d_mlp=128)
CAPTION_TOKENS = 8   # "a" + 6 words + <eos>: the LM learns the seven next-word targets


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """The joint recipe: AdamW 2e−3 (weight decay 0.01), batch 128, 400 steps."""
    batch: int = 128
    chunk_width: int = 48
    train: TrainConfig = TrainConfig(steps=400, lr=2e-3, progress_every=50, optimizer="adamw",
                                     weight_decay=0.01)

    def __post_init__(self):
        _check.integer("batch", self.batch, low=2)
        _check.integer("chunk_width", self.chunk_width, low=4)


class ModelPair(nn.Module):
    """Image tower, chunk text tower, logit scale, then the word LM (this order fixes the init)."""

    def __init__(self, chunk_width: int = 48, dim: int = 64):
        super().__init__()
        self.chunker, self.words = shapes.ChunkTokenizer(), shapes.WordTokenizer()
        self.image = ImageTower(dim)
        self.text = TextTower(vocab=len(self.chunker.vocab), seq_len=self.chunker.seq_len,
                              width=chunk_width, layers=2, heads=4, ff=2 * chunk_width, dim=dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.lm = GPT(LM_CONFIG)

    # -- model B (CLIP) ---------------------------------------------------------------------
    @property
    def table_B(self) -> torch.Tensor:
        return self.text.token.weight

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def chunk_ids(self, texts) -> torch.Tensor:
        return self.chunker(texts).to(self.logit_scale.device)

    def encode_image(self, images) -> torch.Tensor:
        return self.image(check_images(images, shapes.IMAGE_SIZE).to(self.logit_scale.device))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)

    # -- model A (word LM) ------------------------------------------------------------------
    @property
    def table_A(self) -> torch.Tensor:
        return self.lm.tok.weight

    def lm_logits_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """The LM's logits for token embeddings (n, T, d_A) instead of ids (GPT's forward below
        its embedding table)."""
        lm = self.lm
        T = emb.shape[1]
        if T > lm.cfg.context:
            raise ValueError(f"emb has {T} positions; the LM reads at most {lm.cfg.context}")
        x = emb + lm.pos(torch.arange(T, device=emb.device))
        for block in lm.blocks:
            x = block(x)
        return lm.head(lm.ln_f(x))


def pair_key(config: PairConfig, seed: int, model: ModelPair) -> tuple:
    shapes_of = {k: list(v.shape) for k, v in model.state_dict().items()}
    return (dataclasses.asdict(config), seed, shapes_of, list(model.chunker.vocab),
            list(model.words.vocab))


def train_pair(seed: int, config: PairConfig = PairConfig(), *, device="cpu", cache=True,
               progress: bool = True):
    """Train (or load from the run cache) models A and B jointly; the training loop's result
    (``.model`` is the :class:`ModelPair`, ``.losses`` the summed loss per step)."""
    seed = _check.integer("seed", seed)
    torch.manual_seed(seed)
    model = ModelPair(config.chunk_width).to(device)

    def loss_fn(net, generator):
        images, _, captions = shapes.images_with_captions(config.batch, batch_rng(generator))
        x = torch.from_numpy(images).to(device)
        contrastive = clip_loss(net.encode_image(x), net.encode_text(net.chunk_ids(captions)),
                                net.scale())
        words = net.words(captions)[:, :CAPTION_TOKENS].to(device)
        logits = net.lm(words[:, :-1])
        lm = F.cross_entropy(logits.transpose(1, 2), words[:, 1:])
        return contrastive + lm

    run_dir = resolve_run_dir(cache, "fuse", "model-pair", *pair_key(config, seed, model))
    return train(model, loss_fn, config.train, seed=seed, run_dir=run_dir,
                 desc=f"LM + chunk CLIP (seed {seed})", device=device, progress=progress)


def pretrained_pair(seed: int = 0, config: PairConfig = PairConfig(), *, device="cpu",
                    progress: bool = True) -> tuple[ModelPair, torch.Tensor]:
    """The frozen pair (eval mode) and its training losses."""
    result = train_pair(seed, config, device=device, progress=progress)
    model = result.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, result.losses
