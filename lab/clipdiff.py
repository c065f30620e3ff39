"""PC-CLIP (Sam et al., arXiv 2409.09721): finetuning CLIP's text encoder on pairwise differences.

For a triple (a, b, c), c a text saying how image a differs from image b (first minus second),
the text embedding of c is pulled towards the normalised difference of the normalised, frozen
image embeddings with a symmetric InfoNCE at temperature 1. Only the text transformer's blocks
train. Afterwards: difference classification, attribute ranking by one comparative sentence,
comparative prompting, and weight averaging with the pretrained model.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from . import _check
from .clip import (TinyClipConfig, batch_rng, caption_class, class_captions, image_embeddings,
                   pretrained_tiny_clip, text_embeddings, zero_shot_predictions)
from .data import shapes
from .metrics import auroc
from .train import TrainConfig, default_run_dir, run_key, train

CHAPTER = "clip-differences"
RANK_TEXT = "the first is larger than the second"


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------
def normalised_difference(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """d̂ = (u − v)/‖u − v‖ with u, v the unit-norm embeddings; a zero difference raises."""
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2 or len(emb_a) == 0:
        raise ValueError(f"emb_a and emb_b must be equal, non-empty (n, d) batches; got "
                         f"{tuple(emb_a.shape)} and {tuple(emb_b.shape)}")
    diff = F.normalize(emb_a, dim=-1) - F.normalize(emb_b, dim=-1)
    norm = diff.norm(dim=-1, keepdim=True)
    if (norm == 0).any():
        raise ValueError(f"emb_a and emb_b are identical in {int((norm == 0).sum())} pair(s): "
                         "a pair without a difference has no direction; drop those pairs")
    return diff / norm


def pc_loss(text_emb: torch.Tensor, emb_a: torch.Tensor, emb_b: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """The PC-CLIP loss: ℓ_ij = ⟨t_i, d̂_j⟩/τ, L = ½[CE(ℓ, arange) + CE(ℓᵀ, arange)], τ = 1."""
    temperature = _check.real("temperature", temperature, low=0, low_open=True)
    d_hat = normalised_difference(emb_a, emb_b)
    if text_emb.shape != d_hat.shape:
        raise ValueError(f"text_emb must have the shape of the image batches {tuple(d_hat.shape)}; "
                         f"got {tuple(text_emb.shape)}")
    logits = F.normalize(text_emb, dim=-1) @ d_hat.T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def freeze_all_but_text_blocks(model) -> int:
    """Leave only the text transformer's blocks trainable; returns their parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.text_blocks.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in model.text_blocks.parameters())


# ---------------------------------------------------------------------------------------------
# Configs per scale
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    """Base model, PC finetuning and the evaluation streams (generator seeds, sizes)."""
    hub_model: str | None = None          # None: the shapes world's tiny CLIP
    tiny_clip: TinyClipConfig = TinyClipConfig()
    pc_train: TrainConfig = TrainConfig(steps=300, lr=1e-4, progress_every=25)
    pc_batch: int = 128
    temperature: float = 1.0
    zero_shot: tuple[int, int] = (123, 1000)
    direction: tuple[int, int] = (7, 1000)
    retrieval: tuple[int, int] = (8, 500)
    ranking: tuple[int, int] = (9, 400)
    colour: tuple[int, int] = (11, 1200)
    colour_validation: tuple[int, int] = (12, 600)
    prompt_pairs: int = 3
    prompt_alphas: tuple[float, ...] = (1.0, 0.9, 0.8, 0.6, 0.4)
    average_alphas: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(11))
    gating: bool = True
    minutes: float = 2.5

    def __post_init__(self):
        _check.integer("pc_batch", self.pc_batch, low=2)
        _check.real("temperature", self.temperature, low=0, low_open=True)
        _check.integer("prompt_pairs", self.prompt_pairs, low=1)


PRESETS = {
    "tiny": ChapterConfig(),
    "gpu": ChapterConfig(hub_model="laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                         pc_train=TrainConfig(steps=300, lr=1e-6, progress_every=25),
                         gating=False, minutes=15.0),
    "paper": ChapterConfig(hub_model="laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
                           pc_train=TrainConfig(steps=20 * 40, lr=1e-8, progress_every=20),
                           pc_batch=512, gating=False, minutes=120.0),
}


