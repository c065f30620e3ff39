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
# The claims' bounds at tiny scale, from the chapter's spec (never moved to make a claim pass).
TINY_BOUNDS = {
    "C1a": {"at_most": 0.75},    # direction accuracy before: near chance
    "C1b": {"at_least": 0.90},   # direction accuracy after
    "C2": {"at_least": 0.85},    # size-ranking AUC after
    "C3a": {"at_least": 0.85},   # 96-way zero-shot after
    "C3b": {"at_most": 0.10},    # zero-shot drop
    "C4a": {"at_least": 0.02},   # averaging α = 0.5: zero-shot gain over PC-CLIP
    "C4b": {"at_least": 0.10},   # averaging α = 0.5: direction gain over base
    "C5": {"at_least": 0.0},     # colour zero-shot with unseen prompts: after − before
}


@dataclasses.dataclass(frozen=True)
class ChapterConfig:
    """Base model, PC finetuning and the evaluation streams (generator seeds, sizes).

    ``open_clip``: None for the shapes world's tiny CLIP, else an OpenCLIP (architecture,
    pretrained tag). ``pair_stream``: the PC-CLIP training pairs (and the training loop's
    generator) use seed + pair_stream, a stream of their own (shapes-world §6: model seed 0,
    pairs seed 1). ``lr_grid``: when given, PC-CLIP's learning rate is chosen from it on a
    validation stream (``lr_validation``) by direction accuracy, among the rates whose 96-way
    zero-shot drop stays within ``zero_shot_guard``."""
    open_clip: tuple[str, str] | None = None
    tiny_clip: TinyClipConfig = TinyClipConfig()
    pc_train: TrainConfig = TrainConfig(steps=300, lr=1e-4, progress_every=25)
    pc_batch: int = 128
    temperature: float = 1.0
    pair_stream: int = 1
    lr_grid: tuple[float, ...] = ()
    zero_shot_guard: float = 0.02
    lr_validation: tuple[int, int] = (13, 1000)
    zero_shot: tuple[int, int] = (123, 1000)
    direction: tuple[int, int] = (7, 1000)
    retrieval: tuple[int, int] = (8, 500)
    ranking: tuple[int, int] = (9, 400)
    colour: tuple[int, int] = (11, 1200)
    colour_validation: tuple[int, int] = (12, 600)
    prompt_pairs: int = 3
    prompt_alphas: tuple[float, ...] = (1.0, 0.9, 0.8, 0.6, 0.4)
    average_alphas: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(11))
    bounds: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = tuple(
        (k, tuple(v.items())) for k, v in TINY_BOUNDS.items())
    minutes: float = 2.5

    def __post_init__(self):
        _check.integer("pc_batch", self.pc_batch, low=2)
        _check.real("temperature", self.temperature, low=0, low_open=True)
        _check.integer("prompt_pairs", self.prompt_pairs, low=1)
        _check.integer("pair_stream", self.pair_stream, low=1)
        for lr in self.lr_grid:
            _check.real("lr_grid", lr, low=0, low_open=True)
        _check.real("zero_shot_guard", self.zero_shot_guard, low=0)
        if self.open_clip is not None and (len(self.open_clip) != 2
                                           or not all(isinstance(x, str) for x in self.open_clip)):
            raise ValueError("open_clip must be None or (architecture, pretrained), e.g. "
                             f"('ViT-B-32', 'laion2b_s34b_b79k'); got {self.open_clip!r}")

    def claim_bounds(self, claim_id: str) -> dict:
        """The bound(s) of one claim at this scale, as keyword arguments of ``ledger.check``."""
        table = dict(self.bounds)
        if claim_id not in table:
            raise ValueError(f"claim_id must be one of {', '.join(table)}; got {claim_id!r}")
        return dict(table[claim_id])


def _bounds(**changes) -> tuple:
    table = {**TINY_BOUNDS, **changes}
    return tuple((k, tuple(v.items())) for k, v in table.items())


PRESETS = {
    "tiny": ChapterConfig(),
    # spec §4: OpenCLIP ViT-B/32 (the cheaper preset), blocks only, batch 512, lr from the grid on
    # a validation stream with a zero-shot guard; C3's drop margin is 2 points. Not yet run on a
    # GPU: its claims are reported until a gpu sweep record exists.
    "gpu": ChapterConfig(open_clip=("ViT-B-32", "laion2b_s34b_b79k"),
                         pc_train=TrainConfig(steps=200, lr=1e-6, progress_every=10),
                         pc_batch=512, lr_grid=(1e-7, 1e-6, 1e-5),
                         average_alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
                         bounds=_bounds(C3b={"at_most": 0.02}), minutes=20.0),
    # the paper's model and schedule (ExponentialLR γ = 0.9 per epoch is not reproduced: the
    # shapes world has no epochs); documented, not run by the book's checks
    "paper": ChapterConfig(open_clip=("ViT-L-14", "datacomp_xl_s13b_b90k"),
                           pc_train=TrainConfig(steps=20 * 40, lr=1e-8, progress_every=20),
                           pc_batch=512, average_alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
                           bounds=_bounds(C3b={"at_most": 0.02}), minutes=120.0),
}


