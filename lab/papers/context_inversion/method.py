"""Context-parametric inversion (Goyal et al., arXiv 2410.10796): the measures of context
reliance and the paper's one-layer attention model (Sec. 5), built exactly and trained in float64.

The model reads the question token r (the query) and attends over two key tokens: the context
token c and the subject s when a context is given, the subject s and r itself when not. Every
token is embedded as (its own direction + a direction shared by its type) / √2, all directions
orthonormal, so tokens of one type share exactly one direction and tokens of different types
none. The answer logits are W_V h, h = Σ_k α_k x_k. W_V has two parts: a *memory* part on the
subject directions (trainable: pretraining stored s → a_mem(s) there) and a *copy* part on the
context directions (frozen: a context token points at its own answer). Attention scores are
x_r W_KQ x_kᵀ with W_KQ = 0 at the start of instruction finetuning (IFT).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ... import _check

GROUPS = ("C", "C+S", "S", "CF")           # context-critical, redundant context, no context, augmentation
VARIANTS = ("standard", "+S", "QK-only", "context-critical only", "counterfactual aug.")


# ---------------------------------------------------------------------------------------------
# Measuring context reliance
# ---------------------------------------------------------------------------------------------
def reliance(logits: torch.Tensor, a_ctx: torch.Tensor, a_mem: torch.Tensor) -> dict:
    """CF, PAR and M_C of counterfactual items from their logits (items × answers).

    CF: share of items whose top answer is the context's; PAR: the memory's;
    M_C: mean of p(a_ctx) / (p(a_ctx) + p(a_mem)) = sigmoid(logit a_ctx − logit a_mem).
    Items whose context answer equals the memory answer test nothing: refused.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be items × answers; got {tuple(logits.shape)}")
    if a_ctx.shape != (logits.shape[0],) or a_mem.shape != a_ctx.shape:
        raise ValueError("a_ctx and a_mem must hold one answer per item")
    if bool((a_ctx == a_mem).any()):
        raise ValueError("a_ctx equals a_mem on some items: not counterfactual")
    rows = torch.arange(logits.shape[0])
    top = logits.argmax(1)
    margin = logits[rows, a_ctx] - logits[rows, a_mem]
    return {"CF": float((top == a_ctx).double().mean()),
            "PAR": float((top == a_mem).double().mean()),
            "M_C": float(torch.sigmoid(margin).mean()),
            "margin": float(margin.mean())}