def config(scale: str) -> ChapterConfig:
    """The chapter's preset for `scale` (tiny | gpu | paper)."""
    from .scale import preset
    return preset(PRESETS, scale)


# ---------------------------------------------------------------------------------------------
# Models: the base CLIP and its PC-CLIP finetune
# ---------------------------------------------------------------------------------------------
def base_model(cfg: ChapterConfig, seed: int, *, device="cpu"):
    """The pretrained CLIP of this scale: the cached tiny CLIP, or a hub CLIP."""
    if cfg.hub_model is None:
        return pretrained_tiny_clip(seed, cfg.tiny_clip.train.steps, device=device)
    from .nn.tinyclip import load_hub_clip
    return load_hub_clip(cfg.hub_model, device=device)


def _fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def finetune_pc_clip(base, cfg: ChapterConfig, seed: int, *, device="cpu", cache: bool = True):
    """PC-CLIP: a copy of `base` whose text blocks are trained on fresh difference triples with
    :func:`pc_loss` (image embeddings without gradient). Returns the training loop's result."""
    seed = _check.integer("seed", seed)
    model = copy.deepcopy(base)
    freeze_all_but_text_blocks(model)

    def loss_fn(net, generator):
        img_a, img_b, _, _, texts = shapes.image_pairs(cfg.pc_batch, batch_rng(generator))
        with torch.no_grad():
            emb_a = net.encode_image(net.prepare_images(img_a))
            emb_b = net.encode_image(net.prepare_images(img_b))
        return pc_loss(net.encode_text(net.tokenize(texts)), emb_a, emb_b, cfg.temperature)

    run_dir = None
    if cache:
        key = run_key(dataclasses.asdict(cfg.pc_train), cfg.pc_batch, cfg.temperature,
                      cfg.hub_model, seed, _fingerprint(base))
        run_dir = default_run_dir(CHAPTER, "pc-clip", key)
    result = train(model, loss_fn, cfg.pc_train, seed=seed, run_dir=run_dir,
                   desc="PC-CLIP finetuning", device=device)
    for p in result.model.parameters():
        p.requires_grad_(False)
    return result


def weight_average(pretrained: dict, finetuned: dict, alpha: float) -> dict:
    """θ = α·θ_ft + (1 − α)·θ_pre for floating tensors (others from the finetuned state)."""
    alpha = _check.real("alpha", alpha, low=0, high=1)
    if set(pretrained) != set(finetuned):
        raise ValueError("pretrained and finetuned must have the same keys (same architecture); "
                         f"they differ in {sorted(set(pretrained) ^ set(finetuned))[:5]}")
    out = {}
    for key, ft in finetuned.items():
        pre = pretrained[key]
        if pre.shape != ft.shape:
            raise ValueError(f"tensor {key!r} has shape {tuple(pre.shape)} in pretrained and "
                             f"{tuple(ft.shape)} in finetuned")
        if not ft.dtype.is_floating_point or alpha == 1:
            out[key] = ft.clone()
        elif alpha == 0:
            out[key] = pre.clone()
        else:
            out[key] = alpha * ft + (1 - alpha) * pre
    return out


def averaged_model(base, finetuned, alpha: float):
    """A copy of `finetuned` carrying the weight average with `base` at `alpha`."""
    model = copy.deepcopy(finetuned)
    model.load_state_dict(weight_average(base.state_dict(), finetuned.state_dict(), alpha))
    return model


# ---------------------------------------------------------------------------------------------
# Uses of a difference-aware text encoder
# ---------------------------------------------------------------------------------------------
def difference_cosines(model, emb_a: torch.Tensor, emb_b: torch.Tensor, texts) -> np.ndarray:
    """cos(g(c_i), d̂_i) for each pair i (image embeddings given)."""
    d_hat = normalised_difference(emb_a, emb_b)
    if len(texts) != len(d_hat):
        raise ValueError(f"texts must have one text per pair ({len(d_hat)}); got {len(texts)}")
    return (text_embeddings(model, list(texts)) * d_hat).sum(-1).cpu().numpy()


