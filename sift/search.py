"""A loaded index folder you can search: ``CorpusIndex`` (faiss index + exact embeddings + sequences +
manifest) and the ``Candidates`` a search returns.

``search``: the K sequences with the largest inner product with the prompt's embedding, the prompt's own
documents excluded inside faiss (``IDSelectorNot``), vectors from the exact stored embeddings.
``duplicated(D)``: the same data space with every sequence stored D times (the duplication experiment).
Building, saving and loading an index folder: ``sift/index.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import datasets
import faiss
import numpy as np


@dataclass
class Candidates:
    """K candidates for a prompt: ``seq_ids`` (int64, rows of the index), their ``vectors`` (float32
    (k, d), exact stored embeddings) and ``scores`` (float32 inner products with the query), best first."""

    seq_ids: np.ndarray
    vectors: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.seq_ids)




def search_parameters(index: faiss.Index) -> dict[str, int]:
    """The search-time parameters faiss does not always keep in its file (nprobe, efSearch)."""
    params: dict[str, int] = {}
    try:
        params["nprobe"] = int(faiss.extract_index_ivf(index).nprobe)
    except (RuntimeError, TypeError):
        pass
    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        params["efSearch"] = int(inner.hnsw.efSearch)
    return params


def _search_params_with(index: faiss.Index, selector: "faiss.IDSelector") -> "faiss.SearchParameters":
    """Search parameters carrying ``selector`` and the index's own nprobe/efSearch (a parameter
    object replaces the index's settings for that search, so they must be copied into it)."""
    params = search_parameters(index)
    if "nprobe" in params:
        out = faiss.SearchParametersIVF(sel=selector, nprobe=params["nprobe"])
    elif "efSearch" in params:
        out = faiss.SearchParametersHNSW(sel=selector, efSearch=params["efSearch"])
    else:
        out = faiss.SearchParameters(sel=selector)
    return out


