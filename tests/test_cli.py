"""The ``sift-ttft`` CLI: flags generated from the pydantic configs, validation, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app, config_command
from flows.config import DemoConfig, EvaluateConfig, IndexConfig, TuneConfig

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _capture(config_cls):
    """A throwaway app whose one command records the config it was given."""
    seen = []
    test_app = typer.Typer()

    @config_command(test_app, "run", config_cls)
    def run(config) -> None:
        seen.append(config)

    @test_app.command("other")
    def other() -> None:  # a second command keeps "run" a subcommand, as in the real app
        pass

    return test_app, seen


@pytest.mark.parametrize("config_cls", [EvaluateConfig, IndexConfig, DemoConfig, TuneConfig])
def test_no_flags_gives_the_config_defaults(config_cls):
    test_app, seen = _capture(config_cls)
    result = runner.invoke(test_app, ["run"])
    assert result.exit_code == 0, result.output
    assert seen == [config_cls()]


def test_flags_repeatable_lists_and_bools_reach_the_config(tmp_path):
    test_app, seen = _capture(EvaluateConfig)
    args = ["run", "--method", "nn", "--method", "sift", "--lam", "0.5", "--alpha", "2", "--max-tokens", "64",
            "--no-tracking", "--index", str(tmp_path), "--task-runner", "dask", "--dask-workers", "3"]
    result = runner.invoke(test_app, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.method == ["nn", "sift"]
    assert (config.lam, config.alpha, config.max_tokens, config.tracking) == (0.5, 2.0, 64, False)
    assert config.index == tmp_path and config.task_runner == "dask" and config.dask_workers == 3


def test_corpus_flag_is_repeatable():
    test_app, seen = _capture(IndexConfig)
    result = runner.invoke(test_app, ["run", "--corpus", "a.jsonl", "--corpus", "b"])
    assert result.exit_code == 0, result.output
    assert seen[0].corpus == ["a.jsonl", "b"]


def test_validation_error_is_one_line_and_exit_2():
    result = runner.invoke(app, ["evaluate", "--lam", "-1", "--method", "bogus"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "--lam" in lines[0] and "--method" in lines[0] and "bogus" in lines[0]


def test_model_validator_errors_are_readable(tmp_path):
    result = runner.invoke(app, ["tune", "--lam-min", "5", "--lam-max", "1"])
    assert result.exit_code == 2
    assert "empty λ′ range" in result.output and "Traceback" not in result.output
    bad = tmp_path / "best.json"
    bad.write_text(json.dumps({"lam": -3}))
    result = runner.invoke(app, ["evaluate", "--params", str(bad)])
    assert result.exit_code == 2 and "'lam' must be a number > 0" in result.output


def test_params_file_overrides_lam_and_alpha(tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"lam": 0.3, "alpha": 4.0}))
    config = EvaluateConfig(params=best, lam=9.0)
    assert (config.lam, config.alpha) == (0.3, 4.0)


@pytest.mark.parametrize("command,config_cls", [("evaluate", EvaluateConfig), ("index", IndexConfig),
                                                ("demo", DemoConfig), ("tune", TuneConfig)])
def test_help_lists_every_field_with_description_and_default(command, config_cls):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, field in config_cls.model_fields.items():
        assert "--" + name.replace("_", "-") in text, name
        assert " ".join(field.description.split())[:40] in text, name
    if command == "demo":
        assert "[default: 8]" in text  # DemoConfig's own n, not EvaluateConfig's 16
    if command == "evaluate":
        assert "[default: base, nn, sift]" in text


def test_every_subcommand_is_registered():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    for command in ("demo", "index", "evaluate", "tune", "ui", "corpus"):
        assert command in result.output


def test_help_is_fast_and_imports_no_heavy_stack():
    code = ("import sys, flows.cli; heavy = [m for m in ('prefect', 'torch', 'mlflow', 'optuna', 'transformers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
