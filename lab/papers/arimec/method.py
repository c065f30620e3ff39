"""Minimum-entropy coupling (Sokota et al., arXiv 2405.19540): greedy MEC and iterative MEC.

A *coupling* of marginals p¹ … pᵐ is a joint distribution with exactly those marginals. A
minimum-entropy coupling makes the joint entropy as small as possible: the variables then
determine each other as much as their marginals allow. Everything here is in nats.

* :func:`greedy_mec` — Kocaoglu et al.'s greedy approximation for any number of marginals
  (a heap per marginal; :func:`greedy_mec_reference` is the plain argmax loop it must equal).
* :class:`IMEC` — iterative MEC: X has a prior μ that is too large to tabulate, Y is
  autoregressive (ν). Each token of Y is coupled with the block probabilities of one partition
  of X's space (the one whose blocks are most uncertain under the current posterior). Its
  instances: :class:`TIMEC` (singletons), :class:`FIMEC` (factored X, one component at a time)
  and :class:`ARIMEC` (autoregressive X, partitions read off the prefix tree).
* Encode a message x as covertext y with ``sample_y_given_x``, decode with
  ``estimate_x_given_y``; y is then distributed exactly as ν when x ~ μ.

All randomness goes through an explicit ``numpy.random.Generator``.
"""
from __future__ import annotations

import copy
import dataclasses
import heapq
import math
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ... import _check

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Distributions: checks, entropy, the entropy upper bound
# ---------------------------------------------------------------------------------------------
def distribution(name: str, value, *, atol: float = 1e-6) -> np.ndarray:
    """`value` as a float64 probability vector: 1-D, non-empty, finite, ≥ 0 up to rounding,
    summing to 1 within `atol`. Tiny negatives are clipped and the result renormalised."""
    p = _check.array(name, value, ndim=1, finite=False)
    if p.size == 0:
        raise ValueError(f"{name} must be a non-empty probability vector; got an empty array")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be a probability vector; it contains NaN or inf")
    if np.any(p < -1e-12):
        raise ValueError(f"{name} must be non-negative; its smallest entry is {p.min():.3g}")
    total = p.sum()
    if not abs(total - 1.0) <= atol:
        raise ValueError(f"{name} must sum to 1 (within {atol:g}); it sums to {total:.6g}")
    p = np.clip(p, 0.0, None)
    return p / p.sum()


