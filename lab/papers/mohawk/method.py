"""MOHAWK (Bick, Li, Xing, Kolter, Gu; arXiv 2408.10189): distil a Transformer into an SSM.

Both softmax attention and an SSM layer are *matrix mixers*: a causal T×T matrix applied to the
token sequence. MOHAWK distils a trained Transformer (the teacher) into a student whose attention
layers are replaced by a discrete Mamba-2 mixer, in three stages, each student layer fed the
teacher's own input to that layer (teacher forcing):

1. matrix orientation: the student mixer's materialised matrix T_S is fitted to the teacher's
   attention matrix A (un-squared Frobenius norm);
2. hidden-state alignment: the mixer's output is fitted to the attention branch's output
   (per-token L2 norm, un-squared);
3. weight transfer and knowledge distillation: the non-mixer weights come from the teacher and
   the whole student is trained on the teacher's logits (KL at temperature 1).

The book transfers the non-mixer weights *before* stage 1 (stage 2's frozen LayerNorm implies
they are already there). Conventions follow the official code ``goombalab/phi-mamba``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ... import _check
from ...kernels.ssd import ssd
from ...kernels.ssd_reference import (
    apply_map,
    check_chunk,
    check_tensor,
    expand_groups,
    ssd_chunked,
    ssd_materialize_discrete,
    ssd_scan_ref,
)
from ...nn.gpt import GPT, CausalSelfAttention, GPTConfig
from ...train import TrainConfig, TrainResult, train

IMPLS = ("auto", "materialize", "chunked", "scan", "kernel")
STAGES = (1, 2, 3)
STAGE2_TARGETS = ("mixer", "block")
INITS = ("torch", "gpt")


# ---------------------------------------------------------------------------------------------
# The student mixer: discrete Mamba-2 ("multi-head", no Δ on the input)
# ---------------------------------------------------------------------------------------------
def log_decay(a: torch.Tensor) -> torch.Tensor:
    """log α = −softplus(a): α = exp(−softplus(a)) = σ(−a) ∈ (0, 1), computed in log space."""
    return -F.softplus(a)


class DiscreteMamba2(nn.Module):
    """Phi-Mamba's mixer (``discrete_mamba2.py``), per block, input u (b, T, d_model).

    in_proj (no bias) → [x, B, C, z, a] of widths [d_in, G·N, G·N, d_in, H] (G = `n_qk_heads`
    groups of B and C, H = `n_v_heads` heads of width P = d_in/H; head h reads group ⌊h·G/H⌋);
    causal depthwise conv (kernel `d_conv`, bias, no activation) over [x, B, C];
    α_t = σ(−(a_t + b_a)) per token and head; S_t = α_t S_{t−1} + x_t B_tᵀ;
    y_t = S_t C_t + D x_t; out = out_proj(y ⊙ SiLU(z + b_z)).

    `a_bias` (b_a, a fixed per-head shift of a, not a parameter) is the book's: 0 is the
    official model (α ≈ ½ at initialisation), −4 a long memory (α ≈ 0.98).
    `impl` picks how y is computed: "materialize" (T·x), "chunked" (torch block decomposition),
    "scan" (the recurrence), "kernel" (:func:`lab.kernels.ssd.ssd`: Triton on CUDA), "auto"
    (materialize up to 256 tokens on the CPU, else the kernel dispatch).
    """

    def __init__(self, d_model: int, n_v_heads: int, n_qk_heads: int | None = None,
                 d_state: int = 16, expand: int = 1, d_conv: int = 4, chunk: int = 128,
                 a_bias: float = 0.0, impl: str = "auto"):
        super().__init__()
        self.d_model = _check.integer("d_model", d_model, low=1)
        self.n_v_heads = _check.integer("n_v_heads", n_v_heads, low=1)
        n_qk_heads = n_v_heads if n_qk_heads is None else n_qk_heads
        self.n_qk_heads = _check.integer("n_qk_heads", n_qk_heads, low=1)
        if n_v_heads % n_qk_heads:
            raise ValueError(f"n_qk_heads must divide n_v_heads = {n_v_heads}; got {n_qk_heads}")
        self.d_state = _check.integer("d_state", d_state, low=1)
        self.d_inner = _check.integer("expand", expand, low=1) * d_model
        if self.d_inner % n_v_heads:
            raise ValueError(f"n_v_heads must divide expand·d_model = {self.d_inner}; got {n_v_heads}")
        self.headdim = self.d_inner // n_v_heads
        self.d_conv = _check.integer("d_conv", d_conv, low=1)
        self.chunk = check_chunk(chunk)
        self.impl = _check.choice("impl", impl, IMPLS)
        _check.real("a_bias", a_bias)
        d, GN, H = self.d_inner, self.n_qk_heads * d_state, n_v_heads
        self.in_proj = nn.Linear(d_model, 2 * d + 2 * GN + H, bias=False)
        conv_dim = d + 2 * GN
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.D = nn.Parameter(torch.ones(H))
        self.z_bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("a_bias", torch.full((H,), float(a_bias)))
        self.out_proj = nn.Linear(d, d_model, bias=False)

    def in_proj_slices(self) -> dict[str, slice]:
        """Rows of in_proj by name, in the official order [x, B, C, z, a]."""
        d, GN = self.d_inner, self.n_qk_heads * self.d_state
        edges = [0, d, d + GN, d + 2 * GN, 2 * d + 2 * GN, 2 * d + 2 * GN + self.n_v_heads]
        return {k: slice(edges[i], edges[i + 1]) for i, k in enumerate("xBCza")}

    def _check_u(self, u: torch.Tensor) -> torch.Tensor:
        u = check_tensor("u", u, 3, finite=False)
        if u.shape[-1] != self.d_model:
            raise ValueError(f"u must have last dimension d_model = {self.d_model}; got {u.shape[-1]}")
        return u

    def _split(self, proj: torch.Tensor, xBC: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name the parts of one or more tokens' projections; the conv output `xBC` replaces x, B, C."""
        s, lead = self.in_proj_slices(), xBC.shape[:-1]
        G, N, H, P = self.n_qk_heads, self.d_state, self.n_v_heads, self.headdim
        d, GN = self.d_inner, G * N
        return {"x": xBC[..., :d].reshape(*lead, H, P),
                "B": xBC[..., d:d + GN].reshape(*lead, G, N),
                "C": xBC[..., d + GN:].reshape(*lead, G, N),
                "z": proj[..., s["z"]],
                "log_alpha": log_decay(proj[..., s["a"]] + self.a_bias)}

    def ssm_inputs(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (b, T, H, P), B and C (b, T, G, N), log α (b, T, H), z (b, T, d_in) for `u`."""
        u = self._check_u(u)
        T = u.shape[1]
        proj = self.in_proj(u)
        xBC = proj[..., :self.in_proj_slices()["C"].stop]
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :T].transpose(1, 2)   # causal: drop the tail
        return self._split(proj, xBC)

    def mixing_matrix(self, u: torch.Tensor) -> torch.Tensor:
        """The materialised mixer T (b, H, T, T), y^h = T^h x^h before the gate:
        T_ij = (C_i·B_j)·Π_{k=j+1}^{i} α_k for j < i, T_ii = C_i·B_i + D,
        zero above the diagonal."""
        s = self.ssm_inputs(u)
        la, B, C = s["log_alpha"], s["B"], s["C"]
        return ssd_materialize_discrete.unchecked(la, B, C, self.D)

    def decays(self, u: torch.Tensor) -> torch.Tensor:
        """α (b, T, H): how much of its state each head keeps at each token."""
        return self.ssm_inputs(u)["log_alpha"].exp()

    def ssm_output(self, u: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """y (b, T, H, P) = the SSM's output plus D x, before the gate and out_proj."""
        impl = self.impl if impl is None else _check.choice("impl", impl, IMPLS)
        s = self.ssm_inputs(u)
        x, la, B, C = s["x"], s["log_alpha"], s["B"], s["C"]
        if impl == "auto":
            impl = "materialize" if (x.shape[1] <= 256 and not x.is_cuda) else "kernel"
        if impl == "materialize":
            return apply_map(ssd_materialize_discrete.unchecked(la, B, C, self.D), x)
        if impl == "chunked":
            y = ssd_chunked.unchecked(x, la, B, C, self.chunk)[0]
        elif impl == "scan":
            y = ssd_scan_ref.unchecked(x, la, B, C)[0]
        else:
            y = ssd.unchecked(x, la, B, C, self.chunk)[0]
        return y + x * self.D[:, None]

    def gate_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """out_proj(y ⊙ SiLU(z + b_z)), heads merged."""
        y = y.reshape(*y.shape[:-2], self.d_inner)
        return self.out_proj(y * F.silu(z + self.z_bias))

    def forward(self, u: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        y = self.ssm_output(u, impl)
        return self.gate_out(y, self.in_proj(u)[..., self.in_proj_slices()["z"]])

    # one token at a time ----------------------------------------------------------------------
    def initial_state(self, batch: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        """Zero conv window (b, conv channels, d_conv − 1) and SSM state (b, H, P, N)."""
        batch = _check.integer("batch", batch, low=1)
        w = self.conv1d.weight
        dtype, device = dtype or w.dtype, device or w.device
        return {"conv": torch.zeros(batch, w.shape[0], self.d_conv - 1, dtype=dtype, device=device),
                "ssm": torch.zeros(batch, self.n_v_heads, self.headdim, self.d_state, dtype=dtype,
                                   device=device)}

    def step(self, u_t: torch.Tensor, state: dict[str, torch.Tensor]):
        """One token u_t (b, d_model) from a carried `state`: returns (out_t, new state)."""
        u_t = check_tensor("u_t", u_t, 2, finite=False)
        if u_t.shape[-1] != self.d_model:
            raise ValueError(f"u_t must have last dimension d_model = {self.d_model}; got {u_t.shape[-1]}")
        proj = self.in_proj(u_t)
        window = torch.cat([state["conv"], proj[:, :self.in_proj_slices()["C"].stop, None]], dim=-1)
        xBC = (window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias
        s = self._split(proj, xBC)
        H = self.n_v_heads
        B, C = expand_groups(s["B"][:, None], H)[:, 0], expand_groups(s["C"][:, None], H)[:, 0]
        S = s["log_alpha"].exp()[..., None, None] * state["ssm"] + s["x"][..., None] * B[:, :, None]
        y = torch.einsum("bhpn,bhn->bhp", S, C) + s["x"] * self.D[:, None]
        return self.gate_out(y, s["z"]), {"conv": window[..., 1:], "ssm": S}


# ---------------------------------------------------------------------------------------------
# Teacher and student: Phi's parallel block around a mixer
# ---------------------------------------------------------------------------------------------
def attention_probs(attn: CausalSelfAttention, u: torch.Tensor) -> torch.Tensor:
    """The teacher's post-softmax attention A (b, h, T, T) = softmax(QKᵀ/√d_h + causal mask)."""
    b, T, d = u.shape
    q, k, _ = attn.qkv(u).split(d, dim=2)
    q, k = (z.view(b, T, attn.n_heads, -1).transpose(1, 2) for z in (q, k))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    above = torch.ones(T, T, dtype=torch.bool, device=u.device).triu(1)
    return scores.masked_fill(above, -torch.inf).softmax(-1)


def attention_branch(attn: CausalSelfAttention, u: torch.Tensor):
    """(A, Dense(A·V)): the attention matrices and the attention branch's output, from the same
    weights that :class:`lab.nn.gpt.CausalSelfAttention` runs through a fused kernel."""
    b, T, d = u.shape
    A = attention_probs(attn, u)
    v = attn.qkv(u)[..., 2 * d:].view(b, T, attn.n_heads, -1).transpose(1, 2)
    return A, attn.proj((A @ v).transpose(1, 2).reshape(b, T, d))


class ParallelBlock(nn.Module):
    """Phi's block: H ← H + Mixer(LN(H)) + MLP(LN(H)), one LayerNorm feeding both branches."""

    def __init__(self, cfg: GPTConfig, mixer: nn.Module):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.d_mlp, cfg.d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.ln(h)
        return h + self.mixer(u) + self.mlp(u)


class ParallelLM(nn.Module):
    """Token + learned position embeddings, parallel blocks, final LayerNorm, LM head with bias.
    Teacher and student share this skeleton (and so the names of every non-mixer tensor).
    `init`: "torch" keeps PyTorch's default initialisation (embeddings N(0, 1)), the book's
    recipe at tiny scale; "gpt" uses ``lab.nn.GPT``'s N(0, 0.02) for embeddings, MLPs and head."""

    def __init__(self, cfg: GPTConfig, mixers: list[nn.Module], init: str = "torch"):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig; got {type(cfg).__name__}")
        if len(mixers) != cfg.n_layers:
            raise ValueError(f"mixers must hold n_layers = {cfg.n_layers} modules; got {len(mixers)}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(ParallelBlock(cfg, m) for m in mixers)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab)
        if _check.choice("init", init, INITS) == "gpt":
            for module in (self.tok, self.pos, self.head, *(b.mlp for b in self.blocks)):
                module.apply(GPT._init)      # the mixers keep their own initialisation

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be an integer tensor of shape (batch, T); got {tokens!r:.60}")
        if tokens.shape[1] > self.cfg.context:
            raise ValueError(f"tokens must have length ≤ context = {self.cfg.context}; got {tokens.shape[1]}")
        return self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def phi_teacher(cfg: GPTConfig, init: str = "torch") -> ParallelLM:
    """The teacher: Phi-style parallel blocks of causal softmax attention (``lab.nn.gpt``'s
    layer; `init` as :class:`ParallelLM`, "gpt" also initialising attention as ``lab.nn.GPT``)."""
    _check.choice("init", init, INITS)
    mixers = [CausalSelfAttention(cfg) for _ in range(cfg.n_layers)]
    if init == "gpt":
        for m in mixers:
            m.apply(GPT._init)
    return ParallelLM(cfg, mixers, init)


def phi_mamba(cfg: GPTConfig, d_state: int = 16, n_qk_heads: int | None = None, expand: int = 1,
              d_conv: int = 4, a_bias: float = 0.0, chunk: int = 128, impl: str = "auto",
              init: str = "torch") -> ParallelLM:
    """The student: the teacher's skeleton with a :class:`DiscreteMamba2` of H_v = the teacher's
    heads in each block (PyTorch's default init in the mixer, as the official code; `init` for
    the rest, as :class:`ParallelLM`)."""
    mixers = [DiscreteMamba2(cfg.d_model, cfg.n_heads, n_qk_heads, d_state, expand, d_conv, chunk,
                             a_bias, impl) for _ in range(cfg.n_layers)]
    return ParallelLM(cfg, mixers, init)


@dataclasses.dataclass
class Trace:
    """What the teacher shows the student for one batch: each block's input H^l (l = 0 … L, the
    last being the final hidden state), attention matrices A^l (b, h, T, T), attention-branch
    outputs Dense(A^l V^l) and the logits."""
    hidden: list[torch.Tensor]
    maps: list[torch.Tensor]
    outputs: list[torch.Tensor]
    logits: torch.Tensor


def _is_teacher(model) -> bool:
    return isinstance(model, ParallelLM) and all(isinstance(b.mixer, CausalSelfAttention) for b in model.blocks)


def _is_student(model) -> bool:
    return isinstance(model, ParallelLM) and all(isinstance(b.mixer, DiscreteMamba2) for b in model.blocks)


def _trace_args(teacher, tokens):
    if not _is_teacher(teacher):
        raise TypeError(f"teacher must be a ParallelLM of attention blocks (phi_teacher); got {type(teacher).__name__}")


@_check.checked(_trace_args)
@torch.no_grad()
def teacher_trace(teacher: ParallelLM, tokens: torch.Tensor) -> Trace:
    """Run the frozen teacher once, keeping what the three stages fit (no gradient)."""
    h = teacher.embed(tokens)
    hidden, maps, outputs = [h], [], []
    for block in teacher.blocks:
        u = block.ln(h)
        A, o = attention_branch(block.mixer, u)
        h = h + o + block.mlp(u)
        hidden.append(h)
        maps.append(A)
        outputs.append(o)
    return Trace(hidden, maps, outputs, teacher.head(teacher.ln_f(h)))


# ---------------------------------------------------------------------------------------------
# The three losses
# ---------------------------------------------------------------------------------------------
def _maps_args(student_maps, teacher_maps):
    check_tensor("student_maps", student_maps, 4, finite=False)
    check_tensor("teacher_maps", teacher_maps, 4, finite=False)
    (b, H, T, T2), (tb, tH, tT, tT2) = student_maps.shape, teacher_maps.shape
    if T != T2 or tT != tT2:
        raise ValueError(f"student_maps and teacher_maps must be square (b, H, T, T); got "
                         f"{tuple(student_maps.shape)} and {tuple(teacher_maps.shape)}")
    if H != tH:
        raise ValueError(f"student_maps has H = {H} heads but teacher_maps has {tH}: the student's "
                         "value heads must equal the teacher's attention heads")
    if T != tT or b != tb:
        raise ValueError(f"teacher_maps must have the batch and sequence length of student_maps "
                         f"(b, T) = {(b, T)}; got {(tb, tT)}")
    if _check.reads_values(teacher_maps) and teacher_maps.triu(1).abs().max() > 0:
        raise ValueError("teacher_maps must be causal (zero above the diagonal); it is not")


@_check.checked(_maps_args)
def matrix_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """Stage 1's loss for one layer: mean over (b, h) of ‖T_S − A‖_F, the norm *not* squared."""
    return torch.linalg.matrix_norm(student_maps - teacher_maps).mean()


def _pair_args(student_out, teacher_out):
    check_tensor("student_out", student_out, student_out.dim() if torch.is_tensor(student_out) else 3,
                 finite=False)
    check_tensor("teacher_out", teacher_out, student_out.dim(), finite=False)
    if student_out.shape != teacher_out.shape:
        raise ValueError(f"teacher_out must have the shape of student_out {tuple(student_out.shape)}; "
                         f"got {tuple(teacher_out.shape)}")


@_check.checked(_pair_args)
def hidden_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Stage 2's loss for one layer: mean over (b, t) of ‖o_S(t) − o_T(t)‖₂, not squared."""
    return (student_out - teacher_out).norm(dim=-1).mean()


def _kd_args(student_logits, teacher_logits):
    _pair_args(student_logits, teacher_logits)


@_check.checked(_kd_args)
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Stage 3's loss: mean over tokens of KL(p_T ‖ p_S) at temperature 1 (the book's choice)."""
    log_t, log_s = teacher_logits.log_softmax(-1), student_logits.log_softmax(-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def _stage_args(student, trace, **_):
    if not _is_student(student):
        raise TypeError(f"student must be a ParallelLM of DiscreteMamba2 blocks (phi_mamba); "
                        f"got {type(student).__name__}")
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a Trace (teacher_trace); got {type(trace).__name__}")
    if len(trace.maps) != len(student.blocks):
        raise ValueError(f"trace has {len(trace.maps)} layers but the student has {len(student.blocks)}")
    heads = trace.maps[0].shape[1]
    if student.blocks[0].mixer.n_v_heads != heads:
        raise ValueError(f"student has n_v_heads = {student.blocks[0].mixer.n_v_heads} but the teacher "
                         f"has {heads} attention heads: they must be equal")


@_check.checked(_stage_args)
def stage1_losses(student: ParallelLM, trace: Trace) -> torch.Tensor:
    """Matrix orientation, per layer (L,): layer l's mixer, fed LN(H^l) of the
    *teacher*, against A^l. Only the mixers run (the MLP branch is skipped);
    D is part of T_S."""
    losses = []
    for block, h, A in zip(student.blocks, trace.hidden, trace.maps):
        T_S = block.mixer.mixing_matrix(block.ln(h))     # teacher-forced input
        losses.append(matrix_loss.unchecked(T_S, A))
    return torch.stack(losses)


@_check.checked(_stage_args)
def stage2_losses(student: ParallelLM, trace: Trace, target: str = "mixer") -> torch.Tensor:
    """Hidden-state alignment, per layer (L,), teacher-forced: "mixer" fits the mixer branch to the
    attention branch's output; "block" fits the whole block's output to H^{l+1}."""
    target = _check.choice("target", target, STAGE2_TARGETS)
    losses = []
    for l, block in enumerate(student.blocks):
        h = trace.hidden[l]
        if target == "mixer":
            losses.append(hidden_loss.unchecked(block.mixer(block.ln(h)), trace.outputs[l]))
        else:
            losses.append(hidden_loss.unchecked(block(h), trace.hidden[l + 1]))
    return torch.stack(losses)


@_check.checked(_stage_args)
def stage3_loss(student: ParallelLM, trace: Trace, tokens: torch.Tensor) -> torch.Tensor:
    """Knowledge distillation end to end: the whole student on the teacher's logits."""
    return kd_loss.unchecked(student(tokens), trace.logits)


# ---------------------------------------------------------------------------------------------
# Weight transfer, freezing, and a stage as a training run
# ---------------------------------------------------------------------------------------------
def is_mixer_tensor(name: str) -> bool:
    return ".mixer." in f".{name}"


def _transfer_args(teacher, student):
    _trace_args(teacher, None)
    if not _is_student(student):
        raise TypeError(f"student must be a ParallelLM of DiscreteMamba2 blocks; got {type(student).__name__}")
    t, s = teacher.state_dict(), student.state_dict()
    for name, value in t.items():
        if not is_mixer_tensor(name) and (name not in s or s[name].shape != value.shape):
            raise ValueError(f"student has no tensor {name!r} of shape {tuple(value.shape)} to take "
                             "from the teacher: build it with phi_mamba(teacher.cfg)")


@_check.checked(_transfer_args)
@torch.no_grad()
def transfer_weights(teacher: ParallelLM, student: ParallelLM) -> list[str]:
    """Copy every non-mixer tensor (embeddings, LayerNorms, MLPs, final LN, head) from the teacher
    into the student; returns their names."""
    names = [n for n in teacher.state_dict() if not is_mixer_tensor(n)]
    target = student.state_dict()
    for name in names:
        target[name].copy_(teacher.state_dict()[name])
    return names


@contextlib.contextmanager
def trainable_for(student: ParallelLM, stage: int):
    """Inside: stages 1–2 leave only the mixers trainable, stage 3 everything; restored after."""
    stage = _check.choice("stage", stage, STAGES)
    saved = {n: p.requires_grad for n, p in student.named_parameters()}
    for name, p in student.named_parameters():
        p.requires_grad_(stage == 3 or is_mixer_tensor(name))
    try:
        yield student
    finally:
        for name, p in student.named_parameters():
            p.requires_grad_(saved[name])


def stage_loss_fn(stage: int, teacher: ParallelLM, batch: Callable[[torch.Generator], torch.Tensor],
                  stage2_target: str = "mixer") -> Callable:
    """``loss_fn(student, generator)`` for :func:`lab.train.train`: a batch of tokens from
    ``batch(generator)``, the frozen teacher's trace, and the stage's loss (summed over layers)."""
    stage = _check.choice("stage", stage, STAGES)
    stage2_target = _check.choice("stage2_target", stage2_target, STAGE2_TARGETS)

    def loss_fn(student, generator):
        tokens = batch(generator)
        trace = teacher_trace.unchecked(teacher, tokens)
        if stage == 1:
            return stage1_losses.unchecked(student, trace).sum()
        if stage == 2:
            return stage2_losses.unchecked(student, trace, stage2_target).sum()
        return stage3_loss.unchecked(student, trace, tokens)
    return loss_fn


def run_stage(stage: int, student: ParallelLM, teacher: ParallelLM,
              batch: Callable[[torch.Generator], torch.Tensor], config: TrainConfig, *, seed: int,
              stage2_target: str = "mixer", **train_kw) -> TrainResult:
    """One MOHAWK stage as a training run of the student (frozen teacher in ``eval()``); stages
    1–2 update only the mixers. `train_kw` go to :func:`lab.train.train`."""
    if not _is_teacher(teacher):
        raise TypeError(f"teacher must be a phi_teacher model; got {type(teacher).__name__}")
    if not _is_student(student):
        raise TypeError(f"student must be a phi_mamba model; got {type(student).__name__}")
    teacher.eval().requires_grad_(False)
    loss_fn = stage_loss_fn(stage, teacher, batch, stage2_target)
    with trainable_for(student, stage):
        return train(student, loss_fn, config, seed=seed, **train_kw)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def matrix_errors(student: ParallelLM, teacher: ParallelLM, tokens: torch.Tensor) -> torch.Tensor:
    """Per layer (L,): mean over (b, h) of ‖T_S − A‖_F, teacher-forced (stage 1's loss per layer)."""
    return stage1_losses(student, teacher_trace(teacher, tokens))


@torch.no_grad()
def hidden_errors(student: ParallelLM, teacher: ParallelLM, tokens: torch.Tensor) -> torch.Tensor:
    """Per layer (L,): rel₂ = ‖o_S − o_T‖ / ‖o_T‖ of the mixer branch, teacher-forced."""
    trace = teacher_trace(teacher, tokens)
    if not _is_student(student):
        raise TypeError(f"student must be a phi_mamba model; got {type(student).__name__}")
    return torch.stack([(b.mixer(b.ln(h)) - o).norm() / o.norm()
                        for b, h, o in zip(student.blocks, trace.hidden, trace.outputs)])


# ---------------------------------------------------------------------------------------------
# Which structured matrix class can fit an attention matrix? (the blog's part-I argument)
# ---------------------------------------------------------------------------------------------
MATRIX_CLASSES = ("ssd", "linear_attention", "toeplitz", "low_rank")


def _class_params(cls: str, n: int, T: int, rank: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape):
        return (0.3 * torch.randn(n, *shape, generator=g, dtype=torch.float64)).requires_grad_()
    if cls == "ssd":
        return {"C": r(T, rank), "B": r(T, rank), "a": r(T)}
    if cls == "toeplitz":
        return {"t": r(T)}
    return {"Q": r(T, rank), "K": r(T, rank)}


def class_matrix(cls: str, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal matrices (n, T, T) of class `cls` with parameters `p` (leading dimension n):
    "ssd" mask(α) ∘ C·Bᵀ, α_t = σ(a_t) (semiseparable, the discrete Mamba-2 matrix, D folded in);
    "linear_attention" φ(Q)φ(K)ᵀ with φ = elu + 1, causal and row-normalised (Katharopoulos et al.);
    "toeplitz" T_ij = t_{i−j} (a causal convolution); "low_rank" the lower triangle of Q·Kᵀ."""
    cls = _check.choice("cls", cls, MATRIX_CLASSES)
    if cls == "toeplitz":
        t = p["t"]
        i = torch.arange(t.shape[-1])
        lag = i[:, None] - i[None, :]
        return torch.where(lag >= 0, t[:, lag.clamp(min=0)], torch.zeros((), dtype=t.dtype))
    if cls == "ssd":
        cum = F.logsigmoid(p["a"]).cumsum(-1)
        decay = (cum[:, :, None] - cum[:, None, :]).tril().exp().tril()
        return decay * (p["C"] @ p["B"].transpose(-1, -2))
    if cls == "low_rank":
        return (p["Q"] @ p["K"].transpose(-1, -2)).tril()
    scores = ((F.elu(p["Q"]) + 1) @ (F.elu(p["K"]) + 1).transpose(-1, -2)).tril()
    return scores / scores.sum(-1, keepdim=True)


def class_size(cls: str, T: int, rank: int) -> int:
    """Number of free parameters of class `cls` for length T and rank `rank`."""
    cls = _check.choice("cls", cls, MATRIX_CLASSES)
    return {"ssd": 2 * T * rank + T, "toeplitz": T}.get(cls, 2 * T * rank)


def _fit_args(target, cls, rank=4, steps=300, lr=0.05, seed=0):
    check_tensor("target", target, 3, finite=True)
    if target.shape[-1] != target.shape[-2]:
        raise ValueError(f"target must hold square (n, T, T) maps; got {tuple(target.shape)}")
    if target.triu(1).abs().max() > 0:
        raise ValueError("target must be causal (zero above the diagonal); it is not")
    _check.choice("cls", cls, MATRIX_CLASSES)
    _check.integer("rank", rank, low=1)
    _check.integer("steps", steps, low=1)
    _check.real("lr", lr, low=0, low_open=True)


@_check.checked(_fit_args)
def fit_class(target: torch.Tensor, cls: str, rank: int = 4, steps: int = 300, lr: float = 0.05,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit each of n causal maps `target` (n, T, T) with a matrix of class `cls` by Adam on the
    Frobenius error (fp64, the maps fitted independently in one batch). Returns (the fitted
    matrices, their relative errors ‖fit − target‖_F / ‖target‖_F, shape (n,))."""
    target = target.detach().to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    p = _class_params(cls, target.shape[0], target.shape[-1], rank, g)
    opt = torch.optim.Adam(p.values(), lr=lr)
    for _ in range(steps):
        loss = torch.linalg.matrix_norm(class_matrix(cls, p) - target).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fit = class_matrix(cls, p)
        return fit, torch.linalg.matrix_norm(fit - target) / torch.linalg.matrix_norm(target)
