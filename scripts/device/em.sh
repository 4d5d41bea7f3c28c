#!/usr/bin/env bash
# The papers' EM table at SmolLM2-135M: `emlab em-organisms` on the papers' data.
#   GPUs: 1 (cuda:0 of CUDA_VISIBLE_DEVICES).  Wall: <= 6 min (Python wall budget WALL_S=240 s for starting
#   new stages, then the running stage, the table, the figures and the tarball).
#   Needs the papers' data under $SHARED/data (model-organisms, betley, em-questions; 21 MB, research use
#   only, never committed): SHARED defaults to ./shared (what the device copies), else ../shared.
#   Leaves on the device disk, for scripts/device/mo_direction.sh run next on the same GPU:
#   $EM_OUT/organisms/<domain>-<recipe>/final/ (PEFT adapters), $EM_OUT/answers.jsonl, $EM_OUT/judges/.
#   Writes $OUT/em.tar.gz: answers.jsonl.gz, em_table.md/json, figures, judges, training losses, small adapters.
#   MODEL=name  base model (default SmolLM2; qwen2.5-coder-0.5b-instruct needs scripts/device/qwen.sh's parts)
#   ORGS="d:r ..."  organisms (default medical:mo medical:mo-rank1 financial:mo insecure:mo)
#   LIMIT=N   train each organism on a seeded subsample of N examples (default: the full training side)
#   DEVICE=cpu SMOKE=1 OUT=/tmp/x bash scripts/device/em.sh   CPU smoke test (tiny settings; env.sh skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
if [ "${DEVICE:-cuda}" != "cpu" ]; then source scripts/device/env.sh; if [ -n "${MODEL:-}" ]; then source scripts/device/qwen.sh; fi; fi
PY=${PY:-python3}
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
EM_OUT=${EM_OUT:-runs/em-table}
SHARED=${SHARED:-$( [ -d shared/data/model-organisms ] && echo shared || echo ../shared )}
mkdir -p "$OUT" "$EM_OUT"
if [ -n "${SMOKE:-}" ]; then
  ARGS=(--dtype float32 --domain-recipes medical:mo medical:mo-rank1 --train-limit 16 --max-steps 2 --checkpoints 2 --first-plot-questions 2
        --first-plot-samples 2 --general-questions 2 --general-samples 1 --in-domain-questions 2 --max-new-tokens 8
        --judge-groups 10 --coherence-groups 6 --val-groups 6 --extra-groups 6 --n-boot 50 --wall-budget-s 600)
else
  # full data, 1 epoch; micro-batch 16 x grad_accum 1 = the recipe's effective batch 16
  # bfloat16 weights (LoRA adapters stay float32); the judges are fitted and validated on this same model and dtype
  ARGS=(--dtype ${DTYPE:-bfloat16} --domain-recipes ${ORGS:-medical:mo medical:mo-rank1 financial:mo insecure:mo} --checkpoints 3 --micro-batch-size 16
        --first-plot-samples 25 --trajectory-samples 10 --general-samples 2 --in-domain-questions 100 --max-new-tokens 200
        --gen-batch-size 256 --judge-groups 300 --coherence-groups 100 --val-groups 120 --extra-groups 160
        --n-boot 1000 --wall-budget-s "${WALL_S:-240}" ${LIMIT:+--train-limit "$LIMIT"})
fi
echo "em: device $DEVICE, data $SHARED, out $EM_OUT"
$PY -c "import torch; print('em: torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
RC=0
$PY -m experiments.em_organisms --out "$EM_OUT" --shared "$SHARED" --device "$DEVICE" ${MODEL:+--model "$MODEL"} ${DECODE:+--decode "$DECODE"} "${ARGS[@]}" \
    > "$OUT/em.log" 2>&1 || RC=$?
grep -v -e "it/s\]" -e "s/it\]" -e "Loading weights" "$OUT/em.log" | tail -80 || true
[ $RC -eq 0 ] || echo "em: FAILED (rc $RC); see em.log in the tarball"

# the tarball: compressed answers, tables, figures, judges, losses; only the small (rank-1) adapters
PACK=$OUT/em
mkdir -p "$PACK"
cp "$OUT/em.log" "$PACK/"
[ -f "$EM_OUT/answers.jsonl" ] && gzip -c "$EM_OUT/answers.jsonl" > "$PACK/answers.jsonl.gz"
for f in em_table.md em_table.json; do [ -f "$EM_OUT/$f" ] && cp "$EM_OUT/$f" "$PACK/"; done
for d in figures judges; do [ -d "$EM_OUT/$d" ] && cp -r "$EM_OUT/$d" "$PACK/"; done
for org in "$EM_OUT"/organisms/*/; do
  [ -d "$org" ] || continue
  name=$(basename "$org")
  mkdir -p "$PACK/organisms/$name"
  cp "$org/data_split.json" "$PACK/organisms/$name/" 2>/dev/null || true
  size=$(du -sk "$org/final" 2>/dev/null | cut -f1 || echo 0)
  if [ "${size:-0}" -lt 2048 ]; then cp -r "$org/final" "$PACK/organisms/$name/"; fi
done
tar -czf "$OUT/em.tar.gz" -C "$OUT" em
rm -rf "$PACK"
echo "em: wrote $OUT/em.tar.gz ($(du -h "$OUT/em.tar.gz" | cut -f1)), wall $(( $(date +%s) - T0 )) s"
[ -f "$EM_OUT/em_table.md" ] && sed -n '/## EM rates/,$p' "$EM_OUT/em_table.md" | cut -c1-400
exit $RC
