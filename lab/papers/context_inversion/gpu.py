"""The `gpu` study (spec §4): a Pythia model finetuned with LoRA on instruction data, probed on
counterfactual facts every few steps.

Everything heavy is imported lazily: ``transformers`` (the model and its tokenizer) and
``datasets`` (the instruction set) only when :func:`run_gpu_study` loads them, and the
counterfactual sets of the official repository are downloaded at run time into
``_build/data`` (they carry no licence, so the book ships none of them). Without a network, or
without those packages, the loaders stop with an error that says what is missing.

The pieces below take a model that maps token ids to logits and an ``encode(text) → ids``
function, so they run unchanged on a small GPT-NeoX built from a config (the tests do that).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ... import _check, paths
from ...nn.hublm import LogitsOnly

OFFICIAL = "https://raw.githubusercontent.com/locuslab/context-parametric-inversion/main/"
OFFICIAL_SETS = {"world_facts": "world_facts.json", "capitals": "country_capitals_only.json"}
LORA_TARGETS = ("all", "qk")
# GPT-NeoX's module names: the fused query/key/value map, the attention output and the MLP
NEOX_ATTENTION, NEOX_OTHERS = "attention.query_key_value", ("attention.dense", "mlp.dense_h_to_4h",
                                                            "mlp.dense_4h_to_h")


# ---------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """``base(x) + (α / r) · B A x`` with ``base`` frozen, A (r × in) random, B (out × r) zero,
    so the wrapped layer starts as the base layer. ``rows``: a boolean mask over the output
    features; the update reaches only those rows (the others stay the base layer's)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, rows: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear; got {type(base).__name__}")
        rank = _check.integer("rank", rank, low=1, high=min(base.in_features, base.out_features))
        self.scale = _check.real("alpha", alpha, low=0, low_open=True) / rank
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, device=device) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        if rows is not None:
            rows = torch.as_tensor(rows)
            if rows.dtype != torch.bool or rows.shape != (base.out_features,):
                raise ValueError(f"rows must be a boolean mask of {base.out_features} output features")
        self.register_buffer("rows", None if rows is None else rows.to(device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x.float() @ self.lora_a.T) @ self.lora_b.T * self.scale
        if self.rows is not None:
            update = update * self.rows
        return self.base(x) + update.to(x.dtype)


def neox_qk_rows(out_features: int, heads: int) -> torch.Tensor:
    """The query and key rows of GPT-NeoX's fused map: per head, [q | k | v] blocks of one head
    size each, heads one after another."""
    _check.integer("heads", heads, low=1)
    if out_features % (3 * heads):
        raise ValueError(f"out_features ({out_features}) must be 3 × heads ({heads}) × head size")
    head = out_features // (3 * heads)
    within = torch.arange(out_features) % (3 * head)
    return within < 2 * head


def add_lora(model: nn.Module, rank: int, alpha: float, target: str = "all", heads: int | None = None) -> list[str]:
    """Wrap a GPT-NeoX model's linear maps in LoRA (in place) and freeze everything else.
    ``target="all"``: the attention maps and the MLP; ``"qk"``: only the query and key rows of
    the fused attention map (QK-only finetuning; ``heads`` is then needed, default the model's
    ``config.num_attention_heads``). Returns the wrapped modules' names."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    _check.choice("target", target, LORA_TARGETS)
    suffixes = (NEOX_ATTENTION,) + (NEOX_OTHERS if target == "all" else ())
    if target == "qk":
        heads = heads if heads is not None else _config_heads(model)
    for p in model.parameters():
        p.requires_grad_(False)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.endswith(suffixes)]
    if not found:
        raise ValueError("model has no GPT-NeoX linear maps (…attention.query_key_value) to adapt")
    for name, module in found:
        rows = neox_qk_rows(module.out_features, heads) if target == "qk" else None
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(module, rank, alpha, rows))
    return [name for name, _ in found]


def _config_heads(model) -> int:
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "num_attention_heads"):
            return int(config.num_attention_heads)
    raise ValueError("heads must be given: the model has no config.num_attention_heads")


# ---------------------------------------------------------------------------------------------
# Counterfactual sets
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CFItem:
    context: str
    question: str
    answer: str          # the context's answer
    memory_answer: str


def load_counterfactual(path: Path | str) -> list[CFItem]:
    """Items of a counterfactual set in the official repository's format: a JSON list (or JSON
    lines) of objects with ``context``, ``question``, ``answer`` and ``memory_answer``. Items
    whose context answer equals the memory answer test nothing and are left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} is not a file")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(rows, list):
        raise TypeError(f"{path} must hold a list of items")
    items = []
    for i, row in enumerate(rows):
        missing = [k for k in ("context", "question", "answer", "memory_answer")
                   if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}: item {i} lacks the text field(s) {missing}")
        if row["answer"].strip().lower() != row["memory_answer"].strip().lower():
            items.append(CFItem(row["context"], row["question"], row["answer"], row["memory_answer"]))
    return items


