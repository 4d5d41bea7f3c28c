"""`Estimate`: a number with its 95% CI and sample size, printed one way everywhere.

Every headline number in emlab (a rate, a Δbase score, an AUROC) travels as an `Estimate`
rather than as loose `value`/`lo`/`hi` keys, and prints as `0.410 [0.331, 0.491]`:

    est = mean_ci(organism - base)            # bootstrap CI of a mean, paired rows
    f"Δbase {est}"                           # 'Δbase 0.410 [0.331, 0.491]'
    est.format(2), est.excludes_zero, est.to_json()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from beartype import beartype
from jaxtyping import Num, jaxtyped


def format_ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """The one rendering of a number with its CI (`n/a` where it is undefined)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its (percentile bootstrap) 95% CI over `n` rows."""

    value: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3) -> str:
        return format_ci(self.value, self.lo, self.hi, digits)

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def verdict(self) -> str:
        """Found / reversed / not found, by whether the CI excludes 0."""
        if self.lo > 0:
            return "found (CI above 0)"
        if self.hi < 0:
            return "reversed (CI below 0)"
        return "not found (CI includes 0)"

    def to_json(self) -> dict[str, float | int]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Estimate":
        """Read back `to_json` (and the `rate` key stage results of emlab <= 0.2 used)."""
        value = d["value"] if "value" in d else d["rate"]
        return cls(float(value), float(d["lo"]), float(d["hi"]), int(d["n"]))


@jaxtyped(typechecker=beartype)  # a (layer, n) array here is a caller's bug: refuse it, do not average it
def mean_ci(values: Num[np.ndarray, " n"] | list, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of `values` with a percentile bootstrap CI (rows resampled); nan with no rows."""
    from lab.stats.metrics import bootstrap_ci

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    v, lo, hi = bootstrap_ci(_mean, values, n_boot=n_boot, seed=seed)
    return Estimate(float(v), float(lo), float(hi), int(len(values)))


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(-1)
