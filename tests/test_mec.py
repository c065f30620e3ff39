"""lab.papers.arimec.method (MEC): greedy MEC against its reference values, and IMEC validity by exact enumeration."""
import math

import numpy as np
import pytest

from lab.papers.arimec import method as mec

TOL = 1e-12


def coupling(*ms):
    return mec.greedy_mec(*[np.array(m, float) for m in ms])


# ---------------------------------------------------------------------------------------------
# Greedy MEC
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ms, expected, h", [
    (([.5, .5], [.5, .5]), [[.5, 0], [0, .5]], math.log(2)),
    (([.5, .25, .25], [.4, .4, .2]), [[.4, .1, 0], [0, .25, 0], [0, .05, .2]], 1.415023),
    (([.6, .3, .1], [.5, .5]), [[.5, .1], [0, .3], [0, .1]], 1.168282),
    (([.7, .2, .1], [.4, .3, .2, .1]), [[.4, .3, 0, 0], [0, 0, .2, 0], [0, 0, 0, .1]], 1.279854),
])
def test_greedy_reference_couplings(ms, expected, h):
    M = coupling(*ms)
    np.testing.assert_allclose(M, expected, atol=TOL)
    assert mec.entropy(M) == pytest.approx(h, abs=1e-6)


def test_greedy_three_marginals_sparse():
    c = mec.greedy_mec([1.0], [.75, .25], [.6, .3, .1], sparse=True)
    cells = c.as_dict()
    expected = {(0, 0, 0): .6, (0, 1, 1): .25, (0, 0, 2): .1, (0, 0, 1): .05}
    assert set(cells) == set(expected)
    for k, v in expected.items():
        assert cells[k] == pytest.approx(v, abs=TOL)
    assert c.entropy() == pytest.approx(1.033114, abs=1e-6)
    lo, hi = mec.coupling_bounds([1.0], [.75, .25], [.6, .3, .1])
    assert (lo, hi) == (pytest.approx(0.897946, abs=1e-6), pytest.approx(1.460281, abs=1e-6))
    assert len(c) == 4 == 1 + 2 + 3 - 3 + 1


def test_identical_marginals_give_the_diagonal():
    p = np.array([.1, .2, .3, .4])
    M = coupling(p, p)
    np.testing.assert_allclose(M, np.diag(p), atol=TOL)
    assert mec.entropy(M) == pytest.approx(mec.entropy(p), abs=TOL)


def test_hundred_uniform_marginals_sparse():
    c = mec.greedy_mec(*[np.full(10, .1)] * 100, sparse=True)
    assert len(c) == 10
    assert c.entropy() == pytest.approx(math.log(10), abs=1e-9)


def test_fast_path_equals_reference_including_ties():
    rng = np.random.default_rng(0)
    for trial in range(300):
        m = int(rng.integers(2, 5))
        ms = [rng.dirichlet(np.full(int(rng.integers(1, 8)), rng.choice([.3, 1, 5]))) for _ in range(m)]
        if trial % 2:   # coarse grids create exact ties
            ms = [np.round(p * 6) / np.round(p * 6).sum() if np.round(p * 6).sum() else p for p in ms]
        np.testing.assert_array_equal(mec.greedy_mec(*ms), mec.greedy_mec_reference(*ms))


def test_every_coupling_is_valid():
    rng = np.random.default_rng(1)
    for _ in range(50):
        ms = [rng.dirichlet(np.ones(int(rng.integers(2, 9)))) for _ in range(int(rng.integers(2, 4)))]
        c = mec.greedy_mec(*ms, sparse=True)
        for i, p in enumerate(ms):
            np.testing.assert_allclose(c.marginal(i), p, atol=1e-12)
        assert c.mass.sum() == pytest.approx(1, abs=1e-12)
        assert len(c) <= sum(len(p) for p in ms) - len(ms) + 1 + 2   # float residues
        lo, hi = mec.coupling_bounds(*ms)
        assert lo - 1e-9 <= c.entropy() <= hi + 1e-9


