"""Benchmark: one training step with gradients freed between steps (ours) or kept and zeroed.

sift.ttft's loop calls ``optimizer.zero_grad(set_to_none=True)`` before each step, so backward
allocates fresh gradient tensors (~540 MB for SmolLM2-135M). The alternative keeps them and zeroes
them in place (``set_to_none=False``), after which backward accumulates into them. Reference: the
kept-and-zeroed design, run in the same process on the same model, batch and fused Adam, in
alternating rounds. Prints the median step of each and their ratio; writes
benchmarks/results/grad_buffers.json.

    .venv/bin/python benchmarks/grad_buffers.py [--tokens 128] [--rounds 6]
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from sift.atomic import write_json  # noqa: E402
from sift.env import set_default_env  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens in the training sequence")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (2 steps per design each)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grad_buffers.json")
    args = parser.parse_args()
    set_default_env()
    import torch

    from sift.model import load_causal_lm

    model, _ = load_causal_lm()
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5, fused=True)

    def step(set_to_none: bool) -> None:
        optimizer.zero_grad(set_to_none=set_to_none)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: Adam state allocated, kernels loaded
        step(True)
    seconds: dict[str, list[float]] = {"freed (ours)": [], "kept and zeroed (reference)": []}
    for _ in range(args.rounds):
        for name, set_to_none in (("freed (ours)", True), ("kept and zeroed (reference)", False)):
            t = time.perf_counter()
            step(set_to_none)
            step(set_to_none)
            seconds[name].append((time.perf_counter() - t) / 2)
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    ratio = medians["kept and zeroed (reference)"] / medians["freed (ours)"]
    for name, v in seconds.items():
        print(f"{name:28s} median step {medians[name]:.3f} s (min {min(v):.3f} s)")
    print(f"reference / ours = {ratio:.3f} (above 1: freeing the gradients is faster)")
    out = {"command": " ".join([sys.executable, *sys.argv]), "tokens": args.tokens, "rounds": args.rounds,
           "torch_threads": torch.get_num_threads(), "seconds": seconds, "median_seconds": medians,
           "reference_over_ours": ratio}
    write_json(args.out, out, indent=2)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
