# The two commands of the README. Each sets up .venv (idempotent) and then runs.
.PHONY: demo test setup bench

setup:
	@bash scripts/setup.sh

# Command one: the main job on the embedded default (SmolLM2-135M, MiniLM, local mini-Pile corpus).
demo: setup
	@.venv/bin/sift-ttft demo

# Command two: the whole test suite (slow tests included; CI runs exactly this).
test: setup
	@bash scripts/test.sh
