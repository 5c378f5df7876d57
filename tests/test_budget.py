"""One step budget across prompts (sift.budget), its frontier read off per-step curves (sift.stats),
and --budget / --allocate through the evaluate flow and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from flow_helpers import read_rows
from typer.testing import CliRunner

from sift.budget import ALL_PICKS, ALPHA, BUDGET, NO_PICKS, allocate, check_budget, predicted_weights
from sift.select import stop_index


def paths(*finals: float, n: int = 8) -> list[list[float]]:
    """σ paths from 1 down to each final value, geometric, n picks each."""
    return [list(np.geomspace(1.0, f, n + 1)) for f in finals]


# ---------------------------------------------------------------------------------------------- policies


def test_uniform_gives_equal_steps_and_the_remainder_to_the_first_prompts():
    alloc = allocate(paths(0.5, 0.6, 0.7), 7, "uniform")
    assert alloc.steps == [3, 2, 2] and alloc.total == 7
    assert alloc.reasons == [BUDGET] * 3


def test_steps_a_capped_prompt_cannot_use_go_to_the_others():
    alloc = allocate(paths(0.5, 0.6, 0.7), 12, "uniform", caps=[1, 8, 8])
    assert alloc.steps == [1, 6, 5] and alloc.reasons == [ALL_PICKS, BUDGET, BUDGET]
    everything = allocate(paths(0.5, 0.6), 100, "sigma")
    assert everything.steps == [8, 8] and everything.reasons == [ALL_PICKS, ALL_PICKS]


def test_sigma_with_gamma_zero_is_uniform_and_otherwise_follows_the_uncertainty_removed():
    sig = paths(0.3, 0.6, 0.9)
    assert allocate(sig, 12, "sigma", gamma=0.0).steps == allocate(sig, 12, "uniform").steps
    steps = allocate(sig, 12, "sigma", gamma=1.0).steps
    assert steps[0] > steps[1] > steps[2] and sum(steps) == 12
    weights = predicted_weights(sig, 1.0)
    assert weights == pytest.approx([0.7, 0.4, 0.1])
    # s_i ≈ B · w_i / Σ w (the greedy on w_i / (s + 1)), here exactly
    assert steps == [7, 4, 1]
    sharper = allocate(sig, 12, "sigma", gamma=3.0).steps
    assert sharper[0] >= steps[0] and sharper[2] <= steps[2]


def test_a_prompt_without_picks_gets_nothing_and_says_so():
    alloc = allocate([[1.0], *paths(0.5, 0.5)], 4, "sigma")
    assert alloc.steps[0] == 0 and alloc.reasons[0] == NO_PICKS and alloc.total == 4


def test_alpha_spends_the_most_of_the_budget_its_rule_allows():
    rng = np.random.default_rng(0)
    sig = [list(np.concatenate([[1.0], np.sort(rng.uniform(0.05, 0.9, 16))[::-1]])) for _ in range(12)]
    variances = [np.square(s) for s in sig]
    for budget in (5, 30, 80, 150):
        alloc = allocate(sig, budget, "alpha")
        assert alloc.total <= budget
        assert alloc.steps == [stop_index(v, alloc.alpha) for v in variances]
        assert all(r == (ALL_PICKS if s == 16 else ALPHA) for s, r in zip(alloc.steps, alloc.reasons))
        # no α spends more without passing the budget: steps change only just above a breakpoint 1/(t·σ_t)
        just_above = [1.0 / (t * s) * (1 + 1e-9) for path in sig for t, s in enumerate(path[1:], start=1)]
        best = max(t for a in just_above if (t := sum(stop_index(v, a) for v in variances)) <= budget)
        assert alloc.total == best
    assert allocate(sig, 16 * 12, "alpha").alpha is None


@pytest.mark.parametrize("budget, prompts, policy, message", [
    (0, 3, "sigma", ">= 1"), (-4, 3, "alpha", ">= 1"), (True, 3, "sigma", ">= 1"), (2.5, 3, "sigma", ">= 1"),
    (2, 3, "uniform", "below the 3 prompts"), (5, 3, "greedy", "uniform, alpha, sigma"),
])
def test_bad_budgets_are_refused_with_what_to_change(budget, prompts, policy, message):
    with pytest.raises(ValueError, match=message):
        check_budget(budget, prompts, policy)
    check_budget(3, 3, "uniform")
    check_budget(1, 3, "sigma")  # sigma and alpha may leave a prompt without a step


def test_the_allocation_is_deterministic_and_never_above_the_budget():
    rng = np.random.default_rng(1)
    sig = [list(np.concatenate([[1.0], np.sort(rng.uniform(0.1, 1.0, 16))[::-1]])) for _ in range(20)]
    for policy in ("uniform", "alpha", "sigma"):
        for budget in (20, 77, 200, 400):
            first, again = allocate(sig, budget, policy), allocate(sig, budget, policy)
            assert first == again and first.total <= budget and all(0 <= s <= 16 for s in first.steps)


# ------------------------------------------------------------------------------- frontier off the curves


def curved_rows(count: int = 24, n: int = 16, seed: int = 0) -> list[dict]:
    """Rows whose gain after s steps is w·log(1+s) with w tied to the uncertainty removed (plus noise),
    evaluated after every step: the situation the sigma policy is built for."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        final = rng.uniform(0.2, 0.95)
        sig = np.geomspace(1.0, final, n + 1)
        before = rng.uniform(0.9, 1.4)
        curve = [before - 0.08 * (1 - final) * np.log1p(s) + rng.normal(0, 1e-4) * (s > 0) for s in range(n + 1)]
        rows.append({"prompt_id": f"p{i}", "method": "sift", "domain": f"d{i % 3}", "bpb_before": before,
                     "bpb_after": curve[-1], "steps": n, "uncertainties": list(sig),
                     "bpb_curve": [(s, v) for s, v in enumerate(curve)]})
    return rows


