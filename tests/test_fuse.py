"""FUSE: t-product algebra, pseudo-inverse, closed-form maps, the word-by-word pull-back."""
import numpy as np
import pytest
import torch

from lab.data import shapes as S
from lab.papers.fuse import experiments as ex
from lab.papers.fuse import method as M
from lab.papers.fuse.models import ModelPair

D = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def low_rank(n1, n2, k, r, seed=0):
    return M.t_product(rand(n1, r, k, seed=seed), rand(r, n2, k, seed=seed + 1))


# -- t-product identities ---------------------------------------------------------------------
def test_fft_product_equals_block_circulant_definition():
    A, B = rand(5, 4, 3), rand(4, 6, 3, seed=1)
    C = M.t_product(A, B)
    torch.testing.assert_close(C, M.t_product_circulant(A, B), atol=1e-10, rtol=0)
    # and the block-circulant matrix times B's stacked faces
    stacked = torch.cat([B[:, :, j] for j in range(3)])
    flat = M.block_circulant(A) @ stacked
    torch.testing.assert_close(torch.stack(flat.split(5), dim=2), C, atol=1e-10, rtol=0)
    assert C.dtype == D and not C.is_complex()
    imag = torch.fft.ifft(torch.einsum("ijm,jlm->ilm", torch.fft.fft(A, dim=2),
                                       torch.fft.fft(B, dim=2)), dim=2).imag
    assert imag.abs().max() < 1e-12


def test_associativity_identity_and_reversal_rule():
    A, B, C = rand(5, 4, 3), rand(4, 6, 3, seed=1), rand(6, 2, 3, seed=2)
    torch.testing.assert_close(M.t_product(M.t_product(A, B), C),
                               M.t_product(A, M.t_product(B, C)), atol=1e-10, rtol=0)
    torch.testing.assert_close(M.t_product(A, M.t_identity(4, 3)), A, atol=1e-12, rtol=0)
    torch.testing.assert_close(M.t_product(M.t_identity(5, 3), A), A, atol=1e-12, rtol=0)
    for k in (3, 4):
        A, B = rand(5, 4, k), rand(4, 6, k, seed=1)
        torch.testing.assert_close(M.t_transpose(M.t_product(A, B)),
                                   M.t_product(M.t_transpose(B), M.t_transpose(A)), atol=1e-10, rtol=0)
        # the facewise transpose also satisfies the reversal rule, yet is not the t-transpose
        torch.testing.assert_close(M.facewise_transpose(M.t_product(A, B)),
                                   M.t_product(M.facewise_transpose(B), M.facewise_transpose(A)),
                                   atol=1e-10, rtol=0)
        assert (M.t_transpose(A) - M.facewise_transpose(A)).abs().max() > 0.1
    A = rand(5, 4, 2)
    torch.testing.assert_close(M.t_transpose(A), M.facewise_transpose(A))
    # the t-transpose is the transpose of the block-circulant matrix
    A = rand(3, 4, 3)
    torch.testing.assert_close(M.block_circulant(M.t_transpose(A)), M.block_circulant(A).T)


@pytest.mark.parametrize("shape", [(5, 4, 3), (4, 6, 4)])
@pytest.mark.parametrize("rank", [None, 2])
def test_pseudo_inverse_satisfies_the_four_penrose_equations(shape, rank):
    A = rand(*shape) if rank is None else low_rank(*shape[:2], shape[2], rank)
    P = M.t_pinv(A)
    assert P.shape == (shape[1], shape[0], shape[2]) and P.dtype == D
    t = M.t_product
    torch.testing.assert_close(t(t(A, P), A), A, atol=1e-8, rtol=0)
    torch.testing.assert_close(t(t(P, A), P), P, atol=1e-8, rtol=0)
    torch.testing.assert_close(M.t_transpose(t(A, P)), t(A, P), atol=1e-8, rtol=0)
    torch.testing.assert_close(M.t_transpose(t(P, A)), t(P, A), atol=1e-8, rtol=0)
    torch.testing.assert_close(M.t_pinv(P), A, atol=1e-8, rtol=0)


