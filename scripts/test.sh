#!/usr/bin/env bash
# Set up the environment (idempotent) and run every check CI runs:
# lint, format, types, import boundaries, the docs site, then the unit, integration and e2e tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/services.sh || echo "warning: PostgreSQL/Redis could not be started; integration tests will say why"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
V=.venv/bin
$V/ruff check .
$V/ruff format --check .
$V/mypy personalize app ui
$V/lint-imports
$V/mkdocs build --strict --quiet
$V/python -m pytest -p no:cacheprovider "$@"
