"""Benchmark: sift.select now against sift.select at an earlier commit, same process, one CPU thread.

Reference: ``sift/select.py`` as it was at ``--rev`` (default 1e59a2f, the last commit before the method
registry, when the file was self-contained), loaded from git as a standalone module. Both select N = 50
of the same K candidates (Faiss-style top-K of a perturbed row of a normalised random corpus) for the
same prompts, interleaved; picks must be identical. Prints, per (K, d): median CPU time per prompt of
each, their ratio (new / old), and the same (median of the repeats) for a batch of 64 prompts (``select_batch``).
Also the reason ``sift/methods/greedy.py`` keeps two loops: the batched loop (``condition_greedy``) run on
one prompt against the single-prompt loop (``condition_greedy_one``), same picks, ratio batched / single. Writes
benchmarks/results/select_before_after.json.

    .venv/bin/python benchmarks/select_before_after.py [--rev 1e59a2f] [--repeats 5]
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))  # this folder's select.py would shadow the stdlib's
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sift  # noqa: E402
from sift.methods.greedy import condition_greedy, condition_greedy_one  # noqa: E402
from sift.methods.kernel import Kernel  # noqa: E402
from sift.atomic import write_json  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def old_select_module(rev: str):
    """``sift/select.py`` at ``rev`` as a module named ``select_at_rev``."""
    source = subprocess.run(["git", "show", f"{rev}:sift/select.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "select_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("select_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["select_at_rev"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="1e59a2f")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    old = old_select_module(args.rev)
    rng = np.random.default_rng(0)
    rows = []
    for k, d in ((200, 384), (1000, 384), (200, 1024), (1000, 1024)):
        corpus = rng.standard_normal((20_000, d)).astype(np.float32)
        corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
        queries = [(corpus[i] + 0.3 * rng.standard_normal(d)).astype(np.float32) for i in range(64)]
        cands = [corpus[np.argsort(-(corpus @ q))[:k]] for q in queries]
        t_old, t_new = [], []
        for _ in range(args.repeats):
            for q, c in zip(queries[:5], cands[:5]):
                t = time.process_time(); a = old.select(q, c, 50, lam=0.1).indices; t_old.append(time.process_time() - t)
                t = time.process_time(); b = sift.select(q, c, 50, lam=0.1).indices; t_new.append(time.process_time() - t)
                assert np.array_equal(a, b), "picks differ"
        bt_old, bt_new = [], []
        for _ in range(args.repeats):  # interleaved, median: one batch is a single noisy timing
            t = time.process_time(); old_batch = old.select_batch(queries, cands, 50, lam=0.1); bt_old.append(time.process_time() - t)
            t = time.process_time(); new_batch = sift.select_batch(queries, cands, 50, lam=0.1); bt_new.append(time.process_time() - t)
            assert all(np.array_equal(x.indices, y.indices) for x, y in zip(old_batch, new_batch)), "batch picks differ"
        b_old, b_new = float(np.median(bt_old)), float(np.median(bt_new))
        kernel = Kernel([torch.from_numpy(queries[0][None])], [torch.from_numpy(cands[0])])
        t_one, t_batched = [], []
        for _ in range(6 * args.repeats):
            t = time.process_time(); one, _ = condition_greedy_one(kernel, 50, 0.1, True); t_one.append(time.process_time() - t)
            t = time.process_time(); batched, _ = condition_greedy(kernel, 50, 0.1, True); t_batched.append(time.process_time() - t)
            assert np.array_equal(one, batched[0]), "the two greedy loops disagree"
        row = {"k": k, "d": d, "n": 50, "old_ms": 1e3 * float(np.median(t_old)), "new_ms": 1e3 * float(np.median(t_new)),
               "single_loop_ms": 1e3 * float(np.median(t_one)), "batched_loop_one_prompt_ms": 1e3 * float(np.median(t_batched)),
               "batched_over_single": float(np.median(t_batched) / np.median(t_one)),
               "ratio": float(np.median(t_new) / np.median(t_old)), "batch64_old_s": b_old, "batch64_new_s": b_new,
               "batch_ratio": b_new / b_old, "picks_identical": True}
        print(f"K={k:5d} d={d:5d}  old {row['old_ms']:6.2f} ms  new {row['new_ms']:6.2f} ms  ratio {row['ratio']:.2f}   "
              f"batch of 64: ratio {row['batch_ratio']:.2f}   picks identical   batched loop on one prompt "
              f"{row['batched_over_single']:.2f}x the single-prompt loop", flush=True)
        rows.append(row)
    write_json(Path(__file__).resolve().parent / "results" / "select_before_after.json",
               {"command": "benchmarks/select_before_after.py " + " ".join(argv or sys.argv[1:]),
                "reference": f"sift/select.py at {args.rev}, same process", "rows": rows}, indent=1)
    return rows


if __name__ == "__main__":
    main()
