"""Benchmark: test-time fine-tuning with SIFT against its baselines, on the embedded default.

What it measures (issue 5, "the science benchmark"), on the default corpus and its held-out prompts
(prompts taken round-robin across domains), SmolLM2-135M, all-MiniLM-L6-v2:
- mean bits per byte after fine-tuning for base / nn / nn-f / us / random / sift, per method and per
  domain, with paired bootstrap 95 % intervals for SIFT − NN and each method − base;
- the same for nn and sift with every corpus sequence duplicated ×D (the paper's "information
  duplication": NN spends its steps on copies, SIFT should not), plus unique sequences trained on;
- Spearman ρ of the final uncertainty σ_N against bits per byte after and against the gain;
- an α sweep (adaptive stopping): SIFT is trained with a bpb measurement after every step, and since
  training with α only truncates the same trajectory, bpb at ``stop_index(variances, α)`` is exactly
  what a run with that α would give; reported as steps saved against bpb lost;
- speed: SIFT's selection share of a prompt's wall time, reset cost against one training step.

Reference: the base model (no fine-tuning) and NN (Hardt & Sun's TTT-NN), run in this process on
the same prompts. Every (prompt, method) also re-measures bpb_before; they must agree bit for bit
across methods (a live check of the exact reset).

Full configuration (hours on 2 CPU cores; see the printed estimate):
    .venv/bin/python benchmarks/ttft.py --prompts 48 --n 16 --k 200 --max-tokens 256
Small configuration (proves the pipeline, minutes):
    .venv/bin/python benchmarks/ttft.py --prompts 8 --n 4 --k 50 --data-sequences 2000
Writes benchmarks/results/ttft.json and PNG plots next to it.
Reset cost alone (a minute; no corpus or index needed; writes benchmarks/results/ttft_reset.json):
    .venv/bin/python benchmarks/ttft.py --reset-only --reset-repeats 7
"""

from __future__ import annotations

import os
import sys

# benchmarks/select.py would shadow the standard library's `select` module: drop this folder from
# the import path, and put the repository root on it (for `import sift`).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from sift.atomic import write_json  # noqa: E402
from sift.env import set_default_env, state_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ALL_METHODS = ("base", "nn", "nn-f", "us", "random", "sift")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=48, help="held-out prompts, round-robin over domains (issue: ≥ 48)")
    p.add_argument("--n", type=int, default=16, help="sequences selected = gradient steps per prompt")
    p.add_argument("--k", type=int, default=200, help="candidates pre-selected from the index")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per training sequence and evaluated prompt")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="comma-separated methods on the corpus as is ('' with --dup-methods: only the duplicated run)")
    p.add_argument("--duplicate", type=int, default=4, help="copies of each corpus sequence in the duplication run (0/1: skip)")
    p.add_argument("--dup-methods", default="nn,sift", help="methods run on the duplicated index")
    p.add_argument("--lam", type=float, default=0.1, help="SIFT's λ′")
    p.add_argument("--alphas", default="0.5,1,2,4,8,16,32", help="adaptive-stopping α values for the sweep")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index", type=Path, default=None, help="index folder; default: the default corpus's index")
    p.add_argument("--prompt-file", type=Path, default=None, help="prompts JSONL; default: the default corpus's held-out prompts")
    p.add_argument("--data-sequences", type=int, default=8000, help="size of the default corpus when it must be built")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--out", type=Path, default=RESULTS / "ttft.json")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--reset-only", action="store_true",
                   help="only the reset microbenchmark (no corpus or index needed); writes results/ttft_reset.json")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON",
                   help="recompute the α sweep (at --alphas) and the truncation reference of an earlier run's JSON, "
                        "write them into it, redraw its PNGs (next to it) and exit")
    p.add_argument("--reset-repeats", type=int, default=5, help="repeats of the reset microbenchmark")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ data


