"""One resident copy of each base model per process, with PEFT adapters switched in place.

A `ModelPool` owns the weights: it loads a base model the first time any `LabModel` of
it needs weights, and keeps exactly one copy. Organisms and the checkpoints of a training
trajectory are LoRA adapters loaded onto that copy under their own names (peft's named
adapters) and switched by `Resident.activate`: enabling a set of adapters, or disabling
all of them for the base model. Nothing is merged; `export_merged` writes a merged folder
only when a user asks for one.

The pool is owned by whoever runs the work and passed down, or opened as a context that
the experiment helpers find (`with ModelPool() as pool: study.run(cfg)`): there is no
module-level cache of models. `pool.loads` counts weight loads, so a study can prove it
loaded each base once.

TransformerLens analysis runs on the same weights: the `TransformerBridge` is booted on
the resident HF model, which it rewraps in place (its blocks replace HF's, with eager
attention). Emlab records both module trees and swaps the bridge's in only for the
duration of a bridge call, so HF's own forward keeps sdpa attention and its speed.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from lab.core.errors import BadInput, IncompatibleError
from lab.models.placement import DeviceMap, plan_device_map
from lab.models.store import adapter_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_CURRENT: contextvars.ContextVar["ModelPool | None"] = contextvars.ContextVar("emlab_model_pool", default=None)
MAX_ADAPTERS = 32  # adapters kept loaded per resident model (LoRA weights are small; oldest dropped first)


@dataclass(frozen=True)
class WeightsKey:
    """What identifies one copy of base weights: where they come from and where/how they run."""

    path: str
    dtype: torch.dtype
    device: str  # the input device: the single device, or the first GPU of a sharded model
    device_map: str = ""  # "" (one device) or a canonical description of the placement


class Resident:
    """The weights of one base model, loaded on first use, with adapters switched in place."""

    def __init__(self, key: WeightsKey, pool: "ModelPool", devices: list | None = None,
                 placement: DeviceMap | None = None):
        self.key, self.pool, self.devices, self.placement = key, pool, devices, placement
        self.hf: "PreTrainedModel | None" = None
        self.peft: Any = None  # peft.PeftModel once the first adapter is loaded
        self.names: dict[str, str] = {}  # adapter folder -> peft adapter name, in load order
        self.active: tuple[str, ...] = ()
        self.structure = 0  # bumped when LoRA modules are injected or removed (the bridge must rewrap)
        self.adapter_loads = 0  # bumped when an adapter's tensors are loaded or freed (captured graphs go stale)
        self._bridge: _BridgeState | None = None

    # ------------------------------------------------------------------ weights

    def weights(self) -> "PreTrainedModel":
        if self.hf is None:
            if self.placement is None and self.devices:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(self.key.path)
                self.placement = plan_device_map(config, self.devices, self.key.dtype)
            self.hf = _load(self.key, self.placement)
            self.pool.loads += 1
            self.pool.log.append(self.key.path)
        return self.hf

    def adopt(self, hf: "PreTrainedModel") -> None:
        """Use weights built elsewhere (random-weight benchmarks): not counted as a load."""
        self.hf = hf.eval()

    # ------------------------------------------------------------------ adapters

    def activate(self, adapters: tuple[str, ...]) -> None:
        """Make exactly `adapters` (folders) active: all of them summed, or none for the base model."""
        hf = self.weights()
        names = tuple(self._name(a) for a in adapters)
        if self.peft is None or names == self.active:
            self.active = names
            return
        tuner = self.peft.base_model
        if names:
            tuner.enable_adapter_layers()
            try:
                tuner.set_adapter(list(names), inference_mode=True)
            except TypeError:  # older peft: no inference_mode (we run under inference_mode anyway)
                tuner.set_adapter(list(names))
        else:
            tuner.disable_adapter_layers()
        self.active = names
        hf.eval()

    def _name(self, folder: str) -> str:
        if folder in self.names:
            self.names[folder] = self.names.pop(folder)  # most recently used last
            return self.names[folder]
        from peft import PeftModel

        name = "a" + adapter_fingerprint(Path(folder))[:16]
        check_adapter_fits(Path(folder), self.hf)
        if len(self.names) >= MAX_ADAPTERS:
            oldest = next(f for f in self.names if self.names[f] not in self.active)
            self.peft.delete_adapter(self.names.pop(oldest))
            self.adapter_loads += 1
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.hf, folder, adapter_name=name, is_trainable=False)
                self.peft.base_model.disable_adapter_layers()
                self.active = ()
            else:
                self.peft.load_adapter(folder, adapter_name=name, is_trainable=False)
            self.adapter_loads += 1
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IncompatibleError(f"adapter {folder} does not fit this base model: {first[:200]}") from exc
        self.structure += 1
        self.names[folder] = name
        return name

    def strip_adapters(self) -> "PreTrainedModel":
        """Remove every injected LoRA module (weights untouched), e.g. before training a new adapter.

        Adapters load again from their folders the next time a view needs them.
        """
        hf = self.weights()
        if self.peft is not None:
            self.hf = self.peft.unload()
            assert self.hf is hf  # peft unwraps in place: same object, original modules
            self.peft, self.names, self.active = None, {}, ()
            self.adapter_loads += 1
            self.structure += 1
        return self.hf

    # ------------------------------------------------------------------ TransformerLens

    def bridge(self, name: str, tokenizer: Any) -> "_BridgeState":
        hf = self.weights()
        if self._bridge is None or self._bridge.structure != self.structure:
            if self._bridge is not None:
                self._bridge.restore_hf()
            self._bridge = _BridgeState.boot(hf, name, tokenizer, self.key, self.structure)
        return self._bridge


@dataclass
class _BridgeState:
    """A TransformerBridge over the resident weights, and both module trees to swap between."""

    bridge: Any
    hf_tree: dict
    tl_tree: dict
    attention: str
    structure: int

    @classmethod
    def boot(cls, hf: Any, name: str, tokenizer: Any, key: WeightsKey, structure: int) -> "_BridgeState":
        from transformer_lens.model_bridge import TransformerBridge

        hf_tree = _module_tree(hf)
        attention = hf.config._attn_implementation
        bridge = TransformerBridge.boot_transformers(
            hf.config.name_or_path or name, hf_model=hf, tokenizer=tokenizer,
            device=key.device if not key.device_map else None, dtype=key.dtype)
        bridge.eval()
        state = cls(bridge, hf_tree, _module_tree_of(hf_tree), attention, structure)
        state.restore_hf()
        return state

    def restore_hf(self) -> None:
        _set_tree(self.hf_tree)
        hf = next(iter(self.hf_tree))
        if hf.config._attn_implementation != self.attention:
            hf.set_attn_implementation(self.attention)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """The bridge's modules (eager attention) for the duration of the block, then HF's again."""
        hf = next(iter(self.hf_tree))
        _set_tree(self.tl_tree)
        hf.set_attn_implementation("eager")
        try:
            yield self.bridge
        finally:
            self.restore_hf()


def _module_tree(root: torch.nn.Module) -> dict:
    """Every module's children, by parent (the first key is the root)."""
    return {m: dict(m._modules) for m in root.modules()}