# -- fitting --------------------------------------------------------------------------------------
def test_fit_interpolates_when_words_are_fewer_than_dimensions():
    XA, XB = rand(6, 10, 3), rand(6, 7, 3, seed=1)
    T = M.fit_map(XA, XB)
    assert T.shape == (10, 7, 3)
    torch.testing.assert_close(M.t_product(XA, T), XB, atol=1e-8, rtol=0)


def test_fit_satisfies_the_normal_equations_with_more_words_than_dimensions():
    XA, XB = rand(30, 10, 3), rand(30, 7, 3, seed=1)
    T = M.fit_map(XA, XB)
    residual = M.t_product(XA, T) - XB
    assert residual.abs().max() > 0.1                        # least squares, not interpolation
    normal = M.t_product(M.t_transpose(XA), residual)
    assert normal.abs().max() < 1e-8


def test_word_level_A_decouples_into_ordinary_least_squares_per_face():
    XA = torch.zeros(12, 8, 3, dtype=D)
    XA[:, :, 0] = rand(12, 8)
    XB = rand(12, 5, 3, seed=1)
    T = M.fit_map(XA, XB)
    for m in range(3):
        torch.testing.assert_close(T[:, :, m], torch.linalg.pinv(XA[:, :, 0]) @ XB[:, :, m],
                                   atol=1e-10, rtol=0)


# -- the pull-back is the adjoint ------------------------------------------------------------
def maps_of(T: torch.Tensor) -> M.WordMaps:
    return M.WordMaps({T.shape[2]: T}, {}, T.shape[0], T.shape[1])


def test_t_transpose_pull_back_is_the_adjoint_and_equals_autograd():
    k = 3
    X, T, G = rand(1, 6, k), rand(6, 4, k, seed=1), rand(1, 4, k, seed=2)
    inner = (G * M.t_product(X, T)).sum()
    torch.testing.assert_close(inner, (M.t_product(G, M.t_transpose(T)) * X).sum(),
                               atol=1e-10, rtol=0)
    Xg = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((G * M.t_product(Xg, T)).sum(), Xg)
    back = M.pull_back(G[0].T, [k], [k], maps_of(T), transpose="t")
    torch.testing.assert_close(back, auto[0].T, atol=1e-10, rtol=0)
    # the official code's facewise transpose is not the adjoint at k = 3 (regression test)
    face = M.pull_back(G[0].T, [k], [k], maps_of(T), transpose="facewise")
    assert (face - auto[0].T).abs().max() > 1e-3


def test_same_model_on_both_sides_gives_the_identity_map_and_unchanged_gradient():
    table = rand(400, 8)
    words = [f"w{i}" for i in range(90)]                   # 30 words per k = 1, 2, 3 (> d = 8)
    ids = {w: list(range(4 * i, 4 * i + 1 + i % 3)) for i, w in enumerate(words)}
    maps = M.fit_word_maps(words, ids.get, ids.get, table, table, max_subtokens=4)
    for k in (1, 2, 3):
        torch.testing.assert_close(maps.get(k), M.t_identity(8, k), atol=1e-8, rtol=0)
    lengths = [len(ids[w]) for w in words[:7]]
    G = rand(sum(lengths) + 3, 8, seed=3)
    back = M.pull_back(G, lengths, lengths, maps)
    torch.testing.assert_close(back, G[:sum(lengths)], atol=1e-8, rtol=0)


