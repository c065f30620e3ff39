"""Small language models behind one autoregressive interface, for steganography you can read.

Every model here is a :class:`lab.papers.arimec.method.Autoregressive` marginal (``branching``,
``conditional(prefix)``, ``is_terminal(prefix)``) over a fixed number of tokens:

* :class:`NGramLM` — a character or word n-gram with add-k smoothing, fitted in milliseconds
  on text that ships with Python (:func:`zen_text`, the Zen of Python from the ``this`` module);
* :class:`TorchLM` — a thin adapter around any torch language model (a callable from token ids
  of shape (1, T) to logits of shape (1, T, V)), with optional top-k truncation and a cache of
  conditionals per prefix, because IMEC asks for the same prefix many times;
* :func:`gpt2` — GPT-2 from the Hugging Face hub through the same adapter (``gpu`` scale; needs
  ``transformers`` and the network, and says so when either is missing).
"""
from __future__ import annotations

import codecs
import collections
import re
from typing import Callable, Sequence

import numpy as np

from ... import _check


def zen_text() -> str:
    """The Zen of Python (stdlib ``this``, stored rot13-encoded), without printing it."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks as separate tokens."""
    return re.findall(r"[a-z']+|[.,!?*-]", text.lower())


class NGramLM:
    """An n-gram model over a fixed vocabulary, emitting exactly `length` tokens.

    P(t | previous n − 1 tokens) ∝ count + `smoothing` (backing off to shorter contexts that were
    seen); with `top_k`, only the k most likely tokens keep their mass (renormalised), which makes
    covertext read better at the price of entropy per token. `unit` is ``"char"`` or ``"word"``.
    """

    def __init__(self, text: str, *, unit: str = "char", order: int = 3, length: int = 20,
                 smoothing: float = 0.01, top_k: int | None = None, vocab: Sequence[str] | None = None):
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty string")
        self.unit = _check.choice("unit", unit, ("char", "word"))
        self.order = _check.integer("order", order, low=1, high=8)
        self.length = _check.integer("length", length, low=1)
        self.smoothing = _check.real("smoothing", smoothing, low=0, low_open=True)
        tokens = list(text.lower()) if unit == "char" else words(text)
        self.vocab = sorted(set(tokens) | set(vocab or ()))
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.branching = len(self.vocab)
        self.top_k = None if top_k is None else _check.integer("top_k", top_k, low=1, high=self.branching)
        ids = [self.index[t] for t in tokens]
        self.counts: dict[tuple, np.ndarray] = collections.defaultdict(lambda: np.zeros(self.branching))
        for n in range(self.order):
            for j in range(n, len(ids)):
                self.counts[tuple(ids[j - n:j])][ids[j]] += 1
        self.counts = dict(self.counts)
        self._cache: dict[tuple, np.ndarray] = {}

    def conditional(self, prefix) -> np.ndarray:
        context = tuple(prefix[max(0, len(prefix) - self.order + 1):])
        if context in self._cache:
            return self._cache[context]
        key = context
        while key not in self.counts:
            key = key[1:]
        p = self.counts[key] + self.smoothing
        p = p / p.sum()
        if self.top_k is not None and self.top_k < len(p):
            keep = np.argsort(-p, kind="stable")[:self.top_k]
            trunc = np.zeros_like(p)
            trunc[keep] = p[keep]
            p = trunc / trunc.sum()
        self._cache[context] = p
        return p

    def is_terminal(self, prefix) -> bool:
        return len(prefix) >= self.length

    def with_length(self, length: int) -> "NGramLM":
        """The same model emitting `length` tokens (shares the fitted counts)."""
        clone = object.__new__(NGramLM)
        clone.__dict__.update(self.__dict__)
        clone.length = _check.integer("length", length, low=1)
        return clone

    def encode(self, text: str) -> tuple[int, ...]:
        """Token ids of `text`; a character or word outside the vocabulary is an error."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string; got {type(text).__name__}")
        tokens = list(text.lower()) if self.unit == "char" else words(text)
        unknown = sorted({t for t in tokens if t not in self.index})
        if unknown:
            raise ValueError(f"text uses {unknown[:8]} outside this model's vocabulary "
                             f"({''.join(self.vocab) if self.unit == 'char' else len(self.vocab)})")
        return tuple(self.index[t] for t in tokens)

    def decode(self, ids) -> str:
        toks = [self.vocab[int(i)] for i in ids]
        if self.unit == "char":
            return "".join(toks)
        return re.sub(r" ([.,!?])", r"\1", " ".join(toks))


class TorchLM:
    """Any torch LM as an autoregressive marginal over `length` tokens.

    `model(ids)` maps a LongTensor of shape (1, T) to logits (1, T, V). `prompt` is prepended to
    every prefix (a model needs at least one token to condition on); `top_k` truncates each
    conditional to its k most likely tokens. Conditionals are cached per prefix.
    """

    def __init__(self, model: Callable, vocab_size: int, length: int, *, prompt: Sequence[int] = (0,),
                 top_k: int | None = None, device="cpu", cache_size: int = 100_000):
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        self.model, self.branching = model, _check.integer("vocab_size", vocab_size, low=2)
        self.length = _check.integer("length", length, low=1)
        self.prompt = tuple(int(t) for t in prompt)
        if not self.prompt:
            raise ValueError("prompt must hold at least one token id")
        self.top_k = None if top_k is None else _check.integer("top_k", top_k, low=1, high=self.branching)
        self.device, self.cache_size = device, _check.integer("cache_size", cache_size, low=1)
        self.cache: dict[tuple, np.ndarray] = {}
        self.calls = 0

    def conditional(self, prefix) -> np.ndarray:
        prefix = tuple(int(t) for t in prefix)
        hit = self.cache.get(prefix)
        if hit is not None:
            return hit
        import torch
        ids = torch.tensor([self.prompt + prefix], dtype=torch.long, device=self.device)
        with torch.no_grad():
            logits = self.model(ids)
        logits = getattr(logits, "logits", logits)[0, -1].double()
        if self.top_k is not None:
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        p = torch.softmax(logits, dim=-1).cpu().numpy()
        self.calls += 1
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[prefix] = p
        return p

    def is_terminal(self, prefix) -> bool:
        return len(prefix) >= self.length


def gpt2(length: int, *, top_k: int = 50, name: str = "gpt2", prompt: str = "\n", device=None) -> "TorchLM":
    """GPT-2 from the Hugging Face hub as a :class:`TorchLM` (``gpu`` scale).

    Raises ImportError when ``transformers`` is missing and RuntimeError when the model cannot
    be fetched (offline): at ``tiny`` scale the book never calls this."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError("gpt2() needs the `transformers` package (pip install transformers, "
                          "or the book's gpu extra); tiny scale uses NGramLM instead") from err
    import torch
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
        model = transformers.AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise RuntimeError(f"could not load {name!r} from the Hugging Face hub (offline, or the "
                           f"name is wrong): {err}") from err
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    lm = TorchLM(model, model.config.vocab_size, length, prompt=tok.encode(prompt), top_k=top_k,
                 device=device)
    lm.tokenizer = tok
    return lm
