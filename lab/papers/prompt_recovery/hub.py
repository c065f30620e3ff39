"""The ``gpu`` and ``paper`` scales: a hub CLIP as the proxy, Stable Diffusion to regenerate and
BLIP-2 to caption (spec §4). Every heavy library is imported inside the functions, so the tiny
scale needs none of them; a missing library or an empty offline cache gives an error saying what
to do. :class:`HubProxyObjective` gives a transformers CLIP the interface of
:class:`~lab.papers.prompt_recovery.method.ProxyObjective`, so PEZ, GCG, random search and
AutoDAN run the same :mod:`lab.discrete` code as at tiny scale. :class:`HubCLIP`,
:class:`HubGenerator` and :class:`HubCaptioner` give the loaded models what the chapter's
experiments ask of the tiny stand-ins (scores, drawings, captions); :func:`model` loads each once
per session.
"""
from __future__ import annotations

import contextlib
import importlib
import re

import torch
import torch.nn.functional as F

from ... import _check, discrete

SHOWN = 48
EXTRA = "pip install 'explorable-papers[gpu]' diffusers"


def _library(name: str):
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"the gpu scale of this chapter needs the {name} library: {EXTRA}") from err
    with contextlib.suppress(AttributeError):      # no text progress bars in the notebook
        module.utils.logging.disable_progress_bar()
    return module


def _offline(model_id: str, err: Exception) -> OSError:
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return OSError(f"could not load {model_id!r} from the Hugging Face hub or its local cache "
                   "(offline? fill the cache on a machine with internet and set HF_HUB_OFFLINE=1, "
                   "or run at LAB_SCALE=tiny, which needs no download); the loader said: "
                   f"{cause}")


# what a loader raises for an id it cannot resolve: OSError (no file, no network) or, from the
# hub client, a ValueError subclass for a name that is neither a folder nor a valid hub id
_LOAD_ERRORS = (OSError, ValueError)


def _features(out) -> torch.Tensor:
    """transformers 4.x returns a tensor, 5.x may return an output object."""
    return out if torch.is_tensor(out) else out.pooler_output


class HubProxyObjective:
    """``ℓ(x) = 1 − mean_j cos(g(x), f(Y_j))`` for a transformers ``CLIPModel``: the prompt sits
    between the tokenizer's begin and end tokens; a soft prompt enters through a hook on the token
    embedding (the model still pools at the real end token)."""

    def __init__(self, model, tokenizer, target_features: torch.Tensor, *, allowed=None):
        if target_features.dim() != 2 or len(target_features) == 0:
            raise ValueError("target_features must be a non-empty (n, d) batch of image features")
        self.model, self.tokenizer = model, tokenizer
        self.target = F.normalize(target_features.detach().float(), dim=-1)
        self.embedding = model.text_model.embeddings.token_embedding
        self.table = self.embedding.weight.detach()
        self.bos, self.eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
        special = set(getattr(tokenizer, "all_special_ids", [])) | {self.bos, self.eos}
        self.allowed = tuple(allowed) if allowed is not None else tuple(
            i for i in range(self.vocab) if i not in special)
        self.evaluations = 0
        pick = torch.randperm(len(self.allowed), generator=torch.Generator().manual_seed(0))
        # the tokens the explorers show: 48 allowed ones drawn once (the vocabulary is too large)
        self.shown = tuple(sorted(self.allowed[int(i)] for i in pick[:SHOWN]))

    @property
    def vocab(self) -> int:
        return self.table.shape[0]

    def decode(self, ids) -> str:
        """Prompt ids → text (the tokenizer's own decoding)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def _ids(self, ids: torch.Tensor) -> torch.Tensor:
        n = len(ids)
        bos = torch.full((n, 1), self.bos, dtype=torch.long, device=ids.device)
        eos = torch.full((n, 1), self.eos, dtype=torch.long, device=ids.device)
        return torch.cat([bos, ids, eos], dim=1).to(self.table.device)

    def _cos(self, feats: torch.Tensor) -> torch.Tensor:
        return (F.normalize(feats.float(), dim=-1) @ self.target.T.to(feats.device)).mean(dim=1)

    def on_embeddings(self, P: torch.Tensor) -> torch.Tensor:
        """ℓ of one soft prompt P (s, d)."""
        s = P.shape[0]
        placeholder = torch.full((1, s), self.allowed[0], dtype=torch.long)

        def swap(module, inputs, output):
            out = output.clone()
            out[:, 1:s + 1] = P.to(out.dtype)
            return out

        handle = self.embedding.register_forward_hook(swap)
        try:
            feats = _features(self.model.get_text_features(input_ids=self._ids(placeholder)))
        finally:
            handle.remove()
        return 1 - self._cos(feats)[0]

    @torch.no_grad()
    def loss(self, ids: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Exact ℓ of a batch of prompts (B, s)."""
        ids = torch.as_tensor(ids).long()
        if ids.dim() == 1:
            ids = ids[None]
        self.evaluations += len(ids)
        out = [1 - self._cos(_features(self.model.get_text_features(input_ids=self._ids(c))))
               for c in ids.split(chunk)]
        return torch.cat(out).cpu()

    def grad(self, ids) -> torch.Tensor:
        """∂ℓ/∂X at the one-hot matrix of ``ids``, on the CPU (where the searches keep their
        masks), computed on the model's device."""
        ids = torch.as_tensor(ids).long().to(self.table.device)
        return discrete.one_hot_gradient(self.on_embeddings, self.table, ids).cpu()

    def value_and_grad(self, ids):
        P = self.table[torch.as_tensor(ids).long()].clone().requires_grad_(True)
        value = self.on_embeddings(P)
        (g,) = torch.autograd.grad(value, P)
        return float(value.detach()), g


