"""Steering: add, ablate, or ablate-then-add a direction in the residual stream.

An `Intervention` is a pure description (vectors per layer, operation, strength, which
positions). It is applied in two interchangeable ways, tested to agree:

* `steer(model, *interventions)` — a context manager of torch forward hooks on the HF
  decoder layers (the output of layer L is `blocks.L.hook_resid_post`). It works for plain
  forwards and for `model.hf.generate` at HF speed, KV cache included: positions come
  from the layer's KV-cache length, so "prompt" / "generated" mean the same thing in a
  prefill pass and in one-token decode steps.
* `tl_hooks(intervention)` — the same edit as TransformerLens hook functions on
  `blocks.{L}.hook_resid_post`, for `bridge.run_with_hooks` / `bridge.hooks(...)`.

Operations on a residual vector x with unit direction v:
    add         x + alpha * v
    ablate      x - scale * (x . v) v          (scale 1: projection removed)
    ablate_add  x - (x . v) v + alpha * v      (set the projection to alpha)
`renorm=True` rescales each edited vector back to its original norm.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from jaxtyping import Float

from lab.errors import BadInput
from lab.models import ModelLike

OPS = ("add", "ablate", "ablate_add")
POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class Intervention:
    """One edit of the residual stream at some layers (hook point: resid_post)."""

    vectors: dict[int, torch.Tensor]  # layer -> (d_model,) direction, normalised on use
    op: str = "add"
    alpha: float = 0.0
    scale: float = 1.0  # ablation strength (seed 002 used 1.5)
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


def from_direction(direction: Any, layers: list[int] | None = None, op: str = "add", alpha: float = 0.0,
                   **kwargs: Any) -> Intervention:
    """An intervention using a saved `Direction`'s vector at each chosen layer."""
    layers = direction.layers if layers is None else layers
    return Intervention({L: direction.at(L).detach().float().cpu() for L in layers}, op=op, alpha=alpha,
                        label=kwargs.pop("label", f"{direction.method}:{op}"), **kwargs)


def random_like(intervention: Intervention, seed: int) -> Intervention:
    """The control: same layers, op, strength and norm, seeded random directions."""
    gen = torch.Generator().manual_seed(seed)
    vectors = {L: torch.randn(v.shape, generator=gen) for L, v in intervention.vectors.items()}
    return Intervention(vectors, intervention.op, intervention.alpha, intervention.scale, intervention.positions,
                        intervention.renorm, f"random{seed}:{intervention.op}")


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _absolute_positions(kwargs: dict, seq: int, layer: int, device: torch.device) -> torch.Tensor:
    """Padded positions of the tokens a layer just processed.

    Decoder layers get no cache_position in transformers 5; with a KV cache, the layer's
    cache length after it ran ends at the last of these tokens (prefill: 0..S-1; decode: one).
    """
    if kwargs.get("cache_position") is not None:
        return kwargs["cache_position"]
    cache = kwargs.get("past_key_values")
    end = int(cache.get_seq_length(layer)) if cache is not None else seq
    return torch.arange(end - seq, end, device=device)


@contextlib.contextmanager
def steer(model: ModelLike, *interventions: Intervention, prompt_width: int | torch.Tensor | None = None
          ) -> Iterator[None]:
    """Apply interventions to every forward of `model.hf` inside the block (HF path).

    `prompt_width` is the (padded) prompt length, or a (batch,) tensor of per-row prompt ends;
    needed for `positions="prompt"/"generated"`.
    """
    for iv in interventions:
        iv.check(model)
        if iv.positions != "all" and prompt_width is None:
            raise BadInput(f"positions={iv.positions!r} needs prompt_width")
    layers = model.decoder_layers()
    handles = []

    def make_hook(layer: int, chosen: list[Intervention]):
        def hook(module, args, kwargs, output):
            x = _hidden(output)
            positions = (_absolute_positions(kwargs, x.shape[1], layer, x.device)
                         if any(iv.positions != "all" for iv in chosen) else None)
            for iv in chosen:
                x = iv.apply(x, layer, positions, prompt_width)
            return (x, *output[1:]) if isinstance(output, tuple) else x
        return hook

    try:
        for layer in sorted({L for iv in interventions for L in iv.layers}):
            chosen = [iv for iv in interventions if layer in iv.vectors]
            handles.append(layers[layer].register_forward_hook(make_hook(layer, chosen), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def tl_hooks(*interventions: Intervention, prompt_width: int | None = None) -> list[tuple[str, Any]]:
    """The same edits as TransformerLens `(hook_name, fn)` pairs on resid_post."""
    hooks = []
    for iv in interventions:
        for layer in iv.layers:
            def fn(resid, hook, iv=iv, layer=layer):
                return iv.apply(resid, layer, torch.arange(resid.shape[1], device=resid.device), prompt_width)
            hooks.append((f"blocks.{layer}.hook_resid_post", fn))
    return hooks
