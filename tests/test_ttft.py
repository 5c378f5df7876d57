"""Test-time fine-tuning: bits per byte, exact reset, fresh optimiser, LoRA, selection, leakage guard.

Everything runs on the tiny Llama fixture (a few thousand parameters) and a real Faiss index over the
tiny corpus; one slow test runs the real default SmolLM2-135M for one prompt and two steps.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from sift.model import load_causal_lm
from sift.ttft import (
    PromptResult,
    TTFTConfig,
    WeightSnapshot,
    bits_per_byte,
    finetune_and_evaluate,
    split_prompt,
)

TRAIN = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
]
EVAL = "def square(x):\n    return x * x\n"


@pytest.fixture()
def tiny(tiny_lm_dir):
    """A fresh tiny model per test (tests change its weights on purpose)."""
    return load_causal_lm(tiny_lm_dir)


# --- bits per byte ------------------------------------------------------------------------------


def test_bits_per_byte_matches_a_hand_computation(tiny):
    model, tok = tiny
    text = "Café au lait, naïve façade — ünïcode bytes."  # bytes != characters
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([[tok.bos_token_id] + ids])
    with torch.no_grad():
        mean_nll = model(input_ids=x, labels=x).loss.item()  # HF's own shifted mean NLL, in nats
    n_bytes = len(text.encode("utf-8"))
    assert n_bytes > len(text)
    expected = mean_nll * len(ids) / (math.log(2) * n_bytes)
    assert bits_per_byte(model, tok, text, max_tokens=512) == pytest.approx(expected, rel=1e-5)


def test_truncation_warns_and_counts_only_the_evaluated_bytes(tiny):
    model, tok = tiny
    text = " ".join(["The evening was calm, and she walked slowly along the garden path."] * 6)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    with pytest.warns(UserWarning, match=rf"first 20 tokens \({len(ids) - 20} tokens, \d+ of {len(text.encode())} bytes"):
        truncated = bits_per_byte(model, tok, text, max_tokens=20)
    prefix = text[: offsets[19][1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bits_per_byte(model, tok, prefix, max_tokens=20) == pytest.approx(truncated, rel=1e-6)


def test_context_longer_than_the_model_is_truncated_to_its_window(tiny):
    model, tok = tiny
    text = "word " * 800  # the tiny model's context is 512 positions
    with pytest.warns(UserWarning, match="window 511 tokens"):
        assert bits_per_byte(model, tok, text, max_tokens=10_000) > 0


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_rejected(tiny, text):
    model, tok = tiny
    with pytest.raises(ValueError, match="empty"):
        bits_per_byte(model, tok, text)
    with pytest.raises(ValueError, match="eval_text"):
        finetune_and_evaluate(model, tok, text, TRAIN, TTFTConfig())


def test_split_prompt_cuts_at_a_token_boundary(tiny):
    _, tok = tiny
    text = "Paris is the capital and most populous city of France."
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    query, rest = split_prompt(tok, text, 0.5)
    assert query + rest == text
    assert len(tok(query, add_special_tokens=False)["input_ids"]) == n_tokens // 2
    with pytest.raises(ValueError, match="split"):
        split_prompt(tok, text, 1.0)
    with pytest.raises(ValueError, match="empty"):
        split_prompt(tok, "  ", 0.5)


# --- fine-tuning and reset ------------------------------------------------------------------


def test_finetuning_changes_bpb_and_resets_bitwise(tiny):
    model, tok = tiny
    snap = WeightSnapshot(model)
    cfg = TTFTConfig(lr=1e-2, eval_every=1)
    out = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    assert out.steps == 3
    assert out.bpb_after != out.bpb_before
    assert [s for s, _ in out.bpb_curve] == [0, 1, 2, 3]
    assert out.bpb_curve[0][1] == out.bpb_before and out.bpb_curve[-1][1] == out.bpb_after
    assert snap.equals(model), "weights must be restored bit for bit"
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert bits_per_byte(model, tok, EVAL) == out.bpb_before
    assert out.tokens_train == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in TRAIN)
    n_params = sum(p.numel() for p in model.parameters())
    assert out.flops == pytest.approx(6 * n_params * out.tokens_train + 2 * n_params * out.tokens_eval)
    assert out.seconds_reset > 0 and out.seconds_train > 0


def test_snapshot_detects_a_single_bit_change(tiny):
    model, _ = tiny
    snap = WeightSnapshot(model)
    with torch.no_grad():
        w = model.model.norm.weight
        w.view(torch.int32)[0] ^= 1  # flip the lowest mantissa bit
    assert not snap.equals(model)
    snap.restore(model)
    assert snap.equals(model)


def test_optimizer_is_fresh_for_every_prompt(tiny):
    model, tok = tiny
    cfg = TTFTConfig(lr=1e-2)
    first = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    second = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    # Leftover Adam moments or weights would make the second run differ from the first.
    assert second.bpb_after == first.bpb_after
    assert second.bpb_before == first.bpb_before


def test_only_the_given_steps_are_taken_and_order_matters(tiny):
    model, tok = tiny
    cfg = TTFTConfig(lr=1e-2)
    forward = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    backward = finetune_and_evaluate(model, tok, EVAL, TRAIN[::-1], cfg)
    one = finetune_and_evaluate(model, tok, EVAL, TRAIN[:1], cfg)
    none = finetune_and_evaluate(model, tok, EVAL, [], cfg)
    assert forward.bpb_after != backward.bpb_after
    assert one.steps == 1 and one.bpb_after != forward.bpb_after
    assert none.steps == 0 and none.bpb_after == none.bpb_before and none.tokens_train == 0


def test_lora_trains_adapters_and_leaves_the_base_model_untouched(tiny):
    model, tok = tiny
    snap = WeightSnapshot(model)
    modules_before = [type(m).__name__ for m in model.modules()]
    out = finetune_and_evaluate(model, tok, EVAL, TRAIN, TTFTConfig(lr=1e-2, lora_rank=4))
    assert out.steps == 3 and out.bpb_after != out.bpb_before
    assert [type(m).__name__ for m in model.modules()] == modules_before  # adapters removed
    assert all(p.requires_grad for p in model.parameters())
    assert snap.equals(model)
    # The base model still trains fully afterwards (LoRA left no frozen flags or peft state behind).
    full = finetune_and_evaluate(model, tok, EVAL, TRAIN, TTFTConfig(lr=1e-2))
    assert full.bpb_after != out.bpb_after


def test_split_evaluates_only_the_rest_with_the_query_as_context(tiny):
    model, tok = tiny
    text = "It is a truth universally acknowledged, that a single man must be in want of a wife."
    query, rest = split_prompt(tok, text, 0.5)
    out = finetune_and_evaluate(model, tok, rest, [], TTFTConfig(), eval_context=query)
    assert out.eval_bytes == len(rest.encode())
    assert out.bpb_before == pytest.approx(bits_per_byte(model, tok, rest, context=query))
    assert out.bpb_before != pytest.approx(bits_per_byte(model, tok, rest))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"method": "knn"}, "method"), ({"n": 0}, "n"), ({"k": -1}, "k"), ({"lam": 0}, "lam"),
     ({"lr": -1.0}, "lr"), ({"alpha": 0.0}, "alpha"), ({"split": 1.5}, "split"),
     ({"lora_rank": 0}, "lora_rank"), ({"eval_every": 0}, "eval_every"),
     ({"on_low_similarity": "ignore"}, "on_low_similarity"), ({"max_tokens": 1}, "max_tokens")],
)
def test_bad_config_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        TTFTConfig(**kwargs)