def entropy(p) -> float:
    """Shannon entropy in nats; entries close to 0 count as 0 (as the reference code does)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[~np.isclose(p, 0)]
    return 0.0 - float((p * np.log(p)).sum())   # 0.0 − 0.0 avoids printing −0.00


def entropy_upper_bound(z, n: int) -> np.ndarray:
    """The largest entropy of an `n`-outcome law in which one outcome has probability ≥ z:
    ln n when z ≤ 1/n, else −z ln z − (1 − z) ln((1 − z)/(n − 1))."""
    n = _check.integer("n", n, low=2)
    z = np.asarray(z, dtype=np.float64)
    ub = np.full(z.shape, math.log(n))
    big = z > 1.0 / n
    zb = z[big]
    rest = 1.0 - zb
    val = -zb * np.log(zb)
    has_rest = ~np.isclose(rest, 0)
    val[has_rest] -= rest[has_rest] * np.log(rest[has_rest] / (n - 1))
    ub[big] = val
    return ub


def _is_deterministic(p: np.ndarray) -> bool:
    return bool(np.count_nonzero(p == 1.0) == 1 and np.isclose(p.sum(), 1.0))


def _greater(a: float, b: float) -> bool:
    """a > b and not np.isclose(a, b) (rtol 1e-5, atol 1e-8), on Python floats."""
    return a > b and abs(a - b) > 1e-8 + 1e-5 * abs(b)


def _log(v: float) -> float:
    return math.log(v) if v > 0 else NEG_INF


# ---------------------------------------------------------------------------------------------
# Greedy MEC
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SparseCoupling:
    """A coupling as its non-zero cells: ``index[k]`` (one coordinate per marginal) has ``mass[k]``."""
    index: np.ndarray        # (nnz, m) int64
    mass: np.ndarray         # (nnz,) float64
    shape: tuple[int, ...]

    def todense(self) -> np.ndarray:
        dense = np.zeros(self.shape)
        dense[tuple(self.index.T)] = self.mass
        return dense

    def entropy(self) -> float:
        return entropy(self.mass)

    def marginal(self, axis: int) -> np.ndarray:
        return np.bincount(self.index[:, axis], weights=self.mass, minlength=self.shape[axis])

    def as_dict(self) -> dict[tuple[int, ...], float]:
        return {tuple(int(i) for i in idx): float(v) for idx, v in zip(self.index, self.mass)}

    def __len__(self) -> int:
        return len(self.mass)


def _marginals(marginals) -> list[np.ndarray]:
    if not marginals:
        raise ValueError("marginals: give at least one probability vector")
    return [distribution(f"marginals[{i}]", m) for i, m in enumerate(marginals)]


def _greedy_cells(ps: list[np.ndarray]) -> tuple[list[tuple], list[float]]:
    """The greedy rounds, one max-heap per marginal: O(Σn log n).

    Each marginal keeps its untouched entries sorted (descending, first index first on ties)
    behind a pointer, and a small heap of the partly used entries; the largest of the two is its
    argmax. Exact float arithmetic and tie order equal the argmax loop."""
    orders = [np.argsort(-p, kind="stable") for p in ps]
    vals = [p[o].tolist() for p, o in zip(ps, orders)]
    idxs = [o.tolist() for o in orders]
    m = len(ps)
    ptr, lens = [0] * m, [len(v) for v in vals]
    heaps: list[list] = [[] for _ in range(m)]
    cells, masses = [], []
    pop, push = heapq.heappop, heapq.heappush
    ks = range(m)
    top_v, top_i, top_src = [0.0] * m, [0] * m, [False] * m
    while True:
        for k in ks:
            h, j = heaps[k], ptr[k]
            ov = vals[k][j] if j < lens[k] else 0.0
            if h and (-h[0][0] > ov or (-h[0][0] == ov and h[0][1] < idxs[k][j])):
                top_v[k], top_i[k], top_src[k] = -h[0][0], h[0][1], True
            else:
                top_v[k], top_i[k], top_src[k] = ov, (idxs[k][j] if j < lens[k] else -1), False
        delta = min(top_v)
        if delta <= 0.0:
            break
        cells.append(tuple(top_i))
        masses.append(delta)
        for k in ks:
            if top_src[k]:
                pop(heaps[k])
            else:
                ptr[k] += 1
            rest = top_v[k] - delta
            if rest > 0.0:
                push(heaps[k], (-rest, top_i[k]))
    return cells, masses


def _greedy_cells_pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_greedy_cells` unrolled for two marginals (the common case), same rounds."""
    op, oq = np.argsort(-p, kind="stable"), np.argsort(-q, kind="stable")
    pv, pi, qv, qi = p[op].tolist() + [0.0], op.tolist() + [-1], q[oq].tolist() + [0.0], oq.tolist() + [-1]
    a = b = 0
    hp: list = []
    hq: list = []
    rows, cols, masses = [], [], []
    pop, push = heapq.heappop, heapq.heappush
    while True:
        v1, i1 = pv[a], pi[a]
        if hp and (-hp[0][0] > v1 or (-hp[0][0] == v1 and hp[0][1] < i1)):
            v1, i1 = pop(hp)
            v1 = -v1
        else:
            a += 1
        v2, i2 = qv[b], qi[b]
        if hq and (-hq[0][0] > v2 or (-hq[0][0] == v2 and hq[0][1] < i2)):
            v2, i2 = pop(hq)
            v2 = -v2
        else:
            b += 1
        if v1 <= v2:
            if v1 <= 0.0:
                break
            rows.append(i1), cols.append(i2), masses.append(v1)
            if v2 - v1 > 0.0:
                push(hq, (v1 - v2, i2))
        else:
            if v2 <= 0.0:
                break
            rows.append(i1), cols.append(i2), masses.append(v2)
            push(hp, (v2 - v1, i1))
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(masses)


def greedy_mec(*marginals, sparse: bool = False):
    """Greedy minimum-entropy coupling of any number of marginals (Kocaoglu et al. 2017, Alg. 1).

    Repeat: take each marginal's largest remaining entry (first index on ties), move the
    smallest of those masses δ into the joint cell they index, subtract δ from each; stop when
    a marginal is exhausted. At most Σnᵢ − m + 1 cells are non-zero and
    max H(pᵢ) ≤ H(M) ≤ Σ H(pᵢ).

    Returns the dense joint (an m-dimensional array, axis i for marginal i) or, with
    ``sparse=True``, a :class:`SparseCoupling` (use it for large supports: two marginals of
    10⁵ entries give ≤ 2·10⁵ cells but a 10¹⁰-cell dense array).
    """
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be a bool; got {type(sparse).__name__}")
    ps = _marginals(marginals)
    shape = tuple(len(p) for p in ps)
    if len(ps) == 2:
        r, c, mass = _greedy_cells_pair(ps[0], ps[1])
        index = np.stack([r, c], axis=1)
    else:
        cells, masses = _greedy_cells(ps)
        index = np.array(cells, dtype=np.int64).reshape(-1, len(ps))
        mass = np.array(masses)
    coupling = SparseCoupling(index, mass, shape)
    return coupling if sparse else coupling.todense()


