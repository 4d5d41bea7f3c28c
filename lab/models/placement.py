"""Where and in what precision a model runs: device, compute dtype, and layer placement over GPUs.

* `resolve_dtype("auto", device)`: bfloat16 on CUDA, float32 on CPU. The resolved dtype, never
  "auto", goes into every fingerprint, so caches and stage results of different precisions
  never mix.
* `check_dtype`: refuse a compute dtype the device cannot run (bf16 on a GPU without it;
  fp16 on CPU, where PyTorch has no fast fp16 kernels for these models).
* `parse_device_map("auto" | "cuda:0,cuda:1" | "")`: the GPUs a sharded model spreads over,
  refusing GPUs this machine does not have.
* `plan_device_map(config, devices)`: contiguous blocks of decoder layers per GPU, balanced
  by parameter bytes, with the embedding, final norm and LM head on the first GPU. Inputs go
  to the first GPU and the final hidden state comes back to it, so code that calls the
  decoder and the head separately (teacher-forced scoring) sees one device at both ends;
  in between accelerate's hooks move the residual stream from GPU to GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lab.core.errors import BadInput

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DeviceMap = dict[str, "str | int"]


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"device {device!r} requested but CUDA is not available")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise BadInput(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise BadInput(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)") from None


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r} (one of auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on CUDA, float32 on CPU; anything else as named, checked against the device."""
    if dtype in (None, "auto"):
        resolved = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        resolved = parse_dtype(dtype)
    check_dtype(resolved, device)
    return resolved


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """One clear line for a compute dtype this device cannot run."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise BadInput(f"{torch.cuda.get_device_name(device)} has no bfloat16 support: use --dtype float16 or float32")
    if device.type == "cpu" and dtype == torch.float16:
        raise BadInput("float16 compute is not supported on cpu (no fast kernels): use --dtype float32 or bfloat16")


def parse_device_map(spec: str) -> list[torch.device]:
    """The GPUs a `--device-map` spreads a model over ("" : none, i.e. one device)."""
    spec = (spec or "").strip()
    if not spec:
        return []
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        if available == 0:
            raise BadInput("--device-map auto needs CUDA GPUs, and this machine has none (use --device cpu)")
        return [torch.device("cuda", i) for i in range(available)]
    devices = []
    for part in spec.split(","):
        try:
            dev = torch.device(part.strip())
        except RuntimeError:
            raise BadInput(f"--device-map {spec!r}: {part.strip()!r} is not a device (auto or cuda:0,cuda:1,...)") from None
        if dev.type != "cuda" or dev.index is None:
            raise BadInput(f"--device-map {spec!r}: name GPUs as cuda:N (or use auto)")
        if dev.index >= available:
            raise BadInput(f"--device-map names {dev} but this machine has {available} CUDA device(s)")
        devices.append(dev)
    return devices


def _bytes(module: torch.nn.Module, seen: set) -> int:
    """Bytes of the parameters not counted yet (tied embeddings count once)."""
    fresh = [p for p in module.parameters() if id(p) not in seen]
    seen.update(id(p) for p in fresh)
    return sum(p.numel() * p.element_size() for p in fresh)


def plan_device_map(config: "PretrainedConfig", devices: list, dtype: torch.dtype = torch.bfloat16) -> DeviceMap:
    """Contiguous layer blocks per device, balanced by bytes; embedding, norm and head on the first.

    Built on a meta-device skeleton (no memory). `devices` may be any accelerate placement
    ("cpu", "disk", cuda indices), which is how the CPU tests exercise the same plan.
    """
    from transformers import AutoModelForCausalLM

    if not devices:
        raise BadInput("no devices to place the model on")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    decoder = skeleton.get_decoder()
    layers = decoder.layers
    decoder_name = next(n for n, m in skeleton.named_modules() if m is decoder)
    first = _placement(devices[0])
    plan: DeviceMap = {}
    extra, seen = 0, set()
    for name, child in skeleton.named_children():
        if child is not decoder:
            plan[name] = first
            extra += _bytes(child, seen)
    for name, child in decoder.named_children():
        if child is not layers:
            plan[f"{decoder_name}.{name}"] = first
            extra += _bytes(child, seen)
    sizes = [_bytes(layer, seen) for layer in layers]
    target = (extra + sum(sizes)) / len(devices)
    load, d = extra, 0
    for i, size in enumerate(sizes):
        left_layers, left_devices = len(sizes) - i, len(devices) - d
        if d < len(devices) - 1 and (load + size / 2 > target or left_layers <= left_devices - 1) and load > 0:
            d, load = d + 1, 0
        plan[f"{decoder_name}.layers.{i}"] = _placement(devices[d])
        load += size
    return plan


def _placement(device) -> "str | int":
    dev = device if isinstance(device, str) else str(device)
    return int(dev.split(":")[1]) if dev.startswith("cuda:") else dev


def layer_devices(plan: DeviceMap, n_layers: int) -> list[str]:
    """The device of each decoder layer in a plan (for messages and tests)."""
    out = []
    for i in range(n_layers):
        where = next(v for k, v in plan.items() if k.endswith(f"layers.{i}"))
        out.append(f"cuda:{where}" if isinstance(where, int) else where)
    return out