def test_large_support_is_sparse_and_valid():
    rng = np.random.default_rng(2)
    p, q = rng.dirichlet(np.ones(20_000)), rng.dirichlet(np.ones(20_000))
    c = mec.greedy_mec(p, q, sparse=True)
    np.testing.assert_allclose(c.marginal(0), p, atol=1e-12)
    np.testing.assert_allclose(c.marginal(1), q, atol=1e-12)
    assert len(c) <= 40_000


def test_entropy_upper_bound():
    np.testing.assert_allclose(mec.entropy_upper_bound(np.array([.9, .5, .1, .3]), 5),
                               [0.463712, 1.386294, 1.609438, 1.581270], atol=1e-6)


@pytest.mark.parametrize("bad, word", [
    ([.5, -.2, .7], "non-negative"), ([.5, .4], "sum to 1"), ([np.nan, 1.0], "NaN"),
    ([], "empty"), ([[.5, .5]], "dimension"),
])
def test_greedy_rejects_bad_marginals(bad, word):
    with pytest.raises(ValueError, match=word) as info:
        mec.greedy_mec([.5, .5], bad)
    assert "marginals[1]" in str(info.value)


def test_greedy_rejects_bad_flag_and_nothing():
    with pytest.raises(TypeError, match="sparse"):
        mec.greedy_mec([1.0], sparse=1)
    with pytest.raises(ValueError, match="marginals"):
        mec.greedy_mec()


def test_causal_complexity_prefers_a_deterministic_cause():
    joint = np.array([[.5, 0], [0, .25], [0, .25]])     # Y is a function of X
    assert mec.causal_complexity(joint, 0) < mec.causal_complexity(joint, 1)


# ---------------------------------------------------------------------------------------------
# IMEC: exact references by enumeration
# ---------------------------------------------------------------------------------------------
CHAIN = mec.Markov([.6, .4], [[.7, .3], [.2, .8]], 3)
IID3 = mec.Markov.iid([.5, .3, .2], 3)


def joint_entropy(imec):
    return mec.entropy(mec.joint_table(imec)[2])


@pytest.mark.parametrize("merge", [True, False])
def test_timec_reference(merge):
    imec = mec.TIMEC([.5, .25, .25], mec.Markov.iid([.5, .5], 2), merge=merge)
    assert joint_entropy(imec) == pytest.approx(math.log(4), abs=1e-9)
    assert mec.decode_accuracy(imec) == pytest.approx(1.0)


@pytest.mark.parametrize("merge, h, acc", [(True, math.log(16), 1.0), (False, math.log(32), 0.5)])
def test_fimec_reference_and_merging_helps(merge, h, acc):
    imec = mec.FIMEC([np.full(2, .5)] * 3, mec.Markov.iid(np.full(4, .25), 2), merge=merge)
    assert joint_entropy(imec) == pytest.approx(h, abs=1e-9)
    assert mec.decode_accuracy(imec) == pytest.approx(acc)


@pytest.mark.parametrize("merge", [True, False])
def test_arimec_reference(merge):
    assert CHAIN.entropy() == pytest.approx(1.795325, abs=1e-6)
    assert IID3.entropy() == pytest.approx(3.088959, abs=1e-6)
    imec = mec.ARIMEC(CHAIN, IID3, merge=merge)
    assert joint_entropy(imec) == pytest.approx(3.195343, abs=1e-6)
    assert mec.decode_accuracy(imec) == pytest.approx(0.960067, abs=1e-6)


def test_timec_on_the_flattened_chain():
    flat = [p for _, p in mec.enumerate_sequences(CHAIN)]
    imec = mec.TIMEC(flat, IID3)
    assert joint_entropy(imec) == pytest.approx(3.140011, abs=1e-6)
    assert mec.decode_accuracy(imec) == pytest.approx(0.978, abs=1e-9)