def greedy_trace(*marginals) -> list[tuple[tuple[int, ...], float, list[np.ndarray]]]:
    """The plain greedy loop, round by round: (cell, δ, what is left of each marginal).

    An O(n) argmax per round (first index on ties), O(n²) overall: the specification
    that :func:`greedy_mec` is tested against, and what the chapter's stepper shows."""
    ps = _marginals(marginals)
    n = max(len(p) for p in ps)
    rest = np.stack([np.pad(p, (0, n - len(p))) for p in ps])
    rows = np.arange(len(ps))
    rounds = []
    while True:
        idx = rest.argmax(axis=1)
        delta = rest[rows, idx].min()
        if delta == 0:
            break
        rest[rows, idx] -= delta
        rounds.append((tuple(int(i) for i in idx), float(delta),
                       [rest[k, :len(p)].copy() for k, p in enumerate(ps)]))
    return rounds


def greedy_mec_reference(*marginals) -> np.ndarray:
    """The dense joint built from :func:`greedy_trace` (the reference for :func:`greedy_mec`)."""
    rounds = greedy_trace(*marginals)
    joint = np.zeros(tuple(len(np.ravel(m)) for m in marginals))
    for cell, delta, _ in rounds:
        joint[cell] = delta
    return joint


def coupling_bounds(*marginals) -> tuple[float, float]:
    """(max H(pᵢ), Σ H(pᵢ)): every coupling's entropy lies between them."""
    hs = [entropy(p) for p in _marginals(marginals)]
    return max(hs), sum(hs)


def causal_complexity(joint, cause_axis: int = 0) -> float:
    """Entropic causal inference: H(cause) + H(greedy MEC of the conditionals of the effect).

    The second term is the entropy an unobserved noise variable would need for the effect to
    be a function of the cause and the noise; the direction with the smaller sum is preferred.
    """
    joint = _check.array("joint", joint, ndim=2)
    cause_axis = _check.choice("cause_axis", cause_axis, (0, 1))
    if np.any(joint < 0) or not np.isclose(joint.sum(), 1):
        raise ValueError("joint must be a non-negative table summing to 1")
    joint = joint if cause_axis == 0 else joint.T
    marginal = joint.sum(axis=1)
    keep = marginal > 0
    conditionals = joint[keep] / marginal[keep, None]
    return entropy(marginal) + greedy_mec(*conditionals, sparse=True).entropy()


# ---------------------------------------------------------------------------------------------
# Marginals
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class Autoregressive(Protocol):
    """A distribution over token sequences, one conditional at a time.

    ``branching``: the number of possible tokens; ``conditional(prefix)``: the next token's law
    given a tuple of tokens; ``is_terminal(prefix)``: whether a sequence ends there."""
    branching: int

    def conditional(self, prefix: tuple[int, ...]) -> np.ndarray: ...

    def is_terminal(self, prefix: tuple[int, ...]) -> bool: ...


def check_autoregressive(name: str, value) -> None:
    if not isinstance(value, Autoregressive):
        raise TypeError(f"{name} must be an autoregressive marginal (branching, conditional, "
                        f"is_terminal); got {type(value).__name__}")


def sequence_log_prob(marginal: Autoregressive, seq: Sequence[int]) -> float:
    """log P(seq) under an autoregressive marginal; −inf if impossible or not a full sequence."""
    seq = tuple(int(s) for s in seq)
    total = 0.0
    for j in range(len(seq)):
        if marginal.is_terminal(seq[:j]):
            return NEG_INF
        p = marginal.conditional(seq[:j])
        if not 0 <= seq[j] < len(p):
            return NEG_INF
        total += _log(float(p[seq[j]]))
    return total if marginal.is_terminal(seq) else NEG_INF


def sample_sequence(marginal: Autoregressive, rng: np.random.Generator) -> tuple[tuple[int, ...], float]:
    """Draw one sequence and its log-probability."""
    seq: tuple[int, ...] = ()
    total = 0.0
    while not marginal.is_terminal(seq):
        p = distribution("conditional", marginal.conditional(seq))
        t = int(rng.choice(len(p), p=p))
        total += math.log(p[t])
        seq += (t,)
    return seq, total


def enumerate_sequences(marginal: Autoregressive, limit: int = 100_000):
    """Every sequence of positive probability with its probability (small marginals only)."""
    out, stack = [], [((), 1.0)]
    while stack:
        seq, prob = stack.pop()
        if marginal.is_terminal(seq):
            out.append((seq, prob))
            if len(out) > limit:
                raise ValueError(f"the marginal has more than limit={limit} sequences")
            continue
        p = marginal.conditional(seq)
        for t in range(len(p) - 1, -1, -1):
            if p[t] > 0:
                stack.append((seq + (t,), prob * float(p[t])))
    return sorted(out)


