"""FUSE (Williams & Kolter, arXiv 2408.04816): one gradient across two tokenizers.

A word is a matrix of sub-token embeddings, ``d × k`` for a word that needs ``k`` sub-tokens;
``N`` words stack into a third-order tensor ``N × d × k``. The tensor–tensor product (t-product)
of Kilmer and Martin multiplies such tensors: FFT along the third (tube) axis, multiply the
matching frontal faces, inverse FFT. With its pseudo-inverse the map from model A's word tensors
to model B's is fitted in closed form, one map per sub-token count ``k``:
``T_k = X_A⁺ ∗ X_B``. The forward pass stays exact (decode A's tokens to text, re-tokenize for B);
only the backward pass goes through the map: B's gradient for a word, ``G_w``, becomes
``G_w ∗ T_kᵀ`` for A, the exact gradient of the linear surrogate ``X_A ↦ X_A ∗ T_k``.

Two details of the official code are deliberately not copied: its backward hands every word the
first word's gradient columns and picks the map by A's word length (maps are fitted by B's); and
it uses the facewise transpose where the adjoint needs the t-transpose (they differ for k ≥ 3).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ... import _check


# ---------------------------------------------------------------------------------------------
# t-product algebra
# ---------------------------------------------------------------------------------------------
def _tensor3(name: str, x) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch tensor; got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be a third-order tensor (rows, columns, k); got shape "
                         f"{tuple(x.shape)}")
    if x.shape[2] < 1:
        raise ValueError(f"{name} must have k ≥ 1 faces; got shape {tuple(x.shape)}")
    return x


def _real(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.real.to(like.dtype) if not like.is_complex() else x


def _product_shapes(A, B) -> tuple[torch.Tensor, torch.Tensor]:
    A, B = _tensor3("A", A), _tensor3("B", B)
    if A.shape[1] != B.shape[0] or A.shape[2] != B.shape[2]:
        raise ValueError(f"A (n1, n2, k) and B (n2, n3, k) must agree in n2 and k; got shapes "
                         f"{tuple(A.shape)} and {tuple(B.shape)}")
    return A, B


def t_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A ∗ B for A (n1, n2, k) and B (n2, n3, k): FFT along the tube, multiply
    matching faces, inverse FFT; (n1, n3, k)."""
    A, B = _product_shapes(A, B)
    fa, fb = torch.fft.fft(A, dim=2), torch.fft.fft(B, dim=2)
    out = torch.fft.ifft(torch.einsum("ijm,jlm->ilm", fa, fb), dim=2)
    return _real(out, A)


