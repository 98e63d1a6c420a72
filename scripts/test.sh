#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite: the fast tests and the slow end-to-end ones (real Ray, DeepSpeed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest --run-slow "$@"