class Markov:
    """A Markov chain over `branching` tokens with a fixed length: P(y₁) = initial,
    P(y_j | y_{j−1}) = transition[y_{j−1}]."""

    def __init__(self, initial, transition, length: int):
        self.initial = distribution("initial", initial)
        self.branching = len(self.initial)
        trans = _check.array("transition", transition, ndim=2)
        if trans.shape != (self.branching, self.branching):
            raise ValueError(f"transition must be ({self.branching}, {self.branching}); got {trans.shape}")
        self.transition = np.stack([distribution(f"transition[{i}]", r) for i, r in enumerate(trans)])
        self.length = _check.integer("length", length, low=1)

    @classmethod
    def random(cls, branching: int, length: int, alpha: float, seed: int) -> "Markov":
        """`Markov(V, L, α, seed)`: initial law ~ Dirichlet(α·1), then the V transition rows in
        one call, from ``np.random.default_rng(seed)``."""
        branching = _check.integer("branching", branching, low=1)
        alpha = _check.real("alpha", alpha, low=0, low_open=True)
        rng = np.random.default_rng(_check.integer("seed", seed))
        initial = rng.dirichlet(np.full(branching, alpha))
        transition = rng.dirichlet(np.full(branching, alpha), size=branching)
        return cls(initial, transition, length)

    @classmethod
    def iid(cls, p, length: int) -> "Markov":
        p = distribution("p", p)
        return cls(p, np.tile(p, (len(p), 1)), length)

    def conditional(self, prefix) -> np.ndarray:
        return self.initial if len(prefix) == 0 else self.transition[prefix[-1]]

    def is_terminal(self, prefix) -> bool:
        return len(prefix) >= self.length

    def entropy(self) -> float:
        """H of the whole sequence, by forward recursion over the state marginals."""
        row_h = np.array([entropy(r) for r in self.transition])
        state, total = self.initial, entropy(self.initial)
        for _ in range(self.length - 1):
            total += float(state @ row_h)
            state = state @ self.transition
        return total


    def sample(self, rng: np.random.Generator):
        return sample_sequence(self, rng)


# ---------------------------------------------------------------------------------------------
# Posteriors: the state IMEC keeps about X, one class per partition family
# ---------------------------------------------------------------------------------------------
class _TabularPosterior:
    """Singleton partition of a tabular X: the posterior vector is the block distribution."""

    def __init__(self, prior: np.ndarray):
        self.p = prior.copy()

    def choose(self):
        return None, self.p

    def column(self, handle, x) -> int:
        return x

    def update(self, handle, blocks: np.ndarray) -> None:
        self.p = blocks

    def estimate(self, pick):
        x = pick(self.p)
        return x, _log(float(self.p[x]))

    def prob(self, x) -> float:
        return float(self.p[x])


class _PartitionPosterior:
    """Any finite set of partitions of a tabular X (each a block label per outcome)."""

    def __init__(self, prior: np.ndarray, labels: list[np.ndarray]):
        self.p, self.labels = prior.copy(), labels
        self.sizes = [int(lab.max()) + 1 for lab in labels]

    def _blocks(self, k: int) -> np.ndarray:
        return np.bincount(self.labels[k], weights=self.p, minlength=self.sizes[k])

    def choose(self):
        best_k, best_b = 0, self._blocks(0)
        best_h = entropy(best_b)
        for k in range(1, len(self.labels)):
            b = self._blocks(k)
            h = entropy(b)
            if _greater(h, best_h):
                best_k, best_b, best_h = k, b, h
        return best_k, best_b

    def column(self, k, x) -> int:
        return int(self.labels[k][x])

    def update(self, k, blocks: np.ndarray) -> None:
        old = self._blocks(k)
        scale = np.divide(blocks, old, out=np.zeros_like(blocks), where=old > 0)
        self.p = self.p * scale[self.labels[k]]

    def estimate(self, pick):
        x = pick(self.p)
        return x, _log(float(self.p[x]))

    def prob(self, x) -> float:
        return float(self.p[x])


class _FactoredPosterior:
    """Independent components; the partition "by component i" with the most entropy is chosen
    (ties to the lowest index); only that component's law changes."""

    def __init__(self, components: list[np.ndarray]):
        self.comps = [c.copy() for c in components]
        self.heap = [(-entropy(c), i) for i, c in enumerate(self.comps)]
        heapq.heapify(self.heap)

    def choose(self):
        i = self.heap[0][1]
        return i, self.comps[i]

    def column(self, i, x) -> int:
        return x[i]

    def update(self, i, blocks: np.ndarray) -> None:
        self.comps[i] = blocks
        heapq.heapreplace(self.heap, (-entropy(blocks), i))

    def estimate(self, pick):
        xs = [pick(c) for c in self.comps]
        return tuple(xs), sum(_log(float(c[x])) for c, x in zip(self.comps, xs))

    def prob(self, x) -> float:
        return float(np.prod([c[xi] for c, xi in zip(self.comps, x)]))


