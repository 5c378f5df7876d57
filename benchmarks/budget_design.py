"""Why ``sift.budget``'s sigma policy has the form it has: step-budget rules compared on stored curves.

Reads result rows with per-step curves (``sift-ttft evaluate --eval-every 1 --out rows.jsonl``, or a
JSON with a ``results`` list such as the retired benchmark's ``ttft_full.json``) and, at each budget
(steps per prompt on average), reads off the curves what each rule gives against ``uniform``:

- ``sigma(γ)``: ``sift.budget``'s policy, steps ∝ (1 − σ_N/σ_0)^γ, at every γ of a grid (in sample:
  this is design, not the report; the product cross-fits γ, ``sift.stats.budget_frontier``);
- ``alpha``: ``sift.budget``'s one-α policy;
- ``largest_sigma``: the next step to the prompt whose current σ_t is largest (rejected);
- ``sigma2_drop``: the next step to the prompt whose next pick lowers σ² most (rejected).

The last two grant greedily on their own marginal scores (``sift.budget.greedy_steps``). Paired differences with
uniform carry bootstrap 95 % intervals (``sift.stats.bootstrap_mean``).

    .venv/bin/python benchmarks/budget_design.py --rows ~/runs/sift48-final.jsonl \
        --out benchmarks/results/budget_design.json
    git show 96ae320:benchmarks/results/ttft_full.json > /tmp/ttft_full.json
    .venv/bin/python benchmarks/budget_design.py --rows /tmp/ttft_full.json --out /tmp/design_old.json
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/select.py would shadow the standard library's `select` (imported by subprocess, via scipy).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

from sift.atomic import write_json
from sift.budget import allocate, greedy_steps
from sift.stats import _curved_rows, bootstrap_mean, curve_of


def read_rows(path: Path, method: str) -> list[dict]:
    text = path.read_text()
    if text.lstrip().startswith("{") and '"results"' in text[:100_000]:
        rows = json.loads(text)["results"]
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return _curved_rows(rows, method)


def rule_steps(rows: list[dict], budget: int, rule: str) -> list[int]:
    sigmas = [np.asarray(r["uncertainties"], dtype=np.float64) for r in rows]
    caps = [int(r["steps"]) for r in rows]
    if rule == "largest_sigma":
        return greedy_steps([s[:-1] for s in sigmas], caps, budget)
    if rule == "sigma2_drop":
        return greedy_steps([s[:-1] ** 2 - s[1:] ** 2 for s in sigmas], caps, budget)
    if rule.startswith("sigma("):
        return allocate(sigmas, budget, "sigma", gamma=float(rule[6:-1]), caps=caps).steps
    return allocate(sigmas, budget, rule, caps=caps).steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="JSONL of result rows, or a JSON with 'results'")
    parser.add_argument("--method", default="sift")
    parser.add_argument("--budgets", type=float, nargs="+", default=[4, 6, 8, 10, 12, 14])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.5, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "budget_design.json")
    args = parser.parse_args()

    rows = read_rows(args.rows, args.method)
    rules = ["alpha", *[f"sigma({g:g})" for g in args.gammas], "largest_sigma", "sigma2_drop"]
    table = []
    for avg in args.budgets:
        budget = int(round(avg * len(rows)))
        uniform = np.array([curve_of(r)[s] for r, s in zip(rows, rule_steps(rows, budget, "uniform"))])
        line = [f"{avg:>4g} steps/prompt: uniform {uniform.mean():.4f}"]
        for rule in rules:
            values = np.array([curve_of(r)[s] for r, s in zip(rows, rule_steps(rows, budget, rule))])
            mean, low, high = bootstrap_mean(values - uniform)
            table.append({"per_prompt": avg, "budget": budget, "rule": rule, "uniform_bpb": float(uniform.mean()),
                          "mean_bpb": float(values.mean()), "vs_uniform": mean, "ci_low": low, "ci_high": high,
                          "wins": int(np.sum(values < uniform))})
            line.append(f"{rule} {mean:+.4f} [{low:+.4f}, {high:+.4f}]")
        print("; ".join(line))
    write_json(args.out, {"command": f"benchmarks/budget_design.py --rows {args.rows}", "rows": str(args.rows),
                          "prompts": len(rows), "method": args.method, "table": table}, indent=1)
    print(f"{len(rows)} prompts; wrote {args.out}")


if __name__ == "__main__":
    main()
