"""The Triton SSD kernel equals the torch chunked reference (CPU: under TRITON_INTERPRET=1), and the dispatch.

The interpreter flag must be set before triton's decorators run, so the kernel checks run in a fresh
process. Shapes stay tiny: each kernel launch is a handful of program instances.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from lab.kernels.ssd import ssd
    from lab.kernels.ssd_reference import ssd_chunked
    from lab.kernels.ssd_triton import ssd_triton
    g = torch.Generator().manual_seed(0)
    b, T, H, P, G, N = 1, 50, 4, 8, 2, 16        # T = 50 with chunk 32: the padding path
    X = torch.randn(b, T, H, P, generator=g); a = -torch.rand(b, T, H, generator=g) * 0.3
    B = torch.randn(b, T, G, N, generator=g) / 4; C = torch.randn(b, T, G, N, generator=g) / 4
    S0 = torch.randn(b, H, P, N, generator=g)
    out = {}
    def rel(x, y): return ((x - y).abs().max() / y.abs().max()).item()
    for Q in (16, 32):
        y, f = ssd_triton(X, a, B, C, Q, S0); yr, fr = ssd_chunked(X, a, B, C, Q, S0)
        out[f"y{Q}"], out[f"final{Q}"] = rel(y, yr), rel(f, fr)
    args = [t.clone().requires_grad_() for t in (X, a, B, C, S0)]
    ref = [t.clone().requires_grad_() for t in (X, a, B, C, S0)]
    w = torch.randn(b, T, H, P, generator=g)
    ((ssd_triton(*args[:4], 32, args[4])[0] * w).sum()).backward()
    ((ssd_chunked(*ref[:4], 32, ref[4])[0] * w).sum()).backward()
    out["grad"] = max(rel(p.grad, q.grad) for p, q in zip(args, ref))
    yb, _ = ssd_triton(X.bfloat16(), a, B.bfloat16(), C.bfloat16(), 32)
    yr, _ = ssd_chunked(X, a, B, C, 32)
    out["bf16_ok"] = bool(torch.allclose(yb.float(), yr, rtol=3e-2, atol=5e-2))
    out["bf16_dtype"] = str(yb.dtype)
    out["dispatch_cpu_equal"] = bool(torch.equal(ssd(X, a, B, C, 32)[0], ssd_chunked(X, a, B, C, 32)[0]))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernel_forward_equals_reference(interpreted):
    for Q in (16, 32):
        assert interpreted[f"y{Q}"] <= 1e-5 and interpreted[f"final{Q}"] <= 1e-5


def test_kernel_backward_equals_reference(interpreted):
    assert interpreted["grad"] <= 1e-5


def test_kernel_bf16_within_tolerance(interpreted):
    assert interpreted["bf16_ok"] and interpreted["bf16_dtype"] == "torch.bfloat16"


def test_dispatch_uses_torch_on_cpu(interpreted):
    assert interpreted["dispatch_cpu_equal"]


def test_mamba_ssm_backend_is_lazy_and_explains():
    from lab.kernels import ssd as kernels
    assert "mamba_ssm" not in sys.modules
    x = torch.randn(1, 8, 2, 4)
    dt, A = torch.rand(1, 8, 2), -torch.rand(2)
    B = C = torch.randn(1, 8, 1, 4)
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gpu"):
            kernels.mamba_chunk_scan(x, dt, A, B, C, 8, backend="mamba_ssm")
    y, _ = kernels.mamba_chunk_scan(x, dt, A, B, C, 8, D=torch.ones(2))
    from lab.kernels.ssd_reference import ssd_chunked
    assert torch.allclose(y, ssd_chunked(x * dt[..., None], dt * A, B, C, 8)[0] + x)


def test_dispatch_bad_input():
    from lab.kernels import ssd as kernels
    x = torch.randn(1, 8, 2, 4)
    B = C = torch.randn(1, 8, 1, 4)
    with pytest.raises(ValueError, match="backend"):
        kernels.ssd(x, torch.zeros(1, 8, 2), B, C, 8, backend="cuda")
    with pytest.raises(ValueError, match="^A must"):
        kernels.mamba_chunk_scan(x, torch.rand(1, 8, 2), -torch.rand(3), B, C, 8)
    with pytest.raises(ValueError, match="chunk"):
        kernels.ssd(x, torch.zeros(1, 8, 2), B, C, 6)


def test_public_entry_points_reject_non_finite_input():
    from lab.kernels import ssd as kernels
    from lab.kernels.ssd_triton import ssd_triton
    x = torch.randn(1, 16, 2, 4)
    dt, A = torch.rand(1, 16, 2), -torch.rand(2)
    B = C = torch.randn(1, 16, 1, 4)
    x_nan, dt_nan = x.clone(), dt.clone()
    x_nan[0, 5, 1, 2] = float("nan")
    dt_nan[0, 7, 0] = float("inf")
    with pytest.raises(ValueError, match="^X must be finite"):
        ssd_triton(x_nan, dt, B, C, 16)
    with pytest.raises(ValueError, match="^X must be finite"):
        kernels.ssd(x_nan, dt, B, C, 16)
    with pytest.raises(ValueError, match="^x must be finite"):
        kernels.mamba_chunk_scan(x_nan, dt, A, B, C, 16)
    with pytest.raises(ValueError, match="^dt must be finite"):
        kernels.mamba_chunk_scan(x, dt_nan, A, B, C, 16)
    with pytest.raises(ValueError, match="^D must"):
        kernels.mamba_chunk_scan(x, dt, A, B, C, 16, D=torch.ones(3))
    # the unchecked entry (what a layer calls) does not look at the values
    y, _ = kernels.mamba_chunk_scan.unchecked(x, dt_nan, A, B, C, 16)
    assert not torch.isfinite(y).all()
