"""The instructor's worked solutions of every chapter's numerical exercises.

One entry per exercise: the code that fills the exercise's answer cell in the course version
(between nbgrader's solution markers), worked out the way a student would, from the formula in
the exercise or from the chapter's objects. They are never shown in the book, and the course's
hidden tests grade them against the chapter's `answers` module like any other submission.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Solution:
    code: str             # sets answer_<n>; may use the chapter's objects, imports what else it needs
    whole: bool = False   # the answer is a count: the student's feedback says a whole number is due


S = Solution
SOLUTIONS: dict[str, dict[int, Solution]] = {
    "mode-interpolation": {
        1: S("window = [2.2, 1.9, 2.1, 2.0]   # the last K = 4 of the five steps\n"
             "mean = sum(window) / len(window)\n"
             "answer_1 = sum((x - mean) ** 2 for x in window) / len(window)"),
        2: S("import torch\n"
             "from lab.data import gaussian_1d\n"
             "h, root = 1e-5, float(schedule.alpha_bars[0]) ** 0.5\n"
             "x = torch.tensor([[1.5 - h], [1.5 + h]], dtype=torch.float64) * root\n"
             "m = mi.oracle_posterior_mean(x, 0, gaussian_1d((1.0, 2.0)), schedule)[:, 0]\n"
             "answer_2 = float(m[1] - m[0]) / (2 * h * root)"),
        3: S("answer_3 = learned.operating_point(K=10, retain=0.90).removal"),
    },
    "ect": {
        1: S("import math\n"
             "n = 1 + 8 / (1 + math.exp(1 * 1.0))        # n(t) = 1 + k·sigmoid(−b t) at t = 1\n"
             "answer_1 = max(0.0, 1.0 * (1 - n / 2 ** (1 + 1)))"),
        2: S("import math\n"
             "Q = 4 ** (0 + 1)\n"
             "# 1 + 8·sigmoid(−t) = Q  ⇔  1 + e^t = 8/(Q − 1)\n"
             "answer_2 = math.log(8 / (Q - 1) - 1)"),
        3: S("s, t = 0.5, 1.0\n"
             "answer_3 = s / (s ** 2 + t ** 2) ** 0.5"),
    },
    "arimec": {
        1: S("import math\n"
             "p, q = [0.6, 0.4], [0.5, 0.3, 0.2]\n"
             "masses = []\n"
             "while max(p) > 1e-12:\n"
             "    i, j = p.index(max(p)), q.index(max(q))\n"
             "    d = min(p[i], q[j])\n"
             "    masses.append(d)\n"
             "    p[i] -= d\n"
             "    q[j] -= d\n"
             "answer_1 = -sum(d * math.log(d) for d in masses)"),
        2: S("import math\n"
             "rest = (1 - 0.9) / 8                 # the other 8 outcomes share the rest evenly\n"
             "answer_2 = -0.9 * math.log(0.9) - 8 * rest * math.log(rest)"),
        3: S("world = stego.worlds[0]\n"
             "answer_3 = stego.h_x[world] / stego.h_y_per_token[world]"),
    },
    "mimetic-init": {
        1: S("import math\n"
             "A = -math.exp(-6.0)                  # A = −exp(Â)\n"
             "answer_1 = math.exp(1.0 * A)"),
        2: S("import math\n"
             "answer_2 = math.log(1 / 0.01) / (0.1 * 16)"),
        3: S('m = runs["mimetic", session.seed].model.mixers[0]\n'
             "answer_3 = m.nheads * m.headdim * m.d_state", whole=True),
    },
    "mohawk": {
        1: S("import math\n"
             "x = -(0 + cfg.copy.a_bias)\n"
             "answer_1 = 1 / (1 + math.exp(-x))"),
        2: S("answer_2 = 32 * 2048 ** 2", whole=True),
        3: S("T, r = 33, 4\n"
             "answer_3 = 2 * T * r + T", whole=True),
    },
    "ado": {
        1: S("w = [(0.5 * 1) ** (1 / (1 - 0.5)), (0.5 * 4) ** (1 / (1 - 0.5))]\n"
             "answer_1 = w[1] / sum(w)"),
        2: S("alpha, n = 0.3, 1e4\n"
             "answer_2 = alpha * (5 * n ** -alpha) / n     # α (L(n) − ε) / n"),
        3: S("p = [max(x, 0.01) for x in (0.001, 0.002, 0.3, 0.697)]\n"
             "answer_3 = min(p) / sum(p)"),
        4: S("answer_4 = max(0.0, 0.05) * (3.4 - 0.03)"),
    },
    "context-inversion": {
        1: S("import math\n"
             "L = {p: math.log(p * (100 - 1) / (1 - p)) for p in (0.6, 0.2)}\n"
             "answer_1 = 0.5 * L[0.2] - 0.5 * L[0.6]"),
        2: S("import math\n"
             "L = {p: math.log(p * (100 - 1) / (1 - p)) for p in (0.6, 0.2)}\n"
             "answer_2 = 1 / (1 + math.exp(-(0.5 * L[0.2] - 0.5 * L[0.6])))"),
        3: S("import math\n"
             "L = {p: math.log(p * (100 - 1) / (1 - p)) for p in (0.6, 0.2)}\n"
             "answer_3 = L[0.6] / (L[0.2] + L[0.6])       # α L_copy = (1 − α) L_mem"),
        6: S("import math\n"
             "# with a distractor: a coin toss between the two slots (ln 2); without: no loss\n"
             "answer_6 = 0.5 * math.log(2) + 0.5 * 0.0"),
    },
    "clip-differences": {
        1: S("import math\n"
             "answer_1 = -math.log(math.e / (math.e + 511))"),
        2: S("cos = cd.difference_cosines(pc, emb.dir_a, emb.dir_b, data.dir_texts)\n"
             "answer_2 = 1 - cd.direction_accuracy(cos)   # every cosine flips its sign"),
        3: S("from lab.metrics import auroc\n"
             'scores = cd.rank_scores(pc, emb.rank, "the first is more to the left")\n'
             "answer_3 = auroc(scores, data.rank_attrs[:, 3] == 0)"),
    },
    "prompt-recovery": {
        1: S("answer_1 = 1 + cfg.gcg_steps * cfg.gcg_batch", whole=True),
        2: S('a = "circle large purple left the on a".split()\n'
             'b = "a large purple circle on the left".split()\n'
             "row = list(range(len(b) + 1))           # word-level Levenshtein distance\n"
             "for i, u in enumerate(a, start=1):\n"
             "    prev, row[0] = row[0], i\n"
             "    for j, v in enumerate(b, start=1):\n"
             "        prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (u != v))\n"
             "answer_2 = 1 - row[-1] / max(len(a), len(b))"),
        3: S('maps = figs.swap_maps(obj0, run[-1]["tokens"])\n'
             'answer_3 = float((maps["estimate"] - maps["exact"]).abs().max())'),
    },
    "fuse": {
        1: S("d_A, d_B = 64, 48\n"
             "answer_1 = sum(d_A * d_B * k for k in (1, 2, 3))", whole=True),
        2: S("answer_2 = 1 + cfg.steps * cfg.batch", whole=True),
        3: S("k, face = 4, 1\n"
             "answer_3 = (k - face) % k              # faces 1 … k−1 come in reverse order",
             whole=True),
    },
}
