"""Writing a folder or a JSON file all at once: readers see the old one or the new one, never half.

A crash (even kill -9) while writing leaves only a hidden ``.NAME.tmp-*`` sibling behind, which no
reader trusts; the finished folder or file appears with one ``rename``.

A folder writer declares the kind of folder it writes (a ``FolderKind``: ``sift-index``,
``sift-corpus``) and records it as ``"kind"`` in the folder's ``manifest.json``. An existing folder
is replaced only when it is empty, or when it is recognisably a folder of the same kind holding only
the files that kind writes and either holds the same thing (same identity: a rebuild) or the caller
passes ``force``. Anything else (a folder of the user's, another kind, extra files) is refused with a
``ValueError`` and left untouched. The current directory, the home folder, the filesystem root, the
state folder and the caller's inputs (or any folder containing them) are refused even with ``force``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def _no_legacy(manifest: dict) -> bool:
    return False


@dataclass(frozen=True)
class FolderKind:
    """What a folder writer makes, and how to recognise such a folder already on disk.

    ``name``: stored as ``"kind"`` in ``manifest.json``; ``noun``: for messages ("an index");
    ``files``: every entry the writer puts in the folder (``manifest.json`` included): a folder
    holding anything else also holds something of the user's; ``identity_keys``: the manifest
    fields that say *what* the folder holds (two folders agreeing on them are rebuilds of one
    another); ``legacy``: recognises a manifest written before ``"kind"`` existed;
    ``describe``: a manifest → a few words naming what it holds (messages).
    """

    name: str
    noun: str
    files: tuple[str, ...]
    identity_keys: tuple[str, ...] = ()
    legacy: Callable[[dict], bool] = _no_legacy
    describe: Callable[[dict], str] | None = None

    def identity(self, manifest: dict) -> dict[str, Any]:
        """The fields of ``manifest`` that say what the folder holds."""
        return {key: manifest.get(key) for key in self.identity_keys}

    def recognises(self, manifest: dict | None) -> bool:
        """Whether ``manifest`` (None: missing or unreadable) is one this kind of writer wrote."""
        if not isinstance(manifest, dict):
            return False
        if "kind" in manifest:
            return manifest["kind"] == self.name
        return self.legacy(manifest)

    def what(self, manifest: dict) -> str:
        """A few words on what a folder of this kind with ``manifest`` holds."""
        if self.describe is not None:
            return self.describe(manifest)
        return f"{self.noun} ({', '.join(f'{k} {v}' for k, v in self.identity(manifest).items())})"


def _listing(names: Iterable[str], limit: int = 4) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def _protected(protect: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(what, absolute path) of every folder an output must never be or contain."""
    from sift.env import state_dir

    places: list[tuple[str, Path]] = [("the current directory", Path.cwd())]
    try:
        places.append(("your home folder", Path.home()))
    except RuntimeError:  # no HOME: nothing to protect there
        pass
    places.append(("the state folder", state_dir(create=False)))
    for path in protect:
        path = Path(path).expanduser()
        if path.exists():  # a hub dataset name is not a path: nothing on disk to protect
            places.append((f"the input {str(path)!r}", path))
    return [(what, path.resolve()) for what, path in places]


def check_out_dir(out_dir: str | Path, kind: FolderKind, identity: dict | None = None, *, force: bool = False,
                  protect: Iterable[str | Path] = ()) -> None:
    """Raise a one-line ``ValueError`` unless writing ``kind`` into ``out_dir`` would replace nothing
    but a folder of that kind the caller may replace; cheap (reads one manifest), writes nothing.

    Accepted: a missing ``out_dir``; an empty folder; a folder ``kind`` recognises, holding only
    ``kind.files``, whose identity equals ``identity`` (a rebuild) or with ``force``.
    ``identity=None`` compares nothing: a preflight before the identity is known, or a kind whose
    folders are interchangeable caches. Refused even with ``force``: the filesystem root, the
    current directory, the home folder, the state folder, any of ``protect`` (the writer's inputs)
    and any folder containing one of them.
    """
    out = Path(out_dir).expanduser().resolve()
    if out == Path(out.anchor):
        raise ValueError(f"refusing to write {kind.noun} into {out}: it is the filesystem root; choose another --out")
    for what, place in _protected(protect):
        if out == place or out in place.parents:
            where = what if out == place else f"a folder containing {what} ({place})"
            raise ValueError(f"refusing to replace {out}: it is {where}; choose another --out "
                             "(--force does not apply here)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose another --out")
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    manifest = read_json_or_none(out / MANIFEST)
    if not kind.recognises(manifest):
        other = manifest.get("kind") if isinstance(manifest, dict) else None
        held = f"it is a {other} folder" if isinstance(other, str) else f"it holds {_listing(entries)}"
        raise ValueError(f"{out} is not {kind.noun} folder ({held}); nothing was changed: choose another --out, "
                         "or an empty or new folder")
    extra = sorted(set(entries) - set(kind.files))
    if extra:
        raise ValueError(f"{out} holds {kind.noun} but also {_listing(extra)}, which sift-ttft did not write; "
                         "move those out or choose another --out")
    if force or identity is None:
        return
    assert manifest is not None  # recognised above
    if kind.identity(manifest) != identity:
        raise ValueError(f"{out} holds {kind.what(manifest)}, not {kind.what(identity)}; "
                         "pass --force to replace it, or choose another --out")


@contextmanager
def atomic_dir(out_dir: Path, kind: FolderKind, identity: dict | None = None, *, force: bool = False,
               protect: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir``; on normal exit it replaces ``out_dir``.

    ``check_out_dir(out_dir, kind, identity, force=, protect=)`` runs before anything is written
    and again just before the replacement (another process may have written there meanwhile): a
    refused ``out_dir`` is never touched. The block must write ``manifest.json`` with
    ``"kind": kind.name`` and only ``kind.files`` (else the next write would not recognise the folder
    as its own and refuse it). Replacement: the old folder (if any) is renamed aside, the new one
    renamed into place, the old one deleted. On an exception the temporary folder is removed and
    ``out_dir`` is left as it was.
    """
    protect = list(protect)
    out_dir = Path(out_dir).expanduser().resolve()
    check_out_dir(out_dir, kind, identity, force=force, protect=protect)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.time_ns()}"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{stamp}")
    tmp.mkdir()
    try:
        yield tmp
        written = read_json_or_none(tmp / MANIFEST)
        if not isinstance(written, dict) or written.get("kind") != kind.name:
            raise RuntimeError(f"a {kind.name} writer must record \"kind\": {kind.name!r} in {MANIFEST}")
        unexpected = sorted({p.name for p in tmp.iterdir()} - set(kind.files))
        if unexpected:
            raise RuntimeError(f"a {kind.name} writer wrote {unexpected}, not declared in its FolderKind.files")
        check_out_dir(out_dir, kind, identity, force=force, protect=protect)
        old = out_dir.with_name(f".{out_dir.name}.old-{stamp}")
        if out_dir.exists():
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a hidden temporary sibling named per process and
    thread (two writers never share one), then one ``os.replace``; creates the parent folder.
    Readers see the old file or the whole new one, never a truncated one. Returns ``path``."""
    import threading

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> Path:
    """``write_text`` of ``json.dumps(obj, indent=indent, default=default)``, with a final newline."""
    import json

    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any], default: Callable[[Any], Any] | None = None) -> Path:
    """``write_text`` of one ``json.dumps(row)`` line per row (JSON Lines)."""
    import json

    return write_text(path, "".join(json.dumps(row, default=default) + "\n" for row in rows))


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
