#!/usr/bin/env bash
# Install hiennu, then run the whole pipeline on the embedded synthetic dataset on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m hiennu.cli.demo "$@"
