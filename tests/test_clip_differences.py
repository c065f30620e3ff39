"""PC-CLIP: the loss by hand and its invariances, the freeze, the metrics, prompting, averaging."""
import dataclasses
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


def _tiny_pc_config(steps=3):
    from lab.train import TrainConfig
    return ex.ChapterConfig(pc_train=TrainConfig(steps=steps, lr=1e-2, progress_every=1), pc_batch=8)


def test_pc_clip_finetuning_moves_exactly_the_text_blocks():
    """The spec's trainable set, checked on the chapter's own finetuning run: the two text
    encoder layers (66 944 parameters) move; embeddings, positions, final LN, projection, the
    image tower and the logit scale stay bit-identical, and the base model is untouched."""
    torch.manual_seed(0)
    base = TinyCLIP().eval()
    for p in base.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pc = ex.finetune_pc_clip(base, _tiny_pc_config(), 0, cache=False).model
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    moved = {k for k, v in pc.state_dict().items() if not torch.equal(v, before[k])}
    blocks = {k for k in before if k.startswith("text.transformer.")}
    assert moved == blocks
    text_params = sum(p.numel() for p in base.text.parameters())
    moved_params = sum(before[k].numel() for k in moved)
    assert moved_params == 66_944
    # 74 688 with the original 20 positions; L = 22 adds 2 × 64 position parameters
    assert text_params == 74_688 + 2 * 64
    assert not any(p.requires_grad for p in pc.parameters())


def test_pc_training_pairs_are_a_stream_of_their_own(monkeypatch):
    """PC-CLIP's training pairs share no image with any evaluation stream, nor with the base
    model's own training batches of the same seed: a shared generator state would repeat images
    bit for bit (the pixel noise alone has 3 072 draws per image)."""
    from lab import pretrained
    from lab.data import shapes
    seen = {"pc": [], "clip": []}
    real_pairs, real_captions = shapes.image_pairs, shapes.images_with_captions

    def pairs(n, rng):
        out = real_pairs(n, rng)
        seen["pc"] += [out[0], out[1]]
        return out

    def captioned(n, rng):
        out = real_captions(n, rng)
        seen["clip"].append(out[0])
        return out

    monkeypatch.setattr(shapes, "image_pairs", pairs)
    torch.manual_seed(0)
    base = TinyCLIP().eval()
    cfg = _tiny_pc_config(steps=2)
    ex.finetune_pc_clip(base, cfg, 0, cache=False)
    monkeypatch.setattr(shapes, "image_pairs", real_pairs)
    monkeypatch.setattr(shapes, "images_with_captions", captioned)
    from lab.train import TrainConfig
    pretrained.train_tiny_clip(0, pretrained.TinyClipConfig(batch=8, train=TrainConfig(
        steps=2, lr=1e-3, optimizer="adamw", weight_decay=0.01)), cache=False)
    monkeypatch.setattr(shapes, "images_with_captions", real_captions)
    assert ex.pair_stream_seed(cfg, 0) == 1 and len(seen["pc"]) == 4 and len(seen["clip"]) == 2

    data = ex.make_eval_data(ex.PRESETS["tiny"])
    evaluation = [data.zs_images, data.dir_a, data.dir_b, data.ret_a, data.ret_b, data.rank_images,
                  data.colour_images, data.val_images]

    def keys(batches):
        return {img.tobytes() for batch in batches for img in batch}

    train_keys = keys(seen["pc"])
    assert len(train_keys) == sum(len(b) for b in seen["pc"])
    assert not train_keys & keys(evaluation)
    assert not train_keys & keys(seen["clip"])


def test_pair_stream_seed_differs_from_the_model_seed():
    cfg = ex.PRESETS["tiny"]
    assert [ex.pair_stream_seed(cfg, s) for s in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="pair_stream"):
        ex.ChapterConfig(pair_stream=0)


def test_no_difference_text_is_cut():
    """The longest text the world writes (colour + shape clauses, 21 words) fits with its <eos>."""
    from lab.data import shapes
    attrs = shapes.all_attributes()
    longest = max(len(" and ".join(shapes.difference_clauses(a, b)[:2]).split())
                  for a in attrs[::7] for b in attrs if (a != b).any())
    assert longest == 21 and shapes.SEQ_LEN >= longest + 1
    text = "the first is red while the second is blue and the first is a circle while the second is a square"
    tok = shapes.WordTokenizer()
    assert tok.decode(tok.encode(text)) == [text]


