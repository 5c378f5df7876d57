"""Corpus loading, cutting documents into token-bounded sequences, and content fingerprints.

A *document* is a row ``{id, text, domain, source}``; a *sequence* (the unit SIFT selects and the
model trains on) is a piece of one document of at most ``max_tokens`` tokens of the base model's
tokenizer, with its character span in the document. Everything goes through ``datasets`` so that a
corpus larger than memory stays on disk as Arrow.

Accepted corpus paths (``load_documents``):
- ``*.jsonl`` / ``*.json`` / ``*.parquet`` files with a ``text`` field (optional ``id``, ``domain``,
  ``source``; defaults: ``<file stem>:<row>``, the file stem, the file path);
- folders: every ``.txt``/``.md``/``.py``/``.jsonl``/``.json``/``.parquet`` below it; text files are
  one document each (id = path relative to the folder, domain = the folder's name);
- anything else that does not exist locally is tried as a Hugging Face hub dataset name
  (``name`` or ``name:split``), for users who have the hub.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets

log = logging.getLogger(__name__)

DOCUMENT_COLUMNS = ("id", "text", "domain", "source")
SEQUENCE_COLUMNS = ("seq_id", "doc_id", "domain", "source", "text", "char_start", "char_end", "n_tokens")
TEXT_SUFFIXES = (".txt", ".md", ".py")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class LoadReport:
    """What ``load_documents`` saw: pass one in to get the counts (the flow logs them)."""

    files: int = 0
    documents: int = 0
    empty_skipped: int = 0  # empty or whitespace-only texts (also null texts)
    replaced_bytes: int = 0  # bytes that were not valid UTF-8, decoded as U+FFFD
    documents_with_replacements: int = 0
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ChunkReport:
    """What ``chunk_documents`` saw."""

    documents: int = 0
    sequences: int = 0
    empty_skipped: int = 0  # documents with no tokens
    short_dropped: int = 0  # trailing pieces below ``min_tokens``
    truncated_documents: int = 0  # documents cut off at ``max_chunks_per_doc``

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# Decoding bytes: replace what is not UTF-8 and count it (an error would lose the whole corpus).


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode ``data`` as UTF-8, replacing invalid bytes with U+FFFD; return (text, bad byte count)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    bad = 0
    pieces: list[str] = []
    start = 0
    while True:
        try:
            pieces.append(data[start:].decode("utf-8"))
            break
        except UnicodeDecodeError as err:
            pieces.append(data[start : start + err.start].decode("utf-8"))
            pieces.append("\ufffd")
            bad += err.end - err.start
            start += err.end
    return "".join(pieces), bad


def _file_is_utf8(path: Path, block: int = 1 << 24) -> bool:
    """True when the whole file decodes as UTF-8 (checked in blocks, so big files stay cheap)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(block):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Loading documents.


def _text_file_rows(folder: Path, files: list[Path], report: LoadReport) -> dict[str, list]:
    rows: dict[str, list] = {c: [] for c in DOCUMENT_COLUMNS}
    bad_total = 0
    for path in files:
        text, bad = decode_utf8(path.read_bytes())
        bad_total += bad
        report.documents_with_replacements += bad > 0
        rows["id"].append(path.relative_to(folder).as_posix() if folder != path else path.name)
        rows["text"].append(text)
        rows["domain"].append(folder.name if folder != path else path.stem)
        rows["source"].append(str(path))
    report.replaced_bytes += bad_total
    return rows


def _load_table(path: Path, report: LoadReport) -> datasets.Dataset:
    """One JSONL/JSON/parquet file as a Dataset with the four document columns."""
    suffix = path.suffix.lower()
    builder = "parquet" if suffix == ".parquet" else "json"
    data_file = path
    if builder == "json" and not _file_is_utf8(path):
        # pyarrow's JSON reader refuses invalid UTF-8: repair a copy, count what was replaced.
        text, bad = decode_utf8(path.read_bytes())
        report.replaced_bytes += bad
        report.documents_with_replacements += sum("\ufffd" in line for line in text.splitlines())
        tmp = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8")
        with tmp:
            tmp.write(text)
        data_file = Path(tmp.name)
    try:
        ds = datasets.load_dataset(builder, data_files=str(data_file), split="train")
    except Exception as err:  # datasets wraps parse errors in several types
        raise ValueError(f"corpus file {path} could not be read as {builder}: {err}") from err
    finally:
        if data_file != path:
            os.unlink(data_file)
    return _normalise_columns(ds, default_id_prefix=path.stem, default_domain=path.stem, default_source=str(path))


