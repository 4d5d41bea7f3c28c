#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before a GPU session: everything the GPU machine lacks, cut into
# pieces that fit a call (the checkout travels with at most 64 MiB a call; nothing else reaches it).
#   .whl/               wheels the GPU image lacks or has at other versions (transformers 5.24 matches
#                       constraints.txt: the fast decode path uses its private generation API)
#   .gpu/xfer/shared-data.tar.gz   the papers' data (research use, read at run time, never committed)
#   .gpu/w/<model>.NN    each real model's sha256-checked GGUF as ~58 MB byte ranges, plus .gpu/w/MANIFEST
#                        (model, parts, sha256); stage.sh on the GPU machine joins and converts them
#   bash scripts/device/prepare.sh smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct
# Then each GPU call names one or more of these in `carry` (see stage.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl .gpu/w .gpu/xfer
grep -q "^/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
WHEELS="transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fancy-einsum==0.0.3 beartype==0.23.1
typeguard==4.6.1 gguf==0.19.0 transformers==5.24.0
openai==3.57.0 pydantic==2.14.4 pydantic-core==2.50.5 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 annotated-types==0.8.0
httpx2==2.16.2 httpcore2==2.16.2 circuitsvis==1.43.3 importlib-metadata==10.2.0 lazy-importer==0.1.0 platformdirs==4.14.8"
for w in $WHEELS; do
  name=${w%%==*}
  ls .whl/ | grep -qi "^$(echo "$name" | tr '-' '_')-${w##*==}-" && continue
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w" \
    || $PY -m pip download -q --no-deps -d .whl "$w"
done
echo "wheels: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1)"
[ -f .gpu/xfer/shared-data.tar.gz ] || tar -czf .gpu/xfer/shared-data.tar.gz -C ../shared data/model-organisms \
  data/betley data/em-questions data/insecure-code
echo "papers' data: $(du -sh .gpu/xfer/shared-data.tar.gz | cut -f1)"
for model in "$@"; do
  $PY - "$model" <<'PY'
import hashlib, sys
from pathlib import Path
from lab.models import REGISTRY
spec = REGISTRY[sys.argv[1]]
parts = spec.part_paths()
out = Path(".gpu/w")
chunk = 58 * 2**20
h, n, buf = hashlib.sha256(), 0, b""
files = []
def flush(data):
    global n
    p = out / f"{spec.name}.{n:02d}"
    p.write_bytes(data); files.append(p); n += 1
for part in parts:
    with open(part, "rb") as f:
        while block := f.read(8 * 2**20):
            h.update(block); buf += block
            while len(buf) >= chunk:
                flush(buf[:chunk]); buf = buf[chunk:]
if buf:
    flush(buf)
assert h.hexdigest() == spec.sha256, f"{spec.name}: sha256 mismatch"
lines = [l for l in (out / "MANIFEST").read_text().splitlines() if not l.startswith(spec.name + " ")] \
    if (out / "MANIFEST").exists() else []
(out / "MANIFEST").write_text("\n".join(lines + [f"{spec.name} {n} {spec.sha256}"]) + "\n")
print(f"{spec.name}: {n} parts of <= 58 MiB, sha256 ok")
PY
done
