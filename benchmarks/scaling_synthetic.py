"""Index memory, build time, search time and recall past this machine's corpus size, on synthetic vectors
(issue 13, item 5; read by docs/scaling.md).

Vectors: d = 384 (MiniLM's width), a **Gaussian mixture** that looks like normalised sentence embeddings
rather than uniform noise: ``CLUSTERS`` = 4,096 unit-norm centres, cluster weights ∝ 1 / (rank + 10)
(a few large clusters, a long tail), x = normalise(c + σ_c · g / √d) with g ~ N(0, I_d) and a per-cluster
σ_c ~ U(0.8, 1.2) (cosine to its own centre ≈ 0.6–0.8). Vectors are made in batches of ``BATCH`` rows, each
batch from its own seed ``(seed, batch)``, so a pass over the data never holds more than one batch of
floats beside the index, and a second pass regenerates exactly the same rows. Queries: 20 further draws of
the same mixture (seed ``(seed, QUERY_STREAM)``).

Cells (each in its own child process, so its peak RSS is its own): for each size n and index type
- ``flat``: ``IndexFlatIP`` (exact; holds all n · d floats);
- ``ivfflat``: ``IndexIVFFlat``, nlist = ``NLIST`` (flat coarse quantizer, trained on the first
  40 · nlist rows);
- ``ivfpq``: ``IndexIVFPQ``, nlist = ``NLIST``, m = 48 sub-quantizers of 8 dims, 8 bits each (48 bytes a
  vector; ``ivfpqM``: M sub-quantizers), trained on the first 40 · nlist rows; recall both raw and **re-ranked**: the top R · K of the
  PQ search rescored with the exact vectors (R = ``RERANK``), which is what the project can do because it
  keeps the exact vectors (``embeddings.npy``) beside every index. The exact vectors of the candidates come
  from a second generation pass here (on a real index they are rows of a memory-mapped file).
Measured per cell: build seconds (train + add, generation excluded), the index's bytes on disk
(``faiss.write_index``), RSS after the build and the process's peak RSS (``resource.getrusage``), per-query
search time (each query searched alone, median of the 20) at K = 200 and 1,000 with 1 thread and with all
threads, and recall@K against exact search (brute force over the same generated batches, chunked, top
1,000 kept per query), for several nprobe. The machine's load average is recorded beside every cell.

Command used for ``benchmarks/results/scaling_synthetic.json`` (2 shared cores, ~8 GiB budget)::

    nice -n 10 .venv/bin/python benchmarks/scaling_synthetic.py

    nice -n 10 .venv/bin/python benchmarks/scaling_synthetic.py --cells 1000000:ivfpq96 --append

(defaults: ``--cells 1000000:flat,ivfflat,ivfpq 10000000:ivfpq``; ``ivfpq96``: 96 sub-quantizers of 4 dims,
96 bytes a vector). A smaller try: ``--cells 100000:flat,ivfpq --out /tmp/s.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The script's own folder must not be on sys.path: benchmarks/select.py would shadow the stdlib `select`
# (which subprocess imports): drop it before any other import (as benchmarks/index_scale.py does).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from sift.atomic import write_json  # noqa: E402

D = 384
CLUSTERS = 4096
BATCH = 131_072
NLIST = 1024  # √10⁶ ≈ 1,000; kept at 10⁷ too: 4,096 lists would quadruple the coarse assignment (~10 min here)
PQ_M, PQ_NBITS = 48, 8
RERANK = 4
QUERIES = 20
QUERY_STREAM = 1_000_000_000  # a batch number no data batch reaches: the queries' own seed
KS = (200, 1000)
NPROBES = (16, 64, 256)
GT_K = max(KS)
OUT = Path(__file__).resolve().parent / "results" / "scaling_synthetic.json"
DEFAULT_CELLS = ["1000000:flat,ivfflat,ivfpq", "10000000:ivfpq"]


class Mixture:
    """The synthetic distribution: centres, weights and spreads fixed by ``seed``; ``batch(b, m)`` is
    deterministic in (seed, b), float32, rows of unit norm."""

    def __init__(self, seed: int = 0, d: int = D, clusters: int = CLUSTERS):
        rng = np.random.default_rng([seed, 2**31])
        self.seed, self.d = seed, d
        centres = rng.standard_normal((clusters, d), dtype=np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        w = 1.0 / (np.arange(clusters) + 10.0)
        self.weights = rng.permutation(w / w.sum())
        self.sigma = rng.uniform(0.8, 1.2, clusters).astype(np.float32)

    def batch(self, b: int, m: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, b])
        labels = rng.choice(len(self.weights), size=m, p=self.weights)
        x = rng.standard_normal((m, self.d), dtype=np.float32)
        x *= (self.sigma[labels] / math.sqrt(self.d))[:, None]
        x += self.centres[labels]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def batches(self, n: int, batch: int = BATCH):
        """(start row, rows) for rows 0..n-1, batch by batch."""
        for b, start in enumerate(range(0, n, batch)):
            yield start, self.batch(b, min(batch, n - start))


def merge_topk(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, start: int, k: int):
    """Top-k (scores, ids) per row of the union of the running best and a new block of scores whose
    column j is row ``start + j``; ties broken by the smaller id (a stable order, as in exact search)."""
    ids = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, ids], axis=1)
    kk = min(k, all_s.shape[1])
    part = np.argpartition(-all_s, kk - 1, axis=1)[:, :kk]
    ps, pi = np.take_along_axis(all_s, part, 1), np.take_along_axis(all_i, part, 1)
    order = np.lexsort((pi, -ps), axis=1)
    return np.take_along_axis(ps, order, 1), np.take_along_axis(pi, order, 1)


def make_index(kind: str, n: int, d: int = D, nlist: int = NLIST):
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    nlist = min(nlist, max(1, n // 40))
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivfflat":
        return faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind.startswith("ivfpq"):
        return faiss.IndexIVFPQ(quantizer, d, nlist, pq_m(kind), PQ_NBITS, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index kind {kind!r}")


def pq_m(kind: str) -> int:
    """Sub-quantizers of an ``ivfpq`` kind: ``ivfpq`` → ``PQ_M``, ``ivfpq96`` → 96 (d must divide by it)."""
    return int(kind[len("ivfpq"):] or PQ_M)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed_search(index, q: np.ndarray, k: int, threads: int) -> tuple[float, np.ndarray]:
    """Median milliseconds of one query searched alone (over the rows of q), and the ids found."""
    faiss.omp_set_num_threads(threads)
    times, ids = [], []
    for row in q:
        t = time.perf_counter()
        _, i = index.search(row[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
        ids.append(i[0])
    return float(np.median(times)), np.stack(ids)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k."""
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def run_cell(n: int, kind: str, seed: int = 0, queries: int = QUERIES, nlist: int = NLIST,
             nprobes=NPROBES, ks=KS) -> dict:
    """Build one index over n mixture rows (batch by batch), measure it, return its JSON row."""
    mix = Mixture(seed)
    q = mix.batch(QUERY_STREAM, queries)
    threads_all = faiss.omp_get_max_threads()
    gt_k = min(max(ks), n)
    best_s = np.full((queries, 0), -np.inf, np.float32)
    best_i = np.zeros((queries, 0), np.int64)
    index = make_index(kind, n, nlist=nlist)
    rss_before = rss_mib()
    build_s = 0.0
    row: dict = {"n": n, "index": kind, "dim": D, "load_average_before": list(os.getloadavg())}
    for start, x in mix.batches(n):
        if not index.is_trained:
            train = x[: 40 * index.nlist]
            t = time.perf_counter()
            index.train(train)
            build_s += time.perf_counter() - t
            row["train_rows"] = len(train)
        t = time.perf_counter()
        index.add(x)
        build_s += time.perf_counter() - t
        best_s, best_i = merge_topk(best_s, best_i, q @ x.T, start, gt_k)
        del x
        print(f"  {kind} n={n:,}: {min(start + BATCH, n):,} rows added, {build_s:.0f} s", file=sys.stderr, flush=True)
    row["build_seconds"] = round(build_s, 2)
    row["rss_after_build_mib"] = round(rss_mib(), 1)
    row["rss_before_build_mib"] = round(rss_before, 1)
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, str(Path(tmp) / "index.faiss"))
        row["index_file_bytes"] = (Path(tmp) / "index.faiss").stat().st_size
    row["index_bytes_per_vector"] = round(row["index_file_bytes"] / n, 2)
    if kind != "flat":
        row["nlist"] = index.nlist
    if kind.startswith("ivfpq"):
        row.update(pq_m=pq_m(kind), pq_nbits=PQ_NBITS, rerank_factor=RERANK)
    settings = [None] if kind == "flat" else [p for p in nprobes if p <= index.nlist]
    searches, rerank_need = [], {}
    for nprobe in settings:
        if nprobe is not None:
            faiss.extract_index_ivf(index).nprobe = nprobe
        for k in ks:
            k = min(k, n)
            s: dict = {"nprobe": nprobe, "k": k}
            for threads in sorted({1, threads_all}):
                ms, found = timed_search(index, q, k, threads)
                s[f"ms_per_query_{threads}_thread{'s' if threads > 1 else ''}"] = round(ms, 3)
            s["recall_at_k"] = round(recall(found, best_i, k), 4)
            if kind.startswith("ivfpq"):
                kk = min(RERANK * k, n)
                ms, cand = timed_search(index, q, kk, threads_all)
                s[f"ms_per_query_candidates_{RERANK}k_{threads_all}_threads"] = round(ms, 3)
                rerank_need[(nprobe, k)] = cand
            searches.append(s)
    if rerank_need:
        # Exact scores of the candidates: a second pass regenerates the same rows (a real index reads
        # them from embeddings.npy), keeping only the rows some query needs.
        per_query_ids = [np.unique(np.concatenate([c[j] for c in rerank_need.values()])) for j in range(queries)]
        per_query_ids = [ids[ids >= 0] for ids in per_query_ids]
        per_query_scores = [np.full(len(ids), -np.inf, np.float32) for ids in per_query_ids]
        t = time.perf_counter()
        for start, x in mix.batches(n):
            end = start + len(x)
            for j, ids in enumerate(per_query_ids):
                lo, hi = np.searchsorted(ids, [start, end])
                if hi > lo:
                    per_query_scores[j][lo:hi] = x[ids[lo:hi] - start] @ q[j]
        row["rerank_regeneration_seconds"] = round(time.perf_counter() - t, 1)
        for s in searches:
            cand = rerank_need[(s["nprobe"], s["k"])]
            reranked = []
            for j in range(queries):
                c = cand[j][cand[j] >= 0]
                pos = np.searchsorted(per_query_ids[j], c)
                sc = per_query_scores[j][pos]
                reranked.append(c[np.lexsort((c, -sc))][: s["k"]])
            s[f"recall_at_k_reranked_{RERANK}k"] = round(recall(reranked, best_i, s["k"]), 4)
    row["searches"] = searches
    row["threads_all"] = threads_all
    row["peak_rss_mib"] = round(peak_rss_mib(), 1)
    row["load_average_after"] = list(os.getloadavg())
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=DEFAULT_CELLS, help="N:kind,kind ... (kinds: flat, ivfflat, ivfpq)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="add the cells to those already in --out")
    ap.add_argument("--one", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_cell(int(args.one[0]), args.one[1], seed=args.seed)))
        return 0
    try:
        cells = [(int(c.split(":")[0]), kind) for c in args.cells for kind in c.split(":")[1].split(",")]
    except (IndexError, ValueError):
        print(f"error: --cells wants N:kind[,kind] items, got {args.cells}", file=sys.stderr)
        return 2
    command = "nice -n 10 .venv/bin/python benchmarks/scaling_synthetic.py" + (
        "" if args.cells == DEFAULT_CELLS else " --cells " + " ".join(args.cells)) + (" --append" if args.append else "")
    earlier = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
    result = {
        "commands": earlier.get("commands", [earlier["command"]] if "command" in earlier else []) + [command],
        "machine": f"{os.cpu_count()} CPU cores shared with other work (see load averages), "
                   f"{psutil.virtual_memory().total / 2**30:.1f} GiB, {platform.machine()}",
        "faiss": faiss.__version__, "numpy": np.__version__,
        "data": f"Gaussian mixture, d={D}, {CLUSTERS} clusters, weights ∝ 1/(rank+10), x = normalise(c + σ_c g/√d), "
                f"σ_c ~ U(0.8, 1.2); {QUERIES} queries from the same mixture; seed {args.seed}",
        "timing": "each query searched alone, median ms over the queries; build = train + add (generation excluded)",
        "recall": f"recall@K against exact inner-product search over the same rows (brute force, chunked); ivfpq "
                  f"also re-ranked: top {RERANK}·K of the PQ search rescored with the exact vectors",
        "cells": earlier.get("cells", []),
    }
    t0 = time.time()
    for n, kind in cells:
        print(f"cell n={n:,} {kind} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        t_cell = time.time()
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), kind, "--seed", str(args.seed)],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"error: cell n={n} {kind} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        cell = json.loads(proc.stdout.strip().splitlines()[-1])
        cell["wall_seconds"] = round(time.time() - t_cell, 1)
        result["cells"].append(cell)
        write_json(args.out, result, indent=2)  # after every cell: a crash keeps what finished
    print(f"wrote {args.out} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
