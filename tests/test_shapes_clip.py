"""The shapes world and the tiny CLIP: renderer, captions, tokenizer, model invariances."""
import numpy as np
import pytest
import torch

from lab.data import shapes as S
from lab.nn.tinyclip import (
    HubCLIP,
    OpenCLIP,
    TinyCLIP,
    check_images,
    clip_loss,
    load_hub_clip,
    load_open_clip,
)


def test_render_shape_dtype_determinism_and_background():
    a = S.images_with_captions(8, 3)[0]
    b = S.images_with_captions(8, 3)[0]
    assert a.shape == (8, 3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    fg = a.max(axis=1) > 0.3
    bg = a.transpose(1, 0, 2, 3)[:, ~fg]
    assert abs(bg.mean()) < 0.005 and 0.027 <= bg.std() <= 0.033


def test_render_sizes_positions_colours_over_500_draws():
    images, attrs, _ = S.images_with_captions(500, 0)
    fg = images.max(axis=1) > 0.3
    counts = fg.sum(axis=(1, 2))
    assert counts[attrs[:, 2] == 0].max() <= 80 and counts[attrs[:, 2] == 1].min() >= 90
    xs = np.arange(32) + 0.5
    cx = (fg.sum(axis=1) * xs).sum(axis=1) / counts
    assert cx[attrs[:, 3] == 0].max() < 14 and cx[attrs[:, 3] == 1].min() > 18
    rgb = np.array(list(S.COLOURS.values()))
    for img, mask, colour in zip(images, fg, attrs[:, 1]):
        mean = img[:, mask].mean(axis=1) / 0.925          # undo the mean brightness
        assert np.argmin(((rgb - mean) ** 2).sum(1)) == colour


def test_caption_round_trip_all_96():
    attrs = S.all_attributes()
    assert len({S.caption(a) for a in attrs}) == 96
    for a in attrs:
        assert S.parse_caption(S.caption(a)) == tuple(a)


def test_tokenizer_round_trip_padding_and_unknown_word():
    tok = S.WordTokenizer()
    assert len(tok.vocab) == 35 and tok.vocab[:2] == ("<pad>", "<eos>")
    ids = tok.encode(["a small red circle on the left", "the first is larger than the second"])
    assert ids.shape == (2, S.SEQ_LEN) == (2, 22) and ids[0, 7] == S.EOS and (ids[0, 8:] == S.PAD).all()
    assert tok.decode(ids) == ["a small red circle on the left", "the first is larger than the second"]
    with pytest.raises(ValueError, match="'dog'"):
        tok.encode("a small dog")
    with pytest.raises(ValueError, match="empty"):
        tok.encode([])


def test_difference_captions_refer_to_differences_and_swap_roles():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = S.sample_attributes(2, rng)
        if (a == b).all():
            continue
        ab, ba = S.difference_clauses(a, b), S.difference_clauses(b, a)
        assert len(ab) == int((a != b).sum()) >= 1
        swapped = [c.replace("larger", "@").replace("smaller", "larger").replace("@", "smaller")
                   for c in ab]
        for c_ab, c_ba, c_sw in zip(ab, ba, swapped):
            if "than" in c_ab:
                assert c_ba == c_sw
            elif "more to the" in c_ab:
                assert c_ba == f"the first is more to the {S.POSITIONS[b[3]]}"
            else:
                first, second = c_ab[len("the first is "):].split(" while the second is ")
                assert c_ba == f"the first is {second} while the second is {first}"
    a, b = S.attributes_of("circle", "red", "small", "left"), S.attributes_of("cross", "blue", "large", "right")
    assert S.difference_caption(a, b, 5) == S.difference_caption(a, b, 5)
    with pytest.raises(ValueError, match="identical"):
        S.difference_caption(a, a, 0)


def test_pairs_never_identical_and_texts_in_vocabulary():
    a, b, texts = S.sample_pairs(300, 1)
    assert not (a == b).all(axis=1).any()
    # colour + shape clauses give 21 words: L = 22 keeps every word and the <eos>
    assert max(len(t.split()) for t in texts) == 21
    ids = S.WordTokenizer().encode(texts)
    assert (ids[:, -1] == S.EOS).any() and ((ids == S.EOS).sum(1) == 1).all()
    assert S.WordTokenizer().decode(ids) == texts


def test_bad_attributes_are_named():
    with pytest.raises(ValueError, match="colour.*'red'"):
        S.attributes_of("circle", "pink", "small", "left")
    with pytest.raises(ValueError, match="attrs"):
        S.render(np.array([[0, 9, 0, 0]]), 0)
    with pytest.raises(ValueError, match="empty"):
        S.render(np.zeros((0, 4), dtype=int), 0)


def test_tiny_clip_sizes_and_padding_independence():
    torch.manual_seed(0)
    model = TinyCLIP()
    assert sum(p.numel() for p in model.image.parameters()) == 195_776
    assert sum(p.numel() for p in model.text.parameters()) == 74_688 + 2 * 64   # L = 22 positions
    ids = model.tokenize(["a small red circle on the left"])
    out = model.encode_text(ids)
    changed = ids.clone()
    changed[0, 9:] = torch.randint(2, 35, (S.SEQ_LEN - 9,))
    torch.testing.assert_close(model.encode_text(changed), out, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.text.encode_embeds(model.text.token(ids), ids), out, rtol=0, atol=0)


def test_logit_scale_clamped_and_clip_loss_value():
    model = TinyCLIP()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert float(model.scale().detach()) == 100.0
    eye = torch.eye(3)
    assert float(clip_loss(eye, eye, 1.0)) == pytest.approx(np.log(1 + 2 / np.e), abs=1e-6)


def test_images_of_wrong_size_or_dtype_are_rejected():
    model = TinyCLIP()
    with pytest.raises(TypeError, match="float32"):
        model.prepare_images(np.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"\(n, 3, 32, 32\)"):
        model.prepare_images(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="empty"):
        check_images(torch.zeros(0, 3, 32, 32), 32)


class _StandInCLIPModel(torch.nn.Module):
    """A local stand-in with the transformers CLIPModel interface that HubCLIP uses."""

    def __init__(self):
        super().__init__()
        self.vision = torch.nn.Linear(3 * 8 * 8, 16)
        self.text_model = torch.nn.Module()
        self.text_model.encoder = torch.nn.Linear(16, 16)
        self.embed = torch.nn.Embedding(50, 16)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def get_image_features(self, pixel_values):
        return self.vision(pixel_values.flatten(1))

    def get_text_features(self, input_ids, attention_mask):
        h = self.text_model.encoder(self.embed(input_ids))
        return (h * attention_mask[..., None]).sum(1)


def _stand_in_tokenizer(texts, padding, return_tensors):
    ids = [[hash(w) % 50 for w in t.split()] for t in texts]
    n = max(map(len, ids))
    return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])}


