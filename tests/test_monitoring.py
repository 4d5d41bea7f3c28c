"""Monitoring (lab.diffing.monitoring): shifts along a direction on planted activations, correlations with
group bootstrap CIs, and the CLI on the real SmolLM2 (a rerun loads no model)."""

import json

import numpy as np
import pytest

from lab.core.errors import BadInput
from lab.stats.estimate import Estimate
from lab.diffing.monitoring import Monitor, ModelPoint, correlation_ci, correlations, per_question, shift
from tests.no_weights import run_without_weights


class FakeCache:
    """The part of ActivationCache that `shift` reads: ids and per-example features at one layer."""

    def __init__(self, X, ids):
        self.X, self.ids = X, ids

    def features(self, layer, pooling, rows):
        return self.X[rows]


def planted(strengths, d=256, n=60, along=True, seed=0):
    """Base features, and per strength k a model whose held-out rows move k units along v (or not)."""
    rng = np.random.default_rng(seed)
    v = np.zeros(d, np.float32)
    v[0] = 1
    r = np.zeros(d, np.float32)
    r[1] = 1  # the control: a direction orthogonal to the planted one
    X = rng.standard_normal((n, d)).astype(np.float32)
    ids = [f"e{i}" for i in range(n)]
    m = Monitor("EM", "general_answers", "mean_response", 3, v, r, np.arange(0, n, 2), 0.9)
    models = [FakeCache(X + (k * v if along else 0) + 0.3 * rng.standard_normal((n, d)).astype(np.float32), ids)
              for k in strengths]
    return m, FakeCache(X, ids), models


def points_for(strengths, along, seed=0):
    m, base, models = planted(strengths, along=along, seed=seed)
    rng = np.random.default_rng(seed + 1)
    pts = []
    for k, c in zip(strengths, models):
        em = Estimate(0.05 * k + 0.01 * rng.standard_normal(), 0, 0, 48)  # EM rises with the planted strength
        pts.append(ModelPoint("run", int(10 * k), {"EM": shift(base, c, m, 200)}, em, em))
    return m, pts


def test_shift_recovers_the_planted_strength_and_random_control_stays_flat():
    m, base, (model,) = planted([2.0])
    s = shift(base, model, m, 200)
    # noise of SD 0.3 over 30 held-out rows: the control is within ~3 standard errors (0.05) of 0
    assert s.shift.lo < 2.0 < s.shift.hi and abs(s.random.value) < 0.2 and s.random.hi < 0.1 * s.shift.lo
    with pytest.raises(BadInput, match="different examples"):
        shift(base, FakeCache(model.X, model.ids[::-1]), m)


def test_correlation_across_models_on_a_planted_shift():
    strengths = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0]
    m, pts = points_for(strengths, along=True)
    rows = {(c["x"], c["y"]): c for c in correlations(pts, {"EM": m}, 500)}
    planted_r = rows[("shift along EM", "EM usual Δbase")]
    assert planted_r["r"] > 0.95 and planted_r["lo"] > 0.8 and planted_r["n models"] == len(strengths)
    # no planted shift: the models move only by noise, and the shift does not track EM
    m0, flat = points_for(strengths, along=False)
    flat_r = {(c["x"], c["y"]): c for c in correlations(flat, {"EM": m0}, 500)}[("shift along EM", "EM usual Δbase")]
    assert flat_r["lo"] < 0.8 < planted_r["lo"] and flat_r["r"] < planted_r["r"]


def test_correlation_ci_resamples_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(12)
    y = x + rng.standard_normal(12)
    xs, ys, gs = np.repeat(x, 10), np.repeat(y, 10), np.repeat([f"q{i}" for i in range(12)], 10)
    clustered, naive = correlation_ci(xs, ys, gs, 500), correlation_ci(xs, ys, None, 500)
    assert clustered.value == pytest.approx(naive.value) and clustered.n == 12 and naive.n == 120
    # 12 questions seen 10 times each are 12 units: the naive CI is far too narrow
    assert (clustered.hi - clustered.lo) > 2 * (naive.hi - naive.lo)
    with pytest.raises(BadInput):
        correlation_ci([1, 2, 3], [1, 2])


def test_per_question_projection_tracks_scores_on_held_out_questions():
    rng = np.random.default_rng(0)
    qs = [f"gen-{i:03d}" for i in range(40)]
    pts = []
    for step in range(4):
        scores = {q: float(rng.standard_normal()) for q in qs}
        proj = {q: 3 * s + 0.5 * float(rng.standard_normal()) if i % 2 else float(rng.standard_normal())
                for i, (q, s) in enumerate(scores.items())}  # only odd questions' projection knows the score
        pts.append(ModelPoint("run", step, {}, Estimate(0, 0, 0, 1), Estimate(0, 0, 0, 1), proj, scores))
    odd = {q for i, q in enumerate(qs) if i % 2}
    known = per_question(pts, odd, 300)
    unknown = per_question(pts, set(qs) - odd, 300)
    assert known["pooled"].lo > 0.9 and known["n_pairs"] == 80 and known["pooled"].n == 20
    assert unknown["pooled"].lo < 0 < unknown["pooled"].hi


def test_monitor_cli_rerun_loads_no_model(trained_adapter, tmp_path):
    from experiments import checkpoints as monitor
    from lab.core.config import parse_config
    from lab.diffing.monitoring import parse_runs

    run_dir = trained_adapter.adapter_dir.parent
    args = ["--runs", f"medical={run_dir}", "--limit", "12", "--eval-limit", "4", "--n-boot", "50",
            "--max-checkpoints", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    first = monitor.run_shifts(parse_config(monitor.MonitorConfig, args))
    assert [r["run"] for r in first["rows"]] == ["base", "medical"] and first["rows"][0]["shift EM"] == 0
    assert all(m["layer"] >= 15 for m in first["monitors"].values())  # at or past half depth (30 layers)
    assert first["rows"][1]["shift EM"] != 0  # a trained adapter (all layers) moves the residuals
    _, rows = run_without_weights(f"""
from experiments import checkpoints as monitor
from lab.core.config import parse_config
s = monitor.run_shifts(parse_config(monitor.MonitorConfig, {args!r}))
print(json.dumps(s["rows"]))
""")
    assert rows == json.loads(json.dumps(first["rows"]))
    with pytest.raises(BadInput, match="NAME=FOLDER"):
        parse_runs(["nofolder"])
