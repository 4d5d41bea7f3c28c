"""The cache's identity and vocabulary: format version, storage dtypes, modes, poolings, and the key.

A cache is named by `cache_key(model fingerprint, prompt set, CacheRequest)`: change any of
them and it is another file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from lab.data.formats import PromptSet
from lab.core.errors import BadInput
from lab.core.io import sha256_json

FORMAT = "emlab-activation-cache"
VERSION = 2
StorageDtype = Literal["float32", "float16", "bfloat16"]
CacheMode = Literal["tokens", "pooled"]
AttentionImpl = Literal["sdpa", "eager"]
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
assert tuple(STORAGE_DTYPES) == get_args(StorageDtype)
MODES: tuple[str, ...] = get_args(CacheMode)
DEFAULT_STORAGE: StorageDtype = "float32"  # exact: what `emlab cache build` writes unless told
ANALYSIS_STORAGE: StorageDtype = "float16"  # what experiments cache (half the disk; AUROCs unchanged)
STORED_POOLINGS = ("last", "mean_prompt", "mean_response", "first_k")
POOLINGS = STORED_POOLINGS + ("all",)
DEFAULT_FIRST_K = 8


@dataclass(frozen=True)
class CacheRequest:
    """What to cache; together with the model fingerprint and prompt hash it forms the key."""

    hooks: tuple[str, ...]
    storage_dtype: StorageDtype = DEFAULT_STORAGE
    mode: CacheMode = "tokens"
    attention: AttentionImpl = "sdpa"
    first_k: int = DEFAULT_FIRST_K

    def __post_init__(self):
        if self.storage_dtype not in STORAGE_DTYPES:
            raise BadInput(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, not {self.storage_dtype!r}")
        if self.mode not in MODES:
            raise BadInput(f"cache mode must be one of {', '.join(MODES)}, not {self.mode!r}")


def cache_key(model_fingerprint: str, prompts: PromptSet, request: CacheRequest) -> str:
    return sha256_json({
        "model": model_fingerprint,
        "prompts": prompts.content_hash,
        "hooks": list(request.hooks),
        "storage": request.storage_dtype,
        "mode": request.mode,
        "attention": request.attention,
        "first_k": request.first_k if request.mode == "pooled" else None,
        "format": VERSION,
    })


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{key[:20]}.h5"


def from_storage(arr: np.ndarray, storage_dtype: str) -> np.ndarray:
    if storage_dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16).float().numpy()
    return arr.astype(np.float32, copy=False)
