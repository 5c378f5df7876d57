"""Compare methods across runs of benchmarks/ttft.py on the prompts they share (paired bootstrap).

Each argument names one run's JSON and a method in it, ``FILE:METHOD``; a method of the duplicated
run is written with its ``-dup`` suffix (``sift-dup``). The first is compared with each of the others:
mean bits per byte after fine-tuning on the shared prompts and the paired bootstrap 95 % interval of
the difference (negative: the first is better). Use it to put a run at another λ′, N or corpus beside
the full benchmark without rerunning its baselines, e.g.

    .venv/bin/python benchmarks/compare.py benchmarks/results/ttft_lam1.json:sift \\
        benchmarks/results/ttft_full.json:nn benchmarks/results/ttft_full.json:sift

Runs are only comparable when they share the prompts, N, K, tokens and model; the script prints each
run's settings and refuses runs whose per-prompt bpb before fine-tuning disagree (beyond 1e-4 relative:
another torch thread count changes the last bits).
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from sift.report import paired_bootstrap  # noqa: E402


def load(spec: str) -> tuple[str, dict, list[dict]]:
    """``FILE:METHOD`` → (label, the run's config, that method's records)."""
    path, _, method = spec.rpartition(":")
    if not path or not method:
        raise SystemExit(f"{spec!r}: expected FILE:METHOD")
    run = json.loads(Path(path).read_text())
    pool = run.get("results_duplicated", []) if method.endswith("-dup") else run["results"]
    records = [r for r in pool if r["method"] == method]
    if not records:
        methods = sorted({r["method"] for r in run["results"] + run.get("results_duplicated", [])})
        raise SystemExit(f"{spec!r}: no results for method {method!r}; the run has {methods}")
    return f"{Path(path).stem}:{method}", run["config"], records


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="FILE:METHOD", help="the first is compared with each other one")
    p.add_argument("--bootstrap", type=int, default=10_000)
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give at least two FILE:METHOD")
    loaded = [load(spec) for spec in args.runs]
    for label, config, records in loaded:
        keys = ("n", "k", "max_tokens", "lam", "duplicate", "lr", "seed")
        print(f"{label}: {len(records)} prompts; " + ", ".join(f"{k}={config.get(k)}" for k in keys))
    first_label, _, first = loaded[0]
    before = {r["prompt_id"]: r["bpb_before"] for r in first}
    rows = []
    for label, _, records in loaded[1:]:
        shared = [r for r in records if r["prompt_id"] in before]
        # Equal up to float rounding: runs with other torch thread counts sum in another order.
        clash = [r["prompt_id"] for r in shared if abs(r["bpb_before"] - before[r["prompt_id"]]) > 1e-4 * abs(before[r["prompt_id"]])]
        if clash:
            raise SystemExit(f"{label}: bpb before fine-tuning differs on {clash[:3]}: not the same prompts, "
                             "tokens or model")
        ids = {r["prompt_id"] for r in shared}
        pair = [dict(r, method="A") for r in first if r["prompt_id"] in ids] + [dict(r, method="B") for r in shared]
        c = paired_bootstrap(pair, "A", "B", n_resamples=args.bootstrap)
        mean_a = float(np.mean([r["bpb_after"] for r in pair if r["method"] == "A"]))
        mean_b = float(np.mean([r["bpb_after"] for r in pair if r["method"] == "B"]))
        rows.append({"a": first_label, "b": label, "n": c["n"], "mean_a": mean_a, "mean_b": mean_b,
                     "mean_diff": c["mean_diff"], "low": c["low"], "high": c["high"]})
        print(f"{first_label} − {label}: {c['mean_diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] over "
              f"{c['n']} prompts (means {mean_a:.4f} vs {mean_b:.4f})")
    return rows


if __name__ == "__main__":
    main()
