"""Steering: add, ablate, or ablate-then-add a direction in the residual stream.

An `Intervention` is a pure description (vectors per layer, operation, strength, which
positions). It is applied in two interchangeable ways, tested to agree:

* `steer(model, *interventions)` — a context manager of torch forward hooks on the HF
  decoder layers (the output of layer L is `blocks.L.hook_resid_post`). It works for plain
  forwards and for `model.hf.generate` at HF speed, KV cache included: positions come
  from the cache's length before each forward, so "prompt" / "generated" mean the same thing in a
  prefill pass and in one-token decode steps.
* `tl_hooks(intervention)` — the same edit as TransformerLens hook functions on
  `blocks.{L}.hook_resid_post`, for `bridge.run_with_hooks` / `bridge.hooks(...)`.

Operations on a residual vector x with unit direction v:
    add         x + alpha * v
    ablate      x - scale * (x . v) v          (scale 1: projection removed)
    ablate_add  x - (x . v) v + alpha * v      (set the projection to alpha)
`renorm=True` rescales each edited vector back to its original norm.

Directions enter through one door, `from_direction(direction, model, ...)`, which checks the
direction's provenance (same base weights, d_model and depth; `check_provenance`) unless the
caller passes `allow_foreign=True` (`--allow-foreign-direction`). Controls come from
`random_like`: random vectors with the treatment's structure (one random vector wherever the
treatment uses one direction at several layers) and norms, and the same op and strength.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

import torch
from jaxtyping import Float

from lab.core.errors import BadInput, IncompatibleError
from lab.models import ModelLike

if TYPE_CHECKING:
    from lab.directions import Direction

OPS = ("add", "ablate", "ablate_add")
POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class Intervention:
    """One edit of the residual stream at some layers (hook point: resid_post)."""

    vectors: dict[int, torch.Tensor]  # layer -> (d_model,) direction, normalised on use
    op: str = "add"
    alpha: float = 0.0
    scale: float = 1.0  # ablation strength (1: projection removed; >1 overshoots, e.g. 1.5)
    positions: str = "all"
    renorm: bool = False
    label: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    _ready: dict = field(default_factory=dict, compare=False, repr=False)  # unit vectors per (layer, device, dtype)

    def __post_init__(self):
        if self.op not in OPS:
            raise BadInput(f"unknown steering op {self.op!r} (one of {', '.join(OPS)})")
        if self.positions not in POSITIONS:
            raise BadInput(f"unknown positions {self.positions!r} (one of {', '.join(POSITIONS)})")
        if not (math.isfinite(self.alpha) and math.isfinite(self.scale)):
            raise BadInput(f"steering strength must be finite (alpha={self.alpha}, scale={self.scale})")
        if not self.vectors:
            raise BadInput("an intervention needs at least one layer")
        for layer, v in self.vectors.items():
            if not torch.isfinite(v).all() or v.norm() == 0:
                raise BadInput(f"direction at layer {layer} is zero or not finite")

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def shared(self) -> bool:
        """True when one vector is used at every layer (a direction ablated everywhere), which
        its random control must copy (`random_like`)."""
        first, *rest = (self.vectors[L] for L in self.layers)
        return all(v.shape == first.shape and torch.equal(v, first) for v in rest)

    def check(self, model: ModelLike) -> "Intervention":
        """Raise unless every layer and vector fits `model` (a LabModel)."""
        for layer, v in self.vectors.items():
            model.check_layer(layer)
            if v.shape != (model.d_model,):
                raise BadInput(f"direction at layer {layer} has shape {tuple(v.shape)}, model d_model is {model.d_model}")
        return self

    def unit(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The unit vector on the activations' device and dtype, made once: a host-to-device
        copy per call would synchronise every decode step and stall the GPU."""
        key = (layer, device, dtype)
        if key not in self._ready:
            v = self.vectors[layer].float()
            self._ready[key] = (v / v.norm()).to(device=device, dtype=dtype)
        return self._ready[key]

    def apply(self, x: Float[torch.Tensor, "batch seq d"], layer: int, positions: torch.Tensor | None,
              prompt_width: int | torch.Tensor | None = None) -> torch.Tensor:
        """The edited residual; `positions` are absolute (padded) token positions of x's seq axis.

        `prompt_width`: where the prompt ends, in padded positions: one int for a left-padded
        generation batch, or a (batch,) tensor when rows' prompts end at different columns
        (teacher-forced question + answer sequences).
        """
        v = self.unit(layer, x.device, x.dtype)
        if self.op == "add":
            edited = x + self.alpha * v
        else:
            proj = (x @ v).unsqueeze(-1)
            edited = x - (self.scale if self.op == "ablate" else 1.0) * proj * v
            if self.op == "ablate_add":
                edited = edited + self.alpha * v
        if self.renorm:
            edited = edited * (x.norm(dim=-1, keepdim=True) / edited.norm(dim=-1, keepdim=True).clamp(min=1e-12))
        if self.positions == "all" or prompt_width is None or positions is None:
            return edited
        if isinstance(prompt_width, torch.Tensor):
            in_prompt = (positions.view(1, -1) < prompt_width.to(positions.device).view(-1, 1)).unsqueeze(-1)
        else:
            in_prompt = (positions < prompt_width).view(1, -1, 1)
        keep = in_prompt if self.positions == "prompt" else ~in_prompt
        return torch.where(keep, edited, x)


