"""A trained tiny transformer in two worlds of memorised facts and contexts (spec §3b, §3c).

Tokens: answers 0 … A−1, subjects A … A+S−1, then the markers CTX, NOC, Q, ANS, PAD. One item
is a short sequence that ends in ``Q s ANS``; the model (:class:`lab.nn.GPT`) is trained to put
the answer at the last position only. Two worlds differ in how the context is written:

- ``"slots"`` (§3c): ``[CTX|NOC] x x Q s ANS``. The two slots hold the context's answer and,
  with probability ``distractor``, a second, different answer (random order; else a PAD). The
  context does not say which slot belongs to the question, so a distractor makes copying a
  guess that memory can settle.
- ``"pairs"`` (§3b, the facts world): ``[CTX|NOC] s₁ a₁ s₂ a₂ s₃ a₃ Q s ANS``. The context
  lists three (subject, answer) pairs, one of them about the question's subject: it names
  which answer belongs to the question, so copying can be exact.

Subjects fall in three groups: memorised and used in IFT, memorised and held out, never
memorised. Pretraining uses one rule for every subject: a context with probability
``p_context``; the target is the context's answer with probability ``p_copy``, else a draw from
memory (a_mem(s) with probability ``p_mem`` for memorised subjects, uniform otherwise).
IFT mixes C items (never-memorised subject, answer only in the context) with C+S items
(memorised IFT subject, the context repeats a_mem). The counterfactual test: one item per
memorised subject, a clean context (no distractor) whose answer differs from a_mem.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from ... import _check
from ...nn.gpt import GPT, GPTConfig
from ...train import TrainConfig, resolve_run_dir, train
from .method import reliance

WORLDS = ("slots", "pairs")
LM_VARIANTS = ("full", "QK-only", "no distractor")
MARKERS = ("CTX", "NOC", "Q", "ANS", "PAD")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """A world of facts and the runs on it: pretraining, then IFT. Spec §3c's "R5" settings,
    except pretraining (800 steps, not 2000) and IFT (200 steps, not 600), shortened to fit
    the chapter's time budget; the peak comes at step ≈ 20 and the fall is over by 200."""
    world: str = "slots"
    answers: int = 50
    memorised_ift: int = 150      # memorised subjects used in IFT (C+S items)
    memorised_heldout: int = 150  # memorised subjects never seen in IFT
    unmemorised: int = 200        # subjects without a memory (C items)
    p_context: float = 0.5
    p_copy: float = 0.3
    p_mem: float = 0.95
    distractor: float = 0.5       # slots world: probability of a distractor beside the answer
    pairs: int = 3                # pairs world: (subject, answer) pairs in a context
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 128
    ift_steps: int = 200
    ift_lr: float = 1e-3
    ift_batch: int = 64
    share_c: float = 0.25         # share of C items in IFT batches
    eval_every: int = 10

    def __post_init__(self):
        _check.choice("world", self.world, WORLDS)
        _check.integer("answers", self.answers, low=3)
        for name in ("memorised_ift", "memorised_heldout", "unmemorised", "d_model", "n_layers",
                     "n_heads", "d_mlp", "pretrain_steps", "pretrain_batch", "ift_steps",
                     "ift_batch", "eval_every"):
            _check.integer(name, getattr(self, name), low=1)
        _check.integer("pairs", self.pairs, low=1)
        for name in ("p_context", "p_copy", "p_mem", "distractor", "share_c"):
            _check.real(name, getattr(self, name), low=0, high=1)
        for name in ("pretrain_lr", "ift_lr"):
            _check.real(name, getattr(self, name), low=0, low_open=True)
        if self.pairs > self.memorised_ift + self.memorised_heldout + self.unmemorised:
            raise ValueError("pairs must not exceed the number of subjects")

    @property
    def subjects(self) -> int:
        return self.memorised_ift + self.memorised_heldout + self.unmemorised

    @property
    def vocab(self) -> int:
        return self.answers + self.subjects + len(MARKERS)

    @property
    def length(self) -> int:
        """Tokens per item: marker, the context's tokens, Q s ANS."""
        body = 2 if self.world == "slots" else 2 * self.pairs
        return 1 + body + 3

    def marker(self, name: str) -> int:
        return self.answers + self.subjects + MARKERS.index(name)


