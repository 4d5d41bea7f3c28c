#!/usr/bin/env bash
# Answer sampling over 2 GPUs vs 1 on real SmolLM2, fp32 and bf16: are the answer files
# the same? Plus the fast-decode greedy-equality CUDA tests (first mismatches in bf16).
#   GPUs: 2.  Wall: ~2 min.   OUT=... bash scripts/device/dp_check.sh
set -uo pipefail
source scripts/device/env.sh
ARGS=(--device cuda --samples 4 --max-new-tokens 48 --gen-batch-size 32)
for dt in float32 bfloat16; do
  CUDA_VISIBLE_DEVICES=0 python3 -m experiments.em_rates "${ARGS[@]}" --dtype $dt --out /tmp/dp1-$dt > "$OUT/dp1-$dt.log" 2>&1
  python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m experiments.em_rates "${ARGS[@]}" --dtype $dt \
    --out /tmp/dp2-$dt > "$OUT/dp2-$dt.log" 2>&1
  python3 - "$dt" <<'PY'
import json, sys, pathlib
dt = sys.argv[1]
files = [sorted(pathlib.Path(f"/tmp/dp{n}-{dt}").rglob("answers.jsonl")) for n in (1, 2)]
if not all(files):
    print(f"{dt}: answers missing {files}"); sys.exit()
a, b = ([json.loads(l) for l in f[0].read_text().splitlines()] for f in files)
same_bytes = files[0][0].read_bytes() == files[1][0].read_bytes()
diff = sum(x.get("answer") != y.get("answer") for x, y in zip(a, b))
print(f"{dt}: 1 GPU {len(a)} answers, 2 GPUs {len(b)}; files byte-identical: {same_bytes}; answers differing: {diff}")
PY
done
python3 -m pytest -q -p no:cacheprovider tests/test_decode.py -k cuda_fast_greedy 2>&1 | grep -E "agree|passed|failed" | cut -c1-400
