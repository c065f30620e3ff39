"""State space model layers: Mamba-2 (SSD) and Mamba-1 (selective scan), and a language model of them.

The computations they call live in :mod:`lab.kernels`: the torch references (conventions and
shapes are documented there) in :mod:`lab.kernels.ssd_reference`, the kernel dispatch in
:mod:`lab.kernels.ssd`. The layers build those functions' arguments themselves and call them
unchecked: a forward pass checks only the input's shape, never its values (that would sync a GPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _check
from ..kernels.ssd import mamba_chunk_scan
from ..kernels.ssd_reference import (
    apply_map,
    check_chunk,
    check_tensor,
    expand_groups,
    segsum,
    selective_materialize,
    selective_scan_ref,
    ssd_chunked,
    ssd_materialize,
    ssd_scan_ref,
)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹(x) = x + log(1 − e^{−x}), x > 0."""
    return x + torch.log(-torch.expm1(-x))


def _draw_dt(n: int, dt_min: float, dt_max: float, floor: float, generator=None) -> torch.Tensor:
    """Δ₀ ~ log-uniform[dt_min, dt_max], floored: the library's step-size init."""
    u = torch.rand(n, generator=generator)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt.clamp(min=floor)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y ⊙ SiLU(z)) · w: gate first, then normalise (Mamba-2's ``norm_before_gate=False``)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, y, z):
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


IMPLS = ("auto", "materialize", "chunked", "scan", "kernel")


class Mamba2(nn.Module):
    """A Mamba-2 mixer with the library's default initialisation.

    in_proj (no bias) → [z, x, B, C, δ]; causal depthwise conv (kernel `d_conv`, bias) + SiLU over
    [x, B, C]; Δ = softplus(δ + b), A = −exp(Â); SSD; out = out_proj(RMSNorm(y ⊙ SiLU(z))).
    `impl` picks the SSD computation: "materialize" (M·x, fastest on a CPU for short inputs),
    "chunked" (torch), "scan" (the recurrence), "kernel" (:func:`lab.kernels.ssd.mamba_chunk_scan`:
    Triton on CUDA), "auto" (materialize up to 256 tokens on the CPU, else the kernel dispatch).
    """

    def __init__(self, d_model: int, d_state: int = 128, headdim: int = 64, ngroups: int = 1,
                 expand: int = 2, d_conv: int = 4, chunk: int = 256, A_init_range=(1.0, 16.0),
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 impl: str = "auto"):
        super().__init__()
        self.d_model = _check.integer("d_model", d_model, low=1)
        self.d_state = _check.integer("d_state", d_state, low=1)
        self.headdim = _check.integer("headdim", headdim, low=1)
        self.expand = _check.integer("expand", expand, low=1)
        self.d_inner = self.expand * self.d_model
        if self.d_inner % self.headdim:
            raise ValueError(f"headdim must divide expand·d_model = {self.d_inner}; got {headdim}")
        self.nheads = self.d_inner // self.headdim
        self.ngroups = _check.integer("ngroups", ngroups, low=1)
        if self.nheads % self.ngroups:
            raise ValueError(f"ngroups must divide the number of heads {self.nheads}; got {ngroups}")
        self.d_conv = _check.integer("d_conv", d_conv, low=1)
        self.chunk = check_chunk(chunk)
        self.impl = _check.choice("impl", impl, IMPLS)
        lo, hi = A_init_range
        _check.real("A_init_range[0]", lo, low=0, low_open=True)
        _check.real("A_init_range[1]", hi, low=lo)
        G, N, H = self.ngroups, self.d_state, self.nheads
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * G * N + H, bias=False)
        conv_dim = self.d_inner + 2 * G * N
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        dt = _draw_dt(H, dt_min, dt_max, dt_init_floor)
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(lo, hi)))
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.dt_bias._no_reinit = True
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    # rows of in_proj and channels of the conv, by name
    def in_proj_slices(self) -> dict[str, slice]:
        d, GN = self.d_inner, self.ngroups * self.d_state
        return {"z": slice(0, d), "x": slice(d, 2 * d), "B": slice(2 * d, 2 * d + GN),
                "C": slice(2 * d + GN, 2 * d + 2 * GN), "dt": slice(2 * d + 2 * GN, 2 * d + 2 * GN + self.nheads)}

    def conv_slices(self) -> dict[str, slice]:
        d, GN = self.d_inner, self.ngroups * self.d_state
        return {"x": slice(0, d), "B": slice(d, d + GN), "C": slice(d + GN, d + 2 * GN)}

    def ssm_inputs(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SSM's inputs for `u` (b, T, d_model): x, dt (softplus'd), A, B, C, z, D."""
        u = check_tensor("u", u, 3, finite=False)
        if u.shape[-1] != self.d_model:
            raise ValueError(f"u must have last dimension d_model = {self.d_model}; got {u.shape[-1]}")
        b, T, _ = u.shape
        s = self.in_proj_slices()
        zxbcdt = self.in_proj(u)
        xBC = zxbcdt[..., s["x"].start:s["C"].stop]
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :T].transpose(1, 2))
        c = self.conv_slices()
        H, P, G, N = self.nheads, self.headdim, self.ngroups, self.d_state
        return {"x": xBC[..., c["x"]].reshape(b, T, H, P),
                "B": xBC[..., c["B"]].reshape(b, T, G, N),
                "C": xBC[..., c["C"]].reshape(b, T, G, N),
                "dt": F.softplus(zxbcdt[..., s["dt"]] + self.dt_bias),
                "A": -torch.exp(self.A_log.float()),
                "z": zxbcdt[..., s["z"]], "D": self.D}

    def attention_map(self, u: torch.Tensor, part: str = "full") -> torch.Tensor:
        """The layer's mixing matrix (b, H, T, T) for input `u`: "full" M, "cb" C·Bᵀ only, or
        "decay" exp(segsum(Δ·A)) only (the mask). D's skip connection is not included."""
        part = _check.choice("part", part, ("full", "cb", "decay"))
        s = self.ssm_inputs(u)
        H = self.nheads
        if part == "cb":
            return torch.einsum("bihn,bjhn->bhij", expand_groups(s["C"], H), expand_groups(s["B"], H)).tril()
        a = s["dt"] * s["A"]
        if part == "decay":
            return torch.exp(segsum.unchecked(a.transpose(1, 2)))
        return ssd_materialize.unchecked(a, s["B"], s["C"], dt=s["dt"])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.ssm_inputs(u)
        x, dt, A = s["x"], s["dt"], s["A"]
        b, T, H, P = x.shape
        impl = self.impl
        if impl == "auto":
            impl = "materialize" if (T <= 256 and not x.is_cuda) else "kernel"
        if impl == "materialize":
            y = apply_map(ssd_materialize.unchecked(dt * A, s["B"], s["C"]), x * dt[..., None])
        elif impl == "chunked":
            y = ssd_chunked.unchecked(x * dt[..., None], dt * A, s["B"], s["C"], self.chunk)[0]
        elif impl == "scan":
            y = ssd_scan_ref.unchecked(x * dt[..., None], dt * A, s["B"], s["C"])[0]
        else:
            y = mamba_chunk_scan.unchecked(x, dt, A, s["B"], s["C"], self.chunk)[0]
        y = y + x * s["D"][:, None]
        y = self.norm(y.reshape(b, T, H * P), s["z"])
        return self.out_proj(y)


