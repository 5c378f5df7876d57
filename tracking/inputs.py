"""The data a run used, as MLflow dataset inputs: the index and the prompts, each named by its fingerprint.

MLflow stores a dataset input as (name, digest, source, schema, profile) plus a context tag, shows it in
the runs table's "Dataset" column and lets runs be filtered by it::

    client.search_runs([exp], "dataset.name = 'index' AND dataset.digest = '<index fingerprint>'")

The digest is the content fingerprint, so two runs on the same index or the same prompts share a
digest whatever folder or file they were read from. Nothing here reads an index or a prompt file: the
callers pass what they already hold (the manifest, the prompt dicts), so logging costs no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# MLflow's column for a dataset digest holds 36 characters.
MAX_DIGEST_CHARS = 36
CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT

# Columns of what each input holds (docs/architecture.md), shown by the UI as the dataset's schema.
_PROMPT_COLUMNS = (("id", "string"), ("text", "string"), ("domain", "string"), ("doc_id", "string"))
_SEQUENCE_COLUMNS = (("seq_id", "long"), ("doc_id", "string"), ("domain", "string"), ("source", "string"),
                     ("text", "string"), ("char_start", "long"), ("char_end", "long"), ("n_tokens", "long"))


@dataclass(frozen=True)
class DataInput:
    """One dataset a run read. ``digest`` is its content fingerprint (≤ 36 chars); ``source`` a local
    path or URI ("" when the data had no file); ``context`` what the run did with it ("training":
    fine-tuning draws from it, "evaluation": it is measured on); ``schema``/``profile`` are JSON text
    or None."""

    name: str
    digest: str
    source: str
    context: str
    schema: str | None = None
    profile: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.digest:
            raise ValueError(f"a data input needs a name and a digest, got {self.name!r}, {self.digest!r}")
        if len(self.digest) > MAX_DIGEST_CHARS:
            raise ValueError(f"digest {self.digest!r} is longer than MLflow's {MAX_DIGEST_CHARS} characters")


def _colspec(columns: Iterable[tuple[str, str]]) -> str:
    # The schema format MLflow's own datasets write and its UI renders as a table.
    return json.dumps({"mlflow_colspec": [{"name": n, "type": t, "required": True} for n, t in columns]})


def index_input(manifest: Mapping[str, Any], path: str | Path | None = None) -> DataInput:
    """The index (``sift.index`` manifest) as a "training" input with digest ``manifest["fingerprint"]``;
    profile: count, dim, embedder_id, index_type, corpus_fingerprint. ``ValueError`` without a fingerprint."""
    fingerprint = str(manifest.get("fingerprint") or "")
    if not fingerprint:
        raise ValueError("the index manifest has no 'fingerprint': rebuild the index with `sift-ttft index`")
    profile = {"num_rows": manifest.get("count")}
    profile.update({k: manifest[k] for k in ("dim", "embedder_id", "index_type", "corpus_fingerprint")
                    if k in manifest})
    return DataInput(name="index", digest=fingerprint[:MAX_DIGEST_CHARS],
                     source=str(Path(path).expanduser().resolve()) if path else "", context="training",
                     schema=_colspec(_SEQUENCE_COLUMNS), profile=json.dumps(profile, default=str))


def prompts_digest(prompts: Sequence[Mapping[str, Any]]) -> str:
    """A content hash of the prompts (16 hex chars): every field of every prompt, independent of their
    order (each prompt is evaluated on its own, so a reordered file gives the same results)."""
    lines = sorted(json.dumps(dict(p), sort_keys=True, ensure_ascii=False, default=str) for p in prompts)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def prompts_input(prompts: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> DataInput:
    """The prompts a run evaluated as an "evaluation" input with digest ``prompts_digest(prompts)``;
    profile: the number of prompts and their count per domain. ``ValueError`` for no prompts."""
    if not prompts:
        raise ValueError("no prompts: a run with no prompts has no data to record")
    domains = Counter(str(p.get("domain", "")) for p in prompts)
    profile = {"num_rows": len(prompts), "domains": dict(sorted(domains.items()))}
    return DataInput(name="prompts", digest=prompts_digest(prompts),
                     source=str(Path(path).expanduser().resolve()) if path else "", context="evaluation",
                     schema=_colspec(_PROMPT_COLUMNS), profile=json.dumps(profile))


def evaluation_inputs(manifest: Mapping[str, Any], index_path: str | Path | None,
                      prompts: Sequence[Mapping[str, Any]], prompts_path: str | Path | None = None) -> list[DataInput]:
    """``[index_input(manifest, index_path), prompts_input(prompts, prompts_path)]``: what an evaluation read."""
    return [index_input(manifest, index_path), prompts_input(prompts, prompts_path)]


def log_data_inputs(client: Any, run_id: str, inputs: Sequence[DataInput]) -> None:
    """Record ``inputs`` on run ``run_id`` through ``MlflowClient.log_inputs`` (one call)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not inputs:
        return
    datasets = []
    for item in inputs:
        # "local" with {"uri": ...} is how MLflow's own LocalArtifactDatasetSource describes a path.
        source_type, source = ("local", json.dumps({"uri": item.source})) if item.source else ("code", "{}")
        dataset = Dataset(name=item.name, digest=item.digest, source_type=source_type, source=source,
                          schema=item.schema, profile=item.profile)
        datasets.append(DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, item.context)]))
    client.log_inputs(run_id, datasets=datasets)
