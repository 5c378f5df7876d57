"""MLflow names and values: metric keys, param keys and param values, config flattening.

MLflow refuses some characters in keys and values longer than its limit; everything tracking writes
passes through here so a key or value never makes a logging call fail.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def metric_key(*parts: Any) -> str:
    """Join parts with "/" after replacing every character MLflow refuses in a key
    (allowed: ``[A-Za-z0-9_-. :/]``) by "_"; "/" inside a part becomes "_" too so parts stay parts."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", str(p)) for p in parts)


def clean_key(key: str) -> str:
    """``key`` with every character MLflow refuses (allowed: ``[A-Za-z0-9_-. :/]``) replaced by "_"."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key))


def param_value(value: Any) -> str:
    """``value`` as an MLflow param string: lists, tuples and dicts as JSON, anything else ``str``;
    longer than ``MAX_PARAM_CHARS`` → cut, ending in "...(truncated)" (MLflow would refuse the whole batch)."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 15] + "...(truncated)"


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """A pydantic model or mapping → {"key" or "outer.inner": str} (keys ``clean_key``'d, values
    ``param_value``'d: lists become JSON strings); ``ValueError`` for anything else."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a pydantic model or a mapping, got {type(config).__name__}")
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[clean_key(name)] = param_value(value)
    return flat

