"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import math

from ...data import shapes
from ...metrics import auroc
from .method import difference_cosines, direction_accuracy, rank_scores


def loss_floor_512() -> float:
    """Exercise 1: the τ = 1 loss at B = 512 with aligned, mutually orthogonal pairs."""
    return math.log(1 + 511 / math.e)


def swapped_direction_accuracy(model, emb, data) -> float:
    """Exercise 2: direction accuracy on the evaluation pairs with every (a, b) swapped."""
    return direction_accuracy(difference_cosines(model, emb.dir_b, emb.dir_a, data.dir_texts))


def left_ranking_auc(model, emb, data) -> float:
    """Exercise 3: AUC of "the first is more to the left" with left-hand shapes as positives."""
    left = data.rank_attrs[:, 3] == shapes.POSITIONS.index("left")
    return auroc(rank_scores(model, emb.rank, "the first is more to the left"), left)
