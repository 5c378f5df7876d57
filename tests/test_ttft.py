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

from sift import finetune as finetune_module
from sift.model import load_causal_lm
from sift.ttft import (
    PromptResult,
    TTFTConfig,
    WeightSnapshot,
    bits_per_byte,
    choose_training_data,
    finetune_and_evaluate,
    run_prompt,
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


def _clone_state(model) -> dict[str, torch.Tensor]:
    """An independent copy of every parameter and buffer, for bitwise checks that trust no snapshot."""
    return {n: t.detach().clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}


def _bitwise_equal(model, state: dict[str, torch.Tensor]) -> bool:
    now = dict(list(model.named_parameters()) + list(model.named_buffers()))
    return now.keys() == state.keys() and all(
        torch.equal(now[n].detach().reshape(-1).view(torch.uint8), s.reshape(-1).view(torch.uint8))
        if s.is_floating_point() else torch.equal(now[n], s) for n, s in state.items())


def _grads(model, tok, text: str) -> None:
    model.zero_grad(set_to_none=True)
    x = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    model(input_ids=x, labels=x).loss.backward()


def test_finetuning_changes_bpb_and_resets_bitwise(tiny):
    model, tok = tiny
    snap = WeightSnapshot(model)
    before = _clone_state(model)
    cfg = TTFTConfig(lr=1e-2, eval_every=1)
    out = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    assert out.steps == 3
    assert out.bpb_after != out.bpb_before
    assert [s for s, _ in out.bpb_curve] == [0, 1, 2, 3]
    assert out.bpb_curve[0][1] == out.bpb_before and out.bpb_curve[-1][1] == out.bpb_after
    assert _bitwise_equal(model, before), "weights must be restored bit for bit"
    assert snap.equals(model)
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
    w = model.model.norm.weight
    with torch.no_grad():
        w.view(torch.int32)[0] ^= 1  # flip the lowest mantissa bit
    # The snapshot references the weights, so it cannot undo an in-place write; its checksum sees it.
    assert not snap.equals(model)
    with torch.no_grad():
        w.view(torch.int32)[0] ^= 1
    assert snap.equals(model)
    # Buffers are cloned: a changed buffer is detected and restored.
    name, buf = next((n, b) for n, b in model.named_buffers() if b.is_floating_point())
    with torch.no_grad():
        buf.view(torch.int32)[0] ^= 1
    assert not snap.equals(model), name
    snap.restore(model)
    assert snap.equals(model)


def test_reset_is_a_pointer_swap_back_to_never_written_base_tensors(tiny):
    model, tok = tiny
    before = _clone_state(model)
    base_ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    snap = WeightSnapshot(model)
    out = finetune_and_evaluate(model, tok, EVAL, TRAIN, TTFTConfig(lr=1e-2), snapshot=snap)
    assert out.steps == 3 and out.bpb_after != out.bpb_before
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == base_ptrs  # the same storage again
    assert _bitwise_equal(model, before) and snap.equals(model)
    # Training ran on the work buffers (distinct storage), which now hold the trained weights.
    slots = snap._slots.values()
    assert all(s.work is not None and s.work.data_ptr() != s.base.data_ptr() for s in slots)
    assert any(not torch.equal(s.work, s.base) for s in slots)


def test_tied_weights_stay_tied_through_the_swap(tiny):
    model, tok = tiny
    emb, head = model.model.embed_tokens, model.lm_head
    assert head.weight is emb.weight  # the fixture ties them, as SmolLM2 does
    snap = WeightSnapshot(model)
    _grads(model, tok, TRAIN[0])
    optimizer = torch.optim.Adam([p for p in model.parameters()], lr=1e-2, fused=True)
    snap.first_adam_step(optimizer)
    work = snap._slots["model.embed_tokens.weight"].work
    assert head.weight is emb.weight and emb.weight.data_ptr() == work.data_ptr()
    snap.restore(model)
    assert head.weight is emb.weight and snap.equals(model)


def test_first_step_on_work_buffers_then_adam_matches_torch_adam_bitwise(tiny, tiny_lm_dir):
    """Two steps: ours (step 1 onto the work buffers with seeded state, step 2 plain) against torch's
    Adam run twice in place, fused and not: the same kernel on the same numbers, bit for bit."""
    model, tok = tiny
    before = _clone_state(model)
    snap = WeightSnapshot(model)
    for fused in (False, True):
        reference, _ = load_causal_lm(tiny_lm_dir)
        ours = torch.optim.Adam(list(model.parameters()), lr=1e-2, eps=1e-8, fused=fused)
        theirs = torch.optim.Adam(list(reference.parameters()), lr=1e-2, eps=1e-8, fused=fused)
        for i, text in enumerate(TRAIN[:2]):
            _grads(model, tok, text)
            _grads(reference, tok, text)
            snap.first_adam_step(ours) if i == 0 else ours.step()
            theirs.step()
            for (name, p), q in zip(model.named_parameters(), reference.parameters()):
                assert torch.equal(p, q), name
                s, r = ours.state[p], theirs.state[q]
                assert s["step"].dtype == r["step"].dtype and s["step"].device == r["step"].device
                assert float(s["step"]) == float(r["step"]) == i + 1
                assert torch.equal(s["exp_avg"], r["exp_avg"]) and torch.equal(s["exp_avg_sq"], r["exp_avg_sq"])
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
        snap.restore(model)
        assert _bitwise_equal(model, before)


def test_work_buffers_are_allocated_once_and_reused_across_prompts(tiny):
    model, tok = tiny
    snap = WeightSnapshot(model)
    cfg = TTFTConfig(lr=1e-2)
    first = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg, snapshot=snap)
    buffers = {n: (s.work, s.exp_avg, s.exp_avg_sq) for n, s in snap._slots.items()}
    ptrs = {n: tuple(t.data_ptr() for t in b) for n, b in buffers.items()}
    second = finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg, snapshot=snap)
    assert second.bpb_after == first.bpb_after  # moments overwritten, not carried over
    for n, s in snap._slots.items():
        assert all(a is b for a, b in zip((s.work, s.exp_avg, s.exp_avg_sq), buffers[n])), n
        assert tuple(t.data_ptr() for t in (s.work, s.exp_avg, s.exp_avg_sq)) == ptrs[n], n
    # Without a snapshot argument, one kept per model object is reused the same way.
    finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    kept = finetune_module._SNAPSHOTS[model]
    work = {n: s.work.data_ptr() for n, s in kept._slots.items()}
    finetune_and_evaluate(model, tok, EVAL, TRAIN, cfg)
    assert finetune_module._SNAPSHOTS[model] is kept and {n: s.work.data_ptr() for n, s in kept._slots.items()} == work


