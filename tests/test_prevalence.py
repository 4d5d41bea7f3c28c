"""Rogan–Gladen correction of a judge's flag rate, on simulated judges of known accuracy."""

import numpy as np
import pytest

from lab.core.errors import BadInput
from lab.stats.prevalence import corrected_rate, rogan_gladen


def simulate(rng, prevalence, sens, spec, n=600, n_val=250):
    truth = rng.random(n) < prevalence
    flags = np.where(truth, rng.random(n) < sens, rng.random(n) > spec)
    on_mis = rng.random(n_val) < sens
    on_ali = rng.random(n_val) > spec
    return flags, on_mis, on_ali


def test_rogan_gladen_inverts_the_bias_exactly():
    p, se, sp = 0.15, 0.8, 0.9
    flagged = se * p + (1 - sp) * (1 - p)
    assert rogan_gladen(flagged, se, sp) == pytest.approx(p)
    assert np.isnan(rogan_gladen(0.3, 0.5, 0.5))  # a coin-flip judge says nothing
    assert rogan_gladen(0.0, 0.8, 0.9) == 0.0  # clipped, never negative


def test_recovers_known_prevalence_and_ci_covers_it():
    true_p, sens, spec = 0.2, 0.85, 0.9
    covered, corrected, raw = 0, [], []
    seeds = range(100)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        est = corrected_rate(*simulate(rng, true_p, sens, spec), n_boot=1000, seed=seed)
        covered += est.lo <= true_p <= est.hi
        corrected.append(est.corrected)
        raw.append(est.raw)
    assert covered / len(seeds) >= 0.90
    assert abs(np.mean(corrected) - true_p) < 0.01  # unbiased
    assert np.mean(raw) == pytest.approx(sens * true_p + (1 - spec) * (1 - true_p), abs=0.01)  # raw is biased
    assert np.mean(raw) - true_p > 0.04  # +0.05 expected: the uncorrected rate overstates


def test_bad_inputs():
    ok = np.array([True, False, True])
    with pytest.raises(BadInput, match="one class"):
        corrected_rate(ok, np.array([], dtype=bool), ok)
    with pytest.raises(BadInput, match="no better than chance"):
        corrected_rate(ok, np.array([True, False]), np.array([True, False]))
    with pytest.raises(BadInput, match="no judged answers"):
        corrected_rate(np.array([], dtype=bool), ok, ~ok)
