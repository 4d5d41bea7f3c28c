"""The `Direction` file: unit vectors per layer, the model they belong to, and how they were fitted.

A direction is saved as a safetensors file holding one tensor, `vectors` (layers, d_model),
and string metadata: the layers, the model's identity (fingerprint, d_model, n_layers, hook
template) and, for fitted directions, a `FitRecord` as JSON. Version 1 files (a free
`metrics` dict instead of the record) still load; their record is rebuilt from the dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import KW_ONLY, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from lab.directions.validation import tensor
from lab.core.errors import BadInput, IncompatibleError, IntegrityError

HOOK_TEMPLATE = "blocks.{L}.hook_resid_post"
FORMAT = "emlab-direction"
VERSION = 2


@dataclass(frozen=True)
class FitRecord:
    """How a direction was fitted: method, data, split, and its held-out scores per layer.

    `heldout_*` follow `layers` order; `best_layer` is the layer of highest held-out AUROC.
    `train_ids` / `test_ids` name the examples of each side, so the held-out set of any
    saved direction can be recovered without refitting. Version 1 files lack the ids
    (empty tuples) and may lack the split fields (None).
    """

    method: str
    pooling: str
    contrast: str
    data_hash: str
    positive_label: str = ""
    negative_label: str | None = None
    layers: tuple[int, ...] = ()
    heldout_auroc: tuple[float, ...] = ()
    heldout_acc: tuple[float, ...] = ()
    heldout_sep_sd: tuple[float, ...] = ()
    best_layer: int | None = None
    split_seed: int | None = None
    test_fraction: float | None = None
    stratify: bool = True
    train_ids: tuple[str, ...] = ()
    test_ids: tuple[str, ...] = ()

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    @property
    def n_test(self) -> int:
        return len(self.test_ids)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FitRecord":
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise IntegrityError(f"direction record has unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    @classmethod
    def from_v1(cls, meta: dict[str, str]) -> "FitRecord":
        """The record of a version 1 file: its top-level strings plus its `metrics` dict."""
        m = json.loads(meta.get("metrics", "{}"))
        return cls(method=meta.get("method", ""), pooling=meta.get("pooling", ""), contrast=meta.get("contrast", ""),
                   data_hash=meta.get("data_hash", ""), positive_label=m.get("positive_label") or "",
                   negative_label=m.get("negative_label"), layers=tuple(json.loads(meta.get("layers", "[]"))),
                   heldout_auroc=tuple(m.get("test_auroc", ())), heldout_acc=tuple(m.get("test_acc", ())),
                   heldout_sep_sd=tuple(m.get("test_sep_sd", ())), best_layer=m.get("best_layer"),
                   split_seed=m.get("split_seed"), test_fraction=m.get("test_fraction"),
                   test_ids=tuple(m.get("test_ids", ())))


@dataclass(eq=False)  # tensors do not compare with ==; compare fields explicitly
class Direction:
    """Unit vectors (one row per layer in `layers`) plus the model they belong to and their record.

    `hook` is a template: `hook.format(L=layer)` names the hook a row belongs to.
    `d_model` / `n_layers` / `model_fingerprint` describe the model the direction was made
    on, checked by `check_model` before it is applied to another one. `record` says how it
    was fitted (None for a direction made by hand). Vectors are kept on the CPU in float32:
    this is the file format; move a row to a model's device when applying it.
    """

    vectors: Float[torch.Tensor, "layer d"]
    layers: list[int]
    _: KW_ONLY
    n_layers: int
    d_model: int | None = None
    model_fingerprint: str = ""
    hook: str = HOOK_TEMPLATE
    record: FitRecord | None = None

    def __post_init__(self):
        self.vectors = tensor(self.vectors).detach().to("cpu", torch.float32).contiguous()
        if self.vectors.ndim != 2:
            raise BadInput(f"direction vectors must be (layers, d_model), got {tuple(self.vectors.shape)}")
        self.layers = [int(L) for L in self.layers]
        if len(self.layers) != self.vectors.shape[0] or len(set(self.layers)) != len(self.layers):
            raise BadInput(f"{self.vectors.shape[0]} direction rows but layers {self.layers}")
        self.d_model = int(self.vectors.shape[1]) if self.d_model is None else int(self.d_model)
        self.n_layers = int(self.n_layers)
        if self.vectors.shape[1] != self.d_model:
            raise BadInput(f"direction rows have {self.vectors.shape[1]} entries, d_model is {self.d_model}")
        if any(not 0 <= L < self.n_layers for L in self.layers):
            raise BadInput(f"layers {self.layers} outside 0..{self.n_layers - 1}")
        norms = self.vectors.norm(dim=-1)
        if not torch.isfinite(self.vectors).all() or (norms - 1).abs().max() > 1e-3:
            raise BadInput(f"direction rows must be finite unit vectors (norms {norms.min():.4g}..{norms.max():.4g})")

    # the record's most-read fields, for directions made by hand too ("" when there is no record)
    @property
    def method(self) -> str:
        return self.record.method if self.record else ""

    @property
    def pooling(self) -> str:
        return self.record.pooling if self.record else ""

    @property
    def contrast(self) -> str:
        return self.record.contrast if self.record else ""

    @property
    def data_hash(self) -> str:
        return self.record.data_hash if self.record else ""

    def check_model(self, d_model: int, n_layers: int) -> None:
        """Raise `IncompatibleError` unless the model has this direction's width and depth."""
        if (int(d_model), int(n_layers)) != (self.d_model, self.n_layers):
            raise IncompatibleError(f"direction made for d_model {self.d_model} / {self.n_layers} layers, "
                                    f"model has d_model {d_model} / {n_layers} layers")

    def at(self, layer: int) -> Float[torch.Tensor, " d"]:
        """The unit vector of one layer."""
        if layer not in self.layers:
            raise BadInput(f"direction has no layer {layer} (it has {_span(self.layers)})")
        return self.vectors[self.layers.index(layer)]

    def only(self, layer: int) -> "Direction":
        """A one-row copy holding just `layer` (e.g. the best layer, for steering)."""
        return Direction(self.at(layer).unsqueeze(0).clone(), [layer], n_layers=self.n_layers, d_model=self.d_model,
                         model_fingerprint=self.model_fingerprint, hook=self.hook, record=self.record)

    def project(self, features: Float[np.ndarray, "n d"] | Float[torch.Tensor, "n d"], layer: int
                ) -> Float[np.ndarray, " n"] | Float[torch.Tensor, " n"]:
        """Scalar projection of each row on the layer's unit vector (numpy in, numpy out;
        a tensor stays on its device)."""
        v = self.at(layer)
        if features.shape[-1] != self.d_model:
            raise IncompatibleError(f"features have width {features.shape[-1]}, direction has d_model {self.d_model}")
        if isinstance(features, np.ndarray):
            return features.astype(np.float32, copy=False) @ v.numpy()
        return features.to(torch.float32) @ v.to(features.device)

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensor `vectors`; the rest as string metadata, the record
        as JSON) under a temporary name, then rename: readers never see half a file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": str(VERSION), "layers": json.dumps(self.layers),
                "n_layers": str(self.n_layers), "d_model": str(self.d_model),
                "model_fingerprint": self.model_fingerprint, "hook": self.hook,
                "record": self.record.to_json() if self.record else "null"}
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        try:
            save_file({"vectors": self.vectors}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Direction":
        """Read a file written by `save` (this version or version 1); `IntegrityError` if it
        is not an emlab direction."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.exists():
            raise BadInput(f"{path}: no such direction file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or "vectors" not in f.keys():
                    raise IntegrityError(f"{path} is not an emlab direction file")
                version = int(meta["version"])
                if version not in (1, VERSION):
                    raise IntegrityError(f"{path}: direction format version {version} (expected 1 or {VERSION})")
                vectors = f.get_tensor("vectors")
            if version == 1:
                record = FitRecord.from_v1(meta)
            else:
                record = None if meta["record"] == "null" else FitRecord.from_json(meta["record"])
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{path}: unreadable direction file ({str(exc).splitlines()[0][:120]})") from None
        return cls(vectors, json.loads(meta["layers"]), n_layers=int(meta["n_layers"]), d_model=int(meta["d_model"]),
                   model_fingerprint=meta["model_fingerprint"], hook=meta["hook"], record=record)


def _span(layers: list[int]) -> str:
    return str(layers) if len(layers) <= 6 else f"{len(layers)} layers, {layers[0]}..{layers[-1]}"
