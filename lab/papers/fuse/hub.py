"""The ``gpu`` scale of the FUSE chapter: GPT-2 and CLIP from the Hugging Face hub, a word list
from wikitext, and the maps fitted on the GPU in float32 and cached as safetensors.

Everything heavy is imported lazily: ``transformers`` for the models, ``datasets`` for wikitext.
Offline, or without those libraries, the loaders raise an error that says what to do.
GPT-2 tokenizes a bare word differently from the same word after a space (as it mostly occurs
in prompts); the fit uses the form with a leading space. ``n_max`` differs between the official
README (8192), its config (16834) and its class default (1024): it is a named argument here.
"""
from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from ... import _check
from .method import WordMaps, fit_word_maps


# ---------------------------------------------------------------------------------------------
# Word list
# ---------------------------------------------------------------------------------------------
def words_from_lines(lines: Iterable[str], n_max: int | None = None, seed: int = 0) -> list[str]:
    """The unique lower-cased whitespace tokens of `lines`, shuffled with `seed`, at most
    `n_max` of them (the official ``set_dataset``)."""
    words = sorted({w.lower() for line in lines for w in str(line).split()})
    if not words:
        raise ValueError("lines hold no words: give a non-empty corpus")
    random.Random(_check.integer("seed", seed)).shuffle(words)
    return words if n_max is None else words[:_check.integer("n_max", n_max, low=1)]


def wikitext_words(name=("Salesforce/wikitext", "wikitext-103-raw-v1"), n_max: int = 8192,
                   seed: int = 0) -> list[str]:
    """Words of wikitext-103-raw-v1 train (the ``datasets`` library; needs the hub or its cache)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("the wikitext word list needs the datasets library: "
                          "pip install datasets (or pass your own lines to words_from_lines)") from err
    try:
        data = datasets.load_dataset(*name, split="train")
    except (OSError, ConnectionError, ValueError) as err:
        raise OSError(f"could not load {name!r} from the Hugging Face hub or its local cache "
                      "(offline? set HF_DATASETS_OFFLINE=1 with a filled cache, or run at "
                      "LAB_SCALE=tiny, which needs no download)") from err
    return words_from_lines(data["text"], n_max, seed)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class HubPair:
    """Model A (a causal LM) and model B (CLIP) with their tokenizers and embedding tables."""
    lm: object
    tokenizer_A: object
    clip: object
    tokenizer_B: object

    @property
    def table_A(self) -> torch.Tensor:
        return self.lm.get_input_embeddings().weight

    @property
    def table_B(self) -> torch.Tensor:
        return self.clip.text_model.embeddings.token_embedding.weight

    def word_ids_A(self, word: str) -> list[int]:
        """GPT-2 ids of the word as it occurs in a prompt: after a space."""
        return list(self.tokenizer_A(" " + word, add_special_tokens=False)["input_ids"])

    def word_ids_B(self, word: str) -> list[int]:
        return list(self.tokenizer_B(word, add_special_tokens=False)["input_ids"])


def load_models(setup: dict, *, device="cpu") -> HubPair:
    """``setup["lm"]`` (e.g. gpt2-medium) and ``setup["clip"]`` (e.g. openai/clip-vit-base-patch32)."""
    for key in ("lm", "clip"):
        if not isinstance(setup.get(key), str) or not setup[key]:
            raise ValueError(f"setup[{key!r}] must be a hub id; got {setup.get(key)!r}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel
    except ImportError as err:
        raise ImportError("the gpu scale needs the transformers library: install the gpu extra, "
                          "pip install 'explorable-papers[gpu]'") from err
    try:
        lm = AutoModelForCausalLM.from_pretrained(setup["lm"]).to(device).eval()
        tok_a = AutoTokenizer.from_pretrained(setup["lm"])
        clip = CLIPModel.from_pretrained(setup["clip"]).to(device).eval()
        tok_b = AutoTokenizer.from_pretrained(setup["clip"])
    except OSError as err:
        raise OSError(f"could not load {setup['lm']!r} / {setup['clip']!r} from the Hugging Face "
                      "hub or its local cache (offline? set HF_HUB_OFFLINE=1 with a filled cache, "
                      "or run at LAB_SCALE=tiny, which needs no download)") from err
    return HubPair(lm, tok_a, clip, tok_b)


# ---------------------------------------------------------------------------------------------
# Fitting on the GPU, and the cache
# ---------------------------------------------------------------------------------------------
def fit_maps(words, ids_A, ids_B, table_A: torch.Tensor, table_B: torch.Tensor, *,
             max_subtokens: int = 4, n_max: int = 8192, device=None,
             dtype=torch.float32) -> WordMaps:
    """Fit ``T_k`` (k ≤ max_subtokens) on at most `n_max` words per k, on `device` in `dtype`
    (float32 on the GPU at ``gpu`` scale; float64 on the CPU is the reference)."""
    n_max = _check.integer("n_max", n_max, low=1)
    words = list(words)
    if not words:
        raise ValueError("words is empty: give at least one word to fit the maps on")
    counts: dict[int, int] = {}
    chosen = []
    for w in words:
        k = len(ids_B(w))
        if 1 <= k <= max_subtokens and counts.get(k, 0) < n_max and ids_A(w):
            counts[k] = counts.get(k, 0) + 1
            chosen.append(w)
    device = table_A.device if device is None else torch.device(device)
    tA = table_A.detach().to(device=device, dtype=dtype)
    tB = table_B.detach().to(device=device, dtype=dtype)
    return fit_word_maps(chosen, ids_A, ids_B, tA, tB, max_subtokens=max_subtokens)


def save_maps(maps: WordMaps, path) -> Path:
    """Write the maps to a safetensors file; the words go into its JSON metadata."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"T_{k}": T.detach().cpu().contiguous() for k, T in maps.maps.items()}
    meta = {"words": json.dumps({str(k): v for k, v in maps.words.items()}),
            "d_A": str(maps.d_A), "d_B": str(maps.d_B)}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_maps(path) -> WordMaps:
    """Maps written by :func:`save_maps` (safetensors: nothing is unpickled)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist: fit the maps first")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = list(f.keys())
        maps = {int(name[2:]): f.get_tensor(name) for name in names}
    words = {int(k): v for k, v in json.loads(meta["words"]).items()}
    return WordMaps(maps, words, int(meta["d_A"]), int(meta["d_B"]))