def test_depth_one_arimec_equals_timec():
    nu = mec.Markov([.6, .4], [[.9, .1], [.3, .7]], 2)
    ar = mec.ARIMEC(mec.Markov([.5, .3, .2], np.eye(3), 1), nu)
    ti = mec.TIMEC([.5, .3, .2], nu)
    _, _, Pa = mec.joint_table(ar)
    _, _, Pt = mec.joint_table(ti)
    np.testing.assert_allclose(Pa, Pt, atol=1e-12)
    assert mec.entropy(Pa) == pytest.approx(1.309063, abs=1e-6)
    assert mec.decode_accuracy(ar) == mec.decode_accuracy(ti) == pytest.approx(0.94)


def test_one_component_fimec_equals_timec():
    mu = np.array([.1, .2, .3, .4])
    nu = mec.Markov.random(3, 3, 1.0, seed=4)
    Pf = mec.joint_table(mec.FIMEC([mu], nu))[2]
    Pt = mec.joint_table(mec.TIMEC(mu, nu))[2]
    np.testing.assert_allclose(Pf, Pt, atol=1e-12)


def test_partition_imec_with_component_partitions_equals_fimec():
    comps = [np.array([.7, .3]), np.array([.5, .5]), np.array([.2, .8])]
    nu = mec.Markov.random(3, 3, 1.0, seed=5)
    fimec = mec.FIMEC(comps, nu)
    xs = [x for x, _ in mec.outcomes(fimec)]
    mu = np.array([np.prod([c[v] for c, v in zip(comps, x)]) for x in xs])
    generic = mec.IMEC(mu, nu, partitions=[np.array([x[i] for x in xs]) for i in range(3)])
    np.testing.assert_allclose(mec.joint_table(generic)[2], mec.joint_table(fimec)[2], atol=1e-12)


def _instances(merge):
    rng = np.random.default_rng(3)
    nu_u = mec.Markov.iid(np.full(4, .25), 2)
    nu_r = mec.Markov.random(4, 2, 1.0, seed=8)
    x_r = mec.Markov(rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3), size=3), 2)
    yield mec.TIMEC(rng.dirichlet(np.ones(5)), nu_r, merge=merge)
    yield mec.TIMEC(np.full(4, .25), nu_u, merge=merge)
    yield mec.FIMEC([np.full(2, .5)] * 3, nu_u, merge=merge)
    yield mec.FIMEC([rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(2))], nu_r, merge=merge)
    yield mec.ARIMEC(x_r, nu_r, merge=merge)
    yield mec.ARIMEC(CHAIN, IID3, merge=merge)
    yield mec.ARIMEC(mec.Markov.iid(np.full(4, .25), 2), nu_u, merge=merge)


@pytest.mark.parametrize("merge", [True, False])
def test_every_instance_is_a_valid_coupling(merge):
    for imec in _instances(merge):
        xs, ys, P = mec.joint_table(imec)
        mu = np.array([p for _, p in mec.outcomes(imec)])
        nu = np.array([p for _, p in mec.enumerate_sequences(imec.nu)])
        assert P.sum() == pytest.approx(1, abs=1e-9)
        np.testing.assert_allclose(P.sum(1), mu, atol=1e-9)
        np.testing.assert_allclose(P.sum(0), nu, atol=1e-9)
        # Bayes consistency: μ(x) p(y|x) = ν(y) p(x|y)
        for i, x in enumerate(xs[:4]):
            for k, y in enumerate(ys[:6]):
                p_xy = math.exp(imec.evaluate_x_given_y(x, y)) * nu[k]
                assert p_xy == pytest.approx(P[i, k], abs=1e-9)


