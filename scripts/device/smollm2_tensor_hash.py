"""Print whether the store's SmolLM2 folder holds the same weights as the CPU machine's.

The GPU machine gets SmolLM2 as its GGUF (carried in two parts, one call holds 64 MiB) and converts it
with its own transformers; this hashes every tensor (name, shape, fp32 bytes, sorted by name) so the
two conversions can be compared without moving 517 MB.
"""

import hashlib
import sys

from safetensors import safe_open

# the hash of ~/.cache/emlab/models/smollm2-135m-instruct-b179c9523d0e/model.safetensors on the CPU
# machine (transformers 5.24), measured 2026-11-30
EXPECTED = "d790a58ce2d4e41ff3b8a185768b102e08e998ca4f2b282bf1e007f6536c16e0"


def tensor_hash(path: str) -> str:
    h = hashlib.sha256()
    with safe_open(path, "pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name)
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    got = tensor_hash(sys.argv[1])
    print(f"SmolLM2 tensor hash {got[:16]}… {'== CPU machine (same weights)' if got == EXPECTED else '!= CPU machine ' + EXPECTED[:16]}")
