"""Plain JSON values from library objects: what results and cached task outputs are stored as."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, dicts, lists/tuples, numpy arrays and scalars, Paths → plain JSON values
    (dict keys become strings; anything else is returned as it is)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dataclass_from_jsonable(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` for a dataclass ``cls``, ignoring keys that are not its fields (derived or
    extra values a stored record carries beside them)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in fields})
