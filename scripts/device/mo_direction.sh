#!/usr/bin/env bash
# The Model Organisms direction, judged: `emlab em-direction` on the EM pipeline's output.
#   GPUs: 1 (cuda:0 of CUDA_VISIBLE_DEVICES).  Wall: <= 3 min: 150 s of Python work over all organisms in order
#   (each stops starting new conditions when the 150 s are spent; the next starts only with >= 30 s left), then the tarball.
#   Runs AFTER scripts/device/em.sh on the same GPU: reads its EM_OUT (organisms/<domain>-<recipe>/final,
#   answers.jsonl, judges/). Writes $OUT/mo_direction.tar.gz and prints a summary.
#   EM_OUT      the EM pipeline's output folder (default runs/em-table, experiments.em_organisms's default)
#   ORGANISMS   organisms to run, space separated (default: every folder under $EM_OUT/organisms, medical-mo first)
#   DTYPE       model dtype (default bfloat16 on the GPU, as em.sh; float32 in the CPU smoke)
#   DEVICE=cpu SMOKE=1   CPU smoke test (tiny settings; env.sh skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
if [ "${DEVICE:-cuda}" != "cpu" ]; then source scripts/device/env.sh; fi
PY=${PY:-python3}
OUT=${OUT:?set OUT}
EM_OUT=${EM_OUT:-runs/em-table}
DEVICE=${DEVICE:-cuda}
WORK=$OUT/mo_direction
mkdir -p "$WORK"
if [ -n "${SMOKE:-}" ]; then
  DTYPE=${DTYPE:-float32}
  ARGS=(--eval-limit 2 --samples 2 --max-new-tokens 8 --random-controls 1 --n-boot 100 --min-answers 4 --score-questions 4)
  BUDGET=600
else
  DTYPE=${DTYPE:-bfloat16}   # em.sh's dtype: its judges were fitted and validated on the model at this dtype
  ARGS=(--samples 3 --max-new-tokens 96 --random-controls 2 --n-boot 1000 --gen-batch-size 256)
  BUDGET=150                 # seconds of Python work in all; an organism starts only with >= 30 s left
fi
# every organism em.sh trained, medical-mo first (the paper's organism)
ALL=$(ls "$EM_OUT/organisms" 2>/dev/null | sort | awk '$0=="medical-mo"{print; next} {rest=rest" "$0} END{print rest}' | tr '\n' ' ')
ORGANISMS=${ORGANISMS:-$ALL}
[ -n "${ORGANISMS// /}" ] || { echo "mo_direction: no organisms under $EM_OUT/organisms (did em.sh run?)"; exit 1; }
echo "mo_direction: EM_OUT=$EM_OUT dtype $DTYPE organisms: $ORGANISMS"
STATUS=0
for ORG in $ORGANISMS; do
  LEFT=$(( BUDGET - ($(date +%s) - T0) ))
  if [ $LEFT -lt 30 ]; then echo "mo_direction: $ORG not run (wall budget of 3 min)"; continue; fi
  S=$(date +%s)
  RC=0
  $PY -m experiments.em_direction --em-out "$EM_OUT" --organism-name "$ORG" --device "$DEVICE" --dtype "$DTYPE" \
      --out "$OUT" --cache-dir "$WORK/cache" --wall-budget-s "$LEFT" "${ARGS[@]}" > "$WORK/$ORG.log" 2>&1 || RC=$?
  grep -v -e "it/s\]" -e "s/it\]" -e "Loading weights" "$WORK/$ORG.log" | tail -40 || true
  [ $RC -eq 0 ] || { STATUS=1; echo "mo_direction: $ORG FAILED (rc $RC)"; }
  echo "mo_direction: $ORG took $(( $(date +%s) - S )) s"
done
rm -rf "$WORK/cache"
tar -czf "$OUT/mo_direction.tar.gz" -C "$OUT" mo_direction
echo "mo_direction: wrote $OUT/mo_direction.tar.gz ($(du -h "$OUT/mo_direction.tar.gz" | cut -f1)), wall $(( $(date +%s) - T0 )) s"
for f in "$WORK"/*/table.md; do [ -f "$f" ] && cat "$f"; done
exit $STATUS