def fetch_official(name: str, folder: Path | str | None = None, base_url: str = OFFICIAL) -> Path:
    """Download one of the official counterfactual sets (`name` in OFFICIAL_SETS) into `folder`
    (default ``_build/data/context-inversion``) unless it is there; returns its path. The sets
    carry no licence: they are fetched at run time and never shipped."""
    _check.choice("name", name, OFFICIAL_SETS)
    folder = Path(folder) if folder is not None else paths.build_dir() / "data" / "context-inversion"
    path = folder / OFFICIAL_SETS[name]
    if path.is_file():
        return path
    import urllib.error
    import urllib.request
    url = base_url + OFFICIAL_SETS[name]
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise RuntimeError(f"could not download the counterfactual set {name!r} from {url} ({err}); "
                           f"this needs a network, or put the file at {path}") from None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def prompt(item: CFItem, with_context: bool = True) -> str:
    head = f"Context: {item.context}\n" if with_context else ""
    return f"{head}Question: {item.question}\nAnswer:"


@torch.no_grad()
def answer_logprob(model: nn.Module, encode: Callable[[str], list[int]], prefix: str, answer: str,
                   device=None) -> float:
    """log p(" answer" | prefix) under `model` (ids → logits), summed over the answer's tokens."""
    head, tail = list(encode(prefix)), list(encode(" " + answer))
    if not tail:
        raise ValueError("answer encodes to no tokens")
    ids = torch.tensor([head + tail], device=device)
    logp = torch.log_softmax(model(ids)[0, :-1].float(), -1)
    at = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=logp.device)
    return float(logp[at, ids[0, len(head):]].sum())


def probe(model: nn.Module, encode, items: list[CFItem], device=None) -> dict:
    """M_C (mean of p(a_ctx) / (p(a_ctx) + p(a_mem)), answers scored as whole sequences),
    CF and PAR (share of items where the context's / memory's answer is the likelier of the
    two), and the closed-book share where the memory answer beats the context's."""
    if not items:
        raise ValueError("items must not be empty")
    was = model.training
    model.eval()
    m_c, cf, closed = [], [], []
    for item in items:
        lc = answer_logprob(model, encode, prompt(item), item.answer, device)
        lm = answer_logprob(model, encode, prompt(item), item.memory_answer, device)
        m_c.append(1 / (1 + math.exp(lm - lc)))
        cf.append(lc > lm)
        bc = answer_logprob(model, encode, prompt(item, False), item.answer, device)
        bm = answer_logprob(model, encode, prompt(item, False), item.memory_answer, device)
        closed.append(bm > bc)
    model.train(was)
    n = len(items)
    return {"M_C": sum(m_c) / n, "CF": sum(cf) / n, "PAR": 1 - sum(cf) / n, "closed_book": sum(closed) / n}


