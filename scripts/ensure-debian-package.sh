#!/usr/bin/env bash
# Make sure a Debian package that some tests need is installed:
#   ensure-debian-package.sh PACKAGE 'CHECK' 'WHAT NEEDS IT'
# Idempotent: returns at once when the shell command CHECK succeeds. Otherwise installs PACKAGE with
# apt-get (needs root or passwordless sudo; a fresh machine has nothing installed by hand, and Debian's
# registry is reachable where the hub and vendor downloads are not). Never fails the caller: without the
# package, the tests that need it fail and say what to install.
#   chromium:   the MLflow UI end-to-end test (Playwright's own browser download is not possible offline)
#   postgresql: the tests that run a real PostgreSQL server (tests/pg.py: initdb, pg_ctl on 127.0.0.1)
set -uo pipefail
package=$1 check=$2 why=$3
eval "$check" >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[$package] no apt-get here: install $package by hand for $why" >&2
    exit 0
fi
SUDO=()
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n)
echo "[$package] installing Debian's $package for $why (one-time)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 \
         && "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1; } \
    || echo "[$package] apt-get install $package failed: $why will say so" >&2
exit 0
