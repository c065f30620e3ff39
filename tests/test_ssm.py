"""The SSM core: three computations of the same layer agree, and the layers built on them."""
import ast
import inspect
from pathlib import Path

import pytest
import torch

import lab
from lab.kernels.ssd_reference import (
    apply_map,
    segsum,
    selective_materialize,
    selective_scan_ref,
    ssd_chunked,
    ssd_materialize,
    ssd_materialize_discrete,
    ssd_scan_ref,
)
from lab.nn.ssm import SSMLM, Mamba1, Mamba2, inverse_softplus


def rand_inputs(b=2, T=200, H=4, P=16, G=2, N=32, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(b, T, H, P, generator=g, dtype=dtype)
    a = -torch.rand(b, T, H, generator=g, dtype=dtype) * 0.5
    B = torch.randn(b, T, G, N, generator=g, dtype=dtype) / N ** 0.5
    C = torch.randn(b, T, G, N, generator=g, dtype=dtype) / N ** 0.5
    S0 = torch.randn(b, H, P, N, generator=g, dtype=dtype)
    return X, a, B, C, S0


def rel(x, y):
    return ((x - y).abs().max() / y.abs().max()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_chunked_equals_scan_and_map(dtype, tol):
    X, a, B, C, S0 = rand_inputs(dtype=dtype)            # T = 200, chunk 64: the padding path
    y_scan, s_scan = ssd_scan_ref(X, a, B, C, S0)
    y_chunk, s_chunk = ssd_chunked(X, a, B, C, 64, S0)
    assert rel(y_chunk, y_scan) <= tol and rel(s_chunk, s_scan) <= tol
    y0, _ = ssd_scan_ref(X, a, B, C)
    assert rel(apply_map(ssd_materialize(a, B, C), X), y0) <= tol


def test_chunk_size_invariance_and_causality():
    X, a, B, C, S0 = rand_inputs(b=1, T=128)
    ys = [ssd_chunked(X, a, B, C, q, S0)[0] for q in (8, 16, 64)]
    assert rel(ys[0], ys[2]) <= 1e-12 and rel(ys[1], ys[2]) <= 1e-12
    t = 70
    X2, B2, C2 = X.clone(), B.clone(), C.clone()
    X2[:, t:] += 1.0
    B2[:, t:] -= 0.5
    C2[:, t:] *= 3
    a2 = a.clone()
    a2[:, t:] -= 1.0
    y2 = ssd_chunked(X2, a2, B2, C2, 16, S0)[0]
    assert torch.equal(y2[:, :t], ys[1][:, :t])


def test_gradcheck_chunked():
    X, a, B, C, S0 = rand_inputs(b=1, T=32, H=2, P=3, G=1, N=4)
    args = [t.requires_grad_() for t in (X, a, B, C, S0)]
    assert torch.autograd.gradcheck(lambda X, a, B, C, S0: ssd_chunked(X, a, B, C, 8, S0), args)


def test_mamba1_equals_mamba2_with_repeated_A():
    b, T, H, P, N = 2, 40, 3, 4, 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
    dt = torch.rand(b, T, H, generator=g, dtype=torch.float64)
    A = -torch.rand(H, generator=g, dtype=torch.float64)
    B = torch.randn(b, T, 1, N, generator=g, dtype=torch.float64)
    C = torch.randn(b, T, 1, N, generator=g, dtype=torch.float64)
    y2 = ssd_chunked(x * dt[..., None], dt * A, B, C, 16)[0].reshape(b, T, H * P)
    A1 = A.repeat_interleave(P)[:, None].expand(H * P, N)
    d1 = dt.repeat_interleave(P, dim=-1)
    y1 = selective_scan_ref(x.reshape(b, T, H * P), d1, A1, B[:, :, 0], C[:, :, 0])[0]
    assert rel(y1, y2) <= 1e-12
    M = selective_materialize(d1, A1, B[:, :, 0], C[:, :, 0])
    assert rel(torch.einsum("bcij,bjc->bic", M, x.reshape(b, T, H * P)), y1) <= 1e-12


def test_known_answer_cumsum():
    b, T, H, P, N = 1, 20, 2, 3, 5
    x = torch.randn(b, T, H, P, dtype=torch.float64)
    a = torch.zeros(b, T, H, dtype=torch.float64)
    B = torch.full((b, T, 1, N), N ** -0.5, dtype=torch.float64)
    for y in (ssd_scan_ref(x, a, B, B)[0], ssd_chunked(x, a, B, B, 8)[0]):
        assert torch.allclose(y, x.cumsum(1), rtol=0, atol=1e-13)


def test_segsum_against_double_loop():
    a = torch.randn(7, dtype=torch.float64)
    S = segsum(a)
    for i in range(7):
        for j in range(7):
            if j > i:
                assert S[i, j] == -torch.inf
            else:
                assert torch.isclose(S[i, j], a[j + 1:i + 1].sum(), atol=1e-14)
    assert torch.equal(S.diagonal(), torch.zeros(7, dtype=torch.float64))


def test_mamba2_layer_paths_and_map():
    torch.manual_seed(0)
    m = Mamba2(32, d_state=16, headdim=8, ngroups=2, chunk=16).double()
    u = torch.randn(2, 37, 32, dtype=torch.float64)
    outs = []
    for impl in ("materialize", "chunked", "scan", "kernel"):   # kernel: the dispatch (torch on a CPU)
        m.impl = impl
        outs.append(m(u))
    assert all(rel(out, outs[0]) <= 1e-12 for out in outs[1:])
    s = m.ssm_inputs(u)
    M = m.attention_map(u)                                  # full = (C·Bᵀ) ∘ decay, Δ on columns
    parts = m.attention_map(u, "cb") * m.attention_map(u, "decay") * s["dt"].transpose(1, 2)[:, :, None]
    assert rel(parts, M) <= 1e-12
    y = apply_map(M, s["x"]) + s["x"] * s["D"][:, None]
    y_ref = ssd_scan_ref(s["x"] * s["dt"][..., None], s["dt"] * s["A"], s["B"], s["C"])[0] + s["x"] * s["D"][:, None]
    assert rel(y, y_ref) <= 1e-12


def test_mamba2_default_init_ranges():
    torch.manual_seed(0)
    m = Mamba2(64, d_state=32, headdim=16)
    A = torch.exp(m.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    assert torch.equal(m.D, torch.ones_like(m.D))
    assert torch.allclose(inverse_softplus(torch.tensor([1.0])), torch.tensor([0.5413]), atol=1e-4)


def test_mamba1_layer_paths():
    torch.manual_seed(0)
    m = Mamba1(16, d_state=4).double()
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    m.impl = "materialize"
    y1 = m(u)
    m.impl = "scan"
    assert rel(m(u), y1) <= 1e-12
    assert torch.allclose(torch.exp(m.A_log[0]), torch.arange(1, 5, dtype=torch.float64))


def test_lm_parameter_count_and_reinit():
    lm = SSMLM(18, 64, 2, d_state=32, headdim=16)
    assert sum(p.numel() for p in lm.parameters()) == 63_088
    out = lm(torch.randint(0, 18, (2, 9)))
    assert out.shape == (2, 9, 18)
    assert [M.shape for M in lm.attention_maps(torch.randint(0, 18, (1, 9)))] == [(1, 8, 9, 9)] * 2


def test_bad_inputs_name_the_argument():
    X, a, B, C, S0 = rand_inputs(b=1, T=16, H=4, G=2)
    with pytest.raises(ValueError, match="chunk"):
        ssd_chunked(X, a, B, C, 12)
    with pytest.raises(ValueError, match="^a must"):
        ssd_chunked(X, a[..., :3], B, C, 8)
    with pytest.raises(ValueError, match="^C must"):
        ssd_chunked(X, a, B, C[..., :5], 8)
    with pytest.raises(ValueError, match="groups"):
        ssd_chunked(X, a, B[:, :, :1].expand(1, 16, 3, 32), C[:, :, :1].expand(1, 16, 3, 32), 8)
    with pytest.raises(ValueError, match="initial_state"):
        ssd_chunked(X, a, B, C, 8, S0[..., :4])
    Xn = X.clone()
    Xn[0, 3, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        ssd_scan_ref(Xn, a, B, C)
    with pytest.raises(ValueError, match="impl"):
        Mamba2(16, d_state=4, headdim=8, impl="fast")
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(16, d_state=4, headdim=7)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(16, d_state=4, headdim=8, ngroups=3)
    with pytest.raises(ValueError, match="u must"):
        Mamba2(16, d_state=4, headdim=8)(torch.randn(1, 5, 15))
    with pytest.raises(TypeError, match="tokens"):
        SSMLM(5, 16, 1, d_state=4, headdim=8)(torch.randn(1, 3))


def test_public_references_reject_bad_values_naming_the_argument():
    X, a, B, C, S0 = rand_inputs(b=1, T=16, H=4, G=2)
    nan = float("nan")

    def poisoned(t):
        t = t.clone()
        t.view(-1)[3] = nan
        return t
    with pytest.raises(ValueError, match="^a must be finite"):
        segsum(poisoned(a))
    with pytest.raises(TypeError, match="^a must"):
        segsum([1.0, 2.0])
    with pytest.raises(ValueError, match="^B must be finite"):
        ssd_chunked(X, a, poisoned(B), C, 8)
    with pytest.raises(ValueError, match="^initial_state must be finite"):
        ssd_scan_ref(X, a, B, C, poisoned(S0))
    with pytest.raises(ValueError, match="^dt must be finite"):
        ssd_materialize(a, B, C, dt=poisoned(-a))
    with pytest.raises(ValueError, match="^D must have shape"):
        ssd_materialize(a, B, C, D=torch.ones(3, dtype=a.dtype))
    with pytest.raises(ValueError, match="^log_alpha must be finite"):
        ssd_materialize_discrete(poisoned(a), B, C)
    u, delta = X[:, :, 0, :4], -a[..., :1].expand(1, 16, 4).contiguous()
    A1, B1 = -torch.rand(4, 3, dtype=X.dtype), B[:, :, 0, :3]
    with pytest.raises(ValueError, match="^delta must be finite"):
        selective_scan_ref(u, poisoned(delta), A1, B1, B1)
    with pytest.raises(ValueError, match="^A must have shape"):
        selective_scan_ref(u, delta, A1[:3], B1, B1)
    with pytest.raises(ValueError, match="^C must be finite"):
        selective_materialize(delta, A1, B1, poisoned(B1))


def test_displayed_references_show_the_method_only():
    for fn in (segsum, ssd_scan_ref, ssd_chunked, ssd_materialize, ssd_materialize_discrete,
               selective_scan_ref, selective_materialize):
        source = inspect.getsource(fn)
        assert f"def {fn.__name__}(" in source
        assert "raise" not in source and "isfinite" not in source and "check_tensor" not in source, fn.__name__
        assert fn.unchecked.__name__ == fn.__name__


@pytest.fixture
def no_value_reads(monkeypatch):
    """Make every way of reading a tensor's values back to the host (a device sync) an error."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass read tensor values back (a device sync)")
    monkeypatch.setattr(torch, "isfinite", forbidden)
    monkeypatch.setattr(torch.Tensor, "isfinite", forbidden)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "__bool__", forbidden)


def test_layer_forward_does_not_sync(no_value_reads):
    torch.manual_seed(0)
    u = torch.randn(2, 37, 32)
    m2 = Mamba2(32, d_state=16, headdim=8, ngroups=2, chunk=16)
    for impl in ("auto", "materialize", "chunked", "scan", "kernel"):
        m2.impl = impl
        m2(u).sum().backward()
        m2.attention_map(u)
    m1 = Mamba1(32, d_state=4)
    for impl in ("materialize", "scan"):
        m1.impl = impl
        m1(u).sum().backward()
    lm = SSMLM(18, 32, 2, d_state=16, headdim=8)
    lm(torch.randint(0, 18, (2, 9))).sum().backward()
    with pytest.raises(AssertionError, match="sync"):
        ssd_chunked(*rand_inputs(b=1, T=16)[:4], 8)      # the public boundary does check


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved within lab)."""
    module = ".".join(path.relative_to(Path(lab.__file__).parent.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            full = ".".join(base + ([node.module] if node.module else []))
            names.add(full)
            names.update(f"{full}.{alias.name}" for alias in node.names)
    return names


def test_only_the_triton_kernel_imports_triton():
    root = Path(lab.__file__).parent
    importers = {str(p.relative_to(root)) for p in root.rglob("*.py")
                 if any(n == "triton" or n.startswith("triton.") for n in _imports(p))}
    assert importers == {"kernels/ssd_triton.py"}


def test_kernels_never_import_the_layers():
    root = Path(lab.__file__).parent
    for path in (root / "kernels").rglob("*.py"):
        assert not any(n == "lab.nn" or n.startswith("lab.nn.") for n in _imports(path)), path.name
    assert {"lab.kernels.ssd", "lab.kernels.ssd_reference"} <= _imports(root / "nn" / "ssm.py")
