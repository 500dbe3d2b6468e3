#!/usr/bin/env bash
# Install hiennu with its test extra, then run the default (fast) test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh ".[test]"
exec "${PYTHON:-python3}" -m pytest -q "$@"