def t_product_circulant(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The definition, for reference: ``(A ∗ B)_{::m} = Σ_j A_{::(m−j) mod k} B_{::j}`` (the
    block-circulant matrix of A's faces times B's faces stacked)."""
    A, B = _product_shapes(A, B)
    k = A.shape[2]
    faces = [sum(A[:, :, (m - j) % k] @ B[:, :, j] for j in range(k)) for m in range(k)]
    return torch.stack(faces, dim=2)


def block_circulant(A: torch.Tensor) -> torch.Tensor:
    """The (n1·k, n2·k) block-circulant matrix whose block (m, j) is face ``(m − j) mod k``."""
    A = _tensor3("A", A)
    k = A.shape[2]
    return torch.cat([torch.cat([A[:, :, (m - j) % k] for j in range(k)], dim=1)
                      for m in range(k)], dim=0)


def t_transpose(A: torch.Tensor) -> torch.Tensor:
    """Aᵀ: transpose every face, reverse the order of faces 1 … k−1 (face 0 stays)."""
    A = _tensor3("A", A)
    k = A.shape[2]
    order = [0] + list(range(k - 1, 0, -1))
    return A.transpose(0, 1)[:, :, order].conj()


def facewise_transpose(A: torch.Tensor) -> torch.Tensor:
    """What the official code uses (``permute(1, 0, 2)``): every face transposed, faces kept in
    order. Equal to :func:`t_transpose` for k ≤ 2 only."""
    return _tensor3("A", A).permute(1, 0, 2)


def t_identity(n: int, k: int, *, dtype=torch.float64) -> torch.Tensor:
    """The identity under ∗: ``I_n`` in face 0, zeros in faces 1 … k−1."""
    n, k = _check.integer("n", n, low=1), _check.integer("k", k, low=1)
    out = torch.zeros(n, n, k, dtype=dtype)
    out[:, :, 0] = torch.eye(n, dtype=dtype)
    return out


def t_pinv(A: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """The t-pseudo-inverse ``A⁺`` (n2, n1, k): FFT along the tube, Moore–Penrose inverse of
    every complex face, inverse FFT. It satisfies the four Penrose equations under ∗."""
    A = _tensor3("A", A)
    faces = torch.fft.fft(A, dim=2).permute(2, 0, 1)              # (k, n1, n2)
    inv = torch.linalg.pinv(faces, rtol=rtol) if rtol is not None else torch.linalg.pinv(faces)
    return _real(torch.fft.ifft(inv.permute(1, 2, 0), dim=2), A)


def fft_faces(A: torch.Tensor) -> torch.Tensor:
    """The complex faces of ``A`` in the Fourier domain, (n1, n2, k)."""
    return torch.fft.fft(_tensor3("A", A), dim=2)


# ---------------------------------------------------------------------------------------------
# Word tensors and the closed-form maps
# ---------------------------------------------------------------------------------------------
def fit_map(XA: torch.Tensor, XB: torch.Tensor) -> torch.Tensor:
    """``T = XA⁺ ∗ XB`` (d_A, d_B, k): the minimum-norm minimiser of ``‖XA ∗ T − XB‖_F`` for
    word tensors XA (N, d_A, k) and XB (N, d_B, k)."""
    XA, XB = _tensor3("XA", XA), _tensor3("XB", XB)
    if XA.shape[0] != XB.shape[0] or XA.shape[2] != XB.shape[2]:
        raise ValueError(f"XA (N, d_A, k) and XB (N, d_B, k) must hold the same N words with the "
                         f"same k; got shapes {tuple(XA.shape)} and {tuple(XB.shape)}")
    if XA.shape[0] == 0:
        raise ValueError("XA and XB hold no words: give at least one word")
    return t_product(t_pinv(XA), XB)


def word_tensor(table: torch.Tensor, ids: Sequence[int], k: int) -> torch.Tensor:
    """A word's (1, d, k) tensor: its sub-token embeddings ``table[ids]`` along the tube,
    zero-padded (or cut) to ``k`` columns. The padding is a mask, not a test for an embedding."""
    k = _check.integer("k", k, low=1)
    if table.dim() != 2:
        raise ValueError(f"table must be a (vocabulary, width) matrix; got shape {tuple(table.shape)}")
    ids = list(ids)
    if not ids:
        raise ValueError("ids is empty: a word has at least one sub-token")
    out = table.new_zeros(1, table.shape[1], k)
    used = ids[:k]
    out[0, :, :len(used)] = table[torch.as_tensor(used)].T
    return out


@dataclasses.dataclass
class WordMaps:
    """The fitted maps ``T_k`` (d_A, d_B, k) per B sub-token count ``k``, and the words used."""
    maps: dict[int, torch.Tensor]
    words: dict[int, list[str]]
    d_A: int
    d_B: int

    def get(self, k: int) -> torch.Tensor:
        k = _check.integer("k", k, low=1)
        if k in self.maps:
            return self.maps[k]
        # no fitted word needs k sub-tokens: the zero-padded identity (d_A × d_B, any shapes)
        eye = torch.zeros(self.d_A, self.d_B, k, dtype=next(iter(self.maps.values())).dtype)
        n = min(self.d_A, self.d_B)
        eye[:n, :n, 0] = torch.eye(n)
        return eye


def fit_word_maps(words: Sequence[str], ids_A, ids_B, table_A: torch.Tensor,
                  table_B: torch.Tensor, *, max_subtokens: int = 4) -> WordMaps:
    """Fit one map per B sub-token count ``k = 1 … max_subtokens`` (words grouped by B's
    length, as the official ``set_gradient``): ``T_k = X_A⁺ ∗ X_B``. ``ids_A(word)`` and
    ``ids_B(word)`` give a word's sub-token ids in each model."""
    words = list(words)
    if not words:
        raise ValueError("words is empty: give at least one word to fit the maps on")
    K = _check.integer("max_subtokens", max_subtokens, low=1)
    for name, table in (("table_A", table_A), ("table_B", table_B)):
        if table.dim() != 2:
            raise ValueError(f"{name} must be a (vocabulary, width) matrix; got {tuple(table.shape)}")
    maps = fit_by_length(words, ids_A, ids_B, table_A, table_B, K)
    if not maps.maps:
        raise ValueError(f"no word has at most max_subtokens = {K} sub-tokens in B")
    return maps


def fit_by_length(words, ids_A, ids_B, table_A, table_B, K: int) -> WordMaps:
    """Group the words by B's length k ≤ K and fit ``T_k = X_A⁺ ∗ X_B`` per group."""
    groups: dict[int, list[str]] = {}
    for w in words:
        if len(ids_B(w)) <= K:
            groups.setdefault(len(ids_B(w)), []).append(w)
    maps = {}
    for k, ws in sorted(groups.items()):
        XA = torch.cat([word_tensor(table_A, ids_A(w), k) for w in ws])    # (N, d_A, k)
        XB = torch.cat([word_tensor(table_B, ids_B(w), k) for w in ws])    # (N, d_B, k)
        maps[k] = fit_map(XA, XB)
    return WordMaps(maps, groups, table_A.shape[1], table_B.shape[1])


# ---------------------------------------------------------------------------------------------
# The backward pass: words one by one
# ---------------------------------------------------------------------------------------------
TRANSPOSES = {"t": t_transpose, "facewise": facewise_transpose}


def pull_back(grad_B: torch.Tensor, lengths_A: Sequence[int], lengths_B: Sequence[int],
              maps: WordMaps, *, transpose: str = "t") -> torch.Tensor:
    """B's gradient on its sub-token embeddings (L_B, d_B) → a gradient on A's (L_A, d_A), word
    by word (see :func:`walk_words`). Rows of ``grad_B`` after the last word (<eos>, padding)
    are not used; ``L_A = Σ k_A``. ``transpose="facewise"`` is the official code's choice."""
    _check.choice("transpose", transpose, TRANSPOSES)
    if grad_B.dim() != 2 or grad_B.shape[1] != maps.d_B:
        raise ValueError(f"grad_B must be (positions, d_B = {maps.d_B}); got shape "
                         f"{tuple(grad_B.shape)}")
    lengths_A, lengths_B = list(lengths_A), list(lengths_B)
    if not lengths_A or len(lengths_A) != len(lengths_B):
        raise ValueError(f"lengths_A and lengths_B must list the same, non-zero number of words; "
                         f"got {len(lengths_A)} and {len(lengths_B)}")
    if min(lengths_A) < 1 or min(lengths_B) < 1:
        raise ValueError("lengths_A and lengths_B must be ≥ 1 (every word has a sub-token)")
    if sum(lengths_B) > grad_B.shape[0]:
        raise ValueError(f"lengths_B add up to {sum(lengths_B)} rows; grad_B has {grad_B.shape[0]}")
    return walk_words(grad_B, lengths_A, lengths_B, maps, TRANSPOSES[transpose])


def walk_words(grad_B, lengths_A, lengths_B, maps: WordMaps, flip=t_transpose):
    """Word w owns the next k_B(w) rows of grad_B: G_w (1, d_B, k).
    G_w ∗ flip(T_k), k = k_B(w), is (1, d_A, k); its first k_A(w) columns
    (zeros past k) are the gradient of A's sub-tokens of w. The walk
    advances through grad_B: each word gets its own block."""
    out, at = [], 0
    for ka, kb in zip(lengths_A, lengths_B):
        G = grad_B[at:at + kb].T[None]                 # (1, d_B, k): this word's
        at += kb
        back = t_product(G, flip(maps.get(kb).to(grad_B.dtype)))[0]      # (d_A, k)
        cols = back.new_zeros(maps.d_A, ka)
        cols[:, :min(ka, kb)] = back[:, :min(ka, kb)]
        out.append(cols.T)
    return torch.cat(out)


def surrogate(XA: torch.Tensor, maps: WordMaps, k: int) -> torch.Tensor:
    """The linear surrogate of B's word tensors, ``XA ∗ T_k``, whose exact adjoint the pull-back is."""
    return t_product(XA, maps.get(k).to(XA.dtype))
