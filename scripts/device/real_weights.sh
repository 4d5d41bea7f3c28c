#!/usr/bin/env bash
# The real-weights GPU regime: every default path on every staged real model, bf16 and fp32.
#   OUT=... bash scripts/device/real_weights.sh          (after stage.sh has the models: see prepare.sh)
#   STEPS="decode bf16 suite" (default: all three, in this order)
# 1. decode: fast decoding on bf16 Qwen in its own process with CUDA_LAUNCH_BLOCKING=1 (a device-side
#    assert poisons the CUDA context); writes /root/decode_path (auto, or hf if the fast path failed) for
#    protocol.sh.
# 2. bf16: the bf16 nan's root cause on real weights and the full `mo` medical run, bf16 vs fp32
#    (scripts/device/bf16_training.py).
# 3. suite: tests/test_real_weights_cuda.py and the other CUDA tests; measured numbers in
#    $OUT/real_weights.json, the pytest log in $OUT/suite.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
source scripts/device/stage.sh
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
STEPS=${STEPS:-decode bf16 suite}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'peft', peft.__version__)"
for model in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; do
  staged $model && echo "staged: $model" || echo "not staged: $model"
done
QWEN=qwen2.5-coder-0.5b-instruct
if [[ " $STEPS " == *" decode "* ]]; then
  CUDA_LAUNCH_BLOCKING=${LAUNCH_BLOCKING:-0} timeout 300 python3 scripts/device/decode_check.py --model $QWEN \
      --dtype bfloat16 --out "$OUT" > "$OUT/decode_check.log" 2>&1 \
    || echo "decode: the fast path FAILED on bf16 Qwen (see decode_check.log)"
  cp "$OUT/decode_path" /root/decode_path 2>/dev/null || echo hf > /root/decode_path
  rm -f "$OUT/decode_path" "$OUT/continuous_answers.jsonl"
  echo "decode: protocol.sh will use decode=$(cat /root/decode_path)"
  grep -v "Loading weights" "$OUT/decode_check.log" | tail -30
fi
if [[ " $STEPS " == *" bf16 "* ]]; then
  timeout 420 python3 scripts/device/bf16_training.py --model $QWEN --out "$OUT" ${SKIP_FP32:+--skip-fp32} \
    2>&1 | grep -v -e "Loading weights" -e "it/s\]" | tail -25
fi
if [[ " $STEPS " == *" suite "* ]]; then
  EMLAB_CUDA_REPORT=$OUT timeout ${SUITE_S:-300} python3 -m pytest -v -k "${SUITE_K:-cuda}" -p no:cacheprovider -rfEs \
      ${SUITE_FILES:-tests/test_real_weights_cuda.py tests/test_decode.py tests/test_directions_cuda.py tests/test_cache_cuda.py tests/test_sampler_cuda.py} \
      > "$OUT/suite.log" 2>&1
  grep -E "passed|failed|FAILED|ERROR|SKIPPED" "$OUT/suite.log" | tail -30
fi
echo "real_weights: wall $(( $(date +%s) - T0 )) s"
