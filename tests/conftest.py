"""Shared fixtures: a private state folder, tiny models built from configs, a tiny corpus.

Tiny models are real transformers models (Llama and BERT architectures) with a few thousand
parameters and tokenizers trained here in well under a second, so unit tests exercise the real code
paths without any hub download.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# A private state folder for the whole test session, set before anything imports sift/prefect/mlflow.
_SESSION_STATE = Path(tempfile.mkdtemp(prefix="sift-test-state-"))
os.environ["SIFT_HOME"] = str(_SESSION_STATE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_STATE}/mlflow.db"  # absolute: 4 slashes

from sift.env import set_default_env  # noqa: E402

set_default_env()

DOMAIN_TEXTS = {
    "code": [
        "def add(a, b):\n    return a + b\n",
        "for i in range(10):\n    print(i * i)\n",
        "class Stack:\n    def push(self, x):\n        self.items.append(x)\n",
        "import os\npath = os.path.join('a', 'b')\n",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "with open('data.txt') as fh:\n    lines = fh.readlines()\n",
    ],
    "wiki": [
        "Paris is the capital and most populous city of France.",
        "The Nile is a major north-flowing river in northeastern Africa.",
        "Mount Everest is Earth's highest mountain above sea level.",
        "The Pacific Ocean is the largest and deepest of Earth's oceans.",
        "Jupiter is the fifth planet from the Sun and the largest in the Solar System.",
        "The Amazon rainforest covers much of the Amazon basin of South America.",
    ],
    "fiction": [
        "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.",
        "The evening was calm, and she walked slowly along the garden path, thinking of her sister.",
        "He had never been so tired; the road wound on through the dark hills without end.",
        "Her letter arrived on a grey morning, and she read it twice before she dared to answer.",
        "The old house creaked in the wind as the children gathered around the fire.",
        "They danced until midnight, and nobody spoke of the quarrel again.",
    ],
    "docs": [
        "The --verbose flag prints every step the command takes to standard error.",
        "To install the package, run pip install and then import the module in your script.",
        "Configuration files are read from the user's home directory before the system defaults.",
        "The function returns None when the key is missing, unless a default is given.",
        "Use git commit --amend to change the message of the most recent commit.",
        "The server listens on port 8080 unless the PORT environment variable is set.",
    ],
}


def _all_texts() -> list[str]:
    return [t for texts in DOMAIN_TEXTS.values() for t in texts]


@pytest.fixture(scope="session")
def state_dir() -> Path:
    """The session's private state folder ($SIFT_HOME)."""
    return _SESSION_STATE


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny Llama causal LM (random weights) and a byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-lm")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_all_texts() * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny BERT encoder (random weights) and a WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-encoder")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(_all_texts() * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_corpus_file(tmp_path_factory) -> Path:
    """A JSONL corpus of short documents in four domains (fields id, text, domain, source)."""
    out = tmp_path_factory.mktemp("tiny-corpus") / "corpus.jsonl"
    with out.open("w") as fh:
        for domain, texts in DOMAIN_TEXTS.items():
            for i, text in enumerate(texts):
                fh.write(json.dumps({"id": f"{domain}-{i}", "text": text, "domain": domain, "source": "tests"}) + "\n")
    return out


@pytest.fixture(scope="session")
def tiny_prompts_file(tmp_path_factory) -> Path:
    """Held-out prompts (JSONL: id, text, domain, doc_id), one per domain."""
    out = tmp_path_factory.mktemp("tiny-prompts") / "prompts.jsonl"
    prompts = [
        {"id": "p-code", "doc_id": "p-code", "domain": "code", "text": "def square(x):\n    return x * x\n"},
        {"id": "p-wiki", "doc_id": "p-wiki", "domain": "wiki", "text": "Rome is the capital city of Italy."},
        {"id": "p-fiction", "doc_id": "p-fiction", "domain": "fiction", "text": "She smiled at her sister across the garden."},
        {"id": "p-docs", "doc_id": "p-docs", "domain": "docs", "text": "Run the command with --help to list every flag."},
    ]
    with out.open("w") as fh:
        for p in prompts:
            fh.write(json.dumps(p) + "\n")
    return out


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API (ephemeral server), started once per test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_result_rows(prompts: int = 8, methods=("base", "nn", "sift"), n: int = 6, seed: int = 0) -> list[dict]:
    """Synthetic but realistic ``PromptResult.to_json()`` rows: σ_n falls with picks, SIFT repeats a pick,
    every third SIFT prompt stops early, the curve has intermediate points, one domain name ("q&a forum")
    holds characters MLflow refuses in metric names. For tests of tracking and reporting."""
    import numpy as np

    rng = np.random.default_rng(seed)
    domains = {"code": 0.7, "wiki": 0.9, "fiction": 1.3, "q&a forum": 1.1}
    rows = []
    for p in range(prompts):
        domain = list(domains)[p % len(domains)]
        before = domains[domain] + float(rng.normal(0, 0.05))
        for method in methods:
            picks = 0 if method == "base" else n
            steps = picks - 2 if (method == "sift" and p % 3 == 0) else picks
            sigmas = [1.0]
            for _ in range(picks):
                sigmas.append(sigmas[-1] * (0.8 if method == "sift" else 0.9) + float(rng.normal(0, 0.01)))
            gain = 0.0 if steps == 0 else (0.6 - sigmas[steps]) * 0.2 + float(rng.normal(0, 0.01))
            curve = [(s, before - gain * s / steps) for s in range(2, steps, 2)] if steps else []
            seq_ids = [int(s) for s in rng.integers(0, 500, picks)]
            if method == "sift" and picks > 3:
                seq_ids[3] = seq_ids[1]
            rows.append({
                "prompt_id": f"prompt-{p}", "method": method, "domain": domain,
                "bpb_before": before, "bpb_after": before - gain, "steps": steps, "uncertainties": sigmas,
                "picked_ids": [f"doc-{s // 3}" for s in seq_ids], "picked_seq_ids": seq_ids,
                "picked_domains": [list(domains)[s % len(domains)] for s in seq_ids],
                "picked_scores": sorted((round(float(x), 4) for x in rng.uniform(0.3, 0.9, picks)), reverse=True),
                "repeated": [s in seq_ids[:i] for i, s in enumerate(seq_ids)],
                "seconds": {"retrieval": 0.01, "selection": 0.02, "train": 0.4 * steps, "eval": 0.6, "reset": 0.05,
                            "total": 0.68 + 0.4 * steps},
                "tokens": 256 * steps + 300, "tokens_train": 256 * steps, "tokens_eval": 300,
                "flops": 6 * 135e6 * 256 * steps, "stopped_early": steps < picks, "bpb_curve": curve,
                "n": n, "k": 50, "lam": 0.1, "alpha": None, "candidate_count": 50, "eval_bytes": 1200,
                "gain": gain,
            })
    return rows


@pytest.fixture()
def result_rows() -> list[dict]:
    """``make_result_rows()``: 8 prompts × (base, nn, sift) synthetic result rows in 4 domains."""
    return make_result_rows()


@pytest.fixture(scope="session")
def tiny_index_dir(prefect_server, tmp_path_factory, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir) -> Path:
    """An index of the tiny corpus built by the ``build_index`` flow (tiny encoder; sequences of ≤ 8
    tokens of the tiny LM's tokenizer; 15 shards of 8), with its caches in a private state folder."""
    from flows.build_index import build_index
    from flows.config import IndexConfig

    root = tmp_path_factory.mktemp("tiny-index")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIFT_HOME", str(root / "state"))
        build_index(IndexConfig(corpus=[str(tiny_corpus_file)], embedder=str(tiny_encoder_dir), model=str(tiny_lm_dir),
                                max_tokens=8, shard_size=8, out=root / "index"))
    return root / "index"


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on a free loopback port for the session (``tests/pg.py``), stopped afterwards."""
    from pg import start_postgres  # tests/pg.py (rootdir-relative import, as flow_helpers)

    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
