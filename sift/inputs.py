"""Checks of the user's inputs before any work: corpus and prompt files, model and embedder folders, an
index folder. Each failure is an ``InputError`` whose message is one line naming the input (and, in a
file, the line or item) and saying what to do.

Pure and cheap: nothing here loads a model, starts a server or writes anything; only the standard
library at import (``sift.index`` and ``pyarrow`` are imported inside the functions that need them).
``flows/preflight.py`` runs these for each command before a Prefect server starts.

What each check costs:
- a JSONL/JSON corpus file is read once and every line parsed (``json.loads``), so that a broken
  line is reported with its number: about 1 s per 100 MB on one core (measured on 2-core machine,
  200k lines of ~500 bytes). This is the only check that reads a whole file.
- text files (.txt/.md/.py) and the start of JSONL files: the first ``SNIFF_BYTES`` only
  (``not_text_reason``); a parquet file: its footer (schema and row count) only.
- an index folder: its manifest and the sizes of its files (no faiss read: ``sift.index.load_index``
  does that when the index is used).
- a model or embedder folder: the names of its files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# The rule for "not a text file", stated once: the `corpus` flag's help quotes NOT_TEXT_RULE.
SNIFF_BYTES = 8192
MAX_UNDECODABLE_FRACTION = 0.30
NOT_TEXT_RULE = "a NUL byte in its first 8 KiB, or more than 30 % of its first 8 KiB not valid UTF-8"

# The corpus formats ``sift.corpus.load_documents`` reads (its TEXT_SUFFIXES / TABLE_SUFFIXES; kept
# equal by tests/test_preflight.py, not imported, so that this module stays free of ``datasets``).
TEXT_SUFFIXES = (".txt", ".md", ".py")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")
# File suffixes that make a missing name a local path (a hub id never ends in one).
_FILE_SUFFIXES = TEXT_SUFFIXES + TABLE_SUFFIXES + (".csv", ".gguf", ".safetensors", ".bin")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


class InputError(ValueError):
    """Bad input found before any work starts: one line naming the input and what to do.

    The CLI prints it as ``error: <message>`` and exits 2, like a bad flag."""


def _q(path: str | Path) -> str:
    return repr(str(path))


# ------------------------------------------------------------------------------------- paths


def looks_local(raw: str) -> bool:
    """Whether a name that does not exist on disk was meant as a local path rather than a hub id.

    Local: it starts with ``.``, ``/`` or ``~``; holds a backslash or more than one ``/`` (a hub id is
    ``name`` or ``org/name``); or ends in a file suffix (``.jsonl``, ``.txt``, ``.safetensors``, ...).
    """
    raw = str(raw).strip()
    if raw.startswith((".", "/", "~")) or "\\" in raw or (os.sep != "/" and os.sep in raw):
        return True
    if raw.count("/") > 1:
        return True
    return Path(raw.split(":")[0]).suffix.lower() in _FILE_SUFFIXES


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``; the entry points default it to 1)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_model_cached(repo_id: str) -> bool:
    """Whether ``repo_id``'s config.json is in the local hub cache (usable with the hub offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library refuses is not cached either
        return False


def _hub_dataset_cached(name: str) -> bool:
    """Whether a hub dataset ``name`` (``[org/]name[:split]``) has a folder in the datasets cache."""
    base = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "datasets")
    folder = name.split(":")[0].replace("/", "___")
    return (Path(base) / folder).is_dir()


# ------------------------------------------------------------------------------------- text sniffing


def _undecodable_bytes(data: bytes) -> int:
    """Bytes of ``data`` that are not valid UTF-8 (an incomplete character cut at the end is not counted)."""
    bad, start = 0, 0
    while start < len(data):
        try:
            data[start:].decode("utf-8")
            break
        except UnicodeDecodeError as err:
            if err.reason == "unexpected end of data" and start + err.end >= len(data):
                break  # the block ends inside a character
            bad += err.end - err.start
            start += err.end
    return bad


