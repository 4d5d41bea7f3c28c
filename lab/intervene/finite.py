"""No token is ever sampled from non-finite logits.

Diverged weights once reached sampling on a GPU, where `torch.multinomial` on nan probabilities is
a device-side assert that also poisons the process's CUDA context, and where Gumbel-max (argmax of
scores plus noise) would silently pick a nan token. Every decode path passes its processed scores
through a `FiniteGuard`: a row holding nan or +inf, or only -inf (every token filtered), is
flagged on the device and made uniform so the step can finish; the path then raises
`NonFiniteLogits` before any answer is returned. -inf alone is legitimate (top-k / top-p filtered
tokens). The flag is a device tensor updated in place (no host sync per step, safe inside a
captured CUDA graph); `check` reads it.
"""

from __future__ import annotations

import torch

from lab.core.errors import NonFiniteLogits


def nonfinite_rows(scores: torch.Tensor) -> torch.Tensor:
    """(rows,) bool: rows holding nan or +inf, or only -inf."""
    return torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)


class FiniteGuard:
    """Flags non-finite score rows (a logits processor: `guard(input_ids, scores)`); `check` raises.

    `rows` counts flagged row-steps; `first_row` / `first_step` keep the first one (for the message)."""

    def __init__(self, device: torch.device | str | None = None):
        self.rows = self.first_row = self.first_step = None
        self.step = 0
        if device is not None:  # allocated before any graph capture, updated in place afterwards
            self._allocate(torch.device(device))

    def _allocate(self, device: torch.device) -> None:
        self.rows = torch.zeros((), dtype=torch.long, device=device)
        self.first_row = torch.full((), -1, dtype=torch.long, device=device)
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        """HF's logits-processor call (the step is counted here)."""
        return self.apply(scores)

    def apply(self, scores: torch.Tensor, step: int | torch.Tensor | None = None) -> torch.Tensor:
        """Flag and neutralise non-finite rows of `scores`; `step`: the rows' decode step(s), if known."""
        if self.rows is None:
            self._allocate(scores.device)
        bad = nonfinite_rows(scores)
        first_bad = torch.where(bad.any(), bad.float().argmax(), -1)
        new = (self.first_row < 0) & (first_bad >= 0)
        self.first_row.copy_(torch.where(new, first_bad, self.first_row))
        here = self.step if step is None else step
        self.first_step.copy_(torch.where(new, torch.as_tensor(here, device=scores.device).max(), self.first_step))
        self.rows.add_(bad.sum())
        self.step += 1
        return torch.where(bad[:, None], torch.zeros_like(scores), scores)

    def check(self, model, rows: int | None = None) -> None:
        """Raise `NonFiniteLogits` (one line: model, dtype, adapters, where) if any row was flagged."""
        if self.rows is None or not int(self.rows):
            return
        adapters = list(getattr(model, "adapters", ()) or ()) or "none"
        of = f" of {rows} rows" if rows else ""
        raise NonFiniteLogits(
            f"{model.name} ({model.dtype}, adapters {adapters}) produced nan/inf logits in {int(self.rows)} row-steps"
            f"{of} (first at row {int(self.first_row)}, step {int(self.first_step)}): its weights or an attention "
            f"kernel diverged; nothing was sampled from them")