class _Node:
    """A prefix u of X's tree: P(S(u·c)) for each child c, and P(X ∖ S(u)) in the last slot."""
    __slots__ = ("prefix", "parent", "children", "dist", "leaf")

    def __init__(self, prefix, parent, dist, leaf):
        self.prefix, self.parent, self.dist, self.leaf = prefix, parent, dist, leaf
        self.children: dict[int, _Node] = {}

    def enforce(self, i: int, value: float) -> None:
        """Set entry i to `value` and rescale the others to total 1 − value (lazy consistency)."""
        free = self.dist.sum() - self.dist[i]
        dist = self.dist * ((1.0 - value) / free) if free > 0 else np.zeros_like(self.dist)
        dist[i] = value
        self.dist = dist


class _TreePosterior:
    """ARIMEC's posterior: a lazily grown prefix tree; the current node is the last chosen one."""

    def __init__(self, mu: Autoregressive, conditional):
        self.mu, self.cond, self.n = mu, conditional, mu.branching
        self.ub_n = self.n + 1
        self.root = self.current = _Node((), None, np.append(self.cond(()), 0.0), False)
        self.searched_per_step: list[int] = []

    def _step(self, node: _Node, edge: int) -> _Node:
        """Move to the neighbour across `edge`, making it consistent with `node`."""
        mass = float(node.dist[edge])
        if edge == len(node.dist) - 1:                       # the parent slot
            parent = node.parent
            parent.enforce(node.prefix[-1], 1.0 - mass)
            return parent
        child = node.children.get(edge)
        if child is None:
            prefix = node.prefix + (edge,)
            leaf = bool(self.mu.is_terminal(prefix))
            dist = np.array([1.0, 0.0]) if leaf else np.append(self.cond(prefix), 0.0)
            child = node.children[edge] = _Node(prefix, node, dist, leaf)
        child.enforce(len(child.dist) - 1, 1.0 - mass)
        return child

    def choose(self):
        """Depth-first search from the current node for the node of largest entropy, pruning
        every edge beyond which the entropy upper bound cannot beat the best so far."""
        best = self.current
        best_h = entropy(best.dist)
        stack, seen = [best], set()
        while stack:
            node = stack.pop()
            if node.leaf or node.prefix in seen:
                continue
            seen.add(node.prefix)
            h = entropy(node.dist)
            if _greater(h, best_h):
                best, best_h = node, h
            ubs = entropy_upper_bound(1.0 - node.dist, self.ub_n)
            for edge in range(len(node.dist)):
                if _greater(float(ubs[edge]), best_h):
                    stack.append(self._step(node, edge))
        self.searched_per_step.append(len(seen))
        self.current = best
        return best, best.dist

    def column(self, node: _Node, x) -> int:
        depth = len(node.prefix)
        return x[depth] if tuple(x[:depth]) == node.prefix else self.n

    def update(self, node: _Node, blocks: np.ndarray) -> None:
        node.dist = blocks

    def _walk(self, pick) -> tuple[tuple[int, ...], float]:
        """Follow edges chosen by ``pick(dist, prefix)`` from the current node: the parent slot
        moves up (ruling out the child just left), an expanded child moves down, an unexpanded
        child or a leaf stops; then complete x from μ's conditionals. Mutates the tree."""
        node, logp = self.current, 0.0
        while True:
            if node.leaf:
                x = node.prefix
                break
            edge = pick(node.dist, node.prefix)
            logp += _log(float(node.dist[edge]))
            if edge == self.n:
                came_from = node.prefix[-1]
                node = node.parent
                node.enforce(came_from, 0.0)
            elif edge in node.children:
                node = node.children[edge]
                node.enforce(len(node.dist) - 1, 0.0)
            else:
                x = node.prefix + (edge,)
                break
        while not self.mu.is_terminal(x):
            p = self.cond(x)
            t = pick(p, x)
            logp += _log(float(p[t]))
            x += (t,)
        return x, logp

    def estimate(self, pick):
        """A greedy path through the tree (argmax or sampled edges): not the exact MAP."""
        return self._walk(lambda dist, prefix: pick(dist))

    def prob(self, x) -> float:
        """P(x | what was read so far): the product along x's path from the current node."""
        x = tuple(x)

        def true_edge(dist, prefix):
            d = len(prefix)
            if len(dist) == self.n + 1 and prefix != x[:d]:
                return self.n
            return x[d] if d < len(x) else 0

        got, logp = copy.deepcopy(self)._walk(true_edge)
        return math.exp(logp) if got == x and logp > NEG_INF else 0.0


