"""Bad input is refused before anything starts (issue 16): one table row per bad input of the issue, each
run through the real CLI, and unit tests of the content checks that report positions (sift.inputs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sift.inputs import (
    NOT_TEXT_RULE,
    InputError,
    check_corpus_path,
    check_corpus_table,
    check_index_folder,
    check_model_source,
    iter_json_rows,
    looks_local,
    not_text_reason,
    read_prompts,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir) -> Path:
    """A real index of the tiny corpus, built by the library (no Prefect server needed)."""
    from transformers import AutoTokenizer

    from sift.embed import Embedder
    from sift.index import build_index_from_corpus

    out = tmp_path_factory.mktemp("preflight-index") / "index"
    build_index_from_corpus([tiny_corpus_file], out, AutoTokenizer.from_pretrained(tiny_lm_dir),
                            Embedder(tiny_encoder_dir, max_length=64, batch_size=8), max_tokens=8, progress=False,
                            shard_dir=out.parent / "shards")
    return out


@pytest.fixture()
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A state folder nothing has touched, with Prefect's home and MLflow's store inside it: whatever a
    command wrongly started would leave its files here."""
    home = tmp_path / "state"
    monkeypatch.setenv("SIFT_HOME", str(home))
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


# Each maker gets (tmp, index_dir, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tiny_prompts_file) and
# returns the CLI arguments; `expect` are fragments of the one error line (the input's name is always one).


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _index_args(corpus, encoder, lm, *extra) -> list[str]:
    return ["index", "--corpus", str(corpus), "--embedder", str(encoder), "--model", str(lm), "--max-tokens", "8",
            *extra]


def _eval_args(index, prompts, lm, *extra, command="evaluate") -> list[str]:
    return [command, "--index", str(index), "--prompts", str(prompts), "--model", str(lm), "--no-tracking", *extra]


def _copy_index(tmp: Path, index_dir: Path) -> Path:
    copy = tmp / "copied-index"
    shutil.copytree(index_dir, copy)
    return copy


def _delete_faiss(tmp, idx):
    copy = _copy_index(tmp, idx)
    (copy / "index.faiss").unlink()
    return copy


def _truncate_embeddings(tmp, idx):
    copy = _copy_index(tmp, idx)
    path = copy / "embeddings.npy"
    path.write_bytes(path.read_bytes()[:-100])
    return copy


