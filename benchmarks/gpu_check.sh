#!/usr/bin/env bash
# One-shot GPU check of training, for a lent CUDA machine (run from the repository root):
#   bash benchmarks/gpu_check.sh [EPOCHS]
# Needs: the BONBID dev cases at $BONBID_SRC (default shared/data/BONBID2023_Train_dev, or
# ../shared/data/...), and either a CUDA build of torch already installed or wheels in $WHEELS
# (default shared/wheels) to install offline. Writes $OUT/bench_train_gpu.json,
# $OUT/gpu_check.log and $OUT/progress.json. Prints the benchmark table last.
set -euo pipefail
EPOCHS="${1:-100}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-shared/wheels}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    python -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl >>"$OUT/gpu_check.log" 2>&1
fi
python -m pip install --no-deps --no-build-isolation -e . >>"$OUT/gpu_check.log" 2>&1
SRC="${BONBID_SRC:-}"
for candidate in shared/data/BONBID2023_Train_dev ../shared/data/BONBID2023_Train_dev; do
    if [ -z "$SRC" ] && [ -d "$candidate/1ADC_ss" ]; then SRC="$candidate"; fi
done
if [ -z "$SRC" ]; then echo "BONBID dev cases not found; set BONBID_SRC" >&2; exit 2; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/gpu_check.log"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA in torch ' + torch.__version__; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu_check.log"
WORK="${WORK:-/tmp/hiennu_gpu_check}"
python benchmarks/bench_train_gpu.py --src "$SRC" --work "$WORK" --device cuda --epochs "$EPOCHS" \
    --num-workers "$(( $(nproc) > 4 ? 4 : $(nproc) ))" --out "$OUT/bench_train_gpu.json" 2>>"$OUT/gpu_check.log"
cp "$WORK"/hiennu_results/Dataset901_Bench/TrainerTverskyHDT__hiennuPlans__3d_fullres/fold_0/progress.json "$OUT/" || true
