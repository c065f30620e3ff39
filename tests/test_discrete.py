"""The shared discrete prompt search (lab.discrete): GCG's sampler, bookkeeping and the one-hot
gradient, on losses small enough to check by hand."""
import pytest
import torch

from lab import discrete

V, S = 7, 4


def _table(seed=0):
    return torch.randn(V, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _quadratic(table, target):
    """ℓ(XE) = ‖XE − target‖², exact for id tensors and for embeddings."""
    def on_embeddings(P):
        return ((P - target) ** 2).sum()

    def on_ids(ids):
        return ((table[ids] - target) ** 2).sum(dim=(-1, -2))

    return on_embeddings, on_ids


def test_one_hot_gradient_equals_the_embedding_gradient_times_the_table():
    E = _table()
    target = torch.randn(S, 3, dtype=torch.float64)
    f, _ = _quadratic(E, target)
    x = torch.tensor([0, 3, 3, 6])
    g = discrete.one_hot_gradient(f, E, x)
    P = E[x].clone().requires_grad_(True)
    f(P).backward()
    assert torch.allclose(g, P.grad @ E.T)


def test_swap_estimates_are_exact_for_a_loss_linear_in_the_one_hot_matrix():
    E = _table(1)
    w = torch.randn(S, 3, dtype=torch.float64)

    def on_ids(ids):
        return (E[ids] * w).sum(dim=(-1, -2))

    x = torch.tensor([1, 2, 0, 5])
    g = discrete.one_hot_gradient(lambda P: (P * w).sum(), E, x)
    est = discrete.swap_estimates(g, x)
    exact = discrete.exact_swap_changes(on_ids, x, V)
    assert torch.allclose(est.float(), exact, atol=1e-5)
    assert torch.all(est.gather(1, x[:, None]) == 0)


def test_exact_swap_changes_marks_disallowed_tokens():
    E = _table()
    _, on_ids = _quadratic(E, torch.zeros(S, 3, dtype=torch.float64))
    out = discrete.exact_swap_changes(on_ids, [0, 1, 2, 3], V, allowed=[1, 2, 4])
    assert torch.isnan(out[:, [0, 3, 5, 6]]).all() and not torch.isnan(out[:, [1, 2, 4]]).any()


def _run(positions="uniform", seed=0, steps=12, k=3, batch=5, allowed=(1, 2, 3, 5)):
    E = _table(seed)
    target = torch.randn(S, 3, generator=torch.Generator().manual_seed(seed + 9), dtype=torch.float64)
    f, on_ids = _quadratic(E, target)
    seen = []

    def loss(c):
        seen.append(c.clone())
        return on_ids(c)

    res = discrete.gcg(loss, lambda x: discrete.one_hot_gradient(f, E, x), [1, 1, 1, 1], steps=steps,
                       k=k, batch=batch, allowed=list(allowed), positions=positions,
                       generator=torch.Generator().manual_seed(seed))
    return res, seen, on_ids


@pytest.mark.parametrize("positions", discrete.POSITIONS)
def test_gcg_candidates_change_one_position_to_a_shortlisted_allowed_token(positions):
    res, seen, _ = _run(positions)
    assert res.evaluations == 1 + 12 * 5 == sum(len(c) for c in seen) and res.gradient_calls == 12
    x = seen[0][0]
    for step, cands in enumerate(seen[1:]):
        assert ((cands != x).sum(dim=1) <= 1).all()
        assert set(cands.flatten().tolist()) <= {1, 2, 3, 5}
        if positions == "even":
            changed = (cands != x).float().argmax(dim=1)
            moved = (cands != x).any(dim=1)
            assert torch.equal(changed[moved], (torch.arange(5) * S // 5)[moved])
        x = res.trace[step]["tokens"]


def test_gcg_moves_to_the_best_candidate_and_keeps_the_best_seen():
    res, seen, on_ids = _run(steps=20)
    best_so_far = on_ids(seen[0])[0].item()
    for entry, cands in zip(res.trace, seen[1:], strict=True):
        values = on_ids(cands)
        assert entry["loss"] == pytest.approx(values.min().item())
        assert torch.equal(entry["tokens"], cands[values.argmin()])
        best_so_far = min(best_so_far, entry["loss"])
        assert entry["best_loss"] == pytest.approx(best_so_far)
    assert res.loss == pytest.approx(best_so_far) == pytest.approx(on_ids(res.tokens[None])[0].item())
    assert [e["best_loss"] for e in res.trace] == sorted((e["best_loss"] for e in res.trace), reverse=True)


def test_gcg_shortlist_is_the_top_k_of_the_negative_gradient():
    g = torch.tensor([[0.0, -3.0, 2.0, -1.0], [5.0, 4.0, -9.0, 0.0]])
    assert discrete.shortlist(g, 2).tolist() == [[1, 3], [2, 3]]
    assert discrete.shortlist(g, 2, allowed=[0, 2, 3]).tolist() == [[3, 0], [2, 3]]


def test_gcg_is_reproducible_for_a_generator_seed():
    a, _, _ = _run(seed=3)
    b, _, _ = _run(seed=3)
    assert torch.equal(a.tokens, b.tokens) and a.loss == b.loss


def test_a_full_shortlist_with_many_candidates_finds_the_optimum_of_a_separable_loss():
    res, _, _ = _run(steps=40, k=4, batch=40)
    E = _table(0)
    target = torch.randn(S, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    optimum = sum(min(((E[v] - target[i]) ** 2).sum().item() for v in (1, 2, 3, 5)) for i in range(S))
    assert res.loss == pytest.approx(optimum)


@pytest.mark.parametrize("kwargs, word", [
    ({"steps": 0}, "steps"), ({"k": 0}, "k"), ({"batch": 0}, "batch"), ({"k": 5}, "k = 5"),
    ({"positions": "spiral"}, "positions"), ({"init": []}, "init"), ({"allowed": []}, "allowed"),
])
def test_gcg_rejects_bad_input_naming_the_argument(kwargs, word):
    E = _table()
    f, on_ids = _quadratic(E, torch.zeros(S, 3, dtype=torch.float64))
    args = {"init": [1, 1, 1, 1], "steps": 2, "k": 2, "batch": 3, "allowed": [1, 2, 3, 5]} | kwargs
    init = args.pop("init")
    with pytest.raises(ValueError, match=word):
        discrete.gcg(on_ids, lambda x: discrete.one_hot_gradient(f, E, x), init, **args)


# --- GCG without the current prompt among the candidates --------------------------------------
def test_gcg_exclude_current_makes_every_candidate_differ_in_exactly_one_position():
    E = _table()
    target = torch.randn(S, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    f, on_ids = _quadratic(E, target)
    seen = []

    def loss(c):
        seen.append(c.clone())
        return on_ids(c)

    res = discrete.gcg(loss, lambda x: discrete.one_hot_gradient(f, E, x), [1, 1, 1, 1], steps=6,
                       k=3, batch=8, allowed=[1, 2, 3, 5], positions="even", exclude_current=True,
                       generator=torch.Generator().manual_seed(0))
    x = seen[0][0]
    for step, cands in enumerate(seen[1:]):
        assert ((cands != x).sum(dim=1) == 1).all()
        changed = (cands != x).float().argmax(dim=1)
        assert torch.bincount(changed, minlength=S).tolist() == [2] * S     # s | B: B/s each
        g = discrete.one_hot_gradient(f, E, x).clone()
        g[torch.arange(S), x] = float("inf")
        short = discrete.shortlist(g, 3, [1, 2, 3, 5])
        assert all(int(c[p]) in short[p].tolist() for c, p in zip(cands, changed))
        assert set(cands.flatten().tolist()) <= {1, 2, 3, 5}
        x = res.trace[step]["tokens"]
    with pytest.raises(ValueError, match="k = 4"):
        discrete.gcg(on_ids, lambda x: discrete.one_hot_gradient(f, E, x), [1, 1, 1, 1], steps=1,
                     k=4, batch=2, allowed=[1, 2, 3, 5], exclude_current=True)


# --- the projection and PEZ ----------------------------------------------------------------------
def test_projection_finds_every_scaled_row_and_matches_brute_force_cosine():
    E = torch.randn(11, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    allowed = [1, 2, 4, 5, 7, 8, 9, 10]
    for c in (0.01, 1.0, 100.0):
        assert discrete.project(c * E[allowed], E, allowed).tolist() == allowed
    P = torch.randn(1000, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = discrete.project(P, E, allowed)
    cos = torch.nn.functional.cosine_similarity(P[:, None], E[None], dim=-1)
    cos[:, [0, 3, 6]] = -2
    assert torch.equal(got, cos.argmax(dim=1))
    assert not set(got.tolist()) & {0, 3, 6}


def _pez_problem(seed=0):
    E = _table(seed)
    target = torch.randn(S, 3, generator=torch.Generator().manual_seed(seed + 5), dtype=torch.float64)

    def value_and_grad(ids):
        P = E[ids].clone().requires_grad_(True)
        value = ((P - target) ** 2).sum()
        (g,) = torch.autograd.grad(value, P)
        return float(value.detach()), g

    return E, target, value_and_grad


def test_pez_step_uses_the_gradient_at_the_projection_and_equals_hand_written_adamw():
    E, target, vg = _pez_problem()
    init = [1, 2, 3, 5]
    res = discrete.pez(vg, E, length=S, steps=3, lr=0.1, weight_decay=0.1, init=init,
                       allowed=[1, 2, 3, 5, 6])
    P, m, v = E[init].clone(), torch.zeros(S, 3, dtype=torch.float64), torch.zeros(S, 3, dtype=torch.float64)
    b1, b2, eps, lr, wd = 0.9, 0.999, 1e-8, 0.1, 0.1
    for t, entry in enumerate(res.trace, start=1):
        assert torch.allclose(entry["soft"], P, atol=1e-6)
        ids = discrete.project(P, E, [1, 2, 3, 5, 6])
        assert torch.equal(entry["tokens"], ids)
        Pt = E[ids].clone().requires_grad_(True)
        ((Pt - target) ** 2).sum().backward()
        g = Pt.grad
        assert torch.allclose(vg(ids)[1], g, atol=1e-6)
        P = P * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        P = P - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    assert res.evaluations == res.gradient_calls == 3


def test_pez_best_so_far_never_increases_and_is_the_loss_of_its_prompt():
    E, _target, vg = _pez_problem(1)
    res = discrete.pez(vg, E, length=S, steps=30, allowed=[1, 2, 3, 5],
                       generator=torch.Generator().manual_seed(0))
    best = [e["best_loss"] for e in res.trace]
    assert best == sorted(best, reverse=True)
    assert res.loss == pytest.approx(vg(res.tokens)[0]) == pytest.approx(min(e["loss"] for e in res.trace))
    assert set(res.tokens.tolist()) <= {1, 2, 3, 5}


# --- random search --------------------------------------------------------------------------
@pytest.mark.parametrize("ball", discrete.BALLS)
def test_random_search_never_increases_the_loss_and_counts_its_evaluations(ball):
    E = _table(2)
    target = torch.randn(S, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _, on_ids = _quadratic(E, target)
    seen = []

    def loss(c):
        seen.append(c.clone())
        return on_ids(c)

    res = discrete.random_search(loss, [1, 1, 1, 1], steps=15, batch=6, vocab=V, allowed=[1, 2, 3, 5],
                                 ball=ball, table=E, radius=2, generator=torch.Generator().manual_seed(1))
    losses = [e["loss"] for e in res.trace]
    assert losses == sorted(losses, reverse=True)
    assert res.evaluations == 1 + 15 * 6 == sum(len(c) for c in seen)
    assert res.loss == pytest.approx(on_ids(res.tokens[None])[0].item())
    x = seen[0][0]
    for step, cands in enumerate(seen[1:]):
        assert ((cands != x).sum(dim=1) <= 1).all()
        assert set(cands.flatten().tolist()) <= {1, 2, 3, 5}
        x = res.trace[step]["tokens"]


# --- AutoDAN ------------------------------------------------------------------------------------
def _autodan_problem():
    """A loss that depends on order and length: ℓ(x) = ‖mean of the position-weighted rows − t‖²."""
    E = _table(4)
    t = torch.randn(3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def on_embeddings(P):
        w = torch.arange(1, len(P) + 1, dtype=P.dtype)[:, None]
        return (((w * P).sum(0) / w.sum()) - t).pow(2).sum()

    def on_ids(ids):
        return torch.stack([on_embeddings(E[row]) for row in ids])

    return E, on_embeddings, on_ids


def test_autodan_with_a_full_batch_equals_brute_force_greedy():
    E, f, on_ids = _autodan_problem()
    allowed = [1, 2, 3, 5, 6]
    res = discrete.autodan(on_ids, lambda x: discrete.one_hot_gradient(f, E, x), steps=4,
                           batch=len(allowed), vocab=V, allowed=allowed)
    prefix = []
    for t, entry in enumerate(res.trace, start=1):
        values = [on_ids(torch.tensor([prefix + [v]]))[0].item() for v in allowed]
        prefix.append(allowed[min(range(len(allowed)), key=values.__getitem__)])
        assert entry["tokens"].tolist() == prefix and len(entry["tokens"]) == t
    assert res.evaluations == 4 * len(allowed) and res.gradient_calls == 4
    assert res.tokens.tolist() == prefix and res.loss == pytest.approx(res.trace[-1]["loss"])


def test_autodan_beam_one_is_greedy_and_a_constant_prior_changes_nothing():
    E, f, on_ids = _autodan_problem()
    g = lambda x: discrete.one_hot_gradient(f, E, x)
    kw = {"steps": 5, "batch": 2, "vocab": V, "allowed": [1, 2, 3, 5, 6]}
    greedy = discrete.autodan(on_ids, g, **kw)
    assert torch.equal(discrete.autodan(on_ids, g, beam=1, **kw).tokens, greedy.tokens)
    const = lambda prefix: torch.full((V,), -1.9)
    for w in (0.0, 1.0):
        assert torch.equal(discrete.autodan(on_ids, g, prior=const, weight=w, **kw).tokens, greedy.tokens)
    beam = discrete.autodan(on_ids, g, beam=3, **kw)
    # beams in play: 1, then 2 (only two candidates exist), then 3 for the last three steps
    assert beam.evaluations == 2 * (1 + 2 + 3 * 3) and beam.gradient_calls == 1 + 2 + 3 * 3
    assert [len(e["tokens"]) for e in beam.trace] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("fn, kwargs, word", [
    ("pez", {"steps": 0}, "steps"), ("pez", {"length": 0}, "length"),
    ("random_search", {"batch": 0}, "batch"), ("random_search", {"ball": "l1"}, "ball"),
    ("random_search", {"steps": 0}, "steps"),
    ("autodan", {"batch": 6}, "batch = 6"), ("autodan", {"beam": 0}, "beam"),
    ("autodan", {"steps": 0}, "steps"), ("autodan", {"allowed": []}, "allowed"),
])
def test_new_searches_reject_bad_input_naming_the_argument(fn, kwargs, word):
    E, f, on_ids = _autodan_problem()
    g = lambda x: discrete.one_hot_gradient(f, E, x)
    _, _, vg = _pez_problem()
    with pytest.raises(ValueError, match=word):
        if fn == "pez":
            discrete.pez(vg, E, **({"length": S, "steps": 2} | kwargs))
        elif fn == "random_search":
            discrete.random_search(on_ids, [1, 1], **({"steps": 2, "batch": 2, "vocab": V} | kwargs))
        else:
            discrete.autodan(on_ids, g, **({"steps": 2, "batch": 2, "vocab": V,
                                            "allowed": [1, 2, 3, 5, 6]} | kwargs))
