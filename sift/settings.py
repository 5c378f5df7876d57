"""The settings of test-time fine-tuning, defined once.

Two models, one per idea, composed by everything that needs settings:
- ``SelectionSettings``: what decides which sequences a prompt trains on (method, N, K, λ′, α, ...);
  the select step's cache key is exactly its fields.
- ``TrainingSettings``: what decides a fine-tuning besides its texts (lr, eps, LoRA rank, ...); the
  fine-tune step's cache key is exactly its fields.
``TTFTConfig`` holds both (what ``sift.ttft.run_prompt`` takes). ``BudgetSettings``: how a run's
total step budget is split across its prompts (``sift.budget``), a setting of the whole run. The flows' configs inherit it, so the
CLI's flags, the Prefect parameters, the MLflow params and the tuning study's defining settings are
derived from these fields: a field added here reaches all of them with no other edit.

``max_tokens`` and ``seed`` belong to both steps (prompt cutting and training length; random picks and
torch's seed), so they live in ``SharedSettings`` that both inherit.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sift.budget import DEFAULT_GAMMA, POLICIES
from sift.methods import get_method


class SharedSettings(BaseModel):
    """Fields both steps read."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=8, description="Tokens per training sequence and per evaluated prompt "
                                                   "(paper: 1024; CPU default 256).")
    seed: int = Field(0, description="Seed of 'random' selection and of torch during fine-tuning.")


class SelectionSettings(SharedSettings):
    """What decides a prompt's training data (the select step's cache key)."""

    method: str = Field("sift", description="Selection method (a name of sift.METHODS).")
    n: int = Field(16, ge=1, description="Sequences to select per prompt (one gradient step each).")
    k: int = Field(200, ge=1, description="Candidates pre-selected from the index per prompt.")
    lam: float = Field(0.1, gt=0, description="SIFT's λ′: large → nearest neighbours, small → more diversity.")
    alpha: Optional[float] = Field(None, gt=0, description="Adaptive stopping α: stop before step n when "
                                                           "σ_n > 1/(α·n); none: never stop.")
    split: Optional[float] = Field(None, gt=0, lt=1, description="Use this leading fraction of the prompt's tokens "
                                                                 "as query and evaluate on the rest.")
    duplicate: int = Field(1, ge=1, description="Data space with every indexed sequence stored this many times "
                                                "under distinct ids (the duplication experiment); 1: as indexed.")
    leak_threshold: Optional[float] = Field(0.5, gt=0, le=1, description="Leakage guard: drop candidates sharing "
                                            "this share of 8-word shingles with the prompt's evaluated text "
                                            "(either side's share; sift.leakage); none: off.")
    min_similarity: float = Field(0.2, description="A prompt whose best candidate scores below this is flagged "
                                                   "low_similarity (and skipped with on_low_similarity=skip).")
    on_low_similarity: Literal["train", "skip"] = Field("train", description="What a low-similarity prompt does: "
                                                                             "train on its picks anyway, or skip.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)  # a ValueError listing the registered names
        return value


class TrainingSettings(SharedSettings):
    """What decides a fine-tuning besides its texts (the fine-tune step's cache key)."""

    lr: float = Field(5e-5, gt=0, description="Adam learning rate.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    lora_rank: Optional[int] = Field(None, ge=1, description="Fine-tune LoRA adapters of this rank instead of "
                                                             "all weights.")
    eval_every: Optional[int] = Field(None, ge=1, description="Also measure bits per byte every k steps "
                                                              "(per-step curves; 1 for the α sweep).")

    def training(self) -> "TrainingSettings":
        """Just the training fields (the fine-tune step's cache key)."""
        return TrainingSettings(**self.model_dump(include=set(TrainingSettings.model_fields)))


class TTFTConfig(SelectionSettings, TrainingSettings):
    """Settings of one test-time fine-tuning run: one method over many prompts (selection + training)."""


class BudgetSettings(BaseModel):
    """One step budget for all prompts of a run (``sift.budget.allocate``), per method."""

    model_config = ConfigDict(extra="forbid")

    budget: Optional[int] = Field(None, ge=1, description="Total gradient steps across all prompts of the run, for "
                                  "each method, split by --allocate after every prompt's selection; none: every "
                                  "prompt trains on its N picks (or until α stops it).")
    allocate: Literal[POLICIES] = Field("sigma", description="How --budget is split: uniform (equal steps), alpha "
                                        "(one α for all prompts, the one that spends the budget) or sigma (steps in "
                                        "proportion to (1 − σ_N/σ_0)^γ, the uncertainty each prompt's picks remove).")
    gamma: float = Field(DEFAULT_GAMMA, ge=0, description="γ of --allocate sigma: 0 is uniform, larger gives more "
                                                          "of the budget to the prompts with the most relevant data.")


def settings_fields() -> list[str]:
    """Every field of ``TTFTConfig`` (selection and training), in declaration order."""
    return list(TTFTConfig.model_fields)


