#!/usr/bin/env bash
# Make sure a headless browser exists for the MLflow UI end-to-end test (tests/test_ui_e2e.py).
#
# Idempotent: returns at once when /usr/bin/chromium is there. Otherwise installs Debian's `chromium`
# with apt-get (needs root; Playwright's own browser download is not possible offline, Debian's
# registry is). Never fails the caller: without a browser the e2e test reports why it failed.
set -uo pipefail
[[ -x /usr/bin/chromium ]] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[chromium] no apt-get here: install chromium by hand for tests/test_ui_e2e.py" >&2
    exit 0
fi
SUDO=()
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n)
echo "[chromium] installing Debian's chromium for the MLflow UI test (one-time)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 \
         && "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
    || echo "[chromium] apt-get install chromium failed: tests/test_ui_e2e.py will say so" >&2
exit 0