def default_index_and_prompts(args, tokenizer):
    """The default corpus's index and prompts: given folders, else the flows' default index, else built here.

    A non-default ``--data-sequences`` builds its own corpus/index folders so the default ones are untouched.
    """
    from sift.corpus import read_jsonl
    from sift.default_corpus import assemble_default_corpus, default_corpus_dir
    from sift.embed import Embedder
    from sift.index import build_index_from_corpus, load_index

    embedder = Embedder()
    prompts = read_jsonl(args.prompt_file) if args.prompt_file else None
    if args.index is not None:
        index = load_index(args.index, embedder)
        if prompts is None:
            prompts = read_jsonl(default_corpus_dir() / "prompts.jsonl")
        return index, prompts, embedder
    default_size = args.data_sequences == 8000
    pointer = state_dir() / "indices" / "default.json"
    if default_size and pointer.is_file() and prompts is None and (default_corpus_dir() / "prompts.jsonl").is_file():
        index = load_index(json.loads(pointer.read_text())["path"], embedder)
        return index, read_jsonl(default_corpus_dir() / "prompts.jsonl"), embedder
    corpus_dir = default_corpus_dir() if default_size else state_dir() / "corpus" / f"bench-{args.data_sequences}"
    t = time.perf_counter()
    corpus = assemble_default_corpus(corpus_dir, tokenizer=tokenizer, max_tokens=args.max_tokens,
                                     data_sequences=args.data_sequences)
    out = state_dir() / "indices" / f"bench-{corpus.fingerprint}-{args.max_tokens}"
    if (out / "manifest.json").is_file():
        index = load_index(out, embedder)
    else:
        print(f"building the index of {corpus.corpus_path} into {out} ...", flush=True)
        index = build_index_from_corpus([corpus.corpus_path], out, tokenizer, embedder, max_tokens=args.max_tokens)
    print(f"corpus + index ready in {time.perf_counter() - t:.0f} s ({len(index)} sequences)", flush=True)
    return index, prompts if prompts is not None else corpus.prompts(), embedder


def spread_over_domains(prompts: list[dict], count: int) -> list[dict]:
    """The first ``count`` prompts taken round-robin over domains (in file order within a domain)."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for p in prompts:
        by_domain[p.get("domain", "")].append(p)
    picked, queues = [], [list(v) for _, v in sorted(by_domain.items())]
    while len(picked) < count and any(queues):
        for q in queues:
            if q and len(picked) < count:
                picked.append(q.pop(0))
    return picked


def duplicated_index(index, times: int):
    """The same corpus with every sequence stored ``times`` times (copies of row i are rows i·times..)."""
    import faiss

    from sift.index import CorpusIndex

    emb = np.repeat(np.asarray(index.embeddings, dtype=np.float32), times, axis=0)
    rows = np.repeat(np.arange(len(index.sequences)), times)
    seqs = index.sequences.select(rows.tolist())
    seqs = seqs.remove_columns("seq_id").add_column("seq_id", list(range(len(seqs))))
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    manifest = dict(index.manifest, fingerprint=f"{index.fingerprint}-x{times}", count=len(seqs), duplicated=times)
    return CorpusIndex(index.path, flat, emb, seqs, manifest)


class Progress:
    """Per-prompt checkpoint of a long run, so a crash or a kill loses at most the prompt in flight.

    ``path`` is JSON lines: a header with the run's identity (prompts, methods, N, K, tokens, λ′, lr, seed,
    model and index fingerprints), then one line per finished prompt. A rerun with the same identity
    picks up the finished prompts; a different identity starts over (the old file is kept as ``.stale``).
    The file is removed once the final JSON is written.
    """

    def __init__(self, path: Path, identity: dict):
        from sift.ttft import PromptResult

        self.path, self.done = path, {}
        lines = path.read_text().splitlines() if path.is_file() else []
        header = json.loads(lines[0]) if lines else None
        if header == identity:
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the crash: that prompt reruns
                    break
                self.done[row["prompt_id"]] = {key: [PromptResult.from_json(r) for r in row[key]]
                                               for key in ("results", "dup_results")}
            print(f"resuming: {len(self.done)} prompts already done ({path})", flush=True)
            path.write_text("".join(line + "\n" for line in lines[: 1 + len(self.done)]))
        else:
            if lines:
                os.replace(path, path.with_suffix(".stale"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(identity) + "\n")

    def record(self, prompt_id: str, results: list, dup_results: list) -> None:
        row = {"prompt_id": prompt_id, "results": [r.to_json() for r in results],
               "dup_results": [r.to_json() for r in dup_results]}
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- analysis


def alpha_sweep(sift_results, alphas: list[float]) -> list[dict]:
    """Steps saved against bpb lost for each α, read off SIFT's per-step bpb curves (exact, see module doc)."""
    from sift.select import stop_index

    rows = []
    full_steps = sum(r.steps for r in sift_results)
    full_bpb = float(np.mean([r.bpb_after for r in sift_results]))
    for alpha in [None] + alphas:
        steps, bpbs = [], []
        for r in sift_results:
            variances = np.square(np.asarray(r.uncertainties, dtype=np.float64))
            stop = min(stop_index(variances, alpha), r.steps)
            curve = dict(r.bpb_curve)
            steps.append(stop)
            bpbs.append(curve[stop])
        mean_bpb = float(np.mean(bpbs))
        rows.append({"alpha": alpha, "mean_steps": float(np.mean(steps)),
                     "steps_saved": 1 - sum(steps) / full_steps if full_steps else 0.0,
                     "mean_bpb_after": mean_bpb, "bpb_loss_relative": mean_bpb / full_bpb - 1})
    return rows


