#!/usr/bin/env bash
# Run the whole test suite (slow tests included). pytest's exit 5 ("no tests collected") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
# The MLflow UI end-to-end test drives Debian's chromium; install it once if missing (idempotent).
bash scripts/ensure-chromium.sh
# The PostgreSQL tests (tests/pg.py) start a real server from Debian's postgresql; install it once if missing.
bash scripts/ensure-postgresql.sh
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "no tests were collected: that is a failure" >&2
    exit 1
fi
exit $rc