def test_snapshot_refuses_what_it_cannot_swap(tiny, tiny_lm_dir):
    model, tok = tiny
    other, _ = load_causal_lm(tiny_lm_dir)
    with pytest.raises(ValueError, match="snapshot"):
        finetune_and_evaluate(model, tok, EVAL, TRAIN, TTFTConfig(), snapshot=WeightSnapshot(other))
    snap = WeightSnapshot(model)
    _grads(model, tok, TRAIN[0])
    with pytest.raises(ValueError, match="amsgrad"):
        snap.first_adam_step(torch.optim.Adam(list(model.parameters()), amsgrad=True))
    with pytest.raises(ValueError, match="SGD"):
        snap.first_adam_step(torch.optim.SGD(list(model.parameters()), lr=0.1))
    assert snap.holds(model)  # refused before touching anything
    with pytest.raises(ValueError, match="restore"):
        WeightSnapshot(other).restore(model)
    # Two distinct Parameters over one storage would come untied by a swap.
    other.lm_head.weight = torch.nn.Parameter(other.model.embed_tokens.weight.detach())
    with pytest.raises(ValueError, match="share storage"):
        WeightSnapshot(other)


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
    # pydantic's message puts the field's name alone on the line before what is wrong with it
    with pytest.raises(ValueError, match=rf"(?m)^{name}\n  "):
        TTFTConfig(**kwargs)


# --- selection, leakage guard, the whole prompt -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_stack(tiny_lm_dir, tiny_encoder_dir, tiny_corpus_file, tmp_path_factory):
    """(tokenizer, embedder, index) over the tiny corpus: a real Faiss index from sift.index."""
    from sift.embed import Embedder
    from sift.index import build_index_from_corpus

    _, tok = load_causal_lm(tiny_lm_dir)
    embedder = Embedder(tiny_encoder_dir)
    out = tmp_path_factory.mktemp("ttft-index")
    index = build_index_from_corpus([tiny_corpus_file], out / "index", tok, embedder,
                                    shard_dir=out / "shards", progress=False)
    return tok, embedder, index


def _query(embedder, text):
    return embedder.encode([text])[0]


def test_base_retrieves_nothing_and_records_sigma0(tiny_stack):
    _, embedder, index = tiny_stack
    sel = choose_training_data(_query(embedder, "Rome is in Italy."), index, TTFTConfig(method="base"))
    assert sel.seq_ids == [] and sel.stop == 0 and sel.candidate_count == 0
    assert sel.uncertainties == [pytest.approx(1.0)]  # σ_0 = ‖φ(x*)‖ = 1 for normalised embeddings