def direction_accuracy(cosines) -> float:
    """Difference classification: the fraction of pairs with cos(g(c), d̂) > 0."""
    cosines = _check.array("cosines", cosines, ndim=1, min_len=1)
    return float((cosines > 0).mean())


def rank_scores(model, image_emb: torch.Tensor, text: str) -> np.ndarray:
    """Scores cos(f(x), g(text)) by which one comparative sentence ranks images."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty comparative sentence; got {text!r}")
    return (image_emb @ text_embeddings(model, text)[0]).cpu().numpy()


def retrieval_at_1(model, emb_a: torch.Tensor, emb_b: torch.Tensor, texts) -> float:
    """Fraction of pairs whose own text is the nearest of all the pairs' texts to d̂."""
    d_hat = normalised_difference(emb_a, emb_b)
    sims = d_hat @ text_embeddings(model, list(texts)).T
    return float((sims.argmax(dim=1).cpu().numpy() == np.arange(len(texts))).mean())


def confusion_matrix(true, pred, n_classes: int) -> np.ndarray:
    """C[t, p] = number of images of true class t predicted as p."""
    n_classes = _check.integer("n_classes", n_classes, low=1)
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(true), np.asarray(pred)), 1)
    return out


def top_confusions(confusion, k: int) -> list[tuple[int, int]]:
    """Up to k pairs (i, j) for the largest non-zero off-diagonal cells C[j, i] (true j seen as i)."""
    conf = np.array(confusion, dtype=float)
    k = _check.integer("k", k, low=1)
    np.fill_diagonal(conf, 0)
    cells = [(int(j), int(i)) for j, i in zip(*np.unravel_index(np.argsort(-conf, axis=None,
                                                                           kind="stable"), conf.shape))
             if conf[j, i] > 0][:k]
    return [(i, j) for j, i in cells]


def comparative_class_embeddings(class_emb: torch.Tensor, pairs, pair_emb: torch.Tensor,
                                 alpha: float) -> torch.Tensor:
    """Comparative prompting: S_j = mean over pairs (i, j) of (t_i − c_ij),
    t'_j = normalise(α t_j + (1 − α) S_j); classes without a pair keep t_j."""
    alpha = _check.real("alpha", alpha, low=0, high=1)
    pairs = [tuple(int(x) for x in p) for p in pairs]
    n = len(class_emb)
    if len(pair_emb) != len(pairs):
        raise ValueError(f"pair_emb must have one row per pair ({len(pairs)}); got {len(pair_emb)}")
    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"pairs must hold distinct class indices in 0..{n - 1}; got {(i, j)}")
    out = class_emb.clone()
    for j in sorted({j for _, j in pairs}):
        rows = [class_emb[i] - pair_emb[k] for k, (i, jj) in enumerate(pairs) if jj == j]
        s_j = torch.stack(rows).mean(0)
        out[j] = F.normalize(alpha * class_emb[j] + (1 - alpha) * s_j, dim=-1)
    return out


def colour_prompts() -> list[str]:
    return [f"a {c}" for c in shapes.COLOUR_NAMES]


def colour_pair_text(i: int, j: int) -> str:
    """How colour class i differs from colour class j."""
    return f"the first is {shapes.COLOUR_NAMES[i]} while the second is {shapes.COLOUR_NAMES[j]}"


# ---------------------------------------------------------------------------------------------
# The evaluation: fixed streams, one function per model
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalData:
    """Images of the fixed evaluation streams (rendered once) and their labels."""
    zs_images: np.ndarray
    zs_labels: np.ndarray
    dir_a: np.ndarray
    dir_b: np.ndarray
    dir_attrs: tuple[np.ndarray, np.ndarray]
    dir_texts: list[str]
    ret_a: np.ndarray
    ret_b: np.ndarray
    ret_texts: list[str]
    rank_images: np.ndarray
    rank_attrs: np.ndarray
    colour_images: np.ndarray
    colour_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def make_eval_data(cfg: ChapterConfig) -> EvalData:
    zs_images, zs_attrs, _ = shapes.images_with_captions(cfg.zero_shot[1], cfg.zero_shot[0])
    dir_a, dir_b, a, b, dir_texts = shapes.image_pairs(cfg.direction[1], cfg.direction[0])
    ret_a, ret_b, _, _, ret_texts = shapes.image_pairs(cfg.retrieval[1], cfg.retrieval[0])
    rank_images, rank_attrs, _ = shapes.images_with_captions(cfg.ranking[1], cfg.ranking[0])
    colour_images, colour_attrs, _ = shapes.images_with_captions(cfg.colour[1], cfg.colour[0])
    val_images, val_attrs, _ = shapes.images_with_captions(*cfg.colour_validation[::-1])
    return EvalData(zs_images, caption_class(zs_attrs), dir_a, dir_b, (a, b), dir_texts,
                    ret_a, ret_b, ret_texts, rank_images, rank_attrs,
                    colour_images, colour_attrs[:, 1], val_images, val_attrs[:, 1])


