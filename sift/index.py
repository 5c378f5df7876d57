"""Faiss inner-product index over sequence embeddings: build, save/load with a manifest, candidate fetch.

With L2-normalised embeddings the inner product is the cosine, i.e. SIFT's kernel k(x*, x).

Index types (``build_index(index_type=...)``):
- ``"flat"``: exact ``IndexFlatIP``. ``"auto"`` picks it up to ``AUTO_FLAT_MAX`` = 200,000 vectors: one
  prompt's exact search at K = 200 took 140 ms over 131,072 x 384 and 239 ms over 262,144 on the loaded
  2-core machine (benchmarks/results/index_scale.json), under 1 % of the prompt's fine-tuning (N steps of
  seconds each), so the data-size experiment's spaces (≤ 131,072) keep exact retrieval.
- ``"ivf"``: ``IndexIVFFlat`` with nlist ≈ √n; nprobe is raised (doubling) until recall@K against the
  exact search reaches ``recall_target`` (``RECALL_TARGET`` = 0.98 at K = 1,000) on a sample of stored vectors
  as queries. ``"auto"`` picks it above ``AUTO_FLAT_MAX`` vectors. Measured with the held-out prompts as
  queries (benchmarks/index_scale.py; 4,096 real MiniLM embeddings plus synthetic ones): at 131,072 and
  262,144 vectors nlist 362 / 512, nprobe 64, recall@200 0.990 / 0.991, recall@1000 0.978 / 0.980, 6 / 12 ms
  per prompt at K = 200, 54 / 84 s to build and tune.
- ``"hnsw"``: ``IndexHNSWFlat`` (M=32); efSearch is raised until recall@K ≥ ``recall_target``.
- anything else: a faiss factory string (``"IVF256,PQ32"``, ...), inner-product metric.

An index folder holds ``index.faiss`` (faiss's own format), ``embeddings.npy`` (float32, the exact
vectors: candidates' vectors come from here, not from lossy reconstructions), ``sequences.parquet``
(row i = seq_id i) and ``manifest.json``. It is written to a temporary sibling folder and renamed into
place, so a reader sees a complete index or none. An existing folder is replaced only when it is empty
or an index of the same corpus and embedder (or with ``force``): ``INDEX_KIND``, ``sift.atomic``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable

import datasets
import faiss
import numpy as np

from sift.atomic import FolderKind, atomic_dir, check_out_dir
from sift.corpus import fingerprint_dataset
from sift.search import Candidates, CorpusIndex, search_parameters  # noqa: F401  (Candidates re-exported)

log = logging.getLogger(__name__)

AUTO_FLAT_MAX = 200_000  # "auto" uses exact search up to this many vectors, IVF above
RECALL_TARGET = 0.98  # IVF/HNSW search parameters are tuned until recall@K against exact search reaches this
INDEX_FILES = ("index.faiss", "embeddings.npy", "sequences.parquet")
REQUIRED_MANIFEST_KEYS = ("embedder_id",)


def _describe_index(manifest: dict) -> str:
    corpus = manifest.get("corpus")
    over = f"corpus {', '.join(map(str, corpus))} (sequences {manifest.get('corpus_fingerprint')})" if corpus \
        else f"sequences {manifest.get('corpus_fingerprint')}"
    return f"an index built with embedder {manifest.get('embedder_id')} over {over}"


# What an index folder is, for ``sift.atomic``: an index is the same thing as another when it embeds
# the same sequences (corpus, tokenizer, max_tokens: ``corpus_fingerprint``) with the same embedder;
# another index type over them is a rebuild. Manifests written before "kind" existed are recognised
# by the two keys every ``save_index`` wrote.
INDEX_KIND = FolderKind(
    name="sift-index",
    noun="an index",
    files=(*INDEX_FILES, "manifest.json"),
    identity_keys=("corpus_fingerprint", "embedder_id"),
    legacy=lambda manifest: "embedder_id" in manifest and "corpus_fingerprint" in manifest,
    describe=_describe_index,
)


def check_index_out(out_dir: str | Path, identity: dict | None = None, *, force: bool = False,
                    protect: Iterable[str | Path] = ()) -> None:
    """Raise a one-line ``ValueError`` unless an index may be written to ``out_dir``
    (``sift.atomic.check_out_dir`` with ``INDEX_KIND``); reads at most one manifest, writes nothing.

    ``identity``: ``{"corpus_fingerprint", "embedder_id"}`` of the index about to be written (None:
    not known yet, any index folder passes); ``protect``: the corpus paths (never replaced, nor a
    folder holding them)."""
    check_out_dir(out_dir, INDEX_KIND, identity, force=force, protect=protect)


# --------------------------------------------------------------------------------------------
# Building.


def _as_float32_matrix(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def recall_at_k(index: faiss.Index, exact: faiss.Index, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    _, approx_ids = index.search(queries, k)
    _, exact_ids = exact.search(queries, k)
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / k for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits))


def _tune(index: faiss.Index, vectors: np.ndarray, param: str, limit: int, k: int, target: float,
          queries: int, seed: int) -> dict[str, Any]:
    """Smallest power of two for ``param`` (nprobe or efSearch) whose recall@k reaches ``target``."""
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    value, recall = 1, 0.0
    while True:
        faiss.ParameterSpace().set_index_parameter(index, param, value)
        recall = recall_at_k(index, exact, sample, k)
        if recall >= target or value >= limit:
            break
        value = min(value * 2, limit)
    return {param: value, "recall_at_k": recall, "recall_k": k}


def build_index(
    embeddings: np.ndarray,
    index_type: str = "auto",
    *,
    recall_target: float = RECALL_TARGET,
    recall_k: int = 1000,
    recall_queries: int = 100,
    seed: int = 0,
    report: dict | None = None,
) -> faiss.Index:
    """Build an inner-product Faiss index holding ``embeddings`` (row i gets id i).

    ``index_type``: "auto" | "flat" | "ivf" | "hnsw" | a faiss factory string (see the module doc).
    For IVF/HNSW the search parameter is tuned so that recall@min(recall_k, n) against exact search
    is ≥ ``recall_target``. Pass a dict as ``report`` to receive the type, parameters, measured recall
    and build seconds.
    """
    vectors = _as_float32_matrix(embeddings)
    n, d = vectors.shape
    if not isinstance(index_type, str) or not index_type.strip():
        raise ValueError(f"index_type must be 'auto', 'flat', 'ivf', 'hnsw' or a faiss factory string, got {index_type!r}")
    kind = index_type.strip()
    if kind.lower() == "auto":
        kind = "flat" if n <= AUTO_FLAT_MAX else "ivf"
    k = max(1, min(recall_k, n))
    t0 = time.perf_counter()
    info: dict[str, Any] = {"index_type": kind}
    if kind.lower() == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
    elif kind.lower() == "ivf":
        # nlist ≈ √n, but at least ~39 training points per list (faiss warns below that).
        nlist = max(1, min(int(round(math.sqrt(n))), n // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
        index.add(vectors)
        info.update(nlist=nlist, **_tune(index, vectors, "nprobe", nlist, k, recall_target, recall_queries, seed))
    elif kind.lower() == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        info.update(M=32, **_tune(index, vectors, "efSearch", 4096, k, recall_target, recall_queries, seed))
    else:
        try:
            index = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"index_type {kind!r} is not a faiss factory string faiss understands: {err}") from err
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
    info["seconds"] = time.perf_counter() - t0
    info["count"] = int(index.ntotal)
    if "recall_at_k" in info and info["recall_at_k"] < recall_target:
        log.warning("index %s reaches recall@%d %.3f < %.2f at its largest search setting",
                    kind, k, info["recall_at_k"], recall_target)
    if report is not None:
        report.update(info)
    return index


# --------------------------------------------------------------------------------------------
# Saving and loading.


def _package_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for package in ("faiss-cpu", "numpy", "datasets", "torch", "transformers"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return versions


def index_fingerprint(manifest: dict) -> str:
    """Content hash of an index: corpus fingerprint, embedder id, count and index type (16 hex chars)."""
    keys = ("corpus_fingerprint", "embedder_id", "count", "dim", "index_type")
    body = json.dumps({k: manifest.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def save_index(out_dir: str | Path, index: faiss.Index, sequences: datasets.Dataset, embeddings: np.ndarray,
               manifest: dict, *, force: bool = False, protect: Iterable[str | Path] = ()) -> None:
    """Write an index folder atomically (temp sibling folder + rename).

    ``manifest`` must name ``embedder_id``; this adds ``kind`` (``"sift-index"``),
    ``corpus_fingerprint`` (unless given: the sequences' own content hash, or ``sequences_fingerprint``
    when given), ``count``, ``dim``, ``index_type`` (unless given), ``search_params``, ``fingerprint``
    (unless given), ``files`` (byte sizes, to detect truncation), ``package_versions`` and ``created``.
    An existing ``out_dir`` is replaced only when it is empty or an index of the same corpus
    fingerprint and embedder, or with ``force`` (``check_index_out``; ``protect``: the corpus paths);
    otherwise ``ValueError`` and nothing is written.
    """
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}: the index must record what it was built from")
    vectors = np.asarray(embeddings)
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"embeddings must be float32 (n, d), got {vectors.dtype} {vectors.shape}")
    if not (index.ntotal == len(sequences) == vectors.shape[0]):
        raise ValueError(
            f"index ({index.ntotal}), sequences ({len(sequences)}) and embeddings ({vectors.shape[0]}) "
            "must have the same number of rows"
        )
    if index.d != vectors.shape[1]:
        raise ValueError(f"index dimension {index.d} != embeddings dimension {vectors.shape[1]}")
    out_dir = Path(out_dir).expanduser().resolve()
    full = dict(manifest)
    full["kind"] = INDEX_KIND.name
    if "corpus_fingerprint" not in full:
        full["corpus_fingerprint"] = full.get("sequences_fingerprint") or fingerprint_dataset(sequences)
    with atomic_dir(out_dir, INDEX_KIND, INDEX_KIND.identity(full), force=force, protect=protect) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "embeddings.npy", vectors)
        sequences.to_parquet(str(tmp / "sequences.parquet"))
        full.setdefault("count", int(index.ntotal))
        full.setdefault("dim", int(index.d))
        full.setdefault("index_type", type(faiss.downcast_index(index)).__name__)
        full["faiss_class"] = type(faiss.downcast_index(index)).__name__
        full["search_params"] = search_parameters(index)
        full.setdefault("fingerprint", index_fingerprint(full))
        full["files"] = {name: (tmp / name).stat().st_size for name in INDEX_FILES}
        full["package_versions"] = _package_versions()
        full["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2, default=str))


def read_index_manifest(index_dir: str | Path) -> dict:
    """The manifest of an index folder; ``ValueError`` saying what to do when it is missing or broken."""
    folder = Path(index_dir).expanduser()
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise ValueError(f"index folder {folder} does not exist: build it with `sift-ttft index`")
    if not path.is_file():
        raise ValueError(f"{folder} is not an index folder (no manifest.json): build it with `sift-ttft index`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): rebuild the index with `sift-ttft index`") from err


def check_index_files(folder: Path, manifest: dict) -> None:
    """Every file an index needs is in ``folder`` with the byte size ``manifest`` recorded (a truncated
    copy is caught without reading it); ``ValueError`` saying which file and what to do otherwise."""
    for name in INDEX_FILES:
        path = folder / name
        expected = (manifest.get("files") or {}).get(name)
        if not path.is_file():
            raise ValueError(f"index {folder} lacks {name}: rebuild it with `sift-ttft index`")
        if expected is not None and path.stat().st_size != expected:
            raise ValueError(
                f"index file {path} is truncated or altered ({path.stat().st_size} bytes, manifest says {expected}): "
                "rebuild the index with `sift-ttft index`"
            )


def load_index(index_dir: str | Path, embedder=None) -> "CorpusIndex":
    """Load an index folder; with ``embedder``, refuse one built by another embedder or dimension.

    Checks, each failing with a ``ValueError`` that says what to do: folder and manifest present;
    every file present with the byte size the manifest recorded (a truncated copy is caught before
    faiss reads it); faiss can read the index; the counts of index, embeddings and sequences agree;
    ``embedder.id`` and ``embedder.dim`` equal the manifest's.
    """
    folder = Path(index_dir).expanduser()
    manifest = read_index_manifest(folder)
    if embedder is not None:
        if manifest.get("dim") is not None and int(manifest["dim"]) != int(embedder.dim):
            raise ValueError(
                f"index {folder} holds {manifest['dim']}-dimensional embeddings but the embedder gives "
                f"{embedder.dim}: use the index's embedder ({manifest.get('embedder_id')}) or rebuild the index"
            )
        if manifest.get("embedder_id") != embedder.id:
            raise ValueError(
                f"index {folder} was built with embedder {manifest.get('embedder_id')!r}, not {embedder.id!r}: "
                "use that embedder (same model and max_length) or rebuild the index with `sift-ttft index --embedder ...`"
            )
    check_index_files(folder, manifest)
    try:
        index = faiss.read_index(str(folder / "index.faiss"))
    except RuntimeError as err:
        raise ValueError(f"faiss cannot read {folder / 'index.faiss'} ({str(err).splitlines()[0]}): rebuild the index") from err
    for param, value in (manifest.get("search_params") or {}).items():
        faiss.ParameterSpace().set_index_parameter(index, param, int(value))
    embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
    import pyarrow.parquet as pq

    sequences = datasets.Dataset(datasets.table.InMemoryTable(pq.read_table(folder / "sequences.parquet")))
    if not (index.ntotal == embeddings.shape[0] == len(sequences)):
        raise ValueError(
            f"index {folder} is inconsistent: {index.ntotal} vectors, {embeddings.shape[0]} embeddings, "
            f"{len(sequences)} sequences; rebuild it with `sift-ttft index`"
        )
    return CorpusIndex(folder, index, embeddings, sequences, manifest)


# --------------------------------------------------------------------------------------------
# Everything at once, for plain-Python users (the Prefect flow composes the same steps with caching).


def build_index_from_corpus(
    corpus: Iterable[str | Path] | datasets.Dataset,
    out_dir: str | Path,
    tokenizer,
    embedder=None,
    *,
    max_tokens: int = 256,
    index_type: str = "auto",
    shard_size: int = 1024,
    shard_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> CorpusIndex:
    """Corpus paths (or a document Dataset) → sequences → embeddings → saved index → ``CorpusIndex``.

    ``tokenizer``: the base model's tokenizer (sequences are ≤ ``max_tokens`` of its tokens);
    ``embedder``: an ``Embedder`` (None: the bundled MiniLM). Embedding shards go to ``shard_dir``
    (default ``<state>/embeddings/<corpus fingerprint>``), so an interrupted build resumes.
    ``out_dir`` is checked before any work and again before writing (``save_index``: an existing
    folder is replaced only when empty or an index of the same sequences and embedder, or with
    ``force``; never the corpus paths or a folder holding them).
    """
    from sift.corpus import ChunkReport, LoadReport, chunk_documents, load_documents
    from sift.embed import Embedder, embed_texts_sharded
    from sift.env import state_dir

    paths = [] if isinstance(corpus, datasets.Dataset) else list(corpus)
    protect = [Path(p) for p in paths]
    check_index_out(out_dir, force=force, protect=protect)  # a refused out_dir fails before the embedding
    load_report = LoadReport()
    docs = corpus if isinstance(corpus, datasets.Dataset) else load_documents(paths, report=load_report)
    chunk_report = ChunkReport()
    sequences = chunk_documents(docs, tokenizer, max_tokens, report=chunk_report)
    if len(sequences) == 0:
        raise ValueError("the corpus gives no sequence (every document is empty)")
    embedder = embedder if embedder is not None else Embedder()
    corpus_fingerprint = fingerprint_dataset(sequences)
    # Now that the index's identity is known: refuse another corpus's or embedder's index before embedding.
    check_index_out(out_dir, {"corpus_fingerprint": corpus_fingerprint, "embedder_id": embedder.id}, force=force,
                    protect=protect)
    shard_dir = Path(shard_dir) if shard_dir else state_dir() / "embeddings" / corpus_fingerprint
    embeddings = embed_texts_sharded(embedder, sequences["text"], shard_dir, shard_size=shard_size, progress=progress)
    build_report: dict[str, Any] = {}
    index = build_index(embeddings, index_type, report=build_report)
    manifest = {
        "corpus_fingerprint": corpus_fingerprint,
        "embedder_id": embedder.id,
        "embedder": embedder.spec(),
        "max_tokens": max_tokens,
        "index_type": build_report["index_type"],
        "build": build_report,
        "build_seconds": build_report["seconds"],
        "load_report": load_report.to_json(),
        "chunk_report": chunk_report.to_json(),
        "domains": {d: c for d, c in sorted(_count(sequences["domain"]).items())},
    }
    save_index(out_dir, index, sequences, np.asarray(embeddings), manifest, force=force, protect=protect)
    return load_index(out_dir, embedder)


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
