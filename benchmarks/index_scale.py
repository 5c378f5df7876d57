"""The index build at the size of the large data space (issue 13, item 2), in three resumable stages.

1. ``subset``: a seeded sample of the large corpus's documents (``sift-ttft corpus --sequences 131072
   --max-tokens 128``) cut to ``--subset`` sequences of ≤ 128 tokens, written as a corpus file. Embedding
   all 131,072 sequences takes over an hour on 2 shared cores, so the rates are measured on this subset.
2. ``embed``: the product's own build, ``sift-ttft index --corpus SUBSET --max-tokens 128 --index-type flat``,
   once per task runner (``thread``; ``dask``: a LocalCluster of 2 one-thread worker processes), each in a
   fresh state folder (no cached shard). Measured: wall time of the whole command; the embedding rate
   (sequences per second between the first and the last shard file written: model loading and the first
   shard excluded); the peak resident memory of the command's process tree (sum over the flow, its
   Prefect server and the Dask workers, sampled every 0.2 s with psutil) and of the flow process alone.
3. ``search``: flat vs ``--index-type auto``'s IVF (``sift.index.build_index``, IVF tuned as ``auto`` does it)
   at n = the real embeddings of the subset, and at n = 131,072 and 262,144: the real embeddings plus
   **synthetic** vectors ``normalise(u·e_i + (1−u)·e_j + 0.25·g/√d)`` (``e_i, e_j`` real rows of one domain,
   ``u ~ U(0, 1)``, ``g ~ N(0, I_d)``), labelled as such in the JSON. Queries: the held-out prompts of the
   large corpus, embedded with the same MiniLM (real). Measured per n: build seconds, the index file's size
   on disk (``faiss.write_index``) and of ``embeddings.npy``, the median single-prompt search time at
   K = 200 and 1,000, recall@K of the IVF index against flat at K = 200 and 1,000.
4. ``search-real`` (``--index`` of the whole corpus): stage 3 at n = every sequence of the corpus, all
   real embeddings, no synthetic vectors.

The machine is shared (a fine-tuning run and other sessions): the load average is recorded beside every
figure; compare runners within one run only.

Commands used for ``benchmarks/results/index_scale.json`` (SIFT_HOME of the large corpus)::

    SIFT_HOME=/root/sift-home-13 .venv/bin/sift-ttft corpus --sequences 131072 --max-tokens 128
    SIFT_HOME=/root/sift-home-13 nice -n 10 .venv/bin/python benchmarks/index_scale.py \\
        --corpus /root/sift-home-13/corpus/all-n131072-t128-seed0 --work /root/sift-home-13/bench-index-scale \\
        --subset 4096 --stages embed
    SIFT_HOME=/root/sift-home-13 nice -n 10 .venv/bin/python benchmarks/index_scale.py \\
        --corpus /root/sift-home-13/corpus/all-n131072-t128-seed0 --work /root/sift-home-13/bench-index-scale \\
        --subset 4096 --stages search

A stage whose result is already in the JSON is skipped (``--redo STAGE`` runs it again).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The script's own folder must not be on sys.path: benchmarks/select.py would shadow the stdlib `select`
# (which subprocess imports): drop it before any other import.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from sift.atomic import write_json  # noqa: E402
from sift.env import set_default_env  # noqa: E402

set_default_env()

RESULT = ROOT / "benchmarks" / "results" / "index_scale.json"
MAX_TOKENS = 128


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------- 1. subset
def make_subset(corpus_dir: Path, out: Path, sequences: int, seed: int = 0) -> dict:
    """Documents of the corpus in a seeded order, the last one cut, until they hold ``sequences`` sequences
    of ≤ MAX_TOKENS tokens (the corpus's own tokenizer and chunking, so the flow cuts the same ones)."""
    from sift.corpus import chunk_records, read_jsonl, write_jsonl
    from sift.default_corpus import default_tokenizer

    docs = read_jsonl(corpus_dir / "corpus.jsonl")
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    params = manifest["params"]
    tokenizer = default_tokenizer()
    order = np.random.default_rng(seed).permutation(len(docs))
    chosen, count = [], 0
    for start in range(0, len(order), 64):
        group = [docs[i] for i in order[start : start + 64]]
        pieces = chunk_records(group, tokenizer, MAX_TOKENS, min_tokens=params["min_tokens"],
                               max_chunks_per_doc=params["max_chunks_per_doc"])
        by_doc: dict[str, list[dict]] = {}
        for piece in pieces:
            by_doc.setdefault(piece["doc_id"], []).append(piece)
        for doc in group:
            seqs = by_doc.get(doc["id"], [])[: sequences - count]
            if seqs:
                chosen.append(dict(doc, text=doc["text"][: seqs[-1]["char_end"]]))
                count += len(seqs)
            if count >= sequences:
                break
        if count >= sequences:
            break
    write_jsonl(out, chosen)
    domains: dict[str, int] = {}
    for doc in chosen:
        domains[doc["domain"]] = domains.get(doc["domain"], 0) + 1
    return {"path": str(out), "documents": len(chosen), "sequences": count, "corpus_fingerprint": manifest["fingerprint"],
            "documents_per_domain": dict(sorted(domains.items()))}


# -------------------------------------------------------------------------------------------- 2. embed
class TreeMemory:
    """Peak resident memory of a process and of its whole tree, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.process, self.every = psutil.Process(pid), every
        self.peak_tree = self.peak_main = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                main = self.process.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in self.process.children(recursive=True))
            except psutil.Error:
                tree = main = 0
            self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_tree_mib": round(self.peak_tree / 2**20, 1), "peak_rss_flow_mib": round(self.peak_main / 2**20, 1)}


def embed_run(subset: Path, work: Path, runner: str, shard_size: int) -> dict:
    state, out = work / f"state-{runner}", work / f"index-{runner}"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    command = [str(ROOT / ".venv" / "bin" / "sift-ttft"), "index", "--corpus", str(subset), "--max-tokens", str(MAX_TOKENS),
               "--index-type", "flat", "--shard-size", str(shard_size), "--task-runner", runner, "--out", str(out)]
    if runner == "dask":
        command += ["--dask-workers", "2"]
    env = dict(os.environ, SIFT_HOME=str(state))
    env.pop("PREFECT_API_URL", None)
    load_before = load_average()
    t0 = time.time()
    with (work / f"index-{runner}.log").open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        rc = process.wait()
        peaks = memory.stop()
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(command)} failed ({rc}); see {work / f'index-{runner}.log'}")
    manifest = json.loads((out / "manifest.json").read_text())
    shards = sorted(state.glob("embeddings/*/shard-*.npy"), key=lambda p: p.stat().st_mtime)
    rows = [int(np.load(p, mmap_mode="r").shape[0]) for p in shards]
    first, last = shards[0].stat().st_mtime, shards[-1].stat().st_mtime
    steady = (sum(rows) - rows[0]) / (last - first) if len(shards) > 1 and last > first else None
    sizes = {name: (out / name).stat().st_size for name in ("index.faiss", "embeddings.npy", "sequences.parquet")}
    return {"runner": runner, "workers": 2 if runner == "dask" else 1, "sequences": int(manifest["count"]),
            "shards": len(shards), "shard_size": shard_size, "command": " ".join(command), "wall_seconds": round(wall, 1),
            "sequences_per_second_end_to_end": round(manifest["count"] / wall, 2),
            "sequences_per_second_embedding": round(steady, 2) if steady else None,
            "embedding_seconds_first_to_last_shard": round(last - first, 1), **peaks,
            "index_files_bytes": sizes, "load_average_before": load_before, "load_average_after": load_average()}


# ------------------------------------------------------------------------------------------- 3. search
def synthetic_extension(real: np.ndarray, domains: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """``total − len(real)`` synthetic unit vectors between pairs of real rows of one domain, plus noise
    (see the module docstring)."""
    rng = np.random.default_rng(seed)
    extra = total - len(real)
    by_domain = [np.flatnonzero(domains == d) for d in np.unique(domains)]
    pick = rng.integers(len(by_domain), size=extra)
    i = np.array([rng.choice(by_domain[p]) for p in pick])
    j = np.array([rng.choice(by_domain[p]) for p in pick])
    u = rng.random((extra, 1), dtype=np.float32)
    d = real.shape[1]
    x = u * real[i] + (1 - u) * real[j] + 0.25 * rng.standard_normal((extra, d), dtype=np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([real, x.astype(np.float32)])


def search_bench(index_dir: Path, prompts_path: Path, sizes: list[int]) -> dict:
    import datasets
    import faiss

    from sift.corpus import read_jsonl
    from sift.index import AUTO_FLAT_MAX, build_index, recall_at_k
    from flows.tasks import index_embedder

    real = np.load(index_dir / "embeddings.npy")
    domains = np.array(datasets.Dataset.from_parquet(str(index_dir / "sequences.parquet"))["domain"])
    prompts = read_jsonl(prompts_path)
    t0 = time.perf_counter()
    queries = index_embedder(index_dir).encode([p["text"] for p in prompts])
    embed_seconds = time.perf_counter() - t0
    results = []
    for n in sorted(set([len(real), *sizes])):
        x = real if n == len(real) else synthetic_extension(real, domains, n)
        row = {"n": n, "real_vectors": len(real), "synthetic_vectors": n - len(real), "dim": int(x.shape[1]),
               "embeddings_npy_bytes": int(x.nbytes + 128), "load_average": load_average()}
        built = {}
        for kind in ("flat", "ivf"):
            report: dict = {}
            t0 = time.perf_counter()
            index = build_index(x, kind, report=report)
            build_seconds = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:
                faiss.write_index(index, f"{tmp}/index.faiss")
                size = os.path.getsize(f"{tmp}/index.faiss")
            times = {}
            for k in (200, 1000):
                single = []
                for q in queries:
                    t1 = time.perf_counter()
                    index.search(q[None, :], k)
                    single.append(time.perf_counter() - t1)
                times[f"search_ms_median_k{k}"] = round(1000 * float(np.median(single)), 2)
            built[kind] = index
            row[kind] = {"build_seconds": round(build_seconds, 2), "index_faiss_bytes": size, **times,
                         **{key: (round(v, 4) if isinstance(v, float) else v) for key, v in report.items()
                            if key not in ("seconds", "count")}}
        for k in (200, 1000):
            row["ivf"][f"recall_vs_flat_prompts_k{k}"] = round(recall_at_k(built["ivf"], built["flat"], queries, k), 4)
        results.append(row)
        print(json.dumps(row), flush=True)
    return {"queries": f"{len(prompts)} held-out prompts of the large corpus (real MiniLM embeddings)",
            "prompt_embedding_seconds": round(embed_seconds, 1), "auto_flat_max": AUTO_FLAT_MAX,
            "faiss_threads": faiss.omp_get_max_threads(),
            "synthetic": "normalise(u*e_i + (1-u)*e_j + 0.25*g/sqrt(d)), e_i, e_j real rows of one domain, "
                         "u ~ U(0,1), g ~ N(0, I_d); rows past real_vectors are synthetic",
            "sizes": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="folder of `sift-ttft corpus --sequences ...`")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (state folders, indices, logs)")
    parser.add_argument("--subset", type=int, default=4096, help="sequences embedded for the rates")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="*", default=[131072, 262144])
    parser.add_argument("--runners", nargs="*", default=["thread", "dask"])
    parser.add_argument("--redo", nargs="*", default=[], choices=["subset", "embed", "search", "search-real"])
    parser.add_argument("--stages", nargs="*", default=["embed", "search"], choices=["embed", "search", "search-real"],
                        help="stages to run after the subset")
    parser.add_argument("--index", type=Path, help="search-real: an index of the whole large corpus built by "
                        "`sift-ttft index` (its embeddings.npy: every vector real)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    command = (f"SIFT_HOME={os.environ.get('SIFT_HOME', '')} nice -n 10 .venv/bin/python benchmarks/index_scale.py "
               + " ".join(sys.argv[1:]))
    result.pop("command", None)
    result["commands"] = [c for c in result.get("commands", []) if c != command] + [command]  # every run that wrote here
    result["corpus"] = str(args.corpus)
    subset_path = args.work / f"subset-{args.subset}.jsonl"
    if "subset" in args.redo or result.get("subset", {}).get("sequences") != args.subset or not subset_path.is_file():
        result["subset"] = make_subset(args.corpus, subset_path, args.subset)
        write_json(RESULT, result, indent=2)
    print("subset:", json.dumps(result["subset"]), flush=True)
    result.setdefault("embedding", {})
    for runner in args.runners if "embed" in args.stages else []:
        if "embed" in args.redo or runner not in result["embedding"]:
            result["embedding"][runner] = embed_run(subset_path, args.work, runner, args.shard_size)
            write_json(RESULT, result, indent=2)
        print(runner, json.dumps(result["embedding"][runner]), flush=True)
    if "search" in args.stages and ("search" in args.redo or "search" not in result):
        result["search"] = search_bench(args.work / "index-thread", args.corpus / "prompts.jsonl", args.sizes)
        write_json(RESULT, result, indent=2)
    if "search-real" in args.stages and ("search-real" in args.redo or "search_real" not in result):
        if args.index is None:
            parser.error("--stages search-real needs --index (the whole corpus's index)")
        result["search_real"] = search_bench(args.index, args.corpus / "prompts.jsonl", [])
        write_json(RESULT, result, indent=2)


if __name__ == "__main__":
    main()
