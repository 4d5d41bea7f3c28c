"""Experiments end to end on the real SmolLM2 (small limits), and probing without the model."""

import json
import subprocess
import sys

import pytest

from experiments import compare_poolings as pooling
from experiments import project_traits as trait_projection
from experiments import sweep_layers as layer_sweep
from experiments import transfer_directions as transfer
from lab.directions.pooling import PoolingConfig
from lab.directions.projection import ProjectionConfig
from lab.directions.sweep import SweepConfig
from lab.directions.transfer import TransferConfig
from tests.conftest import REPO
from tests.no_weights import PRINT_MODELING, run_without_weights


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    return {"cache_dir": str(root / "cache"), "out": str(root / "figures")}


@pytest.mark.parametrize("contrast", ["refusal", "code_mode"])
def test_trait_vectors_separate_held_out_prompts(contrast, dirs):
    """Trait vectors: AUROC >= 0.9 at the best layer on held-out prompts, with sklearn agreement."""
    result = layer_sweep.run(SweepConfig(contrast=contrast, n_boot=200, **dirs))
    rows = json.loads((REPO / result.out / "rows.json").read_text()) if not result.out.startswith("/") else \
        json.loads(open(result.out + "/rows.json").read())
    best_probe = max(r["auroc"] for r in rows if r["method"] == "probe")
    best_diff = max(r["auroc"] for r in rows if r["method"] == "mean_diff")
    assert best_probe >= 0.9 and best_diff >= 0.85
    random_mean = sum(r["auroc"] for r in rows if r["method"] == "random") / sum(r["method"] == "random" for r in rows)
    assert random_mean < best_probe - 0.15
    assert result.sklearn_max_diff <= 0.01


def test_new_probe_on_existing_cache_never_loads_the_model(dirs):
    # the cache exists from the test above (same model, prompts, hooks): only files are read
    _, last = run_without_weights(f"""
from experiments import sweep_layers as layer_sweep
from lab.directions.sweep import SweepConfig
s = layer_sweep.run(SweepConfig(contrast="refusal", methods=["mean_diff", "random"], n_boot=50,
                    sklearn_check=False, cache_dir={dirs['cache_dir']!r}, out={dirs['out']!r}))
{PRINT_MODELING}
""")
    assert last["modeling"] == []


def test_pooling_on_answer_contrast(dirs):
    from lab.reports.tables import cells

    result = pooling.run(PoolingConfig(contrast="medical_answers", limit=40, n_boot=100, **dirs))
    by = {(p.pooling, p.method): p for p in result.best}
    assert set(p for p, _ in by) == {"last", "mean_prompt", "mean_response", "first_k"}
    # the last prompt token precedes paired answers: identical features, reported as such
    assert "last" in result.degenerate and cells(by[("last", "probe")])["AUROC [95% CI]"].startswith("n/a")
    response = by[("mean_response", "probe")].mean_auroc
    assert response > 0.75


def test_transfer_and_trait_projection(dirs, trained_adapter):
    adapter = str(trained_adapter.adapter_dir)
    result = transfer.run(TransferConfig(contrast="refusal", organisms=[f"med={adapter}"], limit=40, n_boot=100,
                                         **dirs))
    assert {(p.source, p.target) for p in result.pairs} == {
        ("base", "base"), ("base", "med"), ("med", "base"), ("med", "med")}
    own = next(p for p in result.pairs if p.source == "med" and p.target == "med")
    assert own.median_cosine == pytest.approx(1.0)
    proj = trait_projection.run(ProjectionConfig(organism=adapter, limit=40, n_boot=100, **dirs))
    assert {r.model for r in proj.rows} == {"base", "organism", "organism - base"}
    base_harm = next(r for r in proj.rows if r.prompts == "harmful" and r.model == "base")
    base_benign = next(r for r in proj.rows if r.prompts == "benign" and r.model == "base")
    assert base_harm.mean.value > base_benign.mean.value


