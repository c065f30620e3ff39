"""The ``gpu`` and ``paper`` scales: a hub CLIP as the proxy, Stable Diffusion to regenerate and
BLIP-2 to caption (spec §4). Every heavy library is imported inside the functions, so the tiny
scale needs none of them; a missing library or an empty offline cache gives an error saying what
to do. :class:`HubProxyObjective` gives a transformers CLIP the interface of
:class:`~lab.papers.prompt_recovery.method.ProxyObjective`, so PEZ, GCG, random search and
AutoDAN run the same :mod:`lab.discrete` code as at tiny scale.
"""
from __future__ import annotations

import contextlib
import importlib

import torch
import torch.nn.functional as F

from ... import _check, discrete

EXTRA = "pip install 'explorable-papers[gpu]' diffusers"


def _library(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"the gpu scale of this chapter needs the {name} library: {EXTRA}") from err


def _offline(model_id: str, err: Exception) -> OSError:
    return OSError(f"could not load {model_id!r} from the Hugging Face hub or its local cache "
                   "(offline? fill the cache on a machine with internet and set HF_HUB_OFFLINE=1, "
                   "or run at LAB_SCALE=tiny, which needs no download)")


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

    @property
    def vocab(self) -> int:
        return self.table.shape[0]

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
        return discrete.one_hot_gradient(self.on_embeddings, self.table, ids)

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
    except OSError as err:
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
    except OSError as err:
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
    except OSError as err:
        raise _offline(model_id, err) from err
    return model.to(device).eval(), processor


def load_hub_models(cfg, *, device="cuda") -> dict:
    """Every hub model a ``gpu``/``paper`` config names: proxy, evaluator, generator, captioner."""
    if cfg.hub is None:
        raise ValueError("cfg.hub is None: the tiny scale uses the shapes world's models")
    ids = dict(cfg.hub)
    missing = {"proxy", "evaluator", "generator", "captioner"} - set(ids)
    if missing:
        raise ValueError(f"cfg.hub lacks {sorted(missing)}")
    return {"proxy": load_proxy(ids["proxy"], device=device),
            "evaluator": load_proxy(ids["evaluator"], device=device),
            "generator": load_generator(ids["generator"], device=device),
            "captioner": load_captioner(ids["captioner"], device=device)}


@torch.no_grad()
def caption(model, processor, images, *, prefix: str = "") -> list[str]:
    """BLIP-2 captions as the FUSE code asks for them: beam search with 5 beams, no sampling,
    11 to 32 new tokens, conditioned on `prefix`."""
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image")
    inputs = processor(images=list(images), text=[prefix] * len(images), return_tensors="pt")
    inputs = inputs.to(model.device, model.dtype)
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
