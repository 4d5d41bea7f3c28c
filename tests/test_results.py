"""Typed results without a model: the study's results round-trip through results.json exactly, the report
renders from them alone, and scripts/compare_results.py maps them back onto the old schema."""

import importlib.util
import json

import pytest

from tests.conftest import REPO


def _est(value, n=20, width=0.05):
    from lab.stats.estimate import Estimate

    return Estimate(value, value - width, value + width, n)


def _results():
    """A small but complete StudyResults, every field filled with made-up numbers (no model runs)."""
    from lab.causal.ablation import AblationConfig, AblationResult, AblationRow
    from lab.causal.steer import LayerSelection, SteerConfig, SteerResult, SteerRow
    from lab.diffing.checkpoints import CheckpointScore, TrajectoryConfig, TrajectoryResult
    from lab.directions.pooling import PoolingBest, PoolingConfig, PoolingResult
    from lab.directions.projection import ProjectionConfig, ProjectionResult, ProjectionRow
    from lab.directions.sweep import BestLayer, LayerScore, RandomBaseline, SweepConfig, SweepResult
    from lab.directions.transfer import TransferConfig, TransferPair, TransferResult
    from lab.em.answers import AnswerExample, EvalResult
    from lab.em.judge_free import ScoreDelta
    from lab.em.rates import CalibratedEm
    from lab.intervene.generate import GenerationConfig
    from lab.judge.validated import Validation
    from lab.study.config import Plan, StudyConfig, profile
    from lab.study.results import (JudgeSummary, ModelContrast, StageStats, StudyResults, TrainedOrganism,
                                   Visuals)

    cfg = StudyConfig(name="synthetic")
    scores = [LayerScore(m, L, "last", _est(a), _est(0.8), _est(1.5), 0.7, 60, 0.9 if m == "probe" else None)
              for m, a in (("mean_diff", 0.9), ("probe", 0.95), ("random", 0.51)) for L in (2, 3)]
    best = [BestLayer("mean_diff", 2, _est(0.9), 0.8, 1.5, 0.51, 60), BestLayer("probe", 3, _est(0.95), 0.8, 1.5, 0.51, 60)]
    random = RandomBaseline(0.51, 0.4, 0.62)
    sweep = SweepResult(SweepConfig(contrast="refusal", methods=["mean_diff", "probe", "random"]), "refusal", "last",
                        "smollm2-135m-instruct", scores, best, random, 0.002, "cache/abc.h5", "figures/x/layer_sweep")
    gen = GenerationConfig(max_new_tokens=8)
    calibrated = CalibratedEm("none", "general questions (4 refs)", "no saved judges in cache/judge-validation/judges")
    evals = {m: EvalResult(m, "fp" + m, gen, "none", 48, 0, _est(0.02, 48), _est(0.0, 48, 0.0),
                           examples=[AnswerExample("q/0", "Q?", "A.", False, False)], calibrated=calibrated)
             for m in ("base", "medical")}
    validation = Validation("general questions (4 refs)", 10, 10, (0.8, 0.7, 0.9), (0.7, 0.6, 0.8), (0.9, 0.8, 1.0))
    steer_rows = [SteerRow("ablate on harmful", "unsteered", None, 0.0, _est(0.0, 16, 0.0), _est(0.2), _est(0.0, 20, 0.0)),
                  SteerRow("ablate on harmful", "refusal dir", "all", 0.0, _est(-0.1), _est(0.05), _est(-0.4)),
                  SteerRow("ablate on harmful", "random 0", "all", 0.0, _est(-0.05), _est(0.2), _est(0.01)),
                  SteerRow("add on benign", "refusal dir", 3, 0.1, _est(-0.2), _est(0.3), _est(0.5))]
    em_rows = [SteerRow("add to base", "misalignment dir", 3, 0.25, _est(-0.3), em_shift=_est(0.3)),
               SteerRow("add to base", "random0:add", 3, 0.25, _est(-0.2), em_shift=_est(0.01))]
    ablation = [AblationRow("medical", c, "usual", _est(v), _est(v - 0.2), r)
                for c, v, r in (("unsteered", 0.2, 0.0), ("ablate own", 0.05, 0.75), ("ablate random 0", 0.19, None))]
    traj = TrajectoryResult(TrajectoryConfig(run="cache/organisms/medical", domain="medical", eval_limit=10),
                            "medical", [CheckpointScore(s, "in-domain", _est(0.1 * s, 10)) for s in (0, 11, 20)],
                            "figures/x/em_trajectory/medical")
    return StudyResults(
        cfg, profile(cfg), Plan(["medical"], 20, 1000, 30, 12.2), {"medical": 70.1},
        {"medical": TrainedOrganism("medical", "cache/organisms/medical", "cache/organisms/medical/adapter", [2.0, 1.5])},
        {"eval-base": 0}, {"eval-base": {}}, [ScoreDelta("medical", "in-domain (medical held-out questions)", _est(0.3))],
        {"medical": traj}, JudgeSummary("none", "general questions (4 refs)", calibrated.note, validation), evals,
        {"refusal": sweep}, {"medical": ModelContrast(["mean_diff", "probe", "random"], scores, best, random)},
        PoolingResult(PoolingConfig(), "medical_answers", ("last", "mean_response"), scores,
                      [PoolingBest("last", "probe", None, None), PoolingBest("mean_response", "probe", best[1], 0.9)],
                      {"last": "identical features"}, "figures/x/pooling"),
        {"refusal": TransferResult(TransferConfig(organisms=["medical=a"]), "refusal", [2, 3],
                                   [TransferPair("base", "medical", BestLayer("transferred", 2, _est(0.9), 0.8, 1.5, 0.5, 60),
                                                 0.98)], {"base vs medical": [0.97, 0.99]}, "figures/x/transfer")},
        {"medical": ProjectionResult(ProjectionConfig(organism="a"), "refusal", "mean_diff", 3,
                                     [ProjectionRow("harmful", "base", _est(1.5), 3)], "figures/x/projection")},
        SteerResult(SteerConfig(), "refusal", 3, steer_rows, steer_rows[3], {"harmful": 20, "benign": 20}, "fp", "o/steer",
                    [LayerSelection(3, -0.4, -0.1)]),
        SteerResult(SteerConfig(target="em", organism="a"), "em", 3, em_rows, em_rows[0], {"questions": 10}, "fp",
                    "o/steer-em"),
        AblationResult(AblationConfig(organisms=["medical=a"]), ablation, "figures/x/ablation"),
        Visuals(3, {"attention_base": "figures/x/visuals/attention-base.html"}),
        StageStats(["eval-base"], [], {"eval-base": 1.5}), 1, ["a finding"], "figures/x/index.html")


