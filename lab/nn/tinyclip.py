"""A tiny CLIP for the shapes world, and a wrapper giving a hub CLIP the same interface.

Image tower: three stride-2 convolutions and an MLP (195 776 parameters). Text tower: token and
learned position embeddings, two pre-LN causal transformer layers, a final LayerNorm, the state
at the first ``<eos>``, a linear projection (74 816 parameters with L = 22 positions). A learnable logit scale s
(init ln 10) gives logits = min(eˢ, 100)·cos(image, text). Both models expose

- ``encode_image(images)`` and ``encode_text(ids)`` (unnormalised embeddings),
- ``text_blocks``: the text transformer's blocks, the part PC-CLIP finetunes,
- ``tokenize(texts)`` and ``prepare_images(images)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import EOS, IMAGE_SIZE, SEQ_LEN, VOCAB, WordTokenizer

MAX_LOGIT_SCALE = 100.0


class ImageTower(nn.Module):
    """Conv(3→32) → Conv(32→64) → Conv(64→64), each 3×3 stride 2 with GELU; MLP 1024 → 128 → 64."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.GELU(), nn.Linear(128, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class TextTower(nn.Module):
    """Causal pre-LN transformer over word ids, pooled at the first <eos>, projected."""

    def __init__(self, vocab: int = len(VOCAB), seq_len: int = SEQ_LEN, width: int = 64, layers: int = 2,
                 heads: int = 4, ff: int = 128, dim: int = 64):
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.empty(seq_len, width))
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, dim, bias=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(seq_len),
                             persistent=False)

    def encode_embeds(self, token_embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The pooled output for given token embeddings (n, L, width); `ids` locate the <eos>."""
        L = ids.shape[1]
        h = token_embeddings + self.position[:L]
        h = self.transformer(h, mask=self.causal[:L, :L], is_causal=True)
        h = self.final_norm(h)
        eos = (ids == EOS).int().argmax(dim=1)
        return self.projection(h[torch.arange(len(ids)), eos])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode_embeds(self.token(ids), ids)


class TinyCLIP(nn.Module):
    """Image tower, text tower and a learnable logit scale (built in this order: it fixes the init)."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.image = ImageTower(dim)
        self.text = TextTower(dim=dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.tokenizer = WordTokenizer()

    @property
    def text_blocks(self) -> nn.Module:
        return self.text.transformer

    def tokenize(self, texts) -> torch.Tensor:
        return self.tokenizer(texts).to(self.logit_scale.device)

    def prepare_images(self, images) -> torch.Tensor:
        """Check and move a batch of shapes-world images: float32 (n, 3, 32, 32)."""
        return check_images(images, IMAGE_SIZE).to(self.logit_scale.device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (n_images, n_texts) = min(eˢ, 100)·cos."""
        img = F.normalize(self.encode_image(images), dim=-1)
        txt = F.normalize(self.encode_text(ids), dim=-1)
        return self.scale() * img @ txt.T


def check_images(images, size: int) -> torch.Tensor:
    """A float32 tensor (n, 3, size, size), n ≥ 1; numpy arrays are converted."""
    if not torch.is_tensor(images):
        import numpy as np
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a torch tensor or numpy array; got {type(images).__name__}")
        images = torch.from_numpy(images)
    if images.dtype != torch.float32:
        raise TypeError(f"images must be float32 (as the shapes world renders them); got {images.dtype}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise ValueError(f"images must have shape (n, 3, {size}, {size}); got {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("images is an empty batch: give at least one image")
    return images


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: ½[CE(logits, arange) + CE(logitsᵀ, arange)], logits = scale·cos."""
    logits = scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ---------------------------------------------------------------------------------------------
# A hub CLIP (gpu scale) behind the same interface
# ---------------------------------------------------------------------------------------------
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HubCLIP(nn.Module):
    """A transformers ``CLIPModel`` with its tokenizer, seen through the tiny CLIP's interface.

    Shapes-world images are clipped to [0, 1], resized to the model's input size and normalised
    with CLIP's statistics. ``text_blocks`` is ``text_model.encoder`` (the transformer layers).
    """

    def __init__(self, model: nn.Module, tokenizer, image_size: int = 224):
        super().__init__()
        self.model, self.tokenizer, self.image_size = model, tokenizer, image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def text_blocks(self) -> nn.Module:
        return self.model.text_model.encoder

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def tokenize(self, texts) -> dict:
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        return {k: v.to(self.mean.device) for k, v in batch.items()}

    def prepare_images(self, images) -> torch.Tensor:
        images = check_images(images, IMAGE_SIZE).to(self.mean.device).clamp(0, 1)
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=images))

    def encode_text(self, ids: dict) -> torch.Tensor:
        return _features(self.model.get_text_features(**ids))


def _features(out) -> torch.Tensor:
    """transformers 4.x returns a tensor, 5.x may return an output object with pooler_output."""
    return out if torch.is_tensor(out) else out.pooler_output


def load_hub_clip(model_id: str, *, device="cpu") -> HubCLIP:
    """A CLIP from the Hugging Face hub via transformers (the ``gpu`` extra), as a :class:`HubCLIP`."""
    if not isinstance(model_id, str) or "/" not in model_id:
        raise ValueError(f"model_id must be a hub id such as 'openai/clip-vit-base-patch32'; got {model_id!r}")
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as err:
        raise ImportError("a hub CLIP needs the transformers library: install the gpu extra, "
                          "pip install 'explorable-papers[gpu]'") from err
    try:
        model = CLIPModel.from_pretrained(model_id)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except OSError as err:
        raise OSError(f"could not load {model_id!r} from the Hugging Face hub or its local cache "
                      "(offline? set HF_HUB_OFFLINE=1 with a filled cache, or run at LAB_SCALE=tiny, "
                      "which needs no download)") from err
    size = int(getattr(model.config.vision_config, "image_size", 224))
    return HubCLIP(model, tokenizer, size).to(device).eval()


# ---------------------------------------------------------------------------------------------
# An OpenCLIP model (the paper's library; gpu and paper scales) behind the same interface
# ---------------------------------------------------------------------------------------------
class OpenCLIP(nn.Module):
    """An ``open_clip`` CLIP with its tokenizer, seen through the tiny CLIP's interface.

    ``text_blocks`` is ``model.transformer``: the text transformer's blocks, which is exactly what
    the official PC-CLIP code trains (not the token or positional embeddings, the final LayerNorm,
    the text projection, nor the image tower). Shapes-world images are clipped to [0, 1], resized
    to the model's input size and normalised with CLIP's statistics.
    """

    def __init__(self, model: nn.Module, tokenizer, image_size: int = 224):
        super().__init__()
        self.model, self.tokenizer, self.image_size = model, tokenizer, int(image_size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def text_blocks(self) -> nn.Module:
        return self.model.transformer

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def tokenize(self, texts) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts)).to(self.mean.device)

    def prepare_images(self, images) -> torch.Tensor:
        images = check_images(images, IMAGE_SIZE).to(self.mean.device).clamp(0, 1)
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)


