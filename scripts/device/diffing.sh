#!/usr/bin/env bash
# Model diffing on the GPU: training dynamics of rank-1 organisms + LoRA probing, monitoring
# along base-model directions per checkpoint, and the domain-identification benchmark (2 seeds, 1:1 mixed
# controls for medical, financial, insecure code).
#   GPUs: 1 (cuda:0 of CUDA_VISIBLE_DEVICES).  Wall: <= 8 min. Python wall budgets, most important first:
#   dynamics 2 min, monitoring 1.5 min, domain-id 1.5 min (each stops starting new work past its budget and
#   says so), plus training two r16 organisms for monitoring (~20 s) and the report (~10 s).
#   Insecure code needs $SHARED/data/insecure-code/insecure_n500.jsonl (SHARED: ./shared if the device copy
#   has it, else ../shared); without it the domain-id table has medical and financial only (it says so).
#   Writes $OUT/diffing.tar.gz: diffing.md (all tables), summary.json / rows of every experiment, figures (png),
#   the HTML section, logs. Prints the tables at the end.
#   DEVICE=cpu SMOKE=1 OUT=/tmp/x bash scripts/device/diffing.sh   CPU smoke test (tiny settings; env.sh skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
if [ "${DEVICE:-cuda}" != "cpu" ]; then source scripts/device/env.sh; fi
PY=${PY:-python3}
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
WORK=${DIFF_WORK:-runs/diffing}
SHARED=${SHARED:-$( [ -d shared/data/insecure-code ] && echo shared || echo ../shared )}
INSECURE=$SHARED/data/insecure-code/insecure_n500.jsonl
mkdir -p "$OUT" "$WORK"
RES=$WORK/out
COMMON=(--device "$DEVICE" --dtype float32 --cache-dir "$WORK/cache" --out "$RES")
if [ -n "${SMOKE:-}" ]; then
  DYN=(--max-steps 6 --checkpoint-every 2 --eval-limit 4 --probe-limit 12 --n-boot 50 --lr 1e-3 --wall-budget-s 180)
  ORG=(--max-steps 4 --checkpoints 2 --batch-size 4 --train-limit 16)
  MON=(--limit 12 --eval-limit 4 --n-boot 50 --max-checkpoints 2 --wall-budget-s 180)
  DOM=(--train-seeds 0 1 --max-steps 2 --batch-size 4 --n-boot 50 --wall-budget-s 60)
else
  # rank-1 recipes with micro-batch 2 (a checkpoint every ~5 of ~120 steps in one epoch); lr 2e-4 with the
  # recipe's warm-up and linear decay (the paper's 2e-5 barely moves a 135M model in 120 steps)
  DYN=(--lr 2e-4 --batch-size 2 --checkpoint-every 5 --wall-budget-s "${DYN_S:-120}")
  ORG=(--lr 1e-3 --batch-size 8 --max-steps 40 --checkpoints 8)
  MON=(--max-checkpoints 8 --wall-budget-s "${MON_S:-90}")
  DOM=(--train-seeds 0 1 --max-steps 20 --wall-budget-s "${DOM_S:-90}")
fi
stamp() { echo "diffing: $1 at $(( $(date +%s) - T0 )) s"; }
clean() { grep -v -e "it/s\]" -e "s/it\]" -e "Loading weights" -e "FutureWarning" -e "warnings.warn" "$1" || true; }
$PY -c "import torch; print('diffing: torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
FAILED=()

stamp "dynamics (rank-1 organisms, medical)"
$PY -m experiments.checkpoints --measure adapters "${COMMON[@]}" --domain medical --recipes mo-rank1 mo-rank1x9 --train-dir "$WORK/runs" \
    "${DYN[@]}" > "$OUT/dynamics.log" 2>&1 || FAILED+=(dynamics)

stamp "r16 organisms for monitoring"
for d in medical financial; do
  $PY -m experiments.train --data "$d" --out "$WORK/runs/$d-r16" --device "$DEVICE" --dtype float32 "${ORG[@]}" \
      > "$OUT/train-$d.log" 2>&1 || FAILED+=("train $d")
done

stamp "monitoring"
RUNS=()
for r in "$WORK"/runs/*; do
  [ -d "$r/checkpoints" ] || continue
  name=$(basename "$r"); name=${name%-??????????}  # drop the config hash of dynamics folders
  RUNS+=("$name=$r")
done
$PY -m experiments.checkpoints --measure shifts "${COMMON[@]}" --runs "${RUNS[@]}" "${MON[@]}" > "$OUT/monitor.log" 2>&1 || FAILED+=(monitor)

stamp "domain identification"
if [ ! -f "$INSECURE" ]; then echo "diffing: $INSECURE not found: insecure code left out of domain-id"; fi
$PY -m experiments.identify_domains "${COMMON[@]}" --insecure "$INSECURE" --train-dir "$WORK/domain_id" "${DOM[@]}" \
    > "$OUT/domain_id.log" 2>&1 || FAILED+=(domain-id)

stamp "report"
$PY -m lab.reports.diffing "$RES" > "$OUT/report.log" 2>&1 || FAILED+=(report)

# the tarball: tables (md, json, jsonl), figures, the HTML section, logs; no adapters, no caches
STAGE=$(mktemp -d)/diffing
mkdir -p "$STAGE"
(cd "$RES" && find . -type f \( -name "*.json" -o -name "*.jsonl" -o -name "*.md" -o -name "*.png" -o -name "*.html" \
    -o -name "*.csv" \) -print0 | xargs -0 -r cp --parents -t "$STAGE")
cp "$OUT"/*.log "$STAGE/" 2>/dev/null || true
tar -czf "$OUT/diffing.tar.gz" -C "$(dirname "$STAGE")" diffing
rm -f "$OUT"/*.log

for f in dynamics monitor domain_id; do
  echo "=================== $f"
  clean "$STAGE/$f.log" | tail -n "${TAIL:-70}"
done
stamp "done: $(du -h "$OUT/diffing.tar.gz" | cut -f1) tarball"
if [ ${#FAILED[@]} -gt 0 ]; then echo "diffing: FAILED parts: ${FAILED[*]} (logs in the tarball)"; exit 1; fi
