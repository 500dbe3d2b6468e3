#!/usr/bin/env bash
# Install hiennu (scripts/install.sh), then run the whole pipeline on the embedded synthetic dataset on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh
bash scripts/install.sh
exec "$PY" -m hiennu.cli.demo "$@"
