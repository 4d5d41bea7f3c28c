"""Random-weight models of real shapes, for GPU benchmarks on machines without the weights.

`random_config(shape)` gives the config of a named real model (Llama-3.1-8B, Qwen2.5-14B/32B/72B,
...); `random_folder` writes config, tokenizer and random safetensors, so `emlab study --model
DIR` runs on it like on any folder; `random_sharded` builds the weights in GPU memory already
spread over several GPUs (meta-device skeleton, then each module materialised on its GPU),
for shapes whose folder would not fit the disk (72B is 145 GB in bf16).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lab.core.errors import BadInput
from lab.models.placement import parse_dtype, pick_device, plan_device_map

if TYPE_CHECKING:
    from lab.models.lab_model import LabModel
    from lab.models.pool import ModelPool

_LLAMA31 = dict(model_type="llama", rope_theta=500000.0, num_key_value_heads=8, vocab_size=128256,
                max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False)
_QWEN25 = dict(model_type="qwen2", rope_theta=1000000.0, vocab_size=152064, max_position_embeddings=8192,
               rms_norm_eps=1e-6, tie_word_embeddings=False)

RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(_LLAMA31, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=49152, max_position_embeddings=2048),  # CPU dry runs
    "llama-3.2-1b": dict(_LLAMA31, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, max_position_embeddings=4096, tie_word_embeddings=True),
    "llama-3.1-8b": dict(_LLAMA31, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32),
    "qwen2.5-14b": dict(_QWEN25, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8),
    "qwen2.5-32b": dict(_QWEN25, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                        num_attention_heads=40, num_key_value_heads=8),
    "qwen2.5-72b": dict(_QWEN25, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8),
}


def random_config(shape: str, **overrides: Any):
    from transformers import AutoConfig

    if shape not in RANDOM_SHAPES:
        raise BadInput(f"unknown random shape {shape!r} (one of {', '.join(RANDOM_SHAPES)})")
    fields = dict(RANDOM_SHAPES[shape], **overrides)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _tokenizer(tokenizer_source: str):
    from lab.models.store import load_tokenizer

    return load_tokenizer(tokenizer_source)


def _init_(module: torch.nn.Module, std: float = 0.02) -> None:
    """Random weights that keep activations finite: N(0, std) matrices, unit norms, zero biases."""
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if "norm" in type(module).__name__.lower() or (p.ndim == 1 and name == "weight"):
                p.fill_(1.0)
            elif name == "bias":
                p.zero_()
            else:
                p.normal_(0.0, std)


def _materialise(module: torch.nn.Module, device: torch.device, config: Any) -> None:
    module.to_empty(device=device)
    for m in module.modules():
        _init_(m)
        if "RotaryEmbedding" in type(m).__name__:  # its buffers are computed, not loaded
            with torch.device("cpu"):
                fresh = type(m)(config=config)
            for name, buf in fresh.named_buffers(recurse=False):
                setattr(m, name, buf.to(device))


def random_sharded(shape: str, device_map: str = "auto", tokenizer_source: str = "smollm2-135m-instruct",
                   dtype: str | torch.dtype = "bfloat16", seed: int = 0, pool: "ModelPool | None" = None,
                   folder: str | Path | None = None, device: str | None = None) -> "LabModel":
    """A random model of `shape` spread over the GPUs of `device_map` (or on one `device`), built in
    place: a meta-device skeleton, then each module materialised on its GPU (no disk, no host copy).

    Returns a `LabModel` adopted into `pool` as the base of a folder holding only config and
    tokenizer, so `LabModel(folder, device_map=device_map)` in that pool finds these weights.
    """
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    from lab.models.lab_model import LabModel
    from lab.models.placement import parse_device_map

    torch_dtype = parse_dtype(dtype)
    devices = parse_device_map(device_map) if device is None else [pick_device(device)]
    config = random_config(shape, attn_implementation="sdpa")
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plan = plan_device_map(config, [str(d) for d in devices], torch_dtype)
    torch.manual_seed(seed)
    modules = dict(hf.named_modules())
    for name, where in plan.items():
        _materialise(modules[name], torch.device("cuda", where) if isinstance(where, int) else torch.device(where),
                     config)
    hf = dispatch_model(hf.eval(), device_map=plan) if len(devices) > 1 else hf.eval()
    folder = Path(folder or tempfile.mkdtemp(prefix=f"emlab-random-{shape}-"))
    tokenizer = _tokenizer(tokenizer_source)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    hf.config.name_or_path = str(folder)
    if len(devices) > 1:
        return LabModel.adopt(hf, str(folder), tokenizer, pool, device_map=device_map)
    return LabModel.adopt(hf, str(folder), tokenizer, pool)


def random_folder(shape: str, folder: str | Path, tokenizer_source: str = "smollm2-135m-instruct",
                  dtype: str | torch.dtype = "bfloat16", device: str | None = "auto", seed: int = 0) -> Path:
    """Write a random-weight HF folder of `shape` (built on `device`, saved as safetensors)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    config = random_config(shape, attn_implementation="sdpa")
    dev = pick_device(device)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype))
    torch.manual_seed(seed)
    _materialise(hf, dev, config)
    hf.save_pretrained(folder)
    _tokenizer(tokenizer_source).save_pretrained(folder)
    del hf
    return folder


def random_model(shape: str, tokenizer_source: str = "smollm2-135m-instruct", dtype: str | torch.dtype = "bfloat16",
                 device: str | None = "auto", seed: int = 0) -> "LabModel":
    """A randomly initialised model of a named real shape on one device (benchmarks)."""
    return random_sharded(shape, "", tokenizer_source, dtype, seed, device=device or "auto")