class CorpusIndex:
    """A loaded index folder: faiss index + exact embeddings + sequence table + manifest."""

    def __init__(self, path: Path, index: faiss.Index, embeddings: np.ndarray, sequences: datasets.Dataset,
                 manifest: dict) -> None:
        self.path = Path(path)
        self.index = index
        self.embeddings = embeddings
        self.sequences = sequences
        self.manifest = manifest
        from sift.index import index_fingerprint  # the build side defines it; imported late (cycle)

        self.fingerprint: str = manifest.get("fingerprint") or index_fingerprint(manifest)
        self.dim = int(index.d)
        # doc_id → its rows: the ids a search excludes inside faiss (IDSelector), never by filtering after.
        self._doc_rows: dict[str, list[int]] = {}
        for row, doc_id in enumerate(sequences["doc_id"]):
            self._doc_rows.setdefault(doc_id, []).append(row)
        self._duplicates: dict[int, CorpusIndex] = {}

    def doc_ids(self) -> set[str]:
        """Every document id the index holds (a prompt's doc_id that matches none excludes nothing)."""
        return set(self._doc_rows)

    def duplicated(self, times: int) -> "CorpusIndex":
        """The same data space with every sequence stored ``times`` times under distinct row ids (copies
        of row i are rows i·times .. i·times + times − 1; their ``doc_id`` is the original's, so the
        leakage guard still excludes every copy). An exact in-memory inner-product index (the
        duplication experiment: NN picks copies, SIFT should not). Kept per ``times``."""
        if times == 1:
            return self
        if times < 1:
            raise ValueError(f"duplicate must be >= 1, got {times}")
        if times not in self._duplicates:
            emb = np.repeat(np.asarray(self.embeddings, dtype=np.float32), times, axis=0)
            rows = np.repeat(np.arange(len(self.sequences)), times)
            seqs = self.sequences.select(rows.tolist())
            seqs = seqs.remove_columns("seq_id").add_column("seq_id", list(range(len(seqs))))
            seqs = seqs.add_column("copy_of", rows.tolist())
            flat = faiss.IndexFlatIP(emb.shape[1])
            flat.add(emb)
            manifest = dict(self.manifest, fingerprint=f"{self.fingerprint}-x{times}", count=len(seqs),
                            duplicated=times, index_type="flat", search_params={})
            self._duplicates[times] = CorpusIndex(self.path, flat, emb, seqs, manifest)
        return self._duplicates[times]

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def texts(self, seq_ids: Iterable[int]) -> list[str]:
        """Texts of the given sequences, in the given order (repeats allowed)."""
        ids = [int(i) for i in seq_ids]
        return list(self.sequences.select(ids)["text"]) if ids else []

    def search(self, query: np.ndarray, k: int, exclude_doc_ids: Iterable[str] = (),
               also_query_opposite: bool = False) -> Candidates:
        """The ``k`` sequences with the largest inner product with the query, none from ``exclude_doc_ids``.

        ``query``: (d,) or (m, d) embeddings (e.g. several chunks of one prompt); a sequence's score
        is its largest inner product over the m rows. With ``also_query_opposite`` the index is also
        searched with −query and sequences rank by |inner product| (SIFT's gain depends on k(x*, x)²;
        activeft does the same). Excluded documents' sequences are excluded inside faiss's search
        (an ``IDSelectorNot`` over their rows), so exactly min(k, available) candidates come back;
        ``k`` beyond that is clamped with a warning.
        Vectors are the exact stored embeddings.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer (candidates to fetch), got {k!r}")
        rows = np.asarray(query, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != self.dim:
            raise ValueError(f"query must have shape ({self.dim},) or (m, {self.dim}), got {np.shape(query)}")
        if not np.all(np.isfinite(rows)):
            raise ValueError("query holds NaN or infinite values")
        excluded_rows = [r for d in {str(d) for d in exclude_doc_ids} for r in self._doc_rows.get(d, ())]
        available = len(self) - len(excluded_rows)
        if available <= 0:
            raise ValueError("every sequence of the index belongs to an excluded document: nothing to return")
        if k > available:
            warnings.warn(f"k={k} exceeds the {available} sequences available; returning {available}", stacklevel=2)
            k = available
        queries = np.ascontiguousarray(np.vstack([rows, -rows]) if also_query_opposite else rows)
        if excluded_rows:
            batch = faiss.IDSelectorBatch(np.asarray(excluded_rows, dtype=np.int64))
            selector = faiss.IDSelectorNot(batch)  # `batch` must outlive the search: faiss holds a raw pointer
            scores, ids = self.index.search(queries, k, params=_search_params_with(self.index, selector))
        else:
            scores, ids = self.index.search(queries, k)
        if also_query_opposite:  # a hit of −q with score s has ⟨q, x⟩ = −s
            scores[len(rows):] *= -1
        best: dict[int, float] = {}
        for seq_id, score in zip(ids.ravel().tolist(), scores.ravel().tolist()):
            if seq_id < 0:  # faiss pads with -1 when an approximate index finds fewer
                continue
            key = abs(score) if also_query_opposite else score
            previous = best.get(seq_id)
            if previous is None or key > (abs(previous) if also_query_opposite else previous):
                best[seq_id] = score
        ranked = sorted(best.items(), key=lambda item: -abs(item[1]) if also_query_opposite else -item[1])[:k]
        if len(ranked) < k:
            warnings.warn(f"the index returned {len(ranked)} of k={k} candidates (approximate search)", stacklevel=2)
        seq_ids = np.array([s for s, _ in ranked], dtype=np.int64)
        order = np.argsort(seq_ids)  # memmap reads in ascending row order are faster
        vectors = np.empty((len(seq_ids), self.dim), dtype=np.float32)
        vectors[order] = self.embeddings[seq_ids[order]]
        return Candidates(seq_ids, vectors, np.array([v for _, v in ranked], dtype=np.float32))
