"""Prefect tasks: thin, cached wrappers around library calls.

Caching (why it is built this way):
- Every cached task's key is ``TASK_SOURCE`` (the task's own code) + ``LibrarySource`` (the source of
  the ``sift`` modules whose results it caches) + its *content* inputs: fingerprints of the corpus,
  sequences, index and model, the prompt's hash and the hyperparameters. Paths, batch sizes and
  anything that only says *where* or *how fast* are excluded, so moving a folder reuses results and
  a changed λ′ reruns exactly selection and fine-tuning.
- Results are persisted as JSON (``result_serializer="json"``) under ``<state>/prefect/results``;
  arrays (embedding shards) are ``.npy`` files written atomically beside them and returned by path
  and checksum. Never a pickle of model weights.
- The result storage is resolved when a flow runs (``cached(task)``), not at import, so
  ``SIFT_HOME`` (and tests' private state folders) decide where caches live.

Model, embedder and index are loaded once per process and reused (``_load_*``): a flow process or a
Dask worker pays the load once; the library resets the model's weights exactly after each prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sift.env import set_default_env, state_dir, state_path, state_relative
from sift.jsonable import to_jsonable

set_default_env()  # before Prefect reads its settings: PREFECT_HOME in the state folder, telemetry off

import numpy as np  # noqa: E402
from prefect import task  # noqa: E402
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.utilities.hashing import hash_objects  # noqa: E402

from flows.errors import quiet_console_if_asked  # noqa: E402

quiet_console_if_asked()  # a Dask worker of a CLI run: no tracebacks on the shared terminal (flows/errors.py)


# --------------------------------------------------------------------------------------- state paths
def results_dir() -> Path:
    """``<state>/prefect/results``: persisted task results and cache records."""
    return state_dir() / "prefect" / "results"


def default_corpus_dir() -> Path:
    """``<state>/corpus/default``: the assembled default corpus and its held-out prompts (the
    library's location, asked lazily so importing this module stays cheap)."""
    from sift.default_corpus import default_corpus_dir as library_default_corpus_dir

    return library_default_corpus_dir()


def default_index_pointer() -> Path:
    """A small JSON naming the last index built on the default corpus (``evaluate``'s default)."""
    return state_dir() / "indices" / "default.json"


def cached(task_obj, **options):
    """``task_obj`` with its result storage set to this run's ``results_dir()`` (a Path, not a str:
    Prefect reads a str as a block slug)."""
    return task_obj.with_options(result_storage=results_dir(), **options)


# ------------------------------------------------------------------------------------ cache policies
@dataclass
class LibrarySource(CachePolicy):
    """Cache key part: the source of the named ``sift`` modules.

    ``TASK_SOURCE`` only hashes the task's own lines; the work happens in the library, so a change
    there must invalidate the cached results too.
    """

    modules: tuple[str, ...] = ()

    def compute_key(self, task_ctx: TaskRunContext, inputs, flow_parameters, **kwargs) -> Optional[str]:
        return hash_objects([_module_source_hash(m) for m in self.modules], raise_on_failure=True)


def _module_source_hash(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return f"{module}:missing"
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def content_policy(modules: tuple[str, ...], exclude: tuple[str, ...] = ()) -> CachePolicy:
    """TASK_SOURCE + the library modules' source + the inputs except ``exclude`` (paths, speed knobs)."""
    policy = INPUTS
    for name in exclude:
        policy = policy - name
    return TASK_SOURCE + LibrarySource(modules=tuple(modules)) + policy


def method_modules() -> tuple[str, ...]:
    """The modules of the registered selection methods (their rules are part of a selection's cache key)."""
    from sift.methods import METHODS

    return tuple(sorted({m.pick.__module__ for m in METHODS.values() if m.pick is not None}))


def text_hash(*parts: Any) -> str:
    """sha256 (16 hex) of the JSON of ``parts``: the content identity of prompts and settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------- per-process model caches
_LOCK = threading.Lock()
# Fast tokenizers are not safe to call from two threads at once (padding/truncation state is shared):
# every encode through a cached embedder holds this lock (tuning with --jobs > 1 runs trials in threads).
_ENCODE_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], tuple[Any, Any, threading.Lock]] = {}
_EMBEDDERS: dict[str, Any] = {}
_MODEL_IDS: dict[tuple[str, str], str] = {}
_INDICES: dict[tuple[str, str], Any] = {}


def locked_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under the process-wide encode lock.

    A helper rather than ``with _ENCODE_LOCK`` inside the tasks: Dask ships a task's function by
    value together with the globals it names, and a lock cannot be pickled.
    """
    with _ENCODE_LOCK:
        return fn(*args, **kwargs)


def load_model(model: Optional[str]) -> tuple[Any, Any, threading.Lock]:
    """``(model, tokenizer, lock)`` loaded once per process (key: the name/path, or the default).

    Fine-tuning mutates the weights (and the library restores them before returning), so callers
    hold ``lock`` while they fine-tune: two threads must never train the same model object at once.
    """
    from sift.model import load_causal_lm

    key = (str(model) if model else "<default>", str(state_dir()))
    with _LOCK:
        if key not in _MODELS:
            lm, tokenizer = load_causal_lm(model, state=state_dir())
            _MODELS[key] = (lm, tokenizer, threading.Lock())
        return _MODELS[key]


def load_tokenizer(model: Optional[str]):
    """The tokenizer of ``model`` without its weights when they are not loaded yet (chunking only)."""
    key = (str(model) if model else "<default>", str(state_dir()))
    if key in _MODELS:
        return _MODELS[key][1]
    from transformers import AutoTokenizer

    from sift.model import convert_default_model

    source = str(model) if model else str(convert_default_model(state_dir()))
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ValueError(f"model={source!r}: its tokenizer does not load ({type(exc).__name__}: {exc})") from exc


def tokenizer_fingerprint(tokenizer) -> str:
    """Content identity of a tokenizer: its full serialisation (fast) or its vocabulary (slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def model_fingerprint_of(model: Optional[str]) -> str:
    """The library's fingerprint of the (loaded-once) model: part of every fine-tuning cache key."""
    from sift.model import model_fingerprint

    key = (str(model) if model else "<default>", str(state_dir()))
    if key not in _MODEL_IDS:  # once per process: the library restores the weights after every prompt
        lm, _, lock = load_model(model)
        with lock:
            _MODEL_IDS[key] = model_fingerprint(lm)
    return _MODEL_IDS[key]


def load_embedder(source: Optional[str], batch_size: int = 32, max_length: Optional[int] = None):
    """The ``sift.embed.Embedder`` for ``source`` (None: bundled MiniLM), loaded once per process."""
    from sift.embed import DEFAULT_MAX_LENGTH, Embedder

    max_length = max_length or DEFAULT_MAX_LENGTH
    key = f"{source or '<default>'}|{batch_size}|{max_length}"
    with _LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(source, max_length=max_length, batch_size=batch_size)
        return _EMBEDDERS[key]


def index_embedder(index_dir: str | Path):
    """The embedder an index was built with (its manifest's ``embedder`` spec), loaded once per process.

    Queries must be embedded by the same φ as the corpus, so evaluation takes it from the index.
    """
    from sift.index import read_index_manifest

    spec = read_index_manifest(index_dir).get("embedder") or {}
    if not isinstance(spec, dict):
        spec = {"name_or_path": spec}
    return load_embedder(spec.get("name_or_path"), max_length=spec.get("max_length"))


def load_corpus_index(index_dir: str | Path, fingerprint: Optional[str] = None):
    """The ``CorpusIndex`` in ``index_dir`` loaded once per process (reloaded if its fingerprint changed)."""
    from sift.index import load_index, read_index_manifest

    path = str(Path(index_dir).resolve())
    key = (path, fingerprint or read_index_manifest(path)["fingerprint"])
    with _LOCK:
        if key not in _INDICES:
            _INDICES[key] = load_index(path)  # the manifest says which embedder; we check ids below
        return _INDICES[key]


# ------------------------------------------------------------------------------- build_index tasks
@task(
    name="chunk_corpus",
    cache_policy=content_policy(("sift.corpus",), exclude=("docs", "model", "out_root")),
    persist_result=True,
    result_serializer="json",
)
def chunk_corpus(
    docs, documents_fingerprint: str, model: Optional[str], tokenizer_id: str, max_tokens: int, out_root: str
) -> dict:
    """Cut documents into sequences of ≤ ``max_tokens`` tokens and save them as parquet.

    Cached on (documents' fingerprint, tokenizer fingerprint, max_tokens). Returns
    ``{"path", "fingerprint", "count"}`` with the sequences' own content fingerprint; ``path`` is relative to
    the state folder (``sift.env.state_relative``; ``state_path`` resolves it), so a moved state keeps it.
    """
    from sift.corpus import chunk_documents, fingerprint_dataset

    sequences = chunk_documents(docs, load_tokenizer(model), max_tokens)
    fingerprint = fingerprint_dataset(sequences)
    out = Path(out_root) / fingerprint / "sequences.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".sequences.{os.getpid()}.tmp")
    sequences.to_parquet(str(tmp))
    os.replace(tmp, out)
    return {"path": state_relative(out), "fingerprint": fingerprint, "count": len(sequences)}


@task(
    name="embed_shard",
    cache_policy=content_policy(("sift.embed",), exclude=("sequences_path", "embedder", "batch_size", "out_dir")),
    persist_result=True,
    result_serializer="json",
)
def embed_shard(
    sequences_path: str,
    sequences_fingerprint: str,
    embedder: Optional[str],
    embedder_id: str,
    start: int,
    end: int,
    batch_size: int,
    out_dir: str,
) -> dict:
    """Embed sequences ``[start, end)`` into a ``.npy`` shard (``sift.embed.embed_shard``: atomic,
    named by a hash of the embedder id and the texts, so a crash loses at most this shard).

    Cached on (sequences' fingerprint, embedder id, shard range). Returns ``{"path", "rows", "dim"}``;
    the flow checks the file still exists before it trusts a cached result.
    """
    import datasets

    from sift.embed import embed_shard as embed_shard_to_disk

    texts = datasets.Dataset.from_parquet(sequences_path).select(range(start, end))["text"]
    emb = load_embedder(embedder, batch_size)
    if emb.id != embedder_id:
        raise ValueError(f"embedder {embedder!r} now has id {emb.id}, expected {embedder_id}: rerun the flow")
    path = locked_call(embed_shard_to_disk, emb, list(texts), out_dir, index=start)
    return {"path": state_relative(path), "rows": end - start, "dim": emb.dim}


def shard_is_intact(shard: dict) -> bool:
    """Whether an embedding shard's file still exists with the shape its cached result recorded."""
    path = state_path(shard["path"])
    if not path.is_file():
        return False
    try:
        return np.load(path, mmap_mode="r").shape == (shard["rows"], shard["dim"])
    except (ValueError, OSError):
        return False


# ---------------------------------------------------------------------------------- evaluate tasks
def prompt_hash(prompt: dict) -> str:
    """Content identity of a prompt: its text and the ids excluded from its candidates."""
    return text_hash(prompt["text"], prompt.get("id"), prompt.get("doc_id"))


@task(
    name="select",
    cache_policy=content_policy(("sift.pipeline", "sift.select", "sift.methods", "sift.methods.kernel",
                                 "sift.methods.greedy", *method_modules(), "sift.index", "sift.search",
                                 "sift.leakage", "sift.embed"),
                                exclude=("prompt", "index_dir", "model")),
    persist_result=True,
    result_serializer="json",
)
def select_task(
    prompt: dict,
    prompt_key: str,
    index_dir: str,
    index_fingerprint: str,
    model: Optional[str],
    tokenizer_key: Optional[str],
    settings: dict,
) -> dict:
    """Step 1 of a prompt (``sift.pipeline.choose``): embed its query, retrieve, select.

    Cached on (prompt hash, index fingerprint — which covers the corpus and the embedder —, the
    ``SelectionSettings`` fields, and the tokenizer when ``split`` cuts the prompt). Returns the
    ``PromptSelection`` as a JSON dict.
    """
    from sift.pipeline import choose
    from sift.settings import SelectionSettings

    cfg = SelectionSettings(**settings)
    index = load_corpus_index(index_dir, index_fingerprint)
    tokenizer = load_tokenizer(model) if cfg.split is not None else None
    embedder = index_embedder(index_dir)
    return to_jsonable(locked_call(choose, prompt, index, embedder, cfg, tokenizer))


@task(
    name="finetune_evaluate",
    cache_policy=content_policy(("sift.finetune", "sift.bpb", "sift.snapshot", "sift.model"), exclude=("model",)),
    persist_result=True,
    result_serializer="json",
)
def finetune_task(
    eval_text: str,
    eval_context: str,
    train_texts: list[str],
    model: Optional[str],
    model_id: str,
    settings: dict,
) -> dict:
    """Step 2 of a prompt (``sift.finetune.finetune_and_evaluate``): one Adam step per training text,
    bits per byte on ``eval_text`` before and after, exact reset.

    Cached on the content of what is trained and evaluated (texts), the model fingerprint and the
    ``TrainingSettings`` fields — not on the method: two methods that pick the same texts share one
    fine-tuning. Returns the ``TrainingOutcome`` as JSON.
    """
    from sift.finetune import finetune_and_evaluate
    from sift.settings import TrainingSettings

    cfg = TrainingSettings(**settings)
    lm, tokenizer, lock = load_model(model)
    with lock:  # the model object is shared by this process's threads
        outcome = finetune_and_evaluate(lm, tokenizer, eval_text, train_texts, cfg, eval_context=eval_context)
    return to_jsonable(outcome)
