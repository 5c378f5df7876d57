"""The ``build_index`` flow: corpus → sequences → embedding shards → Faiss index.

Steps and what each is cached on (content, never file names or time):
1. load the documents (``sift.corpus.load_documents``) and fingerprint them;
2. ``chunk_corpus``: cut into ≤ max_tokens sequences — documents' fingerprint, tokenizer, max_tokens;
3. ``embed_shard`` × ⌈S/shard_size⌉ (submitted together: parallel on Dask) — sequences' fingerprint,
   embedder id, shard range;
4. build + save the index, skipped when the output folder already holds an index of the same build
   key (sequences, embedder, index type).
The inputs (corpus content, embedder, model) and the output folder are checked before any work
(``flows.preflight.preflight_index``, also the CLI's preflight); the output folder again
once the index's identity is known, before embedding: an existing folder is replaced only when it is
empty or an index of the same sequences and embedder, or with ``--force``; never a folder that is not
an index, the current directory, home, the state folder or a folder holding the corpus
(``sift.atomic.check_out_dir``).
A run killed mid-way (even ``kill -9``) resumes: finished shards are cached results and files.
"""

from __future__ import annotations

import json
from pathlib import Path

from flows.config import IndexConfig
from flows.preflight import preflight_index
from flows.tasks import (
    cached,
    chunk_corpus,
    default_corpus_dir,
    default_index_pointer,
    embed_shard,
    load_embedder,
    load_tokenizer,
    shard_is_intact,
    text_hash,
    tokenizer_fingerprint,
)
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from sift.atomic import read_json_or_none, write_json
from sift.env import state_dir, state_path, state_relative


@task(name="assemble_default_corpus", cache_policy=NO_CACHE)
def assemble_default_corpus_task(out_dir: str, seed: int = 0) -> dict:
    """Assemble the embedded default corpus if needed (the library call is idempotent and cheap when
    done); return the paths of its corpus and prompts files."""
    from sift.default_corpus import assemble_default_corpus

    assemble_default_corpus(Path(out_dir), seed=seed)
    return {"corpus": str(Path(out_dir) / "corpus.jsonl"), "prompts": str(Path(out_dir) / "prompts.jsonl")}


@task(name="save_index", cache_policy=NO_CACHE)
def save_index_task(out: str, sequences_path: str, shard_paths: list[str], index_type: str, manifest: dict,
                    force: bool = False, protect: list[str] | None = None) -> dict:
    """Concatenate the shards, build the Faiss index and save it atomically (``sift.index``; ``force`` and
    ``protect``, the corpus paths, decide what ``out`` may replace)."""
    import datasets

    from sift.embed import concat_shards
    from sift.index import build_index as build_faiss_index
    from sift.index import save_index

    out_dir = Path(out)
    embeddings = concat_shards(shard_paths, out_dir.parent / f".{out_dir.name}.embeddings.npy")
    sequences = datasets.Dataset.from_parquet(sequences_path)
    save_index(out_dir, build_faiss_index(embeddings, index_type=index_type), sequences, embeddings, manifest,
               force=force, protect=protect or [])
    (out_dir.parent / f".{out_dir.name}.embeddings.npy").unlink(missing_ok=True)
    return json.loads((out_dir / "manifest.json").read_text())


def _existing_manifest(out: Path, build_key: str) -> dict | None:
    """The manifest of an index already built in ``out`` with the same build key, else None."""
    manifest = read_json_or_none(out / "manifest.json")
    if manifest is None:
        return None
    return manifest if manifest.get("build_key") == build_key and (out / "index.faiss").is_file() else None


@flow(name="build_index", task_runner=ThreadPoolTaskRunner(max_workers=1))
def build_index(config: IndexConfig = IndexConfig()) -> dict:
    """Build (or reuse) the index of ``config.corpus`` (empty: the embedded default corpus).

    Returns ``{"path", "fingerprint", "count", "reused", "shards"}`` (``shards``: counts of the embedding
    tasks' final states, e.g. ``{"Cached": 14, "Completed": 1}``; empty when the index was reused).
    Building on the default corpus also records the index as ``evaluate``'s default
    (``<state>/indices/default.json``).
    """
    from flows.runners import current_runner_matches, make_task_runner

    if not current_runner_matches(config):  # e.g. a deployment whose parameters ask for Dask
        return build_index.with_options(task_runner=make_task_runner(config))(config=config)
    return build_index_in_flow(config)


