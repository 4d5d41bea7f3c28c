"""Models: the store of offline-installable chat models, and lazy models sharing one copy of weights.

    from lab.models import LabModel, ModelPool

    with ModelPool() as pool:                      # one copy of each base's weights in this process
        base = LabModel("smollm2-135m-instruct")   # fingerprint, tokenizer, shape: from files
        org = base.with_adapters([adapter_dir])    # a LoRA organism on the same weights
        org.hf(ids); base.hf(ids)                  # adapters switched in place, never merged
        org.bridge.run_with_cache(ids)             # TransformerLens on those same weights
    pool.loads                                     # 1

Modules: `store` (registry, conversion, fingerprints: files only), `files` (damaged model and
adapter files refused before anything loads them), `placement` (dtype, device,
GPU sharding plans), `pool` (resident weights, adapter switching, the TransformerLens swap),
`lab_model` (`LabModel`, the `ModelLike` protocol, `load_model`, `export_merged`), `shapes`
(random-weight models of real shapes for GPU benchmarks), `hooks` (TransformerLens hook names
captured with plain torch hooks on the HF decoder layers: `resid_post`, `parse_hook`, `capture`),
`options` (`ModelOptions`: the --model/--adapters/--device/--dtype options every verb shares).
"""

from lab.models.lab_model import (BridgeView, LabModel, LazyModel, LoadedModel, ModelLike, export_merged,
                                  load_model)
from lab.models.options import Device, ModelDtype, ModelOptions
from lab.models.placement import (DTYPE_CHOICES, DTYPES, check_dtype, parse_device_map, parse_dtype, pick_device,
                                  plan_device_map, resolve_dtype)
from lab.models.pool import ModelPool, check_adapter_fits
from lab.models.shapes import RANDOM_SHAPES, random_folder, random_model, random_sharded
from lab.models.store import (ADAPTER_META, DEFAULT_MODEL, MODEL_META, REGISTRY, ModelSpec, adapter_fingerprint,
                              assemble_gguf, base_fingerprint, check_adapter_base, convert_gguf, ensure_converted,
                              install_packages, list_models, load_tokenizer, model_fingerprint, resolve_source)

__all__ = [
    "ADAPTER_META", "DEFAULT_MODEL", "DTYPES", "DTYPE_CHOICES", "MODEL_META", "RANDOM_SHAPES", "REGISTRY",
    "BridgeView", "Device", "LabModel", "LazyModel", "LoadedModel", "ModelDtype", "ModelLike", "ModelOptions", "ModelPool",
    "ModelSpec",
    "adapter_fingerprint", "assemble_gguf", "base_fingerprint", "check_adapter_base", "check_adapter_fits",
    "check_dtype", "convert_gguf", "ensure_converted", "export_merged", "install_packages", "list_models",
    "load_model", "load_tokenizer", "model_fingerprint", "parse_device_map", "parse_dtype", "pick_device",
    "plan_device_map", "random_folder", "random_model", "random_sharded", "resolve_dtype", "resolve_source",
]
