"""Faiss index: build (flat/IVF/HNSW/factory), atomic save + manifest, guarded load, candidate search."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sift.embed import Embedder
from sift.index import (
    build_index,
    build_index_from_corpus,
    load_index,
    read_index_manifest,
    save_index,
)


@pytest.fixture(scope="module")
def embedder(tiny_encoder_dir):
    return Embedder(tiny_encoder_dir, max_length=64, batch_size=8)


@pytest.fixture(scope="module")
def lm_tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm_dir)


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory, tiny_corpus_file, lm_tokenizer, embedder):
    out = tmp_path_factory.mktemp("idx") / "index"
    return build_index_from_corpus([tiny_corpus_file], out, lm_tokenizer, embedder, max_tokens=8, progress=False,
                                   shard_dir=out.parent / "shards")


def clustered(n: int, d: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres: the structure real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------ building
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indices_are_tuned_to_recall_target(kind):
    x = clustered(3000)
    report: dict = {}
    index = build_index(x, kind, recall_k=100, report=report)
    assert index.ntotal == 3000 and report["recall_at_k"] >= 0.95
    assert ("nprobe" in report and report["nlist"] == round(3000 ** 0.5)) or "efSearch" in report


def test_flat_auto_and_factory_strings():
    x = clustered(500)
    report: dict = {}
    flat = build_index(x, "auto", report=report)
    assert report["index_type"] == "flat"
    scores, ids = flat.search(x[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert build_index(x, "IVF8,Flat").ntotal == 500
    for bad in ("", "NoSuchIndex42"):
        with pytest.raises(ValueError, match="index_type"):
            build_index(x, bad)
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((4, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, 8), dtype=np.float32))


# ------------------------------------------------------------------------------ saving/loading
def test_saved_index_has_manifest_and_loads(corpus_index, embedder):
    manifest = corpus_index.manifest
    for key in ("fingerprint", "corpus_fingerprint", "embedder_id", "dim", "count", "index_type",
                "build_seconds", "package_versions", "files"):
        assert key in manifest, key
    assert manifest["embedder_id"] == embedder.id and manifest["dim"] == embedder.dim
    assert manifest["count"] == len(corpus_index) == len(corpus_index.sequences) > 24  # max_tokens=8 splits docs
    assert corpus_index.sequences["seq_id"] == list(range(len(corpus_index)))
    assert sorted(p.name for p in corpus_index.path.iterdir()) == [
        "embeddings.npy", "index.faiss", "manifest.json", "sequences.parquet"]
    again = load_index(corpus_index.path, embedder)
    assert again.fingerprint == corpus_index.fingerprint


def test_load_refuses_another_embedder_or_dimension(tmp_path, corpus_index, tiny_encoder_dir):
    with pytest.raises(ValueError, match="was built with embedder"):
        load_index(corpus_index.path, Embedder(tiny_encoder_dir, max_length=32))
    # an encoder of another width: same tokenizer, hidden size 16
    from transformers import BertConfig, BertModel

    other = tmp_path / "enc16"
    shutil.copytree(tiny_encoder_dir, other)
    config = BertConfig(vocab_size=BertConfig.from_pretrained(tiny_encoder_dir).vocab_size, hidden_size=16,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(other)
    with pytest.raises(ValueError, match="16"):
        load_index(corpus_index.path, Embedder(other, max_length=64))


def test_truncated_or_missing_files_give_clear_errors(tmp_path, corpus_index, embedder):
    broken = tmp_path / "copy"
    shutil.copytree(corpus_index.path, broken)
    data = (broken / "index.faiss").read_bytes()
    (broken / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_index(broken, embedder)
    # a truncated file whose size the manifest does not know still fails inside faiss, clearly
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["files"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="faiss cannot read"):
        load_index(broken, embedder)
    (broken / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        load_index(broken)
    with pytest.raises(ValueError, match="does not exist"):
        read_index_manifest(tmp_path / "nowhere")


def test_save_is_atomic_and_checks_its_inputs(tmp_path, corpus_index):
    x = np.asarray(corpus_index.embeddings)
    index = build_index(x)
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match="same number of rows"):
        save_index(out, index, corpus_index.sequences.select(range(3)), x, {"embedder_id": "e"})
    with pytest.raises(ValueError, match="embedder_id"):
        save_index(out, index, corpus_index.sequences, x, {})
    assert not out.exists() and not list(tmp_path.iterdir())
    save_index(out, index, corpus_index.sequences, x, {"embedder_id": "e"})
    first = read_index_manifest(out)["created"]
    save_index(out, index, corpus_index.sequences, x, {"embedder_id": "e", "note": "rebuilt"})  # replaces
    assert read_index_manifest(out)["note"] == "rebuilt" and first
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_save_replaces_only_an_index_of_the_same_corpus_and_embedder_unless_forced(tmp_path, corpus_index):
    x = np.asarray(corpus_index.embeddings)
    index = build_index(x)
    out = tmp_path / "idx"
    save_index(out, index, corpus_index.sequences, x, {"embedder_id": "e1"})
    assert read_index_manifest(out)["kind"] == "sift-index"
    with pytest.raises(ValueError, match=r"holds an index built with embedder e1 over sequences \w+, not an index "
                                         r"built with embedder e2 .*; pass --force to replace it"):
        save_index(out, index, corpus_index.sequences, x, {"embedder_id": "e2"})
    with pytest.raises(ValueError, match="pass --force"):  # another corpus, same embedder
        save_index(out, index, corpus_index.sequences, x, {"embedder_id": "e1", "corpus_fingerprint": "other"})
    assert read_index_manifest(out)["embedder_id"] == "e1"
    save_index(out, index, corpus_index.sequences, x, {"embedder_id": "e2"}, force=True)
    assert read_index_manifest(out)["embedder_id"] == "e2"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_an_index_saved_before_kind_existed_is_still_recognised(tmp_path, corpus_index):
    legacy = tmp_path / "legacy"
    shutil.copytree(corpus_index.path, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["kind"]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    x = np.asarray(corpus_index.embeddings)
    with pytest.raises(ValueError, match="holds an index built with embedder"):  # recognised, and not the same
        save_index(legacy, build_index(x), corpus_index.sequences, x, {"embedder_id": "another"})
    # the same sequences and embedder: a rebuild, allowed without force
    save_index(legacy, build_index(x), corpus_index.sequences, x, {"embedder_id": manifest["embedder_id"], "note": 1})
    assert read_index_manifest(legacy)["note"] == 1
    # the library's one-call builder refuses a folder of the user's before loading anything
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not an index folder"):
        build_index_from_corpus(["/nonexistent.jsonl"], victim, None, None, progress=False)
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]


def test_ivf_search_parameters_survive_save_and_load(tmp_path, corpus_index):
    x = clustered(2000, d=corpus_index.dim)
    index = build_index(x, "ivf", recall_k=50)
    from datasets import Dataset

    seqs = Dataset.from_dict({"seq_id": list(range(2000)), "doc_id": [f"d{i}" for i in range(2000)],
                              "text": ["t"] * 2000})
    save_index(tmp_path / "ivf", index, seqs, x, {"embedder_id": "e"})
    loaded = load_index(tmp_path / "ivf")
    assert loaded.manifest["search_params"]["nprobe"] > 1
    import faiss

    assert faiss.extract_index_ivf(loaded.index).nprobe == loaded.manifest["search_params"]["nprobe"]


# ------------------------------------------------------------------------------------ searching
def test_search_returns_k_sorted_candidates_with_exact_vectors(corpus_index):
    query = np.asarray(corpus_index.embeddings[5])
    cands = corpus_index.search(query, 7)
    assert cands.seq_ids.dtype == np.int64 and cands.vectors.shape == (7, corpus_index.dim)
    assert cands.seq_ids[0] == 5 and np.all(np.diff(cands.scores) <= 1e-6)
    np.testing.assert_allclose(cands.vectors, np.asarray(corpus_index.embeddings)[cands.seq_ids])
    np.testing.assert_allclose(cands.scores, cands.vectors @ query, atol=1e-5)
    assert corpus_index.texts([5, 5]) == [corpus_index.sequences[5]["text"]] * 2


def test_search_never_returns_excluded_documents(corpus_index):
    seqs = corpus_index.sequences
    query = np.asarray(corpus_index.embeddings[0])
    top_docs = set(seqs.select(corpus_index.search(query, 10).seq_ids.tolist())["doc_id"])
    cands = corpus_index.search(query, 10, exclude_doc_ids=top_docs)
    assert len(cands) == 10
    assert not set(seqs.select(cands.seq_ids.tolist())["doc_id"]) & top_docs


def test_k_is_clamped_with_a_warning_and_bad_k_or_query_raise(corpus_index):
    n = len(corpus_index)
    query = np.asarray(corpus_index.embeddings[0])
    doc0 = corpus_index.sequences[0]["doc_id"]
    own = corpus_index.sequences["doc_id"].count(doc0)
    with pytest.warns(UserWarning, match="exceeds"):
        cands = corpus_index.search(query, n + 50, exclude_doc_ids={doc0})
    assert len(cands) == n - own and len(set(cands.seq_ids.tolist())) == n - own
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            corpus_index.search(query, bad)
    with pytest.raises(ValueError, match="shape"):
        corpus_index.search(np.ones(corpus_index.dim + 1, dtype=np.float32), 3)
    with pytest.raises(ValueError, match="excluded"):
        corpus_index.search(query, 3, exclude_doc_ids=set(corpus_index.sequences["doc_id"]))


def test_opposite_direction_and_several_query_rows(corpus_index):
    x = np.asarray(corpus_index.embeddings)
    # −x[3] as query: plain search ranks seq 3 last; with the opposite direction it is first (|score| = 1)
    cands = corpus_index.search(-x[3], 5, also_query_opposite=True)
    assert cands.seq_ids[0] == 3 and cands.scores[0] == pytest.approx(-1.0, abs=1e-5)
    assert np.all(np.diff(np.abs(cands.scores)) <= 1e-6)
    assert 3 not in corpus_index.search(-x[3], 5).seq_ids
    # two rows: each row's own sequence is a top candidate; a sequence's score is its best row
    both = corpus_index.search(np.stack([x[3], x[20]]), 4)
    assert {3, 20} <= set(both.seq_ids.tolist())
    np.testing.assert_allclose(both.scores, np.max(both.vectors @ np.stack([x[3], x[20]]).T, axis=1), atol=1e-5)


def test_auto_turns_to_ivf_above_its_threshold_at_the_recall_target(monkeypatch):
    import sift.index as index_module

    monkeypatch.setattr(index_module, "AUTO_FLAT_MAX", 2000)
    x = clustered(3000)
    report: dict = {}
    index = build_index(x, "auto", recall_k=200, report=report)
    assert report["index_type"] == "ivf" and index.ntotal == 3000
    assert report["recall_at_k"] >= index_module.RECALL_TARGET == 0.98 and report["recall_k"] == 200
    report = {}
    build_index(x[:2000], "auto", report=report)
    assert report["index_type"] == "flat"
