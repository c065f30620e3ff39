"""The chapter's figures and explorers build on untrained models (no training here)."""
import math

import numpy as np
import pytest
import torch

from lab.data import shapes
from lab.nn.tinyclip import TinyCLIP
from lab.papers.clip_differences import figures as figs


def _models():
    torch.manual_seed(0)
    return {"base": TinyCLIP().eval(), "PC-CLIP": TinyCLIP().eval()}


def test_single_swaps_are_the_specs_twelve():
    swaps = figs.single_swaps()
    assert len(swaps) == 4 + 6 + 1 + 1 == 12
    assert len({(a, b) for _, a, b in swaps}) == 12
    for _, a, b in swaps:
        assert sum(x != y for x, y in zip(a, b)) == 1
    for col, values in enumerate(shapes.ATTRIBUTES.values()):      # every value takes part
        assert {t[col] for _, a, b in swaps for t in (a, b)} == set(range(len(values)))


def test_single_clause_texts_are_every_one_clause_difference():
    texts = figs.single_clause_texts()
    assert len(texts) == len(set(texts)) == 2 + 30 + 12 + 2
    assert "the first is larger than the second" in texts


def test_pair_probe_flips_sign_with_the_order():
    models = _models()
    a, b = shapes.attributes_of("circle", "red", "small", "left"), shapes.attributes_of("circle", "red", "large", "left")
    ab, ba = figs.pair_probe(models, a, b, 0), figs.pair_probe(models, b, a, 0)
    assert ab["text"] == "the first is smaller than the second"
    assert ba["text"] == "the first is larger than the second"
    assert set(ab["cosine"]) == {"base", "PC-CLIP"}
    for name in ab["cosine"]:
        assert len(ab["top"][name]) == 5
        scores = [c for _, c in ab["top"][name]]
        assert scores == sorted(scores, reverse=True)


def test_explorers_have_static_twins_within_the_frame_limit():
    models = _models()
    images, attrs, _ = shapes.images_with_captions(40, 0)
    for explorer, frames in ((figs.pair_explorer(models, "tiny", 0), 24),
                             (figs.ranker_explorer(models, images, attrs, "tiny", 0), 12),
                             (figs.loss_floor_explorer("tiny", 0), 9)):
        assert np.prod([len(v) for v in explorer.params.values()]) == frames
        fig = explorer()
        assert any("scale: tiny" in t.get_text() for t in fig.texts)


def test_ranking_auc_for_a_named_attribute_and_loss_floor():
    images, attrs, _ = shapes.images_with_captions(40, 1)
    res = figs.ranking(_models()["base"], images, attrs, "the first is larger than the second")
    assert sorted(res["order"]) == list(range(40))
    col, value = figs.RANK_TEXTS["the first is larger than the second"]
    pos, neg = res["scores"][attrs[:, col] == value], res["scores"][attrs[:, col] != value]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]     # AUC by its definition
    assert res["auc"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert figs.loss_floor(512, 1.0) == math.log(1 + 511 / math.e)
