#!/usr/bin/env bash
# Install hiennu and its dependencies into the current Python (CPU build of torch, pinned so pip
# never pulls a multi-GB CUDA build). Extra pip arguments are passed on, e.g. '.[test]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check -e "${1:-.}"
