"""One prompt's test-time fine-tuning as two serialisable steps, and the whole path for plain Python.

1. ``choose``: embed the prompt's query → retrieve K candidates from the index (the prompt's own
   document excluded inside the Faiss search) → select N of them with the method → ``PromptSelection``.
2. ``plan_training`` (cheap: texts only) then ``sift.finetune.finetune_and_evaluate``: one Adam step
   per picked sequence, bits per byte before and after, exact reset → ``TrainingOutcome``.
``assemble_result`` turns the two into the ``PromptResult`` row. The flow's tasks wrap step 1 and the
fine-tuning of step 2 (each cached on its content); ``run_prompt`` runs all of it in one call.

Decisions worth knowing:
- ``split=F`` cuts the prompt at a token boundary: the first ⌊F·T⌋ tokens are the query (embedded
  for retrieval, and given to the model as unscored context during evaluation); the remaining
  tokens are the evaluated text.
- Leakage guard: the prompt's ``id`` and ``doc_id`` are excluded at search time, and candidates whose
  text overlaps the prompt's evaluated text (``leak_threshold``, ``sift.leakage``) are dropped, so a
  prompt whose document sits in the corpus under another id (or none) never trains on itself. K is
  over-fetched by a quarter so the drop rarely leaves fewer than K; the count is recorded.
- Low similarity: when no candidate's score reaches ``min_similarity`` the prompt is still
  fine-tuned on what the method picks (``on_low_similarity="train"``, the default: SIFT's σ_n already
  says the data is uninformative, and α-stopping acts on it), and the result records
  ``low_similarity=True``. ``on_low_similarity="skip"`` instead takes no step and records
  ``skipped_reason``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from sift.bpb import split_prompt
from sift.budget import ALL_PICKS, ALPHA, NO_PICKS
from sift.finetune import finetune_and_evaluate
from sift.methods import get_method
from sift.records import PromptResult, PromptSelection, TrainingOutcome
from sift.settings import SelectionSettings, TTFTConfig
from sift.snapshot import WeightSnapshot


@dataclass
class TrainingPlan:
    """What step 2 trains on and measures: plain texts, so its cache key is its content."""

    eval_text: str
    eval_context: str
    train_texts: list[str]
    low_similarity: bool
    skipped_reason: str | None
    stop_reason: str = ALL_PICKS  # why training stops where it does (sift.budget's reasons, or "skipped")
    budget_steps: int | None = None  # the steps a run's budget granted this prompt (None: no budget)


def prompt_texts(prompt: dict, settings: SelectionSettings, tokenizer=None) -> tuple[str, str, str]:
    """``(query_text, eval_text, eval_context)`` of a prompt: the whole text thrice over, unless
    ``settings.split`` cuts it (then the tokenizer is needed)."""
    text = prompt.get("text") if isinstance(prompt, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt {prompt.get('id') if isinstance(prompt, dict) else prompt!r}: "
                         "text is empty or whitespace only")
    if settings.split is None:
        return text, text, ""
    if tokenizer is None:
        raise ValueError("split is set: the model's tokenizer is needed to cut the prompt")
    query, rest = split_prompt(tokenizer, text, settings.split, settings.max_tokens)
    return query, rest, query


def excluded_doc_ids(prompt: dict) -> set[str]:
    """The documents a prompt must never train on: its ``id`` and its ``doc_id``."""
    return {str(v) for v in (prompt.get("id"), prompt.get("doc_id")) if v is not None}


def choose(prompt: dict, index, embedder, settings: SelectionSettings, tokenizer=None,
           query_emb: np.ndarray | None = None) -> PromptSelection:
    """Step 1: embed → retrieve (own document excluded) → select, for one prompt dict
    ``{"id", "text", "domain", "doc_id"}``.

    ``query_emb``: the query's embedding when already computed (then ``embedder`` is not used).
    "base" is embedded too: its σ_0 = ‖φ(x*)‖ is the retrieval-free uncertainty it records.
    """
    query_text, eval_text, _ = prompt_texts(prompt, settings, tokenizer)
    t = time.perf_counter()
    if query_emb is None:
        query_emb = np.asarray(embedder.encode([query_text]), dtype=np.float32)[0]
    seconds_embed = time.perf_counter() - t
    selection = choose_training_data(query_emb, index, settings, excluded_doc_ids(prompt), eval_text=eval_text)
    selection.seconds_embed = seconds_embed
    return selection


def choose_training_data(query_emb: np.ndarray, index, cfg: SelectionSettings,
                         exclude_doc_ids: Iterable[str] = (), eval_text: str | None = None) -> PromptSelection:
    """Retrieve K candidates for the query (none from ``exclude_doc_ids``, none whose text overlaps
    ``eval_text`` when ``cfg.leak_threshold`` is set) and pick N with ``cfg.method``.

    query_emb: (d,) or (m, d) prompt embedding(s). ``cfg.duplicate`` > 1 searches the data space with
    every sequence stored that many times (``CorpusIndex.duplicated``). Methods that retrieve nothing
    ("base") record only σ_0² = Σ_i k(x*_i, x*_i).
    """
    from sift.select import select

    query = np.asarray(query_emb, dtype=np.float32)
    if query.ndim not in (1, 2) or query.size == 0 or not np.all(np.isfinite(query)):
        raise ValueError(f"query_emb must be a finite (d,) or (m, d) array, got shape {query.shape}")
    rows = query.reshape(-1, query.shape[-1])
    sigma0 = float(np.sum(rows.astype(np.float64) ** 2))
    if not get_method(cfg.method).retrieves:
        return PromptSelection([], [], [], [], [], [sigma0], 0, [], 0.0, 0.0, 0)
    space = index.duplicated(cfg.duplicate) if cfg.duplicate > 1 else index

    t0 = time.perf_counter()
    guard = eval_text is not None and cfg.leak_threshold is not None
    fetch = min(len(space), cfg.k + (cfg.k // 4 + 8 if guard else 0))
    with warnings.catch_warnings():  # over-fetching past the index's size is not the user's k
        if fetch > cfg.k:
            warnings.filterwarnings("ignore", message=r"k=\d+ exceeds")
        cands = space.search(query, fetch, exclude_doc_ids=exclude_doc_ids)
    seq_ids, vectors, scores = cands.seq_ids, cands.vectors, cands.scores
    excluded_overlap = 0
    if guard and len(seq_ids):
        from sift.leakage import overlap_mask

        leaks = overlap_mask(eval_text, space.texts(seq_ids), threshold=cfg.leak_threshold)
        excluded_overlap = int(leaks.sum())
        seq_ids, vectors, scores = seq_ids[~leaks], vectors[~leaks], scores[~leaks]
    seq_ids, vectors, scores = seq_ids[: cfg.k], vectors[: cfg.k], scores[: cfg.k]  # ranked best first
    if fetch > cfg.k and len(seq_ids) < cfg.k:
        warnings.warn(f"{len(seq_ids)} of k={cfg.k} candidates are left after excluding the prompt's own "
                      f"document and {excluded_overlap} overlapping its text", stacklevel=2)
    seconds_retrieval = time.perf_counter() - t0
    if len(seq_ids) == 0:
        return PromptSelection([], [], [], [], [], [sigma0], 0, [], seconds_retrieval, 0.0, 0, None,
                               excluded_overlap=excluded_overlap)

    t0 = time.perf_counter()
    sel = select(query, vectors, cfg.n, method=cfg.method, lam=cfg.lam, alpha=cfg.alpha, seed=cfg.seed)
    seconds_selection = time.perf_counter() - t0

    picks = np.asarray(sel.indices, dtype=np.int64)
    picked_seq = seq_ids[picks].tolist()
    rows_picked = space.sequences.select(picked_seq) if picked_seq else None
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
        excluded_overlap=excluded_overlap,
    )


def plan_training(prompt: dict, selection: PromptSelection, cfg: SelectionSettings, tokenizer=None,
                  budget: tuple[int, str] | None = None) -> TrainingPlan:
    """What step 2 trains on and measures for a selection.

    Train on the first ``selection.stop`` picks, or on the first ``steps`` when a run's budget granted
    ``budget = (steps, reason)`` (``sift.budget.allocate``). ``low_similarity``: a method that retrieves
    whose best candidate scores below ``cfg.min_similarity`` (or that has none); with
    ``cfg.on_low_similarity == "skip"`` such a prompt trains on nothing and says why. ``stop_reason``:
    the budget's reason, else ``alpha`` when adaptive stopping cut the picks, ``no_picks``, ``skipped``
    or ``all_picks``.
    """
    _, eval_text, context = prompt_texts(prompt, cfg, tokenizer)
    retrieves = get_method(cfg.method).retrieves
    low_similarity = retrieves and (selection.max_score is None or selection.max_score < cfg.min_similarity)
    train_texts = list(selection.texts[: selection.stop])
    stop_reason = ALPHA if selection.stop < len(selection.texts) else ALL_PICKS if train_texts else NO_PICKS
    if budget is not None:
        train_texts, stop_reason = train_texts[: budget[0]], budget[1]
    skipped_reason = None
    if low_similarity and cfg.on_low_similarity == "skip":
        skipped_reason = (f"no candidate above similarity floor {cfg.min_similarity} "
                          f"(best {selection.max_score})")
        train_texts, stop_reason = [], "skipped"
    elif selection.candidate_count == 0 and retrieves:
        skipped_reason = "no candidates left after excluding the prompt's own document"
    return TrainingPlan(eval_text, context, train_texts, bool(low_similarity), skipped_reason, stop_reason,
                        None if budget is None else int(budget[0]))


def assemble_result(prompt: dict, cfg: TTFTConfig, selection: PromptSelection, outcome: TrainingOutcome,
                    plan: TrainingPlan, total_seconds: float | None = None) -> PromptResult:
    """The ``PromptResult`` of one (prompt, method) from its two steps.

    ``seconds["total"]`` is ``total_seconds`` when given (wall time of the whole prompt), else the
    sum of the phases (e.g. for results rebuilt from cached parts).
    """
    seconds = {
        "embed": float(selection.seconds_embed),
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
        low_similarity=plan.low_similarity,
        skipped_reason=plan.skipped_reason,
        eval_bytes=outcome.eval_bytes,
        excluded_overlap=selection.excluded_overlap,
        stop_reason=plan.stop_reason,
        budget_steps=plan.budget_steps,
    )


def run_prompt(prompt: dict, model, tokenizer, embedder, index, cfg: TTFTConfig,
               snapshot: WeightSnapshot | None = None, query_emb: np.ndarray | None = None) -> PromptResult:
    """embed → retrieve → select → train → evaluate → reset, for one prompt dict; its ``PromptResult``.

    ``query_emb``: the query's embedding when already computed (with ``cfg.split`` it must be the
    embedding of the query part).
    """
    t_start = time.perf_counter()
    selection = choose(prompt, index, embedder, cfg, tokenizer, query_emb=query_emb)
    plan = plan_training(prompt, selection, cfg, tokenizer)
    outcome = finetune_and_evaluate(model, tokenizer, plan.eval_text, plan.train_texts, cfg,
                                    eval_context=plan.eval_context, snapshot=snapshot)
    return assemble_result(prompt, cfg, selection, outcome, plan, total_seconds=time.perf_counter() - t_start)


__all__: list[Any] = ["TrainingPlan", "assemble_result", "choose", "choose_training_data", "excluded_doc_ids",
                      "plan_training", "prompt_texts", "run_prompt"]