def test_word_bookkeeping_walks_the_words_one_by_one():
    # three words with k_B = 2, 1, 3 and k_A = 1; fixed gradient blocks per word
    maps = M.WordMaps({1: rand(5, 4, 1), 2: rand(5, 4, 2, seed=1), 3: rand(5, 4, 3, seed=2)},
                      {}, 5, 4)
    kb = [2, 1, 3]
    blocks = [rand(k, 4, seed=10 + i) for i, k in enumerate(kb)]
    out = M.pull_back(torch.cat(blocks), [1, 1, 1], kb, maps)
    # each word's output depends on its own block only (the first-slice bug fails here)
    for i, k in enumerate(kb):
        own = M.pull_back(blocks[i], [1], [k], maps)
        torch.testing.assert_close(out[i:i + 1], own, atol=1e-12, rtol=0)
    # permuting the words together with their blocks permutes the outputs alike
    perm = [2, 0, 1]
    out_p = M.pull_back(torch.cat([blocks[i] for i in perm]), [1, 1, 1], [kb[i] for i in perm], maps)
    torch.testing.assert_close(out_p, out[perm], atol=1e-12, rtol=0)
    # the official code's bug: every word receives the first word's columns
    buggy = torch.cat([M.pull_back(blocks[0][:k] if k <= 2 else torch.cat([blocks[0], blocks[0][:1]]),
                                   [1], [k], maps) for k in kb])
    assert (buggy - out).abs().max() > 1e-3


def test_longer_A_words_take_the_first_columns_and_zeros_past_k():
    T = rand(5, 4, 2)
    G = rand(2, 4, seed=1)
    back = M.pull_back(G, [3], [2], maps_of(T))
    full = M.t_product(G.T[None], M.t_transpose(T))[0].T
    torch.testing.assert_close(back[:2], full, atol=1e-12, rtol=0)
    assert (back[2] == 0).all()


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="A .* and B"):
        M.t_product(rand(3, 4, 2), rand(5, 4, 2))
    with pytest.raises(ValueError, match="A must be a third-order"):
        M.t_product(rand(3, 4), rand(4, 4, 2))
    with pytest.raises(ValueError, match="XA .* and XB"):
        M.fit_map(rand(3, 4, 2), rand(4, 4, 2))
    with pytest.raises(ValueError, match="words is empty"):
        M.fit_word_maps([], list, list, rand(3, 2), rand(3, 2))
    with pytest.raises(ValueError, match="k"):
        M.word_tensor(rand(3, 2), [1], 0)
    with pytest.raises(ValueError, match="k"):
        M.t_identity(3, 0)
    with pytest.raises(ValueError, match="lengths_A and lengths_B"):
        M.pull_back(rand(4, 4), [], [], maps_of(rand(5, 4, 2)))
    with pytest.raises(ValueError, match="grad_B"):
        M.pull_back(rand(4, 3), [1], [1], maps_of(rand(5, 4, 2)))
    with pytest.raises(ValueError, match="transpose"):
        M.pull_back(rand(4, 4), [1], [1], maps_of(rand(5, 4, 2)), transpose="x")


# -- the tiny pair (untrained weights: only the bookkeeping matters here) ----------------------
@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return ModelPair().eval()


def test_lengths_of_a_caption_add_up_to_Bs_length_without_eos(pair):
    task = ex.Captioning(pair, ex.fit_maps(pair), S.images_with_captions(1, 0)[0][0], 0.05)
    tokens = torch.tensor([S.VOCAB.index(w) for w in ["smaller", "triangle", "on", "the", "left", "a"]])
    la, lb = task.word_lengths(tokens)
    ids = pair.chunk_ids(task.texts(tokens[None]))[0]
    assert sum(lb) == int((ids > 1).sum()) and ids[sum(lb)] == S.EOS and la == [1] * 7


def test_forward_is_exact_decode_then_retokenize(pair):
    task = ex.Captioning(pair, ex.fit_maps(pair), S.images_with_captions(1, 0)[0][0], 0.05)
    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(rng.integers(2, len(S.VOCAB), (100, 6)))
    texts = task.texts(tokens)
    for row, text in zip(tokens, texts):
        assert text == "a " + " ".join(S.VOCAB[int(i)] for i in row)
    np.testing.assert_array_equal(pair.chunk_ids(texts).numpy(), pair.chunker.encode(texts))
    # and the batched exact loss equals the loss of each text on its own
    batch = task.loss(tokens[:5])
    one = torch.stack([task.loss(t[None])[0] for t in tokens[:5]])
    torch.testing.assert_close(batch, one, atol=1e-6, rtol=0)