# ---------------------------------------------------------------------------------------------
# Finetuning
# ---------------------------------------------------------------------------------------------
def ift_tokens(encode, instruction: str, response: str, length: int) -> tuple[list[int], int]:
    """An instruction example as ids (cut to `length`) and the index where the response starts."""
    head = list(encode(f"### Instruction:\n{instruction}\n\n### Response:\n"))
    ids = (head + list(encode(response)))[:length]
    return ids, min(len(head), len(ids))


def finetune_study(model: nn.Module, encode, examples: list[tuple[str, str]], probe_items: list[CFItem],
                   *, steps: int, batch: int = 8, lr: float = 2e-4, every: int = 50, length: int = 256,
                   seed: int = 0, pad: int = 0, device=None, progress: bool = True) -> list[dict]:
    """Finetune (the trainable, LoRA, parameters of) `model` on (instruction, response) pairs
    with the loss on the response tokens, probing `probe_items` at step 0 and every `every`
    steps. Returns one row per probe: {"step", "M_C", "CF", "PAR", "closed_book"}."""
    from ...train import TrainConfig, train

    if not examples:
        raise ValueError("examples must not be empty")
    steps = _check.integer("steps", steps, low=1)
    every = _check.integer("every", every, low=1)
    batch = _check.integer("batch", batch, low=1)
    encoded = [ift_tokens(encode, q, a, length) for q, a in examples]
    rows = [{"step": 0, **probe(model, encode, probe_items, device)}]

    def loss_fn(m, g):
        pick = torch.randint(0, len(encoded), (batch,), generator=g, device=g.device).tolist()
        width = max(len(encoded[i][0]) for i in pick)
        ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros(batch, width - 1)
        for row, i in enumerate(pick):
            tokens, start = encoded[i]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, max(start - 1, 0):len(tokens) - 1] = 1
        ids, mask = ids.to(next(m.parameters()).device), mask.to(next(m.parameters()).device)
        logits = m(ids[:, :-1]).float()
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def on_step(step, m):
        if step % every == 0 or step == steps:
            rows.append({"step": step, **probe(m, encode, probe_items, device)})

    train(model, loss_fn, TrainConfig(steps=steps, lr=lr, progress_every=10), seed=seed,
          device=device, on_step=on_step, desc="LoRA IFT", progress=progress)
    return rows


def augment(examples: list[tuple[str, str]], items: list[CFItem], share: float, seed: int = 0):
    """Replace a `share` of the examples by counterfactual items whose target is the context's
    answer (counterfactual augmentation)."""
    _check.real("share", share, low=0, high=1)
    import random
    rng = random.Random(seed)
    out = list(examples)
    n = min(round(share * len(out)), len(items))
    for slot, item in zip(rng.sample(range(len(out)), n), rng.sample(items, n)):
        out[slot] = (prompt(item), " " + item.answer)
    return out


def load_model(name: str, device="cuda", local_files_only: bool = False):
    """The hub model `name` (bf16) and its tokenizer, through ``transformers``; a clear error when
    the package is missing or the model cannot be loaded (offline, wrong name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a model name or folder; got {name!r}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise RuntimeError("the gpu study needs `transformers`: pip install 'lab[gpu]'") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.bfloat16,
                                                     local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise RuntimeError(f"could not load the model {name!r} ({err}); the gpu study needs the "
                           "Hugging Face hub (a network) or a local copy of the model") from None
    return LogitsOnly(model).to(device), tokenizer


def load_instructions(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` Alpaca examples (instruction [+ input], output), via ``datasets`` at run time."""
    count = _check.integer("count", count, low=1)
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise RuntimeError("the gpu study needs `datasets`: pip install datasets") from e
    try:
        data = load_dataset("tatsu-lab/alpaca", split="train").shuffle(seed=seed).select(range(count))
    except Exception as err:  # noqa: BLE001  (the hub's errors vary by version: all mean unreachable)
        raise RuntimeError(f"could not load the instruction set tatsu-lab/alpaca ({err}); "
                           "the gpu study needs the Hugging Face hub (a network)") from None
    return [((r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")), r["output"]) for r in data]
