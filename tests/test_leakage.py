"""The text-overlap leakage guard and the unmatched-doc-id check (``sift/leakage.py``).

Issue 17 item 2 in miniature: the prompt's own document is in the corpus under another id, cut into
chunks; excluding by id removes nothing, the overlap rule must remove exactly those chunks and keep
documents that merely share phrases or boilerplate.

Speed (``test_one_call_at_k1000_is_fast``): one ``overlap_mask`` call with K = 1000 candidates,
CPU time (time.process_time, best / median of 15) on the shared 2-core development machine while
its load average was ~4:
  * 1000-character chunks of stdlib source (~114 words each): 12 / 13 ms;
  * 1100-character chunks of ``pydoc_data.topics`` prose (~154 words each): 25 / 27 ms.
(A first version with a ``\\w+`` regex per text and a shingle set per candidate took ~41 ms wall
on the code chunks under the same load.)
"""

from __future__ import annotations

import os
import random
import re
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from sift.leakage import (
    DEFAULT_NGRAM,
    DEFAULT_THRESHOLD,
    LeakageGuard,
    OverlapShares,
    UnmatchedPrompt,
    normalized_words,
    overlap_mask,
    overlap_shares,
    unmatched_doc_ids,
    unmatched_doc_ids_message,
)

# The prompt's document as the prompt file holds it (plain text from the HTML page) ...
CKSUM_HTML = """The Checksum VFS Shim

The checksum VFS extension is a shim that adds an 8-byte checksum to the end of every page of an
SQLite database file. The checksum is appended as the page is written to disk and it is verified
each time the page is read back. If the verification fails, the read returns an error, so that a
corrupted page is reported instead of being silently used by the application.

To make room for the checksum, the database must be configured with eight bytes of reserved space
at the end of each page. The reserved bytes can be set when the database is first created, or later
by running VACUUM after the reserve setting has been changed with the file control. Databases that
lack the reserved bytes are read and written as usual, without any checksums at all.

Checksum verification can be turned off and on again at run time with a pragma. Turning it off is
useful when a damaged database has to be opened anyway, for example to recover as much of its content
as possible with the recovery extension before the file is replaced by a clean copy from a backup.

The shim only detects corruption that happens after the data leaves SQLite, such as a failing storage
device or a bug in the operating system. It does not repair anything and it cannot detect a page that
was written correctly but with wrong content by the application itself."""

# ... and the same document in the corpus, converted to Markdown (other line breaks, markup), under
# the folder loader's id, cut into four chunks (the way chunk_documents would: one per paragraph here).
CKSUM_MD = """# The Checksum VFS Shim

The **checksum VFS** extension is a shim that adds an 8-byte checksum to the end of every page of an SQLite database file. The checksum is appended as the page is written to disk and it is verified each time the page is read back. If the verification fails, the read returns an error, so that a corrupted page is reported instead of being silently used by the application.

To make room for the checksum, the database must be configured with eight bytes of *reserved space* at the end of each page. The reserved bytes can be set when the database is first created, or later by running `VACUUM` after the reserve setting has been changed with the file control. Databases that lack the reserved bytes are read and written as usual, without any checksums at all.

Checksum verification can be turned off and on again at run time with a pragma. Turning it off is useful when a damaged database has to be opened anyway, for example to recover as much of its content as possible with the [recovery extension](recovery.md) before the file is replaced by a clean copy from a backup.

The shim only detects corruption that happens after the data leaves SQLite, such as a failing storage device or a bug in the operating system. It does not repair anything and it cannot detect a page that was written correctly but with wrong content by the application itself.
"""