def truncation_reference(sift_results) -> list[dict]:
    """The reference adaptive stopping must beat: every prompt stops after the same number of steps s
    (no uncertainty used), read off the same curves; steps saved against bpb lost for each s."""
    full_steps = sum(r.steps for r in sift_results)
    full_bpb = float(np.mean([r.bpb_after for r in sift_results]))
    rows = []
    for stop in range(max(r.steps for r in sift_results) + 1):
        stops = [min(stop, r.steps) for r in sift_results]
        mean_bpb = float(np.mean([dict(r.bpb_curve)[s] for r, s in zip(sift_results, stops)]))
        rows.append({"stop": stop, "steps_saved": 1 - sum(stops) / full_steps if full_steps else 0.0,
                     "mean_bpb_after": mean_bpb, "bpb_loss_relative": mean_bpb / full_bpb - 1})
    return rows


def replot(path: Path, alphas: list[float]) -> dict:
    """--replot: recompute the α sweep (at ``alphas``) and the truncation reference from a run's JSON,
    write them back into it, and redraw its plots."""
    from sift.ttft import PromptResult

    out = json.loads(path.read_text())
    sift_results = [PromptResult.from_json(r) for r in out["results"] if r["method"] == "sift"]
    if sift_results:
        out["alpha_sweep"] = alpha_sweep(sift_results, alphas)
        out["truncation_reference"] = truncation_reference(sift_results)
        for r in out["alpha_sweep"]:
            print(f"  α={str(r['alpha']):>6}  steps saved {100 * r['steps_saved']:5.1f} %  "
                  f"bpb lost {100 * r['bpb_loss_relative']:+.3f} %")
        write_json(path, out, indent=1, default=str)
    out["plots"] = plot(path, out)
    print("plots:", ", ".join(out["plots"]))
    return out


def speed_figures(results) -> dict:
    """Selection share of a prompt's wall time (per method) and reset cost against one training step."""
    out: dict = {"selection_share": {}, "selection_seconds": {}}
    by_method = defaultdict(list)
    for r in results:
        by_method[r.method].append(r)
    for method, rs in by_method.items():
        if method == "base":
            continue
        shares = [r.seconds["selection"] / r.seconds["total"] for r in rs]
        out["selection_share"][method] = {"mean": float(np.mean(shares)), "max": float(np.max(shares))}
        out["selection_seconds"][method] = float(np.mean([r.seconds["selection"] for r in rs]))
    ratios = [r.seconds["reset"] / (r.seconds["train"] / r.steps) for r in results if r.steps]
    steps = [r.seconds["train"] / r.steps for r in results if r.steps]
    evals = [r.seconds["eval"] / max(1, len(r.bpb_curve)) for r in results]
    out["reset_over_step"] = {"median": float(np.median(ratios)), "max": float(np.max(ratios))} if ratios else {}
    out["seconds_per_step"] = float(np.median(steps)) if steps else float("nan")
    out["seconds_per_eval"] = float(np.median(evals))
    out["seconds_reset"] = float(np.median([r.seconds["reset"] for r in results if r.steps])) if ratios else float("nan")
    return out