def test_experiment_cli_help_and_bad_input():
    out = subprocess.run([sys.executable, "-m", "experiments.sweep_layers", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--contrast" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.sweep_layers", "--contrast", "nonsense"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown contrast" in bad.stdout and "Traceback" not in bad.stderr


def test_steering_and_ablation_options_fail_clearly(trained_adapter):
    from experiments import ablate_em as ablation
    from experiments import steer_refusal as steer
    from lab.core.errors import BadInput

    with pytest.raises(BadInput, match="--select"):
        steer.run(steer.RefusalSteerConfig(select="best"))
    adapter = str(trained_adapter.adapter_dir)
    with pytest.raises(BadInput, match="--contrast"):
        ablation.run(ablation.AblationConfig(organisms=[f"medical={adapter}"], contrast="refusal"))
    with pytest.raises(BadInput, match="shipped domain"):
        ablation.run(ablation.AblationConfig(organisms=[f"mine={adapter}"], contrast="own_domain"))


def test_study_shares_base_scores_only_when_they_cover_the_trajectory():
    import numpy as np

    from lab.study.config import Profile
    from lab.study.stages import shared_base_scores

    base = {"usual": list(range(48)), "terse": list(range(48)), "in_domain_medical": list(range(24))}
    prof = lambda eval_limit, repeat_limit: Profile(1, 0, eval_limit, repeat_limit, 10, 8, 2, (0.1,), 1, 1)  # noqa: E731
    cut = shared_base_scores(base, "medical", prof(0, 10))
    assert [len(cut[k]) for k in ("in-domain", "usual", "terse")] == [10, 10, 10]
    assert np.array_equal(cut["usual"], np.arange(10))
    assert len(shared_base_scores(base, "medical", prof(0, 0))["usual"]) == 48
    assert shared_base_scores({**base, "usual": base["usual"][:6]}, "medical", prof(6, 10)) is None
    assert shared_base_scores(base, "medical", prof(6, 0)) is None


def test_mean_ablation_restores_the_aligned_level_per_layer():
    """--ablation mean: at each layer the projection is set to the aligned answers' mean projection."""
    import numpy as np
    import torch

    from lab.causal.ablation import AblationConfig, removal

    rng = np.random.default_rng(0)
    feats = {L: rng.normal(size=(6, 8)).astype(np.float32) for L in (2, 5)}

    class Cache:
        def label_array(self, positive):
            return np.array([1, 1, 1, 0, 0, 0]) if positive == "aligned" else np.array([0, 0, 0, 1, 1, 1])

        def features(self, layer, pooling):
            assert pooling == "mean_response"
            return feats[layer]

    vectors = {2: torch.randn(8), 5: torch.randn(8)}
    edits = removal(vectors, AblationConfig(ablation="mean"), Cache(), "own")
    assert [e.op for e in edits] == ["ablate_add", "ablate_add"] and [e.layers for e in edits] == [[2], [5]]
    for edit, (layer, v) in zip(edits, vectors.items()):
        unit = (v / v.norm()).numpy()
        assert abs(edit.alpha - (feats[layer][:3] @ unit).mean()) < 1e-5
        x = torch.randn(1, 3, 8)
        assert torch.allclose(edit.apply(x, layer, None) @ torch.from_numpy(unit), torch.full((1, 3), edit.alpha),
                              atol=1e-5)
    (zero,) = removal(vectors, AblationConfig(), Cache(), "own")
    assert zero.op == "ablate" and zero.layers == [2, 5]


def test_verbs_whose_models_come_from_their_own_flags_refuse_adapters(trained_adapter, dirs):
    """Ablate, transfer and trajectory take their models from --organisms / --run;
    a given --adapters is refused in one line instead of silently ignored."""
    from experiments import ablate_em as ablation
    from experiments import checkpoints as em_trajectory
    from lab.core.errors import BadInput

    adapter = str(trained_adapter.adapter_dir)
    for run, cfg in [(ablation.run, ablation.AblationConfig(adapters=[adapter], organisms=[f"medical={adapter}"])),
                     (transfer.run, TransferConfig(adapters=[adapter], organisms=[f"medical={adapter}"])),
                     (em_trajectory.run_em, em_trajectory.TrajectoryConfig(adapters=[adapter],
                                                                        run=str(trained_adapter.adapter_dir.parent)))]:
        with pytest.raises(BadInput, match="--adapters is not used"):
            run(cfg)
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "ablate-em", "--adapters", adapter, "--organisms",
                          f"medical={adapter}", "--cache-dir", dirs["cache_dir"], "--out", dirs["out"]],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert [line for line in out.stdout.splitlines() if "error" in line] == [
        "error: --adapters is not used here: the models come from --model (the base) and --organisms"]


def test_steer_and_project_analyse_the_model_with_adapters(trained_adapter, dirs):
    """Steer and project honour --adapters: the model analysed is --model + --adapters."""
    from experiments import steer_refusal as steer
    from lab.models import LabModel
    from tests.conftest import MODEL

    adapter = str(trained_adapter.adapter_dir)
    # reference = organism: the organism-minus-reference projections are exactly zero (the base would differ)
    proj = trait_projection.run(ProjectionConfig(adapters=[adapter], organism=adapter, limit=40, n_boot=50, **dirs))
    diffs = [r.mean.value for r in proj.rows if r.model == "organism - base"]
    assert len(diffs) == 2 and all(d == 0.0 for d in diffs)
    result = steer.run(steer.RefusalSteerConfig(target="refusal", adapters=[adapter], limit=16, eval_limit=1, ratios=[],
                                         random_controls=1, max_new_tokens=2, neutral=2, n_boot=20, **dirs))
    assert result.model == LabModel(MODEL, [adapter]).fingerprint != LabModel(MODEL).fingerprint


def test_foreign_direction_fails_in_one_line_unless_allowed(base_model, tmp_path, dirs):
    """A saved direction fitted on another model stops `steer` with one line and
    exit 1; --allow-foreign-direction runs it."""
    import torch

    from lab.directions import Direction, FitRecord

    rows = torch.nn.functional.normalize(torch.randn(base_model.n_layers, base_model.d_model,
                                                     generator=torch.Generator().manual_seed(0)), dim=-1)
    path = Direction(rows, list(range(base_model.n_layers)), n_layers=base_model.n_layers,
                     model_fingerprint="hub:someone/other-model",
                     record=FitRecord("mean_diff", "last", "refusal", "", best_layer=5)).save(tmp_path / "foreign.safetensors")
    args = [sys.executable, "-m", "experiments.cli", "steer-refusal", "--direction", str(path),
            "--limit", "16", "--eval-limit", "1", "--ratios", "--random-controls", "1", "--max-new-tokens", "2",
            "--neutral", "2", "--n-boot", "20", "--cache-dir", dirs["cache_dir"], "--out", str(tmp_path / "out")]
    refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    errors = [line for line in refused.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fitted on model" in errors[0] and "--allow-foreign-direction" in errors[0]
    allowed = subprocess.run(args + ["--allow-foreign-direction"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert allowed.returncode == 0, allowed.stdout[-2000:] + allowed.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "steer" / "refusal" / "summary.json").read_text())
    assert summary["best_layer"] == 5 and summary["config"]["allow_foreign_direction"] is True
