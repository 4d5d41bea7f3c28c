"""A wall-clock budget: past it, no new piece of work starts, and what was skipped is recorded.

    budget = WallBudget(600)            # seconds; 0: no budget
    if budget.allows("train medical", need_s=120):
        ...
    budget.skipped                      # ["train financial", ...]
"""

from __future__ import annotations

import time
from typing import Callable


class WallBudget:
    """`allows(stage, need_s)` is False once the budget is spent (or would be by a stage expected to
    take `need_s`); every refusal is recorded in `skipped` and reported through `on_skip`."""

    def __init__(self, seconds: float, on_skip: Callable[[str], None] | None = None):
        self.start, self.seconds, self.skipped = time.perf_counter(), float(seconds), []
        self.on_skip = on_skip

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        """Whether the budget is used up (never, with no budget)."""
        return bool(self.seconds) and self.elapsed() > self.seconds

    def allows(self, stage: str, need_s: float = 0.0) -> bool:
        """Whether `stage`, expected to take `need_s`, may start (it must finish within the budget)."""
        if self.seconds and self.elapsed() + need_s > self.seconds:
            self.skipped.append(stage)
            if self.on_skip is not None:
                self.on_skip(f"wall budget {self.seconds:.0f}s: not starting {stage} at {self.elapsed():.0f}s "
                             f"(expected to need {need_s:.0f}s)")
            return False
        return True