class Fitted(Protocol):
    """What provenance checks read from a model or an unloaded model handle."""

    fingerprint: str


def _base_fingerprint(model: Fitted) -> str:
    """The fingerprint of a model's base weights (adapters and dtype left out).

    A loaded `LabModel` records it in `info`; an unloaded handle computes it from its source.
    """
    info = getattr(model, "info", None)
    if isinstance(info, dict) and info.get("base_fingerprint"):
        return info["base_fingerprint"]
    from lab.models import base_fingerprint

    return base_fingerprint(model.source)


def check_provenance(direction: Direction, model: ModelLike, fitted_on: Fitted | None = None) -> None:
    """Raise `IncompatibleError` (one line) unless `direction` belongs with `model`.

    A direction belongs with a model when (1) it has the model's d_model and layer count, and
    (2) it was fitted on the model itself, or on a fine-tune of the same base weights: an EM
    organism's misalignment direction steering or ablated from the base model (or another
    organism of that base) is the usual experiment, while a direction from another base model of
    the same shape (Qwen2.5-0.5B vs Qwen2.5-Coder-0.5B) is not. A `Direction` records only the
    fingerprint of the model it was fitted on, a hash of base + adapters + dtype, so the fine-tune
    is named by `fitted_on` (the model or handle the direction was fitted on): its fingerprint
    must be the direction's, and its base that of `model`. Without `fitted_on` the direction must
    have been fitted on `model` exactly.
    """
    direction.check_model(model.d_model, model.n_layers)
    source = model if fitted_on is None else fitted_on
    what = "this model" if fitted_on is None else "the model passed as fitted_on"
    if not direction.model_fingerprint or direction.model_fingerprint != source.fingerprint:
        raise IncompatibleError(
            f"direction {direction.method}:{direction.contrast} was fitted on model "
            f"{direction.model_fingerprint[:12] or '(unrecorded)'}, not on {what} ({source.fingerprint[:12]}); "
            f"pass --allow-foreign-direction to use it anyway")
    if fitted_on is not None and _base_fingerprint(fitted_on) != _base_fingerprint(model):
        raise IncompatibleError(
            f"direction {direction.method}:{direction.contrast} was fitted on a model of another base "
            f"({_base_fingerprint(fitted_on).split(':')[0]}, not {_base_fingerprint(model).split(':')[0]}); "
            f"pass --allow-foreign-direction to use it anyway")


def direction_vectors(direction: Direction, model: ModelLike, layers: Iterable[int] | None = None, *,
                      at: int | None = None, fitted_on: Fitted | None = None, allow_foreign: bool = False
                      ) -> dict[int, torch.Tensor]:
    """The direction's vectors for `model`, provenance checked (see `check_provenance`).

    `layers` (default: the direction's) are where the vectors go; `at` takes the vector fitted
    at that one layer and uses it at every layer in `layers` (Arditi et al.'s "ablate the
    direction everywhere"), else each layer gets its own fitted vector. `allow_foreign=True`
    skips the provenance check (transfer experiments, `--allow-foreign-direction`); the shape
    must still fit the model when the intervention is applied.
    """
    if not allow_foreign:
        check_provenance(direction, model, fitted_on)
    layers = direction.layers if layers is None else list(layers)
    pick = (lambda L: direction.at(at)) if at is not None else direction.at
    return {L: pick(L).detach().float().cpu() for L in layers}


