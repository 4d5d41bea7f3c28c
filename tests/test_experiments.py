"""Experiments end to end on the real SmolLM2 (small limits), and probing without the model."""

import json
import subprocess
import sys

import pytest

from experiments import layer_sweep, pooling, trait_projection, transfer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    return {"cache_dir": str(root / "cache"), "out": str(root / "figures")}


@pytest.mark.parametrize("contrast", ["refusal", "code_mode"])
def test_trait_vectors_separate_held_out_prompts(contrast, dirs):
    """Issue 4 acceptance: AUROC >= 0.9 at the best layer on held-out prompts, with sklearn agreement."""
    summary = layer_sweep.run(layer_sweep.LayerSweepConfig(contrast=contrast, n_boot=200, **dirs))
    rows = json.loads((REPO / summary["out"] / "rows.json").read_text()) if not summary["out"].startswith("/") else \
        json.loads(open(summary["out"] + "/rows.json").read())
    best_probe = max(r["auroc"] for r in rows if r["method"] == "probe")
    best_diff = max(r["auroc"] for r in rows if r["method"] == "mean_diff")
    assert best_probe >= 0.9 and best_diff >= 0.85
    random_mean = sum(r["auroc"] for r in rows if r["method"] == "random") / sum(r["method"] == "random" for r in rows)
    assert random_mean < best_probe - 0.15
    assert summary["max_abs_auroc_diff_vs_sklearn"] <= 0.01


def test_new_probe_on_existing_cache_never_loads_the_model(dirs):
    code = f"""
import sys, json
import lab.models
def refuse(*a, **k):
    raise AssertionError("model weights were loaded")
lab.models.load_model = refuse
from experiments import layer_sweep
s = layer_sweep.run(layer_sweep.LayerSweepConfig(contrast="refusal", methods=["mean_diff", "random"], n_boot=50,
                    sklearn_check=False, cache_dir={dirs['cache_dir']!r}, out={dirs['out']!r}))
print(json.dumps({{"modeling": [m for m in sys.modules if m.startswith("transformers.models.")
                                and ".modeling_" in m and ".auto." not in m]}}))
"""
    # the cache exists from the test above (same model, prompts, hooks): only files are read
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["modeling"] == []


def test_pooling_on_answer_contrast(dirs):
    summary = pooling.run(pooling.PoolingConfig(contrast="medical_answers", limit=40, n_boot=100, **dirs))
    by = {(r["pooling"], r["method"]): r for r in summary["rows"]}
    assert set(p for p, _ in by) == {"last", "mean_prompt", "mean_response", "first_k"}
    # the last prompt token precedes paired answers: identical features, reported as such
    assert "last" in summary["degenerate"] and by[("last", "probe")]["AUROC [95% CI]"].startswith("n/a")
    response = float(by[("mean_response", "probe")]["mean AUROC over layers"])
    assert response > 0.75


def test_transfer_and_trait_projection(dirs, trained_adapter):
    adapter = str(trained_adapter.adapter_dir)
    summary = transfer.run(transfer.TransferConfig(contrast="refusal", organisms=[f"med={adapter}"], limit=40,
                                                   n_boot=100, **dirs))
    assert {(r["direction from"], r["scored on"]) for r in summary["rows"]} == {
        ("base", "base"), ("base", "med"), ("med", "base"), ("med", "med")}
    own = next(r for r in summary["rows"] if r["direction from"] == "med" and r["scored on"] == "med")
    assert float(own["cosine (median over layers)"]) == pytest.approx(1.0)
    proj = trait_projection.run(trait_projection.TraitProjectionConfig(organism=adapter, limit=40, n_boot=100, **dirs))
    assert {r["model"] for r in proj["rows"]} == {"base", "organism", "organism - base"}
    base_harm = next(r for r in proj["rows"] if r["prompts"] == "harmful" and r["model"] == "base")
    base_benign = next(r for r in proj["rows"] if r["prompts"] == "benign" and r["model"] == "base")
    assert base_harm["mean projection"] > base_benign["mean projection"]


def test_experiment_cli_help_and_bad_input():
    out = subprocess.run([sys.executable, "-m", "experiments.layer_sweep", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--contrast" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.layer_sweep", "--contrast", "nonsense"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown contrast" in bad.stdout and "Traceback" not in bad.stderr


def test_steering_and_ablation_options_fail_clearly(trained_adapter):
    from experiments import ablation, steer
    from lab.errors import BadInput

    with pytest.raises(BadInput, match="--select"):
        steer.run(steer.SteerConfig(select="best"))
    adapter = str(trained_adapter.adapter_dir)
    with pytest.raises(BadInput, match="--contrast"):
        ablation.run(ablation.AblationConfig(organisms=[f"medical={adapter}"], contrast="refusal"))
    with pytest.raises(BadInput, match="shipped domain"):
        ablation.run(ablation.AblationConfig(organisms=[f"mine={adapter}"], contrast="own_domain"))


def test_study_shares_base_scores_only_when_they_cover_the_trajectory():
    import numpy as np

    from experiments.study import Profile, shared_base_scores

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

    from experiments.ablation import AblationConfig, removal

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
