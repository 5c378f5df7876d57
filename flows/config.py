"""One configuration object per flow.

Each field is at once a CLI flag of ``sift-ttft`` (``--field-name``) and a parameter of the Prefect
flow, so the two can never drift apart. Validation errors name the field and say what is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sift.inputs import NOT_TEXT_RULE
from sift.methods import get_method
from sift.settings import BudgetSettings, SelectionSettings, TTFTConfig


class RunnerConfig(BaseModel):
    """Where per-prompt tasks and embedding shards run."""

    model_config = ConfigDict(extra="forbid")

    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="Prefect task runner: 'thread' (in-process) or 'dask' (prefect-dask DaskTaskRunner)."
    )
    dask_address: Optional[str] = Field(
        None, description="Address of an existing Dask scheduler (tcp://host:8786); default: a new LocalCluster."
    )
    dask_workers: int = Field(2, ge=1, description="Workers of the LocalCluster when no --dask-address is given.")


class IndexConfig(RunnerConfig):
    """Build a Faiss index over a corpus (``sift-ttft index`` / the ``build_index`` flow)."""

    corpus: list[str] = Field(
        default_factory=list,
        description="Corpus paths (JSONL/parquet with a 'text' field in every record, or folders of .txt/.md/.py); "
        f"empty: the embedded default. A file that is not text is refused: {NOT_TEXT_RULE}.",
    )
    out: Optional[Path] = Field(
        None, description="Index folder; default: <state>/indices/<content key of corpus, embedder, max_tokens>."
    )
    embedder: Optional[str] = Field(None, description="HF encoder name or path; default: all-MiniLM-L6-v2 (bundled).")
    model: Optional[str] = Field(
        None, description="Causal LM whose tokenizer cuts documents into sequences; default: bundled SmolLM2-135M."
    )
    max_tokens: int = Field(256, ge=8, description="Tokens per training sequence (paper: 1024; CPU default 256).")
    index_type: str = Field("auto", description="flat | ivf | hnsw | auto | any faiss factory string.")
    shard_size: int = Field(1024, ge=1, description="Sequences per embedding shard (one cached task each).")
    batch_size: int = Field(32, ge=1, description="Embedding batch size.")
    force: bool = Field(
        False,
        description="Replace an index at --out built from another corpus or embedder. Without it only an empty "
        "folder or an index of the same corpus and embedder is replaced; a folder that is not an index, the "
        "current directory, home, the state folder and folders holding the corpus are never replaced.",
    )


class EvaluateConfig(RunnerConfig, TTFTConfig, BudgetSettings):
    """Test-time fine-tune per prompt and measure bits per byte (``sift-ttft evaluate``).

    The selection and training fields are the library's (``sift.settings``), inherited, never listed
    here: ``selection(method)`` and ``training()`` give the exact settings each step is keyed on.
    """

    index: Optional[Path] = Field(
        None, description="Index folder from `sift-ttft index`; default: the last index built on the default corpus."
    )
    prompts: Optional[Path] = Field(
        None, description="Prompts JSONL (id, text, domain, doc_id); default: the default corpus's held-out prompts."
    )
    method: list[str] = Field(  # the library's `method` is one name; a run compares several
        default_factory=lambda: ["base", "nn", "sift"],
        description="Selection methods to compare, names of sift.METHODS: {methods} (repeatable).",
    )
    reference: str = Field(
        "nn", description="Method every other one is compared with, prompt by prompt (paired bootstrap), "
                          "when it is among --method."
    )
    model: Optional[str] = Field(None, description="Causal LM name or path; default: bundled SmolLM2-135M.")
    limit: Optional[int] = Field(
        None, ge=1, description="Evaluate only LIMIT prompts, taken in file order round-robin across domains."
    )
    skip: int = Field(
        0, ge=0, description="Leave out the first SKIP prompts of that round-robin order (before --limit): a tuning "
                             "study with --skip 48 never sees the prompts an evaluation with --limit 48 reports on."
    )
    alphas: list[float] = Field(
        default_factory=lambda: [0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0],
        description="α values of the adaptive-stopping sweep, recomputed from the stored uncertainties and "
                    "per-step curves (needs --eval-every 1) (repeatable).",
    )
    budgets: list[float] = Field(
        default_factory=lambda: [4.0, 6.0, 8.0, 10.0, 12.0, 14.0],
        description="Average steps per prompt at which every --allocate policy is compared with uniform, read "
                    "exactly off the per-step curves (needs --eval-every 1), sigma's γ chosen on the other half "
                    "of the prompts (repeatable).",
    )
    params: Optional[Path] = Field(None, description="JSON with 'lam'/'alpha'/'gamma' (e.g. tuning's best.json) overriding those flags.")
    out: Optional[Path] = Field(None, description="Write one JSON line per (prompt, method) here.")
    tracking: bool = Field(True, description="Log to MLflow (MLFLOW_TRACKING_URI or the state folder's sqlite store).")
    experiment: str = Field("sift-ttft", description="MLflow experiment name.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: list[str]) -> list[str]:  # replaces the library's one-name check
        if not value:
            raise ValueError("give at least one --method")
        for name in value:
            get_method(name)
        return list(dict.fromkeys(value))  # keep order, drop repeats

    @field_validator("alphas")
    @classmethod
    def _positive_alphas(cls, value: list[float]) -> list[float]:
        if any(not a > 0 for a in value):
            raise ValueError(f"every α must be > 0, got {value}")
        return sorted(set(value))

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, value: list[float]) -> list[float]:
        if any(not b > 0 for b in value):
            raise ValueError(f"every budget per prompt must be > 0, got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _budget_without_alpha(self) -> "EvaluateConfig":
        if self.budget is not None and self.alpha is not None:
            raise ValueError("--alpha and --budget do not go together: with a budget, --allocate decides where "
                             "each prompt stops (--allocate alpha chooses the α that spends the budget)")
        return self

    def selection(self, method: str) -> SelectionSettings:
        """The select step's settings (its cache key) for ``method``."""
        return SelectionSettings(**self.model_dump(include=set(SelectionSettings.model_fields) - {"method"}),
                                 method=method)

    def ttft(self, method: str) -> TTFTConfig:
        """The library's whole settings for ``method`` (what ``sift.ttft.run_prompt`` takes)."""
        return TTFTConfig(**self.model_dump(include=set(TTFTConfig.model_fields) - {"method"}), method=method)

    @model_validator(mode="after")
    def _apply_params_file(self) -> "EvaluateConfig":
        """``params`` (e.g. tuning's best.json) overrides ``lam``/``alpha``/``gamma``: read it once, here, so the
        flow, the CLI and a deployment all see the same resolved values."""
        if self.params is None:
            return self
        path = Path(self.params).expanduser()
        if not path.is_file():
            raise ValueError(f"params file {str(path)!r} does not exist; give a JSON file with 'lam', 'alpha' and/or 'gamma'")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"params file {str(path)!r} is not JSON ({exc.msg})") from None
        if not isinstance(values, dict) or not {"lam", "alpha", "gamma"} & set(values):
            raise ValueError(f"params file {str(path)!r} must hold a JSON object with 'lam', 'alpha' and/or 'gamma'")
        if "lam" in values:
            if not isinstance(values["lam"], (int, float)) or values["lam"] <= 0:
                raise ValueError(f"params file {str(path)!r}: 'lam' must be a number > 0, got {values['lam']!r}")
            self.lam = float(values["lam"])
        if "alpha" in values:
            alpha = values["alpha"]
            if alpha is not None and (not isinstance(alpha, (int, float)) or alpha <= 0):
                raise ValueError(f"params file {str(path)!r}: 'alpha' must be a number > 0 or null, got {alpha!r}")
            self.alpha = None if alpha is None else float(alpha)
        if "gamma" in values:
            if not isinstance(values["gamma"], (int, float)) or values["gamma"] < 0:
                raise ValueError(f"params file {str(path)!r}: 'gamma' must be a number >= 0, got {values['gamma']!r}")
            self.gamma = float(values["gamma"])
        return self


