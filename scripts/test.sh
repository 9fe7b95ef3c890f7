#!/usr/bin/env bash
# Lint, type-check and run the test suite (the benchmarks are not part of it).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