def _corrupt_manifest(tmp, idx):
    copy = _copy_index(tmp, idx)
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text[: len(text) // 2])  # cut inside a string: "Unterminated string ..."
    return copy


def _not_a_model(tmp):
    folder = tmp / "not-a-model"
    _write(folder / "notes.txt", "my notes\n")
    return folder


def _binary(tmp):  # what `/bin/ls` saved as .txt looks like: an ELF header, NUL bytes, machine code
    return _write(tmp / "ls.txt", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40)


def _undecodable(tmp):  # no NUL byte, but mostly bytes that are not UTF-8 (Latin-1 would do this only partly)
    return _write(tmp / "latin.md", bytes(range(0x80, 0x100)) * 20 + b"some ascii")


CASES = {
    # --- index --corpus
    "index: missing corpus path": (
        lambda t, i, c, e, m, p: _index_args(t / "data" / "missing.jsonl", e, m), ["missing.jsonl", "does not exist"]),
    "index: empty JSONL": (
        lambda t, i, c, e, m, p: _index_args(_write(t / "empty.jsonl", ""), e, m), ["empty.jsonl", "is empty"]),
    "index: JSONL with a broken line": (
        lambda t, i, c, e, m, p: _index_args(_write(t / "broken.jsonl", '{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\n'),
                                             e, m),
        ["broken.jsonl", "line 3 is not JSON"]),
    "index: rows without text": (
        lambda t, i, c, e, m, p: _index_args(_write(t / "notext.jsonl", '{"text": "a"}\n{"body": "b"}\n'), e, m),
        ["notext.jsonl", "line 2 has no 'text' field", "body"]),
    "index: an empty folder": (
        lambda t, i, c, e, m, p: _index_args((t / "docs").mkdir() or t / "docs", e, m),
        ["docs", "holds no .txt/.md/.py"]),
    "index: a binary file saved as .txt": (
        lambda t, i, c, e, m, p: _index_args(_binary(t), e, m), ["ls.txt", "not a text file", "NUL byte"]),
    "index: a file of mostly undecodable bytes": (
        lambda t, i, c, e, m, p: _index_args(_undecodable(t), e, m), ["latin.md", "not a text file", "not valid UTF-8"]),
    "index: a folder holding a binary file": (
        lambda t, i, c, e, m, p: _index_args((_write(t / "docs" / "a.txt", "fine text"), _binary(t / "docs"))[1].parent,
                                             e, m),
        ["ls.txt", "not a text file"]),
    "index: unreadable parquet": (
        lambda t, i, c, e, m, p: _index_args(_write(t / "corpus.parquet", "not parquet at all"), e, m),
        ["corpus.parquet", "not a readable parquet file"]),
    "index: --embedder a missing folder": (
        lambda t, i, c, e, m, p: _index_args(c, t / "models" / "encoder", m), ["--embedder", "encoder", "does not exist"]),
    "index: --embedder a folder that is not a model": (
        lambda t, i, c, e, m, p: _index_args(c, _not_a_model(t), m), ["--embedder", "not-a-model", "not a model folder"]),
    "index: --model a missing folder": (
        lambda t, i, c, e, m, p: _index_args(c, e, "./no-such-model"), ["--model", "no-such-model", "does not exist"]),
    "index: --model a hub-like name with the hub offline": (
        lambda t, i, c, e, m, p: _index_args(c, e, "someone/no-such-model"),
        ["--model", "someone/no-such-model", "not a local folder", "HF_HUB_OFFLINE"]),
    # --- evaluate --index / --model / --prompts
    "evaluate: index.faiss deleted": (
        lambda t, i, c, e, m, p: _eval_args(_delete_faiss(t, i), p, m), ["copied-index", "lacks index.faiss"]),
    "evaluate: a truncated index file": (
        lambda t, i, c, e, m, p: _eval_args(_truncate_embeddings(t, i), p, m), ["embeddings.npy", "truncated"]),
    "evaluate: a corrupt manifest.json": (
        lambda t, i, c, e, m, p: _eval_args(_corrupt_manifest(t, i), p, m),
        ["copied-index/manifest.json", "not valid JSON", "rebuild"]),
    "evaluate: a missing index folder": (
        lambda t, i, c, e, m, p: _eval_args(t / "no-index", p, m), ["no-index", "does not exist", "sift-ttft index"]),
    "evaluate: --model a missing folder": (
        lambda t, i, c, e, m, p: _eval_args(i, p, t / "models" / "lm"), ["--model", "models/lm", "does not exist"]),
    "evaluate: --model a folder that is not a model": (
        lambda t, i, c, e, m, p: _eval_args(i, p, _not_a_model(t)), ["--model", "not-a-model", "no config.json"]),
    "evaluate: prompts with a broken line": (
        lambda t, i, c, e, m, p: _eval_args(i, _write(t / "prompts.jsonl", '{"text": "a"}\n{"text": \n'), m),
        ["prompts.jsonl", "line 2 is not JSON"]),
    "evaluate: a missing prompts file": (
        lambda t, i, c, e, m, p: _eval_args(i, t / "none.jsonl", m), ["none.jsonl", "does not exist"]),
    "evaluate: no --index and none built yet": (
        lambda t, i, c, e, m, p: ["evaluate", "--prompts", str(p), "--model", str(m), "--no-tracking"],
        ["--index", "none built yet", "sift-ttft demo"]),
    "evaluate: an empty prompts file": (
        lambda t, i, c, e, m, p: _eval_args(i, _write(t / "prompts.jsonl", "\n"), m), ["prompts.jsonl", "is empty"]),
    # --- tune and demo take the same inputs
    "tune: a truncated index file": (
        lambda t, i, c, e, m, p: _eval_args(_truncate_embeddings(t, i), p, m, command="tune"),
        ["embeddings.npy", "truncated"]),
    "tune: --model a missing folder": (
        lambda t, i, c, e, m, p: _eval_args(i, p, t / "models" / "lm", command="tune"), ["--model", "does not exist"]),
    "demo: --model a missing folder": (
        lambda t, i, c, e, m, p: ["demo", "--model", str(t / "models" / "lm"), "--no-tracking"],
        ["--model", "models/lm", "does not exist"]),
    "demo: --prompts a binary file": (
        lambda t, i, c, e, m, p: ["demo", "--prompts", str(_write(t / "p.jsonl", b"\x00\x01" * 100)), "--no-tracking"],
        ["p.jsonl", "not a text file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, fresh_home, tmp_path, index_dir, tiny_corpus_file,
                                                          tiny_encoder_dir, tiny_lm_dir, tiny_prompts_file):
    from flows.cli import app

    make, expect = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = make(inputs, index_dir, tiny_corpus_file, tiny_encoder_dir, tiny_lm_dir, tiny_prompts_file)
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "Repo id" not in result.output
    for fragment in expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert not fresh_home.exists() or not any(fresh_home.iterdir()), sorted(p.name for p in fresh_home.iterdir())


def test_tune_creates_no_storage_for_a_refused_input(fresh_home, tmp_path, index_dir, tiny_prompts_file):
    """Opening an Optuna storage creates its database: that waits until every input passed."""
    from flows.cli import app

    db = tmp_path / "optuna.db"
    result = CliRunner().invoke(app, _eval_args(index_dir, tiny_prompts_file, tmp_path / "no" / "lm", "--storage",
                                                f"sqlite:///{db}", command="tune"))
    assert result.exit_code == 2 and "--model" in result.output, result.output
    assert not db.exists()
    assert not fresh_home.exists() or not any(fresh_home.iterdir())


def test_the_good_inputs_of_the_table_pass_the_preflight(fresh_home, index_dir, tiny_corpus_file, tiny_encoder_dir,
                                                          tiny_lm_dir, tiny_prompts_file, tmp_path):
    """The table's refusals come from the bad input, not from the fixtures: the same commands with good
    inputs pass every preflight (and write nothing either)."""
    from flows.config import DemoConfig, EvaluateConfig, IndexConfig, TuneConfig
    from flows.preflight import preflight_demo, preflight_evaluate, preflight_index, preflight_tune

    docs = tmp_path / "docs"
    _write(docs / "a.md", "# A title\n\nSome text in UTF-8: café, naïve.")
    _write(docs / "empty.txt", "")  # an empty document among others is skipped when loading, not refused
    preflight_index(IndexConfig(corpus=[str(tiny_corpus_file), str(docs)], embedder=str(tiny_encoder_dir),
                                model=str(tiny_lm_dir), out=tmp_path / "new-index"))
    evaluation = dict(index=index_dir, prompts=tiny_prompts_file, model=str(tiny_lm_dir), tracking=False)
    preflight_evaluate(EvaluateConfig(**evaluation))
    preflight_tune(TuneConfig(**evaluation))
    preflight_demo(DemoConfig(model=str(tiny_lm_dir), prompts=tiny_prompts_file))
    assert not fresh_home.exists() or not any(fresh_home.iterdir())


def test_refusal_imports_no_heavy_stack_and_is_fast(tmp_path):
    """Before Prefect is imported (importing it creates its home folder), before torch or MLflow: a
    subprocess, so that nothing imported by other tests hides an import."""
    missing = tmp_path / "missing.jsonl"
    code = ("import sys, time; t = time.perf_counter(); from typer.testing import CliRunner; from flows.cli import app; "
            f"r = CliRunner().invoke(app, ['index', '--corpus', {str(missing)!r}]); "
            "heavy = [m for m in ('prefect', 'torch', 'mlflow', 'transformers', 'optuna') if m in sys.modules]; "
            "import json; print(json.dumps([r.exit_code, heavy, time.perf_counter() - t]))")
    env = {**os.environ, "SIFT_HOME": str(tmp_path / "state")}
    env.pop("PREFECT_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    exit_code, heavy, seconds = json.loads(out.stdout.strip().splitlines()[-1])
    assert (exit_code, heavy) == (2, []), out.stdout + out.stderr
    assert seconds < 15, out.stdout  # about 1 s on a quiet machine
    assert not any((tmp_path / "state").iterdir())


def test_index_help_states_the_not_text_rule():
    from flows.cli import app

    result = CliRunner().invoke(app, ["index", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert result.exit_code == 0
    assert NOT_TEXT_RULE in " ".join(result.output.split())


def test_flows_run_the_preflight_first(tmp_path, tiny_encoder_dir, tiny_lm_dir, index_dir, tiny_prompts_file):
    """Deployments call the flows without the CLI: each flow's body refuses the same input first (here
    called directly, outside a Prefect run: the preflight comes before anything Prefect does)."""
    from flows.build_index import build_index_in_flow
    from flows.config import DemoConfig, EvaluateConfig, IndexConfig, TuneConfig
    from flows.demo import demo
    from flows.evaluate import evaluate_in_flow
    from flows.tune import tune

    binary = _binary(tmp_path)
    with pytest.raises(InputError, match="not a text file"):
        build_index_in_flow(IndexConfig(corpus=[str(binary)], embedder=str(tiny_encoder_dir), model=str(tiny_lm_dir)))
    broken = _truncate_embeddings(tmp_path, index_dir)
    with pytest.raises(InputError, match="truncated"):
        evaluate_in_flow(EvaluateConfig(index=broken, prompts=tiny_prompts_file, model=str(tiny_lm_dir), tracking=False))
    with pytest.raises(InputError, match="does not exist"):
        tune.fn(TuneConfig(index=index_dir, prompts=tiny_prompts_file, model=str(tmp_path / "no" / "lm")))
    with pytest.raises(InputError, match="does not exist"):
        demo.fn(DemoConfig(model=str(tmp_path / "no" / "lm")))


# ---------------------------------------------------------------------------- content checks, unit


@pytest.mark.parametrize("data, refused", [
    (b"", False),
    (b"plain ascii text\n", False),
    ("UTF-8 with accents: café, naïve, 日本語".encode(), False),
    (b"text then a NUL\x00", True),
    (bytes(range(0x80, 0x100)), True),  # 100 % invalid
    (b"a" * 71 + b"\xff" * 29, False),  # 29 %: under the 30 % rule
    (b"a" * 69 + b"\xff" * 31, True),  # 31 %
    ("é".encode() * 10 + "é".encode()[:1], False),  # a character cut by the end of the block is not counted
])
def test_not_text_rule(data, refused):
    assert (not_text_reason(data) is not None) is refused


def test_not_text_reason_gives_the_position_of_the_nul_byte():
    assert not_text_reason(b"abc\x00def") == "a NUL byte at offset 3"
    assert not_text_reason(b"a" * 9000 + b"\x00") is None  # only the first 8 KiB is read


def test_jsonl_rows_keep_their_line_numbers_across_blank_lines(tmp_path):
    path = _write(tmp_path / "c.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\n{"text": "c",}\n')
    rows = iter_json_rows(path, "corpus file")
    assert [next(rows).where, next(rows).where] == ["line 1", "line 4"]
    with pytest.raises(InputError) as err:
        next(rows)
    assert f"corpus file '{path}' line 5 is not JSON" in str(err.value) and "column 14" in str(err.value)


def test_a_json_array_reports_line_and_column_or_item(tmp_path):
    bad = _write(tmp_path / "c.json", '[\n  {"text": "a"},\n  {"text": "b"\n]\n')
    with pytest.raises(InputError, match=r"line 4 column 1 is not JSON"):
        check_corpus_table(bad)
    no_text = _write(tmp_path / "d.json", '[{"text": "a"}, {"title": "b"}]')
    with pytest.raises(InputError, match=r"item 2 has no 'text' field \(its fields: title\)"):
        check_corpus_table(no_text)
    assert check_corpus_table(_write(tmp_path / "e.json", '[{"text": "a"}, {"text": null}]')) == 1


def test_the_first_row_without_text_is_named_and_wrong_types_are_refused(tmp_path):
    path = _write(tmp_path / "c.jsonl", '{"text": "a"}\n{"text": ""}\n{"content": "x", "id": 3}\n{"body": "y"}\n')
    with pytest.raises(InputError, match=r"line 3 has no 'text' field \(its fields: content, id\)"):
        check_corpus_table(path)
    with pytest.raises(InputError, match=r"line 2: 'text' is a number, not a string"):
        check_corpus_table(_write(tmp_path / "n.jsonl", '{"text": "a"}\n{"text": 5}\n'))
    with pytest.raises(InputError, match=r"line 1 is an array, not a JSON object"):
        check_corpus_table(_write(tmp_path / "l.jsonl", '["a"]\n'))
    with pytest.raises(InputError, match="holds no non-empty 'text'"):
        check_corpus_path(str(_write(tmp_path / "blank.jsonl", '{"text": "  "}\n{"text": null}\n')))


def test_invalid_utf8_inside_jsonl_is_accepted_as_the_loader_repairs_it(tmp_path):
    path = _write(tmp_path / "c.jsonl", b'{"text": "caf\xe9 au lait, a long enough line of ascii text"}\n')
    assert check_corpus_table(path) == 1


def test_parquet_is_checked_from_its_footer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "id": ["1", "2"]}), good)
    assert check_corpus_table(good) == 2
    no_text = tmp_path / "no-text.parquet"
    pq.write_table(pa.table({"body": ["a"]}), no_text)
    with pytest.raises(InputError, match=r"has no 'text' column \(columns: body\)"):
        check_corpus_table(no_text)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(InputError, match="column 'text' holds int64"):
        check_corpus_table(numbers)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    with pytest.raises(InputError, match=r"is empty \(0 rows\)"):
        check_corpus_table(empty)
    truncated = _write(tmp_path / "cut.parquet", good.read_bytes()[:-20])
    with pytest.raises(InputError, match="not a readable parquet file"):
        check_corpus_table(truncated)


def test_folders_and_unknown_types(tmp_path):
    other = tmp_path / "other"
    _write(other / "data.csv", "a,b\n")
    with pytest.raises(InputError, match=r"holds no \.txt/\.md/\.py/\.jsonl/\.json/\.parquet file \(it holds 1 other"):
        check_corpus_path(str(other))
    hidden = tmp_path / "hidden"
    _write(hidden / ".git" / "x.txt", "\x00")  # hidden files are skipped, as the loader skips them
    _write(hidden / "a.txt", "text")
    assert check_corpus_path(str(hidden)) == 1
    empties = tmp_path / "empties"
    _write(empties / "a.txt", "  \n")
    with pytest.raises(InputError, match="holds no non-empty document"):
        check_corpus_path(str(empties))
    with pytest.raises(InputError, match=r"unknown type \(\.csv\)"):
        check_corpus_path(str(other / "data.csv"))


def test_prompts_report_the_line(tmp_path):
    assert [p["id"] for p in read_prompts(_write(tmp_path / "p.jsonl", '{"text": "a"}\n\n{"id": "x", "text": "b"}\n'))] \
        == ["1", "x"]
    with pytest.raises(InputError, match="line 2: 'text' is missing or empty"):
        read_prompts(_write(tmp_path / "q.jsonl", '{"text": "a"}\n{"text": " "}\n'))
    with pytest.raises(InputError, match=r"line 2 is not valid UTF-8 \(byte 14 of the line\)"):
        read_prompts(_write(tmp_path / "r.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n'))
    with pytest.raises(InputError, match="is a folder"):
        read_prompts(tmp_path)


@pytest.mark.parametrize("raw, local", [
    ("./model", True), ("/abs/model", True), ("~/model", True), ("models/a/b", True), ("corpus.jsonl", True),
    ("models\\lm", True), ("gpt2", False), ("HuggingFaceTB/SmolLM2-135M", False), ("wikitext:train", False),
])
def test_looks_local(raw, local):
    assert looks_local(raw) is local


def test_model_sources(tmp_path, tiny_lm_dir, tiny_encoder_dir, monkeypatch):
    check_model_source(str(tiny_lm_dir), "--model")
    check_model_source(str(tiny_encoder_dir), "--embedder")
    tokenizer_only = tmp_path / "tok"
    tokenizer_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_lm_dir / name, tokenizer_only / name)
    check_model_source(str(tokenizer_only), "--model", need_weights=False)  # `index` needs only the tokenizer
    with pytest.raises(InputError, match="no weights"):
        check_model_source(str(tokenizer_only), "--model")
    (tokenizer_only / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="no tokenizer file"):
        check_model_source(str(tokenizer_only), "--model", need_weights=False)
    with pytest.raises(InputError, match="is a file, not a model folder"):
        check_model_source(str(tiny_lm_dir / "config.json"), "--model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_model_source("someone/some-model", "--model")  # with the hub on, a hub id is the loader's to fetch
    with pytest.raises(InputError, match="does not exist"):
        check_model_source("./someone/some-model", "--model")  # ... but a local-looking path never is


def test_index_folder_checks_reuse_the_manifest_rules(tmp_path, index_dir):
    manifest = check_index_folder(index_dir)
    assert manifest["fingerprint"] and manifest["embedder_id"]
    copy = _copy_index(tmp_path, index_dir)
    data = json.loads((copy / "manifest.json").read_text())
    data["embedder"]["name_or_path"] = str(tmp_path / "gone" / "encoder")
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="built with the embedder in .*gone/encoder, which no longer exists"):
        check_index_folder(copy)
    with pytest.raises(InputError, match="is a file, not an index folder"):
        check_index_folder(copy / "manifest.json")


def test_suffixes_equal_the_loaders():
    import sift.corpus
    import sift.inputs

    assert sift.inputs.TEXT_SUFFIXES == sift.corpus.TEXT_SUFFIXES
    assert sift.inputs.TABLE_SUFFIXES == sift.corpus.TABLE_SUFFIXES


@pytest.mark.parametrize("command", ["evaluate", "tune", "demo"])
def test_an_unreachable_tracking_server_is_refused_in_seconds_before_anything_loads(command, fresh_home, tmp_path,
                                                                                   index_dir, tiny_prompts_file,
                                                                                   tiny_lm_dir, monkeypatch):
    """MLFLOW_TRACKING_URI naming a server nobody answers: one error line within a few seconds, before a
    model loads or Prefect starts (the flows used to find out only after the model had loaded)."""
    import socket
    import time

    from flows.cli import app

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    args = _eval_args(index_dir, tiny_prompts_file, tiny_lm_dir, command=command)
    args = ["demo", "--model", str(tiny_lm_dir)] if command == "demo" else [a for a in args if a != "--no-tracking"]
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: MLFLOW_TRACKING_URI") and "not reachable" in lines[0], lines[0]
    assert time.perf_counter() - started < 10
    assert not fresh_home.exists() or not any(fresh_home.iterdir())