class DemoConfig(EvaluateConfig):
    """The README's main job: default corpus → index → base/NN/SIFT on a few held-out prompts."""

    n: int = Field(8, ge=1, description="Sequences to select per prompt.")
    limit: Optional[int] = Field(6, ge=1, description="Held-out prompts to evaluate (spread across domains).")


class TuneConfig(EvaluateConfig):
    """Optuna study over λ′ and α (``sift-ttft tune``)."""

    method: list[str] = Field(default_factory=lambda: ["sift"], description="Tuning always evaluates SIFT.")
    out: Optional[Path] = Field(
        None, description="Also write the best {'lam', 'alpha'} here (always: <state>/optuna/<study>/best.json)."
    )
    trials: int = Field(
        20, ge=1, description="Trials this process runs (workers sharing a study each run theirs: 2 × 5 → 10)."
    )
    study: str = Field("sift-ttft", description="Optuna study name; an existing study resumes.")
    storage: Optional[str] = Field(
        None, description="Optuna RDB URL (sqlite:////abs/optuna.db, postgresql://user@host/db with the `postgres` "
                          "extra); default: $SIFT_OPTUNA_STORAGE, else sqlite in the state folder."
    )
    objective: Literal["bpb", "bpb+compute"] = Field("bpb", description="Minimise bits per byte, or bpb + W × mean steps. "
                                                     "With --budget every trial spends the same steps, so both minimise "
                                                     "the bits per byte that budget buys; λ′ and sigma's γ are searched.")
    compute_weight: float = Field(0.001, ge=0, description="W in bpb + W × mean steps.")
    jobs: int = Field(1, ge=1, description="Trials run in parallel threads of this process.")
    lam_min: float = Field(1e-3, gt=0, description="Lower end of λ′'s log-uniform range.")
    lam_max: float = Field(10.0, gt=0, description="Upper end of λ′'s log-uniform range.")
    alpha_min: float = Field(0.1, gt=0, description="Lower end of α's log-uniform range.")
    alpha_max: float = Field(100.0, gt=0, description="Upper end of α's log-uniform range.")
    gamma_max: float = Field(4.0, gt=0, description="Upper end of γ's uniform range [0, gamma_max], searched with "
                                                     "--budget and --allocate sigma.")
    tune_fraction: float = Field(0.5, gt=0, lt=1, description="Fraction of prompts used for tuning; the rest is held out.")

    @model_validator(mode="after")
    def _ranges(self) -> "TuneConfig":
        if self.lam_min >= self.lam_max:
            raise ValueError(f"empty λ′ range: lam_min={self.lam_min} must be < lam_max={self.lam_max}")
        if self.alpha_min >= self.alpha_max:
            raise ValueError(f"empty α range: alpha_min={self.alpha_min} must be < alpha_max={self.alpha_max}")
        return self