def test_hub_wrapper_on_a_local_stand_in():
    hub = HubCLIP(_StandInCLIPModel(), _stand_in_tokenizer, image_size=8)
    images = torch.rand(4, 3, 32, 32)
    x = hub.prepare_images(images)
    assert x.shape == (4, 3, 8, 8)
    assert hub.encode_image(x).shape == (4, 16)
    assert hub.encode_text(hub.tokenize(["a red circle", "a blue square on the left"])).shape == (2, 16)
    assert hub.text_blocks is hub.model.text_model.encoder


def test_hub_loading_errors_are_clear():
    with pytest.raises(ValueError, match="model_id"):
        load_hub_clip("not-a-hub-id")
    try:
        import transformers
    except ImportError:
        with pytest.raises(ImportError, match=r"explorable-papers\[gpu\]"):
            load_hub_clip("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


class _StandInOpenCLIP(torch.nn.Module):
    """A local stand-in with the open_clip CLIP interface that OpenCLIP uses (tiny, random)."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Linear(3 * 8 * 8, 16)
        self.visual.image_size = (8, 8)
        self.token_embedding = torch.nn.Embedding(50, 16)
        self.transformer = torch.nn.Linear(16, 16)
        self.text_projection = torch.nn.Parameter(torch.eye(16))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images):
        return self.visual(images.flatten(1))

    def encode_text(self, ids):
        return self.transformer(self.token_embedding(ids)).sum(1) @ self.text_projection


def _stand_in_open_clip_tokenizer(texts):
    return torch.tensor([[hash(w) % 49 + 1 for w in t.split()][:6] + [0] * (6 - min(6, len(t.split())))
                         for t in texts])


def _fake_open_clip(monkeypatch, create):
    import sys
    import types
    module = types.ModuleType("open_clip")
    module.create_model_and_transforms = create
    module.get_tokenizer = lambda name: _stand_in_open_clip_tokenizer
    monkeypatch.setitem(sys.modules, "open_clip", module)


def test_open_clip_wrapper_on_a_local_stand_in(monkeypatch):
    calls = []

    def create(architecture, pretrained):
        calls.append((architecture, pretrained))
        return _StandInOpenCLIP(), None, None

    _fake_open_clip(monkeypatch, create)
    model = load_open_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert isinstance(model, OpenCLIP) and calls == [("ViT-B-32", "laion2b_s34b_b79k")]
    assert model.image_size == 8 and model.text_blocks is model.model.transformer
    x = model.prepare_images(torch.rand(4, 3, 32, 32))
    assert x.shape == (4, 3, 8, 8) and model.encode_image(x).shape == (4, 16)
    assert model.encode_text(model.tokenize(["a red circle", "the first is larger"])).shape == (2, 16)


def test_open_clip_loading_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="architecture"):
        load_open_clip("", "laion2b_s34b_b79k")
    import sys
    monkeypatch.setitem(sys.modules, "open_clip", None)          # not installed
    with pytest.raises(ImportError, match=r"explorable-papers\[gpu\]"):
        load_open_clip("ViT-B-32", "laion2b_s34b_b79k")

    def offline(architecture, pretrained):
        raise RuntimeError("Failed to download file (offline)")

    _fake_open_clip(monkeypatch, offline)
    with pytest.raises(OSError, match="offline"):
        load_open_clip("ViT-B-32", "laion2b_s34b_b79k")


def test_tiny_clip_cache_key_names_the_architecture(monkeypatch):
    """A change of the text length L (or any tensor's shape, or the vocabulary) changes the
    tiny CLIP's cache key, so a stale checkpoint is never loaded into a different model."""
    from lab import pretrained
    from lab.train import run_key
    cfg = pretrained.TinyClipConfig()
    torch.manual_seed(0)
    key = run_key(*pretrained.tiny_clip_key(cfg, 0, TinyCLIP()))
    assert run_key(*pretrained.tiny_clip_key(cfg, 0, TinyCLIP())) == key
    assert run_key(*pretrained.tiny_clip_key(cfg, 1, TinyCLIP())) != key
    short = TinyCLIP()
    short.text = type(short.text)(seq_len=20)
    assert run_key(*pretrained.tiny_clip_key(cfg, 0, short)) != key
    other = TinyCLIP()
    other.tokenizer = type(other.tokenizer)()
    other.tokenizer.vocab = tuple(reversed(other.tokenizer.vocab))
    assert run_key(*pretrained.tiny_clip_key(cfg, 0, other)) != key