def test_study_results_round_trip_exactly(tmp_path):
    from lab.core.errors import BadInput
    from lab.study.results import StudyResults

    results = _results()
    assert StudyResults.from_json(json.loads(json.dumps(results.to_json()))) == results
    path = results.write(tmp_path / "results.json")
    assert json.loads(path.read_text())["schema"] == 2 and StudyResults.read(path) == results
    path.write_text(json.dumps({"config": {}, "findings": []}))  # schema 1 (emlab <= 0.2)
    with pytest.raises(BadInput, match="schema 1"):
        StudyResults.read(path)


def test_report_renders_from_typed_results_without_a_model(tmp_path, monkeypatch):
    import lab.models
    from lab.reports.study import build_study_report, findings

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded to render a report")

    monkeypatch.setattr(lab.models, "load_model", refuse)
    monkeypatch.setattr(lab.models.LabModel, "hf", property(refuse))
    results = _results()
    lines = findings(results)
    assert "refusal direction: probe best layer 3, held-out AUROC 0.950 [0.900, 1.000] (random @ layer 0.510)" in lines
    assert "medical: in-domain (medical held-out questions): Δbase 0.300 [0.250, 0.350] -> found (CI above 0)" in lines
    assert any(f.startswith("no calibrated EM rate: no saved judges") for f in lines)
    report = build_study_report(results)
    measurements = [h.measurement for h in report.headline]
    assert "refusal direction ablated (every layer): refusal log-odds Δ" in measurements
    assert "own direction ablated from medical (usual): EM score change" in measurements
    index = report.write(tmp_path / "report")
    page = index.read_text()
    assert "Headline results" in page and "random @ layer 0.510" in page and "random: +0.010" in page
    assert (tmp_path / "report" / "steering.html").exists()


def _compare_script():
    spec = importlib.util.spec_from_file_location("compare_results", REPO / "scripts" / "compare_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_results_maps_schema_2_onto_the_old_keys(tmp_path, capsys):
    from lab.reports.tables import best_layer_rows, cells

    compare = _compare_script()
    results = _results()
    new = results.to_json()
    v1 = compare.to_v1(new)
    sweep = results.sweeps["refusal"]
    assert v1["sweeps"]["refusal"]["best"] == best_layer_rows(sweep.config.methods, sweep.best, sweep.random)
    assert v1["pooling"]["rows"] == [cells(p) for p in results.pooling.best]
    assert v1["steer_refusal"]["rows"] == [r.to_row() for r in results.steer_refusal.rows]
    assert v1["ablation"]["rows"] == [r.to_row() for r in results.ablation.rows]
    assert v1["trajectories"]["medical"]["rows"] == [r.to_row() for r in results.trajectories["medical"].rows]
    assert v1["judge"]["AUROC"] == "0.800 [0.700, 0.900]" and v1["judge"]["usable"] == "yes"
    old, changed = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(v1))
    new["ablation"]["rows"][1]["change"]["value"] += 1e-12
    new["stages"]["seconds"]["eval-base"] = 99.0  # volatile: ignored
    changed.write_text(json.dumps({"schema": 2, **new}))
    assert compare.main([str(old), str(old)]) == 0 and "identical" in capsys.readouterr().out
    assert compare.main([str(old), str(changed)]) == 1
    assert capsys.readouterr().out.splitlines()[1].startswith("ablation.rows[1].change:")