def load_open_clip(architecture: str, pretrained: str, *, device="cpu") -> OpenCLIP:
    """An OpenCLIP model, e.g. ``("ViT-B-32", "laion2b_s34b_b79k")`` or the paper's
    ``("ViT-L-14", "datacomp_xl_s13b_b90k")``, as an :class:`OpenCLIP` (the ``gpu`` extra)."""
    for name, value in (("architecture", architecture), ("pretrained", pretrained)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty OpenCLIP name such as 'ViT-B-32' / "
                             f"'laion2b_s34b_b79k'; got {value!r}")
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("an OpenCLIP model needs the open_clip library: install the gpu extra, "
                          "pip install 'explorable-papers[gpu]' (it brings open-clip-torch)") from err
    try:
        model, _, _ = open_clip.create_model_and_transforms(architecture, pretrained=pretrained)
        tokenizer = open_clip.get_tokenizer(architecture)
    except (OSError, RuntimeError, ConnectionError) as err:
        raise OSError(f"could not load OpenCLIP {architecture!r} / {pretrained!r} from the "
                      "Hugging Face hub or its local cache (offline? fill the cache on a machine "
                      "with internet, set HF_HUB_OFFLINE=1, or run at LAB_SCALE=tiny, which needs "
                      "no download)") from err
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return OpenCLIP(model, tokenizer, int(size)).to(device).eval()
