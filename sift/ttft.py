"""Test-time fine-tuning for one prompt: choose data, take gradient steps, measure, reset exactly.

Protocol (Hübotter et al. 2024, following Hardt & Sun's TTT-NN):
- pre-select K candidates from the index by inner product with the prompt's embedding, never from
  the prompt's own document (leakage guard), then pick N of them with a selection method;
- one gradient step per picked sequence, in pick order, batch size 1, Adam(lr, eps), a fresh
  optimizer for every prompt, up to ``Selection.stop`` steps (adaptive stopping when α is set);
- bits per byte of the model on the prompt's text before and after;
- restore the model bitwise to its weights on entry without copying or reloading them: the first
  step moves the weights into a second, reused buffer and all steps update that one, so the entry
  weights are never written and the reset is a pointer swap back to them (``WeightSnapshot``).

Decisions worth knowing:
- ``split=F`` cuts the prompt at a token boundary: the first ⌊F·T⌋ tokens are the query (embedded
  for retrieval, and given to the model as unscored context during evaluation); the remaining
  tokens are the evaluated text.
- Low similarity: when no candidate's score reaches ``cfg.min_similarity`` the prompt is still
  fine-tuned on what the method picks (``on_low_similarity="train"``, the default: SIFT's σ_n already
  says the data is uninformative, and α-stopping acts on it), and the result records
  ``low_similarity=True``. ``on_low_similarity="skip"`` instead takes no step and records
  ``skipped_reason``.
- FLOPs are an estimate: 6·P·tokens for training (forward + backward), 2·P·tokens for every
  evaluation forward pass, with P the model's parameter count (tied weights once). For LoRA this
  overstates training slightly (no weight gradients for frozen matrices); we keep one formula so
  methods compare on the same scale.
"""

from __future__ import annotations

import math
import time
import warnings
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from sift.jsonable import dataclass_from_jsonable, to_jsonable
from sift.model import count_parameters

METHODS = ("base", "sift", "nn", "nn-f", "us", "random")


# ----------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class TTFTConfig:
    """Settings of one test-time fine-tuning run (one method over many prompts).

    method: base | sift | nn | nn-f | us | random ("base" takes no step).
    n: sequences to pick (one gradient step each); k: candidates pre-selected from the index.
    lam: SIFT's λ′; alpha: adaptive stopping (stop before step n when σ_n > 1/(α·n)); None: never.
    lr, eps: Adam. max_tokens: tokens per training sequence and per evaluated prompt.
    split: leading fraction of the prompt's tokens used as query; the rest is evaluated.
    seed: for "random" selection and torch. lora_rank: fine-tune LoRA adapters of this rank
    (all linear layers) instead of all weights. eval_every: also measure bpb every k steps.
    min_similarity / on_low_similarity: see the module docstring.
    """

    method: str = "sift"
    n: int = 16
    k: int = 200
    lam: float = 0.1
    alpha: float | None = None
    lr: float = 5e-5
    eps: float = 1e-8
    max_tokens: int = 256
    split: float | None = None
    seed: int = 0
    lora_rank: int | None = None
    eval_every: int | None = None
    min_similarity: float = 0.2
    on_low_similarity: str = "train"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; choose from {list(METHODS)}")
        for name in ("n", "k", "max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens={self.max_tokens} must be at least 2")
        for name in ("lam", "lr", "eps"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} must be > 0 or None")
        if self.split is not None and not 0 < self.split < 1:
            raise ValueError(f"split={self.split!r} must be a fraction strictly between 0 and 1, or None")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank={self.lora_rank!r} must be >= 1 or None")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every={self.eval_every!r} must be >= 1 or None")
        if self.on_low_similarity not in ("train", "skip"):
            raise ValueError(f"on_low_similarity={self.on_low_similarity!r} must be 'train' or 'skip'")


@dataclass
class PromptSelection:
    """The data chosen for one prompt, in pick order (a sequence may appear more than once).

    variances[i] = σ²_i(x*) after i picks (i = 0..len(seq_ids)); ``stop`` = leading picks to train on.
    scores: inner product of each pick with the query (cosine for normalised embeddings).
    """

    seq_ids: list[int]
    doc_ids: list[str]
    domains: list[str]
    scores: list[float]
    texts: list[str]
    variances: list[float]
    stop: int
    repeated: list[bool]
    seconds_retrieval: float
    seconds_selection: float
    candidate_count: int
    max_score: float | None = None

    @property
    def uncertainties(self) -> list[float]:
        """σ_0..σ_n: square roots of the posterior variances (clamped at 0 against round-off)."""
        return [math.sqrt(max(v, 0.0)) for v in self.variances]


