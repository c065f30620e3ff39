"""The prompt-recovery chapter: the proxy objective in its three forms, the optimisers behind one
interface with a counted budget, the stand-ins and the metrics (spec §6)."""
import pytest
import torch
from standins import tiny_clip_config

from lab.data import shapes
from lab.nn.tinyclip import TinyCLIP
from lab.papers.prompt_recovery import experiments as ex
from lab.papers.prompt_recovery import method as pr


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = TinyCLIP().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def objective(clip):
    images, _, _ = shapes.images_with_captions(2, 42)
    return pr.ProxyObjective(clip, torch.from_numpy(images))


def test_text_states_pool_like_the_tower(clip):
    ids = clip.tokenize(["a large red circle on the left", "same same"])
    pooled, states, eos = pr.text_states(clip.text, clip.text.token(ids), ids)
    assert torch.equal(pooled, clip.text(ids)) and states.shape == (2, ids.shape[1], 64)
    assert eos.tolist() == [7, 2]


def test_the_three_forms_of_the_proxy_agree(objective):
    ids = torch.tensor([[2, 32, 25, 21, 3, 33], [16, 16, 5, 8, 9, 10]])
    E = objective.table
    by_ids = objective.loss(ids)
    for row, value in zip(ids, by_ids):
        assert objective.on_embeddings(E[row]).item() == pytest.approx(value.item(), abs=1e-5)
        v, g = objective.value_and_grad(row)
        assert v == pytest.approx(value.item(), abs=1e-5)
        G = objective.grad(row)
        assert torch.allclose(G, g @ E.T, atol=1e-6)           # ∂ℓ/∂X = (∂ℓ/∂(XE)) Eᵀ


def test_the_condition_ignores_padding(clip):
    short = pr.with_eos(torch.tensor([[2, 32, 25, 21]]))
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    assert torch.allclose(pr.condition(clip, short), pr.condition(clip, padded), atol=1e-6)


@pytest.mark.parametrize("method", pr.METHODS)
def test_every_optimizer_counts_its_budget_and_keeps_the_best(objective, method):
    objective.evaluations = 0
    steps = 6 if method == "autodan" else 5
    res = pr.run_optimizer(method, objective, length=6, steps=steps, batch=4, k=3, seed=1)
    assert len(res.tokens) == 6 and set(res.tokens.tolist()) <= set(pr.FREE_TOKENS)
    assert res.loss == pytest.approx(objective.loss(res.tokens[None])[0].item(), abs=1e-5)
    if method == "pez":
        assert res.evaluations == res.gradient_calls == steps
    else:
        counted = objective.evaluations - 1                      # minus the check just above
        extra = 0 if method == "autodan" else 1                  # the initial prompt
        assert res.evaluations == counted == steps * 4 + extra
    best = [e["best_loss"] for e in res.trace]
    assert best == sorted(best, reverse=True)


def test_autodan_with_the_lm_prior_runs_and_beam_counts(objective):
    prior = lambda prefix: torch.zeros(len(shapes.VOCAB))
    a = pr.run_optimizer("autodan", objective, length=3, steps=3, batch=4, beam=2, prior=prior,
                         weight=1.0)
    b = pr.run_optimizer("autodan", objective, length=3, steps=3, batch=4, beam=2)
    assert torch.equal(a.tokens, b.tokens) and a.evaluations == 4 + 2 * (2 * 4)


@pytest.mark.parametrize("kwargs, word", [
    ({"method": "adam"}, "method"), ({"k": 34}, "k = 34"), ({"batch": 0}, "batch"),
    ({"steps": 0}, "steps"), ({"length": 0}, "length"),
])
def test_run_optimizer_rejects_bad_input_naming_the_argument(objective, kwargs, word):
    args = {"method": "gcg", "length": 6, "steps": 2, "batch": 4, "k": 3} | kwargs
    with pytest.raises(ValueError, match=word):
        pr.run_optimizer(objective=objective, **args)


def test_empty_targets_are_rejected(clip):
    with pytest.raises(ValueError, match="targets"):
        pr.ProxyObjective(clip, torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match="texts"):
        pr.regenerate(pr.Generator(), clip, [])


def test_metrics_on_cases_checkable_by_hand(clip):
    assert pr.order_similarity("a b c", "a b c") == 1
    assert pr.order_similarity("c b a", "a b c") == pytest.approx(1 / 3)
    attrs = shapes.attributes_of("circle", "red", "large", "left")
    assert pr.attribute_recall(shapes.caption(attrs), attrs) == 1
    assert pr.attribute_recall("red red left", attrs) == 0.5
    images = torch.from_numpy(shapes.images_with_captions(3, 0)[0])
    assert torch.allclose(pr.image_cosine(clip, images, images), torch.ones(3), atol=1e-6)
    assert pr.word_edit_distance("a b", "a b") == 0 and pr.word_edit_distance("", "a b") == 2