class DataSizeConfig(EvaluateConfig):
    """The data-size experiment (``sift-ttft data-size``): does SIFT's lead over NN grow with the data space?

    The evaluate flow on nested data spaces of growing size (assembled like ``sift-ttft corpus
    --sequences S``, or your own ``--corpus`` files), the same held-out prompts on every one; per size
    each method's mean bits per byte and its paired comparison with ``--reference``, in a table and a
    plot against the size (log x). Every other flag is the evaluate flow's and means the same here.
    """

    sizes: list[int] = Field(
        default_factory=lambda: [8192, 32768, 131072],
        description="Data-space sizes in sequences, assembled offline like `sift-ttft corpus --sequences` "
                    "(nested: a smaller space is a subset of a larger one, one prompt set for all) (repeatable).",
    )
    corpus: list[Path] = Field(
        default_factory=list,
        description="Your own data spaces instead of --sizes: one corpus (JSONL/parquet/folder) per size, all "
                    "evaluated on --prompts (repeatable; nested spaces answer the paper's question).",
    )
    sources: Literal["demo", "all"] = Field("all", description="Source preset of assembled spaces (`sift-ttft corpus --sources`).")
    corpus_seed: int = Field(0, description="Seed of assembled spaces: prompt choice and document sampling (`sift-ttft corpus --seed`).")
    embedder: Optional[str] = Field(None, description="HF encoder name or path; default: all-MiniLM-L6-v2 (bundled).")
    index_type: str = Field("auto", description="flat | ivf | hnsw | auto | any faiss factory string.")
    lam: list[float] = Field(  # a list here: one SIFT comparison per λ′ and size
        default_factory=lambda: [0.1],
        description="SIFT's λ′ values (repeatable): each is one evaluate run per size (the first with every --method, "
                    "the others with sift and --reference). --params adds the λ′ (only) of a tuning study's best.json.",
    )
    method: list[str] = Field(
        default_factory=lambda: ["base", "nn", "nn-f", "sift"],
        description="Selection methods to compare, names of sift.METHODS: {methods} (repeatable).",
    )
    max_tokens: int = Field(128, ge=8, description="Tokens per sequence of the assembled spaces, per training "
                                                   "sequence and per evaluated prompt.")
    limit: Optional[int] = Field(48, ge=1, description="Prompts to evaluate on every size (round-robin across domains).")
    experiment: str = Field("data-size", description="MLflow experiment name.")
    out: Optional[Path] = Field(None, description="Write the table (per size and λ′: mean bits per byte per method, "
                                                  "each paired comparison with --reference) as JSON here, and the plot beside it (.png).")

    @field_validator("sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if not value or any(s < 1 for s in value):
            raise ValueError(f"give one or more sizes ≥ 1, got {value}")
        return sorted(set(value))

    @field_validator("lam")
    @classmethod
    def _positive_lams(cls, value: list[float]) -> list[float]:
        if not value or any(not v > 0 for v in value):
            raise ValueError(f"every λ′ must be > 0, got {value}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _apply_params_file(self) -> "DataSizeConfig":
        """``params`` (tuning's best.json) adds its λ′ to ``lam``. Only λ′: a study's α or γ would change
        every method's runs (and the reference's), not one more SIFT comparison; pass --alpha for that."""
        if self.params is None:
            return self
        tuned = EvaluateConfig(params=self.params).lam  # one reader of params files: evaluate's
        self.lam = list(dict.fromkeys([*self.lam, tuned]))
        return self

    @model_validator(mode="after")
    def _own_indices(self) -> "DataSizeConfig":
        if self.index is not None:
            raise ValueError("--index: the data-size flow builds one index per data space; give --corpus or --sizes")
        if self.corpus and self.prompts is None:
            raise ValueError("--corpus needs --prompts: the held-out prompts every data space is evaluated on")
        return self

    def evaluate_config(self, lam: float, index: Path, prompts: Path, method: list[str]) -> EvaluateConfig:
        """The evaluate flow's config for one data space and λ′ (every shared flag passed through)."""
        shared = set(EvaluateConfig.model_fields) - {"lam", "params", "index", "prompts", "method", "out"}
        return EvaluateConfig(**self.model_dump(include=shared), lam=lam, index=index, prompts=prompts, method=method)