@dataclass
class TrainingOutcome:
    """What fine-tuning on one prompt did. ``bpb_curve`` holds (steps taken, bpb) pairs."""

    bpb_before: float
    bpb_after: float
    bpb_curve: list[tuple[int, float]]
    steps: int
    tokens_train: int
    tokens_eval: int
    flops: float
    seconds_train: float
    seconds_eval: float
    seconds_reset: float
    seconds_snapshot: float = 0.0
    eval_bytes: int = 0
    eval_tokens_scored: int = 0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds_train / self.steps if self.steps else float("nan")


@dataclass
class PromptResult:
    """One (prompt, method): everything the tracking and flow layers log, flat and JSON-ready.

    seconds: wall seconds per phase (embed, retrieval, selection, snapshot, train, eval, reset, total).
    uncertainties: σ_0..σ_n after each pick; picked_*: per pick, in order.
    """

    prompt_id: str
    method: str
    domain: str
    bpb_before: float
    bpb_after: float
    steps: int
    uncertainties: list[float]
    picked_ids: list[str]
    picked_seq_ids: list[int]
    picked_domains: list[str]
    picked_scores: list[float]
    repeated: list[bool]
    seconds: dict[str, float]
    tokens: int
    tokens_train: int
    tokens_eval: int
    flops: float
    stopped_early: bool
    bpb_curve: list[tuple[int, float]]
    n: int = 0
    k: int = 0
    lam: float = 0.0
    alpha: float | None = None
    candidate_count: int = 0
    max_score: float | None = None
    low_similarity: bool = False
    skipped_reason: str | None = None
    eval_bytes: int = 0

    @property
    def gain(self) -> float:
        """bpb_before − bpb_after (positive: fine-tuning helped)."""
        return self.bpb_before - self.bpb_after

    def to_json(self) -> dict[str, Any]:
        """A dict of plain Python values (json.dumps-able), with ``gain`` added."""
        out = to_jsonable(asdict(self))
        out["gain"] = float(self.gain)
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "PromptResult":
        """The inverse of ``to_json`` (``gain`` is derived, so it is dropped; curve points become tuples)."""
        result = dataclass_from_jsonable(cls, record)
        result.bpb_curve = [tuple(point) for point in result.bpb_curve]
        return result


# ----------------------------------------------------------------------------------------------
# tokenisation helpers and bits per byte


def _prefix_ids(tokenizer) -> list[int]:
    """The token put before every text so that its first token is predicted too.

    BOS if the tokenizer has one, else EOS (GPT-2 style "<|endoftext|>" document separator), else
    nothing (then the first text token is context only and its bytes are not counted).
    """
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    return []


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
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
    ids, offsets = _encode(tokenizer, text)
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


def _score(model, tokenizer, text: str, max_tokens: int, context: str = "",
           warn: bool = True) -> tuple[float, int, int, int]:
    """Σ NLL in nats over the scored tokens of ``text``; returns (nats, scored tokens, bytes, forward tokens)."""
    if not text or not text.strip():
        raise ValueError("evaluated text is empty or whitespace only")
    prefix = _prefix_ids(tokenizer)
    ids, offsets = _encode(tokenizer, text)
    ctx_ids = _encode(tokenizer, context)[0] if context else []
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
        nats, _, n_bytes, _ = _score(model, tokenizer, text, max_tokens, context)
    finally:
        model.train(was_training)
    return nats / (math.log(2) * n_bytes)


# ----------------------------------------------------------------------------------------------
# exact reset: double buffering


class _Slot:
    """One parameter's double buffer: ``base`` (the snapshot's weights, never written), and ``work``
    plus Adam's two moment tensors (allocated on first use, then reused by every prompt)."""

    __slots__ = ("name", "param", "base", "checksum", "work", "exp_avg", "exp_avg_sq")

    def __init__(self, name: str, param: torch.nn.Parameter):
        self.name = name
        self.param = param
        self.base = param.data  # a reference to the same storage, not a copy
        self.checksum = _checksum(self.base)
        self.work: torch.Tensor | None = None
        self.exp_avg: torch.Tensor | None = None
        self.exp_avg_sq: torch.Tensor | None = None

    def holds_base(self) -> bool:
        p, b = self.param, self.base
        return (p.data_ptr() == b.data_ptr() and p.shape == b.shape and p.stride() == b.stride()
                and p.dtype == b.dtype and p.device == b.device)

    def work_buffer(self) -> torch.Tensor:
        if self.work is None:
            self.work = torch.empty_like(self.base)
        return self.work

    def moment_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.exp_avg is None:
            self.exp_avg, self.exp_avg_sq = torch.empty_like(self.base), torch.empty_like(self.base)
        return self.exp_avg, self.exp_avg_sq


