"""`LabModel`: a chat model named by files, whose weights load on first use.

    base = LabModel("smollm2-135m-instruct")                 # nothing loaded yet
    base.fingerprint, base.tokenizer, base.n_layers            # from files only
    organism = base.with_adapters(["organisms/medical/adapter"])
    organism.hf(ids)                                           # loads the base once, adds the LoRA
    base.hf(ids)                                               # same weights, adapter switched off
    organism.bridge.run_with_cache(ids)                        # TransformerLens on the same weights

A `LabModel` is a view: (base weights in a `ModelPool`, a tuple of adapter folders, dtype,
placement). Views of one base share one resident copy of the weights; `.hf` makes the
view's adapters the active ones and returns the HF model. Hold the view, not its `.hf`:
an `.hf` fetched from one view runs whichever view touched the weights last.

`ModelLike` is the protocol the library codes against (caching, scoring, generation,
steering, training): anything with these members works, e.g. a test double.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import torch

from lab.core.errors import BadInput, IncompatibleError
from lab.models.placement import DeviceMap, pick_device, resolve_dtype
from lab.models.pool import ModelPool, Resident, WeightsKey, resolve_placement
from lab.models.store import REGISTRY, check_adapter_base, load_tokenizer, model_fingerprint, resolve_source

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


class ModelLike(Protocol):
    """What lab/ needs of a model: identity, tokenizer, shape, and the HF module to run."""

    name: str
    dtype: torch.dtype
    device: torch.device  # where inputs go (the first GPU of a sharded model)
    info: dict

    @property
    def fingerprint(self) -> str: ...
    @property
    def tokenizer(self) -> "PreTrainedTokenizerBase": ...
    @property
    def hf(self) -> "PreTrainedModel": ...
    @property
    def bridge(self) -> Any: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    def decoder_layers(self) -> torch.nn.ModuleList: ...
    def embed_module(self) -> torch.nn.Module: ...
    def check_layer(self, layer: int) -> int: ...


class LazyModel(Protocol):
    """What code that may not need the weights asks of a model (`LabModel` is one): its identity,
    tokenizer and depth come from files; `hf` loads the weights on first use. Caches are found by
    `fingerprint` first, so a rerun over cached activations never touches `hf`."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def tokenizer(self) -> "PreTrainedTokenizerBase": ...
    @property
    def n_layers(self) -> int: ...
    @property
    def hf(self) -> "PreTrainedModel": ...


class _Files:
    """What one base model's files say, read once and shared by all views of it."""

    def __init__(self, source: str, path: str, base_fingerprint: str, tokenizer: Any = None, config: Any = None):
        self.source, self.path, self.base_fingerprint = source, path, base_fingerprint
        if tokenizer is not None:
            self.__dict__["tokenizer"] = tokenizer
        if config is not None:
            self.__dict__["config"] = config

    @cached_property
    def tokenizer(self) -> "PreTrainedTokenizerBase":
        return load_tokenizer(self.path)

    @cached_property
    def config(self) -> "PretrainedConfig":
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)


