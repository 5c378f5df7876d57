"""Test-time fine-tuning of one prompt: one Adam step per selected sequence, measured before and after.

Protocol (Hübotter et al. 2024, following Hardt & Sun's TTT-NN): one gradient step per picked
sequence, in pick order, batch size 1, Adam(lr, eps), a fresh optimizer for every prompt; bits per
byte on the prompt's text before and after; the model restored bitwise to its weights on entry by
pointer swaps (``sift.snapshot.WeightSnapshot``), never by a copy or a reload.

FLOPs are an estimate: 6·P·tokens for training (forward + backward), 2·P·tokens for every
evaluation forward pass, with P the model's parameter count (tied weights once). For LoRA this
overstates training slightly (no weight gradients for frozen matrices); one formula keeps methods
on the same scale.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Sequence

import torch

from sift.bpb import encode_text, prefix_ids, score_text
from sift.model import count_parameters
from sift.records import TrainingOutcome
from sift.settings import TrainingSettings
from sift.snapshot import WeightSnapshot


def _train_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Prefix token + the first ``max_tokens`` tokens of a training sequence."""
    return prefix_ids(tokenizer) + encode_text(tokenizer, text)[0][:max_tokens]


def _adam(params: list[torch.nn.Parameter], cfg: TrainingSettings) -> torch.optim.Optimizer:
    """Adam(lr, eps), fused where torch supports it: one kernel over all 134M parameters instead of
    a chain of per-op passes (several times faster on CPU for the default model)."""
    try:
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps)


# One snapshot per model object, kept between prompts so that its work buffers and Adam moments are
# allocated (and page-faulted) once per model, not once per prompt. Weak keys: it goes with the model.
_SNAPSHOTS: "weakref.WeakKeyDictionary[torch.nn.Module, WeightSnapshot]" = weakref.WeakKeyDictionary()


def _snapshot_of(model: torch.nn.Module) -> WeightSnapshot:
    """The kept snapshot of ``model``, taken anew when its parameters are no longer the snapshot's."""
    snapshot = _SNAPSHOTS.get(model)
    if snapshot is None or not snapshot.holds(model):
        snapshot = _SNAPSHOTS[model] = WeightSnapshot(model)
    return snapshot


def finetune_and_evaluate(model, tokenizer, eval_text: str, train_texts: Sequence[str], cfg: TrainingSettings,
                          eval_context: str = "", snapshot: WeightSnapshot | None = None) -> TrainingOutcome:
    """Measure bpb on ``eval_text``, take one Adam step per training text (in order), measure again,
    and restore the model bitwise to its weights on entry.

    Each step: loss = mean token NLL of one sequence (batch size 1, the first ``cfg.max_tokens``
    tokens after a BOS/EOS prefix), ``Adam(lr, eps)`` created fresh for this call. With
    ``cfg.lora_rank`` the model is wrapped in LoRA adapters (peft, all linear layers,
    lora_alpha = 2·rank, no dropout) that are trained instead and removed afterwards.
    ``snapshot``: a ``WeightSnapshot`` of the model's current weights (its work buffers then serve
    every prompt); when None, one kept per model object is used (taken anew if the model's
    parameters were replaced). Full fine-tuning takes the first step with
    ``snapshot.first_adam_step`` (onto the work buffers) and the rest with fused Adam in place on
    them; the reset swaps the base tensors back (no copy).
    ``cfg.eval_every=k`` adds a bpb measurement after every k steps to ``bpb_curve``.
    FLOPs ≈ 6·P·tokens_train + 2·P·tokens_eval.
    """
    if not eval_text or not eval_text.strip():
        raise ValueError("eval_text is empty or whitespace only")
    torch.manual_seed(cfg.seed)
    n_params = count_parameters(model)
    tokens_eval = 0
    seconds_eval = 0.0
    evaluated = {"bytes": 0, "scored": 0}

    def measure(m) -> float:
        nonlocal tokens_eval, seconds_eval
        t = time.perf_counter()
        m.eval()
        # Warn about truncation once per prompt, not at every measurement.
        nats, n_scored, n_bytes, n_fwd = score_text(m, tokenizer, eval_text, cfg.max_tokens, eval_context,
                                                warn=tokens_eval == 0)
        tokens_eval += n_fwd
        seconds_eval += time.perf_counter() - t
        evaluated.update(bytes=n_bytes, scored=n_scored)
        return nats / (math.log(2) * n_bytes)

    was_training = model.training
    bpb_before = measure(model)
    curve = [(0, bpb_before)]
    texts = [t for t in train_texts if t and t.strip()]
    if not texts:
        model.train(was_training)
        return TrainingOutcome(bpb_before, bpb_before, curve, 0, 0, tokens_eval, 2.0 * n_params * tokens_eval,
                               0.0, seconds_eval, 0.0, 0.0, evaluated["bytes"], evaluated["scored"])

    t = time.perf_counter()
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    # LoRA trains only adapters, dropped afterwards: the base weights stay frozen and nothing is swapped.
    swap = cfg.lora_rank is None
    if swap and snapshot is None:
        snapshot = _snapshot_of(model)
    elif swap and not snapshot.holds(model):
        raise ValueError("snapshot: the model's parameters are not at this snapshot's weights; take "
                         "WeightSnapshot(model) of the model as it is now")
    seconds_snapshot = time.perf_counter() - t

    trained = model
    if cfg.lora_rank is not None:
        # LoRA: base weights are frozen and never reach the optimiser; the adapters are dropped after.
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                          target_modules="all-linear", bias="none")
        trained = get_peft_model(model, lora)
    device = next(trained.parameters()).device
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = _adam(params, cfg)  # fresh per prompt: no moment estimates leak between prompts

    tokens_train = 0
    seconds_train = 0.0
    steps = 0
    try:
        for text in texts:
            t = time.perf_counter()
            ids = _train_ids(tokenizer, text, cfg.max_tokens)
            if len(ids) < 2:
                continue
            trained.train()
            x = torch.tensor([ids], device=device)
            loss = trained(input_ids=x, labels=x).loss  # the model's own shifted mean token NLL
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if swap and steps == 0:
                snapshot.first_adam_step(optimizer)  # moves the weights to the work buffers: base is never written
            else:
                optimizer.step()
            steps += 1
            tokens_train += len(ids)
            seconds_train += time.perf_counter() - t
            if cfg.eval_every and steps % cfg.eval_every == 0 and steps < len(texts):
                curve.append((steps, measure(trained)))
        bpb_after = measure(trained)
        curve.append((steps, bpb_after))
    finally:
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        if cfg.lora_rank is not None:
            trained.unload()  # removes the LoRA layers, puts the original modules back
            if hasattr(model, "peft_config"):
                del model.peft_config
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
            p.grad = None
        if snapshot is not None:
            snapshot.restore(model)
        model.train(was_training)
        seconds_reset = time.perf_counter() - t
    flops = 6.0 * n_params * tokens_train + 2.0 * n_params * tokens_eval
    return TrainingOutcome(bpb_before, bpb_after, curve, steps, tokens_train, tokens_eval, flops,
                           seconds_train, seconds_eval, seconds_reset, seconds_snapshot, evaluated["bytes"],
                           evaluated["scored"])