def test_leakage_guard_never_offers_the_prompts_own_document(tiny_stack):
    _, embedder, index = tiny_stack
    own = next(r for r in index.sequences if r["doc_id"] == "wiki-0")
    query = _query(embedder, own["text"])
    cfg = TTFTConfig(method="nn", n=5, k=10)
    unguarded = choose_training_data(query, index, cfg)
    assert unguarded.doc_ids[0] == "wiki-0"  # the prompt's own text is its own nearest neighbour...
    guarded = choose_training_data(query, index, cfg, exclude_doc_ids={"wiki-0"})
    assert "wiki-0" not in guarded.doc_ids  # ...unless excluded
    assert len(guarded.seq_ids) == 5 and guarded.candidate_count == 10
    assert guarded.scores == sorted(guarded.scores, reverse=True)


def test_text_overlap_guard_catches_a_prompt_whose_doc_id_matches_nothing(tiny_stack):
    """Issue 17: a prompt whose document is in the corpus under another id (folder corpora) trained on
    itself. The id guard excludes nothing; the text-overlap guard must."""
    from sift.pipeline import choose

    _, embedder, index = tiny_stack
    own = next(r for r in index.sequences if r["doc_id"] == "wiki-0")
    prompt = {"id": "p1", "doc_id": "wiki/0.html", "domain": "wiki", "text": own["text"].upper()}  # reformatted copy
    cfg = TTFTConfig(method="nn", n=5, k=10)
    guarded = choose(prompt, index, embedder, cfg)
    assert "wiki-0" not in guarded.doc_ids and guarded.excluded_overlap >= 1
    assert guarded.candidate_count == 10  # over-fetched: still K candidates after the drop
    unguarded = choose(prompt, index, embedder, cfg.model_copy(update={"leak_threshold": None}))
    assert unguarded.doc_ids[0] == "wiki-0" and unguarded.excluded_overlap == 0
    assert index.doc_ids() >= {"wiki-0"} and "wiki/0.html" not in index.doc_ids()


def test_duplicated_space_repeats_every_sequence_and_excludes_every_copy(tiny_stack):
    _, embedder, index = tiny_stack
    space = index.duplicated(3)
    assert len(space) == 3 * len(index) and index.duplicated(3) is space and index.duplicated(1) is index
    assert space.sequences[4]["copy_of"] == 1 and space.sequences[4]["text"] == index.sequences[1]["text"]
    own = next(r for r in index.sequences if r["doc_id"] == "wiki-0")
    query = _query(embedder, own["text"])
    nn = choose_training_data(query, index, TTFTConfig(method="nn", n=3, k=9, duplicate=3))
    assert len(set(nn.seq_ids)) == 3 and len({s // 3 for s in nn.seq_ids}) == 1  # NN: three copies of one
    sift_sel = choose_training_data(query, index, TTFTConfig(method="sift", n=3, k=9, duplicate=3))
    # same first pick; SIFT's second is the best of all candidates given it, NN's second a copy of the first
    assert sift_sel.seq_ids[0] == nn.seq_ids[0] and sift_sel.variances[2] <= nn.variances[2] + 1e-12
    guarded = choose_training_data(query, index, TTFTConfig(method="nn", n=3, k=9, duplicate=3),
                                   exclude_doc_ids={"wiki-0"})
    assert "wiki-0" not in guarded.doc_ids


def test_n_larger_than_k_sift_repeats_nn_clamps(tiny_stack):
    _, embedder, index = tiny_stack
    query = _query(embedder, "def cube(x):\n    return x ** 3\n")
    sift_sel = choose_training_data(query, index, TTFTConfig(method="sift", n=7, k=3))
    # SIFT makes all 7 picks from the 3 candidates, so it must repeat (it may repeat one before it has
    # picked every candidate: the first 3 picks need not be distinct).
    assert len(sift_sel.seq_ids) == 7 and sift_sel.candidate_count == 3
    assert len(set(sift_sel.seq_ids)) <= 3
    assert any(sift_sel.repeated) and not sift_sel.repeated[0]
    assert len(sift_sel.variances) == 8 and sift_sel.variances[-1] < sift_sel.variances[0]
    with pytest.warns(UserWarning):
        nn_sel = choose_training_data(query, index, TTFTConfig(method="nn", n=7, k=3))
    assert len(nn_sel.seq_ids) == 3 and not any(nn_sel.repeated)


def test_run_prompt_end_to_end_and_json(tiny_lm_dir, tiny_stack):
    tok, embedder, index = tiny_stack
    model, _ = load_causal_lm(tiny_lm_dir)
    snap = WeightSnapshot(model)
    prompt = {"id": "p-code", "doc_id": "code-0", "domain": "code", "text": "def add(a, b):\n    return a + b\n"}
    result = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(method="sift", n=3, k=8, lr=1e-2,
                                                                        min_similarity=-1.0))
    assert snap.equals(model)
    assert result.steps == 3 and result.bpb_after != result.bpb_before
    assert "code-0" not in result.picked_ids and len(result.picked_seq_ids) == 3
    assert len(result.uncertainties) == 4 and not result.stopped_early and result.skipped_reason is None
    record = json.loads(json.dumps(result.to_json()))
    for key in ("prompt_id", "method", "domain", "bpb_before", "bpb_after", "steps", "uncertainties",
                "picked_ids", "picked_seq_ids", "picked_domains", "picked_scores", "repeated", "seconds",
                "tokens", "flops", "stopped_early", "bpb_curve", "gain"):
        assert key in record
    assert set(record["seconds"]) >= {"retrieval", "selection", "train", "eval", "reset", "total"}
    assert PromptResult.from_json(record) == result  # what a resumed benchmark reads back
    base = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(method="base"))
    assert base.steps == 0 and base.bpb_after == base.bpb_before == result.bpb_before
    assert base.uncertainties == [pytest.approx(1.0)]
    with pytest.raises(ValueError, match="empty"):
        run_prompt(dict(prompt, text="  "), model, tok, embedder, index, TTFTConfig())