@pytest.mark.parametrize("merge", [True, False])
def test_sample_and_estimate_log_likelihoods_agree_with_evaluate(merge):
    rng = np.random.default_rng(4)
    for imec in _instances(merge):
        for _ in range(5):
            x, y, ll = imec.sample(rng)
            assert ll == pytest.approx(imec.evaluate(x, y), abs=1e-9)
            y2, lly = imec.sample_y_given_x(x, rng)
            assert lly == pytest.approx(imec.evaluate_y_given_x(x, y2), abs=1e-9)
            x_hat, llx = imec.estimate_x_given_y(y)
            assert llx == pytest.approx(imec.evaluate_x_given_y(x_hat, y), abs=1e-9)
            x_s, lls = imec.estimate_x_given_y(y, rng=rng)
            assert lls == pytest.approx(imec.evaluate_x_given_y(x_s, y), abs=1e-9)


def test_tree_posterior_probabilities_match_bayes():
    imec = mec.ARIMEC(CHAIN, IID3)
    xs = [x for x, _ in mec.enumerate_sequences(CHAIN)]
    for y, _ in mec.enumerate_sequences(IID3)[::3]:
        post = imec.posterior_given_y(y)
        got = np.array([post.prob(x) for x in xs])
        want = np.exp([imec.evaluate_x_given_y(x, y) for x in xs])
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_impossible_pairs_give_minus_infinity_not_nan():
    flat = [p for _, p in mec.enumerate_sequences(CHAIN)]
    imec = mec.TIMEC(flat, IID3)
    ll = imec.evaluate_y_given_x(5, [0, 2, 0])
    assert ll == float("-inf")
    _, ys, P = mec.joint_table(imec)
    assert not np.isnan(P).any() and (P == 0).any()


def test_dyadic_case_decodes_exactly():
    """Dyadic message law, covertext of uniform bits with enough entropy: every decode is exact."""
    mu = np.array([.5, .25, .125, .125])
    imec = mec.TIMEC(mu, mec.Markov.iid([.5, .5], 3))
    assert mec.decode_accuracy(imec) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for x in range(4):
        y, _ = mec.encode(imec, x, rng)
        assert imec.estimate_x_given_y(y)[0] == x


def test_encode_refuses_covertext_too_short_to_carry_the_message():
    imec = mec.FIMEC([np.full(4, .25)] * 4, mec.Markov.iid([.5, .5], 2))
    with pytest.raises(ValueError, match="cannot carry x"):
        for seed in range(20):
            mec.encode(imec, (1, 2, 3, 0), np.random.default_rng(seed))


def test_imec_rejects_bad_input():
    nu = mec.Markov.iid([.5, .5], 2)
    with pytest.raises(ValueError, match="mu"):
        mec.TIMEC([.5, .6], nu)
    with pytest.raises(TypeError, match="nu"):
        mec.TIMEC([.5, .5], [.5, .5])
    with pytest.raises(TypeError, match="merge"):
        mec.TIMEC([.5, .5], nu, merge="yes")
    imec = mec.ARIMEC(CHAIN, IID3)
    with pytest.raises(ValueError, match="x is outside"):
        imec.sample_y_given_x((0, 1), np.random.default_rng(0))
    with pytest.raises(TypeError, match="x must"):
        imec.sample_y_given_x("010", np.random.default_rng(0))
    with pytest.raises(ValueError, match="y is not"):
        imec.estimate_x_given_y([0, 1])
    with pytest.raises(TypeError, match="rng"):
        imec.sample_y_given_x((0, 1, 0), 0)
    with pytest.raises(ValueError, match="outside the support of mu"):
        mec.TIMEC([1.0, 0.0], nu).sample_y_given_x(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="component 1"):
        mec.FIMEC([np.full(2, .5), np.array([1.0, 0.0])], nu).evaluate((0, 1), (0, 0))


def test_markov_entropy_equals_enumeration():
    m = mec.Markov.random(3, 4, 0.5, seed=9)
    seqs = mec.enumerate_sequences(m)
    assert sum(p for _, p in seqs) == pytest.approx(1)
    probs = np.array([p for _, p in seqs])
    # mec.entropy treats probabilities within 1e-8 of zero as zero (as the reference code does)
    assert m.entropy() == pytest.approx(-(probs * np.log(probs)).sum(), abs=1e-6)
