#!/usr/bin/env bash
# Install hiennu (editable) and its dependencies into the Python chosen by scripts/_python.sh.
# Extra pip arguments are passed on, e.g. '.[test]'.
#
# torch: kept when a torch >= 2.1 is already installed. Otherwise HIENNU_TORCH decides:
#   cpu  (default)  the CPU build, from https://download.pytorch.org/whl/cpu (about 200 MB); when that index
#                   cannot be reached (an offline machine with a local mirror), pip's configured index
#   cuda            the CUDA build from pip's configured index (PyPI serves CUDA builds on Linux, several GB);
#                   HIENNU_TORCH_INDEX=https://download.pytorch.org/whl/cu126 picks a CUDA version
#   pip             whatever pip's configured index serves (e.g. a local mirror)
#   skip            never install torch here
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if "$PY" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 1))' 2>/dev/null; then
    echo "hiennu: using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')" >&2
else
    case "${HIENNU_TORCH:-cpu}" in
        cpu)  if ! "${PIP[@]}" --timeout 20 --retries 1 torch \
                     --index-url "${HIENNU_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"; then
                  echo "hiennu: the PyTorch CPU index could not be reached; installing torch from pip's configured index" >&2
                  "${PIP[@]}" torch
              fi ;;
        cuda) if [ -n "${HIENNU_TORCH_INDEX:-}" ]; then "${PIP[@]}" torch --index-url "$HIENNU_TORCH_INDEX"
              else "${PIP[@]}" torch; fi ;;
        pip)  "${PIP[@]}" torch ;;
        skip) ;;
        *)    echo "hiennu: HIENNU_TORCH must be cpu, cuda, pip or skip, got '$HIENNU_TORCH'" >&2; exit 1 ;;
    esac
fi
"${PIP[@]}" -e "${1:-.}"
