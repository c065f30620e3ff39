"""The prompt-recovery chapter's gpu path end to end on a local stand-in, on the CPU: a tiny CLIP
(random weights from a transformers ``CLIPConfig``, a hand-written BPE vocabulary) saved to a
folder and loaded by the chapter's own loaders, a pipeline with the diffusers call signature that
draws images from the prompt's words, and a captioner behind BLIP-2's interface. No download."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from standins import tiny_clip_config

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

from lab import discrete
from lab.papers.prompt_recovery import experiments as ex
from lab.papers.prompt_recovery import figures as figs
from lab.papers.prompt_recovery import hub

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROMPTS = ("a red fox in snow", "a blue boat on a lake", "an old castle at night")


def save_clip(folder, seed):
    """A CLIP with 54 tokens (letters, letters ending a word, start and end), saved as the hub
    stores one: config + safetensors weights, tokenizer files, image processor."""
    folder.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(LETTERS)}
    vocab |= {c + "</w>": 26 + i for i, c in enumerate(LETTERS)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                     model_max_length=24)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    config = tiny_clip_config(transformers, vocab=54, positions=24, bos=52, eos=53, pad=53)
    transformers.CLIPModel(config).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 16},
                                    crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return str(folder)


class StandInPipeline:
    """The diffusers text-to-image call: ``pipe(prompt, num_inference_steps=, generator=)`` →
    an object with ``.images`` (PIL). The colour follows the prompt's words, the noise the seed."""

    def __init__(self):
        self.device, self.calls = torch.device("cpu"), []

    def __call__(self, prompt, num_inference_steps=50, generator=None):
        self.calls.append((prompt, num_inference_steps))
        code = sum(ord(c) * (i + 1) for i, c in enumerate(prompt)) % 997
        colour = torch.tensor([code % 7, code % 11, code % 13], dtype=torch.float32)
        colour = colour / torch.tensor([6.0, 10.0, 12.0])
        noise = torch.rand(32, 32, 3, generator=generator) * 0.2
        pixels = ((colour * 0.8 + noise).clamp(0, 1) * 255).to(torch.uint8).numpy()
        return type("Output", (), {"images": [PIL.fromarray(pixels)]})()

    def set_progress_bar_config(self, **kwargs):
        pass

    def to(self, device):
        return self


class StandInBlip2:
    """BLIP-2's generate/processor interface: the caption is fixed text per image colour."""
    device, dtype = torch.device("cpu"), torch.float32

    def generate(self, pixel_values, input_ids=None, **kwargs):
        assert kwargs["num_beams"] == 5 and kwargs["max_new_tokens"] == 32
        return (pixel_values.mean(dim=(1, 2, 3)) > 0.5).long()[:, None]

    def to(self, device):
        return self

    def eval(self):
        return self


class StandInBlip2Processor:
    def __call__(self, images, text, return_tensors="pt"):
        pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
                              for im in images]).permute(0, 3, 1, 2)
        return transformers.BatchFeature({"pixel_values": pixels})

    def batch_decode(self, out, skip_special_tokens=True):
        return ["a bright picture " if int(o[0]) else "a dark red fox" for o in out]


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    pipe = StandInPipeline()
    loaded = {}

    def pipeline_from(model_id, torch_dtype=None):
        loaded["generator"] = (model_id, torch_dtype)
        return pipe

    monkeypatch.setattr(diffusers.AutoPipelineForText2Image, "from_pretrained",
                        staticmethod(pipeline_from))
    monkeypatch.setattr(transformers.Blip2Processor, "from_pretrained",
                        classmethod(lambda cls, model_id: StandInBlip2Processor()))
    monkeypatch.setattr(transformers.Blip2ForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, model_id, torch_dtype=None: StandInBlip2()))
    hub.forget_models()
    yield {"proxy": save_clip(tmp_path / "proxy", 0), "evaluator": save_clip(tmp_path / "judge", 1),
           "pipe": pipe, "loaded": loaded}
    hub.forget_models()


def small_config(paths, **kw):
    ids = (("generator", "stand-in/text-to-image"), ("proxy", paths["proxy"]),
           ("captioner", "stand-in/blip2"), ("evaluator", paths["evaluator"]))
    return dataclasses.replace(ex.PRESETS["gpu"], hub=ids, prompts=PROMPTS, n_targets=3,
                               length=4, pez_steps=3, gcg_steps=2, gcg_k=4, gcg_batch=5,
                               random_steps=2, random_batch=5, autodan_batch=3, beam=2,
                               sampler_steps=2, traced_targets=1, **kw)


