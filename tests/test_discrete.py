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