def reset_microbenchmark(model, tokenizer, text: str, max_tokens: int, snapshot, repeats: int = 5) -> dict:
    """Per-prompt cost of the exact reset against one training step, back to back, ``repeats`` times.

    Each repeat runs one two-step "prompt" per design, as ``finetune_and_evaluate`` does (fresh fused
    Adam; after the prompt: free the gradients and the optimiser, then reset):
    - swap (ours): step 1 with ``snapshot.first_adam_step`` (copy base into the reused work buffer,
      zero the reused moments, fused step on work), step 2 fused, reset = ``snapshot.restore``
      (pointer swaps back to the never-written base);
    - swap-math (the alternative we rejected): the same double buffering, but step 1 computed out of
      place, work = base − lr/(1−β1)·m/(√v/√(1−β2) + eps) with m = (1−β1)g, v = (1−β2)g² (six unfused
      element-wise passes, torch's single-tensor op order), state seeded at step 1; reset = swaps;
    - copy (reference, the previous design): a clone of the weights taken once; both steps with the
      fused optimiser in place (step 1 allocates Adam's zeroed moments), reset = copy the clone back.
    Step = forward + backward + update of step 2 (a steady step), pooled over the designs for the
    ratios. Overhead per prompt = free (gradients, optimiser) + reset + (step-1 update − step-2
    update): what the design adds over steady steps, wherever it sits. On a shared machine the
    minimum is the cost without interference, the median what a run sees.
    """
    import math

    import torch

    from sift.ttft import TTFTConfig, _adam, _train_ids

    ids = torch.tensor([_train_ids(tokenizer, text, max_tokens)])
    params = list(model.parameters())
    clone = [p.detach().clone() for p in params]
    assert snapshot.holds(model), "the snapshot must be of the model as it is now"
    bases = [p.data for p in params]
    works = [torch.empty_like(b) for b in bases]  # swap-math's own buffers, reused like the snapshot's
    moments = [(torch.empty_like(b), torch.empty_like(b)) for b in bases]

    def forward_backward() -> None:
        logits = model(input_ids=ids).logits[0]
        torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).backward()

    def out_of_place_first_step(optimizer) -> None:
        group = optimizer.param_groups[0]
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        zero = torch.zeros(())
        with torch.no_grad():
            for p, base, work, (m, v) in zip(params, bases, works, moments):
                torch.mul(p.grad, 1 - beta1, out=m)
                torch.addcmul(zero, p.grad, p.grad, value=1 - beta2, out=v)
                torch.sqrt(v, out=work)
                work.div_(math.sqrt(1 - beta2)).add_(eps)
                torch.addcdiv(base, m, work, value=-lr / (1 - beta1), out=work)
                p.data = work
                optimizer.state[p] = {"step": torch.ones((), dtype=torch.float32), "exp_avg": m, "exp_avg_sq": v}

    def prompt(design: str) -> dict:
        optimizer = _adam(params, TTFTConfig())
        seconds = {}
        for i in (1, 2):
            t = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            forward_backward()
            seconds[f"forward_backward_{i}"] = time.perf_counter() - t
            t = time.perf_counter()
            if design == "swap" and i == 1:
                snapshot.first_adam_step(optimizer)
            elif design == "swap-math" and i == 1:
                out_of_place_first_step(optimizer)
            else:
                optimizer.step()
            seconds[f"update_{i}"] = time.perf_counter() - t
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        seconds["free"] = time.perf_counter() - t
        t = time.perf_counter()
        if design == "swap":
            snapshot.restore(model)
        elif design == "swap-math":
            for p, base in zip(params, bases):
                p.data = base
        else:
            with torch.no_grad():
                for p, c in zip(params, clone):
                    p.copy_(c)
        seconds["reset"] = time.perf_counter() - t
        seconds["step"] = seconds["forward_backward_2"] + seconds["update_2"]
        seconds["overhead"] = seconds["free"] + seconds["reset"] + seconds["update_1"] - seconds["update_2"]
        return seconds

    designs = ("swap", "swap-math", "copy")
    first_use = {d: prompt(d) for d in designs[:2]}  # allocates the work buffers and moments, once
    runs: dict[str, list[dict]] = {d: [] for d in designs}
    for r in range(repeats):
        for design in designs[r % 3:] + designs[:r % 3]:  # rotate the order: share the noise
            runs[design].append(prompt(design))
    assert snapshot.equals(model)
    steps = [r["step"] for rs in runs.values() for r in rs]
    step = {"min": float(np.min(steps)), "median": float(np.median(steps))}
    out: dict = {"repeats": repeats, "max_tokens": int(ids.shape[1]), "step": step, "first_use": first_use,
                 "runs": runs}
    for design, rs in runs.items():
        col = {k: [r[k] for r in rs] for k in rs[0]}
        out[design] = {k: {"min": float(np.min(v)), "median": float(np.median(v))} for k, v in col.items()}
        for k in ("reset", "overhead"):
            out[design][f"{k}_over_step"] = {s: out[design][k][s] / step[s] for s in ("min", "median")}
    # Kept for the summary line: our design's reset against one steady step.
    out["ratio_min"] = out["swap"]["reset_over_step"]["min"]
    out["ratio_median"] = out["swap"]["reset_over_step"]["median"]
    return out