def test_the_frontier_reads_every_policy_off_the_curves_with_gamma_chosen_on_the_other_half():
    from sift.stats import budget_frontier, split_halves, truncation_reference

    rows = curved_rows()
    halves = split_halves(rows)
    assert sorted(halves[0] + halves[1]) == list(range(24)) and abs(len(halves[0]) - len(halves[1])) <= 1
    assert {rows[i]["domain"] for i in halves[0]} == {rows[i]["domain"] for i in halves[1]}
    frontier = budget_frontier(rows, [4, 8], "sift")
    assert frontier["n"] == 24 and len(frontier["gamma_chosen"]) == 2
    by = {(p["policy"], p["per_prompt"]): p for p in frontier["points"]}
    assert set(by) == {(p, b) for p in ("uniform", "alpha", "sigma") for b in (4.0, 8.0)}
    for (policy, avg), point in by.items():
        assert point["steps"] <= point["budget"] == 24 * avg
    # uniform at s steps per prompt is exactly the uniform cut at s
    cut = {c["stop"]: c["mean_bpb_after"] for c in truncation_reference(rows, "sift")}
    assert by[("uniform", 8.0)]["mean_bpb"] == pytest.approx(cut[8])
    # built for sigma: it wins at equal steps (prompts with much data gain what the others give up)
    for avg in (4.0, 8.0):
        v = by[("sigma", avg)]["vs_uniform"]
        assert v["mean"] < 0 and v["ci_low"] < v["mean"] < v["ci_high"] and v["n"] == 24
        assert by[("sigma", avg)]["mean_bpb"] < by[("uniform", avg)]["mean_bpb"]
    assert all(g > 0 for g in frontier["gamma_chosen"])


def test_halves_stay_balanced_when_domains_have_one_prompt_each():
    from sift.stats import split_halves

    rows = [{"domain": d} for d in ("a", "b", "c", "d", "a", "e")]
    first, second = split_halves(rows)
    assert sorted(first + second) == list(range(6)) and len(first) == len(second) == 3
    assert {rows[i]["domain"] for i in first} & {rows[i]["domain"] for i in second} == {"a"}  # a is split


