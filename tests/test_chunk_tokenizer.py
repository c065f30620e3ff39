"""The shapes world's chunk tokenizer (model B of the FUSE chapter)."""
import collections

import numpy as np
import pytest

from lab.data import shapes as S


def test_chunk_vocabulary_has_55_ids_and_the_9_22_2_split():
    tok = S.ChunkTokenizer()
    assert len(tok.vocab) == 55 and tok.vocab[:2] == ("<pad>", "<eos>")
    assert list(tok.vocab[2:]) == sorted(tok.vocab[2:])
    counts = collections.Counter(len(tok.word_ids(w)) for w in S.VOCAB[2:])
    assert counts == {1: 9, 2: 22, 3: 2}
    assert [w for w in S.VOCAB[2:] if len(tok.word_ids(w)) == 3] == ["smaller", "triangle"]
    assert S.word_chunks("triangle") == ["tri", "ang", "le"] and S.word_chunks("a") == ["a"]
    assert S.word_chunks("smaller") == ["sma", "lle", "r"] and S.word_chunks("left") == ["lef", "t"]


def test_chunks_are_shared_across_words_and_encode_round_trips():
    tok = S.ChunkTokenizer()
    assert tok.ids["le"] in tok.word_ids("while") and tok.ids["le"] in tok.word_ids("triangle")
    text = "a small triangle on the left"
    row = tok.encode(text)[0]
    assert row.shape == (32,) and row.dtype == np.int64
    n = sum(len(tok.word_ids(w)) for w in text.split())
    assert row[n] == S.EOS and (row[n + 1:] == S.PAD).all() and (row[:n] > 1).all()
    assert tok.decode(row[None]) == [text.replace(" ", "")]


def test_chunk_tokenizer_rejects_unknown_words_and_empty_input():
    tok = S.ChunkTokenizer()
    with pytest.raises(ValueError, match="word 'dog'"):
        tok.encode("a dog")
    with pytest.raises(ValueError, match="texts"):
        tok.encode([])
    with pytest.raises(ValueError, match="word"):
        S.word_chunks("")
    with pytest.raises(ValueError, match="size"):
        S.word_chunks("abc", 0)
