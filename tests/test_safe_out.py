"""Nothing of the user's is overwritten: `sift-ttft index --out` (CLI preflight and flow) and the default
corpus replace only a folder of their own kind, and never the current directory or the corpus."""

from __future__ import annotations

import json
import shutil

import pytest
from flow_helpers import tiny_index_config
from typer.testing import CliRunner


@pytest.fixture()
def fresh_state(tmp_path, monkeypatch):
    """A private state folder (its own Prefect result storage and embedding shards)."""
    state = tmp_path / "state"
    monkeypatch.setenv("SIFT_HOME", str(state))
    return state


def index_args(corpus, encoder, lm, out, *extra: str) -> list[str]:
    return ["index", "--corpus", str(corpus), "--embedder", str(encoder), "--model", str(lm), "--max-tokens", "8",
            "--shard-size", "8", "--out", str(out), *extra]


def test_cli_refuses_a_folder_of_the_users_and_keeps_its_files(fresh_state, tmp_path, tiny_corpus_file,
                                                               tiny_encoder_dir, tiny_lm_dir):
    """The issue's reproduction: `index --out data/victim` used to exit 0 with notes.txt gone."""
    from flows.cli import app

    victim = tmp_path / "data" / "victim"
    victim.mkdir(parents=True)
    (victim / "notes.txt").write_text("notes\n")
    for extra in ((), ("--force",)):
        result = CliRunner().invoke(app, index_args(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, victim, *extra))
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert f"{victim} is not an index folder (it holds notes.txt)" in lines[0] and "choose another --out" in lines[0]
    assert (victim / "notes.txt").read_text() == "notes\n" and [p.name for p in victim.iterdir()] == ["notes.txt"]
    assert [p.name for p in victim.parent.iterdir()] == ["victim"], "refused before anything was written beside it"


def test_cli_refuses_the_current_directory_and_the_corpus_folder_even_with_force(
        fresh_state, tmp_path, monkeypatch, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tiny_index_dir):
    from flows.cli import app

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, index_args(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, ".", "--force"))
    assert result.exit_code == 2 and "it is the current directory" in result.output
    # An index's own sequences.parquet is a valid corpus: --out at that index, even forced, would delete its input.
    own = tmp_path / "own-index"
    shutil.copytree(tiny_index_dir, own)
    result = CliRunner().invoke(app, index_args(own / "sequences.parquet", tiny_encoder_dir, tiny_lm_dir, own, "--force"))
    assert result.exit_code == 2 and "a folder containing the input" in result.output, result.output
    assert sorted(p.name for p in own.iterdir()) == sorted(p.name for p in tiny_index_dir.iterdir())
    assert not list(work.iterdir())


def test_flow_replaces_only_empty_folders_rebuilds_and_forced_foreign_indices(
        prefect_server, fresh_state, tmp_path, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir):
    from flows.build_index import build_index

    out = tmp_path / "index"
    out.mkdir()  # an empty folder is accepted
    config = tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, out)
    first = build_index(config)
    assert not first["reused"] and (out / "index.faiss").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "sift-index"

    # The same corpus and embedder with another index type: a rebuild of the same thing, no --force needed.
    again = build_index(config.model_copy(update={"index_type": "flat"}))
    assert not again["reused"]
    assert json.loads((out / "manifest.json").read_text())["index_type_requested"] == "flat"

    # Other sequences (max_tokens 16) into the same folder: refused, before any shard is embedded.
    shard_dirs = sorted(p.name for p in (fresh_state / "embeddings").iterdir())
    other = config.model_copy(update={"max_tokens": 16})
    with pytest.raises(ValueError, match=r"holds an index built with embedder .* over corpus .*; pass --force"):
        build_index(other)
    assert sorted(p.name for p in (fresh_state / "embeddings").iterdir()) == shard_dirs, "nothing was embedded"
    assert json.loads((out / "manifest.json").read_text())["corpus_fingerprint"] == manifest["corpus_fingerprint"]

    # With --force it is replaced.
    forced = build_index(other.model_copy(update={"force": True}))
    assert not forced["reused"] and forced["fingerprint"] != first["fingerprint"]
    assert json.loads((out / "manifest.json").read_text())["max_tokens"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "state"], "no temporary or old folders left"


def test_flow_refuses_a_folder_of_the_users_before_loading_the_corpus(prefect_server, fresh_state, tmp_path,
                                                                       tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir):
    """Deployments and the demo call the flow without the CLI's preflight: the flow checks first.
    (A missing corpus is refused by the same preflight: tests/test_preflight.py.)"""
    from flows.build_index import build_index

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("notes\n")
    config = tiny_index_config(tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, victim, force=True)
    with pytest.raises(ValueError, match="is not an index folder"):
        build_index(config)
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]


def test_default_corpus_refuses_a_folder_of_the_users_and_recognises_old_corpora(tmp_path):
    from sift.atomic import check_out_dir
    from sift.default_corpus import CORPUS_KIND, assemble_default_corpus

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("notes\n")
    with pytest.raises(ValueError, match="is not a default-corpus folder"):
        assemble_default_corpus(victim, sources=("pydoc",))
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    # a corpus assembled before "kind" existed is still one (other parameters rebuild it in place)
    old = tmp_path / "old"
    old.mkdir()
    for name in ("corpus.jsonl", "prompts.jsonl"):
        (old / name).write_text("")
    (old / "manifest.json").write_text(json.dumps({"fingerprint": "f", "params": {}, "tokenizer_id": "t"}))
    check_out_dir(old, CORPUS_KIND)