def spy(monkeypatch, name):
    calls = []
    real = getattr(discrete, name)

    def wrapped(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(discrete, name, wrapped)
    return calls


def test_the_gpu_study_runs_end_to_end_on_the_stand_in(stand_in, monkeypatch):
    calls = {name: spy(monkeypatch, name) for name in ("pez", "gcg", "random_search", "autodan")}
    cfg = small_config(stand_in)
    study = ex.run_study(cfg, seed=0, device="cpu")

    # the same lab.discrete searches as at tiny scale, once per target each
    assert {k: len(v) for k, v in calls.items()} == {"pez": 3, "gcg": 3, "random_search": 3,
                                                     "autodan": 3}
    assert calls["gcg"][0]["k"] == 4 and calls["gcg"][0]["batch"] == 5
    assert calls["autodan"][0]["beam"] == 2 and calls["autodan"][0]["prior"] is None

    # targets: one drawing per prompt with seed target_stream + seed; two new seeds to regenerate
    targets = study["targets"]
    assert targets.captions == list(PROMPTS) and targets.images.shape == (3, 3, hub.SIZE, hub.SIZE)
    assert targets.regen_seeds == (cfg.target_stream + 1, cfg.target_stream + 2)
    assert stand_in["loaded"]["generator"] == ("stand-in/text-to-image", torch.float32)
    assert all(steps == 2 for _, steps in stand_in["pipe"].calls)
    # 3 targets, then 6 sources × 3 prompts × 2 seeds
    assert len(stand_in["pipe"].calls) == 3 + 6 * 3 * 2

    # budgets counted as the spec says
    budget = ex.budget_table(study["recovered"])
    assert budget["PEZ"]["evaluations"] == budget["PEZ"]["gradient passes"] == 3
    assert budget["GCG"]["evaluations"] == 1 + 2 * 5 and budget["GCG"]["gradient passes"] == 2
    assert budget["random search"]["evaluations"] == 1 + 2 * 5
    assert budget["AutoDAN, beam 4"]["evaluations"] == 3 + (4 - 1) * 2 * 3
    for name, runs in study["recovered"].items():
        assert len(runs) == 3 and all(len(r.tokens) == 4 for r in runs)
        trace = runs[0].trace
        assert runs[1].trace is None and trace is not None
        if name != "AutoDAN, beam 4":       # AutoDAN keeps the last step's sequence (spec §2.5)
            best = [e["best_loss"] for e in trace]
            assert best == sorted(best, reverse=True) and runs[0].loss == best[-1]

    # the result has the tiny path's structure, with the hub metrics
    scores = study["scores"]
    assert list(scores) == [ex.TRUTH, ex.CAPTIONER, *ex.optimizer_names(cfg)]
    assert scores[ex.CAPTIONER]["texts"][0] in ("a bright picture", "a dark red fox")
    for m in scores.values():
        assert set(m) == {"texts", "images", "proxy", "regen_proxy", "regen_evaluator",
                          "regen_mse", "word_recall", "order"}
        assert m["images"].shape == (3, 3, hub.SIZE, hub.SIZE)
        for key in ("proxy", "regen_proxy", "regen_evaluator", "regen_mse", "word_recall", "order"):
            assert m[key].shape == (3,) and torch.isfinite(m[key]).all()
    assert torch.equal(scores[ex.TRUTH]["order"], torch.ones(3, dtype=torch.float64))
    assert torch.equal(scores[ex.TRUTH]["word_recall"], torch.ones(3, dtype=torch.float64))
    assert set(study["claims"]) == {"C1", "C2", "C2m", "C3a", "C3b", "C4", "S1", "S2"}
    assert set(figs.results_table(scores).head) >= {"regen cos, indep. ↑", "word recall"}


def test_a_recovered_prompt_scores_as_the_search_reported(stand_in):
    cfg = small_config(stand_in)
    clip = ex.proxy_model(cfg)
    assert ex.proxy_model(cfg) is clip                      # loaded once per session
    targets = ex.make_targets(cfg, 0)
    recovered = ex.recover(clip, targets, cfg, 0, names=("GCG",))
    obj = ex.objective(clip, targets, 0)
    run = recovered["GCG"][0]
    assert run.loss == pytest.approx(obj.loss(torch.tensor([run.tokens]))[0].item(), abs=1e-5)
    assert run.text == clip.decode(run.tokens) == obj.decode(run.tokens)
    # the proxy cosine of a prompt given as text equals the objective's, where the tokenizer
    # gives back the same ids (these are single letters that end a word)
    ids = torch.tensor([26, 27, 28, 29])
    text = clip.decode(ids)
    assert text == "a b c d"
    cos = clip.text_image_cosine([text], targets.full[:1])[0]
    assert 1 - cos.item() == pytest.approx(obj.loss(ids[None])[0].item(), abs=1e-5)


def test_the_notebook_cells_work_at_the_gpu_scale(stand_in):
    """The notebook's sequence of calls, as its cells make them, on the stand-in."""
    cfg = small_config(stand_in)
    clip = ex.proxy_model(cfg)
    targets = ex.make_targets(cfg, 0)
    models = ex.load_models(clip, cfg)
    assert models.lm is None and models.evaluator is not None and "stand-in/blip2" in models.note
    recovered = ex.recover(clip, targets, cfg, 0, models.lm)
    figs.budget_table(recovered)
    prompts = ex.prompts_by_source(targets, models.captioner, recovered)
    scores = ex.evaluate(prompts, targets, clip, models.generator, models.captioner,
                         models.evaluator)
    figs.prompts_table(prompts, targets)
    figs.regeneration_figure(targets, scores, "gpu", 0, n=3)
    figs.thesis_figure(scores, "gpu", 0)
    replay = figs.replay_explorer(recovered, targets, models.generator, clip, "gpu", 0)
    assert replay.params["optimiser"] == [*ex.MAIN, "AutoDAN, beam 4"]
    drawn = len(stand_in["pipe"].calls)
    replay(optimiser="AutoDAN, beam 4", progress=60)
    assert len(stand_in["pipe"].calls) == drawn + 1          # one redrawing per replayed step
    obj0 = ex.objective(clip, targets, 0)
    assert len(obj0.allowed) == 52 and len(obj0.shown) == hub.SHOWN
    assert set(obj0.shown) <= set(obj0.allowed)
    run = recovered["GCG"][0].trace
    picks = {f"GCG step {e['step']}": e["tokens"] for e in (run[0], run[-1])}
    figs.gradient_explorer(obj0, picks, cfg.gcg_k, "gpu", 0)(prompt="GCG step 1")
    maps = figs.swap_maps(obj0, run[-1]["tokens"])
    assert maps["exact"].shape == (4, hub.SHOWN) and -1 <= maps["rho"] <= 1
    figs.pez_explorer(recovered["PEZ"][0].trace, obj0, "gpu", 0)(step=2)
    from lab.papers.prompt_recovery import answers
    assert answers.linear_swap_error(obj0, recovered["GCG"][0].tokens) >= 0
    import matplotlib.pyplot as plt
    plt.close("all")


def test_tiny_only_pieces_refuse_a_hub_config(stand_in):
    cfg = small_config(stand_in)
    with pytest.raises(ValueError, match="train_generator"):
        ex.train_generator(None, cfg)
    with pytest.raises(ValueError, match="prompts"):
        dataclasses.replace(cfg, prompts=None)
    with pytest.raises(ValueError, match="prompts"):
        dataclasses.replace(cfg, n_targets=4)


def test_offline_and_missing_library_errors_name_the_model(monkeypatch, tmp_path):
    import sys
    hub.forget_models()
    with pytest.raises(OSError, match="offline") as err:
        hub.load_proxy(str(tmp_path / "no-such-clip"))
    assert "no-such-clip" in str(err.value)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    diffusers = pytest.importorskip("diffusers")
    monkeypatch.setattr(diffusers.AutoPipelineForText2Image, "from_pretrained", offline)
    cfg = dataclasses.replace(ex.PRESETS["gpu"])
    with pytest.raises(OSError, match="stable-diffusion-v1-5/stable-diffusion-v1-5") as err:
        ex.make_targets(cfg, 0, device="cpu")
    assert "HF_HUB_OFFLINE" in str(err.value) and "couldn't connect" in str(err.value)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="transformers library"):
        ex.proxy_model(cfg)
