"""How the cost of minimum-entropy coupling grows with the support size.

Greedy MEC: couplings per second of two Dirichlet(1) marginals of support n (the heap path, and
the O(n²) argmax reference while it stays affordable). ARIMEC: covertext tokens encoded per
second for a message prior Markov(V, 6, 0.3) and covertext Markov(V, 12, 1) as V grows.

Run: PYTHONPATH=. python bench/bench_mec.py
"""
import os
import time

import numpy as np

from lab.papers.arimec import method as mec


def rate(fn, min_time=0.5):
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed, elapsed / n


def main():
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rng = np.random.default_rng(0)
    print("\ngreedy MEC, two marginals of support n")
    print(f"{'n':>8} {'heap: couplings/s':>18} {'ms each':>9} {'reference: couplings/s':>23} {'ratio':>7}")
    for n in (10, 100, 1_000, 10_000, 100_000):
        p, q = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(n))
        fast, each = rate(lambda: mec.greedy_mec(p, q, sparse=True))
        if n <= 1_000:
            ref, _ = rate(lambda: mec.greedy_mec_reference(p, q))
            cols = f"{ref:>23.1f} {fast / ref:>7.1f}"
        else:
            cols = f"{'(skipped: O(n²))':>23} {'':>7}"
        print(f"{n:>8} {fast:>18.1f} {each * 1e3:>9.3f} {cols}")
    print("\nARIMEC encoding, message Markov(V, 6, 0.3), covertext Markov(V, 12, 1)")
    print(f"{'V':>6} {'tokens/s':>10} {'nodes searched/step':>20}")
    for V in (2, 8, 32, 128, 512):
        prior = mec.Markov.random(V, 6, 0.3, seed=2)
        cover = mec.Markov.random(V, 12, 1.0, seed=3)
        imec = mec.ARIMEC(prior, cover)
        g = np.random.default_rng(1)
        messages = [prior.sample(g)[0] for _ in range(10)]
        start, searched = time.perf_counter(), []
        for x in messages:
            y, _ = imec.sample_y_given_x(x, g)
            searched.extend(imec.posterior_given_y(y).searched_per_step)
        elapsed = time.perf_counter() - start
        print(f"{V:>6} {2 * 12 * len(messages) / elapsed:>10.0f} {np.mean(searched):>20.2f}")
    print("(ARIMEC tokens/s counts the sender's and the receiver's pass over each token)")


if __name__ == "__main__":
    main()
