"""Real text as domains: one corpus per domain, tokenized once, sampled as fixed-length windows.

For the `gpu` scale of the chapters that train language models on a mixture of domains. A
corpus folder holds one UTF-8 file per domain, ``<domain>.txt``; :func:`prepare_corpora` writes
such a folder from public datasets on the hub (it needs the network once, and the ``datasets``
package), and anything else written that way works too. :class:`TextMixture` has the interface of
:class:`lab.data.tokens.TokenMixture` (names, vocab, length, sample, validation, entropies), so
the same training code runs on synthetic languages and on text; the entropy rates of text are
unknown (NaN).

Tokenizers are callables ``text -> list[int]`` with a ``vocab`` attribute:
:class:`ByteTokenizer` (256 ids, no download) or :func:`hub_tokenizer` (e.g. Pythia's, through
``transformers``, with a clear error when it cannot be fetched).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from .. import _check
from .tokens import TokenMixture

# Small public corpora for the domains of a mixture: (dataset, config, split, text fields).
# Used only by prepare_corpora; every one is read as a stream of its first records.
DEFAULT_SOURCES = {
    "prose": ("Salesforce/wikitext", "wikitext-103-raw-v1", "train", ("text",)),
    "news": ("fancyzhx/ag_news", None, "train", ("text",)),
    "math": ("openai/gsm8k", "main", "train", ("question", "answer")),
    "code": ("codeparrot/codeparrot-clean-valid", None, "train", ("content",)),
    "abstracts": ("gfissore/arxiv-abstracts-2021", None, "train", ("abstract",)),
}


def default_corpora_dir() -> Path:
    """``$LAB_CORPORA_DIR``, default ``~/.cache/lab/corpora``."""
    env = os.environ.get("LAB_CORPORA_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lab" / "corpora"


class ByteTokenizer:
    """UTF-8 bytes as ids (vocab 256): no download, no unknown characters."""

    vocab = 256
    name = "bytes"

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return list(text.encode("utf-8"))


class HubTokenizer:
    """A ``transformers`` tokenizer as ``text -> ids`` with its vocabulary size."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer, self.name = tokenizer, name
        self.vocab = len(tokenizer)

    def __call__(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def hub_tokenizer(name: str = "EleutherAI/pythia-70m", *, local_files_only: bool = False) -> HubTokenizer:
    """The tokenizer of hub model `name` (loaded with ``transformers``; no remote code)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise RuntimeError("the text domains' hub tokenizer needs `transformers`: "
                           "pip install 'lab[gpu]' (or pip install transformers)") from e
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only, trust_remote_code=False)
    except OSError as e:
        raise RuntimeError(f"could not load the tokenizer {name!r}: this needs the Hugging Face hub once "
                           "(then it is cached), or a local folder with the tokenizer files") from e
    return HubTokenizer(tok, name)


def prepare_corpora(folder: Path | str | None = None, sources: Mapping = DEFAULT_SOURCES, *,
                    chars: int = 20_000_000) -> Path:
    """Write ``<folder>/<domain>.txt`` for each source, about `chars` characters each, from the
    hub's datasets (streamed: only what is needed is downloaded). Existing files are kept."""
    folder = Path(folder) if folder is not None else default_corpora_dir()
    chars = _check.integer("chars", chars, low=1)
    if not sources:
        raise ValueError("sources must name at least one domain")
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("prepare_corpora needs the `datasets` package (pip install datasets) and "
                           "the network; or write one UTF-8 file per domain, <domain>.txt, yourself") from e
    folder.mkdir(parents=True, exist_ok=True)
    for name, (dataset, config, split, fields) in sources.items():
        path = folder / f"{name}.txt"
        if path.exists():
            continue
        try:
            stream = datasets.load_dataset(dataset, config, split=split, streaming=True)
        except Exception as e:          # the hub raises several kinds (connection, not found)
            raise RuntimeError(f"could not stream {dataset!r} for domain {name!r}: the hub is needed "
                               f"once; or place {path} yourself") from e
        parts, total = [], 0
        for record in stream:
            text = "\n".join(str(record[f]) for f in fields if record.get(f))
            if text.strip():
                parts.append(text)
                total += len(text) + 2
            if total >= chars:
                break
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n\n".join(parts), encoding="utf-8")
        tmp.replace(path)
    return folder


def load_corpora(folder: Path | str, tokenizer: Callable[[str], list[int]], *,
                 max_chars: int | None = None, cache: bool = True) -> dict[str, torch.Tensor]:
    """Every ``<domain>.txt`` in `folder`, tokenized: {domain: int64 ids}, domains sorted by name.
    With `cache`, the ids are kept beside the text as ``<domain>.<tokenizer name>.npy`` and reused
    while the text file is unchanged (same size and modification time)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no corpus folder {folder}: run lab.data.text.prepare_corpora() "
                                "once with the network, or write one <domain>.txt per domain there")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no <domain>.txt files")
    if max_chars is not None:
        max_chars = _check.integer("max_chars", max_chars, low=1)
    out = {}
    for f in files:
        stat = f.stat()
        key = f"{getattr(tokenizer, 'name', 'tok')}.{stat.st_size}.{stat.st_mtime_ns}.{max_chars}"
        npy = f.with_name(f"{f.stem}.{_safe(key)}.npy")
        if cache and npy.exists():
            ids = np.load(npy)
        else:
            text = f.read_text(encoding="utf-8")[:max_chars]
            ids = np.asarray(tokenizer(text), dtype=np.int64)
            if cache:
                tmp = npy.with_name(npy.name + ".tmp.npy")
                np.save(tmp, ids)
                tmp.replace(npy)
        out[f.stem] = torch.from_numpy(ids)
    return out


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


class TextDomain:
    """One corpus as a domain: `ids` split into a training head and a held-out tail."""

    kind = "text"
    entropy = None

    def __init__(self, name: str, ids: torch.Tensor, length: int, val_fraction: float):
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"ids of {name!r} must be 1-D; got shape {tuple(ids.shape)}")
        cut = int(len(ids) * (1 - val_fraction))
        if cut < length + 1 or len(ids) - cut < length + 1:
            raise ValueError(f"corpus {name!r} has {len(ids)} tokens: too few for windows of {length} "
                             f"with {val_fraction:g} held out")
        self.name, self.train, self.held_out = name, ids[:cut], ids[cut:]

    @staticmethod
    def _windows(ids: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, len(ids) - length + 1, (n,), generator=generator)
        return ids[starts[:, None] + torch.arange(length)]

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        return self._windows(self.train, _check.integer("n", n, low=0), length, generator)


class TextMixture(TokenMixture):
    """Text domains over one tokenizer's vocabulary, with :class:`~lab.data.tokens.TokenMixture`'s
    interface and batch sampler. Windows of `length` tokens are drawn uniformly from each domain's
    training part; :meth:`validation` draws from the held-out tail (the last `val_fraction` of
    each corpus). Domains share the vocabulary: there are no offsets."""

    def __init__(self, corpora: Mapping[str, torch.Tensor], vocab: int, length: int, *,
                 val_fraction: float = 0.05):
        if not corpora:
            raise ValueError("corpora must hold at least one domain")
        self.length = _check.integer("length", length, low=2)
        self.vocab = _check.integer("vocab", vocab, low=2)
        val_fraction = _check.real("val_fraction", val_fraction, low=0, high=1, low_open=True, high_open=True)
        self.domains = [TextDomain(name, ids, self.length, val_fraction) for name, ids in corpora.items()]
        self.names = [d.name for d in self.domains]
        self.offsets = [0] * len(self.domains)
        for d in self.domains:
            if int(max(d.train.max(), d.held_out.max())) >= self.vocab or int(d.train.min()) < 0:
                raise ValueError(f"corpus {d.name!r} holds ids outside 0..{self.vocab - 1}")

    @property
    def entropies(self) -> np.ndarray:
        return np.full(len(self.domains), np.nan)

    @property
    def token_share(self) -> np.ndarray:
        """Each domain's share of the training tokens: the natural mixture of the corpora."""
        sizes = np.array([len(d.train) for d in self.domains], dtype=np.float64)
        return sizes / sizes.sum()

    def validation(self, n: int, seed: int) -> list[torch.Tensor]:
        """`n` windows per domain from its held-out tail, from their own generator."""
        g = torch.Generator().manual_seed(_check.integer("seed", seed) * 7919 + 17)
        n = _check.integer("n", n, low=1)
        return [TextDomain._windows(d.held_out, n, self.length, g) for d in self.domains]
