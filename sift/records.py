"""What one prompt's test-time fine-tuning produces: its selection, its training outcome, its result row.

Plain dataclasses, JSON round-trippable (``sift.jsonable``): the flow's cached tasks store them, the
tracking layer logs them, ``--out`` writes ``PromptResult.to_json()`` lines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sift.jsonable import dataclass_from_jsonable, to_jsonable


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
    seconds_embed: float = 0.0
    excluded_overlap: int = 0  # candidates dropped because their text overlaps the prompt's (leakage guard)

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
    excluded_overlap: int = 0
    stop_reason: str | None = None  # all_picks | alpha | budget | no_picks | skipped (sift.budget, sift.pipeline)
    budget_steps: int | None = None  # steps the run's --budget granted this prompt (None: no budget)

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

