"""Bits per byte of a causal LM on a text, and cutting a prompt into query and evaluated part.

bpb = (Σ token negative log-likelihoods in nats) / (ln 2 × UTF-8 bytes of the predicted text).
Training's loss comes from the model itself (``labels=``); this module only measures.
"""

from __future__ import annotations

import math
import warnings

import torch


# tokenisation helpers and bits per byte


def prefix_ids(tokenizer) -> list[int]:
    """The token put before every text so that its first token is predicted too.

    BOS if the tokenizer has one, else EOS (GPT-2 style "<|endoftext|>" document separator), else
    nothing (then the first text token is context only and its bytes are not counted).
    """
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    return []


def encode_text(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of ``text`` without special tokens, and character offsets when the tokenizer has them."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _context_limit(model) -> int | None:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    return int(limit) if limit else None


def _window(model, max_tokens: int, n_prefix: int) -> int:
    """Most text tokens one forward pass may hold: max_tokens, capped by the model's context."""
    limit = _context_limit(model)
    return max(1, min(max_tokens, limit - n_prefix)) if limit else max_tokens


def split_prompt(tokenizer, text: str, fraction: float, max_tokens: int | None = None) -> tuple[str, str]:
    """Cut ``text`` at a token boundary: (query = first ⌊fraction·T⌋ tokens, evaluated rest).

    T is the number of tokens (after truncating to ``max_tokens`` if given, with a warning). Both
    parts get at least one token; a prompt of fewer than 2 tokens cannot be split (ValueError).
    """
    if not text or not text.strip():
        raise ValueError("prompt text is empty or whitespace only")
    if not 0 < fraction < 1:
        raise ValueError(f"split={fraction!r} must be strictly between 0 and 1")
    ids, offsets = encode_text(tokenizer, text)
    if max_tokens is not None and len(ids) > max_tokens:
        warnings.warn(f"prompt has {len(ids)} tokens; splitting only its first {max_tokens} "
                      f"({len(ids) - max_tokens} tokens dropped)", stacklevel=2)
        ids = ids[:max_tokens]
        offsets = offsets[:max_tokens] if offsets is not None else None
    if len(ids) < 2:
        raise ValueError(f"split={fraction}: the prompt has {len(ids)} token(s); need at least 2 to split")
    q = min(max(1, int(fraction * len(ids))), len(ids) - 1)
    if offsets is not None:
        cut = offsets[q][0]
        end = offsets[-1][1]
        return text[:cut], text[cut:end]
    return tokenizer.decode(ids[:q]), tokenizer.decode(ids[q:])


def score_text(model, tokenizer, text: str, max_tokens: int, context: str = "",
           warn: bool = True) -> tuple[float, int, int, int]:
    """Σ NLL in nats over the scored tokens of ``text``; returns (nats, scored tokens, bytes, forward tokens)."""
    if not text or not text.strip():
        raise ValueError("evaluated text is empty or whitespace only")
    prefix = prefix_ids(tokenizer)
    ids, offsets = encode_text(tokenizer, text)
    ctx_ids = encode_text(tokenizer, context)[0] if context else []
    if not ids:
        raise ValueError("evaluated text has no tokens")
    window = _window(model, max_tokens, len(prefix))
    if len(ctx_ids) + len(ids) > window:
        keep = max(1, window - len(ctx_ids))
        dropped_tokens = len(ids) - keep
        if keep < len(ids):
            end_char = offsets[keep - 1][1] if offsets is not None else None
            dropped = f"{dropped_tokens} tokens"
            if end_char is not None:
                dropped += f", {len(text[end_char:].encode('utf-8'))} of {len(text.encode('utf-8'))} bytes"
            if warn:
                warnings.warn(f"evaluated text truncated to its first {keep} tokens ({dropped} not evaluated; "
                              f"window {window} tokens)", stacklevel=3)
            ids = ids[:keep]
            offsets = offsets[:keep] if offsets is not None else None
            truncated = True
        else:
            truncated = False
        if len(ctx_ids) + len(ids) > window:  # context alone too long: keep its last tokens
            ctx_ids = ctx_ids[len(ctx_ids) + len(ids) - window:]
    else:
        truncated = False
    # Bytes counted: the UTF-8 bytes of the part of `text` whose tokens are predicted. With a prefix
    # token or context every text token is predicted; without either, the first token is not.
    first_scored = 0 if (prefix or ctx_ids) else 1
    if offsets is not None:
        start_char = 0 if first_scored == 0 else offsets[0][1]
        end_char = offsets[-1][1] if truncated else len(text)
        n_bytes = len(text[start_char:end_char].encode("utf-8"))
    else:
        n_bytes = len(tokenizer.decode(ids[first_scored:]).encode("utf-8"))
    all_ids = prefix + ctx_ids + ids
    n_scored = len(ids) - first_scored
    if n_scored < 1 or n_bytes < 1:
        raise ValueError("evaluated text is too short: no token is predicted (need a BOS/EOS token or 2+ tokens)")
    device = next(model.parameters()).device
    x = torch.tensor([all_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float()
    targets = x[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")
    nats = float(nll[-n_scored:].sum())
    return nats, n_scored, n_bytes, len(all_ids)


def bits_per_byte(model, tokenizer, text: str, max_tokens: int = 256, context: str = "") -> float:
    """Bits per byte of ``model`` on ``text``: Σ token NLL (nats) / (ln 2 × UTF-8 bytes counted).

    The text is tokenised without special tokens and preceded by the tokenizer's BOS (else EOS)
    token, so every text token is predicted; ``context`` (if given) sits between that token and the
    text and is not scored. Bytes counted: the UTF-8 bytes of the text covered by the predicted
    tokens, i.e. the whole text, or its first ``max_tokens`` tokens' characters when truncated
    (a warning then says how many tokens and bytes were dropped). The window is also capped by the
    model's context length. Empty or whitespace-only text → ValueError.
    """
    was_training = model.training
    model.eval()
    try:
        nats, _, n_bytes, _ = score_text(model, tokenizer, text, max_tokens, context)
    finally:
        model.train(was_training)
    return nats / (math.log(2) * n_bytes)