# ---------------------------------------------------------------------------------------------
# Models: the base CLIP and its PC-CLIP finetune
# ---------------------------------------------------------------------------------------------
def base_model(cfg: ChapterConfig, seed: int, *, device="cpu"):
    """The pretrained CLIP of this scale: the cached tiny CLIP, or an OpenCLIP model (imported
    only here, so that the tiny scale needs neither open_clip nor a download)."""
    if cfg.open_clip is None:
        return pretrained_tiny_clip(seed, cfg.tiny_clip.train.steps, device=device)
    from ...nn.tinyclip import load_open_clip
    model = load_open_clip(*cfg.open_clip, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def pretrain(cfg: ChapterConfig, seed: int, *, device="cpu"):
    """The base CLIP (frozen, in eval mode) and its pretraining losses: the tiny CLIP is trained
    here, or loaded from the shared cache, and comes with its loss curve; an OpenCLIP model is
    loaded and has none."""
    if cfg.open_clip is not None:
        return base_model(cfg, seed, device=device), None
    from ...pretrained import train_tiny_clip
    result = train_tiny_clip(seed, cfg.tiny_clip, device=device)
    model = result.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, result.losses


def pair_stream_seed(cfg: ChapterConfig, seed: int) -> int:
    """The seed of PC-CLIP's training pairs for model seed `seed`."""
    return _check.integer("seed", seed) + cfg.pair_stream


def _fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def finetune_pc_clip(base, cfg: ChapterConfig, seed: int, *, device="cpu", cache: bool = True,
                     lr: float | None = None):
    """PC-CLIP: a copy of `base` whose text blocks are trained on fresh difference triples with
    :func:`pc_loss` (image embeddings without gradient). `seed` is the model's seed; the pairs
    come from their own stream (:func:`pair_stream_seed`). `lr` overrides ``cfg.pc_train.lr``.
    Returns the training loop's result."""
    stream = pair_stream_seed(cfg, seed)
    train_cfg = cfg.pc_train if lr is None else dataclasses.replace(cfg.pc_train, lr=lr)
    model = copy.deepcopy(base)
    freeze_all_but_text_blocks(model)

    def loss_fn(net, generator):
        img_a, img_b, _, _, texts = shapes.image_pairs(cfg.pc_batch, batch_rng(generator))
        with torch.no_grad():
            emb_a = net.encode_image(net.prepare_images(img_a))
            emb_b = net.encode_image(net.prepare_images(img_b))
        return pc_loss(net.encode_text(net.tokenize(texts)), emb_a, emb_b, cfg.temperature)

    run_dir = resolve_run_dir(cache, "clip-differences", "pc-clip", dataclasses.asdict(train_cfg),
                              cfg.pc_batch, cfg.temperature, cfg.open_clip, stream, _fingerprint(base))
    result = train(model, loss_fn, train_cfg, seed=stream, run_dir=run_dir,
                   desc="PC-CLIP finetuning", device=device)
    for p in result.model.parameters():
        p.requires_grad_(False)
    return result


def text_block_keys(model) -> set[str]:
    """The state-dict keys of the text blocks (``model.text_blocks``): PC-CLIP's trainable set."""
    blocks = {id(p) for p in model.text_blocks.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in blocks}


def moved_keys(before, after) -> set[str]:
    """The state-dict keys whose tensors differ between two models of one architecture."""
    a, b = before.state_dict(), after.state_dict()
    if set(a) != set(b):
        raise ValueError("before and after must have the same keys (same architecture)")
    return {k for k in a if not torch.equal(a[k], b[k])}


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
    e = lambda x: image_embeddings(model, x)
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


def choose_lr(base, cfg: ChapterConfig, seed: int, *, device="cpu") -> tuple[float, dict]:
    """PC-CLIP's learning rate from ``cfg.lr_grid``, chosen on validation streams (pairs
    ``cfg.lr_validation``, zero-shot images from the next seed): the best direction accuracy
    among the rates whose zero-shot drop is at most ``cfg.zero_shot_guard`` (if none passes the
    guard, the smallest drop). Without a grid: ``cfg.pc_train.lr``. Returns (lr, table)."""
    if not cfg.lr_grid:
        return cfg.pc_train.lr, {}
    seed_v, n = cfg.lr_validation
    a, b, _, _, texts = shapes.image_pairs(n, seed_v)
    zs_images, zs_attrs, _ = shapes.images_with_captions(n, seed_v + 1)
    ea, eb, ez = (image_embeddings(base, x) for x in (a, b, zs_images))
    labels, captions = caption_class(zs_attrs), class_captions()

    def score(model):
        zs = float((zero_shot_predictions(ez, text_embeddings(model, captions)) == labels).mean())
        return zs, direction_accuracy(difference_cosines(model, ea, eb, texts))

    zs0, _ = score(base)
    table = {}
    for lr in cfg.lr_grid:
        zs, da = score(finetune_pc_clip(base, cfg, seed, device=device, lr=lr).model)
        table[lr] = {"zero_shot_drop": zs0 - zs, "direction_accuracy": da}
    kept = [lr for lr, m in table.items() if m["zero_shot_drop"] <= cfg.zero_shot_guard]
    if kept:
        return max(kept, key=lambda lr: table[lr]["direction_accuracy"]), table
    return min(table, key=lambda lr: table[lr]["zero_shot_drop"]), table
