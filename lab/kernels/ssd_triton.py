"""The chunked SSD forward as two Triton kernels: the only module of the library that imports triton.

The reference is :func:`lab.kernels.ssd_reference.ssd_chunked`. The kernel path computes the same
four steps:

1. ``_chunk_state_kernel`` (one program per chunk and head): the chunk's own final state
   Σ_s exp(cum_end − cum_s) X_s B_sᵀ, a (P × N) matrix product;
2. torch: the states passed between chunks (a c × c decay matrix, c = T/Q: cheap);
3. ``_chunk_scan_kernel`` (one program per chunk, head and block of rows): the masked intra-chunk
   attention (C Bᵀ ∘ exp(cum_i − cum_j)) X plus the entering state read out by C, in one pass,
   flash-attention style over blocks of columns up to the diagonal.

Backward: autograd of the chunked torch form, recomputed from the inputs (a documented fallback;
the forward is what the benchmark measures). On a CPU the kernels run under ``TRITON_INTERPRET=1``
(set it before this module is imported). Which backend a layer uses is decided in
:mod:`lab.kernels.ssd`.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .._check import checked
from .ssd_reference import check_chunked_inputs, pad_to_chunk, segsum, ssd_chunked

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton comes with the test and gpu extras
    triton = None

AVAILABLE = triton is not None


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if triton is not None:
    @triton.jit
    def _dot(a, b, PREC: tl.constexpr, F32: tl.constexpr):
        # F32: the interpreter's bf16 dot is wrong (triton 3.9), so it multiplies in fp32 there
        if F32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
        return tl.dot(a, b, input_precision=PREC)

    @triton.jit
    def _chunk_state_kernel(x_ptr, b_ptr, cum_ptr, out_ptr, T, H, G, P, N, n_chunks,
                            Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_N: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr):
        pid_bc, h = tl.program_id(0), tl.program_id(1)
        bi, ci = pid_bc // n_chunks, pid_bc % n_chunks
        g = h // (H // G)
        offs_p, offs_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        cum_base = cum_ptr + ((bi * H + h) * n_chunks + ci) * Q
        cum_end = tl.load(cum_base + Q - 1)
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, Q, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            t = ci * Q + offs_k
            w = tl.exp(cum_end - tl.load(cum_base + offs_k))
            xk = tl.load(x_ptr + ((bi * T + t[:, None]) * H + h) * P + offs_p[None, :],
                         mask=offs_p[None, :] < P, other=0.0)
            bk = tl.load(b_ptr + ((bi * T + t[:, None]) * G + g) * N + offs_n[None, :],
                         mask=offs_n[None, :] < N, other=0.0)
            xw = (xk.to(tl.float32) * w[:, None]).to(bk.dtype)
            acc += _dot(tl.trans(xw), bk, PREC, F32)
        out = out_ptr + (((bi * n_chunks + ci) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
        tl.store(out, acc, mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))

    @triton.jit
    def _chunk_scan_kernel(x_ptr, b_ptr, c_ptr, cum_ptr, s_ptr, y_ptr, T, H, G, P, N, n_chunks,
                           Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr):
        pid_bc, h, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        bi, ci = pid_bc // n_chunks, pid_bc % n_chunks
        g = h // (H // G)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_p, offs_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        cum_base = cum_ptr + ((bi * H + h) * n_chunks + ci) * Q
        cum_m = tl.load(cum_base + offs_m)
        tm = ci * Q + offs_m
        cm = tl.load(c_ptr + ((bi * T + tm[:, None]) * G + g) * N + offs_n[None, :],
                     mask=offs_n[None, :] < N, other=0.0)
        # the state entering this chunk, read out by C and decayed to each row
        s = tl.load(s_ptr + (((bi * n_chunks + ci) * H + h) * P + offs_p[None, :]) * N + offs_n[:, None],
                    mask=(offs_p[None, :] < P) & (offs_n[:, None] < N), other=0.0)   # (N, P)
        acc = _dot(cm.to(tl.float32), s, PREC, F32) * tl.exp(cum_m)[:, None]
        hi = (pid_m + 1) * BLOCK_M
        for k0 in range(0, hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            tk = ci * Q + offs_k
            bk = tl.load(b_ptr + ((bi * T + tk[:, None]) * G + g) * N + offs_n[None, :],
                         mask=offs_n[None, :] < N, other=0.0)
            xk = tl.load(x_ptr + ((bi * T + tk[:, None]) * H + h) * P + offs_p[None, :],
                         mask=offs_p[None, :] < P, other=0.0)
            scores = _dot(cm, tl.trans(bk), PREC, F32)                # (M, K)
            causal = offs_m[:, None] >= offs_k[None, :]
            diff = tl.where(causal, cum_m[:, None] - tl.load(cum_base + offs_k)[None, :], -float("inf"))
            scores = scores * tl.exp(diff)
            acc += _dot(scores.to(xk.dtype), xk, PREC, F32)
        y = y_ptr + ((bi * T + tm[:, None]) * H + h) * P + offs_p[None, :]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=offs_p[None, :] < P)



def _pow2(n: int, low: int = 16) -> int:
    return max(low, 1 << (int(n) - 1).bit_length())


def _triton_forward(X, a, B, C, chunk, initial_state):
    """The kernel path (no autograd, arguments already checked): y (b, T, H, P) in X's dtype, final
    state in fp32."""
    if triton is None:
        raise ImportError("the Triton SSD kernel needs triton: pip install 'explorable-papers[gpu]'")
    Q = chunk
    if Q < 16:
        raise ValueError(f"chunk must be at least 16 for the Triton kernel; got {Q}")
    b, T, H, P = X.shape
    G, N = B.shape[2], B.shape[3]
    X, a, B, C = pad_to_chunk(X, a, B, C, Q)
    Tp = X.shape[1]
    c = Tp // Q
    X, B, C = X.contiguous(), B.contiguous(), C.contiguous()
    cum = torch.cumsum(a.float().reshape(b, c, Q, H).permute(0, 3, 1, 2), dim=-1).contiguous()  # (b,H,c,Q)
    BP, BN = _pow2(P), _pow2(N)
    BK = min(Q, 64)
    prec = "ieee" if X.dtype == torch.float32 else "tf32"
    f32 = _interpreted()
    states = torch.empty(b, c, H, P, N, device=X.device, dtype=torch.float32)
    _chunk_state_kernel[(b * c, H)](X, B, cum, states, Tp, H, G, P, N, c, Q=Q, BLOCK_K=BK,
                                    BLOCK_P=BP, BLOCK_N=BN, PREC=prec, F32=f32)
    init = (initial_state.float() if initial_state is not None
            else torch.zeros(b, H, P, N, device=X.device, dtype=torch.float32))
    states = torch.cat([init[:, None], states], dim=1)
    chunk_decay = torch.exp(segsum.unchecked(F.pad(cum[..., -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final = states[:, :-1].contiguous(), states[:, -1]
    y = torch.empty(b, Tp, H, P, device=X.device, dtype=X.dtype)
    BM = min(Q, 64)
    _chunk_scan_kernel[(b * c, H, Q // BM)](X, B, C, cum, entering, y, Tp, H, G, P, N, c, Q=Q,
                                            BLOCK_M=BM, BLOCK_K=BK, BLOCK_P=BP, BLOCK_N=BN, PREC=prec, F32=f32)
    return y[:, :T], final


class _SSDTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, a, B, C, chunk, initial_state):
        ctx.chunk = chunk
        ctx.save_for_backward(X, a, B, C, initial_state if initial_state is not None else torch.empty(0))
        ctx.has_init = initial_state is not None
        return _triton_forward(X, a, B, C, chunk, initial_state)

    @staticmethod
    def backward(ctx, dy, dfinal):
        X, a, B, C, init = ctx.saved_tensors
        inputs = [t.detach().requires_grad_() for t in (X, a, B, C)]
        init = init.detach().requires_grad_() if ctx.has_init else None
        with torch.enable_grad():
            y, final = ssd_chunked.unchecked(*inputs, chunk=ctx.chunk, initial_state=init)
            wrt = inputs + ([init] if init is not None else [])
            grads = torch.autograd.grad((y, final), wrt, (dy.to(y.dtype), dfinal.to(final.dtype)),
                                        allow_unused=True)
        return (*grads[:4], None, grads[4] if init is not None else None)


@checked(check_chunked_inputs)
def ssd_triton(X, a, B, C, chunk: int = 256, initial_state=None):
    """The chunked SSD through the Triton kernels: y (b, T, H, P) and final state (b, H, P, N)."""
    return _SSDTriton.apply(X, a, B, C, chunk, initial_state)
