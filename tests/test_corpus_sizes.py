"""The size knob of the default corpus (``sift-ttft corpus --sequences N``) and its extra sources.

Sizes must be nested and share their prompts; a source that cannot be fetched is skipped and recorded;
the demo space must stay the one of before the knob. Sources here are fake package folders in the cache
(``<cache>/debian/<package>/.complete`` marks one as fetched, so nothing is downloaded).
"""

from __future__ import annotations

import gzip
import inspect
import io
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sift.corpus import chunk_documents, load_documents, read_jsonl
from sift.default_corpus import (
    DEBIAN_PACKAGES,
    assemble_default_corpus,
    dictd_documents,
    linux_source_documents,
    perl_doc_documents,
    python_doc_documents,
)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@pytest.fixture(scope="module")
def lm_tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def _b64(n: int) -> str:
    digits = ""
    while True:
        digits = _B64[n % 64] + digits
        n //= 64
        if not n:
            return digits


def _fake_dictd(root: Path, name: str, entries: list[tuple[str, str]]) -> None:
    """A dictd dictionary: ``<name>.index`` (headword, base-64 offset, length) + gzip ``<name>.dict.dz``."""
    base = root / "usr/share/dictd"
    base.mkdir(parents=True)
    data, index = b"", [f"00-database-info\t{_b64(0)}\t{_b64(5)}"]
    data += b"info\n"
    for word, body in entries:
        raw = f"{word}\n   {body}\n\n".encode()
        index.append(f"{word}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    (base / f"{name}.index").write_text("\n".join(index) + "\n")
    (base / f"{name}.dict.dz").write_bytes(gzip.compress(data))


def _fake_package(cache: Path, package: str) -> Path:
    root = cache / "debian" / package
    root.mkdir(parents=True)
    (root / ".complete").write_text("fake")
    return root


def _words(i: int, n: int) -> str:
    return " ".join(f"w{(i * 7 + j) % 97}" for j in range(n))


def _fake_sources(cache: Path) -> None:
    """Two extra domains large enough for a few hundred 16-token sequences."""
    _fake_dictd(_fake_package(cache, "dict-foldoc"), "foldoc",
                [(f"term{i}", f"A computing term number {i}: {_words(i, 30)}.") for i in range(160)])
    docs = _fake_package(cache, "python3.11-doc") / "usr/share/doc/python3.11/html/_sources"
    for i in range(40):
        folder = docs / ("reference" if i % 10 == 0 else "library")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"page{i}.rst.txt").write_text(f"Page {i}\n=======\n\n" + _words(i, 120))


def _sequences(corpus_path: Path, tokenizer, max_tokens: int) -> set[tuple]:
    seqs = chunk_documents(load_documents([corpus_path]), tokenizer, max_tokens)
    return {(r["doc_id"], r["char_start"], r["text"]) for r in seqs}


