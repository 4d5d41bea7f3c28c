#!/usr/bin/env bash
# Scale checks on the GPU machine: nvidia-h200-x2, BOTH GPUs, at most 9 minutes wall (each part time-boxed).
#   (a) CUDA tests: cache, directions, sharding, fast decode on real SmolLM2 (<= 120 s); data-parallel tests (<= 90 s)
#       (meanwhile, in the background: the random Llama-3.1-8B folder on cuda:0, the Qwen2.5-32B one on cuda:1)
#   (b)+(c) data-parallel pooled caching and answer sampling, 8B shape, 1 GPU vs 2 (one launch)        <= 200 s
#   (d) emlab study --quick on the Qwen2.5-32B-shape folder (65 GB) on ONE H200                         the rest
# Writes $OUT/scale.tar.gz (test report, JSON records, logs) and prints a summary.
#   bash scripts/device/scale.sh                          # on the GPU machine (OUT set by the caller)
#   DEVICE=cpu SMOKE=1 OUT=/tmp/x bash scripts/device/scale.sh   # CPU dry run: tiny shapes, CUDA tests skip
set -euo pipefail
T0=$(date +%s)
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
TOTAL=${TOTAL:-540}
[ "$DEVICE" = cpu ] || source scripts/device/env.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PY=${PY:-python3}
R=$OUT/scale
W=${WORK:-/tmp/emlab-scale}
mkdir -p "$R" "$W"
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
stamp() { echo "[scale +$(( $(date +%s) - T0 ))s] $*"; }
box() { local s=$1; shift; [ "$s" -gt "$(left)" ] && s=$(left); [ "$s" -lt 10 ] && { echo "skipped (time)"; return 124; }; timeout -k 10 "$s" "$@"; }

if [ "$SMOKE" = 1 ]; then
  SHAPE8=tiny-llama; SHAPE32=tiny-llama
  DP=(--device cpu --prompts 32 --samples 1 --new-tokens 4 --batch 8); STUDY=(--device cpu)
else
  SHAPE8=llama-3.1-8b; SHAPE32=qwen2.5-32b
  DP=(--device cuda --prompts 2048 --samples 8 --new-tokens 128 --batch 32); STUDY=(--device cuda)
fi
stamp "start: $(nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null | tr '\n' ';') disk $(df -h /tmp | tail -1 | awk '{print $4}') free"
set +e

# the random-weight folders, written while the tests run (disk-bound); each on its own GPU
(CUDA_VISIBLE_DEVICES=0 timeout 150 $PY benchmarks/gpu_study.py --shape $SHAPE8 --profiles --folder "$W/m8b" --work "$W/b8" \
   "${STUDY[@]}" > "$R/folder8b.log" 2>&1) &
B8=$!
FREE_GB=$(df -BG --output=avail "$W" | tail -1 | tr -dc 0-9)
if [ "$SMOKE" = 1 ] || [ "$FREE_GB" -ge 95 ]; then  # 65 GB + the 8B folder (16 GB) + caches
  (CUDA_VISIBLE_DEVICES=1 timeout 240 $PY benchmarks/gpu_study.py --shape $SHAPE32 --profiles --folder "$W/m32b" \
     --work "$W/b32" "${STUDY[@]}" > "$R/folder32b.log" 2>&1) &
  B32=$!
else
  echo "only ${FREE_GB} GB free on $W: no 32B folder, (d) skipped" | tee "$R/folder32b.log"; B32=""
fi

# (a) CUDA tests (every test of the *_cuda files, the CUDA tests of test_decode: fast decode == HF generate on
# real SmolLM2, which env.sh installs), then the data-parallel tests (torchrun, gloo, CPU) on this machine's stack
stamp "(a) CUDA tests"
box 120 $PY -m pytest -q -rs -p no:cacheprovider -k cuda --junitxml "$R/tests_cuda.xml" \
  tests/test_cache_cuda.py tests/test_directions_cuda.py tests/test_scale_cuda.py tests/test_decode.py \
  > "$R/tests_cuda.log" 2>&1
echo "(a) CUDA tests rc=$?"; grep -E "passed|failed|error|skipped" "$R/tests_cuda.log" | tail -2
grep -E "^(FAILED|ERROR)|^E .*agree" "$R/tests_cuda.log" | head -20
if [ "$SMOKE" != 1 ]; then
  stamp "(a) data-parallel tests"
  box 90 $PY -m pytest -q -rs -p no:cacheprovider --junitxml "$R/tests_shards.xml" tests/test_shards.py \
    > "$R/tests_shards.log" 2>&1
  echo "(a) data-parallel tests rc=$?"; grep -E "passed|failed|error" "$R/tests_shards.log" | tail -2
  grep -E "^(FAILED|ERROR)" "$R/tests_shards.log" | head -10
fi

stamp "waiting for the folders"
wait $B8; echo "8B folder rc=$? $(grep -h 'wrote' "$R/folder8b.log")"
[ -n "$B32" ] && { wait $B32; echo "32B folder rc=$? $(grep -h 'wrote' "$R/folder32b.log")"; }

# (b)+(c) data-parallel caching and sampling, 1 GPU vs 2, one torchrun launch (every rank loads once)
stamp "(b)+(c) data parallel"
box 200 $PY -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/data_parallel.py --shape $SHAPE8 \
  --folder "$W/m8b" --work "$W/dp" --budget 170 --json "$R/data_parallel.json" "${DP[@]}" > "$R/data_parallel.log" 2>&1
echo "(b)+(c) rc=$?"; grep -E "^(cache|answers|data-parallel)|Error" "$R/data_parallel.log" | tail -8
rm -rf "$W/dp" "$W/m8b"  # disk for (d)

# (d) the quick study on the 32B-shape folder, one H200
[ -f "$W/m32b/config.json" ] || echo "(d) no 32B folder"
stamp "(d) quick study, $SHAPE32, one GPU"
BUDGET=$(( $(left) - 25 ))
box $(( BUDGET + 20 )) env CUDA_VISIBLE_DEVICES=0 $PY benchmarks/gpu_study.py --shape $SHAPE32 --folder "$W/m32b" \
  --work "$W/s32" --profiles quick --budget $BUDGET --json "$R/study32b.json" "${STUDY[@]}" > "$R/study32b.log" 2>&1
echo "(d) rc=$?"; grep -A40 "^== quick" "$R/study32b.log" | head -40; grep -E "Error|total" "$R/study32b.log" | tail -3

tar czf "$OUT/scale.tar.gz" -C "$OUT" scale
stamp "done: $OUT/scale.tar.gz ($(du -h "$OUT/scale.tar.gz" | cut -f1))"
