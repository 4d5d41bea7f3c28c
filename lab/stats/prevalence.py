"""Calibrated EM rates: a judge's flag rate corrected for its measured errors (Rogan–Gladen).

A judge that flags answers as misaligned errs both ways, so the share it flags is biased:
    E[flagged] = sens * p + (1 - spec) * (1 - p)
for the true misaligned share p. Solving for p gives the Rogan–Gladen estimator (1978):
    p = (flagged + spec - 1) / (sens + spec - 1),       clipped to [0, 1].
It needs sensitivity and specificity measured on labelled answers the judge never trained
on (`lab.judge.validated`), and it is only defined when the judge beats chance
(Youden's J = sens + spec - 1 > 0); a weak judge (J near 0) makes it explode, which the
CI shows honestly.

The CI comes from a bootstrap that resamples *both* sources of error at once: the judged
answers (sampling noise of the flag rate) and the validation answers, positives and
negatives separately (noise in the measured sensitivity and specificity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float

from lab.core.errors import BadInput


@dataclass(frozen=True)
class Prevalence:
    """A raw flag rate and its Rogan–Gladen correction, each with a percentile bootstrap CI."""

    raw: float
    raw_lo: float
    raw_hi: float
    corrected: float
    lo: float
    hi: float
    n: int  # judged answers
    sensitivity: float
    specificity: float
    n_validation: tuple[int, int]  # (misaligned, aligned) validation answers

    def __str__(self) -> str:
        return (f"raw {self.raw:.3f} [{self.raw_lo:.3f}, {self.raw_hi:.3f}] -> corrected {self.corrected:.3f} "
                f"[{self.lo:.3f}, {self.hi:.3f}] (n={self.n}; sens {self.sensitivity:.2f}, spec {self.specificity:.2f})")


def rogan_gladen(flagged: Float[np.ndarray, "*b"] | float, sensitivity: Float[np.ndarray, "*b"] | float,
                 specificity: Float[np.ndarray, "*b"] | float) -> Float[np.ndarray, "*b"]:
    """Corrected prevalence, elementwise; nan where the judge does not beat chance (J <= 0)."""
    q, se, sp = (np.asarray(x, dtype=np.float64) for x in (flagged, sensitivity, specificity))
    j = se + sp - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(j > 0, (q + sp - 1.0) / j, np.nan)
    return np.clip(p, 0.0, 1.0)


def corrected_rate(flags: Bool[np.ndarray, " n"], flags_on_misaligned: Bool[np.ndarray, " m"],
                   flags_on_aligned: Bool[np.ndarray, " k"], n_boot: int = 2000, seed: int = 0,
                   alpha: float = 0.05) -> Prevalence:
    """Raw and Rogan–Gladen-corrected misaligned share of judged answers, with bootstrap CIs.

    `flags`: the judge's verdicts (True = flagged misaligned) on the answers being measured.
    `flags_on_misaligned` / `flags_on_aligned`: its verdicts on validation answers known to be
    misaligned / aligned (their means are the sensitivity and 1 - specificity).
    """
    flags, pos, neg = (np.asarray(x, dtype=bool) for x in (flags, flags_on_misaligned, flags_on_aligned))
    if flags.size == 0:
        raise BadInput("no judged answers to estimate a rate from")
    if pos.size == 0 or neg.size == 0:
        raise BadInput("validation needs both misaligned and aligned answers (one class given)")
    sens, spec = pos.mean(), 1.0 - neg.mean()
    if sens + spec - 1.0 <= 0:
        raise BadInput(f"judge is no better than chance on its validation set (sensitivity {sens:.2f}, "
                       f"specificity {spec:.2f}): a corrected rate is undefined")
    rng = np.random.default_rng(seed)
    q_b = flags[rng.integers(0, flags.size, (n_boot, flags.size))].mean(1)
    se_b = pos[rng.integers(0, pos.size, (n_boot, pos.size))].mean(1)
    sp_b = 1.0 - neg[rng.integers(0, neg.size, (n_boot, neg.size))].mean(1)
    p_b = rogan_gladen(q_b, se_b, sp_b)  # nan where a replicate's judge falls to chance
    if np.isnan(p_b).mean() > 0.5:
        raise BadInput("judge's validation is too weak: most bootstrap replicates are at chance")
    tails = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    raw_lo, raw_hi = np.percentile(q_b, tails)
    lo, hi = np.nanpercentile(p_b, tails)
    return Prevalence(float(flags.mean()), float(raw_lo), float(raw_hi), float(rogan_gladen(flags.mean(), sens, spec)),
                      float(lo), float(hi), int(flags.size), float(sens), float(spec), (int(pos.size), int(neg.size)))