def load_proxy(model_id: str, *, device="cpu"):
    """A transformers CLIP (frozen, eval) with its tokenizer and image processor."""
    if not isinstance(model_id, str) or "/" not in model_id:
        raise ValueError(f"model_id must be a hub id such as 'openai/clip-vit-large-patch14'; got "
                         f"{model_id!r}")
    transformers = _library("transformers")
    try:
        model = transformers.CLIPModel.from_pretrained(model_id)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id)
        processor = transformers.AutoImageProcessor.from_pretrained(model_id)
    except _LOAD_ERRORS as err:
        raise _offline(model_id, err) from err
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, processor


def load_generator(model_id: str, *, device="cuda"):
    """A diffusers text-to-image pipeline (fp16 on CUDA)."""
    if not isinstance(model_id, str) or "/" not in model_id:
        raise ValueError(f"model_id must be a hub id; got {model_id!r}")
    diffusers = _library("diffusers")
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(model_id, torch_dtype=dtype)
    except _LOAD_ERRORS as err:
        raise _offline(model_id, err) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_captioner(model_id: str, *, device="cuda"):
    """BLIP-2 (fp16 on CUDA) and its processor."""
    if not isinstance(model_id, str) or "/" not in model_id:
        raise ValueError(f"model_id must be a hub id; got {model_id!r}")
    transformers = _library("transformers")
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        processor = transformers.Blip2Processor.from_pretrained(model_id)
        model = transformers.Blip2ForConditionalGeneration.from_pretrained(model_id, torch_dtype=dtype)
    except _LOAD_ERRORS as err:
        raise _offline(model_id, err) from err
    return model.to(device).eval(), processor


ROLES = ("proxy", "evaluator", "generator", "captioner")


def _hub_ids(cfg) -> dict:
    if cfg.hub is None:
        raise ValueError("cfg.hub is None: the tiny scale uses the shapes world's models")
    ids = dict(cfg.hub)
    missing = set(ROLES) - set(ids)
    if missing:
        raise ValueError(f"cfg.hub lacks {sorted(missing)}")
    return ids


_LOADED: dict = {}


def model(cfg, role: str, *, device="cuda"):
    """The `role` model of a ``gpu``/``paper`` config (one of :data:`ROLES`), wrapped for the
    chapter (:class:`HubCLIP`, :class:`HubGenerator`, :class:`HubCaptioner`); loaded once per
    (model id, device) and kept, since the chapter's cells ask for the same models again."""
    _check.choice("role", role, ROLES)
    model_id = _hub_ids(cfg)[role]
    key = (role, model_id, str(torch.device(device)))
    if key not in _LOADED:
        if role in ("proxy", "evaluator"):
            _LOADED[key] = HubCLIP(*load_proxy(model_id, device=device), name=model_id)
        elif role == "generator":
            _LOADED[key] = HubGenerator(load_generator(model_id, device=device),
                                        steps=cfg.sampler_steps, name=model_id)
        else:
            _LOADED[key] = HubCaptioner(*load_captioner(model_id, device=device), name=model_id)
    return _LOADED[key]


def forget_models() -> None:
    """Drop the loaded models (frees their memory once nothing else holds them)."""
    _LOADED.clear()


def load_hub_models(cfg, *, device="cuda") -> dict:
    """Every hub model a ``gpu``/``paper`` config names: proxy, evaluator, generator, captioner."""
    _hub_ids(cfg)
    return {role: model(cfg, role, device=device) for role in ROLES}


# ---------------------------------------------------------------------------------------------
# What the chapter asks of the models
# ---------------------------------------------------------------------------------------------
SIZE = 128   # side of the images kept for figures and pixel MSE (the pipeline's are larger)


