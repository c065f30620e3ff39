"""The state space model's core in pure PyTorch: the references every kernel is tested against.

Conventions (the same as the Mamba-2 library): x (b, T, H, P), Δ (b, T, H), A (H,), B and C
(b, T, G, N) with G dividing H, D (H,) or (H, P), states (b, H, P, N). The core primitive takes a
pre-scaled input X and a per-token log-decay a (b, T, H): Mamba-2 passes X = Δ⊙x, a = Δ·A.

    S_t = exp(a_t) S_{t−1} + X_t B_tᵀ,    y_t = S_t C_t

Three computations of it, tested equal: :func:`ssd_scan_ref` (the recurrence, one step at a
time), :func:`ssd_chunked` (the block decomposition of Mamba-2: quadratic inside a chunk, a
recurrence over chunk states between chunks) and :func:`ssd_materialize` (the lower-triangular
mixing matrix M, y = M X: the "attention map" of the layer). Mamba-1's selective scan and its
per-channel maps follow.

Each public function checks its arguments (shapes, dtypes, finiteness) in a wrapper
(:func:`lab._check.checked`) and its body is the method alone; internal callers, which built the
arguments themselves, call ``f.unchecked``: the finiteness check forces a device sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _check
from .._check import checked


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def check_tensor(name: str, value, ndim: int, *, finite: bool = True) -> torch.Tensor:
    """A floating-point tensor with `ndim` dimensions (and, if `finite`, no NaN or inf: this one
    reads the values back, a device sync on a GPU)."""
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {tuple(value.shape)}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {value.dtype}")
    if finite and not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return value


def check_ssd_inputs(X, a, B, C, initial_state=None, *, names=("X", "a")):
    """Validate the core primitive's arguments; return (b, T, H, P, G, N). `names`: what the caller
    calls X and a (Mamba-2's dispatch passes x and Δ)."""
    nx, na = names
    X, a = check_tensor(nx, X, 4), check_tensor(na, a, 3)
    B, C = check_tensor("B", B, 4), check_tensor("C", C, 4)
    b, T, H, P = X.shape
    if a.shape != (b, T, H):
        raise ValueError(f"{na} must have shape (b, T, H) = {(b, T, H)} to match {nx}; got {tuple(a.shape)}")
    if B.shape[:2] != (b, T):
        raise ValueError(f"B must have shape (b, T, G, N) with (b, T) = {(b, T)}; got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C must have the shape of B {tuple(B.shape)}; got {tuple(C.shape)}")
    G, N = B.shape[2], B.shape[3]
    if G < 1 or H % G:
        raise ValueError(f"B's groups G = {G} must divide the number of heads H = {H}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 4)
        if initial_state.shape != (b, H, P, N):
            raise ValueError(f"initial_state must have shape (b, H, P, N) = {(b, H, P, N)}; "
                             f"got {tuple(initial_state.shape)}")
    return b, T, H, P, G, N


def check_chunk(chunk) -> int:
    """The chunk length: a power of two."""
    chunk = _check.integer("chunk", chunk, low=1)
    if chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two; got {chunk}")
    return chunk


def check_chunked_inputs(X, a, B, C, chunk, initial_state=None):
    """The chunked forms' arguments: :func:`check_ssd_inputs` and :func:`check_chunk`."""
    check_ssd_inputs(X, a, B, C, initial_state)
    check_chunk(chunk)


def check_segsum_input(a):
    if not torch.is_tensor(a) or a.dim() < 1:
        raise TypeError(f"a must be a torch.Tensor with at least one dimension; got {type(a).__name__}")
    check_tensor("a", a, a.dim())


def check_map_inputs(a, B, C, dt=None, D=None, *, a_name="a"):
    a = check_tensor(a_name, a, 3)
    B, C = check_tensor("B", B, 4), check_tensor("C", C, 4)
    b, T, H = a.shape
    if B.shape[:2] != (b, T) or C.shape != B.shape or H % B.shape[2]:
        raise ValueError(f"B and C must have shape (b, T, G, N) with (b, T) = {(b, T)} and G dividing "
                         f"H = {H}; got {tuple(B.shape)} and {tuple(C.shape)}")
    if dt is not None:
        dt = check_tensor("dt", dt, 3)
        if dt.shape != a.shape:
            raise ValueError(f"dt must have the shape of {a_name} {tuple(a.shape)}; got {tuple(dt.shape)}")
    if D is not None:
        D = check_tensor("D", D, 1)
        if D.shape != (H,):
            raise ValueError(f"D must have shape (H,) = ({H},) to sit on the map's diagonal; got {tuple(D.shape)}")


def check_discrete_map_inputs(log_alpha, B, C, D=None):
    check_map_inputs(log_alpha, B, C, D=D, a_name="log_alpha")


def check_selective_inputs(u, delta, A, B, C, D=None, initial_state=None):
    u, delta = check_tensor("u", u, 3), check_tensor("delta", delta, 3)
    A, B, C = check_tensor("A", A, 2), check_tensor("B", B, 3), check_tensor("C", C, 3)
    b, T, d = u.shape
    N = A.shape[1]
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u {tuple(u.shape)}; got {tuple(delta.shape)}")
    if A.shape[0] != d:
        raise ValueError(f"A must have shape (d, N) with d = {d}; got {tuple(A.shape)}")
    if B.shape != (b, T, N) or C.shape != (b, T, N):
        raise ValueError(f"B and C must have shape (b, T, N) = {(b, T, N)}; got {tuple(B.shape)}, {tuple(C.shape)}")
    if D is not None:
        check_tensor("D", D, 1)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 3)
        if initial_state.shape != (b, d, N):
            raise ValueError(f"initial_state must have shape (b, d, N) = {(b, d, N)}; "
                             f"got {tuple(initial_state.shape)}")


def check_selective_map_inputs(delta, A, B, C):
    check_tensor("delta", delta, 3)
    check_tensor("A", A, 2)
    check_tensor("B", B, 3)
    check_tensor("C", C, 3)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def expand_groups(BC: torch.Tensor, H: int) -> torch.Tensor:
    """(b, T, G, N) → (b, T, H, N): heads h·G/H … share group g."""
    return BC.repeat_interleave(H // BC.shape[2], dim=2)


def pad_to_chunk(X, a, B, C, chunk: int):
    """X, a, B, C padded with zeros along time to a multiple of `chunk`. a = 0 and X = B = C = 0
    on the padding: the state passes through unchanged, and the outputs there are dropped."""
    pad = (-X.shape[1]) % chunk
    if not pad:
        return X, a, B, C
    return (F.pad(X, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad)),
            F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad)))


