"""Benchmark: sift.select (exact SIFT) against the exact float64 floor and activeft, one CPU thread.

Reference: activeft 0.1.1 (the SIFT authors' library), ``activeft.sift.Retriever`` in its exact VTL
mode (``fast=False``), the same λ′ (``llambda``), ``also_query_opposite=False``, over a Faiss
``IndexFlatIP`` holding exactly the K candidates, so both select N of the same K vectors.

Data: an embedding-like synthetic corpus (anisotropic power-law spectrum around a shared mean
direction, rows L2-normalised, like sentence embeddings), max(20,000, 2·K) rows per d; each prompt is
a perturbed corpus row and its K candidates are its Faiss top-K, as in the pipeline.

The exact float64 floor (``exact_floor``): what any exact greedy must compute even if it knew its
picks in advance, done as fast as we know how: the kernel's k(x, x) and k(x, x*) (``Kernel``, the
same code sift.select runs) and one product X @ X[distinct picks]ᵀ. ours/floor is what the greedy
costs beyond that.

For K ∈ {200, 1,000, 5,000, 20,000} (``--ks``), d ∈ {384, 1,024}, N = 50, per prompt and repeat, in
one process: ours, the floor, and activeft (where it runs), in an order rotated each repeat (so none
always runs in the caches another has just cooled), so that a busy machine slows all three alike;
medians of CPU time per prompt; ratios are of the medians. activeft runs
only where its estimated time per call (its measured time at the previous K, scaled by (K'/K)²: its
cost per step grows like (K + m)²) is under ``--activeft-limit`` seconds; otherwise the row records
why it was skipped. Picks: identical to activeft (same index at the same position) where it ran,
and to the batched greedy loop (``condition_greedy``, which still computes its columns in the
speculative blocks that preceded the lookahead) everywhere. Also the kernel columns computed and
their products (blocks) per prompt, batched throughput, and the load average before and after each
configuration. Writes benchmarks/results/select.json.

    nice -n 5 .venv/bin/python benchmarks/select.py [--prompts 3] [--repeats 5] [--batch 64]
"""

from __future__ import annotations

import os
import sys

# This file is named select.py: drop its folder from the import path, or it would shadow the
# standard library's `select` module (imported by socket, subprocess, ...).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))  # the repository root, for `import sift`

