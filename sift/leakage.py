"""Leakage guard by text: drop candidates that overlap the evaluated prompt, and flag unmatched doc ids.

Excluding the prompt's own document by id (``CorpusIndex.search(exclude_doc_ids=...)``) fails silently
when the id matches nothing: a folder corpus names documents by file path, so a prompt whose ``doc_id``
is ``sqlite/cksumvfs.html`` excludes nothing from a corpus that holds the same text as
``sqlite_cksumvfs_html.md``, and nearest-neighbour selection then trains on the evaluated text itself.
This module gives two pure checks (python + numpy, no I/O, no warnings):

* ``overlap_mask`` / ``overlap_shares`` / ``LeakageGuard``: compare the evaluated text with each
  candidate sequence's text and say which candidates to drop, whatever their ids;
* ``unmatched_doc_ids`` / ``unmatched_doc_ids_message``: the prompts whose exclusion ids match no
  document of the corpus, and one message for the caller to warn with once per run.

The overlap rule
----------------
1. Normalise: Unicode NFKC, ``str.casefold``, then words = maximal runs of ``\\w`` characters
   (letters, digits, underscore, any script). Whitespace, line breaks, punctuation and markup are
   dropped, so re-wrapped, re-indented, re-cased or Markdown-converted copies give the same words.
2. Shingles: the set S(t) of distinct runs of ``n`` consecutive words of text t (default n = 8).
3. For prompt p and candidate c, with I = |S(p) ∩ S(c)|:
       prompt_share    = I / |S(p)|   (how much of the evaluated text the candidate contains)
       candidate_share = I / |S(c)|   (how much of the candidate is evaluated text)
   The candidate overlaps when max(prompt_share, candidate_share) ≥ threshold (default 0.5).
   The two shares cover both directions: a candidate may contain the prompt (a longer sequence, or
   the eval half of a split prompt) or be one chunk of a prompt that spans several sequences.
4. Short texts: a text with 1 ≤ w < n words has one "shingle", its whole word sequence; its share is
   1 when that sequence occurs contiguously (whole words) in the other text's words, else 0. A text
   with no words (empty, punctuation only) has no shingles; its shares are 0 and it never overlaps.

Why n = 8 words: eight consecutive words in common are rare by chance in prose and, with
punctuation dropped, about one line of code, so unrelated texts that share idioms, a few common
phrases or a short licence header reach only a small share of a 100–200-word sequence. A single
edited word breaks at most n shingles, so copies with sparse edits (entities, link targets, a
changed line) keep most of their shingles; 13-grams (GPT-3's decontamination) would lose more of a
short sequence per edit, and 8-grams are what PaLM's contamination analysis used.

Why threshold = 0.5: the leak this guards against is a copy of the evaluated text, whose shares are
near 1 (chunk boundaries that differ by a few tokens cost only the shingles at the edges). Sequences
that merely straddle the prompt's end, or that share boilerplate, have a small share and are kept:
what they leak is bounded by that share. ``overlap_shares`` reports both shares for the record.

Cost: one call with K = 1000 candidates of ~1000 characters takes ~13 ms (code, ~114 words each)
to ~25 ms (English prose, ~154 words each) of one CPU core (measured in ``tests/test_leakage.py``).
Splitting the texts into words is most of it; shingle sets are built only for the few candidates
that have a run of n words all found in the prompt (an exact prefilter).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_NGRAM = 8  # words per shingle (see the module docstring)
DEFAULT_THRESHOLD = 0.5  # max(prompt_share, candidate_share) at or above this → overlapping

# Words are compared as UTF-8 bytes, cut by two C-level passes instead of a \w+ regex (3-5x faster,
# and the split is most of a call's time). One bytes.translate table lower-cases ASCII letters and
# turns every ASCII character outside [A-Za-z0-9_] into a space; bytes >= 0x80 pass through, so
# before encoding, the non-ASCII characters that are not \w (str.isalnum() is re's \w outside ASCII:
# “ ” ’ — NBSP-like spaces ...) are replaced by spaces. bytes.split() then yields exactly the \w+ runs
# (tests/test_leakage.py checks this against the regex).
_ASCII_FOLD = bytes((c + 32 if 65 <= c <= 90 else c) if (chr(c).isalnum() or c == 95) else 32
                    for c in range(128)) + bytes(range(128, 256))
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _words(text: str) -> list[bytes]:
    """The words of the overlap rule as UTF-8 bytes: \\w+ runs of casefold(NFKC(text)), in order."""
    if not text:
        return []
    if text.isascii():  # NFKC is the identity and casefold() is lower() on ASCII
        return text.encode("ascii").translate(_ASCII_FOLD).split()
    text = unicodedata.normalize("NFKC", text).casefold()
    for ch in set(_NON_ASCII.findall(text)):
        if not ch.isalnum():
            text = text.replace(ch, " ")
    return text.encode("utf-8").translate(_ASCII_FOLD).split()


def normalized_words(text: str) -> list[str]:
    """The words the overlap rule compares: ``\\w+`` runs of ``casefold(NFKC(text))``, in order.

    Punctuation, markup and whitespace separate words and are otherwise ignored."""
    return [w.decode("utf-8") for w in _words(text)]


def _shingles(words: list[bytes], n: int) -> set[tuple[bytes, ...]]:
    """Distinct runs of ``n`` consecutive words (tuples; C-level zip, so fast)."""
    return set(zip(*(words[i:] for i in range(n))))


def _padded(words: list[bytes]) -> bytes:
    """Words joined by single spaces, with a space at each end (see ``_contains_run``)."""
    return b" " + b" ".join(words) + b" "


def _contains_run(haystack: bytes, needle: bytes) -> bool:
    """Whether the words ``needle`` occur as a contiguous run of whole words in ``haystack`` (both
    ``_padded``): words hold no spaces, so the padded substring test matches whole words only."""
    return needle in haystack


@dataclass(frozen=True)
class OverlapShares:
    """Per-candidate overlap with the prompt (arrays of length K, in candidate order).

    ``shared``: I = number of distinct n-word shingles in both texts (for a short text: 1 if its
    whole word sequence occurs in the other, else 0). ``prompt_share`` = I / |S(prompt)|,
    ``candidate_share`` = I / |S(candidate)| (0 where a side has no shingles).
    """

    shared: np.ndarray  # int64 (K,)
    prompt_share: np.ndarray  # float64 (K,)
    candidate_share: np.ndarray  # float64 (K,)
    prompt_shingles: int  # |S(prompt)|
    ngram: int

    @property
    def share(self) -> np.ndarray:
        """max(prompt_share, candidate_share), float64 (K,): the number compared with the threshold."""
        return np.maximum(self.prompt_share, self.candidate_share)

    def mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """bool (K,): True where ``share ≥ threshold`` (the candidate overlaps; exclude it)."""
        _check_threshold(threshold)
        return self.share >= threshold


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1]")


def overlap_shares(prompt_text: str, candidate_texts: Sequence[str],
                   n: int = DEFAULT_NGRAM) -> OverlapShares:
    """How much each candidate's text overlaps ``prompt_text`` (the evaluated part of the prompt).

    With S(t) the distinct runs of ``n`` normalised words of t (see ``normalized_words``) and
    I = |S(prompt) ∩ S(candidate)|:  prompt_share = I / |S(prompt)|, candidate_share = I / |S(candidate)|.
    A text with fewer than ``n`` words (but at least one) counts as one shingle, its whole word
    sequence, present in the other text iff it occurs there contiguously; a text with no words has
    no shingles and every share involving it is 0. ``candidate_texts`` may be empty (arrays of length 0).
    """
    if isinstance(candidate_texts, str):
        raise TypeError("candidate_texts must be a sequence of strings, not one string")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    k = len(candidate_texts)
    shared = np.zeros(k, dtype=np.int64)
    prompt_share = np.zeros(k, dtype=np.float64)
    candidate_share = np.zeros(k, dtype=np.float64)
    p_words = _words(prompt_text)
    p_short = len(p_words) < n
    p_set = set() if p_short else _shingles(p_words, n)
    p_size = (1 if p_words else 0) if p_short else len(p_set)
    p_padded = _padded(p_words)
    # Exact prefilter: a shingle shared with the prompt is n consecutive words that all occur in the
    # prompt, so a candidate without such a run shares nothing and its set is never built.
    p_vocab = set(p_words)
    run = b"\x01" * n
    if p_size:
        for j, text in enumerate(candidate_texts):
            c_words = _words(text)
            if not c_words:
                continue
            c_short = len(c_words) < n
            if not p_short and not c_short:
                if run not in bytes(map(p_vocab.__contains__, c_words)):
                    continue
                c_set = _shingles(c_words, n)
                small, large = (p_set, c_set) if len(p_set) < len(c_set) else (c_set, p_set)
                i = len(small.intersection(large))  # iterates the smaller set
                shared[j] = i
                prompt_share[j] = i / p_size
                candidate_share[j] = i / len(c_set)
                continue
            # A short side is one shingle, its whole word run: shared iff it occurs in the other text.
            c_padded = _padded(c_words)
            p_in_c = p_short and _contains_run(c_padded, p_padded)
            c_in_p = c_short and _contains_run(p_padded, c_padded)
            shared[j] = int(p_in_c or c_in_p)
            prompt_share[j] = float(p_in_c) if p_short else shared[j] / p_size
            candidate_share[j] = float(c_in_p) if c_short else shared[j] / len(_shingles(c_words, n))
    return OverlapShares(shared=shared, prompt_share=prompt_share, candidate_share=candidate_share,
                         prompt_shingles=p_size, ngram=n)


def overlap_mask(prompt_text: str, candidate_texts: Sequence[str], n: int = DEFAULT_NGRAM,
                 threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """bool (K,): True for candidates that overlap ``prompt_text`` and must be excluded from training.

    Rule: max(I / |S(prompt)|, I / |S(candidate)|) ≥ ``threshold``, with S the distinct ``n``-word
    shingles of the normalised texts and I the size of their intersection (``overlap_shares`` gives
    both shares; short and empty texts as documented there). ``prompt_text`` is the text that is
    evaluated (with a split prompt, the evaluated part; the query part is legitimate context).
    """
    _check_threshold(threshold)
    return overlap_shares(prompt_text, candidate_texts, n).mask(threshold)


@dataclass(frozen=True)
class LeakageGuard:
    """The overlap rule's parameters: ``ngram`` words per shingle, ``threshold`` on the larger share.

    ``guard.mask(prompt_text, candidate_texts)`` is ``overlap_mask(..., n=ngram, threshold=threshold)``;
    ``guard.shares(...)`` is ``overlap_shares(..., n=ngram)``.
    """

    ngram: int = DEFAULT_NGRAM
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ValueError(f"ngram={self.ngram!r} must be a positive integer")
        _check_threshold(self.threshold)

    def shares(self, prompt_text: str, candidate_texts: Sequence[str]) -> OverlapShares:
        """Per-candidate shares (see ``overlap_shares``)."""
        return overlap_shares(prompt_text, candidate_texts, self.ngram)

    def mask(self, prompt_text: str, candidate_texts: Sequence[str]) -> np.ndarray:
        """bool (K,), True = overlaps the prompt, exclude (see ``overlap_mask``)."""
        return self.shares(prompt_text, candidate_texts).mask(self.threshold)


# ----------------------------------------------------------------------------------------------
# prompts whose exclusion ids match no document


@dataclass(frozen=True)
class UnmatchedPrompt:
    """A prompt whose exclusion ids (``doc_id`` and ``id``) name no document of the corpus.

    ``doc_id``: the prompt's ``doc_id``, or its ``id`` when it has none (what the id guard excludes).
    ``suggestions``: corpus ids that look like the same document (same letters and digits once case,
    separators, folders or the extension are ignored), at most a few; empty when none.
    """

    prompt_id: str
    doc_id: str
    doc_id_given: bool
    suggestions: tuple[str, ...] = ()


def _exclusion_ids(prompt: Mapping) -> list[str]:
    """The ids the id guard excludes for a prompt: its ``id`` and ``doc_id`` (as ``run_prompt`` does)."""
    return [str(v) for v in (prompt.get("doc_id"), prompt.get("id")) if v is not None]


def _id_keys(doc_id: str) -> set[str]:
    """Loose keys of an id: lower-case letters and digits of the id, its last path part, each with and
    without a final extension. ``sqlite/cksumvfs.html`` and ``sqlite_cksumvfs_html.md`` share one."""
    base = re.split(r"[/\\]", doc_id)[-1]
    keys = set()
    for part in (doc_id, base):
        for variant in (part, re.sub(r"\.[A-Za-z0-9]{1,8}$", "", part)):
            key = re.sub(r"[\W_]+", "", variant.casefold())
            if key:
                keys.add(key)
    return keys


def unmatched_doc_ids(prompts: Iterable[Mapping], known_doc_ids: Iterable[str],
                      max_suggestions: int = 3) -> list[UnmatchedPrompt]:
    """The prompts whose id guard excludes nothing: none of ``{doc_id, id}`` is in ``known_doc_ids``.

    ``prompts``: dicts with ``id`` and optionally ``doc_id`` (a missing ``doc_id`` means the prompt's
    ``id``, the id guard's default). ``known_doc_ids``: the corpus's document ids (e.g. the distinct
    ``doc_id`` of the index's sequences). Returns one ``UnmatchedPrompt`` per such prompt, in input
    order, with up to ``max_suggestions`` corpus ids that look like the same document. Pure: no
    warning is emitted; pass the list to ``unmatched_doc_ids_message`` and warn once per run.
    """
    known = {str(d) for d in known_doc_ids}
    by_key: dict[str, list[str]] = {}
    built = False
    out: list[UnmatchedPrompt] = []
    for prompt in prompts:
        ids = _exclusion_ids(prompt)
        if any(i in known for i in ids):
            continue
        if not built:  # only runs when something is unmatched
            for d in sorted(known):
                for key in _id_keys(d):
                    by_key.setdefault(key, []).append(d)
            built = True
        given = prompt.get("doc_id") is not None
        doc_id = str(prompt["doc_id"]) if given else str(prompt.get("id"))
        found: list[str] = []
        for key in sorted(_id_keys(doc_id)):
            for d in by_key.get(key, ()):
                if d not in found:
                    found.append(d)
        out.append(UnmatchedPrompt(prompt_id=str(prompt.get("id")), doc_id=doc_id, doc_id_given=given,
                                   suggestions=tuple(sorted(found)[:max_suggestions])))
    return out


def unmatched_doc_ids_message(unmatched: Sequence[UnmatchedPrompt], total_prompts: int | None = None,
                              show: int = 5) -> str | None:
    """One warning text for ``unmatched_doc_ids``'s result, or None when it is empty.

    Says how many prompts (of ``total_prompts`` when given) exclude nothing by id, lists the first
    ``show`` with their suggested corpus ids, and what to do (set ``doc_id`` to the corpus's id).
    """
    if not unmatched:
        return None
    of = f" of {total_prompts}" if total_prompts is not None else ""
    lines = [f"{len(unmatched)}{of} prompt(s) name no document of the corpus (doc_id, or id when "
             "doc_id is missing), so excluding the prompt's own document by id excludes nothing; "
             "only a text-overlap check (sift.leakage.overlap_mask) keeps their own text out of training. "
             "Set each prompt's doc_id to the corpus document id (folder corpora: the file's path "
             "relative to the folder)."]
    for u in unmatched[:show]:
        what = f"doc_id {u.doc_id!r}" if u.doc_id_given else f"no doc_id (id {u.doc_id!r} used)"
        hint = f"; corpus has {', '.join(repr(s) for s in u.suggestions)}" if u.suggestions else ""
        lines.append(f"  prompt {u.prompt_id!r}: {what}{hint}")
    if len(unmatched) > show:
        lines.append(f"  ... and {len(unmatched) - show} more")
    return "\n".join(lines)
