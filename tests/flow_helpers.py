"""Helpers shared by the flow tests (tiny configs, comparing rows, the Prefect API URL)."""

from __future__ import annotations

import json
from pathlib import Path

# What differs between two runs that computed the same thing: wall-clock seconds.
VOLATILE_KEYS = ("seconds",)


def tiny_index_config(corpus: Path, encoder: Path, lm: Path, out: Path, **overrides):
    from flows.config import IndexConfig

    values = dict(corpus=[str(corpus)], embedder=str(encoder), model=str(lm), max_tokens=8, shard_size=8, out=out)
    values.update(overrides)
    return IndexConfig(**values)


def tiny_evaluate_config(index: Path, prompts: Path, lm: Path, **overrides):
    from flows.config import EvaluateConfig

    values = dict(index=index, prompts=prompts, model=str(lm), method=["base", "nn", "sift"], n=3, k=12,
                  max_tokens=32, lam=0.1, tracking=False)
    values.update(overrides)
    return EvaluateConfig(**values)


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without their timing fields (equal results, different clocks)."""
    return [{k: v for k, v in row.items() if k not in VOLATILE_KEYS} for row in rows]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def prefect_api_url() -> str:
    """The URL of the session's test server (prefect_test_harness), for subprocesses and workers."""
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer().api_url