# ---------------------------------------------------------------------------------------------
# The toy world
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Group sizes, memory and copy strength, and the finetuning run (spec §3a's prototype)."""
    n_c: int = 20            # context-critical items: unmemorised subject, answer only in context
    n_cs: int = 20           # agreeing items: memorised subject, context answer = a_mem
    n_s: int = 0             # no-context items: memorised subject, answer from memory
    n_cf: int = 0            # counterfactual augmentation: memorised subject, conflicting context
    n_test: int = 20         # held-out memorised subjects with unseen, conflicting context tokens
    answers: int = 100
    p_mem: float = 0.6       # p(a_mem) that a subject's stored value alone gives
    p_copy: float = 0.2      # p(a_ctx) that a context token's value alone gives
    train_memory: bool = True   # False: QK-only finetuning, the memory frozen
    lr: float = 0.05
    steps: int = 300

    def __post_init__(self):
        for name in ("n_c", "n_cs", "n_s", "n_cf"):
            _check.integer(name, getattr(self, name), low=0)
        for name in ("n_test", "steps"):
            _check.integer(name, getattr(self, name), low=1)
        _check.integer("answers", self.answers, low=2)
        if self.n_c + self.n_cs + self.n_s + self.n_cf == 0:
            raise ValueError("the group sizes n_c, n_cs, n_s, n_cf must not all be 0")
        _check.real("p_mem", self.p_mem, low=0, high=1, low_open=True, high_open=True)
        _check.real("p_copy", self.p_copy, low=0, high=1, low_open=True, high_open=True)
        _check.real("lr", self.lr, low=0, low_open=True)
        if not isinstance(self.train_memory, bool):
            raise TypeError(f"train_memory must be a bool; got {self.train_memory!r}")


def variant(name: str, base: ToyConfig | None = None) -> ToyConfig:
    """The configuration of one of the chapter's variants, built from `base` (default ToyConfig())."""
    base = ToyConfig() if base is None else base
    _check.choice("variant", name, VARIANTS)
    change = {"standard": {}, "+S": {"n_s": 20}, "QK-only": {"train_memory": False},
              "context-critical only": {"n_cs": 0}, "counterfactual aug.": {"n_cf": 20}}[name]
    return dataclasses.replace(base, **change)


def logit_for(p: float, answers: int) -> float:
    """The one logit L (all others 0) that gives softmax probability p over `answers` answers."""
    return math.log(p * (answers - 1) / (1 - p))


@dataclasses.dataclass
class Toy:
    """The built world: embeddings, the pretrained memory and copy maps, and the items.

    `items[g]` = (keys, target, has_context) with `keys` the two attended token ids per item.
    """
    cfg: ToyConfig
    emb: torch.Tensor            # tokens × d, rows of unit norm
    query: torch.Tensor          # d, the embedding of r
    memory0: torch.Tensor        # answers × d: the trainable memory part at the start of IFT
    copy: torch.Tensor           # answers × d: the frozen copy part
    memory_mask: torch.Tensor    # d: 1 on subject directions, own and shared (where memory lives)
    items: dict
    test: tuple                  # (keys, a_ctx, a_mem) of the counterfactual test items
    fresh: tuple                 # (keys, a_ctx) of held-out context-critical items
    a_mem: torch.Tensor          # memorised answer of each subject token (−1: none)
    train_keys: torch.Tensor     # every IFT item, the groups one after another
    train_target: torch.Tensor
    train_group: torch.Tensor    # index of the item's group in `items`


def build(cfg: ToyConfig, seed: int = 0) -> Toy:
    """Draw the answers from `seed` and build embeddings, memory, copy path and items exactly."""
    cfg = cfg if isinstance(cfg, ToyConfig) else _bad_cfg(cfg)
    g = np.random.default_rng(_check.integer("seed", seed, low=0))
    K = cfg.answers
    # subjects: C (unmemorised), C+S, S, CF, test (memorised); context tokens: C, C+S, CF, test
    # "fresh": held-out context-critical items (ordinary context QA on tokens IFT never saw)
    n_sub = {"C": cfg.n_c, "C+S": cfg.n_cs, "S": cfg.n_s, "CF": cfg.n_cf, "test": cfg.n_test,
             "fresh": cfg.n_test}
    n_ctx = {"C": cfg.n_c, "C+S": cfg.n_cs, "CF": cfg.n_cf, "test": cfg.n_test, "fresh": cfg.n_test}
    subj, ctx, start = {}, {}, 0
    for name, n in n_sub.items():
        subj[name], start = torch.arange(start, start + n), start + n
    for name, n in n_ctx.items():
        ctx[name], start = torch.arange(start, start + n), start + n
    r = start
    n_tokens = r + 1
    u_subj, u_ctx, u_rel = n_tokens, n_tokens + 1, n_tokens + 2       # the shared type directions
    d = n_tokens + 3
    kind = torch.full((n_tokens,), u_subj)
    kind[torch.cat(list(ctx.values()))] = u_ctx
    kind[r] = u_rel
    emb = torch.zeros(n_tokens, d, dtype=torch.float64)
    emb[torch.arange(n_tokens), torch.arange(n_tokens)] = 1 / math.sqrt(2)
    emb[torch.arange(n_tokens), kind] = 1 / math.sqrt(2)

    # IFT facts: answers uniform over all K. The test facts (and the fresh items) ask about the
    # same kind of facts: their answers are drawn from the answers that IFT targets use.
    a_mem, a_ctx = torch.full((n_tokens,), -1), torch.full((n_tokens,), -1)
    for name in ("C+S", "S", "CF"):
        a_mem[subj[name]] = torch.as_tensor(g.integers(0, K, len(subj[name])))
    a_ctx[ctx["C"]] = torch.as_tensor(g.integers(0, K, cfg.n_c))
    a_ctx[ctx["C+S"]] = a_mem[subj["C+S"]]
    shift = torch.as_tensor(g.integers(1, K, cfg.n_cf))  # conflicting: uniform over the others
    a_ctx[ctx["CF"]] = (a_mem[subj["CF"]] + shift) % K
    used = torch.unique(torch.cat([a_ctx[ctx["C"]], a_mem[subj["C+S"]], a_mem[subj["S"]],
                                   a_ctx[ctx["CF"]]]))
    if len(used) < 2:
        raise ValueError("the IFT items use fewer than 2 answers: enlarge the groups")
    pick = torch.as_tensor(g.permuted(np.tile(np.arange(len(used)), (cfg.n_test, 1)), axis=1)[:, :2])
    a_mem[subj["test"]], a_ctx[ctx["test"]] = used[pick[:, 0]], used[pick[:, 1]]
    a_ctx[ctx["fresh"]] = used[torch.as_tensor(g.integers(0, len(used), cfg.n_test))]

    # W_V e_tok = √2 L onehot(answer): a token's value alone, W_V x_tok, has logit L on its answer
    memory = torch.zeros(K, d, dtype=torch.float64)
    memorised = torch.nonzero(a_mem >= 0).flatten()
    memory[a_mem[memorised], memorised] = math.sqrt(2) * logit_for(cfg.p_mem, K)
    copy = torch.zeros(K, d, dtype=torch.float64)
    contexts = torch.nonzero(a_ctx >= 0).flatten()
    copy[a_ctx[contexts], contexts] = math.sqrt(2) * logit_for(cfg.p_copy, K)
    mask = torch.zeros(d, dtype=torch.float64)
    mask[torch.cat(list(subj.values()))] = 1
    mask[u_subj] = 1

    def pair(first, second):
        return torch.stack([first, second], 1)

    items = {}
    if cfg.n_c:
        items["C"] = (pair(ctx["C"], subj["C"]), a_ctx[ctx["C"]], True)
    if cfg.n_cs:
        items["C+S"] = (pair(ctx["C+S"], subj["C+S"]), a_mem[subj["C+S"]], True)
    if cfg.n_s:
        items["S"] = (pair(subj["S"], torch.full((cfg.n_s,), r)), a_mem[subj["S"]], False)
    if cfg.n_cf:
        items["CF"] = (pair(ctx["CF"], subj["CF"]), a_ctx[ctx["CF"]], True)
    test = (pair(ctx["test"], subj["test"]), a_ctx[ctx["test"]], a_mem[subj["test"]])
    train_keys = torch.cat([item[0] for item in items.values()])
    train_target = torch.cat([item[1] for item in items.values()])
    train_group = torch.cat([torch.full((len(item[1]),), i) for i, item in enumerate(items.values())])
    fresh = (pair(ctx["fresh"], subj["fresh"]), a_ctx[ctx["fresh"]])
    return Toy(cfg, emb, emb[r], memory, copy, mask, items, test, fresh, a_mem, train_keys, train_target,
               train_group)


def _bad_cfg(cfg):
    raise TypeError(f"cfg must be a ToyConfig; got {type(cfg).__name__}")


# ---------------------------------------------------------------------------------------------
# The one-layer attention model
# ---------------------------------------------------------------------------------------------
def forward(toy: Toy, w_kq: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor):
    """Answer logits and attention of items whose two attended tokens are `keys`."""
    x = toy.emb[keys]                                       # items × 2 × d
    attn = torch.softmax(x @ (w_kq.T @ toy.query), dim=1)   # score_k = x_r W_KQ x_kᵀ
    h = (attn.unsqueeze(-1) * x).sum(1)                     # items × d
    w_v = memory * toy.memory_mask + toy.copy   # memory on subject directions only
    return h @ w_v.T, attn


def item_losses(toy: Toy, w_kq, memory) -> torch.Tensor:
    """Cross-entropy of every IFT item (the groups' items one after another, as in `toy.items`)."""
    logits, _ = forward(toy, w_kq, memory, toy.train_keys)
    return torch.nn.functional.cross_entropy(logits, toy.train_target, reduction="none")


def test_margin(toy: Toy, w_kq, memory) -> torch.Tensor:
    """The counterfactual margin: mean of logit(a_ctx) − logit(a_mem) over the test items."""
    keys, a_ctx, a_mem = toy.test
    logits, _ = forward(toy, w_kq, memory, keys)
    rows = torch.arange(len(a_ctx))
    return (logits[rows, a_ctx] - logits[rows, a_mem]).mean()


def contributions(toy: Toy, w_kq, memory) -> dict:
    """Per group g, the first-order change of the test margin under a unit gradient
    step on the group's share of the loss, L_g = (sum of g's item losses) / (all items):
    ⟨−∇L_g, ∇margin⟩ over the trainable parameters. The shares add up to the mean
    loss L, so the contributions add up to ⟨−∇L, ∇margin⟩. One forward-mode pass
    along ∇margin gives the directional derivative of every item's loss at once."""
    trainable = toy.cfg.train_memory
    w_kq = w_kq.detach().requires_grad_()
    memory = memory.detach().requires_grad_(trainable)
    params = (w_kq, memory) if trainable else (w_kq,)
    direction = torch.autograd.grad(test_margin(toy, w_kq, memory), params)

    def losses(*p):
        return item_losses(toy, p[0], p[1] if trainable else memory.detach())

    _, along = torch.func.jvp(losses, tuple(x.detach() for x in params), direction)
    n = len(toy.train_target)
    return {g: -float(along[toy.train_group == i].sum()) / n
            for i, g in enumerate(toy.items)}


@dataclasses.dataclass
class Trace:
    """Every metric at every step 0 … steps (measured before that step's update)."""
    steps: np.ndarray
    M_C: np.ndarray
    CF: np.ndarray
    PAR: np.ndarray
    margin: np.ndarray
    attn_ctx: np.ndarray          # test items' mean attention on the context token
    loss: np.ndarray              # IFT full-batch loss
    heldout_ctx: np.ndarray       # p(answer) on fresh context-critical items (ordinary context QA)
    contrib: dict                 # group → per-step contribution to the margin
    w_kq: torch.Tensor = None     # final parameters
    memory: torch.Tensor = None

    def peak(self) -> tuple[float, int]:
        i = int(np.argmax(self.M_C))
        return float(self.M_C[i]), int(self.steps[i])


def finetune(toy: Toy, steps: int | None = None, record=True) -> Trace:
    """Full-batch IFT with Adam from the built model; metrics at every step (before the
    update), and once more after the last one. Per-group contributions at every step
    (`record` True), at none (False), or at the steps `record` lists (NaN elsewhere)."""
    if not isinstance(toy, Toy):
        raise TypeError(f"toy must be a Toy (from build); got {type(toy).__name__}")
    cfg = toy.cfg
    steps = cfg.steps if steps is None else _check.integer("steps", steps, low=1)
    w_kq = torch.zeros(toy.emb.shape[1], toy.emb.shape[1], dtype=torch.float64, requires_grad=True)
    memory = toy.memory0.clone().requires_grad_(cfg.train_memory)
    params = [w_kq] + ([memory] if cfg.train_memory else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    if isinstance(record, bool):
        wanted = range(steps + 1) if record else ()
    else:
        wanted = [_check.integer("record step", int(r), low=0, high=steps) for r in record]
    wanted = set(wanted)
    keys, a_ctx, a_mem = toy.test
    rows = {k: [] for k in ("M_C", "CF", "PAR", "margin", "attn_ctx", "loss", "heldout_ctx")}
    contrib = {g: [] for g in toy.items}
    for step in range(steps + 1):
        with torch.no_grad():
            logits, attn = forward(toy, w_kq, memory, keys)
            m = reliance(logits, a_ctx, a_mem)
            for k in ("M_C", "CF", "PAR", "margin"):
                rows[k].append(m[k])
            rows["attn_ctx"].append(float(attn[:, 0].mean()))
            f_logits, _ = forward(toy, w_kq, memory, toy.fresh[0])
            p = torch.softmax(f_logits, 1)[torch.arange(len(toy.fresh[1])), toy.fresh[1]]
            rows["heldout_ctx"].append(float(p.mean()))
        if step in wanted:
            for g, v in contributions(toy, w_kq, memory).items():
                contrib[g].append(v)
        elif record is not False:
            for values in contrib.values():
                values.append(float("nan"))
        loss = item_losses(toy, w_kq, memory).mean()
        rows["loss"].append(float(loss.detach()))
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    arrays = {k: np.array(v) for k, v in rows.items()}
    return Trace(np.arange(steps + 1), contrib={g: np.array(v) for g, v in contrib.items()},
                 w_kq=w_kq.detach(), memory=memory.detach(), **arrays)
