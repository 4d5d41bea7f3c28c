"""TransformerLens hook names on the fast Hugging Face path.

emlab names activations as TransformerLens does (`blocks.{L}.hook_resid_post`, layers
0-based) but captures the residual stream with plain torch hooks on the HF decoder layers,
which keeps HF's sdpa attention (the bridge forces eager: 0.57x on an H100). With
`attention("eager")` and one prompt per forward the captured values equal the bridge's
`run_with_cache` bit for bit (the same modules on the same shapes); batched and padded, or with
sdpa, other kernels run and they agree to fp32 rounding (at most 1.1e-5 of a token's norm, tested).

Supported fast names: `hook_embed`, `blocks.{L}.hook_resid_pre`, `blocks.{L}.hook_resid_post`.
Any other hook name is served through the TransformerLens bridge (slower).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from lab.core.errors import BadInput
from lab.models import ModelLike

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass(frozen=True)
class HookPoint:
    """Where a TransformerLens hook name lives on the HF model."""

    name: str
    layer: int  # decoder layer index; -1 for the embedding
    kind: str  # "embed" | "pre" | "post"

    @property
    def depth(self) -> int:
        """Index of the last decoder layer that must run to produce this activation."""
        return self.layer if self.kind == "post" else self.layer - 1


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def parse_hook(name: str, n_layers: int) -> HookPoint | None:
    """Map a hook name to a fast hook point; None if only the bridge has it."""
    if name in ("hook_embed", "blocks.0.hook_resid_pre"):
        return HookPoint(name, -1 if name == "hook_embed" else 0, "embed" if name == "hook_embed" else "pre")
    match = _RESID.match(name)
    if match is None:
        return None
    layer = int(match.group(1))
    if not 0 <= layer < n_layers:
        raise BadInput(f"hook {name!r}: layer {layer} out of range (0..{n_layers - 1})")
    return HookPoint(name, layer, match.group(2))


def validate_hooks(names: list[str], model: ModelLike) -> list[str]:
    """Check hook names against the model; unknown names are an error listing the options."""
    if not names:
        raise BadInput("no hook names given")
    for name in names:
        if parse_hook(name, model.n_layers) is None and name not in model.bridge.hook_dict:
            raise BadInput(
                f"unknown hook name {name!r} (e.g. blocks.0.hook_resid_post .. "
                f"blocks.{model.n_layers - 1}.hook_resid_post, hook_embed)"
            )
    return list(dict.fromkeys(names))


class StopForward(Exception):
    """Raised inside a hook to skip the layers after the last one we need."""


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def capture(model: ModelLike, points: list[HookPoint], sink: Callable[[str, torch.Tensor], None],
            stop_early: bool = True) -> Iterator[None]:
    """Call `sink(name, activation)` for each hook point during forwards of `model.hf`.

    With `stop_early`, the forward is aborted (StopForward) right after the deepest
    needed layer; callers wrap the forward in `run_until_stop`.
    """
    layers = model.decoder_layers()
    deepest = max(p.depth for p in points)
    handles = []

    def post(point: HookPoint):
        def hook(module, args, output):
            sink(point.name, _hidden(output))
            if stop_early and point.layer == deepest:
                raise StopForward
        return hook

    def pre(point: HookPoint):
        def hook(module, args, kwargs):
            sink(point.name, args[0] if args else kwargs["hidden_states"])
        return hook

    try:
        for point in points:
            if point.kind == "post":
                handles.append(layers[point.layer].register_forward_hook(post(point)))
            elif point.kind == "pre":
                handles.append(layers[point.layer].register_forward_pre_hook(pre(point), with_kwargs=True))
            else:
                handles.append(model.embed_module().register_forward_hook(
                    lambda m, a, o, name=point.name: sink(name, o)))
        if stop_early and deepest < 0:  # only the embedding is needed
            handles.append(layers[0].register_forward_pre_hook(_raise_stop))
        yield
    finally:
        for h in handles:
            h.remove()


def _raise_stop(*_: Any) -> None:
    raise StopForward


def run_until_stop(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except StopForward:
        return None


@contextlib.contextmanager
def attention(model: ModelLike, implementation: str) -> Iterator[None]:
    """Temporarily switch the HF model's attention kernel ("sdpa" or "eager")."""
    if implementation not in ("sdpa", "eager"):
        raise BadInput(f"attention implementation must be sdpa or eager, not {implementation!r}")
    before = model.hf.config._attn_implementation
    model.hf.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.hf.set_attn_implementation(before)


def left_pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token sequences; return input_ids, attention_mask and position_ids.

    Position ids count real tokens only, so a padded row computes what it would alone.
    """
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, length - len(seq):] = seq
        mask[row, length - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