# ---------------------------------------------------------------------------------------------
# Iterative MEC
# ---------------------------------------------------------------------------------------------
def proportional_rows(matrix: np.ndarray, row: int) -> np.ndarray:
    """Rows of `matrix` with the same support as `row` and (np.isclose) the same normalised
    entries: the values of Y_j that tell the receiver the same thing about X."""
    nz = matrix > 0
    same = (nz == nz[row]).all(axis=1)
    cand = np.flatnonzero(same)
    sub = matrix[cand][:, nz[row]]
    sub = sub / sub.sum(axis=1, keepdims=True)
    ref = matrix[row, nz[row]] / matrix[row, nz[row]].sum()
    return cand[np.isclose(sub, ref).all(axis=1)]


@dataclasses.dataclass
class Step:
    """One coupling round of IMEC (for step-through views): ``handle`` is the chosen partition."""
    token_index: int
    handle: object
    blocks: np.ndarray
    coupling: np.ndarray | None
    q: np.ndarray
    token_ids: np.ndarray
    chosen: int
    group: np.ndarray
    posterior_blocks: np.ndarray
    posterior: object


class _Impossible(Exception):
    pass


class IMEC:
    """Iterative minimum-entropy coupling of a prior μ over X with an autoregressive ν over Y.

    `mu`: a probability vector over X's outcomes; `partitions`: block labels, one integer array
    per partition (``partitions[k][x]`` = block of x). Each token j: choose the partition whose
    block distribution under the current posterior has the most entropy, couple ν(·|y<j) with it
    by :func:`greedy_mec`, pick y_j (from the column of x's block when x is known, else from ν),
    reweight the blocks by the row of y_j. With `merge`, values of y_j whose rows are
    proportional are merged and re-coupled, so no covertext entropy is spent choosing among
    them. The instances below only change how partitions are represented and searched.
    """

    def __init__(self, mu, nu: Autoregressive, partitions=None, merge: bool = True):
        check_autoregressive("nu", nu)
        if not isinstance(merge, bool):
            raise TypeError(f"merge must be a bool; got {type(merge).__name__}")
        self.nu, self.merge = nu, merge
        self.steps: list[Step] | None = None
        self._init_mu(mu, partitions)

    # -- hooks of the instances ---------------------------------------------------------------
    def _init_mu(self, mu, partitions) -> None:
        self.mu = distribution("mu", mu)
        if partitions is None:
            raise ValueError("partitions must be a list of block-label arrays (one per partition)")
        labels = []
        for k, lab in enumerate(partitions):
            lab = np.asarray(lab)
            if lab.shape != self.mu.shape or not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0:
                raise ValueError(f"partitions[{k}] must be non-negative integer labels, one per "
                                 f"outcome of mu ({self.mu.size}); got shape {lab.shape}")
            labels.append(lab.astype(np.int64))
        if not labels:
            raise ValueError("partitions must hold at least one partition")
        self.labels = labels

    def _posterior(self):
        return _PartitionPosterior(self.mu, self.labels)

    def check_x(self, x):
        x = _check.integer("x", int(x) if isinstance(x, np.integer) else x)
        if not 0 <= x < self.mu.size or self.mu[x] == 0:
            raise ValueError(f"x = {x} is outside the support of mu")
        return x

    def prior_log_prob(self, x) -> float:
        return _log(float(self.mu[x]))

    def sample_x(self, rng):
        x = int(rng.choice(self.mu.size, p=self.mu))
        return x, math.log(self.mu[x])

    # -- the main loop ------------------------------------------------------------------------
    def _nu_conditional(self, prefix) -> np.ndarray:
        return distribution("nu.conditional", self.nu.conditional(prefix))

    def _run(self, x=None, y=None, rng=None, record=False):
        """One pass over Y's tokens: returns (y, log-likelihood of the pass, posterior).

        x known → likelihood p(y|x); x unknown → ν(y). y given → replay it; else
        sample."""
        post = self._posterior()
        prefix: tuple[int, ...] = ()
        total = 0.0
        steps = [] if record else None
        while not self.nu.is_terminal(prefix):
            j = len(prefix)
            if y is not None and j >= len(y):
                raise ValueError(f"y has {len(y)} tokens; nu needs more to terminate")
            q = self._nu_conditional(prefix)
            ids = np.arange(len(q))
            while True:
                handle, blocks = post.choose()
                if _is_deterministic(blocks):
                    tok = self._pick(q, ids, y, j, rng)
                    total += _log(float(q[tok]))
                    if record:
                        steps.append(Step(j, handle, blocks.copy(), None, q, ids, tok,
                                          ids[[tok]], blocks.copy(),
                                          copy.deepcopy(post)))
                    break
                M = greedy_mec(q, blocks)
                if x is None:
                    sel = q
                else:
                    col = M[:, post.column(handle, x)]
                    mass = col.sum()
                    if mass <= 0:
                        raise _Impossible
                    sel = col / mass
                tok = self._pick(sel, ids, y, j, rng)
                if sel[tok] <= 0:
                    raise _Impossible
                row = M[tok]
                new_blocks = row / row.sum()
                post.update(handle, new_blocks)
                group = proportional_rows(M, tok) if self.merge else np.array([tok])
                total += _log(float(sel[group].sum()))
                if record:
                    steps.append(Step(j, handle, blocks.copy(), M, q, ids, tok,
                                      ids[group], new_blocks.copy(),
                                      copy.deepcopy(post)))
                if len(group) == 1:
                    break
                q = q[group] / q[group].sum()
                ids = ids[group]
            prefix += (int(ids[tok]),)
        if y is not None and len(y) != len(prefix):
            raise ValueError(f"y has {len(y)} tokens; nu ends after {len(prefix)}")
        if record:
            self.steps = steps
        return prefix, total, post

    @staticmethod
    def _pick(sel, ids, y, j, rng) -> int:
        if y is not None:
            hit = np.flatnonzero(ids == y[j])
            if not len(hit):
                raise _Impossible
            return int(hit[0])
        return int(rng.choice(len(sel), p=sel / sel.sum()))

    # -- the public interface -----------------------------------------------------------------
    def _check_y(self, y) -> tuple[int, ...]:
        if isinstance(y, (str, bytes)) or not hasattr(y, "__len__"):
            raise TypeError(f"y must be a sequence of token ids; got {type(y).__name__}")
        y = tuple(int(t) for t in y)
        if sequence_log_prob(self.nu, y) == NEG_INF:
            raise ValueError("y is not a complete sequence of positive probability under nu")
        return y

    def sample_y_given_x(self, x, rng: np.random.Generator, *, record: bool = False):
        """Encode: draw covertext y ~ p(y | x). Returns (y, log p(y | x))."""
        x = self.check_x(x)
        y, ll, _ = self._run(x=x, rng=_rng(rng), record=record)
        return y, ll

    def sample(self, rng: np.random.Generator):
        """A joint draw: x ~ μ, y ~ p(y | x). Returns (x, y, log p(x, y))."""
        rng = _rng(rng)
        x, lx = self.sample_x(rng)
        y, ly, _ = self._run(x=x, rng=rng)
        return x, y, lx + ly

    def evaluate_y_given_x(self, x, y) -> float:
        """log p(y | x) (−inf for an impossible pair, never NaN)."""
        x, y = self.check_x(x), self._check_y(y)
        try:
            return self._run(x=x, y=y)[1]
        except _Impossible:
            return NEG_INF

    def evaluate(self, x, y) -> float:
        """log p(x, y) = log μ(x) + log p(y | x)."""
        x = self.check_x(x)
        return self.prior_log_prob(x) + self.evaluate_y_given_x(x, y)

    def evaluate_x_given_y(self, x, y) -> float:
        """log p(x | y) by Bayes: log μ(x) + log p(y | x) − log ν(y)."""
        y = self._check_y(y)
        return self.evaluate(x, y) - sequence_log_prob(self.nu, y)

    def posterior_given_y(self, y, *, record: bool = False):
        """The receiver's posterior over X after reading covertext y."""
        y = self._check_y(y)
        return self._run(y=y, record=record)[2]

    def estimate_x_given_y(self, y, rng: np.random.Generator | None = None):
        """Decode: x̂ from the posterior given y (argmax, or a sample when `rng` is given).
        Returns (x̂, log p(x̂ | y)) — for ARIMEC a greedy path, not the exact MAP."""
        post = self.posterior_given_y(y)
        pick = (lambda p: int(np.argmax(p))) if rng is None else (
            lambda p, g=_rng(rng): int(g.choice(len(p), p=p / p.sum())))
        return post.estimate(pick)


