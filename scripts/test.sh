#!/usr/bin/env bash
# Run the whole test suite (slow tests included). pytest's exit 5 ("no tests collected") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
# Debian packages some tests need, installed once if missing (idempotent): the MLflow UI end-to-end test
# drives chromium; the PostgreSQL tests (tests/pg.py) start a real server from postgresql.
bash scripts/ensure-debian-package.sh chromium "test -x /usr/bin/chromium" "the MLflow UI test (tests/test_ui_e2e.py)"
bash scripts/ensure-debian-package.sh postgresql \
    "command -v pg_ctl || compgen -G '/usr/lib/postgresql/*/bin/pg_ctl'" "the PostgreSQL tests (tests/pg.py)"
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "no tests were collected: that is a failure" >&2
    exit 1
fi
exit $rc