def build_index_in_flow(config: IndexConfig) -> dict:
    """The ``build_index`` flow's body, callable from another flow (``demo``) without a subflow."""
    from sift.corpus import LoadReport, fingerprint_dataset, load_documents
    from sift.index import check_index_out

    preflight_index(config)  # again here: deployments and the demo do not pass through the CLI's preflight
    logger = get_run_logger()
    paths = list(config.corpus)
    if not paths:
        paths = [assemble_default_corpus_task(str(default_corpus_dir()))["corpus"]]
    report = LoadReport()
    docs = load_documents(paths, report=report)
    documents_fingerprint = fingerprint_dataset(docs)
    logger.info("corpus: %d documents from %s (fingerprint %s)", len(docs), paths, documents_fingerprint)

    tokenizer = load_tokenizer(config.model)
    chunks = cached(chunk_corpus)(
        docs, documents_fingerprint, config.model, tokenizer_fingerprint(tokenizer), config.max_tokens,
        str(state_dir() / "sequences"),
    )
    if not state_path(chunks["path"]).is_file():  # a cached result whose file was deleted: redo it
        chunks = cached(chunk_corpus, refresh_cache=True)(
            docs, documents_fingerprint, config.model, tokenizer_fingerprint(tokenizer), config.max_tokens,
            str(state_dir() / "sequences"),
        )
    embedder = load_embedder(config.embedder, config.batch_size)
    build_key = text_hash(chunks["fingerprint"], embedder.id, config.index_type)
    out = Path(config.out).expanduser().resolve() if config.out else state_dir() / "indices" / build_key
    logger.info("sequences: %d of ≤ %d tokens (fingerprint %s)", chunks["count"], config.max_tokens, chunks["fingerprint"])

    manifest = _existing_manifest(out, build_key)
    reused = manifest is not None
    shard_states: dict[str, int] = {}
    if manifest is None:
        # The index's identity is known now: refuse another corpus's or embedder's index before embedding.
        check_index_out(out, {"corpus_fingerprint": chunks["fingerprint"], "embedder_id": embedder.id},
                        force=config.force, protect=paths)
        manifest = _build(config, chunks, embedder, build_key, documents_fingerprint, report, out, shard_states,
                          protect=paths)
    if not config.corpus:
        record_default_index(out, manifest["fingerprint"])
    logger.info("index %s: %s (%d sequences)", "reused" if reused else "built", out, manifest["count"])
    return {"path": str(out), "fingerprint": manifest["fingerprint"], "count": int(manifest["count"]), "reused": reused,
            "shards": shard_states}


def record_default_index(index_dir: Path, fingerprint: str) -> None:
    """Record ``index_dir`` as ``evaluate``'s default (``<state>/indices/default.json``), relative to the
    state folder when the index is inside it: a moved or copied state folder keeps its default index."""
    write_json(default_index_pointer(), {"path": state_relative(index_dir), "fingerprint": fingerprint})


def _build(config: IndexConfig, chunks: dict, embedder, build_key: str, documents_fingerprint: str, report, out: Path,
           shard_states: dict[str, int], protect: list[str]) -> dict:
    """Embed every shard (cached tasks, submitted together), count their final states into
    ``shard_states``, and save the index (``protect``: the corpus paths, never replaced)."""
    from sift.embed import shard_ranges

    logger = get_run_logger()
    shard_dir = state_dir() / "embeddings" / text_hash(chunks["fingerprint"], embedder.id)
    task_obj = cached(embed_shard)
    ranges = shard_ranges(chunks["count"], config.shard_size)

    def submit(start: int, end: int, task_to_run=task_obj):
        return task_to_run.submit(
            str(state_path(chunks["path"])), chunks["fingerprint"], config.embedder, embedder.id, start, end,
            config.batch_size, str(shard_dir),
        )

    futures = [submit(a, b) for a, b in ranges]
    shards = []
    for i, ((a, b), future) in enumerate(zip(ranges, futures)):
        shard = future.result()
        if not shard_is_intact(shard):  # cached result but the file is gone: embed it again
            shard = submit(a, b, cached(embed_shard, refresh_cache=True)).result()
        shards.append(shard)
        shard_states[future.state.name] = shard_states.get(future.state.name, 0) + 1
        logger.info("embedding: shard %d/%d (sequences %d-%d) %s", i + 1, len(ranges), a, b, future.state.name.lower())
    manifest = {
        "build_key": build_key,
        "corpus": [str(p) for p in config.corpus] or ["<default>"],
        # The sequences' content hash: it covers the documents, the tokenizer and max_tokens.
        "corpus_fingerprint": chunks["fingerprint"],
        "documents_fingerprint": documents_fingerprint,
        "embedder": embedder.spec(),
        "embedder_id": embedder.id,
        "max_tokens": config.max_tokens,
        "index_type_requested": config.index_type,
        "load_report": report.to_json(),
    }
    return save_index_task(str(out), str(state_path(chunks["path"])), [str(state_path(s["path"])) for s in shards], config.index_type, manifest,
                           force=config.force, protect=[str(p) for p in protect])