def not_text_reason(data: bytes) -> Optional[str]:
    """Why a file whose first bytes are ``data`` is not text (``NOT_TEXT_RULE``), or None when it is.

    ``data``: the file's first ``SNIFF_BYTES`` bytes (more are ignored)."""
    data = data[:SNIFF_BYTES]
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"a NUL byte at offset {nul}"
    if data:
        bad = _undecodable_bytes(data)
        if bad > MAX_UNDECODABLE_FRACTION * len(data):
            return f"{100 * bad / len(data):.0f} % of its first {len(data)} bytes are not valid UTF-8"
    return None


def _sniff(path: Path, what: str) -> bytes:
    """The first ``SNIFF_BYTES`` of ``path``; ``InputError`` when unreadable or not text."""
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as err:
        raise InputError(f"{what} {_q(path)} cannot be read ({err.strerror}): check its permissions") from None
    reason = not_text_reason(head)
    if reason is not None:
        raise InputError(f"{what} {_q(path)} is not a text file ({reason}; refused when it has {NOT_TEXT_RULE}): "
                         "give a UTF-8 text, JSONL or parquet file")
    return head


# ------------------------------------------------------------------------------------- JSON rows


@dataclass
class Row:
    """One record of a JSONL/JSON file: where it is (``line`` in JSONL, ``item`` in a JSON array) and its value."""

    where: str  # "line 7" or "item 3"
    value: object


def iter_json_rows(path: Path, what: str) -> Iterator[Row]:
    """Every record of a JSONL file (one JSON value per non-blank line) or of a JSON file holding an
    array; ``InputError`` with the file and line (and column) of the first one that is not JSON.

    Bytes that are not UTF-8 are read as U+FFFD, as ``sift.corpus.load_documents`` does."""
    head = _sniff(path, what)
    if path.suffix.lower() == ".json" and head.lstrip().startswith(b"["):
        text = path.read_bytes().decode("utf-8", errors="replace")
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{what} {_q(path)} line {err.lineno} column {err.colno} is not JSON ({err.msg}): "
                             "fix the file (a JSON array of objects, or one object per line)") from None
        for i, item in enumerate(items, start=1):
            yield Row(f"item {i}", item)
        return
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                shown = line.strip()
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise InputError(f"{what} {_q(path)} line {line_no} is not JSON ({err.msg} at column {err.colno}: "
                                 f"{shown!r}): fix or remove that line") from None
            yield Row(f"line {line_no}", value)