def test_spearman_matches_scipy():
    scipy = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(7, generator=g), torch.randn(7, generator=g)
        x[2] = x[4]
        assert pr.spearman(x, y) == pytest.approx(scipy.spearmanr(x, y).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="x and y"):
        pr.spearman([1.0], [2.0])


def test_captioner_caption_follows_the_grammar():
    torch.manual_seed(0)
    cap = pr.Captioner().eval()
    texts = cap.caption(torch.from_numpy(shapes.images_with_captions(4, 0)[0]))
    assert all(shapes.caption(shapes.parse_caption(t)) == t for t in texts)


def test_claim_values_on_a_constructed_table():
    def src(proxy, regen, mse, order):
        one = lambda v: torch.tensor([v, v], dtype=torch.float64)
        return {"proxy": one(proxy), "regen_proxy": one(regen), "regen_mse": one(mse),
                "order": one(order)}
    scores = {ex.TRUTH: src(0.95, 0.85, 0.01, 1.0), ex.CAPTIONER: src(0.85, 0.8, 0.02, 0.9),
              "PEZ": src(0.95, 0.6, 0.05, 0.3), "GCG": src(0.97, 0.62, 0.04, 0.2),
              "random search": src(0.96, 0.61, 0.05, 0.25)}
    v = ex.claim_values(scores)
    assert v["C1"] == pytest.approx(0.10) and v["C2"] == pytest.approx(0.18)
    assert v["C2m"] == pytest.approx(0.02) and v["C3a"] == 1 and v["C4"] == pytest.approx(0.6)
    assert v["S1"] == pytest.approx(0.95) and v["S2"] == pytest.approx(0.85)


def test_config_rejects_bad_budgets():
    with pytest.raises(ValueError, match="gcg_k"):
        ex.ChapterConfig(gcg_k=40)
    with pytest.raises(ValueError, match="n_targets"):
        ex.ChapterConfig(n_targets=0)
    with pytest.raises(ValueError, match="name"):
        ex.optimizer_settings(ex.ChapterConfig(), "adam")


@pytest.mark.slow
def test_generator_and_captioner_meet_the_spec():
    cfg = ex.PRESETS["tiny"]
    clip = ex.proxy_model(cfg)
    gen = ex.train_generator(clip, cfg).model
    cap = ex.train_captioner(cfg).model
    tg = ex.make_targets(cfg, 0)
    regen = pr.regenerate(gen, clip, tg.captions)
    assert pr.image_cosine(clip, regen, tg.images).mean() >= 0.7
    images, attrs, _ = shapes.images_with_captions(500, 77)
    acc = (cap.attributes(torch.from_numpy(images)) == torch.from_numpy(attrs)).float().mean()
    assert acc >= 0.8


# --- the gpu scale's pieces on a local stand-in (no download) ----------------------------------
def _stand_in_clip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tiny_clip_config(transformers, vocab=40, positions=12, bos=38, eos=39, pad=0)
    model = transformers.CLIPModel(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    from types import SimpleNamespace
    tokenizer = SimpleNamespace(bos_token_id=38, eos_token_id=39, all_special_ids=[0, 38, 39])
    return model, tokenizer


def test_hub_objective_runs_the_same_optimizers_on_a_stand_in_clip():
    from lab.papers.prompt_recovery import hub
    model, tokenizer = _stand_in_clip()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    feats = hub._features(model.get_image_features(pixel_values=pixels))
    obj = hub.HubProxyObjective(model, tokenizer, feats)
    assert 0 not in obj.allowed and 39 not in obj.allowed and len(obj.allowed) == 37
    ids = torch.tensor([[3, 7, 11, 5], [20, 21, 22, 23]])
    by_ids = obj.loss(ids)
    for row, value in zip(ids, by_ids):
        assert obj.on_embeddings(obj.table[row]).item() == pytest.approx(value.item(), abs=1e-5)
        v, g = obj.value_and_grad(row)
        assert v == pytest.approx(value.item(), abs=1e-5)
        assert torch.allclose(obj.grad(row), g @ obj.table.T, atol=1e-6)
    for method in pr.METHODS:
        res = pr.run_optimizer(method, obj, length=4, steps=4 if method == "autodan" else 3,
                               batch=5, k=4, seed=0)
        assert res.loss == pytest.approx(obj.loss(res.tokens[None])[0].item(), abs=1e-5)


def test_hub_loaders_fail_clearly(monkeypatch):
    import sys

    from lab.papers.prompt_recovery import hub
    with pytest.raises(ValueError, match="model_id"):
        hub.load_proxy("not-a-hub-id")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"explorable-papers\[gpu\]"):
        hub.load_generator("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")
    transformers = pytest.importorskip("transformers")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", offline)
    with pytest.raises(OSError, match="offline"):
        hub.load_proxy("nobody-here/no-such-clip")
    with pytest.raises(ValueError, match="cfg.hub"):
        hub.load_hub_models(ex.PRESETS["tiny"])
    assert dict(ex.PRESETS["gpu"].hub)["generator"].startswith("stable-diffusion")