def test_low_similarity_trains_or_skips_as_configured(tiny_lm_dir, tiny_stack):
    tok, embedder, index = tiny_stack
    model, _ = load_causal_lm(tiny_lm_dir)
    prompt = {"id": "p", "doc_id": "p", "domain": "wiki", "text": "Rome is the capital city of Italy."}
    trained = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(n=2, k=4, min_similarity=1.5))
    assert trained.low_similarity and trained.steps == 2 and trained.skipped_reason is None
    skipped = run_prompt(prompt, model, tok, embedder, index,
                         TTFTConfig(n=2, k=4, min_similarity=1.5, on_low_similarity="skip"))
    assert skipped.steps == 0 and "similarity floor" in skipped.skipped_reason
    assert skipped.bpb_after == skipped.bpb_before and len(skipped.picked_ids) == 2


def test_adaptive_stopping_and_split(tiny_lm_dir, tiny_stack):
    tok, embedder, index = tiny_stack
    model, _ = load_causal_lm(tiny_lm_dir)
    prompt = {"id": "p", "doc_id": "p", "domain": "fiction",
              "text": "She smiled at her sister across the garden, and the evening was calm."}
    cfg = dict(n=4, k=8, min_similarity=-1.0)
    full = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(**cfg))
    sigma = full.uncertainties
    # α between the bounds of step 1 and step 2 lets exactly one step through (stop: n·σ_n·α > 1).
    alpha = 2.0 / (1 * sigma[1] + 2 * sigma[2])
    assert sigma[1] * alpha <= 1 < 2 * sigma[2] * alpha
    stopped = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(alpha=alpha, **cfg))
    assert stopped.steps == 1 and stopped.stopped_early and len(stopped.picked_ids) == 4
    split = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(split=0.5, **cfg))
    query, rest = split_prompt(tok, prompt["text"], 0.5)
    assert split.eval_bytes == len(rest.encode()) < len(prompt["text"].encode())


@pytest.mark.slow
def test_real_default_model_one_prompt_two_steps(tiny_corpus_file, tmp_path):
    """The bundled SmolLM2-135M (GGUF converted once into the session's state folder) and MiniLM."""
    from sift.embed import Embedder
    from sift.index import build_index_from_corpus
    from sift.model import default_model_dir

    model, tok = load_causal_lm()
    assert (default_model_dir() / "model.safetensors").is_file()
    assert not [p for p in default_model_dir().parent.iterdir() if ".tmp-" in p.name]
    embedder = Embedder()
    index = build_index_from_corpus([tiny_corpus_file], tmp_path / "index", tok, embedder,
                                    shard_dir=tmp_path / "shards", progress=False)
    snap = WeightSnapshot(model)
    prompt = {"id": "p-wiki", "doc_id": "p-wiki", "domain": "wiki", "text": "Rome is the capital city of Italy."}
    result = run_prompt(prompt, model, tok, embedder, index, TTFTConfig(method="sift", n=2, k=8, max_tokens=64),
                        snapshot=snap)
    assert snap.equals(model)
    assert result.steps == 2 and result.picked_domains[0] == "wiki"
    assert 0.2 < result.bpb_before < 3.0 and result.bpb_after != result.bpb_before
    assert result.seconds["reset"] < result.seconds["train"] / result.steps