def _type_name(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------- corpus


def check_corpus_table(path: Path) -> int:
    """Check one JSONL/JSON/parquet corpus file; return its number of records with a non-empty text.

    JSONL/JSON: every record is a JSON object with a ``text`` field that is a string (null or "" is an
    empty document, skipped when loading); parquet: readable, a string ``text`` column, at least one row.
    """
    what = "corpus file"
    if path.suffix.lower() == ".parquet":
        return _check_parquet(path)
    texts = rows = 0
    for row in iter_json_rows(path, what):
        rows += 1
        if not isinstance(row.value, dict):
            raise InputError(f"{what} {_q(path)} {row.where} is {_type_name(row.value)}, not a JSON object: "
                             "give one object with a 'text' field per line")
        if "text" not in row.value:
            keys = ", ".join(list(row.value)[:6]) or "none"
            raise InputError(f"{what} {_q(path)} {row.where} has no 'text' field (its fields: {keys}): "
                             "give every record a 'text' string (optional 'id', 'domain', 'source')")
        text = row.value["text"]
        if text is not None and not isinstance(text, str):
            raise InputError(f"{what} {_q(path)} {row.where}: 'text' is {_type_name(text)}, not a string")
        texts += bool(text and text.strip())
    if not rows:
        raise InputError(f"{what} {_q(path)} is empty: give one JSON object with a 'text' field per line")
    return texts


def _check_parquet(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        schema = metadata.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as err:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"corpus file {_q(path)} is not a readable parquet file ({cause}): "
                         "rewrite it, or give JSONL") from None
    if "text" not in schema.names:
        raise InputError(f"corpus file {_q(path)} has no 'text' column (columns: {', '.join(schema.names)}): "
                         "give a 'text' string column")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise InputError(f"corpus file {_q(path)}: column 'text' holds {kind}, not strings")
    if metadata.num_rows == 0:
        raise InputError(f"corpus file {_q(path)} is empty (0 rows)")
    return metadata.num_rows


def check_text_file(path: Path, what: str = "corpus file") -> bool:
    """Check one .txt/.md/.py document: readable and text (``NOT_TEXT_RULE``); return whether it holds
    anything but whitespace (an empty document is skipped when loading)."""
    head = _sniff(path, what)
    if head.strip():
        return True
    return len(head) == SNIFF_BYTES and bool(path.read_bytes().strip())


def check_corpus_path(raw: str) -> int:
    """Check one ``--corpus`` value (a file, a folder, or a hub dataset name); return a lower bound of
    the non-empty documents it holds (0: none; a hub dataset counts 1 as it is not read here)."""
    path = Path(raw).expanduser()
    if path.is_dir():
        return _check_corpus_folder(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            found = check_corpus_table(path)
        elif suffix in TEXT_SUFFIXES:
            found = int(check_text_file(path))
            if not found:
                raise InputError(f"corpus file {_q(raw)} is empty")
        else:
            raise InputError(f"corpus file {_q(raw)} has an unknown type ({suffix or 'no suffix'}): use "
                             ".jsonl/.json/.parquet (with 'text') or .txt/.md/.py")
        if not found:
            raise InputError(f"corpus file {_q(raw)} holds no non-empty 'text'")
        return found
    if path.exists():
        raise InputError(f"corpus path {_q(raw)} is neither a file nor a folder: give a file or a folder")
    if looks_local(raw):
        raise InputError(f"corpus path {_q(raw)} does not exist: check the path")
    if (hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "0") in ("1", "true")) and not _hub_dataset_cached(raw):
        raise InputError(f"corpus path {_q(raw)} does not exist (no such file or folder), and with the hub offline "
                         "(HF_HUB_OFFLINE=1) it is not loaded as a hub dataset either: check the path, or set "
                         "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to load it from the hub")
    return 1  # a hub dataset: the loader reads it


def _check_corpus_folder(folder: Path) -> int:
    """Every file the loader would read in ``folder`` (hidden ones skipped, as it does)."""
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts))
    text_files = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    table_files = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    if not text_files and not table_files:
        listed = f"it holds {len(files)} other file(s)" if files else "it is empty"
        raise InputError(f"corpus folder {_q(folder)} holds no .txt/.md/.py/.jsonl/.json/.parquet file ({listed}): "
                         "give a folder of text files or a JSONL/parquet file")
    found = sum(check_corpus_table(p) for p in table_files)
    found += sum(check_text_file(p) for p in text_files)
    if not found:
        raise InputError(f"corpus folder {_q(folder)} holds no non-empty document")
    return found


def check_corpus(paths: list[str]) -> None:
    """Check every ``--corpus`` value (``check_corpus_path``)."""
    for raw in paths:
        check_corpus_path(raw)


# ------------------------------------------------------------------------------------- prompts


def read_prompts(path: str | Path) -> list[dict]:
    """The prompts of a JSONL file: ``{"id", "text", "domain", "doc_id"}`` per non-blank line.

    Each line is a JSON object with a non-empty ``text``; ``id`` defaults to the line number,
    ``domain`` to "", ``doc_id`` to the id. ``InputError`` names the file and the line otherwise
    (an empty file, a line that is not JSON or not UTF-8, a missing text)."""
    path = Path(path).expanduser()
    what = "prompts file"
    if path.is_dir():
        raise InputError(f"{what} {_q(path)} is a folder: give a JSONL file (id, text, domain, doc_id)")
    if not path.is_file():
        raise InputError(f"{what} {_q(path)} does not exist: check the path")
    _sniff(path, what)
    prompts = []
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise InputError(f"{what} {_q(path)} line {line_no} is not valid UTF-8 (byte {err.start + 1} of "
                                 "the line): save the file as UTF-8") from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{what} {_q(path)} line {line_no} is not JSON ({err.msg} at column {err.colno}): "
                                 "fix or remove that line") from None
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{what} {_q(path)} line {line_no}: 'text' is missing or empty")
            pid = str(row.get("id", line_no))
            prompts.append({"id": pid, "text": text, "domain": str(row.get("domain", "")),
                            "doc_id": str(row.get("doc_id", pid))})
    if not prompts:
        raise InputError(f"{what} {_q(path)} is empty: give one JSON object per line with a 'text' field")
    return prompts