def print_reset(speed_reset: dict) -> None:
    print(f"       reset microbenchmark ×{speed_reset['repeats']} (median, min): steady step "
          f"{speed_reset['step']['median']:.3f} s, {speed_reset['step']['min']:.3f} s")
    for design in ("swap", "swap-math", "copy"):
        s = speed_reset[design]
        print(f"       {design:9s}: reset {1e3 * s['reset']['median']:.2f} ms = {100 * s['reset_over_step']['median']:.3f} % "
              f"of a step (min {100 * s['reset_over_step']['min']:.3f} %); step-1 update {1e3 * s['update_1']['median']:.0f} ms "
              f"vs step-2 {1e3 * s['update_2']['median']:.0f} ms; free {1e3 * s['free']['median']:.0f} ms; "
              f"overhead/prompt {1e3 * s['overhead']['median']:.0f} ms = {100 * s['overhead_over_step']['median']:.2f} % "
              f"of a step (min {100 * s['overhead_over_step']['min']:.2f} %)")


def full_run_estimate(speed: dict, prompts: int = 48, n: int = 16, methods: int = 5, dup_methods: int = 2) -> dict:
    """Wall-time estimate of the full configuration from the measured per-step and per-eval seconds.

    Per prompt: (methods + dup_methods) × n steps; evals: 2 per method + base's 1, + n for SIFT's curve.
    Assumes steps at the same --max-tokens; selection/retrieval are negligible (see selection_share).
    """
    steps = prompts * (methods + dup_methods) * n
    evals = prompts * (2 * (methods + dup_methods) + 1 + n)
    seconds = steps * speed["seconds_per_step"] + evals * speed["seconds_per_eval"]
    return {"prompts": prompts, "n": n, "train_steps": steps, "evals": evals, "hours": seconds / 3600}