class Mamba1(nn.Module):
    """A Mamba-1 (S6) mixer with the library's default initialisation (S4D-real A, Δ as in Mamba-2).

    in_proj → [x, z]; causal conv + SiLU on x; x_proj → [δ (rank r), B, C]; Δ = softplus(dt_proj(δ));
    selective scan; y ⊙ SiLU(z); out_proj. `impl`: "materialize" (per-channel maps), "scan", "auto".
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_scale: float = 1.0, impl: str = "auto"):
        super().__init__()
        self.d_model = _check.integer("d_model", d_model, low=1)
        self.d_state = _check.integer("d_state", d_state, low=1)
        self.expand = _check.integer("expand", expand, low=1)
        self.d_inner = self.expand * self.d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else _check.integer("dt_rank", dt_rank, low=1)
        self.impl = _check.choice("impl", impl, ("auto", "materialize", "scan"))
        d, N, r = self.d_inner, self.d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d, bias=False)
        self.conv1d = nn.Conv1d(d, d, d_conv, groups=d, padding=d_conv - 1)
        self.x_proj = nn.Linear(d, r + 2 * N, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        std = r ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(_draw_dt(d, dt_min, dt_max, dt_init_floor)))
        self.dt_proj.bias._no_reinit = True
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(d, d_model, bias=False)

    def x_proj_slices(self) -> dict[str, slice]:
        r, N = self.dt_rank, self.d_state
        return {"dt": slice(0, r), "B": slice(r, r + N), "C": slice(r + N, r + 2 * N)}

    def ssm_inputs(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        u = check_tensor("u", u, 3, finite=False)
        if u.shape[-1] != self.d_model:
            raise ValueError(f"u must have last dimension d_model = {self.d_model}; got {u.shape[-1]}")
        T = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :T].transpose(1, 2))
        s = self.x_proj_slices()
        dbc = self.x_proj(x)
        return {"x": x, "z": z, "delta": F.softplus(self.dt_proj(dbc[..., s["dt"]])),
                "A": -torch.exp(self.A_log.float()), "B": dbc[..., s["B"]], "C": dbc[..., s["C"]], "D": self.D}

    def attention_map(self, u: torch.Tensor) -> torch.Tensor:
        """Per-channel maps (b, d_inner, T, T); average over channels for a single picture."""
        s = self.ssm_inputs(u)
        return selective_materialize.unchecked(s["delta"], s["A"], s["B"], s["C"])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.ssm_inputs(u)
        impl = self.impl
        if impl == "auto":
            impl = "materialize" if u.shape[1] <= 128 else "scan"
        if impl == "materialize":
            M = selective_materialize.unchecked(s["delta"], s["A"], s["B"], s["C"])
            y = torch.einsum("bcij,bjc->bic", M, s["x"]) + s["x"] * s["D"]
        else:
            y = selective_scan_ref.unchecked(s["x"], s["delta"], s["A"], s["B"], s["C"], s["D"])[0]
        return self.out_proj(y * F.silu(s["z"]))


class SSMLM(nn.Module):
    """A language model of SSM mixers: embedding, pre-norm residual blocks h + mixer(RMSNorm(h)),
    final RMSNorm, untied head; no MLPs. ``mixer`` is "mamba2" or "mamba1"; `mixer_kw` go to it.
    Initialised like the library's LM wrapper (:meth:`reset_parameters`)."""

    def __init__(self, vocab: int, d_model: int, n_layer: int, mixer: str = "mamba2", **mixer_kw):
        super().__init__()
        self.vocab = _check.integer("vocab", vocab, low=2)
        self.n_layer = _check.integer("n_layer", n_layer, low=1)
        mixer = _check.choice("mixer", mixer, ("mamba2", "mamba1"))
        cls = Mamba2 if mixer == "mamba2" else Mamba1
        self.embedding = nn.Embedding(vocab, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layer))
        self.mixers = nn.ModuleList(cls(d_model, **mixer_kw) for _ in range(n_layer))
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The library's ``_init_weights``: zero Linear biases not flagged ``_no_reinit``, embedding
        N(0, 0.02²), out_proj re-drawn (Kaiming-uniform, a = √5) and divided by √n_layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None \
                    and not getattr(module.bias, "_no_reinit", False):
                module.bias.zero_()
        nn.init.normal_(self.embedding.weight, std=0.02)
        for mixer in self.mixers:
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight /= math.sqrt(self.n_layer)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(tokens) or tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
            raise TypeError("tokens must be an integer tensor of shape (batch, T)")
        h = self.embedding(tokens)
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        return self.head(self.norm_f(h))

    def layer_inputs(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The normalised input each mixer sees (for its attention map)."""
        out = []
        h = self.embedding(tokens)
        for norm, mixer in zip(self.norms, self.mixers):
            out.append(norm(h))
            h = h + mixer(out[-1])
        return out

    def attention_maps(self, tokens: torch.Tensor, part: str = "full") -> list[torch.Tensor]:
        """Each layer's map for `tokens`: (b, H, T, T) per Mamba-2 layer, (b, d_inner, T, T) per Mamba-1."""
        maps = []
        for u, mixer in zip(self.layer_inputs(tokens), self.mixers):
            maps.append(mixer.attention_map(u, part) if isinstance(mixer, Mamba2) else mixer.attention_map(u))
        return maps
