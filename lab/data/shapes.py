"""The shapes world: 32×32 images of one coloured shape, exact captions, and difference captions.

Everything is drawn from a ``numpy.random.Generator``; the order of random calls is part of the
contract (attributes of a whole batch first, then the images in order), so a seed fixes every
image bit for bit. Attribute tuples are ``(shape, colour, size, position)`` of indices into the
tables below, whose order is the class order everywhere.
"""
from __future__ import annotations

import numpy as np

from .. import _check

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.15, 0.2, 1.0),
           "yellow": (1.0, 0.95, 0.1), "purple": (0.65, 0.1, 0.9), "orange": (1.0, 0.55, 0.05)}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
POSITIONS = ("left", "right")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZES, "position": POSITIONS}
IMAGE_SIZE = 32
RADIUS = {"small": 4.0, "large": 8.5}
NOISE_STD = 0.03

VOCAB = ("<pad> <eos> a on the first second is than while larger smaller more to and has same "
         "color shape photo of circle square triangle cross red green blue yellow purple orange "
         "small large left right").split()
PAD, EOS = 0, 1
# The longest difference text (a colour clause and a shape clause joined by "and") has 21 words;
# with its <eos> it needs 22 positions, so nothing the world writes is ever cut.
SEQ_LEN = 22


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator or an integer seed; got {type(rng).__name__}")
    return rng


def attributes_of(shape: str, colour: str, size: str, position: str) -> tuple[int, int, int, int]:
    """The attribute tuple (indices) of named attributes; unknown names raise ValueError."""
    return (SHAPES.index(_check.choice("shape", shape, SHAPES)),
            COLOUR_NAMES.index(_check.choice("colour", colour, COLOUR_NAMES)),
            SIZES.index(_check.choice("size", size, SIZES)),
            POSITIONS.index(_check.choice("position", position, POSITIONS)))


def all_attributes() -> np.ndarray:
    """All 96 tuples (96, 4), in the order of the caption classes: shape, colour, size, position."""
    grids = np.meshgrid(*(np.arange(len(v)) for v in ATTRIBUTES.values()), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def _attrs(name: str, attrs) -> np.ndarray:
    arr = np.asarray(attrs)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer attribute tuples of shape (n, 4) "
                         f"(shape, colour, size, position); got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty: give at least one attribute tuple")
    for k, (attr, values) in enumerate(ATTRIBUTES.items()):
        if arr[:, k].min() < 0 or arr[:, k].max() >= len(values):
            raise ValueError(f"{name}[:, {k}] ({attr}) must be in 0..{len(values) - 1} for "
                             f"{', '.join(values)}; got {sorted(set(arr[:, k].tolist()))}")
    return arr


def sample_attributes(n: int, rng) -> np.ndarray:
    """n attribute tuples, each attribute uniform and independent (four draws per object)."""
    n = _check.integer("n", n, low=1)
    rng = _rng(rng)
    sizes = [len(v) for v in ATTRIBUTES.values()]
    return np.array([[rng.integers(s) for s in sizes] for _ in range(n)], dtype=np.int64)


