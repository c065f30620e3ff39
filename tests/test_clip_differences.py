"""PC-CLIP: the loss by hand and its invariances, the freeze, the metrics, prompting, averaging."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab.metrics import auroc
from lab.nn.tinyclip import TinyCLIP
from lab.papers.clip_differences import experiments as ex
from lab.papers.clip_differences import method as cd


def _embeddings(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_loss_by_hand_and_temperature():
    eye = torch.eye(3)
    zero = torch.zeros(3, 3)
    assert float(cd.pc_loss(eye, eye, zero)) == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    assert float(cd.pc_loss(eye, eye, zero, 0.5)) == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)
    same = torch.ones(3, 3)
    assert float(cd.pc_loss(same, eye, zero)) == pytest.approx(math.log(3), abs=1e-6)


def test_loss_invariances():
    t, a, b = _embeddings()
    ref = cd.pc_loss(t, a, b)
    torch.testing.assert_close(cd.pc_loss(3.7 * t, a, b), ref)
    torch.testing.assert_close(cd.pc_loss(t, 2.5 * a, 0.3 * b), ref)   # rescaled before normalising
    u, v = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    torch.testing.assert_close(cd.normalised_difference(a, b), (u - v) / (u - v).norm(dim=-1, keepdim=True))
    logits = F.normalize(t, dim=-1) @ cd.normalised_difference(a, b).T
    swapped = F.normalize(t, dim=-1) @ cd.normalised_difference(b, a).T
    torch.testing.assert_close(swapped, -logits, rtol=0, atol=0)


def test_loss_is_mean_of_row_and_column_cross_entropies():
    t, a, b = _embeddings(5)
    logits = F.normalize(t, dim=-1) @ cd.normalised_difference(a, b).T
    rows = -torch.log_softmax(logits, dim=1).diagonal().mean()
    cols = -torch.log_softmax(logits, dim=0).diagonal().mean()
    torch.testing.assert_close(cd.pc_loss(t, a, b), 0.5 * (rows + cols))


def test_identical_pairs_and_bad_shapes_are_rejected():
    t, a, b = _embeddings(3)
    b[1] = 2 * a[1]                      # same direction: identical after normalisation
    with pytest.raises(ValueError, match="identical in 1 pair"):
        cd.pc_loss(t, a, b)
    with pytest.raises(ValueError, match="emb_a and emb_b"):
        cd.pc_loss(t, a, b[:2])
    with pytest.raises(ValueError, match="temperature"):
        cd.pc_loss(t, a, a + 1, temperature=0)


def test_one_step_changes_only_the_text_blocks():
    torch.manual_seed(0)
    model = TinyCLIP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = cd.freeze_all_but_text_blocks(model)
    assert n == 66_944
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    from lab.data import shapes
    img_a, img_b, _, _, texts = shapes.image_pairs(8, 0)
    with torch.no_grad():
        ea, eb = model.encode_image(torch.from_numpy(img_a)), model.encode_image(torch.from_numpy(img_b))
    cd.pc_loss(model.encode_text(model.tokenize(texts)), ea, eb).backward()
    opt.step()
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == key.startswith("text.transformer."), key


def test_direction_accuracy_antisymmetric():
    model = TinyCLIP()
    from lab.data import shapes
    from lab.pretrained import image_embeddings
    img_a, img_b, _, _, texts = shapes.image_pairs(40, 3)
    ea, eb = image_embeddings(model, img_a), image_embeddings(model, img_b)
    cos = cd.difference_cosines(model, ea, eb, texts)
    assert (cos != 0).all()
    swapped = cd.difference_cosines(model, eb, ea, texts)
    np.testing.assert_allclose(swapped, -cos, atol=1e-6)
    assert cd.direction_accuracy(swapped) == pytest.approx(1 - cd.direction_accuracy(cos))


def test_auc_by_hand():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)


def test_comparative_prompting():
    g = torch.Generator().manual_seed(1)
    classes = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    pair_emb = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    torch.testing.assert_close(cd.comparative_class_embeddings(classes, [(0, 2)], pair_emb[:1], 1.0), classes)
    out = cd.comparative_class_embeddings(classes, [(0, 2), (4, 2)], pair_emb, 0.6)
    changed = [k for k in range(6) if not torch.equal(out[k], classes[k])]
    assert changed == [2]
    expected = F.normalize(0.6 * classes[2] + 0.4 * ((classes[0] - pair_emb[0]) + (classes[4] - pair_emb[1])) / 2, dim=0)
    torch.testing.assert_close(out[2], expected)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(6))
    with pytest.raises(ValueError, match="pairs"):
        cd.comparative_class_embeddings(classes, [(1, 1)], pair_emb[:1], 0.5)


def test_top_confusions_skip_the_diagonal_and_zero_cells():
    conf = np.array([[50, 0, 3], [0, 60, 0], [1, 0, 40]])
    assert cd.top_confusions(conf, 3) == [(2, 0), (0, 2)]      # (i, j): true j seen as i
    assert cd.top_confusions(np.eye(3) * 9, 3) == []


def test_weight_average_endpoints_and_mean():
    torch.manual_seed(0)
    pre = TinyCLIP().state_dict()
    ft = TinyCLIP().state_dict()
    for alpha, ref in ((0.0, pre), (1.0, ft)):
        avg = ex.weight_average(pre, ft, alpha)
        assert all(torch.equal(avg[k], ref[k]) for k in ref)
    half = ex.weight_average(pre, ft, 0.5)
    assert all(torch.allclose(half[k], (pre[k] + ft[k]) / 2) for k in pre)
    with pytest.raises(ValueError, match="same keys"):
        ex.weight_average(pre, {k: v for k, v in ft.items() if k != "logit_scale"}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        ex.weight_average(pre, ft, 1.5)


def test_rank_text_must_be_in_vocabulary():
    model = TinyCLIP()
    with pytest.raises(ValueError, match="'bigger'"):
        cd.rank_scores(model, torch.zeros(2, 64), "the first is bigger")


def test_comparative_prompting_without_pairs_keeps_the_classes():
    classes = F.normalize(torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(cd.comparative_class_embeddings(classes, [], classes[:0], 0.4), classes)