def test_sizes_are_nested_and_share_their_prompts(tmp_path, lm_tokenizer):
    cache = tmp_path / "cache"
    _fake_sources(cache)
    stdlib = Path(sysconfig.get_paths()["stdlib"]) / "json"
    kwargs = dict(tokenizer=lm_tokenizer, max_tokens=16, prompts_per_domain=2, min_prompt_tokens=8, min_tokens=4,
                  sources=("stdlib", "pydoc", "debian"), debian_packages=("dict-foldoc", "python3.11-doc"),
                  stdlib_root=stdlib, cache_dir=cache)
    sizes = (40, 150, 600)
    spaces = [assemble_default_corpus(tmp_path / f"n{n}", seed=3, data_sequences=n, **kwargs) for n in sizes]
    assert [s.manifest["sequences"] for s in spaces] == list(sizes)
    assert set(spaces[0].manifest["domains"]) == {"code", "api-docs", "reference", "computing-glossary", "python-docs"}
    # the prompts are chosen before the data: the same file at every size
    prompts = [s.prompts_path.read_bytes() for s in spaces]
    assert prompts[0] == prompts[1] == prompts[2] and len(read_jsonl(spaces[0].prompts_path)) == 10
    # nested: every sequence of a smaller space is a sequence of each larger one, per domain growing
    seqs = [_sequences(s.corpus_path, lm_tokenizer, 16) for s in spaces]
    assert [len(x) for x in seqs] == list(sizes)
    assert seqs[0] < seqs[1] < seqs[2]
    for small, large in zip(spaces, spaces[1:]):
        for domain, counts in small.manifest["domains"].items():
            assert counts["sequences"] <= large.manifest["domains"][domain]["sequences"]
    # no prompt's document is in any space; python-docs never holds the language reference
    held_out = {p["doc_id"] for p in read_jsonl(spaces[0].prompts_path)}
    assert not held_out & {d["id"] for d in read_jsonl(spaces[2].corpus_path)}
    assert not [d for d in read_jsonl(spaces[2].corpus_path) if d["id"].startswith("python-doc:reference/")]
    # another seed: other prompts
    other = assemble_default_corpus(tmp_path / "seed4", seed=4, data_sequences=40, **kwargs)
    assert other.prompts_path.read_bytes() != prompts[0]


