#!/usr/bin/env bash
# Fill gpu_data/ (git-ignored through .git/info/exclude) with what benchmarks/gpu_cv.sh needs on a lent CUDA
# machine that has torch but not SimpleITK, batchgenerators or acvl_utils, and that cannot download:
#   bash benchmarks/gpu_carry.sh [PLANS_JSON]
# - gpu_data/wheels: the SimpleITK wheel for the device's Python (PY, default 3.12), downloaded here;
# - gpu_data/pylib: batchgenerators and acvl_utils copied from this environment (pure Python);
# - gpu_data/BONBID2023_Train_dev: the dev cases (BONBID_SRC, default ../shared/data/BONBID2023_Train_dev);
# - gpu_data/PLANS.json: an edited plans file to train with (optional argument).
# The whole working tree travels in 64 MiB: SimpleITK (about 53 MB) and the dev cases (11 MB) fill it, so
# blosc2 (imported by acvl_utils, never called by hiennu) is replaced there by a stand-in module, and
# connected-components-3d, future and unittest2 (not imported on hiennu's paths) stay behind.
set -euo pipefail
PY="${PY:-3.12}"
SRC="${BONBID_SRC:-../shared/data/BONBID2023_Train_dev}"
PYTHON="${PYTHON:-$(command -v python3)}"
mkdir -p .git/info gpu_data/wheels gpu_data/pylib
grep -qx '/gpu_data/' .git/info/exclude 2>/dev/null || echo '/gpu_data/' >>.git/info/exclude
SITK=$("$PYTHON" -c "import SimpleITK; print(SimpleITK.Version.VersionString())")
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d gpu_data/wheels "SimpleITK==$SITK"
for pkg in batchgenerators acvl_utils; do
    dir=$("$PYTHON" -c "import $pkg, os; print(os.path.dirname($pkg.__file__))")
    rm -rf "gpu_data/pylib/$pkg" && cp -r "$dir" gpu_data/pylib/
done
find gpu_data/pylib -name __pycache__ -prune -exec rm -rf {} +
[ -d "$SRC/1ADC_ss" ] || { echo "no BONBID dev cases at $SRC (set BONBID_SRC)" >&2; exit 1; }
rm -rf gpu_data/BONBID2023_Train_dev && cp -r "$SRC" gpu_data/BONBID2023_Train_dev
[ $# -ge 1 ] && cp "$1" gpu_data/
total=$(( $(du -sb gpu_data | cut -f1) + $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) ))
echo "gpu_data/ ready; the working tree that travels is about $(( total / 1048576 )) MiB of the 64 MiB a call carries"
