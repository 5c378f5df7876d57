#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries exist for the tests that run a real PostgreSQL server
# (tests/pg.py: initdb into a temporary folder, pg_ctl start on a free loopback port, stopped afterwards).
#
# Idempotent: returns at once when initdb/pg_ctl are on PATH or in /usr/lib/postgresql/<v>/bin. Otherwise
# installs Debian's `postgresql` package with apt-get (needs root or passwordless sudo). Never fails the
# caller: without PostgreSQL the tests that need it fail and say what to install.
set -uo pipefail
if command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[postgresql] no apt-get here: install PostgreSQL (initdb, pg_ctl) by hand for the PostgreSQL tests" >&2
    exit 0
fi
SUDO=()
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n)
echo "[postgresql] installing Debian's postgresql for the PostgreSQL tests (one-time)" >&2
export DEBIAN_FRONTEND=noninteractive

"${SUDO[@]}" apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 \
         && "${SUDO[@]}" apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1; } \
    || echo "[postgresql] apt-get install postgresql failed: the PostgreSQL tests will say so" >&2
exit 0
