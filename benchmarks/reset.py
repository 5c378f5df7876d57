"""Benchmark: the exact per-prompt reset of the fine-tuned model against one training step.

Reference, in the same process on the same model (SmolLM2-135M, default): the copy design (clone the
weights once, copy them back after each prompt, torch's own first Adam step) and swap-math (the first
update computed out of place), beside ours (``sift.snapshot.WeightSnapshot``: double-buffered weights,
reset by pointer swaps). Prints the reset and first-step overheads as ratios of one training step and
writes benchmarks/results/ttft_reset.json.

    .venv/bin/python benchmarks/reset.py --reset-repeats 7 [--max-tokens 256]
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
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from sift.atomic import write_json  # noqa: E402
from sift.env import set_default_env  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--reset-repeats", type=int, default=5, help="repeats of each design")
    return p.parse_args(argv)


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

    from sift.finetune import _adam, _train_ids
    from sift.settings import TrainingSettings

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
        optimizer = _adam(params, TrainingSettings())
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



def main(argv=None) -> dict:
    args = parse_args(argv)
    set_default_env()
    """The reset microbenchmark alone, on the default model and a training sequence of --max-tokens
    tokens (this file's docstring, repeated: any text of that length costs the same)."""
    import torch

    from sift.model import load_causal_lm, model_fingerprint
    from sift.snapshot import WeightSnapshot

    model, tokenizer = load_causal_lm()
    t = time.perf_counter()
    snapshot = WeightSnapshot(model)
    seconds_snapshot = time.perf_counter() - t
    speed_reset = reset_microbenchmark(model, tokenizer, __doc__ * 8, args.max_tokens, snapshot, args.reset_repeats)
    print(f"reset microbenchmark, {speed_reset['max_tokens']} tokens per step, torch threads {torch.get_num_threads()}; "
          f"WeightSnapshot(model) once: {1e3 * seconds_snapshot:.1f} ms")
    print_reset(speed_reset)
    out = {"command": "benchmarks/reset.py " + f"--max-tokens {args.max_tokens} --reset-repeats {args.reset_repeats}",
           "reference": "copy design (clone once, copy back per prompt, torch's own first step) and swap-math "
                        "(first update computed out of place), same process, same model",
           "environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                           "load_average": os.getloadavg(), "model_fingerprint": model_fingerprint(model)},
           "seconds_snapshot_once": seconds_snapshot, "reset_microbenchmark": speed_reset}
    path = write_json(RESULTS / "ttft_reset.json", out, indent=1)
    print(f"wrote {path}")
    return out



if __name__ == "__main__":
    main()