def test_lm_from_embeddings_equals_the_lm_on_ids(pair):
    ids = torch.tensor([[2, 5, 9, 30, 3]])
    torch.testing.assert_close(pair.lm_logits_from_embeddings(pair.table_A[ids]), pair.lm(ids))


def test_fuse_gradient_is_autograd_through_the_surrogate(pair):
    """fuse's CLIP gradient = autograd of (1 − cos) through X_A(w) ↦ X_A(w) ∗ T_k per word."""
    pair64 = ModelPair().double().eval()
    pair64.load_state_dict(pair.state_dict())
    maps = ex.fit_maps(pair64, dtype=torch.float64)
    image = S.images_with_captions(1, 0)[0]
    img = torch.nn.functional.normalize(pair64.image(torch.from_numpy(image).double()), dim=-1)[0]
    task = ex.Captioning.__new__(ex.Captioning)
    task.model, task.maps, task.lam, task.image = pair64, maps, 0.05, img.detach()
    task.prefix, task.allowed = 2, torch.arange(2, len(S.VOCAB))
    tokens = torch.tensor([S.VOCAB.index(w) for w in ["small", "triangle", "smaller", "on", "the", "left"]])
    words = task.texts(tokens[None])[0].split()
    # surrogate: B's embeddings = X_A(w) ∗ T_k for each word, then the exact B tower
    XA = pair64.table_A.detach()[torch.cat([torch.tensor([2]), tokens])].clone().requires_grad_(True)
    cols = []
    for i, w in enumerate(words):
        k = len(pair64.chunker.word_ids(w))
        cols.append(M.t_product(M.word_tensor(XA, [i], k), maps.get(k))[0].T)
    ids = pair64.chunk_ids([" ".join(words)])
    n = sum(len(c) for c in cols)
    emb = torch.cat(cols + [pair64.table_B[ids[0, n:]]])[None]
    out = torch.nn.functional.normalize(pair64.text.encode_embeds(emb, ids), dim=-1)[0]
    (auto,) = torch.autograd.grad(1 - out @ img, XA)
    # at the surrogate's point (exact here, maps interpolate) the pull-back equals autograd
    fused = task.clip_gradient_A(tokens, "fuse")
    torch.testing.assert_close(fused, auto[1:], atol=1e-8, rtol=1e-6)
    face = task.clip_gradient_A(tokens, "face")
    assert (face - auto[1:]).abs().max() > 1e-6      # "smaller"/"triangle" have k = 3


def test_random_variant_is_uncorrelated_with_fuse(pair):
    maps = ex.fit_maps(pair)
    task = ex.Captioning(pair, maps, S.images_with_captions(1, 0)[0][0], 0.05)
    tokens = torch.tensor([S.VOCAB.index(w) for w in ["small", "red", "triangle", "on", "the", "left"]])
    fuse = task.clip_gradient_A(tokens, "fuse")
    g = torch.Generator().manual_seed(0)
    cos = [torch.nn.functional.cosine_similarity(task.clip_gradient_A(tokens, "random", g), fuse,
                                                 dim=1).mean() for _ in range(1000 // 6 + 1)]
    assert abs(float(torch.stack(cos).mean())) < 0.05


def test_paired_difference_and_its_standard_error():
    p = ex.paired(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0]))
    assert p.mean == 2.0 and abs(p.se - 1 / np.sqrt(3)) < 1e-12 and p.positive == 1.0
    with pytest.raises(ValueError, match="a and b"):
        ex.paired(np.zeros(2), np.zeros(3))


@pytest.mark.slow
def test_tiny_maps_reproduce_all_33_words():
    model, _ = ex.load_models(ex.PRESETS["tiny"], progress=False)
    rec = ex.reconstruction(model, ex.fit_maps(model))
    assert len(rec) == 33 and max(rec.values()) < 1e-4
