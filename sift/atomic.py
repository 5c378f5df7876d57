"""Writing a folder or a JSON file all at once: readers see the old one or the new one, never half.

A crash (even kill -9) while writing leaves only a hidden ``.NAME.tmp-*`` sibling behind, which no
reader trusts; the finished folder or file appears with one ``rename``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir``; on normal exit it replaces ``out_dir``.

    Replacement: the old folder (if any) is renamed aside, the new one renamed into place, the old
    one deleted. On an exception the temporary folder is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.time_ns()}"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{stamp}")
    tmp.mkdir()
    try:
        yield tmp
        old = out_dir.with_name(f".{out_dir.name}.old-{stamp}")
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``json.dumps(obj, indent=indent, default=default)`` to ``path`` atomically (a hidden
    per-process temporary sibling, then one ``os.replace``), creating the parent folder; returns ``path``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=indent, default=default))
    os.replace(tmp, path)
    return path


def read_json_or_none(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing or unreadable as JSON (a
    manifest that a crash left behind is treated as absent, so the work is redone)."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
