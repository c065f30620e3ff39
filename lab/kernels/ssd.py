"""The dispatch every SSM layer calls: the Triton kernel on CUDA, then mamba-ssm if it imports, else torch.

The computations live elsewhere: the torch references in :mod:`lab.kernels.ssd_reference`, the
Triton kernel in :mod:`lab.kernels.ssd_triton` (imported on first use on a CUDA tensor, so a CPU
run never imports triton), mamba-ssm's kernels inside :func:`_mamba_ssm_scan` (the package does
not import without its CUDA extension).

:func:`ssd` and :func:`mamba_chunk_scan` check their arguments once; a layer, which built them
itself, calls ``mamba_chunk_scan.unchecked`` and its forward never syncs the device.
"""
from __future__ import annotations

import torch

from .. import _check
from .._check import checked
from .ssd_reference import (
    check_chunk,
    check_chunked_inputs,
    check_ssd_inputs,
    check_tensor,
    ssd_chunked,
)

BACKENDS = ("auto", "torch", "triton", "mamba_ssm")


def _triton_kernel():
    """:mod:`lab.kernels.ssd_triton`, imported on first use."""
    from . import ssd_triton
    return ssd_triton


def _check_ssd(X, a, B, C, chunk, initial_state, backend):
    _check.choice("backend", backend, ("auto", "torch", "triton"))
    check_chunked_inputs(X, a, B, C, chunk, initial_state)


@checked(_check_ssd)
def ssd(X, a, B, C, chunk: int = 256, initial_state=None, backend: str = "auto"):
    """The core primitive (pre-scaled X, log-decay a): "torch" (:func:`ssd_chunked`), "triton", or
    "auto" (Triton on CUDA when it is installed, torch elsewhere)."""
    if backend == "auto":
        backend = "triton" if (X.is_cuda and _triton_kernel().AVAILABLE) else "torch"
    if backend == "triton":
        return _triton_kernel().ssd_triton.unchecked(X, a, B, C, chunk, initial_state)
    return ssd_chunked.unchecked(X, a, B, C, chunk, initial_state)


def _mamba_ssm_scan():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as err:   # also raised on CPU-only machines: the CUDA extension is missing
        raise ImportError("backend='mamba_ssm' needs mamba-ssm on a CUDA machine: "
                          f"pip install 'explorable-papers[gpu]' ({err})") from err
    return mamba_chunk_scan_combined


def _check_mamba(x, dt, A, B, C, chunk, D, initial_state, backend):
    _check.choice("backend", backend, BACKENDS)
    if not torch.is_tensor(dt) or dt.dim() != 3:
        raise ValueError(f"dt must be a tensor of shape (b, T, H); got {getattr(dt, 'shape', type(dt))}")
    if not torch.is_tensor(A) or A.dim() != 1 or A.shape[0] != dt.shape[-1]:
        raise ValueError(f"A must have shape (H,) = ({dt.shape[-1]},); got {tuple(getattr(A, 'shape', ()))}")
    check_tensor("A", A, 1)
    _, _, H, P, _, _ = check_ssd_inputs(x, dt, B, C, initial_state, names=("x", "dt"))
    check_chunk(chunk)
    if D is not None:
        if not torch.is_tensor(D) or tuple(D.shape) not in ((H,), (H, P)):
            raise ValueError(f"D must be a tensor of shape (H,) = ({H},) or (H, P) = {(H, P)}; "
                             f"got {getattr(D, 'shape', type(D))}")
        check_tensor("D", D, D.dim())


@checked(_check_mamba)
def mamba_chunk_scan(x, dt, A, B, C, chunk: int = 256, D=None, initial_state=None, backend: str = "auto"):
    """Mamba-2's SSM in the library's terms: x (b, T, H, P), dt (b, T, H) after softplus, A (H,).

    Backends: "torch", "triton" (:mod:`lab.kernels.ssd_triton`), "mamba_ssm"
    (``mamba_chunk_scan_combined``, imported here and only here), "auto": Triton on CUDA, else
    mamba-ssm on CUDA if it imports, else torch. Returns y (b, T, H, P) (+ D x) and the final state.
    """
    if backend == "auto":
        if x.is_cuda and _triton_kernel().AVAILABLE:
            backend = "triton"
        else:
            backend = "torch"
            if x.is_cuda:
                try:
                    _mamba_ssm_scan()
                    backend = "mamba_ssm"
                except ImportError:
                    pass
    if backend == "mamba_ssm":
        y, final = _mamba_ssm_scan()(x, dt, A, B, C, chunk_size=chunk,
                                     initial_states=initial_state, return_final_states=True)
    else:
        X, a = x * dt[..., None], dt * A
        y, final = ssd.unchecked(X, a, B, C, chunk, initial_state, backend)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    return y, final
