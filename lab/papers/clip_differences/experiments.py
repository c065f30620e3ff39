"""The CLIP-differences chapter's experiments: configs per scale, the base CLIP and its PC-CLIP
finetune, and the evaluation on fixed streams of the shapes world.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from ... import _check
from ...data import shapes
from ...metrics import auroc
from ...pretrained import (
    TinyClipConfig,
    batch_rng,
    caption_class,
    class_captions,
    image_embeddings,
    pretrained_tiny_clip,
    text_embeddings,
    zero_shot_predictions,
)
from ...train import TrainConfig, resolve_run_dir, train
from .method import (
    RANK_TEXT,
    colour_pair_text,
    colour_prompts,
    comparative_class_embeddings,
    confusion_matrix,
    difference_cosines,
    direction_accuracy,
    freeze_all_but_text_blocks,
    pc_loss,
    rank_scores,
    retrieval_at_1,
    top_confusions,
)


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


# ---------------------------------------------------------------------------------------------
# Models: the base CLIP and its PC-CLIP finetune
# ---------------------------------------------------------------------------------------------
def base_model(cfg: ChapterConfig, seed: int, *, device="cpu"):
    """The pretrained CLIP of this scale: the cached tiny CLIP, or a hub CLIP."""
    if cfg.hub_model is None:
        return pretrained_tiny_clip(seed, cfg.tiny_clip.train.steps, device=device)
    from ...nn.tinyclip import load_hub_clip
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

    run_dir = resolve_run_dir(cache, "clip-differences", "pc-clip", dataclasses.asdict(cfg.pc_train),
                              cfg.pc_batch, cfg.temperature, cfg.hub_model, seed, _fingerprint(base))
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
