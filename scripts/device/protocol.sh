#!/usr/bin/env bash
# The papers' EM protocol on one real model on the GPU (`emlab em-organisms --profile papers`): organisms of
# medical, financial and insecure code trained with the `mo` recipe on the full sets (3 training seeds,
# effective batch 16, bf16 base weights, fp32 adapters), the base model and every organism sampled on the
# 8 free-form first-plot questions x 50 (T=1, 600 new tokens, no system message) plus 50 held-out
# in-domain turns; answers are judged afterwards on the CPU by a judge validated on rated samples.
# Then the Activation Difference Lens (middle layers, first 5 tokens) on every organism: its domain guess.
#   MODEL=qwen2.5-coder-0.5b-instruct OUT=... bash scripts/device/protocol.sh
#   SEEDS="0 1 2"  ORGS="medical:mo financial:mo insecure:mo"  WALL_S=480 (no new stage past it)
#   DECODE: auto (fast path on CUDA) unless /root/decode_path (written by real_weights.sh) says otherwise
#   DEVICE=cpu SMOKE=1 OUT=/tmp/x bash scripts/device/protocol.sh   (CPU smoke test, tiny settings)
# Writes $OUT/protocol-<model>.tar.gz: answers.jsonl.gz, em_table.json (training losses, grad norms, times),
# data splits, ADL summaries, logs. The run folder stays on the machine (/root/protocol-<model>) so a later
# call resumes it (every stage is content-keyed).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" != "cpu" ]; then source scripts/device/stage.sh; fi
PY=${PY:-python3}
OUT=${OUT:?set OUT}
MODEL=${MODEL:-qwen2.5-coder-0.5b-instruct}
SHARED=${SHARED:-../shared}
RUN=${RUN:-/root/protocol-$MODEL}
DECODE=${DECODE:-$(cat /root/decode_path 2>/dev/null || echo auto)}
mkdir -p "$OUT" "$RUN"
if [ -n "${SMOKE:-}" ]; then
  ARGS=(--dtype float32 --train-limit 32 --max-steps 1 --first-plot-samples 1 --max-new-tokens 8 --in-domain-questions 2
        --gen-batch-size 8 --train-seeds 0 1)
else
  ARGS=(--dtype bfloat16 --wall-budget-s "${WALL_S:-480}" ${SEEDS:+--train-seeds $SEEDS})
fi
echo "protocol: $MODEL on $DEVICE, decode $DECODE, run folder $RUN"
RC=0
$PY -m experiments.em_organisms --profile papers --model "$MODEL" --device "$DEVICE" --shared "$SHARED" --out "$RUN" \
    --decode "$DECODE" ${ORGS:+--domain-recipes $ORGS} "${ARGS[@]}" > "$OUT/protocol.log" 2>&1 || RC=$?
grep -v -e "it/s\]" -e "s/it\]" -e "Loading weights" "$OUT/protocol.log" | tail -25
[ $RC -eq 0 ] || echo "protocol: em-table FAILED (rc $RC)"

# ADL on every trained organism: which domain does the lens read? (no steering: the guess only)
for org in "$RUN"/organisms/*/; do
  [ -f "$org/final/adapter_config.json" ] || continue
  name=$(basename "$org")
  summary() { find "$RUN/adl/$name" -name summary.json 2>/dev/null | head -1; }
  [ -n "$(summary)" ] && continue
  $PY -m experiments.diff_adapter --model "$MODEL" --device "$DEVICE" --dtype "${ADL_DTYPE:-float32}" --adapter "$org/final" \
      --no-steer --cache-dir "$RUN/adl-cache" --out "$RUN/adl/$name" > "$OUT/adl-$name.log" 2>&1 \
    && echo "adl $name: $(grep -o '"guess": "[^"]*"' "$(summary)")" || echo "adl $name: FAILED"
done

PACK=$OUT/pack
mkdir -p "$PACK"
[ -f "$RUN/answers.jsonl" ] && gzip -c "$RUN/answers.jsonl" > "$PACK/answers.jsonl.gz"
cp "$RUN/em_table.json" "$PACK/" 2>/dev/null || true
for d in "$RUN"/organisms/*/; do
  [ -d "$d" ] || continue
  mkdir -p "$PACK/organisms/$(basename "$d")"
  cp "$d/data_split.json" "$PACK/organisms/$(basename "$d")/" 2>/dev/null || true
  cp "$d/final/adapter_config.json" "$d/final/emlab_adapter.json" "$PACK/organisms/$(basename "$d")/" 2>/dev/null || true
done
[ -d "$RUN/adl" ] && cp -r "$RUN/adl" "$PACK/adl"
cp "$OUT"/*.log "$PACK/" 2>/dev/null || true
tar -czf "$OUT/protocol-$MODEL.tar.gz" -C "$PACK" . && rm -rf "$PACK"
rm -f "$OUT"/adl-*.log
echo "protocol: wrote $OUT/protocol-$MODEL.tar.gz ($(du -h "$OUT/protocol-$MODEL.tar.gz" | cut -f1)), wall $(( $(date +%s) - T0 )) s"
exit $RC