@dataclasses.dataclass
class World:
    """The facts of one seed: which subjects are memorised, and their memorised answers."""
    cfg: WorldConfig
    a_mem: torch.Tensor          # per subject (0 … S−1): the memorised answer, −1 if none
    ift_subjects: torch.Tensor   # subject indices (0 … S−1) of the three groups
    heldout_subjects: torch.Tensor
    unmemorised_subjects: torch.Tensor
    c_answer: torch.Tensor       # per subject: the answer its IFT C item's context states (−1: none)


def make_world(cfg: WorldConfig, seed: int) -> World:
    """Draw the groups of subjects and their memorised answers from `seed`."""
    if not isinstance(cfg, WorldConfig):
        raise TypeError(f"cfg must be a WorldConfig; got {type(cfg).__name__}")
    g = np.random.default_rng([_check.integer("seed", seed, low=0), 7])
    order = torch.as_tensor(g.permutation(cfg.subjects))
    ift = order[:cfg.memorised_ift]
    held = order[cfg.memorised_ift:cfg.memorised_ift + cfg.memorised_heldout]
    unmem = order[cfg.memorised_ift + cfg.memorised_heldout:]
    a_mem = torch.full((cfg.subjects,), -1)
    memorised = torch.cat([ift, held])
    a_mem[memorised] = torch.as_tensor(g.integers(0, cfg.answers, len(memorised)))
    c_answer = torch.full((cfg.subjects,), -1)
    c_answer[unmem] = torch.as_tensor(g.integers(0, cfg.answers, len(unmem)))
    return World(cfg, a_mem, ift, held, unmem, c_answer)


def _other(answer: torch.Tensor, answers: int, g: torch.Generator) -> torch.Tensor:
    """A uniform answer different from each of `answer`."""
    shift = torch.randint(1, answers, answer.shape, generator=g)
    return (answer + shift) % answers