def _rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng


class TIMEC(IMEC):
    """Tabular IMEC (Algorithm 1): the singleton partition, i.e. the whole posterior each step."""

    def __init__(self, mu, nu: Autoregressive, merge: bool = True):
        super().__init__(mu, nu, partitions=[], merge=merge)

    def _init_mu(self, mu, partitions) -> None:
        self.mu = distribution("mu", mu)

    def _posterior(self):
        return _TabularPosterior(self.mu)


class FIMEC(IMEC):
    """Factored IMEC (Algorithm 2): X = (X₁, …, X_k) with independent components; each step
    couples the component of largest posterior entropy."""

    def __init__(self, components: Sequence, nu: Autoregressive, merge: bool = True):
        super().__init__(components, nu, partitions=None, merge=merge)

    def _init_mu(self, components, partitions) -> None:
        if isinstance(components, np.ndarray) or not isinstance(components, (list, tuple)) or not components:
            raise TypeError("components must be a non-empty list of probability vectors")
        self.components = [distribution(f"components[{i}]", c) for i, c in enumerate(components)]

    def _posterior(self):
        return _FactoredPosterior(self.components)

    def check_x(self, x):
        x = _as_tokens("x", x)
        if len(x) != len(self.components):
            raise ValueError(f"x must have one entry per component ({len(self.components)}); got {len(x)}")
        for i, (xi, c) in enumerate(zip(x, self.components)):
            if not 0 <= xi < len(c) or c[xi] == 0:
                raise ValueError(f"x[{i}] = {xi} is outside the support of component {i}")
        return x

    def prior_log_prob(self, x) -> float:
        return sum(_log(float(c[xi])) for c, xi in zip(self.components, x))

    def sample_x(self, rng):
        x = tuple(int(rng.choice(len(c), p=c)) for c in self.components)
        return x, self.prior_log_prob(x)


