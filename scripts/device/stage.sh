# Sourced by every GPU-machine script (scripts/device/*.sh), from the repository root, on every call.
#
# The GPU machine has no network and starts bare; a call carries at most 64 MiB. scripts/device/prepare.sh
# (run on the CPU machine) cuts what it lacks into pieces; consecutive calls on the same warm machine carry
# them (name them in `carry`), and this script keeps them outside the checkout between calls:
#   .whl/*.whl                  -> pip-installed into /tmp/site once (transformer-lens, circuitsvis, ...)
#   .gpu/xfer/shared-data.tar.gz -> /root/shared/data (the papers' data: research use, never in the repo)
#   .gpu/w/<model>.NN + MANIFEST -> /root/parts; once every part of a model is there they are joined into
#                                   the file the model store reads, and the store's own code checks the
#                                   sha256 and converts the GGUF (ensure_converted), exactly as on a CPU.
# `source scripts/device/stage.sh` never fails its caller; `staged MODEL` tells whether a model is ready.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
# NVLink multicast stays off on shared multi-GPU hosts (the device README says why)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ ! -d /tmp/site/transformer_lens ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "stage: wheel install failed"
fi
if [ -f .gpu/xfer/shared-data.tar.gz ] && [ ! -d /root/shared/data/model-organisms ]; then
  mkdir -p /root/shared && tar -xzf .gpu/xfer/shared-data.tar.gz -C /root/shared
fi
[ -d /root/shared/data ] && export SHARED=/root/shared

mkdir -p /root/parts
[ -f .gpu/w/MANIFEST ] && cp .gpu/w/MANIFEST /root/parts/MANIFEST
for part in .gpu/w/*.[0-9][0-9]; do [ -f "$part" ] && cp -n "$part" /root/parts/; done
if [ -f /root/parts/MANIFEST ]; then
  while read -r name count sha; do
    have=$(ls /root/parts/ | grep -c "^$name\.[0-9][0-9]$" || true)
    done_flag=/root/parts/$name.converted
    if [ -f "$done_flag" ]; then continue; fi
    if [ "$have" -lt "$count" ]; then echo "stage: $name $have/$count parts here"; continue; fi
    python3 - "$name" <<'PY' && touch "$done_flag" || echo "stage: $name could not be assembled"
import sys
from pathlib import Path
from lab.models import REGISTRY, ensure_converted
spec = REGISTRY[sys.argv[1]]
site = Path("/tmp/site")
# the store finds a model's bytes in its part packages: put the joined file into the first package's
# place and leave the others empty, so the store reads (and sha256-checks) exactly the joined bytes
for i, module in enumerate(spec.modules):
    root = site / module
    root.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").touch()
    target = root / spec.single_file if spec.single_file else root / "data" / f"part{i + 1:02d}.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        if i == 0:
            for part in sorted(Path("/root/parts").glob(f"{spec.name}.[0-9][0-9]")):
                out.write(part.read_bytes())
import importlib
importlib.invalidate_caches()
print(f"stage: {spec.name} converted at {ensure_converted(spec)}")
PY
  done < /root/parts/MANIFEST
fi
staged() { [ -f "/root/parts/$1.converted" ]; }
true  # sourcing this never fails the caller's `set -e`; what went wrong is printed above