def render(attrs, rng) -> np.ndarray:
    """Images (n, 3, 32, 32) float32 of the attribute tuples: jittered size, place, brightness,
    Gaussian pixel noise (unclipped). Per image the draws are r, c_x, c_y, brightness, noise."""
    attrs = _attrs("attrs", attrs)
    rng = _rng(rng)
    n = len(attrs)
    params = np.empty((n, 4))
    noise = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE))
    for i, (_, _, size, pos) in enumerate(attrs):
        r = RADIUS[SIZES[size]] * rng.uniform(0.9, 1.1)
        cx = (0.3 if pos == 0 else 0.7) * IMAGE_SIZE + rng.uniform(-2, 2)
        cy = IMAGE_SIZE / 2 + rng.uniform(-5, 5)
        params[i] = r, cx, cy, rng.uniform(0.85, 1.0)
        noise[i] = rng.normal(0.0, NOISE_STD, (3, IMAGE_SIZE, IMAGE_SIZE))
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
    r, cx, cy, bright = (params[:, k, None, None] for k in range(4))
    dx, dy = x[None] - cx, y[None] - cy
    shape = attrs[:, 0, None, None]
    masks = np.where(shape == 0, dx ** 2 + dy ** 2 <= r ** 2,
            np.where(shape == 1, (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r),
            np.where(shape == 2, (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + r)),
                     ((np.abs(dx) <= 0.35 * r) & (np.abs(dy) <= r))
                     | ((np.abs(dy) <= 0.35 * r) & (np.abs(dx) <= r)))))
    rgb = np.array(list(COLOURS.values()))[attrs[:, 1]] * params[:, 3:4]       # (n, 3)
    images = masks[:, None] * rgb[:, :, None, None] + noise
    return images.astype(np.float32)


def caption(attr) -> str:
    """'a {size} {colour} {shape} on the {position}' for one attribute tuple."""
    s, c, z, p = _attrs("attr", attr)[0]
    return f"a {SIZES[z]} {COLOUR_NAMES[c]} {SHAPES[s]} on the {POSITIONS[p]}"


def parse_caption(text: str) -> tuple[int, int, int, int]:
    """The attribute tuple of a caption made by :func:`caption` (ValueError otherwise)."""
    words = str(text).split()
    if len(words) != 7 or words[0] != "a" or words[4:6] != ["on", "the"]:
        raise ValueError(f"text must read 'a {{size}} {{colour}} {{shape}} on the {{position}}'; got {text!r}")
    return attributes_of(words[3], words[2], words[1], words[6])


def difference_clauses(a, b) -> list[str]:
    """One clause per attribute in which a differs from b (first minus second), in the order
    size, colour, shape, position."""
    (sa, ca, za, pa), (sb, cb, zb, pb) = _attrs("a", a)[0], _attrs("b", b)[0]
    clauses = []
    if za != zb:
        clauses.append(f"the first is {'larger' if SIZES[za] == 'large' else 'smaller'} than the second")
    if ca != cb:
        clauses.append(f"the first is {COLOUR_NAMES[ca]} while the second is {COLOUR_NAMES[cb]}")
    if sa != sb:
        clauses.append(f"the first is a {SHAPES[sa]} while the second is a {SHAPES[sb]}")
    if pa != pb:
        clauses.append(f"the first is more to the {POSITIONS[pa]}")
    return clauses


def difference_caption(a, b, rng) -> str:
    """How a differs from b: the clauses shuffled with `rng`, the first two joined by ' and '."""
    clauses = difference_clauses(a, b)
    if not clauses:
        raise ValueError("a and b must differ in at least one attribute; they are identical")
    _rng(rng).shuffle(clauses)
    return " and ".join(clauses[:2])


def sample_pairs(n: int, rng) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n pairs (a, b, text): identical pairs are redrawn (both tuples) before the text is written."""
    n = _check.integer("n", n, low=1)
    rng = _rng(rng)
    a_all, b_all, texts = [], [], []
    while len(texts) < n:
        a, b = sample_attributes(1, rng)[0], sample_attributes(1, rng)[0]
        if (a == b).all():
            continue
        a_all.append(a)
        b_all.append(b)
        texts.append(difference_caption(a, b, rng))
    return np.array(a_all), np.array(b_all), texts


def images_with_captions(n: int, rng) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A batch: attributes first, then their images with the same generator, and captions."""
    rng = _rng(rng)
    attrs = sample_attributes(n, rng)
    return render(attrs, rng), attrs, [caption(a) for a in attrs]