class LabModel:
    """A base model plus LoRA adapters (active in order, summed), at one dtype and placement.

    `device_map`: "" (one device), "auto" (every visible GPU), "cuda:0,cuda:1", or an explicit
    accelerate map (tests use {"...": "cpu" | "disk"}). `pool`: the process's `ModelPool`; by
    default the one opened with `with ModelPool():`, else a private one.
    """

    def __init__(self, source: str = "smollm2-135m-instruct", adapters: Sequence[str | Path] = (),
                 dtype: str | torch.dtype = "auto", device: str | None = "cpu",
                 device_map: "str | DeviceMap" = "", pool: ModelPool | None = None):
        source = str(source)
        described, devices, placement = resolve_placement(device_map)
        if devices and not described:  # one GPU named: no sharding
            device, devices = str(devices[0]), None
        self.device = devices[0] if devices else _input_device(placement) if placement else pick_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        path, base_fp = resolve_source(source)
        self.name = source if source in REGISTRY else Path(source).name or source
        self.pool = pool or ModelPool.current() or ModelPool()
        self._files = self.pool.files.setdefault((source, path, base_fp), _Files(source, path, base_fp))
        key = WeightsKey(path, self.dtype, str(self.device), described)
        self._resident: Resident = self.pool.resident(key, devices, placement)
        self.adapters: tuple[str, ...] = ()
        self._set_adapters(adapters)

    # ------------------------------------------------------------------ views

    def _set_adapters(self, adapters: Sequence[str | Path]) -> None:
        for adapter in adapters:
            check_adapter_base(Path(adapter), self._files.base_fingerprint)
        self.adapters = tuple(str(a) for a in adapters)
        self.__dict__.pop("fingerprint", None)

    def with_adapters(self, adapters: Sequence[str | Path]) -> "LabModel":
        """A view of the same resident weights with these adapters active (none: the base model)."""
        view = copy.copy(self)
        view.__dict__ = {k: v for k, v in self.__dict__.items() if k != "fingerprint"}
        view._set_adapters(adapters)
        return view

    use = with_adapters

    @classmethod
    def adopt(cls, hf: "PreTrainedModel", source: str, tokenizer: Any = None, pool: ModelPool | None = None,
              device_map: "str | DeviceMap" = "") -> "LabModel":
        """Wrap weights built in memory (random-weight benchmarks) as the base of `source`.

        `source` is a folder with the config and tokenizer; its pool counts no load.
        """
        device = str(next(hf.parameters()).device)
        model = cls(source, (), hf.dtype, device if not device_map else None, device_map, pool)
        if tokenizer is not None:
            model._files.__dict__["tokenizer"] = tokenizer
        model._resident.adopt(hf)
        return model

    # ------------------------------------------------------------------ identity and shape (files only)

    @cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self._files.source, self.adapters, self.dtype)

    @property
    def tokenizer(self) -> "PreTrainedTokenizerBase":
        return self._files.tokenizer

    @property
    def config(self) -> "PretrainedConfig":
        return self._files.config

    @property
    def info(self) -> dict:
        return {"base_fingerprint": self._files.base_fingerprint, "path": self._files.path}

    @property
    def source(self) -> str:
        return self._files.source

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def n_ctx(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise BadInput(f"layer {layer} out of range for {self.name} (0..{self.n_layers - 1})")
        return layer

    # ------------------------------------------------------------------ weights

    @property
    def loaded(self) -> bool:
        return self._resident.hf is not None

    @property
    def hf(self) -> "PreTrainedModel":
        """The HF model with this view's adapters active (loads the base weights on first use)."""
        self._resident.activate(self.adapters)
        return self._resident.hf

    @property
    def weights_state(self) -> tuple:
        """What the HF module computes with right now: the resident copy, which adapter tensors it holds
        and which are active. Anything captured against the weights (CUDA graphs) is keyed by this."""
        self.hf
        r = self._resident
        return (id(r), r.adapter_loads, r.active)

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The ModuleList of decoder blocks (Llama/Qwen/Mistral/Gemma layout)."""
        layers = getattr(getattr(self.hf, "model", None), "layers", None)
        if layers is None:
            raise IncompatibleError(f"{self.name}: no model.layers (unsupported architecture for fast hooks)")
        return layers

    def embed_module(self) -> torch.nn.Module:
        return self.hf.get_input_embeddings()

    @property
    def devices(self) -> list[torch.device]:
        """The devices the decoder layers run on, in layer order (one for an unsharded model)."""
        seen: list[torch.device] = []
        for layer in self.decoder_layers():
            dev = _execution_device(layer)
            if dev not in seen:
                seen.append(dev)
        return seen

    def for_training(self) -> "LabModel":
        """The base view with every LoRA module removed from the resident weights, ready for
        `lab.training.lora.train_lora` (which adds its own adapter and removes it again)."""
        if self.adapters:
            raise BadInput("train new adapters on the base model, not on a view with adapters active")
        self._resident.strip_adapters()
        return self

    @property
    def bridge(self) -> "BridgeView":
        """TransformerLens by hook name on these same weights and adapters."""
        return BridgeView(self)

    def __repr__(self) -> str:
        adapters = f", adapters={list(self.adapters)}" if self.adapters else ""
        return f"LabModel({self.name!r}{adapters}, {self.dtype}, {self.device}{', loaded' if self.loaded else ''})"


class BridgeView:
    """A `TransformerBridge` over a view's weights: every call runs with the bridge's modules and
    eager attention swapped in, and HF's sdpa modules back afterwards (see lab.models.pool)."""

    def __init__(self, model: LabModel):
        self._model = model

    def _state(self):
        model = self._model
        model._resident.activate(model.adapters)
        return model._resident.bridge(model.name, model.tokenizer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = self._state()
        with state.active() as bridge:
            return bridge(*args, **kwargs)

    @contextlib.contextmanager
    def hooks(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        state = self._state()
        with state.active() as bridge, bridge.hooks(*args, **kwargs) as h:
            yield h

    def __getattr__(self, name: str) -> Any:
        state = self._state()
        attr = getattr(state.bridge, name)
        if not callable(attr) or isinstance(attr, torch.nn.Module):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with state.active():
                return attr(*args, **kwargs)
        return call


def _input_device(placement: DeviceMap) -> torch.device:
    gpus = sorted(v for v in placement.values() if isinstance(v, int))
    return torch.device("cuda", gpus[0]) if gpus else torch.device("cpu")


def _execution_device(module: torch.nn.Module) -> torch.device:
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return next(module.parameters()).device


def load_model(source: str = "smollm2-135m-instruct", adapters: Sequence[str | Path] = (),
               dtype: str | torch.dtype = "auto", device: str | None = "cpu", device_map: "str | DeviceMap" = "",
               pool: ModelPool | None = None) -> LabModel:
    """A `LabModel` with its weights loaded now (errors surface here, not at first use)."""
    model = LabModel(source, adapters, dtype, device, device_map, pool)
    model.hf
    return model


def export_merged(model: LabModel, out_dir: str | Path) -> Path:
    """Write base + adapters merged into one HF folder: the only place emlab merges LoRA.

    Merges a fresh host copy, so the resident weights (and every view on them) stay untouched.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lab.core.io import atomic_dir

    out_dir = Path(out_dir)
    hf = AutoModelForCausalLM.from_pretrained(model.info["path"], dtype=model.dtype)
    for adapter in model.adapters:
        hf = PeftModel.from_pretrained(hf, adapter).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        hf.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
    return out_dir


@dataclass
class LoadedModel:
    """A `ModelLike` around an HF model already in memory, with an identity given by the caller
    (tests and benchmarks that build a tiny model in code). No adapters, no pool."""

    name: str
    hf: "PreTrainedModel"
    tokenizer: Any
    fingerprint: str
    dtype: torch.dtype
    device: torch.device
    info: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.hf.config.hidden_size)

    @property
    def n_ctx(self) -> int:
        return int(getattr(self.hf.config, "max_position_embeddings", 2048))

    def decoder_layers(self) -> torch.nn.ModuleList:
        return self.hf.model.layers

    def embed_module(self) -> torch.nn.Module:
        return self.hf.get_input_embeddings()

    @property
    def devices(self) -> list[torch.device]:
        return list(dict.fromkeys(_execution_device(layer) for layer in self.decoder_layers()))

    @property
    def bridge(self) -> Any:
        raise BadInput(f"{self.name}: no TransformerLens bridge for an in-memory model (use a LabModel)")

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise BadInput(f"layer {layer} out of range for {self.name} (0..{self.n_layers - 1})")
        return layer