# One thread everywhere, set before numpy/torch/faiss load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import sift  # noqa: E402
from sift.methods.greedy import condition_greedy  # noqa: E402
from sift.methods.kernel import Kernel  # noqa: E402
from sift.atomic import write_json  # noqa: E402

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def embedding_corpus(d: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows with a power-law spectrum around a shared mean direction, L2-normalised (float32)."""
    scales = (1.0 + np.arange(d)) ** -0.5
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    mean = rng.standard_normal(d)
    mean *= 0.5 * np.linalg.norm(scales) / np.linalg.norm(mean)
    rows = (rng.standard_normal((size, d)) * scales) @ basis.T + mean
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32)


def prompts_with_candidates(corpus: np.ndarray, count: int, k: int, rng: np.random.Generator):
    """(queries (count, d), candidates (count, K, d)): perturbed corpus rows and their Faiss top-K."""
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    anchors = rng.choice(len(corpus), size=count, replace=False)
    others = rng.choice(len(corpus), size=count)
    queries = corpus[anchors] + 0.3 * (corpus[others] - corpus[anchors])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, ids = index.search(queries.astype(np.float32), k + 1)
    cands = np.stack([corpus[row[row != a][:k]] for row, a in zip(ids, anchors)])
    return queries.astype(np.float32), cands


def activeft_select(query: np.ndarray, candidates: np.ndarray, n: int, lam: float) -> np.ndarray:
    from activeft.sift import Retriever

    index = faiss.IndexFlatIP(candidates.shape[1])
    index.add(candidates)
    retriever = Retriever(index, llambda=lam, fast=False, also_query_opposite=False,
                          device=torch.device("cpu"))
    # By default activeft selects from shuffled mini-batches of 1,000 candidates and then from their
    # picks (a hierarchical approximation once K > 1,000); one mini-batch of all K is its exact greedy.
    retriever.acquisition_function.mini_batch_size = max(retriever.acquisition_function.mini_batch_size, len(candidates) + 1)
    _, picked, _, _ = retriever.search(query[None, :], N=n, K=len(candidates), threads=1)
    return np.asarray(picked, dtype=np.int64)


def cpu_time(fn) -> tuple[float, object]:
    """(CPU seconds of one call, its result).

    CPU time (this process, all threads; there is one) is what the ratios use: on a shared machine
    with more runnable processes than cores, wall time mostly measures the wait for a core.
    """
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def exact_floor(q: np.ndarray, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """The float64 work any exact greedy must do even if it knew its picks in advance.

    The scores after each pick depend on k(x_j, s) for every candidate j and every distinct pick s
    (and on k(x_j, x_j), k(x_j, x*)), so at least K·(d + m) + K·d·(distinct picks) multiply-adds:
    the kernel's own k(x, x) and k(x, x*) (``Kernel``, as sift.select builds it), then one product
    X @ X[distinct picks]ᵀ in the layout the kernel uses (the fastest measured).
    """
    kernel = Kernel([torch.from_numpy(np.atleast_2d(q))], [torch.from_numpy(x)])
    xp = kernel.x[0]
    return (xp @ xp[torch.from_numpy(np.unique(picks))].T.contiguous()).numpy()


class ColumnCounter:
    """Counts the kernel columns sift.select computes and the products (blocks) they come in."""

    def __init__(self):
        self.original = Kernel.columns
        self.columns = self.blocks = 0
        counter = self

        def counting(kernel, prompts, rows):
            counter.columns += int(np.asarray(rows).size)
            counter.blocks += 1
            return counter.original(kernel, prompts, rows)

        Kernel.columns = counting

    def close(self) -> None:
        Kernel.columns = self.original


def activeft_estimate(measured: dict[int, float], k: int) -> float | None:
    """activeft's seconds per call at ``k`` from its largest measured K below (cost ∝ K² per step)."""
    below = [kk for kk in measured if kk < k]
    if not below:
        return None
    kk = max(below)
    return measured[kk] * (k / kk) ** 2


def run_config(k: int, d: int, n: int, lam: float, prompts: int, repeats: int, batch: int, corpus, rng,
               activeft_s: dict[int, float], activeft_limit: float, activeft_total: float) -> dict:
    load_before = os.getloadavg()
    queries, cands = prompts_with_candidates(corpus, max(prompts, batch), k, rng)
    estimate = activeft_estimate(activeft_s, k)
    run_af = estimate is None or estimate <= activeft_limit
    # every repeat where all of a configuration's activeft calls fit --activeft-total, else one per prompt
    af_repeats = repeats if estimate is None or estimate * repeats * prompts <= activeft_total else 1
    ours_cpu, floor_cpu, af_cpu = [], [], []
    same_af = same_loop = total = 0
    distinct, columns, blocks = [], [], []
    for p in range(prompts):
        q, x = queries[p], cands[p]
        sel = sift.select(q, x, n, lam=lam)  # warm-up (and the picks)
        kernel = Kernel([torch.from_numpy(q[None])], [torch.from_numpy(x)])
        batched_loop = condition_greedy(kernel, n, lam, True)[0][0]
        del kernel
        same_loop += int(np.sum(sel.indices == batched_loop))
        counter = ColumnCounter()
        sift.select(q, x, n, lam=lam)
        counter.close()
        columns.append(counter.columns)
        blocks.append(counter.blocks)
        distinct.append(len(np.unique(sel.indices)))
        exact_floor(q, x, sel.indices)  # warm-up
        theirs = None

        def time_ours():
            c, ours = cpu_time(lambda: sift.select(q, x, n, lam=lam))
            ours_cpu.append(c)
            assert np.array_equal(ours.indices, sel.indices), "picks changed between calls"

        def time_floor():
            floor_cpu.append(cpu_time(lambda: exact_floor(q, x, sel.indices))[0])

        def time_activeft():
            nonlocal theirs
            torch.manual_seed(0)  # activeft's DataLoader shuffles; its picks do not depend on the order
            c, theirs = cpu_time(lambda: activeft_select(q, x, n, lam))
            af_cpu.append(c)

        for r in range(repeats):  # interleaved: a busy spell slows all of them alike
            runs = [time_ours, time_floor] + ([time_activeft] if run_af and r < af_repeats else [])
            for run in runs[r % len(runs):] + runs[: r % len(runs)]:  # rotated: none always follows another
                run()
        if theirs is not None:
            same_af += int(np.sum(sel.indices == theirs))
        total += n
    med = statistics.median
    row = {
        "K": k, "d": d, "N": n, "lam": lam, "prompts": prompts, "repeats": repeats,
        "ours_ms_per_prompt": 1e3 * med(ours_cpu),
        "exact_floor_ms_per_prompt": 1e3 * med(floor_cpu),
        "ours_over_floor": med(ours_cpu) / med(floor_cpu),
        "identical_picks_batched_loop": same_loop / total,
        "distinct_picks": float(np.mean(distinct)),
        "kernel_columns_computed": float(np.mean(columns)),
        "column_blocks": float(np.mean(blocks)),
    }
    if af_cpu:
        row.update({
            "activeft_ms_per_prompt": 1e3 * med(af_cpu),
            "activeft_repeats": af_repeats,
            "activeft_over_ours": med(af_cpu) / med(ours_cpu),
            "activeft_over_floor": med(af_cpu) / med(floor_cpu),
            "identical_picks_activeft": same_af / total,
        })
        activeft_s[k] = med(af_cpu)
    else:
        row["activeft_skipped"] = (f"estimated {estimate:.0f} s per call (its time at K={max(kk for kk in activeft_s if kk < k)}"
                                   f" x (K ratio)^2, cost per step ~ (K + m)^2) > --activeft-limit {activeft_limit:.0f} s")
    if batch:  # `batch` prompts in one select_batch call vs the same prompts one by one
        qb, xb = queries[:batch], cands[:batch]
        c_batch, batched = cpu_time(lambda: sift.select_batch(qb, xb, n, lam=lam))
        c_one, singles = cpu_time(lambda: [sift.select(qb[p], xb[p], n, lam=lam) for p in range(batch)])
        row.update({"batch_prompts": batch, "batch_prompts_per_s": batch / c_batch,
                    "one_by_one_prompts_per_s": batch / c_one,
                    "batch_equals_one_by_one": all(np.array_equal(a.indices, b.indices)
                                                   for a, b in zip(batched, singles))})
    row["load_average_before_after"] = [load_before, os.getloadavg()]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=3, help="prompts per configuration")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per prompt (medians over all)")
    parser.add_argument("--batch", type=int, default=64,
                        help="prompts in the batched run, for K <= 1000 (0: none)")
    parser.add_argument("--ks", type=lambda v: [int(k) for k in v.split(",")], default=[200, 1000, 5000, 20000],
                        help="candidate-set sizes K, comma-separated")
    parser.add_argument("--ds", type=lambda v: [int(k) for k in v.split(",")], default=[384, 1024],
                        help="embedding dimensions d, comma-separated")
    parser.add_argument("--activeft-limit", type=float, default=180.0,
                        help="skip activeft where its estimated CPU seconds per call exceed this")
    parser.add_argument("--activeft-total", type=float, default=60.0,
                        help="time activeft once per prompt (not every repeat) where its estimated CPU "
                             "seconds for all repeats of a configuration exceed this")
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "select.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="activeft")

    rng = np.random.default_rng(0)
    rows = []
    print("CPU-time medians per prompt, one thread")
    print(f"{'K':>6} {'d':>5} {'ours ms':>9} {'floor ms':>9} {'ours/floor':>10} {'activeft ms':>12} "
          f"{'activeft/ours':>13} {'same picks':>10} {'columns/distinct':>16} {'blocks':>6} {'load':>5}")
    for d in args.ds:
        corpus = embedding_corpus(d, max(20_000, 2 * max(args.ks)), rng)
        activeft_s: dict[int, float] = {}
        for k in args.ks:
            batch = args.batch if k <= 1000 else 0
            row = run_config(k, d, args.n, args.lam, args.prompts, args.repeats, batch, corpus, rng,
                             activeft_s, args.activeft_limit, args.activeft_total)
            rows.append(row)
            af = row.get("activeft_ms_per_prompt")
            print(f"{k:>6} {d:>5} {row['ours_ms_per_prompt']:>9.2f} {row['exact_floor_ms_per_prompt']:>9.2f} "
                  f"{row['ours_over_floor']:>9.2f}x "
                  + (f"{af:>12.0f} {row['activeft_over_ours']:>12.0f}x {row['identical_picks_activeft']:>10.3f} "
                     if af is not None else f"{'skipped':>12} {'':>13} {'':>10} ")
                  + f"{row['kernel_columns_computed']:>7.0f}/{row['distinct_picks']:<8.1f} {row['column_blocks']:>6.1f} "
                  f"{row['load_average_before_after'][1][0]:>5.1f}"
                  + ("" if row["identical_picks_batched_loop"] == 1.0 else "  PICKS DIFFER FROM THE BATCHED LOOP")
                  + ("" if row.get("batch_equals_one_by_one", True) else "  BATCH PICKS DIFFER"), flush=True)
    within = all(r["ours_over_floor"] <= 1.5 for r in rows)
    at5000 = [r for r in rows if r["K"] == 5000 and "activeft_over_ours" in r]
    fast = bool(at5000) and all(r["activeft_over_ours"] >= 100 for r in at5000)
    identical = all(r.get("identical_picks_activeft", 1.0) == 1.0 and r["identical_picks_batched_loop"] == 1.0
                    for r in rows)
    print(f"goal: ours <= 1.5x the exact floor at every K: {'met' if within else 'NOT met'}; "
          f">= 100x faster than activeft at K=5000: {'met' if fast else 'NOT met'}; "
          f"identical picks: {'yes' if identical else 'NO'}")
    result = {
        "goal": "identical picks; ours <= 1.5x the exact float64 floor at every K; >= 100x faster than activeft at K=5000",
        "within_1_5x_floor": within,
        "at_least_100x_activeft_at_5000": fast,
        "identical_picks": identical,
        "benchmark": "sift.select vs the exact float64 floor and activeft 0.1.1 Retriever (exact VTL, "
                     "also_query_opposite=False)",
        "command": " ".join([sys.executable, *sys.argv]),
        "threads": 1,
        "timing": "CPU time per prompt (process_time), medians over prompts x repeats, ours, floor and "
                  "activeft interleaved per repeat (order rotated each repeat) in one process; ratios are of "
                  "the medians",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "faiss": faiss.__version__},
        "exact_floor": "CPU time of what any exact greedy must compute even with its picks known in advance: "
                       "the kernel's k(x,x) and k(x,x*) (sift.methods.kernel.Kernel, as sift.select builds it) "
                       "and one product X @ X[distinct picks]^T (exact_floor in this file)",
        "rows": rows,
    }
    write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