def from_direction(direction: Direction, model: ModelLike, layers: Iterable[int] | None = None, *, at: int | None = None,
                   op: str = "add", alpha: float = 0.0, fitted_on: Fitted | None = None,
                   allow_foreign: bool = False, **kwargs: Any) -> Intervention:
    """The one way to steer with a saved or fitted `Direction`: an intervention built from
    `direction_vectors` (provenance checked against `model`). Other keyword arguments
    (scale, positions, renorm, label) go to `Intervention`."""
    vectors = direction_vectors(direction, model, layers, at=at, fitted_on=fitted_on, allow_foreign=allow_foreign)
    return Intervention(vectors, op=op, alpha=alpha, label=kwargs.pop("label", f"{direction.method}:{op}"), **kwargs)


def random_vectors_like(vectors: dict[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """Seeded random vectors with the structure of `vectors`: layers that share one vector
    (equal values) share one random vector, the others each get their own; every random vector
    has the norm of the vector it replaces. Draws are made in layer order, one per distinct
    vector, so a control is a pure function of (structure, norms, seed)."""
    gen = torch.Generator().manual_seed(seed)
    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []  # (treatment vector, its random twin)
    out = {}
    for layer in sorted(vectors):
        v = vectors[layer].detach().float().cpu()
        twin = next((r for u, r in drawn if u.shape == v.shape and torch.equal(u, v)), None)
        if twin is None:
            r = torch.randn(v.shape, generator=gen)
            twin = r * (v.norm() / r.norm())
            drawn.append((v, twin))
        out[layer] = twin
    return out


def random_like(intervention: Intervention, seed: int) -> Intervention:
    """The control: same layers, op, strength, positions and renorm, and random vectors with
    the treatment's structure and norms (`random_vectors_like`): one random vector at every
    layer when the treatment uses one direction at every layer, one per layer when it uses
    per-layer directions."""
    return replace(intervention, vectors=random_vectors_like(intervention.vectors, seed),
                   label=f"random{seed}:{intervention.op}", meta={}, _ready={})


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _find_cache(args: tuple, kwargs: dict) -> Any:
    """The KV cache among a forward's arguments, found by type: its keyword has changed between
    transformers releases (`past_key_values`, then `cache` in 5.24)."""
    from transformers.cache_utils import Cache

    return next((v for v in (*args, *kwargs.values()) if isinstance(v, Cache)), None)


def _graph_safe() -> bool:
    """True while a CUDA graph is being captured or torch.compile traces: no host reads then."""
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    return capturing or torch.compiler.is_compiling()


class _PositionTracker:
    """Padded positions of the tokens in the forward of the decoder stack now running.

    A pre-hook on the stack (the module that runs the layers) reads, before any layer writes
    to it, how many tokens the KV cache already holds: prefill 0..S-1, then one position per
    decode step. That works for a dynamic cache (an int), a static cache (a device tensor, so
    a captured CUDA graph recomputes it on every replay), a teacher-forced forward (no cache:
    offset 0), and any keyword transformers uses. A 2D attention mask must span exactly the
    cached plus the new tokens; when it does not (an unrecognised cache), the forward fails
    instead of steering the wrong tokens.
    """

    def __init__(self) -> None:
        self.offset: int | torch.Tensor | None = None
        self.mask_len: int | None = None
        self._memo: torch.Tensor | None = None

    def before(self, module: Any, args: tuple, kwargs: dict) -> None:
        cache = _find_cache(args, kwargs)
        offset = cache.get_seq_length() if cache is not None else 0
        # a static cache counts on the device and its layers advance it as they run: keep this moment's value
        self.offset = offset.clone() if isinstance(offset, torch.Tensor) else offset
        mask = kwargs.get("attention_mask")
        self.mask_len = mask.shape[-1] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._memo = None

    def after(self, *_: Any) -> None:
        self.offset = self._memo = None

    def positions(self, seq: int, device: torch.device) -> torch.Tensor:
        if self._memo is not None and self._memo.shape[0] == seq and self._memo.device == device:
            return self._memo
        if self.offset is None:
            raise IncompatibleError("steering by position: this forward did not run through the model's decoder "
                                    "stack, so token positions are unknown")
        if self.mask_len is not None and not _graph_safe() and int(self.offset) + seq != self.mask_len:
            raise IncompatibleError(f"steering by position: the KV cache holds {int(self.offset)} tokens and "
                                    f"{seq} are new, but the attention mask spans {self.mask_len}: cannot tell "
                                    "token positions (an unsupported cache in this transformers version?)")
        self._memo = torch.arange(seq, device=device) + (
            self.offset.to(device) if isinstance(self.offset, torch.Tensor) else self.offset)
        return self._memo


def _absolute_positions(tracker: _PositionTracker, seq: int, device: torch.device) -> torch.Tensor:
    """Padded positions of the `seq` tokens a decoder layer just processed (see `_PositionTracker`)."""
    return tracker.positions(seq, device)


def _decoder_stack(model: ModelLike) -> Any:
    """The module whose forward runs the decoder layers (HF's `get_decoder()`), so direct calls of
    it (lab.em.judge_free) are tracked as well as full-model forwards and `generate`."""
    get = getattr(model.hf, "get_decoder", None)
    return get() if callable(get) else model.hf


@contextlib.contextmanager
def steer(model: ModelLike, *interventions: Intervention, prompt_width: int | torch.Tensor | None = None
          ) -> Iterator[None]:
    """Apply interventions to every forward of `model.hf` inside the block (HF path).

    `prompt_width` is the (padded) prompt length, or a (batch,) tensor of per-row prompt ends;
    needed for `positions="prompt"/"generated"`. Unit vectors are moved to the model's device
    and dtype here, before any forward, so a decode step (or a captured CUDA graph) never copies.
    """
    for iv in interventions:
        iv.check(model)
        if iv.positions != "all" and prompt_width is None:
            raise BadInput(f"positions={iv.positions!r} needs prompt_width")
    layers = model.decoder_layers()
    if isinstance(prompt_width, torch.Tensor):
        prompt_width = prompt_width.to(model.device)
    for iv in interventions:
        for layer in iv.layers:  # keyed as the hook will ask: the layer's own device ("cuda:0", not "cuda")
            param = next(layers[layer].parameters())
            iv.unit(layer, param.device, param.dtype)
    tracker = _PositionTracker() if any(iv.positions != "all" for iv in interventions) else None
    handles = []

    def make_hook(layer: int, chosen: list[Intervention]):
        def hook(module, args, output):
            x = _hidden(output)
            positions = _absolute_positions(tracker, x.shape[1], x.device) if tracker is not None else None
            for iv in chosen:
                x = iv.apply(x, layer, positions, prompt_width)
            return (x, *output[1:]) if isinstance(output, tuple) else x
        return hook

    try:
        if tracker is not None:
            stack = _decoder_stack(model)
            handles.append(stack.register_forward_pre_hook(tracker.before, with_kwargs=True))
            handles.append(stack.register_forward_hook(tracker.after, always_call=True))
        for layer in sorted({L for iv in interventions for L in iv.layers}):
            chosen = [iv for iv in interventions if layer in iv.vectors]
            handles.append(layers[layer].register_forward_hook(make_hook(layer, chosen)))
        yield
    finally:
        for h in handles:
            h.remove()


def tl_hooks(*interventions: Intervention, prompt_width: int | None = None) -> list[tuple[str, Any]]:
    """The same edits as TransformerLens `(hook_name, fn)` pairs on resid_post.

    Positions are the hook's sequence axis, so these are for whole-sequence forwards
    (`run_with_hooks`, a cache-less generate loop); a KV-cached step with position-dependent
    edits fails instead of taking its one token for position 0."""
    hooks = []
    for iv in interventions:
        for layer in iv.layers:
            def fn(resid, hook, iv=iv, layer=layer):
                if iv.positions != "all" and prompt_width is not None and resid.shape[1] < prompt_width:
                    # a KV-cached decode step: this path sees whole sequences only
                    raise IncompatibleError(f"tl_hooks with positions={iv.positions!r} needs whole-sequence "
                                            f"forwards (got {resid.shape[1]} tokens, prompt is {prompt_width})")
                return iv.apply(resid, layer, torch.arange(resid.shape[1], device=resid.device), prompt_width)
            hooks.append((f"blocks.{layer}.hook_resid_post", fn))
    return hooks