# Other documents of the same corpus: same topic, shared phrases ("an SQLite database file", "at the
# end of each page", "after the data leaves SQLite", "running VACUUM"), different text.
OTHER_DOCS = {
    "sqlite_wal_html.md": """# Write-Ahead Logging

In WAL mode the changes to an SQLite database file are first appended to a separate log, and the
original content stays in the database until a checkpoint copies the new pages back. Readers keep
reading the old pages while a writer appends, so reading and writing no longer block each other.
A checkpoint runs automatically when the log reaches a thousand pages, and the application can also
run one explicitly. The log file must live in the same directory as the database.""",
    "sqlite_fileformat_html.md": """# Database File Format

The first hundred bytes of an SQLite database file are the header. One header field gives the number
of bytes of reserved space at the end of each page, which extensions may use for their own purposes;
it is usually zero. Pages are numbered from one, and the page size is a power of two between 512 and
65536 bytes. Changing the page size or the reserve requires running VACUUM to rewrite every page.""",
    "sqlite_howtocorrupt_html.md": """# How To Corrupt An SQLite Database File

SQLite is very careful about the integrity of its data, but it cannot protect against everything that
happens after the data leaves SQLite, such as a failing storage device or a bug in the operating
system, or another process that overwrites the file. Backups made by copying the file while a
transaction is open may also be corrupt. The integrity check pragma reads every page and reports the
damage it finds, but it repairs nothing.""",
    "sqlite_pragma_html.md": """# Pragma Statements

A pragma is an SQL extension specific to SQLite, used to query or change internal settings of the
library. Most pragmas take an optional argument, and an unknown pragma is silently ignored rather than
reported as an error. Some pragmas apply to one attached database only, named by a schema prefix such
as main or temp, and others apply to the whole connection for as long as it stays open.""",
}


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def own_chunks() -> list[str]:
    return paragraphs(CKSUM_MD)[1:]  # the four body paragraphs: four sequences of the document


# ----------------------------------------------------------------------------------------------
# Issue 17 item 2 in miniature


def test_the_prompts_own_document_under_another_id_is_excluded_and_nothing_else():
    prompt = {"id": "sqlite-cksumvfs", "text": CKSUM_HTML, "doc_id": "sqlite/cksumvfs.html"}
    corpus_ids = ["sqlite_cksumvfs_html.md", *OTHER_DOCS]
    # The id guard removes nothing: the prompt's doc_id is not a corpus id ...
    assert {prompt["id"], prompt["doc_id"]}.isdisjoint(corpus_ids)
    # ... which the doc-id check reports, pointing at the id the corpus uses.
    unmatched = unmatched_doc_ids([prompt], corpus_ids)
    assert unmatched == [UnmatchedPrompt("sqlite-cksumvfs", "sqlite/cksumvfs.html", True,
                                         ("sqlite_cksumvfs_html.md",))]

    others = [c for text in OTHER_DOCS.values() for c in paragraphs(text)]
    candidates = own_chunks() + others
    random.Random(0).shuffle(candidates)
    own = np.array([c in own_chunks() for c in candidates])
    assert own.sum() == 4

    mask = overlap_mask(prompt["text"], candidates)
    assert mask.dtype == bool and mask.shape == (len(candidates),)
    np.testing.assert_array_equal(mask, own)

    shares = overlap_shares(prompt["text"], candidates)
    # Each chunk is a quarter of the prompt (prompt_share ~ 1/4) but almost all of it is prompt text
    # (1.0, except 0.82 for the chunk whose Markdown link adds two words and breaks 9 shingles).
    assert np.all(shares.candidate_share[own] > 0.8)
    assert np.all(shares.prompt_share[own] < 0.4)
    # Together the chunks cover most of the prompt: 0.87, the rest being the title and the shingles
    # that span a paragraph break (in no single chunk) and the link.
    assert shares.prompt_share[own].sum() > 0.8
    # Same-topic documents with shared phrases stay far below the threshold (but do share something:
    # the 17-word phrase planted in the how-to-corrupt paragraph gives it 0.19).
    assert np.all(shares.share[~own] < 0.25)
    assert shares.shared[~own].sum() > 0


