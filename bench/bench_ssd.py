"""Why a kernel: the chunked SSD against the sequential scan, the Triton kernel and attention.

CPU (always): time of the sequential scan (:func:`lab.kernels.ssd_reference.ssd_scan_ref`) over
the chunked torch form (:func:`lab.kernels.ssd_reference.ssd_chunked`) for several sequence lengths.
CUDA (when present): at H = 32, P = 64, N = 128, chunk 256, 16K tokens per call, the lab Triton
kernel's forward (:func:`lab.kernels.ssd_triton.ssd_triton`) against the torch chunked form,
mamba-ssm's ``mamba_chunk_scan_combined`` (when it imports), causal ``scaled_dot_product_attention``
(head dim 64) and the device's copy bandwidth; the lab and torch forms are timed without their
argument checks (``.unchecked``, as a layer calls them: the finiteness check syncs); achieved
GB/s counts the bytes of X, a, B, C read and y written once.

Run: PYTHONPATH=. python bench/bench_ssd.py
"""
import os
import time

import torch

from lab.kernels.ssd_reference import ssd_chunked, ssd_scan_ref


def timed(fn, min_time=0.5, sync=lambda: None):
    fn()
    sync()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def inputs(b, T, H, P, G, N, device, dtype):
    g = torch.Generator(device).manual_seed(0)
    X = torch.randn(b, T, H, P, device=device, dtype=dtype, generator=g)
    a = -torch.rand(b, T, H, device=device, dtype=torch.float32, generator=g) * 0.1
    B = torch.randn(b, T, G, N, device=device, dtype=dtype, generator=g) / N ** 0.5
    C = torch.randn(b, T, G, N, device=device, dtype=dtype, generator=g) / N ** 0.5
    return X, a, B, C


def best_of(fn, repeats=5):
    """The fastest of `repeats` timed calls after a warm-up: robust to a loaded machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_section():
    print(f"CPU · torch threads {torch.get_num_threads()} · "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("b=1, H=4, P=16, N=32, fp32; times in ms (best of 5); ratio = scan / chunked")
    print(f"{'L':>6} {'scan':>8} {'Q=32':>7} {'Q=64':>7} {'ratio32':>8} {'ratio64':>8}   "
          f"{'fwd+bwd: scan':>13} {'Q=32':>7} {'ratio32':>8}")

    def fwd_bwd(fn, X, a, B, C):
        Xg = X.clone().requires_grad_()
        fn(Xg, a, B, C)[0].sum().backward()

    for L in (256, 512, 1024, 2048):
        X, a, B, C = inputs(1, L, 4, 16, 1, 32, "cpu", torch.float32)
        with torch.no_grad():
            t_scan = best_of(lambda: ssd_scan_ref(X, a, B, C))
            t32 = best_of(lambda: ssd_chunked(X, a, B, C, 32))
            t64 = best_of(lambda: ssd_chunked(X, a, B, C, 64))
        g_scan = best_of(lambda: fwd_bwd(ssd_scan_ref, X, a, B, C), repeats=3)
        g32 = best_of(lambda: fwd_bwd(lambda *t: ssd_chunked(*t, 32), X, a, B, C), repeats=3)
        print(f"{L:>6} {1e3 * t_scan:>8.2f} {1e3 * t32:>7.2f} {1e3 * t64:>7.2f} {t_scan / t32:>7.1f}× "
              f"{t_scan / t64:>7.1f}×   {1e3 * g_scan:>13.2f} {1e3 * g32:>7.2f} {g_scan / g32:>7.1f}×")


def cuda_section():
    from lab.kernels import ssd as kernels
    from lab.kernels.ssd_triton import ssd_triton
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    print(f"\nCUDA · {torch.cuda.get_device_name(dev)}")
    buf = torch.empty(256 * 2 ** 20, device=dev, dtype=torch.uint8)
    out = torch.empty_like(buf)
    t_copy = timed(lambda: out.copy_(buf), sync=sync)
    copy_bw = 2 * buf.numel() / t_copy / 1e9
    print(f"device copy: {copy_bw:.0f} GB/s (read + write)")
    try:
        mamba = kernels._mamba_ssm_scan()
    except ImportError as err:
        mamba = None
        print(f"mamba-ssm: not importable ({err.__class__.__name__}); its column stays empty")
    H, P, N, Q = 32, 64, 128, 256
    print(f"H={H} P={P} N={N} chunk={Q}, 16K tokens per call, bf16 inputs, fp32 decay")
    print(f"{'b×T':>9} {'lab ms':>8} {'GB/s':>6} {'%copy':>6} {'torch/lab':>9} {'mamba/lab':>9} "
          f"{'lab/mamba speed':>15} {'sdpa ms':>8} {'max err':>8}")
    for b, T in ((8, 2048), (2, 8192), (1, 16384)):
        X, a, B, C = inputs(b, T, H, P, 1, N, dev, torch.bfloat16)
        with torch.no_grad():
            t_lab = timed(lambda: ssd_triton.unchecked(X, a, B, C, Q), sync=sync)
            Xf, Bf, Cf = X.float(), B.float(), C.float()
            t_torch = timed(lambda: ssd_chunked.unchecked(Xf, a, Bf, Cf, Q), sync=sync)
            y_lab = ssd_triton(X, a, B, C, Q)[0].float()
            y_ref = ssd_chunked(Xf, a, Bf, Cf, Q)[0]
            err = ((y_lab - y_ref).abs() / (5e-2 + 3e-2 * y_ref.abs())).max().item()   # ≤ 1: within bf16 tol
            if mamba is not None:   # the same work in its terms: A = −1, dt = −a (it scales x by dt)
                dt, A = -a, -torch.ones(H, device=dev)
                t_m = timed(lambda: mamba(X, dt, A, B, C, chunk_size=Q), sync=sync)
                m_cols = f"{t_m / t_lab:>9.2f} {t_m / t_lab:>15.2f}"
            else:
                m_cols = f"{'-':>9} {'-':>15}"
            q = torch.randn(b, 32, T, 64, device=dev, dtype=torch.bfloat16)
            t_sdpa = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True),
                           sync=sync)
        nbytes = X.numel() * 2 * 2 + a.numel() * 4 + (B.numel() + C.numel()) * 2
        gbs = nbytes / t_lab / 1e9
        print(f"{b:>3}×{T:<5} {1e3 * t_lab:>8.3f} {gbs:>6.0f} {100 * gbs / copy_bw:>5.1f}% "
              f"{t_torch / t_lab:>9.2f} {m_cols} {1e3 * t_sdpa:>8.3f} {err:>8.2f}")


def main():
    cpu_section()
    if torch.cuda.is_available():
        cuda_section()
    else:
        print("\nno CUDA device: the kernel, mamba-ssm and attention columns need a GPU")


if __name__ == "__main__":
    main()
