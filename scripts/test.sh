#!/usr/bin/env bash
# Install hiennu with its test extra (scripts/install.sh), then run the default (fast) test suite.
# HIENNU_TEST_EXTRAS adds extras: CI uses 'test,triton' to also check the CUDA distance-transform
# kernel through Triton's CPU interpreter (triton is several hundred MB; its tests skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh
bash scripts/install.sh ".[${HIENNU_TEST_EXTRAS:-test}]"
exec "$PY" -m pytest -q "$@"