def test_bounds_are_the_spec_thresholds():
    tiny = ex.PRESETS["tiny"]
    assert tiny.claim_bounds("C1a") == {"at_most": 0.75} and tiny.claim_bounds("C1b") == {"at_least": 0.90}
    assert tiny.claim_bounds("C3b") == {"at_most": 0.10} and tiny.claim_bounds("C4a") == {"at_least": 0.02}
    assert ex.PRESETS["gpu"].claim_bounds("C3b") == {"at_most": 0.02}
    with pytest.raises(ValueError, match="claim_id"):
        tiny.claim_bounds("C9")


def test_lr_choice_keeps_the_zero_shot_guard(monkeypatch):
    torch.manual_seed(0)
    base = TinyCLIP().eval()
    cfg = dataclasses.replace(_tiny_pc_config(steps=1), lr_grid=(1e-4, 1e-2), lr_validation=(13, 40))
    lr, table = ex.choose_lr(base, cfg, 0)
    assert set(table) == {1e-4, 1e-2} and lr in table
    kept = [k for k, m in table.items() if m["zero_shot_drop"] <= cfg.zero_shot_guard]
    if kept:
        assert table[lr]["direction_accuracy"] == max(table[k]["direction_accuracy"] for k in kept)
    assert ex.choose_lr(base, ex.PRESETS["tiny"], 0) == (1e-4, {})


def test_gpu_preset_runs_the_chapter_on_a_local_open_clip_stand_in(monkeypatch):
    """The gpu preset's path (load, lr choice, finetune of model.transformer, evaluation,
    prompting, averaging) on a tiny random stand-in for an open_clip model: no download."""
    import sys
    import types

    from test_shapes_clip import _stand_in_open_clip_tokenizer, _StandInOpenCLIP

    from lab.train import TrainConfig
    module = types.ModuleType("open_clip")
    module.create_model_and_transforms = lambda arch, pretrained: (_StandInOpenCLIP(), None, None)
    module.get_tokenizer = lambda arch: _stand_in_open_clip_tokenizer
    monkeypatch.setitem(sys.modules, "open_clip", module)
    gpu = ex.PRESETS["gpu"]
    assert gpu.open_clip == ("ViT-B-32", "laion2b_s34b_b79k") and gpu.pc_batch == 512
    assert ex.PRESETS["paper"].open_clip == ("ViT-L-14", "datacomp_xl_s13b_b90k")
    cfg = dataclasses.replace(gpu, pc_train=TrainConfig(steps=2, lr=1e-6, progress_every=1),
                              pc_batch=16, lr_validation=(13, 40), zero_shot=(123, 40),
                              direction=(7, 40), retrieval=(8, 20), ranking=(9, 40),
                              colour=(11, 60), colour_validation=(12, 60))
    base, losses = ex.pretrain(cfg, 0)
    assert losses is None and not any(p.requires_grad for p in base.parameters())
    lr, table = ex.choose_lr(base, cfg, 0)
    assert set(table) == set(gpu.lr_grid) and lr in table
    pc = ex.finetune_pc_clip(base, cfg, 0, lr=lr, cache=False).model
    assert ex.moved_keys(base, pc) <= ex.text_block_keys(pc) == {"model.transformer.weight",
                                                                  "model.transformer.bias"}
    data = ex.make_eval_data(cfg)
    emb = ex.embed_eval_images(base, data)
    assert set(ex.evaluate(pc, data, emb)) == {"zero_shot", "colour_zero_shot", "direction_accuracy",
                                               "size_auc", "retrieval_at_1"}
    assert set(ex.comparative_prompting(pc, data, emb, cfg)["accuracy"]) == set(cfg.prompt_alphas)
    assert list(ex.averaging_curve(base, pc, data, emb, cfg.average_alphas)) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_moved_keys_and_text_block_keys():
    torch.manual_seed(0)
    a, b = TinyCLIP(), TinyCLIP()
    b.load_state_dict(a.state_dict())
    assert ex.moved_keys(a, b) == set()
    with torch.no_grad():
        b.logit_scale += 1
    assert ex.moved_keys(a, b) == {"logit_scale"}
    assert all(k.startswith("text.transformer.") for k in ex.text_block_keys(a))
    assert sum(a.state_dict()[k].numel() for k in ex.text_block_keys(a)) == 66_944
