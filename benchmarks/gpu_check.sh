#!/usr/bin/env bash
# One-shot GPU check for a lent CUDA machine (run from the repository root): training (issue 4),
# then the GPU tests, the loss, augmentation and one-case prediction timings (issues 3-5):
#   bash benchmarks/gpu_check.sh [EPOCHS]
# Needs: the BONBID dev cases at $BONBID_SRC (default gpu_data/BONBID2023_Train_dev, as benchmarks/gpu_carry.sh
# fills it, then shared/data/... or ../shared/data/...), a CUDA build of torch, and SimpleITK, batchgenerators and
# acvl_utils: installed, or carried in gpu_data/ (gpu_carry.sh: the SimpleITK wheel in gpu_data/wheels, the others
# in gpu_data/pylib) or wheels in $WHEELS to install offline. Writes $OUT/bench_train_gpu.json,
# $OUT/gpu_check.log, $OUT/progress.json, $OUT/pytest_gpu.log, $OUT/bench_losses_cuda.txt,
# $OUT/bench_augmentation.txt and $OUT/bench_predict_cuda.txt. Each later step has its own time limit.
set -euo pipefail
EPOCHS="${1:-100}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"   # lent machines may have python3 only
for WHEELS in "${WHEELS:-}" gpu_data/wheels shared/wheels; do
    if [ -n "$WHEELS" ] && [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl >>"$OUT/gpu_check.log" 2>&1
        break
    fi
done
if [ -d gpu_data/pylib ]; then export PYTHONPATH="$PWD/gpu_data/pylib${PYTHONPATH:+:$PYTHONPATH}"; fi
# The editable install compiles the C distance transform; without a compiler, run from the source
# tree instead (the losses then fall back to the ITK back-end on CPU tensors; CUDA uses torch anyway).
if ! "$PY" -m pip install --no-deps --no-build-isolation -e . >>"$OUT/gpu_check.log" 2>&1; then
    echo "pip install -e . failed (see above): running from the source tree without hiennu.losses._edt" \
        | tee -a "$OUT/gpu_check.log"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
SRC="${BONBID_SRC:-}"
for candidate in gpu_data/BONBID2023_Train_dev shared/data/BONBID2023_Train_dev ../shared/data/BONBID2023_Train_dev; do
    if [ -z "$SRC" ] && [ -d "$candidate/1ADC_ss" ]; then SRC="$candidate"; fi
done
if [ -z "$SRC" ]; then echo "BONBID dev cases not found; set BONBID_SRC" >&2; exit 2; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/gpu_check.log"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in torch ' + torch.__version__; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu_check.log"
WORK="${WORK:-/tmp/hiennu_gpu_check}"
CONFIG="${CONFIG:-3d_lossless}"   # bench_train_gpu.py's whole-volume configuration, and where its fold lands
"$PY" benchmarks/bench_train_gpu.py --src "$SRC" --work "$WORK" --device cuda --epochs "$EPOCHS" \
    --configuration "$CONFIG" --num-workers "$(( $(nproc) > 4 ? 4 : $(nproc) ))" --out "$OUT/bench_train_gpu.json" \
    2>>"$OUT/gpu_check.log" || echo "the training benchmark failed: see gpu_check.log" | tee -a "$OUT/gpu_check.log"
cp "$WORK/hiennu_results/Dataset901_Bench/TrainerTverskyHDT__hiennuPlans__$CONFIG/fold_0/progress.json" "$OUT/" \
    || echo "no progress.json of the training benchmark" | tee -a "$OUT/gpu_check.log"
timeout 120 "$PY" -m pytest -q -m gpu tests/ >"$OUT/pytest_gpu.log" 2>&1 || echo "GPU tests failed: see pytest_gpu.log"
timeout 120 "$PY" benchmarks/bench_losses.py --device cuda --repeats 3 --edt >"$OUT/bench_losses_cuda.txt" 2>&1 || true
# the same losses with the fields computed on the host by the C back-end (which 'auto' should pick?)
timeout 60 "$PY" benchmarks/bench_losses.py --device cuda --repeats 3 --backend native --threads "$(nproc)" \
    --losses Dice,HausdorffDT,TverskyHDT >>"$OUT/bench_losses_cuda.txt" 2>&1 || true
timeout 90 "$PY" benchmarks/bench_augmentation.py --samples 8 >"$OUT/bench_augmentation.txt" 2>&1 || true
timeout 90 "$PY" benchmarks/bench_predict.py --device cuda --cases 3 --grid 160 160 64 --data "$SRC" \
    >"$OUT/bench_predict_cuda.txt" 2>&1 || true
tail -n 20 "$OUT"/bench_*.txt