def plot(path_prefix: Path, out: dict) -> list[str]:
    """The benchmark's figures from its JSON (``out``), as PNGs next to ``path_prefix``:
    _methods (bits per byte per method, bars from 0, and each method's difference to the base model
    and SIFT − NN with paired bootstrap 95 % intervals), _uncertainty (σ_N against bpb after and gain),
    _alpha (steps saved against bpb lost) and _curve (SIFT's mean bpb after each step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, dup_summary = out["summary"], out.get("summary_duplicated") or []
    sift_records = [r for r in out["results"] if r["method"] == "sift"]
    sweep, comparisons = out.get("alpha_sweep") or [], out.get("comparisons") or {}
    written = []

    def save(fig, name: str) -> None:
        path = path_prefix.with_name(f"{path_prefix.stem}_{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    names = [r["method"] for r in summary] or [r["method"].removesuffix("-dup") for r in dup_summary]
    fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    bars = ax.bar([i - 0.2 for i in range(len(names))], [r["mean_bpb_after"] for r in summary], width=0.4,
                  color="tab:blue", label="corpus as is")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    dup = [r for r in dup_summary if r["method"].removesuffix("-dup") in names]
    if dup:
        pos = [names.index(r["method"].removesuffix("-dup")) + 0.2 for r in dup]
        bars = ax.bar(pos, [r["mean_bpb_after"] for r in dup], width=0.4, color="tab:red",
                      label=f"corpus duplicated ×{out['config'].get('duplicate', '?')}")
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("mean bits per byte after TTFT (lower is better)")
    ax.set_title(f"{out['prompts']} prompts, N={out['config']['n']}, K={out['config']['k']}", fontsize=9)
    ax.set_ylim(0, 1.25 * max(r["mean_bpb_after"] for r in summary + dup_summary))
    ax.legend(fontsize=8, loc="upper right")
    rows = [(name, c) for name, c in comparisons.items()]
    ax_diff.errorbar([c["mean_diff"] for _, c in rows], range(len(rows)),
                     xerr=[[c["mean_diff"] - c["low"] for _, c in rows], [c["high"] - c["mean_diff"] for _, c in rows]],
                     fmt="o", color="black", capsize=3)
    ax_diff.axvline(0, color="grey", lw=0.8)
    ax_diff.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax_diff.invert_yaxis()
    ax_diff.set_xlabel("difference of mean bpb after (95 % paired bootstrap)")
    save(fig, "methods")

    if sift_records:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        sig = [r["uncertainties"][r["steps"]] for r in sift_records]
        domains = sorted({r["domain"] for r in sift_records})
        for domain in domains:
            rs = [(s, r) for s, r in zip(sig, sift_records) if r["domain"] == domain]
            axes[0].scatter([s for s, _ in rs], [r["bpb_after"] for _, r in rs], label=domain, s=18)
            axes[1].scatter([s for s, _ in rs], [r["gain"] for _, r in rs], s=18)
        corr = out.get("uncertainty_correlations") or {}
        for axis, key, label in ((axes[0], "sigma_vs_bpb_after", "bpb after"),
                                 (axes[1], "sigma_vs_gain", "gain (bpb before − after)")):
            axis.set_xlabel("σ_N: SIFT's uncertainty after the last step")
            axis.set_ylabel(label)
            if key in corr:
                axis.set_title(f"Spearman ρ = {corr[key]['rho']:+.2f}", fontsize=9)
        axes[0].legend(fontsize=7)
        save(fig, "uncertainty")

        curves = [dict((int(k), v) for k, v in r["bpb_curve"]) for r in sift_records]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if len(steps) > 1:
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.plot(steps, [np.mean([c[t] for c in curves]) for t in steps], "o-")
            ax.set_xlabel("gradient steps (SIFT's picks, in order)")
            ax.set_ylabel("mean bits per byte")
            save(fig, "curve")

    pts = [r for r in sweep if r["alpha"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([100 * r["steps_saved"] for r in pts], [100 * r["bpb_loss_relative"] for r in pts], "o-")
        for r in pts:
            ax.annotate(f"α={r['alpha']:g}", (100 * r["steps_saved"], 100 * r["bpb_loss_relative"]), fontsize=7)
        ref = out.get("truncation_reference") or []
        if ref:
            ax.plot([100 * r["steps_saved"] for r in ref], [100 * r["bpb_loss_relative"] for r in ref], ".:",
                    color="grey", label="reference: every prompt stops at the same step")
            ax.legend(fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axvline(30.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("steps saved (%)")
        ax.set_ylabel("bpb lost (% of no-stopping bpb)")
        ax.set_title("target: ≥ 30 % saved for ≤ 1 % lost (dashed)", fontsize=9)
        save(fig, "alpha")
    return written


# ----------------------------------------------------------------------------------------- main


def reset_only(args) -> dict:
    """The reset microbenchmark alone, on the default model and a training sequence of --max-tokens
    tokens (this file's docstring, repeated: any text of that length costs the same)."""
    import torch

    from sift.model import load_causal_lm, model_fingerprint
    from sift.ttft import WeightSnapshot

    model, tokenizer = load_causal_lm()
    t = time.perf_counter()
    snapshot = WeightSnapshot(model)
    seconds_snapshot = time.perf_counter() - t
    speed_reset = reset_microbenchmark(model, tokenizer, __doc__ * 8, args.max_tokens, snapshot, args.reset_repeats)
    print(f"reset microbenchmark, {speed_reset['max_tokens']} tokens per step, torch threads {torch.get_num_threads()}; "
          f"WeightSnapshot(model) once: {1e3 * seconds_snapshot:.1f} ms")
    print_reset(speed_reset)
    out = {"command": "benchmarks/ttft.py --reset-only " + f"--max-tokens {args.max_tokens} --reset-repeats {args.reset_repeats}",
           "reference": "copy design (clone once, copy back per prompt, torch's own first step) and swap-math "
                        "(first update computed out of place), same process, same model",
           "environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                           "load_average": os.getloadavg(), "model_fingerprint": model_fingerprint(model)},
           "seconds_snapshot_once": seconds_snapshot, "reset_microbenchmark": speed_reset}
    path = write_json(RESULTS / "ttft_reset.json", out, indent=1)
    print(f"wrote {path}")
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_default_env()
    import torch

    from sift.model import load_causal_lm, model_fingerprint
    from sift.report import means_by_method, means_by_method_and_domain, paired_bootstrap, format_table, \
        uncertainty_correlations
    from sift.ttft import TTFTConfig, WeightSnapshot, run_prompt

    if args.reset_only:
        return reset_only(args)
    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    if args.replot:
        return replot(args.replot, alphas)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dup_methods = [m.strip() for m in args.dup_methods.split(",") if m.strip()] if args.duplicate > 1 else []
    t_start = time.perf_counter()
    model, tokenizer = load_causal_lm()
    index, all_prompts, embedder = default_index_and_prompts(args, tokenizer)
    prompts = spread_over_domains(all_prompts, args.prompts)
    domains = sorted({p["domain"] for p in prompts})
    print(f"{len(prompts)} prompts over {len(domains)} domains {domains}; index {len(index)} sequences; "
          f"methods {methods}; N={args.n} K={args.k} T={args.max_tokens}; torch threads {torch.get_num_threads()}",
          flush=True)
    queries = embedder.encode([p["text"] for p in prompts])
    snapshot = WeightSnapshot(model)
    dup_index = duplicated_index(index, args.duplicate) if dup_methods else None

    def cfg_for(method: str) -> TTFTConfig:
        # SIFT measures bpb after every step so the α sweep can be read off its curve.
        return TTFTConfig(method=method, n=args.n, k=args.k, lam=args.lam, lr=args.lr, max_tokens=args.max_tokens,
                          seed=args.seed, eval_every=1 if method == "sift" else None, min_similarity=0.0)

    progress = Progress(args.out.with_suffix(".progress.jsonl"), {
        "prompts": [p["id"] for p in prompts], "methods": methods, "dup_methods": dup_methods,
        "duplicate": args.duplicate, "n": args.n, "k": args.k, "max_tokens": args.max_tokens, "lam": args.lam,
        "lr": args.lr, "seed": args.seed, "model": model_fingerprint(model), "index": index.fingerprint})
    results, dup_results = [], []
    for i, (prompt, query) in enumerate(zip(prompts, queries)):
        if prompt["id"] in progress.done:
            results += progress.done[prompt["id"]]["results"]
            dup_results += progress.done[prompt["id"]]["dup_results"]
            continue
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation of 256-token prompts, NN clamping: recorded in results
            for method in methods:
                results.append(run_prompt(prompt, model, tokenizer, embedder, index, cfg_for(method),
                                          snapshot=snapshot, query_emb=query))
            for method in dup_methods:
                r = run_prompt(prompt, model, tokenizer, embedder, dup_index, cfg_for(method),
                               snapshot=snapshot, query_emb=query)
                r.method = f"{method}-dup"
                dup_results.append(r)
        mine, mine_dup = results[len(results) - len(methods):], dup_results[len(dup_results) - len(dup_methods):]
        befores = {r.bpb_before for r in mine + mine_dup}
        assert len(befores) == 1, f"bpb_before differs across methods for {prompt['id']}: reset is not exact"
        line = " ".join(f"{r.method}={r.bpb_after:.4f}" for r in mine + mine_dup)
        print(f"[{i + 1}/{len(prompts)}] {prompt['id']} ({prompt['domain']}) before={befores.pop():.4f} {line} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        progress.record(prompt["id"], mine, mine_dup)
    assert snapshot.equals(model), "the model is not back to its base weights"
    speed_reset = reset_microbenchmark(model, tokenizer, prompts[0]["text"], args.max_tokens, snapshot,
                                       args.reset_repeats)

    records = [r.to_json() for r in results]
    dup_records = [r.to_json() for r in dup_results]
    summary = means_by_method(records)
    dup_summary = means_by_method(dup_records)
    per_domain = means_by_method_and_domain(records)
    comparisons = {}
    if {"sift", "nn"} <= set(methods):
        comparisons["sift-nn"] = paired_bootstrap(records, "sift", "nn", n_resamples=args.bootstrap, seed=args.seed)
    for m in methods:
        if m != "base" and "base" in methods:
            comparisons[f"{m}-base"] = paired_bootstrap(records, m, "base", n_resamples=args.bootstrap, seed=args.seed)
    if {"sift", "nn"} <= set(dup_methods):
        comparisons["sift-nn (duplicated)"] = paired_bootstrap(dup_records, "sift-dup", "nn-dup",
                                                               n_resamples=args.bootstrap, seed=args.seed)
    unique = {}
    for m in dup_methods:
        rs = [r for r in dup_results if r.method == f"{m}-dup"]
        unique[m] = float(np.mean([len({s // args.duplicate for s in r.picked_seq_ids[: r.steps]}) for r in rs]))
    sift_results = [r for r in results if r.method == "sift"]
    correlations = uncertainty_correlations(records, "sift") if sift_results else {}
    sweep = alpha_sweep(sift_results, alphas) if sift_results else []
    truncation = truncation_reference(sift_results) if sift_results else []
    speed = speed_figures(results)
    speed["reset_microbenchmark"] = speed_reset
    estimate = full_run_estimate(speed, 48, 16, len([m for m in ALL_METHODS if m != "base"]), 2)
    wall = time.perf_counter() - t_start

    print("\nmean bits per byte (reference: base = no fine-tuning)")
    print(format_table(summary, ["method", "count", "mean_bpb_before", "mean_bpb_after", "mean_gain",
                                 "relative_gain", "mean_steps"]))
    if dup_summary:
        print(f"\ncorpus duplicated ×{args.duplicate}; unique sequences trained on per prompt: {unique}")
        print(format_table(dup_summary, ["method", "count", "mean_bpb_after", "mean_gain", "relative_gain"]))
    print("\nper domain")
    print(format_table(per_domain, ["method", "domain", "count", "mean_bpb_before", "mean_bpb_after", "relative_gain"]))
    print("\npaired bootstrap 95 % intervals of the mean bpb_after difference (negative: first is better)")
    for name, c in comparisons.items():
        print(f"  {name:24s} {c['mean_diff']:+.5f}  [{c['low']:+.5f}, {c['high']:+.5f}]  n={c['n']}")
    if correlations:
        print(f"\nSpearman σ_N vs bpb_after: {correlations['sigma_vs_bpb_after']['rho']:+.3f}, "
              f"vs gain: {correlations['sigma_vs_gain']['rho']:+.3f}")
    if sweep:
        print("\nα sweep (SIFT): α, mean steps, steps saved, bpb lost")
        for r in sweep:
            print(f"  {str(r['alpha']):>6}  {r['mean_steps']:5.2f}  {100 * r['steps_saved']:5.1f} %  "
                  f"{100 * r['bpb_loss_relative']:+.3f} %")
    print(f"\nspeed: selection share of a prompt's wall time {speed['selection_share']}")
    print(f"       reset / one training step {speed['reset_over_step']} "
          f"(step {speed['seconds_per_step']:.2f} s, reset {speed['seconds_reset']:.3f} s)")
    print_reset(speed_reset)
    print(f"wall {wall:.0f} s; the full configuration (48 prompts, N=16, 5 methods + 2 duplicated) would take "
          f"~{estimate['hours']:.1f} h at these per-step/per-eval costs")

    out = {
        "command": "benchmarks/ttft.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "reference": "base model (no fine-tuning) and NN (TTT-NN), same prompts, same process",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "model_fingerprint": model_fingerprint(model), "index_fingerprint": index.fingerprint,
                        "index_size": len(index)},
        "prompts": len(prompts), "domains": domains,
        "summary": summary, "summary_duplicated": dup_summary, "unique_sequences_duplicated": unique,
        "per_domain": per_domain, "comparisons": comparisons, "uncertainty_correlations": correlations,
        "alpha_sweep": sweep, "truncation_reference": truncation, "speed": speed, "full_run_estimate": estimate, "wall_seconds": wall,
        "results": records, "results_duplicated": dup_records,
    }
    write_json(args.out, out, indent=1, default=str)
    if not args.no_plots:
        out["plots"] = plot(args.out, out)
        print("plots:", ", ".join(out["plots"]))
    progress.finish()
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