class ARIMEC(IMEC):
    """Autoregressive IMEC (Definition 4.5): X is a sequence model; every internal prefix u
    gives the partition {S(u·c)}_c ∪ {X ∖ S(u)}, searched from the current node with pruning."""

    def __init__(self, mu: Autoregressive, nu: Autoregressive, merge: bool = True):
        super().__init__(mu, nu, partitions=None, merge=merge)

    def _init_mu(self, mu, partitions) -> None:
        check_autoregressive("mu", mu)
        self.mu = mu

    def _mu_conditional(self, prefix) -> np.ndarray:
        return distribution("mu.conditional", self.mu.conditional(prefix))

    def _posterior(self):
        return _TreePosterior(self.mu, self._mu_conditional)

    def check_x(self, x):
        x = _as_tokens("x", x)
        if sequence_log_prob(self.mu, x) == NEG_INF:
            raise ValueError("x is outside the support of mu (impossible or not a complete sequence)")
        return x

    def prior_log_prob(self, x) -> float:
        return sequence_log_prob(self.mu, x)

    def sample_x(self, rng):
        return sample_sequence(self.mu, rng)


def _as_tokens(name: str, x) -> tuple[int, ...]:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise TypeError(f"{name} must be a sequence of integers; got {type(x).__name__}")
    out = []
    for v in x:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must hold integers; got {type(v).__name__} {v!r}")
        out.append(int(v))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Exact tables by enumeration (small cases: tests and the chapter's checks)
# ---------------------------------------------------------------------------------------------
def outcomes(imec: IMEC) -> list[tuple[object, float]]:
    """Every x of positive prior probability with μ(x)."""
    if isinstance(imec, ARIMEC):
        return enumerate_sequences(imec.mu)
    if isinstance(imec, FIMEC):
        import itertools
        out = []
        for x in itertools.product(*(range(len(c)) for c in imec.components)):
            p = math.exp(imec.prior_log_prob(x)) if imec.prior_log_prob(x) > NEG_INF else 0.0
            if p > 0:
                out.append((x, p))
        return out
    return [(x, float(p)) for x, p in enumerate(imec.mu) if p > 0]


def joint_table(imec: IMEC):
    """(xs, ys, P) with P[i, k] = p(xs[i], ys[k]) by enumerating every pair."""
    xs = outcomes(imec)
    ys = enumerate_sequences(imec.nu)
    P = np.array([[math.exp(imec.evaluate(x, y)) for y, _ in ys] for x, _ in xs])
    return [x for x, _ in xs], [y for y, _ in ys], P


def decode_accuracy(imec: IMEC) -> float:
    """P(x̂ = x) under the joint: Σ over (x, y) of p(x, y)·[estimate(y) = x]."""
    xs, ys, P = joint_table(imec)
    estimates = [imec.estimate_x_given_y(y)[0] for y in ys]
    return float(sum(P[i, k] for i, x in enumerate(xs) for k, e in enumerate(estimates) if e == x))


def encode(imec: IMEC, x, rng: np.random.Generator):
    """Steganographic encoding with a receiver check: y ~ p(y | x), then decode y as the
    receiver would; if that does not give back x, raise instead of handing out covertext
    that would be decoded wrongly. Returns (y, log p(y | x))."""
    y, ll = imec.sample_y_given_x(x, rng)
    x_hat, _ = imec.estimate_x_given_y(y)
    if tuple(np.atleast_1d(x_hat)) != tuple(np.atleast_1d(imec.check_x(x))):
        raise ValueError("nu (the covertext model) cannot carry x here: the receiver would decode "
                         "a different message from this covertext; use a longer covertext "
                         "(more tokens of nu) or a prior that gives x more mass")
    return y, ll