def _module_tree_of(before: dict) -> dict:
    return {parent: dict(parent._modules) for parent in before}


def _set_tree(tree: dict) -> None:
    for parent, children in tree.items():
        parent._modules.clear()
        parent._modules.update(children)


_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def check_adapter_fits(folder: Path, hf: Any) -> None:
    """Refuse an adapter whose LoRA matrices do not fit this model's modules, before peft touches it.

    Checked from the safetensors header against the loaded modules: a foreign adapter would
    otherwise fail half-way through injection and leave the resident model half-wrapped.
    """
    from safetensors import safe_open

    modules = dict(hf.named_modules())
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            match = _LORA_KEY.match(key)
            if not match:
                continue
            path, which = match.groups()
            module = modules.get(path)
            if module is None:
                raise IncompatibleError(f"adapter {folder} does not fit this base model: it adapts {path}, "
                                        "which this model does not have")
            base = getattr(module, "base_layer", module)
            shape = tuple(f.get_slice(key).get_shape())
            want = getattr(base, "in_features", None) if which == "A" else getattr(base, "out_features", None)
            have = shape[1] if which == "A" else shape[0]
            if want is not None and have != want:
                raise IncompatibleError(f"adapter {folder} does not fit this base model: {path} has "
                                        f"{'in' if which == 'A' else 'out'}_features {want}, the adapter {have}")


def _load(key: WeightsKey, placement: DeviceMap | None) -> "PreTrainedModel":
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict = {"dtype": key.dtype, "attn_implementation": "sdpa"}
    if placement is not None:
        kwargs["device_map"] = placement
        if "disk" in placement.values():
            import tempfile

            kwargs["offload_folder"] = tempfile.mkdtemp(prefix="emlab-offload-")
    elif key.device != "cpu":
        kwargs["device_map"] = {"": key.device}  # straight to the GPU, no host copy
    try:
        hf = AutoModelForCausalLM.from_pretrained(key.path, **kwargs)
    except torch.OutOfMemoryError:
        config = AutoConfig.from_pretrained(key.path)
        raise BadInput(f"{key.path} does not fit on {key.device} in {key.dtype} "
                       f"({config.num_hidden_layers} layers): try --device-map auto to spread it over GPUs") from None
    return hf.eval()


@dataclass
class ModelPool:
    """The models of one process: one `Resident` per base weights; open as a context to share.

        with ModelPool() as pool:
            base = LabModel("smollm2-135m-instruct")          # finds the open pool
            organism = base.with_adapters(["cache/organisms/medical/adapter"])
            ...                                              # one copy of the weights
        pool.loads                                           # 1
    """

    residents: dict[WeightsKey, Resident] = field(default_factory=dict)
    files: dict[tuple, Any] = field(default_factory=dict)  # (source, path, fingerprint) -> tokenizer/config, read once
    loads: int = 0
    log: list[str] = field(default_factory=list)
    _tokens: list = field(default_factory=list, repr=False)

    def resident(self, key: WeightsKey, devices: list | None = None, placement: DeviceMap | None = None) -> Resident:
        if key not in self.residents:
            self.residents[key] = Resident(key, self, devices, placement)
        return self.residents[key]

    @staticmethod
    def current() -> "ModelPool | None":
        """The pool opened by the nearest enclosing `with ModelPool()`, if any."""
        return _CURRENT.get()

    def __enter__(self) -> "ModelPool":
        self._tokens.append(_CURRENT.set(self))
        return self

    def __exit__(self, *exc: Any) -> None:
        _CURRENT.reset(self._tokens.pop())

    def release(self) -> None:
        """Drop every resident's weights (GPU memory is freed once no view holds them)."""
        self.residents.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def resolve_placement(spec: "str | DeviceMap") -> tuple[str, list | None, DeviceMap | None]:
    """A device map given as a string (GPUs) or an explicit accelerate dict (tests, offload)."""
    from lab.models.placement import parse_device_map

    if isinstance(spec, dict):
        return "dict:" + ",".join(f"{k}={v}" for k, v in sorted(spec.items())), None, dict(spec)
    devices = parse_device_map(spec)
    if len(devices) <= 1:  # one GPU (or none asked for): a plain single-device model
        return "", devices or None, None
    return ",".join(str(d) for d in devices), devices, None