@dataclasses.dataclass
class ImageEmbeddings:
    """Unit-norm image embeddings of every evaluation stream for one image tower."""
    zs: torch.Tensor
    dir_a: torch.Tensor
    dir_b: torch.Tensor
    ret_a: torch.Tensor
    ret_b: torch.Tensor
    rank: torch.Tensor
    colour: torch.Tensor
    val: torch.Tensor


def embed_eval_images(model, data: EvalData) -> ImageEmbeddings:
    e = lambda x: image_embeddings(model, x)  # noqa: E731
    return ImageEmbeddings(e(data.zs_images), e(data.dir_a), e(data.dir_b), e(data.ret_a),
                           e(data.ret_b), e(data.rank_images), e(data.colour_images),
                           e(data.val_images))


def evaluate(model, data: EvalData, emb: ImageEmbeddings) -> dict:
    """The chapter's metrics for one model (image embeddings of its image tower given)."""
    zs_pred = zero_shot_predictions(emb.zs, text_embeddings(model, class_captions()))
    colour_pred = zero_shot_predictions(emb.colour, text_embeddings(model, colour_prompts()))
    cos = difference_cosines(model, emb.dir_a, emb.dir_b, data.dir_texts)
    large = data.rank_attrs[:, 2] == shapes.SIZES.index("large")
    return {"zero_shot": float((zs_pred == data.zs_labels).mean()),
            "colour_zero_shot": float((colour_pred == data.colour_labels).mean()),
            "direction_accuracy": direction_accuracy(cos),
            "size_auc": auroc(rank_scores(model, emb.rank, RANK_TEXT), large),
            "retrieval_at_1": retrieval_at_1(model, emb.ret_a, emb.ret_b, data.ret_texts)}


def comparative_prompting(model, data: EvalData, emb: ImageEmbeddings, cfg: ChapterConfig) -> dict:
    """Pairs from the validation confusions (same rule for every model), then accuracy on the
    test images of the affected classes for each α of ``cfg.prompt_alphas``."""
    prompts = text_embeddings(model, colour_prompts())
    n = len(shapes.COLOUR_NAMES)
    val_conf = confusion_matrix(data.val_labels, zero_shot_predictions(emb.val, prompts), n)
    pairs = top_confusions(val_conf, cfg.prompt_pairs)       # may be empty: nothing to repair
    texts = [colour_pair_text(i, j) for i, j in pairs]
    pair_emb = text_embeddings(model, texts) if texts else prompts[:0]
    affected = np.isin(data.colour_labels, sorted({c for p in pairs for c in p}) or range(n))
    accuracy, confusions = {}, {}
    for alpha in cfg.prompt_alphas:
        classes = comparative_class_embeddings(prompts, pairs, pair_emb, alpha)
        pred = zero_shot_predictions(emb.colour, classes)
        accuracy[alpha] = float((pred[affected] == data.colour_labels[affected]).mean())
        confusions[alpha] = confusion_matrix(data.colour_labels, pred, n)
    return {"pairs": pairs, "texts": texts, "accuracy": accuracy, "confusions": confusions}


def averaging_curve(base, finetuned, data: EvalData, emb: ImageEmbeddings, alphas) -> dict:
    """Zero-shot and direction accuracy (and size AUC) along θ = α·θ_ft + (1 − α)·θ_pre."""
    curve = {}
    for alpha in alphas:
        m = evaluate(averaged_model(base, finetuned, alpha), data, emb)
        curve[float(alpha)] = m
    return curve
