#!/usr/bin/env bash
# One-call GPU verification for a lent GPU machine (the device tool), within its 10-minute limit:
#   build for the local arch, run the whole test suite on CUDA (real Triton, bf16), compute-sanitizer
#   memcheck + racecheck on one small case per CUDA kernel, the device's copy bandwidth and matmul rate,
#   the benches, and a markdown summary for benches/RESULTS.md.
# Usage (repository root):  FASTCONV_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh
# Writes into $OUT (the device tool's folder) or ./gpu-check/: summary.md, tests.log, sanitizer.log,
# bench.json, bench.log. The machine has no network: it builds against the torch already installed there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
summary="$OUT/summary.md"
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

step "build for the local GPU"
unset TORCH_CUDA_ARCH_LIST  # setup.py then builds for the visible GPU
if ! FASTCONV_CUDA=1 $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  # No pip/setuptools editable support there: build in place and expose triton_kernels/ by a link.
  FASTCONV_CUDA=1 $PY setup.py -q build_ext --inplace >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  ln -sfn ../triton_kernels fastconv/triton_kernels
fi
$PY -m fastconv info | tee "$OUT/info.txt"

step "tests on CUDA (all backends, real Triton, bf16)"
timeout 300 $PY -m pytest tests -q -p no:cacheprovider -x > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -3 "$OUT/tests.log"

step "compute-sanitizer memcheck + racecheck"
: > "$OUT/sanitizer.log"
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 $PY scripts/sanitizer_cases.py >> "$OUT/sanitizer.log" 2>&1
  echo "$tool: exit $?" | tee -a "$OUT/sanitizer.log"
done

step "roofline and benches"
$PY -m fastconv._roofline | tee "$OUT/roofline.txt"
# --quick: 9 cases per op (fp32 NCHW, fp16/bf16 channels_last, batch 1 and 256) fit the call; the measured
# backend per shape class comes back as auto_table.json, to merge into fastconv/auto_table.json.
cp fastconv/auto_table.json "$OUT/auto_table.json" 2>/dev/null || true
timeout 240 $PY -m fastconv bench --quick --json "$OUT/bench.json" --plot "$OUT/bench.png" \
  --write-auto-table "$OUT/auto_table.json" > "$OUT/bench.log" 2>&1
echo "bench: exit $?"

{
  echo "## $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) — $(date -u +%Y-%m-%d)"
  echo
  echo "- torch $($PY -c 'import torch; print(torch.__version__)'), commit ${FASTCONV_COMMIT:-unknown}"
  echo "- roofline: $(cat "$OUT/roofline.txt")"
  echo "- tests: $(tail -1 "$OUT/tests.log") (exit $tests_rc)"
  echo "- compute-sanitizer: $(grep -E '^(memcheck|racecheck):' "$OUT/sanitizer.log" | paste -sd ';' -)"
  echo
  echo '```'
  grep -E ' us ' "$OUT/bench.log"
  echo '```'
} > "$summary"
cat "$summary"