def to_tensor(images, size: int = SIZE) -> torch.Tensor:
    """PIL images → a float (n, 3, size, size) batch in [0, 1] (bilinear resize)."""
    import numpy as np
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image")
    out = [torch.from_numpy(np.asarray(im.convert("RGB").resize((size, size), 2), dtype=np.float32))
           for im in images]
    return torch.stack(out).permute(0, 3, 1, 2) / 255


def words(text: str) -> list[str]:
    """Lower-case words of a text, punctuation dropped (how prompts are compared as text)."""
    return re.findall(r"[a-z0-9']+", str(text).lower())


def word_recall(text: str, truth: str) -> float:
    """Bag-of-words recall: the share of the true prompt's distinct words found in `text`."""
    truth_words = set(words(truth))
    if not truth_words:
        raise ValueError("truth holds no words: give the true prompt")
    return len(truth_words & set(words(text))) / len(truth_words)


class HubCLIP:
    """A transformers CLIP with its tokenizer and image processor: the proxy or the judge."""

    def __init__(self, model, tokenizer, processor, *, name: str = ""):
        self.model, self.tokenizer, self.processor, self.name = model, tokenizer, processor, name

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_features(self, images) -> torch.Tensor:
        """Unit image embeddings of PIL images: (n, d) on the CPU."""
        if len(images) == 0:
            raise ValueError("images is empty: give at least one image")
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        feats = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, dtype)))
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, texts) -> torch.Tensor:
        """Unit text embeddings of prompts (tokenized afresh, truncated to the model's length)."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of prompts")
        limit = self.model.config.text_config.max_position_embeddings
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit,
                               return_tensors="pt").to(self.device)
        feats = _features(self.model.get_text_features(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]))
        return F.normalize(feats.float(), dim=-1).cpu()

    def text_image_cosine(self, texts, images) -> torch.Tensor:
        """Per-pair cosine of prompts and images: the proxy score of each prompt for its target."""
        return (self.text_features(texts) * self.image_features(images)).sum(dim=1)

    def image_cosine(self, a, b) -> torch.Tensor:
        """Per-pair cosine of two lists of images under this CLIP's image tower."""
        if len(a) != len(b):
            raise ValueError(f"a and b must pair up; got {len(a)} and {len(b)} images")
        return (self.image_features(a) * self.image_features(b)).sum(dim=1)

    def objective(self, images) -> HubProxyObjective:
        """The proxy loss the optimisers minimise for target image(s)."""
        return HubProxyObjective(self.model, self.tokenizer, self.image_features(images))

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


class HubGenerator:
    """A text-to-image pipeline: one image per (prompt, seed), ``steps`` sampler steps."""

    def __init__(self, pipe, *, steps: int = 30, name: str = ""):
        self.pipe, self.name = pipe, name
        self.steps = _check.integer("steps", steps, low=1)
        self.images_drawn = 0

    def draw(self, prompts, seeds) -> list:
        """PIL images, prompt-major: ``[p0 s0, p0 s1, …, p1 s0, …]``."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds is empty: give at least one seed")
        out = regenerate(self.pipe, list(prompts), seeds, steps=self.steps)
        self.images_drawn += len(out)
        return out


class HubCaptioner:
    """BLIP-2: :meth:`caption` writes one caption per image (the FUSE code's settings)."""

    def __init__(self, model, processor, *, prefix: str = "", name: str = ""):
        self.model, self.processor, self.prefix, self.name = model, processor, prefix, name

    def caption(self, images) -> list[str]:
        return caption(self.model, self.processor, images, prefix=self.prefix)


@torch.no_grad()
def caption(model, processor, images, *, prefix: str = "") -> list[str]:
    """BLIP-2 captions as the FUSE code asks for them: beam search with 5 beams, no sampling,
    11 to 32 new tokens, conditioned on `prefix`."""
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image")
    inputs = processor(images=list(images), text=[prefix] * len(images), return_tensors="pt")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(**inputs, num_beams=5, do_sample=False, min_new_tokens=11,
                         max_new_tokens=32)
    return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


@torch.no_grad()
def regenerate(pipe, prompts, seeds, *, steps: int = 30):
    """One image per (prompt, seed) from the pipeline, as PIL images."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    _check.integer("steps", steps, low=1)
    images = []
    for prompt in prompts:
        for seed in seeds:
            generator = torch.Generator(pipe.device).manual_seed(int(seed))
            with contextlib.suppress(AttributeError):
                pipe.set_progress_bar_config(disable=True)
            images.append(pipe(prompt, num_inference_steps=steps, generator=generator).images[0])
    return images
