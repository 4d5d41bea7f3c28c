"""Where a training step first became non-finite: the module, the pass and the batch rows.

A nan loss says nothing about its cause. When a step's loss or gradient norm is not finite,
`locate_nonfinite` replays that micro-batch with a forward hook on every module and a
gradient hook on every module output, and reports the first module (in execution order)
whose output holds a nan or inf, in the forward pass or else in the backward pass, and which
batch rows carry it. `lab.training.lora.train_lora` writes the result to `<out>/divergence.json` and
names it in its `TrainingDiverged` line, so a diverged run says where it diverged.

The replay runs on the same weights and optimizer state as the failed step (nothing was
applied), so on a deterministic device it reproduces the failure; where it does not, the
report says so (`found=False`): that itself points at a nondeterministic kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


@dataclass
class NonFinite:
    """The first non-finite value of one replayed micro-batch."""

    found: bool
    phase: str = ""  # "forward" (a module's output) or "backward" (the gradient of a module's output)
    module: str = ""  # dotted module name, as in `named_modules()`
    rows: list[int] = field(default_factory=list)  # batch rows holding non-finite values there
    lengths: list[int] = field(default_factory=list)  # real (unpadded) tokens of every batch row
    max_abs: float = 0.0  # largest finite magnitude in that tensor (an overflow shows as ~3e38)

    def line(self) -> str:
        if not self.found:
            return "the replayed step was finite (a nondeterministic kernel?)"
        rows = ", ".join(f"{r} ({self.lengths[r]} tokens)" if self.lengths else str(r) for r in self.rows[:6])
        return (f"first non-finite value in the {self.phase} pass at {self.module or 'the loss'}"
                + (f", batch rows {rows}" if rows else ""))

    def to_json(self) -> dict:
        return asdict(self)


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return getattr(value, "last_hidden_state", None) if not isinstance(value, (tuple, list)) else None


def _bad_rows(t: torch.Tensor) -> list[int]:
    if t.dim() == 0:
        return [0] if not bool(torch.isfinite(t)) else []
    bad = ~torch.isfinite(t.detach())
    return bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist()


def locate_nonfinite(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor],
                     attention_mask: torch.Tensor | None = None) -> NonFinite:
    """Replay `loss_of()` (a forward returning a scalar loss) and its backward with hooks on every
    module of `model`; the first non-finite module output, forward first, then backward.

    Gradients are accumulated into the parameters' `.grad` as in a normal backward: the caller
    zeroes them afterwards. Hooks are always removed."""
    lengths = attention_mask.sum(-1).tolist() if attention_mask is not None else []
    first: dict[str, NonFinite] = {}
    handles = []

    def record(phase: str, name: str, t: torch.Tensor) -> None:
        if phase in first or not t.is_floating_point():
            return
        rows = _bad_rows(t)
        if rows:
            finite = t.detach()[torch.isfinite(t.detach())]
            first[phase] = NonFinite(True, phase, name, rows if t.dim() > 1 else [], lengths,
                                     float(finite.abs().max()) if finite.numel() else 0.0)

    def forward_hook(name):
        def hook(module, args, output):
            t = _first_tensor(output)
            if isinstance(t, torch.Tensor):
                record("forward", name, t)
                if t.requires_grad:
                    t.register_hook(lambda g: record("backward", name, g))
        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(forward_hook(name)))
    try:
        loss = loss_of()
        if not bool(torch.isfinite(loss.detach())) and "forward" not in first:
            first["forward"] = NonFinite(True, "forward", "", [], lengths, 0.0)
        if loss.requires_grad:
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    return first.get("forward") or first.get("backward") or NonFinite(False, lengths=lengths)


def grad_norm(params: list[torch.Tensor], max_norm: float | None) -> float:
    """The total gradient norm (before clipping), clipping to `max_norm` when given.

    Without `max_norm` nothing is rescaled, so the step is exactly the unclipped one."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
