"""State space model layers: Mamba-2 (SSD) and Mamba-1 (selective scan), with their references.

Conventions (the same as the Mamba-2 library): x (b, T, H, P), Δ (b, T, H), A (H,), B and C
(b, T, G, N) with G dividing H, D (H,) or (H, P), states (b, H, P, N). The core primitive takes a
pre-scaled input X and a per-token log-decay a (b, T, H): Mamba-2 passes X = Δ⊙x, a = Δ·A.

    S_t = exp(a_t) S_{t−1} + X_t B_tᵀ,    y_t = S_t C_t

Three computations of it, tested equal: :func:`ssd_scan_ref` (the recurrence, one step at a
time), :func:`ssd_chunked` (the block decomposition of Mamba-2: quadratic inside a chunk, a
recurrence over chunk states between chunks) and :func:`ssd_materialize` (the lower-triangular
mixing matrix M, y = M X: the "attention map" of the layer).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _check


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _tensor(name: str, value, ndim: int) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {tuple(value.shape)}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {value.dtype}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return value


def check_ssd_inputs(X, a, B, C, initial_state=None):
    """Validate the core primitive's arguments; return (b, T, H, P, G, N)."""
    X, a = _tensor("X", X, 4), _tensor("a", a, 3)
    B, C = _tensor("B", B, 4), _tensor("C", C, 4)
    b, T, H, P = X.shape
    if a.shape != (b, T, H):
        raise ValueError(f"a must have shape (b, T, H) = {(b, T, H)} to match X; got {tuple(a.shape)}")
    if B.shape[:2] != (b, T):
        raise ValueError(f"B must have shape (b, T, G, N) with (b, T) = {(b, T)}; got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C must have the shape of B {tuple(B.shape)}; got {tuple(C.shape)}")
    G, N = B.shape[2], B.shape[3]
    if G < 1 or H % G:
        raise ValueError(f"B's groups G = {G} must divide the number of heads H = {H}")
    if initial_state is not None:
        _tensor("initial_state", initial_state, 4)
        if initial_state.shape != (b, H, P, N):
            raise ValueError(f"initial_state must have shape (b, H, P, N) = {(b, H, P, N)}; "
                             f"got {tuple(initial_state.shape)}")
    return b, T, H, P, G, N