@checked(check_segsum_input)
def segsum(a: torch.Tensor) -> torch.Tensor:
    """S_ij = Σ_{k=j+1}^{i} a_k for i ≥ j (so S_ii = 0), −∞ above the diagonal; over the last axis.

    The stable masked form: a cumulative sum of a masked copy, not a difference of two cumsums
    (which cancels catastrophically on long inputs).
    """
    T = a.shape[-1]
    x = a[..., None].expand(*a.shape, T)                       # x[..., i, j] = a_i
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    x = x.masked_fill(~below, 0)
    out = torch.cumsum(x, dim=-2)                              # Σ_{k ≤ i, k > j} a_k
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return out.masked_fill(~keep, -torch.inf)


# ---------------------------------------------------------------------------------------------
# The three references
# ---------------------------------------------------------------------------------------------
@checked(check_ssd_inputs)
def ssd_scan_ref(X, a, B, C, initial_state=None):
    """The recurrence, token by token (the definition the other forms must equal). Returns y (b, T, H, P) and the final state."""
    b, T, H, P = X.shape
    Bh, Ch = expand_groups(B, H), expand_groups(C, H)
    S = initial_state if initial_state is not None else X.new_zeros(b, H, P, B.shape[-1])
    ys = []
    for t in range(T):
        S = torch.exp(a[:, t])[..., None, None] * S + X[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    return torch.stack(ys, dim=1), S


@checked(check_chunked_inputs)
def ssd_chunked(X, a, B, C, chunk: int = 64, initial_state=None):
    """The chunked SSD algorithm (Mamba-2, §6 of arXiv 2405.21060); pads T to a multiple of `chunk`.

    1. inside each chunk: y = (C Bᵀ ∘ exp(segsum a)) X, a small masked attention;
    2. each chunk's own final state: Σ_s exp(a_{s+1} + … + a_end) X_s B_sᵀ;
    3. between chunks: the chunk states passed along with each chunk's total decay;
    4. the state entering a chunk read out by C, decayed to each position.
    Returns y (b, T, H, P) and the final state (b, H, P, N).
    """
    b, T, H, P = X.shape
    N, Q = B.shape[-1], chunk
    X, a, B, C = pad_to_chunk(X, a, B, C, Q)
    c = X.shape[1] // Q
    Xc = X.reshape(b, c, Q, H, P)
    Bc = expand_groups(B, H).reshape(b, c, Q, H, N)
    Cc = expand_groups(C, H).reshape(b, c, Q, H, N)
    ac = a.reshape(b, c, Q, H).transpose(2, 3)                 # (b, c, H, Q)
    cum = torch.cumsum(ac, dim=-1)
    # 1. intra-chunk: a masked attention inside each chunk (pairwise products first: batched matmuls)
    scores = torch.einsum("bclhn,bcshn->bchls", Cc, Bc) * torch.exp(segsum.unchecked(ac))
    y_diag = torch.einsum("bchls,bcshp->bclhp", scores, Xc)
    # 2. chunk states
    decay_to_end = torch.exp(cum[..., -1:] - cum).transpose(2, 3)   # (b, c, Q, H)
    states = torch.einsum("bclhp,bclhn->bchpn", Xc * decay_to_end[..., None], Bc)
    # 3. state passing between chunks
    init = initial_state if initial_state is not None else X.new_zeros(b, H, P, N)
    states = torch.cat([init[:, None], states], dim=1)         # (b, c+1, H, P, N)
    chunk_decay = torch.exp(segsum.unchecked(F.pad(cum[..., -1].transpose(1, 2), (1, 0))))   # (b, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final = states[:, :-1], states[:, -1]
    # 4. read the entering state out
    y_off = torch.einsum("bclhn,bchpn->bclhp", Cc, entering) * torch.exp(cum).transpose(2, 3)[..., None]
    y = (y_diag + y_off).reshape(b, c * Q, H, P)[:, :T]
    return y, final


@checked(check_map_inputs)
def ssd_materialize(a, B, C, dt=None, D=None):
    """The mixing matrix M (b, H, T, T): y_{:,h} = M^h x_{:,h} (+ D on the diagonal).

    M^h_ij = (C_i·B_j) · exp(a_{j+1} + … + a_i) · Δ_j for j ≤ i, else 0. Without `dt`
    the column scale is 1 (the core primitive: y = M X with X = Δ⊙x). `D` (H,) adds D_h
    to the diagonal.
    """
    b, T, H = a.shape
    CB = torch.einsum("bign,bjgn->bgij", C, B)                  # per group of heads
    CB = CB.repeat_interleave(H // B.shape[2], dim=1)
    M = CB * torch.exp(segsum.unchecked(a.transpose(1, 2)))
    if dt is not None:
        M = M * dt.transpose(1, 2)[:, :, None, :]
    if D is not None:
        M = M + torch.diag_embed(D[None, :, None].expand(b, H, T))
    return M


@checked(check_discrete_map_inputs)
def ssd_materialize_discrete(log_alpha, B, C, D=None):
    """M for a discrete-time SSM with per-token log-decay `log_alpha` (b, T, H) and no step size:
    S_t = α_t S_{t−1} + x_t B_tᵀ (Phi-Mamba's variant)."""
    return ssd_materialize.unchecked(log_alpha, B, C, dt=None, D=D)


def apply_map(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y_{b,i,h,p} = Σ_j M_{b,h,i,j} x_{b,j,h,p}."""
    return torch.einsum("bhij,bjhp->bihp", M, x)


# ---------------------------------------------------------------------------------------------
# Mamba-1
# ---------------------------------------------------------------------------------------------
@checked(check_selective_inputs)
def selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None):
    """Mamba-1's selective scan (Euler input scaling), one step at a time.

    u, delta (b, T, d); A (d, N); B, C (b, T, N) shared by all channels; D (d,).
    s_{t,c} = exp(Δ_{t,c} A_c) ⊙ s_{t−1,c} + Δ_{t,c} u_{t,c} B_t,  y_{t,c} = ⟨s_{t,c}, C_t⟩ + D_c u_{t,c}.
    Returns y (b, T, d) and the final state (b, d, N).
    """
    b, T, d = u.shape
    s = initial_state if initial_state is not None else u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(T):
        s = torch.exp(delta[:, t, :, None] * A) * s + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", s, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D
    return y, s


@checked(check_selective_map_inputs)
def selective_materialize(delta, A, B, C):
    """Mamba-1's map per channel (b, d, T, T): M^c_ij = Σ_n C_i[n] B_j[n] Δ_jc exp(A_cn Σ_{k=j+1}^{i} Δ_kc)."""
    T = delta.shape[1]
    S = segsum.unchecked(delta.transpose(1, 2))                # (b, d, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=delta.device).tril()
    S = S.masked_fill(~causal, 0)[:, :, None]                  # A·(−∞) would be +∞ for A < 0
    decay = torch.exp(A[None, :, :, None, None] * S) * causal  # (b, d, N, T, T)
    M = torch.einsum("bin,bjn,bdnij->bdij", C, B, decay)
    return M * delta.transpose(1, 2)[:, :, None, :]
