#!/usr/bin/env bash
# One-call GPU verification for a lent GPU machine (the device tool), within its 10-minute limit:
#   build for the local arch, the test suite's GPU cases (real Triton, bf16), compute-sanitizer memcheck +
#   racecheck on one small case per CUDA kernel, the device's copy bandwidth and matmul rate, the benches, and a
#   markdown summary for benches/RESULTS.md.
# Usage (repository root):  FASTCONV_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh
# Writes into $OUT (the device tool's folder) or ./gpu-check/: summary.md, tests.log, sanitizer.log,
# bench.json, bench.log. The machine has no network: it builds against the torch already installed there
# (torch 2.11 / Triton 3.6 / Python 3.12 on the H200 image, as of 2026-11; this tree builds against torch 2.11 +
# CUDA 13.0, checked on the CPU machine in session 10).
#
# Time: every step runs under a share of one deadline (GPU_CHECK_SECONDS, default 560 s from the start, under the
# device tool's 600 s), in order of value: build, tests, memcheck, benches, racecheck (each step keeps back what the
# more valuable later ones need). A step that would not get its minimum is skipped and says so. summary.md is written step by step, so a call cut short still brings back
# what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
summary="$OUT/summary.md"
deadline=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-560} ))
step() { echo "== $* ($(date -u +%H:%M:%S), $(( deadline - $(date +%s) )) s left)"; }
note() { echo "$*" >> "$summary"; }
# seconds a step may take: its cap, or what is left before the deadline minus `reserve` for the later steps
budget() {  # budget CAP RESERVE
  local left=$(( deadline - $(date +%s) - $2 ))
  (( left < $1 )) && echo "$left" || echo "$1"
}

{
  echo "## $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) — $(date -u +%Y-%m-%d)"
  echo
  echo "- torch $($PY -c 'import torch; print(torch.__version__)' 2>&1), triton $($PY -c 'import triton; print(triton.__version__)' 2>&1), commit ${FASTCONV_COMMIT:-unknown}"
} > "$summary"

step "build for the local GPU"
unset TORCH_CUDA_ARCH_LIST  # setup.py then builds for the visible GPU
if ! FASTCONV_CUDA=1 $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  # No pip/setuptools editable support there: build in place and expose triton_kernels/ by a link.
  if ! FASTCONV_CUDA=1 $PY setup.py -q build_ext --inplace >> "$OUT/build.log" 2>&1; then
    note "- build: FAILED (build.log)"; tail -40 "$OUT/build.log"; cat "$summary"; exit 1
  fi
  ln -sfn ../triton_kernels fastconv/triton_kernels
fi
$PY -m fastconv info > "$OUT/info.txt" 2>&1
note "- build: ok ($(grep -m1 -o 'archs[^)]*' "$OUT/info.txt" || echo 'see info.txt'))"

step "tests: the GPU cases (parameters on cuda), real Triton"
# The CPU cases are CI's; here only what needs the GPU. pytest-xdist is on the image: one worker per two cores
# (Triton's compiles are CPU-bound).
workers=()
$PY -c "import xdist" 2>/dev/null && workers=(-n 8)
t=$(budget 220 150)  # keeps 75 s for memcheck and 75 s for the benches
if (( t >= 60 )); then
  timeout "$t" $PY -m pytest tests -q -p no:cacheprovider "${workers[@]}" -k "cuda" --maxfail=30 \
    > "$OUT/tests.log" 2>&1
  tests_rc=$?
  note "- tests (-k cuda, ${t} s cap): $(tail -1 "$OUT/tests.log") (exit $tests_rc$( ((tests_rc == 124)) && echo ': timed out'))"
  grep -E '^(FAILED|ERROR)' "$OUT/tests.log" | head -20 | sed 's/^/  - /' >> "$summary"
else
  note "- tests: skipped (${t} s left for them)"
fi

step "compute-sanitizer memcheck + racecheck"
: > "$OUT/sanitizer.log"
for tool in memcheck racecheck; do
  [[ $tool == memcheck ]] && t=$(budget 75 75) || t=$(budget 60 75)  # both keep 75 s for the benches
  if (( t >= 30 )); then
    timeout "$t" compute-sanitizer --tool "$tool" --error-exitcode 9 $PY scripts/sanitizer_cases.py >> "$OUT/sanitizer.log" 2>&1
    rc=$?
    echo "$tool: exit $rc$( ((rc == 124)) && echo ' (timed out)')" | tee -a "$OUT/sanitizer.log"
    note "- compute-sanitizer $tool: exit $rc$( ((rc == 124)) && echo ' (timed out)')"
  else
    note "- compute-sanitizer $tool: skipped (${t} s left)"
  fi
done

step "roofline and benches"
t=$(budget 40 0)
(( t >= 10 )) && timeout "$t" $PY -m fastconv._roofline > "$OUT/roofline.txt" 2>&1
note "- roofline: $(tail -1 "$OUT/roofline.txt" 2>/dev/null)"
# --quick: 9 cases per op (fp32 NCHW, fp16/bf16 channels_last, batch 1 and 256); the measured backend per shape
# class comes back as auto_table.json, to merge into fastconv/auto_table.json.
cp fastconv/auto_table.json "$OUT/auto_table.json" 2>/dev/null || true
t=$(budget 240 0)
if (( t >= 60 )); then
  timeout "$t" $PY -m fastconv bench --quick --json "$OUT/bench.json" --plot "$OUT/bench.png" \
    --write-auto-table "$OUT/auto_table.json" > "$OUT/bench.log" 2>&1
  rc=$?
  note "- bench --quick: exit $rc$( ((rc == 124)) && echo ' (timed out: bench.log has the rows that finished)')"
  { echo; echo '```'; grep -E ' us ' "$OUT/bench.log"; echo '```'; } >> "$summary"
else
  note "- bench: skipped (${t} s left)"
fi
cat "$summary"