class WeightSnapshot:
    """A model's weights, restorable bit for bit by pointer swaps: no copy at reset, no reload.

    Double buffering. The snapshot keeps *references* to the parameters' tensors (the "base") and,
    per trained parameter, a "work" tensor and Adam's two moment tensors, allocated on first use
    and reused by every later prompt (no allocation, no page faults per prompt).
    ``first_adam_step`` points each parameter at its work tensor (``p.data = work``, filled from
    the base: the one copy per prompt, inside step 1), seeds the optimiser's state with the reused
    moments, and steps: this and every later step of the prompt write the work tensors only. ``restore`` points every parameter back at its
    base (``p.data = base``): the base is never written, so the restored model is bitwise the
    snapshot's by construction, for the price of a few hundred pointer swaps.
    Buffers are cloned (they are small, and some, like BatchNorm statistics, change in training)
    and copied back. Tied weights must be one Parameter, as Hugging Face ties them (counted once);
    distinct parameters sharing storage are refused, since swapping one would untie them.

    The base is shared with the model between prompts, so an in-place write to the model outside
    fine-tuning changes the snapshot too; ``equals`` detects it (checksums taken here), nothing can
    undo it: take a new snapshot after changing weights on purpose.
    """

    def __init__(self, model: torch.nn.Module):
        self._slots = {name: _Slot(name, p) for name, p in model.named_parameters()}
        self._by_param = {id(s.param): s for s in self._slots.values()}
        owners: dict[int, str] = {}
        for s in self._slots.values():
            if s.base.numel() == 0:
                continue
            ptr = s.base.untyped_storage().data_ptr()
            if ptr in owners:
                raise ValueError(f"parameters {owners[ptr]!r} and {s.name!r} share storage but are distinct "
                                 "Parameters; tie them as one Parameter (model.tie_weights()) to snapshot the model")
            owners[ptr] = s.name
        with torch.no_grad():
            self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def holds(self, model: torch.nn.Module) -> bool:
        """True when ``model``'s parameters are this snapshot's Parameters, each pointing at its base."""
        named = dict(model.named_parameters())
        return named.keys() == self._slots.keys() and all(
            named[n] is s.param and s.holds_base() for n, s in self._slots.items())

    def first_adam_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Take a fresh Adam's first step on the work buffers: each base is read, never written.

        For every parameter p of ``optimizer`` (a fresh ``torch.optim.Adam`` or ``AdamW``, fused or
        not, without amsgrad) that is at its base: work ← base, ``p.data = work``, and Adam's state
        ← {step: 0, exp_avg: 0, exp_avg_sq: 0} in reused buffers (what Adam's lazy initialisation
        creates, without allocating 2× the model in fresh, page-faulting memory); then
        ``optimizer.step()``. The update is torch's own (fused) kernel on the same numbers as an
        in-place first step, so the result is bitwise the same as without the snapshot.

        Why a copy and not the update computed out of place, work = base − lr·m̂/(√v̂ + eps): that
        takes six unfused element-wise passes, measured ~50 ms slower per prompt than one copy,
        two zero fills and the fused kernel on SmolLM2-135M (2 CPU threads; benchmarks/ttft.py
        --reset-only compares both). The copy is the price of never writing the base.
        """
        if not isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW):
            raise ValueError(f"first_adam_step needs torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
        with torch.no_grad():
            for group in optimizer.param_groups:
                if group.get("amsgrad"):
                    raise ValueError("first_adam_step does not support amsgrad=True")
                fused = bool(group.get("fused"))
                for p in group["params"]:
                    slot = self._by_param.get(id(p))
                    if slot is None or slot.param is not p:
                        raise ValueError("first_adam_step: the optimizer holds a parameter this snapshot was not "
                                         "taken of")
                    if optimizer.state.get(p):
                        raise ValueError(f"first_adam_step: {slot.name!r} already has optimizer state; "
                                         "the optimizer must be fresh")
                    if not slot.holds_base():
                        raise ValueError(f"first_adam_step: {slot.name!r} is not at the snapshot's weights")
                    work = slot.work_buffer()
                    work.copy_(slot.base)
                    p.data = work
                    if p.grad is None:
                        continue  # Adam skips it now; it would initialise its own state if a gradient came later
                    exp_avg, exp_avg_sq = slot.moment_buffers()
                    exp_avg.zero_()
                    exp_avg_sq.zero_()
                    step = (torch.zeros((), dtype=_step_dtype(fused), device=p.device)
                            if fused or group.get("capturable") else torch.tensor(0.0, dtype=_step_dtype(False)))
                    optimizer.state[p] = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        optimizer.step()

    def restore(self, model: torch.nn.Module) -> None:
        """Point every parameter back at its base tensor and copy the buffers back.

        No parameter data is copied: the base tensors were never written (see ``first_adam_step``).
        """
        with torch.no_grad():
            for name, p in model.named_parameters():
                slot = self._slots.get(name)
                if slot is None or slot.param is not p:
                    raise ValueError(f"restore: parameter {name!r} is not one this snapshot was taken of")
                if not slot.holds_base():
                    p.data = slot.base
            for name, b in model.named_buffers():
                saved = self.buffers.get(name)
                if saved is None:
                    raise ValueError(f"restore: buffer {name!r} is not one this snapshot was taken of")
                b.copy_(saved)

    def equals(self, model: torch.nn.Module) -> bool:
        """True when ``model`` has the snapshot's parameters and buffers, bit for bit as far as checked.

        Buffers: compared bitwise with their clones (NaN-safe). Parameters: same names, shapes and
        dtypes, and the same content checksum as when the snapshot was taken: the wrapped 64-bit
        sum of the tensor's bits read as integers, which changes with any single flipped bit (a
        guard against in-place writes; the restore itself is exact by construction).
        """
        with torch.no_grad():
            named = dict(model.named_parameters())
            if named.keys() != self._slots.keys():
                return False
            for name, p in named.items():
                s = self._slots[name]
                if p.shape != s.base.shape or p.dtype != s.base.dtype or _checksum(p.detach()) != s.checksum:
                    return False
            buffers = dict(model.named_buffers())
            if buffers.keys() != self.buffers.keys():
                return False
            for name, b in buffers.items():
                s = self.buffers[name]
                if s.shape != b.shape or s.dtype != b.dtype or not torch.equal(_bits(s), _bits(b.detach())):
                    return False
        return True


def _step_dtype(fused: bool) -> torch.dtype:
    """The dtype torch.optim.Adam gives its ``step`` counter (float32 when fused, else the default's precision)."""
    return torch.float64 if not fused and torch.get_default_dtype() == torch.float64 else torch.float32


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so that equality is bitwise (NaN == NaN, -0.0 != 0.0)."""
    return t.reshape(-1).view(torch.uint8) if t.is_floating_point() or t.is_complex() else t


def _checksum(t: torch.Tensor) -> int:
    """Wrapped sum of the tensor's bytes read as the widest integers that tile it (int64 for most).

    Any single flipped bit changes it (by ±2^k, never 0 modulo the integer's range); one read of
    the tensor, about as fast as a copy (an int64 sum of float32 weights: 23 ms for SmolLM2-135M).
    """
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        if raw.numel() % dtype.itemsize == 0:
            return int(raw.view(dtype).sum(dtype=dtype)) if raw.numel() else 0


# ----------------------------------------------------------------------------------------------
# choosing the training data


def choose_training_data(query_emb: np.ndarray, index, cfg: TTFTConfig,
                         exclude_doc_ids: Iterable[str] = ()) -> PromptSelection:
    """Retrieve K candidates for the query and pick N of them with ``cfg.method``.

    query_emb: (d,) or (m, d) prompt embedding(s). Candidates come from ``index.search`` with the
    prompt's own document ids excluded (leakage guard; re-checked here so a wrong index can never
    leak). "base" retrieves nothing and records only σ_0² = Σ_i k(x*_i, x*_i).
    """
    query = np.asarray(query_emb, dtype=np.float32)
    if query.ndim not in (1, 2) or query.size == 0 or not np.all(np.isfinite(query)):
        raise ValueError(f"query_emb must be a finite (d,) or (m, d) array, got shape {query.shape}")
    rows = query.reshape(-1, query.shape[-1])
    if cfg.method == "base":
        sigma0 = float(np.sum(rows.astype(np.float64) ** 2))
        return PromptSelection([], [], [], [], [], [sigma0], 0, [], 0.0, 0.0, 0)
    exclude = {str(d) for d in exclude_doc_ids}
    from sift.select import select  # imported here: "base" and the fine-tuning code need no selection module

    t0 = time.perf_counter()
    cands = index.search(query, cfg.k, exclude_doc_ids=exclude)
    seq_ids = np.asarray(cands.seq_ids, dtype=np.int64)
    vectors = np.asarray(cands.vectors, dtype=np.float32)
    scores = np.asarray(cands.scores, dtype=np.float32)
    valid = seq_ids >= 0  # faiss pads missing hits with -1
    if exclude and valid.any():
        doc_col = index.sequences.select(seq_ids[valid].tolist())["doc_id"]
        ok = np.array([d not in exclude for d in doc_col])
        valid[np.flatnonzero(valid)[~ok]] = False
    seq_ids, vectors, scores = seq_ids[valid], vectors[valid], scores[valid]
    seconds_retrieval = time.perf_counter() - t0
    if len(seq_ids) == 0:
        sigma0 = float(np.sum(rows.astype(np.float64) ** 2))
        return PromptSelection([], [], [], [], [], [sigma0], 0, [], seconds_retrieval, 0.0, 0, None)

    t0 = time.perf_counter()
    sel = select(query, vectors, cfg.n, method=cfg.method, lam=cfg.lam, alpha=cfg.alpha, seed=cfg.seed)
    seconds_selection = time.perf_counter() - t0

    picks = np.asarray(sel.indices, dtype=np.int64)
    picked_seq = seq_ids[picks].tolist()
    rows_picked = index.sequences.select(picked_seq) if picked_seq else None
    seen: set[int] = set()
    repeated = []
    for s in picked_seq:
        repeated.append(s in seen)
        seen.add(s)
    return PromptSelection(
        seq_ids=[int(s) for s in picked_seq],
        doc_ids=[str(d) for d in rows_picked["doc_id"]] if rows_picked is not None else [],
        domains=[str(d) for d in rows_picked["domain"]] if rows_picked is not None else [],
        scores=[float(v) for v in scores[picks]],
        texts=list(rows_picked["text"]) if rows_picked is not None else [],
        variances=[float(v) for v in np.asarray(sel.variances, dtype=np.float64)],
        stop=int(min(sel.stop, len(picked_seq))),
        repeated=repeated,
        seconds_retrieval=seconds_retrieval,
        seconds_selection=seconds_selection,
        candidate_count=int(len(seq_ids)),
        max_score=float(np.max(np.abs(scores))),
    )


# ----------------------------------------------------------------------------------------------
# fine-tuning


def _train_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Prefix token + the first ``max_tokens`` tokens of a training sequence."""
    return _prefix_ids(tokenizer) + _encode(tokenizer, text)[0][:max_tokens]


def _adam(params: list[torch.nn.Parameter], cfg: TTFTConfig) -> torch.optim.Optimizer:
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


def finetune_and_evaluate(model, tokenizer, eval_text: str, train_texts: Sequence[str], cfg: TTFTConfig,
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
        nats, n_scored, n_bytes, n_fwd = _score(m, tokenizer, eval_text, cfg.max_tokens, eval_context,
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
            logits = trained(input_ids=x).logits[0]
            loss = torch.nn.functional.cross_entropy(logits[:-1].float(), x[0, 1:])
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


# ----------------------------------------------------------------------------------------------
# the whole pipeline for one prompt


def run_prompt(prompt: dict, model, tokenizer, embedder, index, cfg: TTFTConfig,
               snapshot: WeightSnapshot | None = None, query_emb: np.ndarray | None = None) -> PromptResult:
    """embed → retrieve → select → train → evaluate → reset, for one prompt dict
    ``{"id", "text", "domain", "doc_id"}``; returns its ``PromptResult``.

    The prompt's ``id`` and ``doc_id`` are both excluded from the candidates (leakage guard).
    ``query_emb``: the query's embedding when already computed (then ``embedder`` is not used;
    with ``cfg.split`` it must be the embedding of the query part).
    """
    t_start = time.perf_counter()
    text = prompt.get("text") if isinstance(prompt, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt {prompt.get('id') if isinstance(prompt, dict) else prompt!r}: "
                         "text is empty or whitespace only")
    if cfg.split is not None:
        query_text, eval_text = split_prompt(tokenizer, text, cfg.split, cfg.max_tokens)
        context = query_text
    else:
        query_text, eval_text, context = text, text, ""

    t = time.perf_counter()
    # Embedded for "base" too: its σ_0 = ‖φ(x*)‖ is the retrieval-free uncertainty it records.
    if query_emb is None:
        query_emb = np.asarray(embedder.encode([query_text]), dtype=np.float32)[0]
    seconds_embed = time.perf_counter() - t
    exclude = {str(v) for v in (prompt.get("id"), prompt.get("doc_id")) if v is not None}
    selection = choose_training_data(query_emb, index, cfg, exclude)

    train_texts, _, _ = training_plan(selection, cfg)
    outcome = finetune_and_evaluate(model, tokenizer, eval_text, train_texts, cfg,
                                    eval_context=context, snapshot=snapshot)
    return assemble_result(prompt, cfg, selection, outcome, seconds_embed,
                           total_seconds=time.perf_counter() - t_start)


def training_plan(selection: PromptSelection, cfg: TTFTConfig) -> tuple[list[str], bool, str | None]:
    """What to train on for a selection: ``(train_texts, low_similarity, skipped_reason)``.

    Train on the first ``selection.stop`` picks. ``low_similarity``: a fine-tuning method whose best
    candidate scores below ``cfg.min_similarity`` (or that has none); with
    ``cfg.on_low_similarity == "skip"`` such a prompt trains on nothing and says why.
    """
    low_similarity = cfg.method != "base" and (selection.max_score is None
                                               or selection.max_score < cfg.min_similarity)
    train_texts = list(selection.texts[: selection.stop])
    skipped_reason = None
    if low_similarity and cfg.on_low_similarity == "skip":
        skipped_reason = (f"no candidate above similarity floor {cfg.min_similarity} "
                          f"(best {selection.max_score})")
        train_texts = []
    elif selection.candidate_count == 0 and cfg.method != "base":
        skipped_reason = "no candidates left after excluding the prompt's own document"
    return train_texts, low_similarity, skipped_reason


def assemble_result(prompt: dict, cfg: TTFTConfig, selection: PromptSelection, outcome: TrainingOutcome,
                    seconds_embed: float = 0.0, total_seconds: float | None = None) -> PromptResult:
    """The ``PromptResult`` of one (prompt, method) from its selection and fine-tuning outcome.

    ``seconds["total"]`` is ``total_seconds`` when given (wall time of the whole prompt), else the
    sum of the phases (e.g. for results rebuilt from cached parts).
    """
    _, low_similarity, skipped_reason = training_plan(selection, cfg)
    seconds = {
        "embed": float(seconds_embed),
        "retrieval": selection.seconds_retrieval,
        "selection": selection.seconds_selection,
        "snapshot": outcome.seconds_snapshot,
        "train": outcome.seconds_train,
        "eval": outcome.seconds_eval,
        "reset": outcome.seconds_reset,
    }
    seconds["total"] = float(sum(seconds.values())) if total_seconds is None else total_seconds
    return PromptResult(
        prompt_id=str(prompt.get("id", "")),
        method=cfg.method,
        domain=str(prompt.get("domain", "")),
        bpb_before=outcome.bpb_before,
        bpb_after=outcome.bpb_after,
        steps=outcome.steps,
        uncertainties=selection.uncertainties,
        picked_ids=selection.doc_ids,
        picked_seq_ids=selection.seq_ids,
        picked_domains=selection.domains,
        picked_scores=selection.scores,
        repeated=selection.repeated,
        seconds=seconds,
        tokens=outcome.tokens_train + outcome.tokens_eval,
        tokens_train=outcome.tokens_train,
        tokens_eval=outcome.tokens_eval,
        flops=outcome.flops,
        stopped_early=selection.stop < len(selection.seq_ids),
        bpb_curve=[tuple(p) for p in outcome.bpb_curve],
        n=cfg.n,
        k=cfg.k,
        lam=cfg.lam,
        alpha=cfg.alpha,
        candidate_count=selection.candidate_count,
        max_score=selection.max_score,
        low_similarity=bool(low_similarity),
        skipped_reason=skipped_reason,
        eval_bytes=outcome.eval_bytes,
    )