# ------------------------------------------------------------------------------------- models


def check_model_source(value: Optional[str], flag: str, *, need_weights: bool = True) -> None:
    """Check a ``--model``/``--embedder`` value that is not None: an existing folder must hold
    ``config.json``, tokenizer files and (``need_weights``) weights; a missing name that looks local
    (``looks_local``) is a missing path; a possible hub id is refused only when the hub is offline and
    it is not in the hub cache."""
    raw = str(value)
    if not raw.strip():
        raise InputError(f"{flag} is empty: give a model folder, or leave the flag out for the default")
    path = Path(raw).expanduser()
    if path.exists():
        check_model_folder(path, flag, need_weights=need_weights)
        return
    if looks_local(raw):
        raise InputError(f"{flag} {_q(raw)} does not exist (no such folder): check the path")
    if hub_offline() and not _hub_model_cached(raw):
        raise InputError(f"{flag} {_q(raw)} is not a local folder (no such path), and the hub is offline "
                         "(HF_HUB_OFFLINE=1) with no cached copy: check the path, or set HF_HUB_OFFLINE=0 to "
                         "download it from the hub")


def check_model_folder(path: Path, flag: str, *, need_weights: bool = True) -> None:
    """An existing path given as a model: a folder with config.json, tokenizer files and weights."""
    save_hint = "give a folder written by save_pretrained (config.json, weights, tokenizer files)"
    if not path.is_dir():
        raise InputError(f"{flag} {_q(path)} is a file, not a model folder: {save_hint}")
    names = {p.name for p in path.iterdir()}
    if "config.json" not in names:
        raise InputError(f"{flag} {_q(path)} is not a model folder (no config.json): {save_hint}")
    if not names & set(TOKENIZER_FILES):
        raise InputError(f"{flag} {_q(path)} is not a model folder (no tokenizer file: none of "
                         f"{', '.join(TOKENIZER_FILES[:4])}, ...): {save_hint}")
    if need_weights and not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise InputError(f"{flag} {_q(path)} is not a model folder (no weights: no .safetensors or .bin file): "
                         f"{save_hint}")


def check_package(module: str, package: str, flag: str, what: str) -> None:
    """The default ``what`` (a bundled model) ships in pip package ``package``: it must be installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"the default {what} needs the package {package!r} (pip install {package}), "
                         f"or pass {flag} FOLDER")


# ------------------------------------------------------------------------------------- index


def check_index_folder(index_dir: str | Path, flag: str = "--index") -> dict:
    """Check an index folder without loading it; return its manifest.

    Its ``manifest.json`` is JSON with ``fingerprint`` and ``embedder_id``; every file the index needs
    is present with the byte size the manifest recorded (``sift.index.check_index_files``, which
    ``load_index`` applies too before it reads faiss; only sizes, so a large index is checked in milliseconds); the
    embedder folder it was built with still exists (queries are embedded with it)."""
    from sift.index import check_index_files, read_index_manifest

    folder = Path(index_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {_q(folder)} is a file, not an index folder: give the folder `sift-ttft index` wrote")
    try:
        manifest = read_index_manifest(folder)  # names manifest.json when it is not JSON
    except ValueError as err:
        raise InputError(f"{flag}: {err}") from None
    where = folder / "manifest.json"
    if not isinstance(manifest, dict):
        raise InputError(f"{flag}: {where} holds {_type_name(manifest)}, not an index manifest: "
                         "rebuild the index with `sift-ttft index`")
    for key in ("fingerprint", "embedder_id"):
        if key not in manifest:
            raise InputError(f"{flag}: {where} lacks {key!r}: rebuild the index with `sift-ttft index`")
    try:
        check_index_files(folder, manifest)
    except ValueError as err:
        raise InputError(f"{flag}: {err}") from None
    spec = manifest.get("embedder")
    source = spec.get("name_or_path") if isinstance(spec, dict) else spec
    if isinstance(source, str) and source and looks_local(source) and not Path(source).expanduser().exists():
        raise InputError(f"{flag}: index {folder} was built with the embedder in {source}, which no longer exists "
                         "(queries must be embedded by it): restore that folder or rebuild the index")
    return manifest