def test_a_candidate_that_contains_the_evaluated_text_is_excluded():
    """Split prompt: only the evaluated part is compared; a longer sequence holding it is a leak."""
    body = paragraphs(CKSUM_HTML)
    evaluated = body[2][len(body[2]) // 2:]  # the second half of one paragraph
    candidate = " ".join(paragraphs(CKSUM_MD)[2:4])  # two paragraphs, one of which holds it
    shares = overlap_shares(evaluated, [candidate])
    assert shares.prompt_share[0] > 0.9 and shares.candidate_share[0] < 0.5
    assert overlap_mask(evaluated, [candidate]).tolist() == [True]


def test_a_chunk_that_straddles_the_prompts_end_is_kept_when_mostly_new_text():
    """What a kept candidate leaks is bounded by its share: a few words at a chunk edge are kept."""
    text = CKSUM_HTML
    words = text.split()
    prompt = " ".join(words[:120])
    straddle = " ".join(words[110:230])  # 10 words of prompt, 110 words after it
    mostly = " ".join(words[40:150])  # 80 of its 110 words are prompt text
    mask = overlap_mask(prompt, [straddle, mostly])
    assert mask.tolist() == [False, True]


def test_whitespace_case_and_punctuation_reformatted_copy_is_excluded():
    body = paragraphs(CKSUM_HTML)[1]
    reformatted = re.sub(r"\s+", "  \n\t", body.upper()).replace(",", " ,").replace(".", " .\n")
    # Non-ASCII punctuation (the other word-splitting path): non-breaking hyphen, em dash, curly quotes.
    fancy = body.replace("8-byte", "8\u2011byte").replace(", ", "\u2014") + " \u201cend\u201d"
    fullwidth = unicodedata.normalize("NFKC", body)  # identity here; and a fullwidth copy below
    fullwidth = fullwidth.replace("SQLite", "\uff33\uff31\uff2c\uff49\uff54\uff45")  # ＳＱＬｉｔｅ
    assert overlap_mask(body, [reformatted, fancy, fullwidth]).tolist() == [True, True, True]
    np.testing.assert_allclose(overlap_shares(body, [reformatted]).share, 1.0)


# ----------------------------------------------------------------------------------------------
# Boilerplate and related text is not excluded

APACHE_SHORT = '''# Copyright 2024 The Example Project Authors. All rights reserved.
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Utilities of the example project."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

'''

FUNC_A = APACHE_SHORT + '''
def read_config(path: str | os.PathLike, defaults: dict | None = None) -> dict:
    """Read a key=value configuration file; blank lines and lines starting with # are skipped."""
    config = dict(defaults or {})
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            logger.warning("%s:%d: no '=' in %r, line ignored", path, number, line)
            continue
        config[key.strip()] = value.strip()
    return config
'''

FUNC_B = APACHE_SHORT + '''
def rotate_logs(directory: str | os.PathLike, keep: int = 5) -> list[Path]:
    """Delete all but the newest ``keep`` *.log files of a directory; returns the deleted paths."""
    files = sorted(Path(directory).glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    deleted = []
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError as exc:
            logger.warning("cannot delete %s: %s", old, exc)
            continue
        deleted.append(old)
    logger.info("rotated %d log files in %s", len(deleted), directory)
    return deleted
'''


def test_shared_licence_header_and_imports_do_not_exclude_a_different_function():
    shares = overlap_shares(FUNC_A, [FUNC_B])
    assert shares.shared[0] > 20  # the header, docstring and imports are shared (44 shingles) ...
    assert shares.share[0] < 0.45  # ... but they are not most of either text (0.36 of each)
    assert overlap_mask(FUNC_A, [FUNC_B]).tolist() == [False]
    assert overlap_mask(FUNC_B, [FUNC_A]).tolist() == [False]
    # The same function, re-indented and re-wrapped, is excluded.
    copy = FUNC_A.replace("    ", "  ").replace("(\n", "(")
    assert overlap_mask(FUNC_B, [FUNC_A, copy]).tolist() == [False, False]
    assert overlap_mask(FUNC_A, [copy]).tolist() == [True]


APACHE_FULL = """# Copyright 2024 The Example Project Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""


def test_known_limit_a_chunk_that_is_mostly_a_full_licence_header_is_excluded():
    """By the rule, not by accident: when both the evaluated text and a candidate are mostly the same
    13-line licence header (~90 words), that candidate is mostly evaluated text and is dropped, although
    it comes from another file. Prompts that start with such a header lose those candidates only."""
    prompt = APACHE_FULL + "\nimport os\n\n\ndef join(x):\n    return os.path.join(x, 'a')\n"
    header_chunk = APACHE_FULL + "\nimport sys\n\n\ndef warn(y):\n    print(y, file=sys.stderr)\n"
    body_chunk = FUNC_B[len(APACHE_SHORT):]  # the same file's next sequence: no header
    s = overlap_shares(prompt, [header_chunk, body_chunk])
    assert s.share[0] > 0.85 and s.share[1] == 0
    assert overlap_mask(prompt, [header_chunk, body_chunk]).tolist() == [True, False]


def test_same_topic_paraphrase_is_not_excluded():
    prompt = paragraphs(CKSUM_HTML)[1]
    paraphrase = ("Every page of the database gets an eight byte checksum at its end from the checksum "
                  "shim. It is computed when SQLite writes the page and checked when the page is read; "
                  "a mismatch makes the read fail with an error instead of returning corrupted content.")
    assert overlap_mask(prompt, [paraphrase]).tolist() == [False]


# ----------------------------------------------------------------------------------------------
# The formula, short and empty texts


def test_shares_follow_the_documented_formula():
    words = [f"w{i}" for i in range(40)]
    prompt = " ".join(words[:20])  # 20 words → 13 distinct 8-word shingles
    cand = " ".join(words[10:30])  # shares words 10..19 → 3 shingles (10..17, 11..18, 12..19)
    longer = " ".join(words[10:40])  # 30 words → 23 shingles, the same 3 shared
    s = overlap_shares(prompt, [cand, longer])
    assert isinstance(s, OverlapShares) and s.ngram == DEFAULT_NGRAM == 8 and s.prompt_shingles == 13
    assert s.shared.tolist() == [3, 3]
    np.testing.assert_allclose(s.prompt_share, [3 / 13, 3 / 13])
    np.testing.assert_allclose(s.candidate_share, [3 / 13, 3 / 23])
    np.testing.assert_allclose(s.share, np.maximum(s.prompt_share, s.candidate_share))
    # Threshold is inclusive: share exactly 3/13.
    assert s.mask(3 / 13).tolist() == [True, True]
    assert s.mask(3 / 13 + 1e-9).tolist() == [False, False]
    # Shingles are distinct: a repeated run counts once on each side.
    rep = " ".join(words[:20] + words[:20])
    # 33 positions: 13 shingles twice + 7 that wrap around the join = 20 distinct.
    np.testing.assert_allclose(overlap_shares(prompt, [rep]).candidate_share, [13 / 20])


def _reference_shares(prompt: str, cands: list[str], n: int) -> tuple[list[float], list[float]]:
    """The documented rule written the slow, obvious way (no prefilter, no fast paths)."""
    def words(t):
        return re.findall(r"\w+", unicodedata.normalize("NFKC", t).casefold())

    def grams(w):
        return {tuple(w)} if 0 < len(w) < n else {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    def contains(hay, needle):
        return any(hay[i:i + len(needle)] == needle for i in range(len(hay) - len(needle) + 1))

    pw = words(prompt)
    ps, cs = [], []
    for c in cands:
        cw = words(c)
        if not pw or not cw:
            ps.append(0.0), cs.append(0.0)
        elif len(pw) >= n and len(cw) >= n:
            inter = len(grams(pw) & grams(cw))
            ps.append(inter / len(grams(pw))), cs.append(inter / len(grams(cw)))
        else:
            p_in_c = len(pw) < n and contains(cw, pw)
            c_in_p = len(cw) < n and contains(pw, cw)
            shared = int(p_in_c or c_in_p)
            ps.append(float(p_in_c) if len(pw) < n else shared / len(grams(pw)))
            cs.append(float(c_in_p) if len(cw) < n else shared / len(grams(cw)))
    return ps, cs


@pytest.mark.parametrize("n", [1, 3, 8])
def test_matches_a_brute_force_reference_on_random_texts(n):
    """Small vocabularies make long shared runs, short texts and repeats common (all code paths)."""
    rng = random.Random(n)
    vocab = ["a", "B", "c,", "d.", "É", "e\u0301", "x_1", "—", "Ｆ", "f"]
    def text(k):
        return " ".join(rng.choice(vocab) for _ in range(k))
    for _ in range(40):
        prompt = text(rng.choice([0, 2, 5, 9, 30, 60]))
        cands = [text(rng.choice([0, 1, 3, 7, 8, 12, 40])) for _ in range(25)]
        cands += [prompt[rng.randrange(len(prompt) + 1):] for _ in range(5)]
        got = overlap_shares(prompt, cands, n=n)
        ps, cs = _reference_shares(prompt, cands, n)
        np.testing.assert_allclose(got.prompt_share, ps)
        np.testing.assert_allclose(got.candidate_share, cs)


def test_a_prompt_shorter_than_n_words_is_excluded_by_whole_word_containment():
    prompt = "PRAGMA checksum_verification = OFF;"  # 4 words < 8
    assert normalized_words(prompt) == ["pragma", "checksum_verification", "off"]
    cands = [
        "To read a damaged file anyway, run pragma CHECKSUM_VERIFICATION=off and then recover it.",
        "The checksum_verification pragma is on by default.",  # words present, not as one run
        "xpragma checksum_verification off",  # not whole words
        "",
    ]
    s = overlap_shares(prompt, cands)
    assert s.prompt_shingles == 1
    assert s.prompt_share.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert overlap_mask(prompt, cands).tolist() == [True, False, False, False]


def test_a_candidate_shorter_than_n_words_is_excluded_only_when_it_is_part_of_the_prompt():
    prompt = paragraphs(CKSUM_HTML)[1]
    cands = ["the read returns an error", "the read returns no error", "Checksum"]
    s = overlap_shares(prompt, cands)
    assert s.candidate_share.tolist() == [1.0, 0.0, 1.0]
    assert overlap_mask(prompt, cands).tolist() == [True, False, True]


def test_empty_inputs():
    for mask in (overlap_mask("some prompt text", []), overlap_mask("", []),
                 LeakageGuard().mask("x", [])):
        assert mask.dtype == bool and mask.shape == (0,)
    # An empty or punctuation-only prompt has nothing to leak: nothing is excluded.
    assert overlap_mask("", ["anything at all", ""]).tolist() == [False, False]
    assert overlap_mask(" ... ;; ", ["anything", " ... ;; "]).tolist() == [False, False]
    s = overlap_shares("", ["a b c"])
    assert s.prompt_shingles == 0 and s.share.tolist() == [0.0]
    # Empty candidates never overlap.
    assert overlap_mask(CKSUM_HTML, ["", "   \n", "--"]).tolist() == [False, False, False]


def test_guard_dataclass_and_argument_checks():
    g = LeakageGuard()
    assert (g.ngram, g.threshold) == (8, 0.5) == (DEFAULT_NGRAM, DEFAULT_THRESHOLD)
    cands = own_chunks() + paragraphs(OTHER_DOCS["sqlite_wal_html.md"])
    np.testing.assert_array_equal(g.mask(CKSUM_HTML, cands), overlap_mask(CKSUM_HTML, cands))
    np.testing.assert_array_equal(g.shares(CKSUM_HTML, cands).share, overlap_shares(CKSUM_HTML, cands).share)
    # n is a real parameter: with n = 3 common phrases start to count.
    others_shared = {n: LeakageGuard(ngram=n).shares(CKSUM_HTML, cands).shared[4:].sum() for n in (3, 8)}
    assert others_shared[3] > others_shared[8]
    for bad in (dict(ngram=0), dict(ngram=2.5), dict(threshold=0), dict(threshold=1.5)):
        with pytest.raises(ValueError):
            LeakageGuard(**bad)
    with pytest.raises(ValueError):
        overlap_mask("a", ["a"], threshold=-1)
    with pytest.raises(ValueError):
        overlap_shares("a", ["a"], n=0)
    with pytest.raises(TypeError):
        overlap_mask("a b c", "a b c")  # one string is not a list of candidates


def _stdlib_chunks(count: int, size: int = 1000) -> list[str]:
    texts: list[str] = []
    for f in sorted(Path(os.__file__).parent.glob("*.py")):
        t = f.read_text(encoding="utf-8", errors="replace")
        texts += [t[i:i + size] for i in range(0, len(t) - size, size)]
        if len(texts) >= count:
            break
    random.Random(0).shuffle(texts)
    return texts[:count]


def test_word_split_equals_the_regex_rule():
    """normalized_words (bytes.translate + split) gives exactly the \\w+ runs of casefold(NFKC(text))."""
    from pydoc_data.topics import topics

    regex = re.compile(r"\w+")
    prose = "\n".join(topics.values())
    texts = _stdlib_chunks(300) + [prose[i:i + 1100] for i in range(0, 300 * 1100, 1100)] + [
        "".join(chr(c) for c in range(128)) * 2, "a\x1cb\x1fc\x0bd\x0ce\rf\x85g\u2028h\xa0i\u3000j",
        "Ünïcödé — “quotes”, l’été; Привет, мир! مرحبا بالعالم 你好，世界。 x² ½ Ⅻ ﬀ ǅ İ e\u0301 🙂 a_b",
        "lone \udcff surrogate \ufffd replaced",
    ]
    assert sum(not t.isascii() for t in texts) > 10
    for t in texts:
        expected = regex.findall(unicodedata.normalize("NFKC", t).casefold())
        assert normalized_words(t) == expected
    assert normalized_words("Straße ﬁle Ｆｏｏ") == ["strasse", "file", "foo"]


def test_one_call_at_k1000_is_fast():
    """Measured figure in the module docstring; the bound here is loose so a busy machine passes."""
    cands = _stdlib_chunks(1000)
    assert len(cands) == 1000
    prompt = cands[17]
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        mask = overlap_mask(prompt, cands)
        best = min(best, time.perf_counter() - t)
    assert mask[17] and mask.sum() < 5
    assert best < 0.5, f"overlap_mask at K=1000 took {best * 1e3:.0f} ms"


# ----------------------------------------------------------------------------------------------
# Prompts whose doc_id matches nothing


def test_unmatched_doc_ids_and_message():
    known = ["sqlite_cksumvfs_html.md", "docs/intro.md", "lib/util.py", "prompt-7"]
    prompts = [
        {"id": "p1", "doc_id": "docs/intro.md"},  # matched by doc_id
        {"id": "prompt-7"},  # no doc_id: its id is the doc id, and it matches
        {"id": "p3", "doc_id": "sqlite/cksumvfs.html"},  # unmatched, one look-alike
        {"id": "p4"},  # unmatched, no doc_id
        {"id": "p5", "doc_id": "util.py"},  # unmatched; basename of lib/util.py
        {"id": "p6", "doc_id": None},  # None = missing
        {"id": "lib/util.py", "doc_id": "gone.py"},  # id matches a document: that one is excluded
    ]
    out = unmatched_doc_ids(prompts, known)
    assert out == [
        UnmatchedPrompt("p3", "sqlite/cksumvfs.html", True, ("sqlite_cksumvfs_html.md",)),
        UnmatchedPrompt("p4", "p4", False, ()),
        UnmatchedPrompt("p5", "util.py", True, ("lib/util.py",)),
        UnmatchedPrompt("p6", "p6", False, ()),
    ]
    msg = unmatched_doc_ids_message(out, total_prompts=len(prompts))
    assert msg.startswith("4 of 7 prompt(s) name no document of the corpus")
    assert "doc_id 'sqlite/cksumvfs.html'; corpus has 'sqlite_cksumvfs_html.md'" in msg
    assert "prompt 'p4': no doc_id (id 'p4' used)" in msg
    short = unmatched_doc_ids_message(out, show=2)
    assert short.startswith("4 prompt(s)") and short.endswith("... and 2 more") and "'p5'" not in short
    assert unmatched_doc_ids_message([]) is None
    assert unmatched_doc_ids(prompts[:2], known) == []
    assert unmatched_doc_ids([], known) == []
    # A corpus with no ids at all: every prompt is unmatched; generators are accepted.
    assert [u.prompt_id for u in unmatched_doc_ids(iter(prompts), iter(()))] == [p["id"] for p in prompts]