def test_a_budgeted_runs_rows_give_no_frontier():
    """Their curves end where the budget stopped them: reading other budgets off them would be wrong."""
    from sift.stats import budget_frontier

    rows = curved_rows(count=8)
    for r in rows:
        r["budget_steps"] = r["steps"]
    assert budget_frontier(rows, [4]) == {}


def test_the_summary_carries_the_frontier_only_where_rows_have_full_curves():
    from sift.stats import summarize

    rows = curved_rows(count=8)
    assert "sift" in summarize(rows, budgets_per_prompt=[4])["budget_frontier"]
    for r in rows:
        r["bpb_curve"] = []
    assert summarize(rows, budgets_per_prompt=[4])["budget_frontier"] == {}


# ------------------------------------------------------------------------------------------- the flow


@pytest.fixture()
def fresh_state(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("SIFT_HOME", str(state))
    return state


@pytest.mark.usefixtures("prefect_server")
def test_evaluate_spends_one_budget_across_its_prompts(fresh_state, tmp_path, tiny_index_dir, tiny_prompts_file,
                                                       tiny_lm_dir):
    """--budget through the CLI: selections first, then the library splits the steps; each row says what
    it was granted and why it stopped, and no method spends more than the budget."""
    from flows.cli import app

    out = tmp_path / "rows.jsonl"
    args = ["evaluate", "--index", str(tiny_index_dir), "--prompts", str(tiny_prompts_file), "--model",
            str(tiny_lm_dir), "--method", "nn", "--method", "sift", "--n", "3", "--k", "8", "--max-tokens", "32",
            "--limit", "4", "--budget", "6", "--allocate", "sigma", "--no-tracking", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 8
    for method in ("nn", "sift"):
        mine = [r for r in rows if r["method"] == method]
        assert sum(r["steps"] for r in mine) <= 6
        assert all(r["steps"] == r["budget_steps"] and r["stop_reason"] in (BUDGET, ALL_PICKS) for r in mine)
    assert "budget:" in result.output and "stops:" in result.output


@pytest.mark.parametrize("flags, message", [
    (["--budget", "0"], "--budget"),
    (["--budget", "1", "--allocate", "uniform"], "below the 2 prompts"),
    (["--budget", "4", "--alpha", "1"], "do not go together"),
    (["--budgets", "0"], "--budgets"),
])
def test_bad_budget_flags_get_one_line_and_exit_2(flags, message, fresh_state, tiny_index_dir, tiny_prompts_file,
                                                  tiny_lm_dir):
    from flows.cli import app

    args = ["evaluate", "--index", str(tiny_index_dir), "--prompts", str(tiny_prompts_file), "--model",
            str(tiny_lm_dir), "--limit", "2", "--no-tracking", *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (fresh_state / "prefect").exists()


def test_an_unknown_policy_is_refused_by_name():
    from flows.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--budget", "4", "--allocate", "greedy"])
    assert result.exit_code == 2 and "--allocate" in result.output and "sigma" in result.output


def test_a_prompt_granted_s_steps_scores_what_its_full_curve_shows_after_step_s(tiny_lm_dir):
    """Why the frontier can be read off the curves: s steps on the first s picks are the first s steps of
    the full run (one Adam step per text, in order, seeded), so the bits per byte after them is the curve's
    point at s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sift.finetune import finetune_and_evaluate
    from sift.settings import TrainingSettings

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    texts = ["def add(a, b): return a + b", "the river flows north", "she read the letter twice", "git commit"]
    prompt = "for i in range(10): print(i * i)"
    full = finetune_and_evaluate(model, tokenizer, prompt, texts, TrainingSettings(max_tokens=32, eval_every=1, lr=1e-3))
    curve = dict(full.bpb_curve)
    for s in (1, 2, 3):
        short = finetune_and_evaluate(model, tokenizer, prompt, texts[:s], TrainingSettings(max_tokens=32, lr=1e-3))
        assert short.bpb_after == pytest.approx(curve[s], rel=1e-6)
    assert len({round(v, 6) for v in curve.values()}) == len(curve)  # the steps did change the model
