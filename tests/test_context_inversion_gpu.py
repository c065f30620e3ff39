"""The context-inversion chapter's `gpu` study on local stand-ins: LoRA on a small GPT-NeoX built
from a config, the counterfactual-set loader on a file written here, and the offline errors."""
from __future__ import annotations

import json

import pytest
import torch

from lab.papers.context_inversion import experiments as ex
from lab.papers.context_inversion import gpu

pytest.importorskip("transformers")


def _neox(seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lab.nn.hublm import LogitsOnly
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=128)
    return LogitsOnly(GPTNeoXForCausalLM(config)).eval()


def encode(text):
    return [ord(c) % 64 for c in text]


ITEMS = [{"context": f"The capital of Land{i} moved to City{i}.", "question": f"Capital of Land{i}?",
          "answer": f"City{i}", "memory_answer": f"Old{i}"} for i in range(4)]


def test_lora_at_init_leaves_outputs_unchanged():
    model = _neox()
    ids = torch.randint(0, 64, (2, 10))
    before = model(ids)
    names = gpu.add_lora(model, rank=4, alpha=8, target="all")
    assert len(names) == 2 * 4                       # qkv, dense, two MLP maps per layer
    assert torch.equal(model(ids), before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_qk_only_lora_changes_queries_and_keys_only():
    model = _neox()
    gpu.add_lora(model, rank=4, alpha=8, target="qk")
    layer = model.model.gpt_neox.layers[0].attention.query_key_value
    assert isinstance(layer, gpu.LoRALinear)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 32)
    delta = (layer(x) - layer.base(x)).view(3, 4, 3, 8)          # heads × [q | k | v] × head size
    assert torch.all(delta[:, :, 2] == 0)
    assert torch.all(delta[:, :, :2].abs().sum((0, 1, 3)) > 0)
    assert gpu.neox_qk_rows(12, 2).tolist() == [True] * 4 + [False] * 2 + [True] * 4 + [False] * 2


def test_lora_rejects_bad_arguments():
    with pytest.raises(TypeError, match="base"):
        gpu.LoRALinear(torch.nn.Conv1d(2, 2, 1), 1, 1.0)
    with pytest.raises(ValueError, match="rank"):
        gpu.LoRALinear(torch.nn.Linear(4, 4), 0, 1.0)
    with pytest.raises(ValueError, match="rows"):
        gpu.LoRALinear(torch.nn.Linear(4, 4), 1, 1.0, rows=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        gpu.add_lora(_neox(), 4, 8, target="mlp")
    with pytest.raises(ValueError, match="GPT-NeoX"):
        gpu.add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1, 1.0)
    with pytest.raises(ValueError, match="heads"):
        gpu.neox_qk_rows(10, 4)


def test_counterfactual_loader_reads_both_formats_and_refuses_bad_items(tmp_path):
    listed = tmp_path / "set.json"
    listed.write_text(json.dumps(ITEMS + [{**ITEMS[0], "answer": "Old0"}]))   # the last tests nothing
    lines = tmp_path / "set.jsonl"
    lines.write_text("\n".join(json.dumps(i) for i in ITEMS))
    assert len(gpu.load_counterfactual(listed)) == 4
    assert gpu.load_counterfactual(lines)[2].memory_answer == "Old2"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"context": "c", "question": "q", "answer": "a"}]))
    with pytest.raises(ValueError, match="memory_answer"):
        gpu.load_counterfactual(bad)
    with pytest.raises(FileNotFoundError, match="path"):
        gpu.load_counterfactual(tmp_path / "none.json")


def test_fetch_is_clear_offline_and_uses_a_local_copy(tmp_path):
    with pytest.raises(RuntimeError, match="network"):
        gpu.fetch_official("capitals", tmp_path, base_url="http://127.0.0.1:9/")
    local = tmp_path / gpu.OFFICIAL_SETS["capitals"]
    local.write_text(json.dumps(ITEMS))
    assert gpu.fetch_official("capitals", tmp_path, base_url="http://127.0.0.1:9/") == local
    with pytest.raises(ValueError, match="name"):
        gpu.fetch_official("quotes", tmp_path)


def test_missing_model_error_is_clear(tmp_path):
    with pytest.raises(RuntimeError, match="could not load the model"):
        gpu.load_model(str(tmp_path / "no-such-model"), device="cpu", local_files_only=True)
    with pytest.raises(ValueError, match="name"):
        gpu.load_model("", device="cpu")


def test_probe_metrics_agree_with_their_definition():
    model = _neox()
    items = [gpu.CFItem(**i) for i in ITEMS]
    out = gpu.probe(model, encode, items)
    m_c = []
    for it in items:
        lc = gpu.answer_logprob(model, encode, gpu.prompt(it), it.answer)
        lm = gpu.answer_logprob(model, encode, gpu.prompt(it), it.memory_answer)
        m_c.append(torch.sigmoid(torch.tensor(lc - lm)).item())
    assert out["M_C"] == pytest.approx(sum(m_c) / len(m_c), abs=1e-6)
    assert 0 <= out["CF"] <= 1 and out["CF"] + out["PAR"] == pytest.approx(1)
    # log p of a two-token answer is the sum of its tokens' log-probabilities
    ids = encode("Q:") + encode(" ab")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(len(encode("Q:")), len(ids)))
    assert gpu.answer_logprob(model, encode, "Q:", "ab") == pytest.approx(expected, abs=1e-5)


def test_finetune_study_runs_on_the_stand_in_and_qk_only_keeps_values():
    model = _neox()
    gpu.add_lora(model, rank=2, alpha=4, target="qk")
    items = [gpu.CFItem(**i) for i in ITEMS]
    examples = gpu.augment([("say hi", "hi"), ("say yo", "yo")] * 4, items, 0.25)
    assert sum(q.startswith("Context:") for q, _ in examples) == 2
    qkv = model.model.gpt_neox.layers[0].attention.query_key_value
    base = qkv.base.weight.clone()
    rows = gpu.finetune_study(model, encode, examples, items[:2], steps=4, batch=2, every=2,
                              length=48, device="cpu", progress=False)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert torch.equal(qkv.base.weight, base)
    x = torch.randn(2, 32)
    delta = (qkv(x) - qkv.base(x)).view(2, 4, 3, 8)
    assert torch.all(delta[:, :, 2] == 0) and delta.abs().sum() > 0


def test_gpu_study_settings_are_checked():
    with pytest.raises(TypeError, match="study"):
        ex.run_gpu_study("pythia")
    with pytest.raises(ValueError, match="probe_set"):
        ex.GPUStudy(probe_set="quotes")
    with pytest.raises(ValueError, match="variants"):
        ex.GPUStudy(variants=("standard", "LoRA+"))


def test_run_gpu_study_end_to_end_on_stand_ins(tmp_path, monkeypatch):
    for name in gpu.OFFICIAL_SETS.values():
        (tmp_path / name).write_text(json.dumps(ITEMS))

    class Tokenizer:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": encode(text)}

    monkeypatch.setattr(gpu, "load_model", lambda name, device: (_neox(), Tokenizer()))
    monkeypatch.setattr(gpu, "load_instructions", lambda count, seed: [("say hi", "hi")] * count)
    study = ex.GPUStudy(examples=8, batch=4, checkpoint_every=1, length=48, probe_items=3)
    out = ex.run_gpu_study(study, device="cpu", data_dir=tmp_path, progress=False)
    assert 1 <= out["probe_items"] <= 3
    assert set(study.variants) <= set(out)
    assert [r["step"] for r in out["standard"]] == [0, 1, 2]