def _heads(BC: torch.Tensor, H: int) -> torch.Tensor:
    """(b, T, G, N) → (b, T, H, N): heads h·G/H … share group g."""
    return BC.repeat_interleave(H // BC.shape[2], dim=2)


def check_chunk(chunk) -> int:
    chunk = _check.integer("chunk", chunk, low=1)
    if chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two; got {chunk}")
    return chunk


# ---------------------------------------------------------------------------------------------
# The three references
# ---------------------------------------------------------------------------------------------
def segsum(a: torch.Tensor) -> torch.Tensor:
    """S_ij = Σ_{k=j+1}^{i} a_k for i ≥ j (so S_ii = 0), −∞ above the diagonal; over the last axis.

    The stable masked form: a cumulative sum of a masked copy, not a difference of two cumsums
    (which cancels catastrophically on long inputs).
    """
    if not torch.is_tensor(a) or a.dim() < 1:
        raise TypeError(f"a must be a torch.Tensor with at least one dimension; got {type(a).__name__}")
    return _segsum(_tensor("a", a, a.dim()))


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """:func:`segsum` without the input checks (for callers that checked already)."""
    T = a.shape[-1]
    x = a[..., None].expand(*a.shape, T)                       # x[..., i, j] = a_i
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    x = x.masked_fill(~below, 0)
    out = torch.cumsum(x, dim=-2)                              # Σ_{k ≤ i, k > j} a_k
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return out.masked_fill(~keep, -torch.inf)


def ssd_scan_ref(X, a, B, C, initial_state=None):
    """The recurrence, token by token (the spec). Returns y (b, T, H, P) and the final state."""
    b, T, H, P, G, N = check_ssd_inputs(X, a, B, C, initial_state)
    Bh, Ch = _heads(B, H), _heads(C, H)
    S = (initial_state if initial_state is not None
         else X.new_zeros(b, H, P, N))
    ys = []
    for t in range(T):
        S = torch.exp(a[:, t])[..., None, None] * S + X[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    return torch.stack(ys, dim=1), S


def ssd_chunked(X, a, B, C, chunk: int = 64, initial_state=None):
    """The chunked SSD algorithm (Mamba-2, §6 of arXiv 2405.21060); pads T to a multiple of `chunk`.

    1. inside each chunk: y = (C Bᵀ ∘ exp(segsum a)) X, a small masked attention;
    2. each chunk's own final state: Σ_s exp(a_{s+1} + … + a_end) X_s B_sᵀ;
    3. between chunks: the chunk states passed along with each chunk's total decay;
    4. the state entering a chunk read out by C, decayed to each position.
    Returns y (b, T, H, P) and the final state (b, H, P, N).
    """
    b, T, H, P, G, N = check_ssd_inputs(X, a, B, C, initial_state)
    Q = check_chunk(chunk)
    pad = (-T) % Q
    if pad:   # a = 0 and X = B = C = 0 on padding: the state passes through unchanged
        X = F.pad(X, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // Q
    Xc = X.reshape(b, c, Q, H, P)
    Bc = _heads(B, H).reshape(b, c, Q, H, N)
    Cc = _heads(C, H).reshape(b, c, Q, H, N)
    ac = a.reshape(b, c, Q, H).transpose(2, 3)                 # (b, c, H, Q)
    cum = torch.cumsum(ac, dim=-1)
    # 1. intra-chunk: a masked attention inside each chunk (pairwise products first: batched matmuls)
    scores = torch.einsum("bclhn,bcshn->bchls", Cc, Bc) * torch.exp(_segsum(ac))
    y_diag = torch.einsum("bchls,bcshp->bclhp", scores, Xc)
    # 2. chunk states
    decay_to_end = torch.exp(cum[..., -1:] - cum).transpose(2, 3)   # (b, c, Q, H)
    states = torch.einsum("bclhp,bclhn->bchpn", Xc * decay_to_end[..., None], Bc)
    # 3. state passing between chunks
    init = initial_state if initial_state is not None else X.new_zeros(b, H, P, N)
    states = torch.cat([init[:, None], states], dim=1)         # (b, c+1, H, P, N)
    chunk_decay = torch.exp(_segsum(F.pad(cum[..., -1].transpose(1, 2), (1, 0))))   # (b, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final = states[:, :-1], states[:, -1]
    # 4. read the entering state out
    y_off = torch.einsum("bclhn,bchpn->bclhp", Cc, entering) * torch.exp(cum).transpose(2, 3)[..., None]
    y = (y_diag + y_off).reshape(b, c * Q, H, P)[:, :T]
    return y, final


def ssd_materialize(a, B, C, dt=None, D=None):
    """The mixing matrix M (b, H, T, T) with y_{:,h} = M^h x_{:,h} (+ D on the diagonal if given).

    M^h_ij = (C_i·B_j) · exp(a_{j+1} + … + a_i) · Δ_j for j ≤ i, else 0. Without `dt` the column
    scale is 1 (the core primitive: y = M X with X = Δ⊙x). `D` (H,) adds D_h to the diagonal.
    """
    a = _tensor("a", a, 3)
    B, C = _tensor("B", B, 4), _tensor("C", C, 4)
    b, T, H = a.shape
    if B.shape[:2] != (b, T) or C.shape != B.shape or H % B.shape[2]:
        raise ValueError(f"B and C must have shape (b, T, G, N) with (b, T) = {(b, T)} and G dividing "
                         f"H = {H}; got {tuple(B.shape)} and {tuple(C.shape)}")
    CB = torch.einsum("bign,bjgn->bgij", C, B).repeat_interleave(H // B.shape[2], dim=1)   # per group
    M = CB * torch.exp(_segsum(a.transpose(1, 2)))
    if dt is not None:
        dt = _tensor("dt", dt, 3)
        if dt.shape != a.shape:
            raise ValueError(f"dt must have the shape of a {tuple(a.shape)}; got {tuple(dt.shape)}")
        M = M * dt.transpose(1, 2)[:, :, None, :]
    if D is not None:
        D = _tensor("D", D, 1)
        if D.shape != (H,):
            raise ValueError(f"D must have shape (H,) = ({H},) to sit on the map's diagonal; got {tuple(D.shape)}")
        M = M + torch.diag_embed(D[None, :, None].expand(b, H, T))
    return M


def ssd_materialize_discrete(log_alpha, B, C, D=None):
    """M for a discrete-time SSM with per-token log-decay `log_alpha` (b, T, H) and no step size:
    S_t = α_t S_{t−1} + x_t B_tᵀ (Phi-Mamba's variant)."""
    return ssd_materialize(log_alpha, B, C, dt=None, D=D)


def apply_map(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y_{b,i,h,p} = Σ_j M_{b,h,i,j} x_{b,j,h,p}."""
    return torch.einsum("bhij,bjhp->bihp", M, x)


def selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None):
    """Mamba-1's selective scan (Euler input scaling), one step at a time.

    u, delta (b, T, d); A (d, N); B, C (b, T, N) shared by all channels; D (d,).
    s_{t,c} = exp(Δ_{t,c} A_c) ⊙ s_{t−1,c} + Δ_{t,c} u_{t,c} B_t,  y_{t,c} = ⟨s_{t,c}, C_t⟩ + D_c u_{t,c}.
    Returns y (b, T, d) and the final state (b, d, N).
    """
    u, delta = _tensor("u", u, 3), _tensor("delta", delta, 3)
    A, B, C = _tensor("A", A, 2), _tensor("B", B, 3), _tensor("C", C, 3)
    b, T, d = u.shape
    N = A.shape[1]
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u {tuple(u.shape)}; got {tuple(delta.shape)}")
    if A.shape[0] != d:
        raise ValueError(f"A must have shape (d, N) with d = {d}; got {tuple(A.shape)}")
    if B.shape != (b, T, N) or C.shape != (b, T, N):
        raise ValueError(f"B and C must have shape (b, T, N) = {(b, T, N)}; got {tuple(B.shape)}, {tuple(C.shape)}")
    s = initial_state if initial_state is not None else u.new_zeros(b, d, N)
    ys = []
    for t in range(T):
        s = torch.exp(delta[:, t, :, None] * A) * s + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", s, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * _tensor("D", D, 1)
    return y, s


def selective_materialize(delta, A, B, C):
    """Mamba-1's map per channel (b, d, T, T): M^c_ij = Σ_n C_i[n] B_j[n] Δ_jc exp(A_cn Σ_{k=j+1}^{i} Δ_kc)."""
    delta, A = _tensor("delta", delta, 3), _tensor("A", A, 2)
    B, C = _tensor("B", B, 3), _tensor("C", C, 3)
    S = _segsum(delta.transpose(1, 2))                          # (b, d, T, T)
    causal = torch.isfinite(S)
    S = S.masked_fill(~causal, 0)[:, :, None]                  # A·(−∞) would be +∞ for A < 0
    decay = torch.exp(A[None, :, :, None, None] * S) * causal[:, :, None]   # (b, d, N, T, T)
    M = torch.einsum("bin,bjn,bdnij->bdij", C, B, decay)
    return M * delta.transpose(1, 2)[:, :, None, :]


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
        u = _tensor("u", u, 3)
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
            return torch.einsum("bihn,bjhn->bhij", _heads(s["C"], H), _heads(s["B"], H)).tril()
        a = s["dt"] * s["A"]
        if part == "decay":
            return torch.exp(_segsum(a.transpose(1, 2)))
        return ssd_materialize(a, s["B"], s["C"], dt=s["dt"])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.ssm_inputs(u)
        x, dt, A = s["x"], s["dt"], s["A"]
        b, T, H, P = x.shape
        impl = self.impl
        if impl == "auto":
            impl = "materialize" if (T <= 256 and not x.is_cuda) else "kernel"
        if impl == "materialize":
            y = apply_map(ssd_materialize(dt * A, s["B"], s["C"]), x * dt[..., None])
        elif impl == "chunked":
            y = ssd_chunked(x * dt[..., None], dt * A, s["B"], s["C"], self.chunk)[0]
        elif impl == "scan":
            y = ssd_scan_ref(x * dt[..., None], dt * A, s["B"], s["C"])[0]
        else:
            from ..kernels.ssd import mamba_chunk_scan
            y = mamba_chunk_scan(x, dt, A, s["B"], s["C"], self.chunk)[0]
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
        u = _tensor("u", u, 3)
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
        return selective_materialize(s["delta"], s["A"], s["B"], s["C"])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.ssm_inputs(u)
        impl = self.impl
        if impl == "auto":
            impl = "materialize" if u.shape[1] <= 128 else "scan"
        if impl == "materialize":
            M = selective_materialize(s["delta"], s["A"], s["B"], s["C"])
            y = torch.einsum("bcij,bjc->bic", M, s["x"]) + s["x"] * s["D"]
        else:
            y = selective_scan_ref(s["x"], s["delta"], s["A"], s["B"], s["C"], s["D"])[0]
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