def _normalise_columns(
    ds: datasets.Dataset, default_id_prefix: str, default_domain: str, default_source: str
) -> datasets.Dataset:
    if "text" not in ds.column_names:
        raise ValueError(
            f"corpus {default_source} has no 'text' field (columns: {ds.column_names}); "
            "give each record a 'text' string (optional 'id', 'domain', 'source')"
        )
    if ds.features["text"].dtype not in ("string", "large_string", "null"):
        raise ValueError(f"corpus {default_source}: field 'text' must be a string, found {ds.features['text'].dtype}")

    def fill(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        n = len(indices)
        ids = batch.get("id") or [None] * n
        domains = batch.get("domain") or [None] * n
        sources = batch.get("source") or [None] * n
        return {
            "id": [str(x) if x is not None else f"{default_id_prefix}:{i}" for x, i in zip(ids, indices)],
            "text": [t if t is not None else "" for t in batch["text"]],
            "domain": [str(d) if d is not None else default_domain for d in domains],
            "source": [str(s) if s is not None else default_source for s in sources],
        }

    features = datasets.Features({c: datasets.Value("string") for c in DOCUMENT_COLUMNS})
    return ds.map(fill, batched=True, with_indices=True, remove_columns=ds.column_names, features=features)


def _load_hub(name: str) -> datasets.Dataset:
    split = "train"
    if ":" in name:
        name, split = name.rsplit(":", 1)
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:
        raise ValueError(
            f"corpus path '{name}' does not exist locally and could not be loaded as a hub dataset ({err}); "
            "give a JSONL/parquet file or a folder of .txt/.md/.py files, or set HF_HUB_OFFLINE=0 "
            "HF_DATASETS_OFFLINE=0 if you have the Hugging Face hub"
        ) from err
    return _normalise_columns(ds, default_id_prefix=name, default_domain=name.split("/")[-1], default_source=name)


def load_documents(paths: Sequence[str | Path], report: LoadReport | None = None) -> datasets.Dataset:
    """Load documents from files, folders or hub names into one Dataset (columns id, text, domain, source).

    Contract: empty and whitespace-only texts are dropped and counted in ``report.empty_skipped``;
    bytes that are not UTF-8 are decoded as U+FFFD and counted in ``report.replaced_bytes``;
    document ids are unique across all paths (a repeat raises ``ValueError``, since the prompt's own
    document is excluded from retrieval by id).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("paths is empty: give at least one corpus file, folder or hub dataset name")
    report = report if report is not None else LoadReport()
    parts: list[datasets.Dataset] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            parts.extend(_load_folder(path, report))
        elif path.is_file():
            report.files += 1
            parts.append(_load_path(path, report))
        elif path.exists():
            raise ValueError(f"corpus path {raw} is neither a file nor a folder: give a file or a folder")
        elif _looks_local(str(raw)):
            raise ValueError(f"corpus path {raw} does not exist: check the path")
        else:
            parts.append(_load_hub(str(raw)))
        report.sources.append(str(raw))
    docs = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    before = len(docs)
    docs = docs.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
    report.empty_skipped += before - len(docs)
    report.documents = len(docs)
    _check_unique_ids(docs)
    if report.empty_skipped or report.replaced_bytes:
        log.warning(
            "corpus: skipped %d empty document(s); replaced %d non-UTF-8 byte(s) in %d document(s)",
            report.empty_skipped, report.replaced_bytes, report.documents_with_replacements,
        )
    if len(docs) == 0:
        raise ValueError(f"corpus {list(map(str, paths))} holds no non-empty document")
    return docs


def _looks_local(raw: str) -> bool:
    """A missing path is a typo, not a hub name, when it has a file suffix or several path parts."""
    suffix = Path(raw.split(":")[0]).suffix.lower()
    return suffix in TABLE_SUFFIXES + TEXT_SUFFIXES or raw.startswith((".", "/", "~")) or raw.count("/") > 1


def _load_path(path: Path, report: LoadReport) -> datasets.Dataset:
    if not os.access(path, os.R_OK):
        raise ValueError(f"corpus file {path} is not readable: check its permissions")
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _load_table(path, report)
    if path.suffix.lower() in TEXT_SUFFIXES:
        return datasets.Dataset.from_dict(_text_file_rows(path, [path], report))
    raise ValueError(
        f"corpus file {path} has an unknown type; use .jsonl/.json/.parquet (with 'text') or .txt/.md/.py"
    )


def _load_folder(folder: Path, report: LoadReport) -> list[datasets.Dataset]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts))
    text_files = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    table_files = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    if not text_files and not table_files:
        raise ValueError(f"corpus folder {folder} holds no .txt/.md/.py/.jsonl/.json/.parquet file")
    unreadable = [p for p in files if not os.access(p, os.R_OK)]
    if unreadable:
        raise ValueError(f"corpus file {unreadable[0]} is not readable: check its permissions")
    report.files += len(text_files) + len(table_files)
    parts = [_load_table(p, report) for p in table_files]
    if text_files:
        features = datasets.Features({c: datasets.Value("string") for c in DOCUMENT_COLUMNS})
        parts.append(datasets.Dataset.from_dict(_text_file_rows(folder, text_files, report), features=features))
    return parts


def _check_unique_ids(docs: datasets.Dataset) -> None:
    seen: set[str] = set()
    for doc_id in docs["id"]:
        if doc_id in seen:
            raise ValueError(
                f"document id {doc_id!r} occurs more than once in the corpus; ids must be unique "
                "(rename the 'id' field, or drop it to get '<file stem>:<row>' ids)"
            )
        seen.add(doc_id)


def documents_from_records(records: Iterable[dict[str, Any]]) -> datasets.Dataset:
    """Build a document Dataset from in-memory dicts (``text`` required; ``id``/``domain``/``source``
    default as for files). Empty texts are kept here; ``chunk_documents`` skips and counts them."""
    rows = list(records)
    if not rows:
        raise ValueError("records is empty: give at least one document")
    if any("text" not in r for r in rows):
        raise ValueError("every record needs a 'text' field")
    table = {c: [None if r.get(c) is None else str(r[c]) for r in rows] for c in DOCUMENT_COLUMNS}
    return _normalise_columns(
        datasets.Dataset.from_dict(table), default_id_prefix="doc", default_domain="default", default_source="memory"
    )


# --------------------------------------------------------------------------------------------
# Cutting documents into sequences.


def chunk_documents(
    docs: datasets.Dataset,
    tokenizer,
    max_tokens: int,
    *,
    min_tokens: int = 1,
    max_chunks_per_doc: int | None = None,
    report: ChunkReport | None = None,
    batch_size: int = 256,
) -> datasets.Dataset:
    """Cut each document into consecutive pieces of at most ``max_tokens`` tokens of ``tokenizer``.

    Contract: piece j of a document covers tokens [j·max_tokens, (j+1)·max_tokens) of the document
    (no special tokens), and its ``text`` is ``document[char_start:char_end]`` (the characters those
    tokens came from), so training data and spans agree. A piece is re-tokenized on its own and
    shortened by whole tokens in the rare case that tokenizing it alone gives more than ``max_tokens``.
    Pieces shorter than ``min_tokens`` (a document's tail) are dropped and counted; documents with no
    token are skipped and counted; ``max_chunks_per_doc`` keeps only a document's first pieces.
    ``seq_id`` numbers the pieces 0..S-1 in document order.
    """
    _check_chunk_args(tokenizer, max_tokens, min_tokens, max_chunks_per_doc)
    missing = [c for c in DOCUMENT_COLUMNS if c not in docs.column_names]
    if missing:
        raise ValueError(f"docs lacks column(s) {missing}; build it with load_documents()")
    report = report if report is not None else ChunkReport()
    rows: list[dict[str, Any]] = []
    for start in range(0, len(docs), batch_size):
        batch = docs[start : start + batch_size]
        records = [dict(zip(DOCUMENT_COLUMNS, values)) for values in zip(*(batch[c] for c in DOCUMENT_COLUMNS))]
        rows.extend(chunk_records(records, tokenizer, max_tokens, min_tokens=min_tokens,
                                  max_chunks_per_doc=max_chunks_per_doc, report=report))
    for seq_id, row in enumerate(rows):
        row["seq_id"] = seq_id
    report.documents = len(docs)
    report.sequences = len(rows)
    if report.empty_skipped:
        log.warning("chunking: skipped %d document(s) without tokens", report.empty_skipped)
    features = datasets.Features(
        {
            "seq_id": datasets.Value("int64"),
            "doc_id": datasets.Value("string"),
            "domain": datasets.Value("string"),
            "source": datasets.Value("string"),
            "text": datasets.Value("string"),
            "char_start": datasets.Value("int64"),
            "char_end": datasets.Value("int64"),
            "n_tokens": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in SEQUENCE_COLUMNS}, features=features)


def _check_chunk_args(tokenizer, max_tokens: int, min_tokens: int, max_chunks_per_doc: int | None) -> None:
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if min_tokens < 1 or min_tokens > max_tokens:
        raise ValueError(f"min_tokens must be in [1, max_tokens={max_tokens}], got {min_tokens}")
    if max_chunks_per_doc is not None and max_chunks_per_doc < 1:
        raise ValueError(f"max_chunks_per_doc must be ≥ 1 or None, got {max_chunks_per_doc}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenizer must be a fast (Rust) tokenizer: character offsets are needed for spans")


def chunk_records(
    records: Sequence[dict[str, Any]],
    tokenizer,
    max_tokens: int,
    *,
    min_tokens: int = 1,
    max_chunks_per_doc: int | None = None,
    report: ChunkReport | None = None,
) -> list[dict[str, Any]]:
    """``chunk_documents`` for in-memory document dicts: sequence dicts without ``seq_id``."""
    _check_chunk_args(tokenizer, max_tokens, min_tokens, max_chunks_per_doc)
    report = report if report is not None else ChunkReport()
    texts = [r["text"] for r in records]
    if not texts:
        return []
    encodings = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
    )
    max_chunks = max_chunks_per_doc
    pieces: list[tuple[int, int, int]] = []  # (document row, char_start, char_end)
    for row, offsets in enumerate(encodings["offset_mapping"]):
        if not offsets:
            report.empty_skipped += 1
            continue
        spans = [(offsets[i][0], offsets[min(i + max_tokens, len(offsets)) - 1][1], min(max_tokens, len(offsets) - i))
                 for i in range(0, len(offsets), max_tokens)]
        if max_chunks is not None and len(spans) > max_chunks:
            spans = spans[:max_chunks]
            report.truncated_documents += 1
        for char_start, char_end, n in spans:
            if n < min_tokens:
                report.short_dropped += 1
                continue
            pieces.append((row, char_start, char_end))
    rows: list[dict[str, Any]] = []
    if not pieces:
        return rows
    piece_texts = [texts[row][a:b] for row, a, b in pieces]
    # Tokenizing a piece alone can differ at its edges from the document's tokens: verify and trim.
    lengths = [len(ids) for ids in tokenizer(piece_texts, add_special_tokens=False, verbose=False)["input_ids"]]
    for (row, a, b), text, n in zip(pieces, piece_texts, lengths):
        while n > max_tokens:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
            # Cut after token max_tokens-1; byte-fallback tokens of one character share offsets, so
            # make sure the piece really shrinks (else this loop would not end).
            cut = offsets[max_tokens - 1][1]
            if cut >= b - a:
                cut = offsets[max_tokens - 1][0] if 0 < offsets[max_tokens - 1][0] < b - a else b - a - 1
            b = a + cut
            text = texts[row][a:b]
            n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        doc = records[row]
        rows.append({"doc_id": doc["id"], "domain": doc["domain"], "source": doc["source"], "text": text,
                     "char_start": a, "char_end": b, "n_tokens": n})
    return rows


# --------------------------------------------------------------------------------------------
# Fingerprints and small I/O helpers.


def fingerprint_dataset(ds: datasets.Dataset) -> str:
    """Content hash of a Dataset: sha256 over column names and values in row order (16 hex chars).

    Two datasets with the same columns and values get the same fingerprint regardless of where they
    were loaded from; any changed value, row order or column changes it.
    """
    digest = hashlib.sha256()
    columns = sorted(ds.column_names)
    digest.update(json.dumps(columns).encode())
    for start in range(0, len(ds), 4096):
        batch = ds[start : start + 4096]
        for column in columns:
            digest.update(json.dumps(batch[column], ensure_ascii=False, default=str).encode("utf-8"))
    return digest.hexdigest()[:16]


def tokenizer_id(tokenizer) -> str:
    """A stable short description of a tokenizer (name + vocabulary size + hash of its vocabulary)."""
    name = Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:12]
    return f"{name}:{len(vocab)}:{digest}"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts (blank lines ignored)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write dicts as JSONL (UTF-8, one object a line)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