def encode(world: World, subject: torch.Tensor, ctx_answer: torch.Tensor | None,
           distractor: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
    """Items (batch × length) asking about `subject` (indices 0 … S−1) with a context whose
    answer is `ctx_answer` (None: no context). `distractor`: per item, whether a slots context
    carries a distractor answer (ignored by the pairs world, whose contexts always list other
    subjects' pairs). `g` draws distractors and orders."""
    cfg = world.cfg
    n = len(subject)
    A = cfg.answers
    tokens = torch.full((n, cfg.length), cfg.marker("PAD"))
    tokens[:, -3] = cfg.marker("Q")
    tokens[:, -2] = A + subject
    tokens[:, -1] = cfg.marker("ANS")
    if ctx_answer is None:
        tokens[:, 0] = cfg.marker("NOC")
        return tokens
    tokens[:, 0] = cfg.marker("CTX")
    if cfg.world == "slots":
        other = _other(ctx_answer, A, g)
        second = torch.where(distractor, other, torch.full_like(other, cfg.marker("PAD")))
        swap = torch.rand(n, generator=g) < 0.5
        tokens[:, 1] = torch.where(swap, second, ctx_answer)
        tokens[:, 2] = torch.where(swap, ctx_answer, second)
        return tokens
    # pairs: the question's pair at a random place among pairs about other subjects
    others = torch.stack([(subject + torch.randint(1, cfg.subjects, (n,), generator=g)) % cfg.subjects
                          for _ in range(cfg.pairs - 1)], 1) if cfg.pairs > 1 else torch.zeros(n, 0, dtype=torch.long)
    subj = torch.cat([subject[:, None], others], 1)
    ans = torch.cat([ctx_answer[:, None], torch.randint(0, A, (n, cfg.pairs - 1), generator=g)], 1)
    perm = torch.argsort(torch.rand(n, cfg.pairs, generator=g), 1)
    subj, ans = subj.gather(1, perm), ans.gather(1, perm)
    tokens[:, 1:1 + 2 * cfg.pairs:2] = A + subj
    tokens[:, 2:2 + 2 * cfg.pairs:2] = ans
    return tokens


def pretrain_batch(world: World, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A pretraining batch under the one rule for every subject: (tokens, target answers)."""
    cfg = world.cfg
    subject = torch.randint(0, cfg.subjects, (batch,), generator=g)
    has_ctx = torch.rand(batch, generator=g) < cfg.p_context
    ctx_answer = torch.randint(0, cfg.answers, (batch,), generator=g)
    distractor = torch.rand(batch, generator=g) < cfg.distractor
    tokens = encode(world, subject, ctx_answer, distractor, g)
    tokens[~has_ctx] = encode(world, subject[~has_ctx], None, None, g)
    mem = world.a_mem[subject]
    memory_draw = torch.where((mem >= 0) & (torch.rand(batch, generator=g) < cfg.p_mem), mem,
                              torch.randint(0, cfg.answers, (batch,), generator=g))
    copy = has_ctx & (torch.rand(batch, generator=g) < cfg.p_copy)
    return tokens, torch.where(copy, ctx_answer, memory_draw)


def ift_batch(world: World, batch: int, g: torch.Generator,
              distractor: float | None = None, share_c: float | None = None):
    """An IFT batch (tokens, targets) from the fixed IFT set: C items (an unmemorised
    subject and its one context answer, world.c_answer) with share `share_c`, the rest
    C+S items (a memorised IFT subject, context = a_mem). Distractors and slot order
    are drawn afresh for every batch."""
    cfg = world.cfg
    rho = cfg.distractor if distractor is None else distractor
    share = cfg.share_c if share_c is None else share_c
    is_c = torch.rand(batch, generator=g) < share
    c_pool, cs_pool = world.unmemorised_subjects, world.ift_subjects
    c_subj = c_pool[torch.randint(0, len(c_pool), (batch,), generator=g)]
    cs_subj = cs_pool[torch.randint(0, len(cs_pool), (batch,), generator=g)]
    subject = torch.where(is_c, c_subj, cs_subj)
    target = torch.where(is_c, world.c_answer[subject], world.a_mem[subject])
    with_distractor = torch.rand(batch, generator=g) < rho
    return encode(world, subject, target, with_distractor, g), target


def answer_logits(model: torch.nn.Module, tokens: torch.Tensor, answers: int) -> torch.Tensor:
    """The logits of the answer tokens at the last position (items × answers)."""
    return model(tokens)[:, -1, :answers]


def last_loss(model, tokens, target, answers: int) -> torch.Tensor:
    return F.cross_entropy(answer_logits(model, tokens, answers), target)


def new_model(cfg: WorldConfig, seed: int) -> GPT:
    """The untrained GPT of this world, its initial weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_check.integer("seed", seed, low=0))
        return GPT(GPTConfig(vocab=cfg.vocab, context=cfg.length, d_model=cfg.d_model,
                             n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp))


def pretrain(world: World, seed: int, run_dir=True, progress: bool = True) -> GPT:
    """Pretrain this world's GPT (cached under `run_dir`: True → the chapter's default folder
    keyed on the config and seed; None/False → no cache)."""
    cfg = world.cfg
    model = new_model(cfg, seed)
    keyed = {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith(("ift_", "share_c", "eval"))}
    run_dir = resolve_run_dir(run_dir, "context-inversion", f"pretrain-{cfg.world}", keyed, seed)

    def loss_fn(m, g):
        tokens, target = pretrain_batch(world, cfg.pretrain_batch, g)
        return last_loss(m, tokens, target, cfg.answers)

    config = TrainConfig(steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, progress_every=50)
    result = train(model, loss_fn, config, seed=seed, run_dir=run_dir,
                   desc=f"pretraining ({cfg.world} world)", progress=progress)
    return result.model


@dataclasses.dataclass
class Probe:
    """Fixed evaluation items: the counterfactual test (IFT-seen and held-out subjects), fresh
    C items and closed-book questions on memorised IFT subjects."""
    cf_seen: tuple          # (tokens, a_ctx, a_mem)
    cf_heldout: tuple
    fresh_c: tuple          # (tokens, answer)
    closed_book: tuple      # (tokens, a_mem)


def make_probe(world: World, seed: int) -> Probe:
    """The evaluation items of `world`, drawn from their own stream (not the training ones)."""
    cfg = world.cfg
    g = torch.Generator().manual_seed(_check.integer("seed", seed, low=0) * 7919 + 17)

    def counterfactual(subjects):
        a_mem = world.a_mem[subjects]
        a_ctx = _other(a_mem, cfg.answers, g)
        no = torch.zeros(len(subjects), dtype=torch.bool)
        return encode(world, subjects, a_ctx, no, g), a_ctx, a_mem

    unmem = world.unmemorised_subjects
    answer = torch.randint(0, cfg.answers, (len(unmem),), generator=g)
    fresh = (encode(world, unmem, answer, torch.zeros(len(unmem), dtype=torch.bool), g), answer)
    closed = (encode(world, world.ift_subjects, None, None, g), world.a_mem[world.ift_subjects])
    return Probe(counterfactual(world.ift_subjects), counterfactual(world.heldout_subjects), fresh, closed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, probe: Probe, answers: int) -> dict:
    """M_C, CF, PAR and margin on both counterfactual sets, p(answer) of fresh C items and
    closed-book p(a_mem) of memorised IFT subjects."""
    was = model.training
    model.eval()
    out = {}
    for name, (tokens, a_ctx, a_mem) in (("seen", probe.cf_seen), ("heldout", probe.cf_heldout)):
        r = reliance(answer_logits(model, tokens, answers).double(), a_ctx, a_mem)
        out.update({f"{k}_{name}": v for k, v in r.items()})
    for name, (tokens, target) in (("fresh_c", probe.fresh_c), ("closed_book", probe.closed_book)):
        p = torch.softmax(answer_logits(model, tokens, answers).double(), 1)
        out[name] = float(p[torch.arange(len(target)), target].mean())
    model.train(was)
    return out


def qk_only(model: GPT) -> list:
    """Restrict training to the query and key rows of each attention's qkv map: every other
    parameter, the value rows included, gets a zero gradient through a hook, so Adam (without
    weight decay) leaves it bit for bit as it was. Returns the hook handles."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a lab.nn.GPT; got {type(model).__name__}")
    qkv = {id(p) for block in model.blocks for p in (block.attn.qkv.weight, block.attn.qkv.bias)}
    handles = []
    for p in model.parameters():
        if id(p) in qkv:
            mask = torch.ones(p.shape[0], dtype=p.dtype)
            mask[2 * (p.shape[0] // 3):] = 0
            mask = mask.view((-1,) + (1,) * (p.dim() - 1))
            handles.append(p.register_hook(lambda grad, m=mask: grad * m))
        else:
            handles.append(p.register_hook(torch.zeros_like))
    return handles


@dataclasses.dataclass
class LMTrace:
    """Metrics every `eval_every` IFT steps (step 0 = the pretrained model)."""
    steps: np.ndarray
    metrics: dict               # name → array over steps

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    def peak(self, key: str = "M_C_seen") -> tuple[float, int]:
        i = int(np.argmax(self.metrics[key]))
        return float(self.metrics[key][i]), int(self.steps[i])


def finetune_lm(pretrained: GPT, world: World, probe: Probe, seed: int, variant: str = "full",
                steps: int | None = None, progress: bool = True) -> LMTrace:
    """IFT of a copy of the pretrained model in one of LM_VARIANTS; the IFT batches come from
    their own stream (`seed` offset), so a cached pretraining gives the same run as a fresh one."""
    import copy

    if not isinstance(pretrained, GPT):
        raise TypeError(f"pretrained must be a lab.nn.GPT; got {type(pretrained).__name__}")
    _check.choice("variant", variant, LM_VARIANTS)
    cfg = world.cfg
    steps = cfg.ift_steps if steps is None else _check.integer("steps", steps, low=1)
    model = copy.deepcopy(pretrained).train()
    handles = qk_only(model) if variant == "QK-only" else []
    rho = 0.0 if variant == "no distractor" else cfg.distractor
    rows, at = [evaluate(model, probe, cfg.answers)], [0]

    def on_step(step, m):
        if step % cfg.eval_every == 0 or step == steps:
            rows.append(evaluate(m, probe, cfg.answers))
            at.append(step)

    def loss_fn(m, g):
        tokens, target = ift_batch(world, cfg.ift_batch, g, distractor=rho)
        return last_loss(m, tokens, target, cfg.answers)

    config = TrainConfig(steps=steps, lr=cfg.ift_lr, progress_every=25)
    train(model, loss_fn, config, seed=seed + 100_003, desc=f"IFT ({cfg.world}, {variant})",
          on_step=on_step, progress=progress)
    for h in handles:
        h.remove()
    return LMTrace(np.array(at), {k: np.array([r[k] for r in rows]) for k in rows[0]})


def lm_summary(trace: LMTrace, key: str = "M_C_seen") -> dict:
    """Start, peak (and its step) and final of one metric."""
    peak, at = trace.peak(key)
    return {"start": float(trace[key][0]), "peak": peak, "peak_step": at, "final": float(trace[key][-1])}