def test_a_source_that_cannot_be_fetched_is_skipped_and_recorded(tmp_path, lm_tokenizer, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no apt-get: a package not in the cache cannot be fetched
    cache = tmp_path / "cache"
    _fake_sources(cache)
    broken = _fake_package(cache, "dict-gcide") / "usr/share/dictd"
    broken.mkdir(parents=True)
    (broken / "gcide.index").write_text("word\tA\tB\n")
    (broken / "gcide.dict.dz").write_bytes(b"not gzip at all")
    corpus = assemble_default_corpus(
        tmp_path / "out", tokenizer=lm_tokenizer, max_tokens=16, data_sequences=80, prompts_per_domain=2,
        min_prompt_tokens=8, min_tokens=4, sources=("pydoc", "debian"),
        debian_packages=("dict-foldoc", "dict-gcide", "perl-doc"), cache_dir=cache)
    sources = corpus.manifest["sources"]
    assert sources["debian:dict-foldoc"]["used"] and sources["pydoc"]["used"]
    assert sources["debian:perl-doc"]["used"] is False and "apt-get" in sources["debian:perl-doc"]["reason"]
    assert sources["debian:dict-gcide"]["used"] is False and "gzip" in sources["debian:dict-gcide"]["reason"].lower()
    assert set(corpus.manifest["domains"]) == {"reference", "computing-glossary"}
    assert corpus.manifest["sequences"] == 80


def test_readers_of_the_large_space_sources(tmp_path):
    root = tmp_path / "dict"
    _fake_dictd(root, "jargon", [("foo", "A metasyntactic variable."), ("bar", "See foo."), ("baz", "See bar.")])
    docs = dictd_documents(root, "jargon", "computing-glossary", "jargon", per_document=2)
    assert [d["id"] for d in docs] == ["jargon:0", "jargon:1"]
    assert docs[0]["text"] == "foo\n   A metasyntactic variable.\n\nbar\n   See foo." and "info" not in docs[0]["text"]

    perl = tmp_path / "perl" / "usr/share/perl/5.36.0/pod"
    perl.mkdir(parents=True)
    (perl / "perlfunc.pod").write_text("=head1 NAME\n\nperlfunc - Perl builtin functions\n")
    assert [d["domain"] for d in perl_doc_documents(tmp_path / "perl")] == ["perl-docs"]

    linux = tmp_path / "linux"
    (linux / "usr/src").mkdir(parents=True)
    files = {"Documentation/admin/a.rst": "Admin guide", "Documentation/b.txt": "Notes", "Documentation/c.svg": "<svg/>",
             "kernel/fork.c": "int fork(void);", "mm/slab.h": "struct slab;", "drivers/net/x.c": "driver",
             "Makefile": "all:"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(f"linux-source-6.1/{name}")
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    (linux / "usr/src/linux-source-6.1.tar.xz").write_bytes(buffer.getvalue())
    got = {d["id"]: d["domain"] for d in linux_source_documents(linux)}
    assert got == {"linux:Documentation/admin/a.rst": "kernel-docs", "linux:Documentation/b.txt": "kernel-docs",
                   "linux:kernel/fork.c": "kernel-code", "linux:mm/slab.h": "kernel-code"}
    (linux / "usr/src/linux-source-6.1.tar.xz").unlink()  # extracted once: read again without the tarball
    assert {d["id"] for d in linux_source_documents(linux)} == set(got)

    (tmp_path / "empty").mkdir()
    assert python_doc_documents(tmp_path / "empty") == []


# The demo space's fingerprint on a small assembly (email package of the stdlib, pydoc, the tiny
# tokenizer), measured with the code before the size knob existed (commit a0467e3) on Python 3.11.7:
# the knob must not move it.
GOLDEN_PYTHON = (3, 11, 7)
GOLDEN_FINGERPRINT = "42c18eae02508b63"


def test_the_demo_space_is_unchanged(tmp_path, lm_tokenizer, monkeypatch):
    # the library's defaults are the demo space's, as before the size knob
    defaults = {k: p.default for k, p in inspect.signature(assemble_default_corpus).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"out_dir": None, "seed": 0, "tokenizer": None, "max_tokens": 256, "data_sequences": 8000,
                        "prompts_per_domain": 16, "min_prompt_tokens": 64, "max_chunks_per_doc": 8, "min_tokens": 32,
                        "sources": ("stdlib", "pydoc", "wikipedia", "debian"),
                        "debian_packages": ("fortunes", "git-doc"), "cache_dir": None, "stdlib_root": None,
                        "progress": False}
    # `sift-ttft corpus` without flags asks for exactly those, in the demo folder
    from flows import cli
    from sift import default_corpus

    calls = []
    empty = {"fingerprint": "-", "sequences": 0, "documents": 0, "prompts": 0, "domains": {}, "sources": {}}
    monkeypatch.setattr(default_corpus, "assemble_default_corpus",  # only the arguments matter here
                        lambda out, **kw: calls.append((out, kw)) or default_corpus.DefaultCorpus(out, empty))
    result = CliRunner().invoke(cli.app, ["corpus"])
    assert result.exit_code == 0, result.output
    (out, kw), = calls
    assert out == default_corpus.default_corpus_dir()
    assert kw == {"seed": 0, "max_tokens": 256, "data_sequences": 8000, "debian_packages": DEBIAN_PACKAGES,
                  "progress": True}
    calls.clear()
    CliRunner().invoke(cli.app, ["corpus", "--sequences", "131072", "--max-tokens", "128"])
    (out, kw), = calls
    assert out.name == "all-n131072-t128-seed0" and kw["data_sequences"] == 131072 and "dict-gcide" in kw["debian_packages"]
    bad = CliRunner().invoke(cli.app, ["corpus", "--sources", "everything"])
    assert bad.exit_code == 2 and "--sources" in bad.output
    # and the split itself: the fingerprint of a small assembly is the one of before the knob
    monkeypatch.undo()
    if sys.version_info[:3] != GOLDEN_PYTHON:
        pytest.skip(f"golden fingerprint measured on Python {GOLDEN_PYTHON} (its stdlib's text)")
    stdlib = Path(sysconfig.get_paths()["stdlib"]) / "email"
    small = assemble_default_corpus(tmp_path / "a", tokenizer=lm_tokenizer, max_tokens=64, data_sequences=120,
                                    prompts_per_domain=3, min_prompt_tokens=16, sources=("stdlib", "pydoc"),
                                    stdlib_root=stdlib, cache_dir=tmp_path / "cache")
    assert small.fingerprint == GOLDEN_FINGERPRINT