def image_pairs(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A pair batch: all (a, b, text) triples, then all first images, then all second images."""
    rng = _rng(rng)
    a, b, texts = sample_pairs(n, rng)
    return render(a, rng), render(b, rng), a, b, texts


class _Tokenizer:
    """What the shapes world's tokenizers share: a text becomes at most ``seq_len − 1`` ids
    (:meth:`_ids_of`, defined by each tokenizer), then <eos>, then <pad> (= 0) to ``seq_len``;
    decoding stops at the first <eos> and joins the tokens' strings with :attr:`joiner`."""
    vocab: tuple[str, ...]
    seq_len: int
    joiner = " "

    def _ids_of(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, texts) -> np.ndarray:
        """(n, seq_len) int64 ids of a text or a list of texts; an unknown word raises ValueError."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: give at least one text")
        out = np.full((len(texts), self.seq_len), PAD, dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings; got {type(text).__name__}")
            ids = self._ids_of(text)
            out[i, :len(ids)] = ids
            out[i, len(ids)] = EOS
        return out

    def decode(self, ids) -> list[str]:
        """Texts of id rows, up to the first <eos>."""
        texts = []
        for row in np.atleast_2d(np.asarray(ids)):
            parts = []
            for i in row:
                if int(i) == EOS:
                    break
                parts.append(self.vocab[int(i)])
            texts.append(self.joiner.join(parts))
        return texts

    def __call__(self, texts):
        import torch
        return torch.from_numpy(self.encode(texts))


class WordTokenizer(_Tokenizer):
    """Whitespace words → ids of :data:`VOCAB`; truncate to ``SEQ_LEN − 1`` = 21 words (the
    longest text the world writes), append <eos>, right-pad to ``SEQ_LEN`` = 22."""
    vocab = tuple(VOCAB)
    seq_len = SEQ_LEN

    def __init__(self):
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    @property
    def free_words(self) -> tuple[str, ...]:
        return self.vocab[2:]

    def _ids_of(self, text: str) -> list[int]:
        ids = []
        for word in text.split()[: self.seq_len - 1]:
            if word not in self.ids:
                raise ValueError(f"word {word!r} in texts is not in the vocabulary; "
                                 f"accepted words: {' '.join(self.free_words)}")
            ids.append(self.ids[word])
        return ids


def word_chunks(word: str, size: int = 3) -> list[str]:
    """A word cut into consecutive ``size``-character chunks: "triangle" → tri|ang|le."""
    if not isinstance(word, str) or not word or any(c.isspace() for c in word):
        raise ValueError(f"word must be a non-empty string without whitespace; got {word!r}")
    size = _check.integer("size", size, low=1)
    return [word[i:i + size] for i in range(0, len(word), size)]


class ChunkTokenizer(_Tokenizer):
    """Whitespace words → consecutive 3-character chunks → ids: ``<pad>``, ``<eos>``, then the
    53 distinct chunks of the 33 free words, sorted (55 ids). Chunks are truncated to
    ``seq_len − 1`` = 31, <eos> is appended, and the row is right-padded with <pad> (= 0) to 32.
    A word outside :data:`VOCAB` raises ValueError, as for :class:`WordTokenizer`. Decoding joins
    the chunks without spaces (word boundaries are not in the ids: "tri ang le" and "triangle"
    encode alike)."""
    seq_len = 32
    chunk = 3
    joiner = ""

    def __init__(self):
        words = VOCAB[2:]
        chunks = sorted({c for w in words for c in word_chunks(w, self.chunk)})
        self.vocab = ("<pad>", "<eos>", *chunks)
        self.ids = {c: i for i, c in enumerate(self.vocab)}
        self.words = frozenset(words)

    def word_ids(self, word: str) -> list[int]:
        """The chunk ids of one word (ValueError for a word outside the world's vocabulary)."""
        if word not in self.words:
            raise ValueError(f"word {word!r} is not in the vocabulary; accepted words: "
                             f"{' '.join(VOCAB[2:])}")
        return [self.ids[c] for c in word_chunks(word, self.chunk)]

    def _ids_of(self, text: str) -> list[int]:
        return [j for w in text.split() for j in self.word_ids(w)][: self.seq_len - 1]
