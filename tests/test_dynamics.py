"""Training dynamics of rank-1 adapters (lab.diffing.dynamics) on planted adapter sequences, and the
L1 LoRA probe on planted per-token scalars. Each test states what a broken version would do."""

import json

import numpy as np
import pytest

from lab.diffing.dynamics import AdapterPath, local_cosine, lora_probe, pca_path, read_rank1, transition
from lab.core.errors import BadInput


def planted_path(switch: int = 50, every: int = 5, last: int = 100, d: int = 64, seed: int = 0):
    """B grows along u until `switch`, then along v (orthogonal): an abrupt rotation, small noise."""
    rng = np.random.default_rng(seed)
    u, v = np.eye(d)[0], np.eye(d)[1]
    steps = list(range(every, last + 1, every))
    vecs = [(s * u if s < switch else switch * u + 20 * (s - switch + every) * v) + 0.05 * rng.standard_normal(d)
            for s in steps]
    return steps, np.array(vecs)


@pytest.mark.parametrize("k", [5, 10, 15])
def test_local_cosine_finds_the_planted_rotation(k):
    steps, vecs = planted_path()
    local = local_cosine(vecs, steps, k)
    assert all(s - e == k for s, e, _ in local)  # checkpoints every 5 steps: exact gaps
    step, cos = transition(local)
    # the first checkpoint past the switch (50) compared with one before it; k=5: (50, 45), k=10: 50..55
    assert 50 <= step < 50 + k and cos < 0.8, (step, cos)
    # away from the switch the vector keeps its direction
    assert min(c for s, _, c in local if s < 50 or s - k >= 60) > 0.95


def test_local_cosine_without_a_rotation_has_no_dip():
    steps = list(range(5, 101, 5))
    vecs = np.array([s * np.eye(16)[0] + 0.01 * np.random.default_rng(s).standard_normal(16) for s in steps])
    assert min(c for _, _, c in local_cosine(vecs, steps, 5)) > 0.99


def test_local_cosine_uneven_checkpoints_and_bad_input():
    steps, vecs = [4, 9, 13, 18], np.eye(4)
    assert [(s, e) for s, e, _ in local_cosine(vecs, steps, 5)] == [(9, 4), (13, 4), (18, 13)]
    with pytest.raises(BadInput):
        local_cosine(vecs, steps[:3], 5)
    with pytest.raises(BadInput):
        local_cosine(vecs, steps, 0)


def test_pca_path_bends_at_the_rotation():
    steps, vecs = planted_path()
    p = pca_path(vecs)
    assert p.coords.shape == (len(steps), 2) and p.explained.sum() > 0.99
    # the path is two straight legs: before the switch it moves along one PC direction, after along another
    before, after = np.diff(p.coords[:9], axis=0), np.diff(p.coords[10:], axis=0)
    cos = abs(before.mean(0) @ after.mean(0)) / (np.linalg.norm(before.mean(0)) * np.linalg.norm(after.mean(0)))
    assert cos < 0.5, cos


def _write_adapter(folder, layers, A, B, rslora=True, r=1, alpha=64):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    tensors = {}
    for L, a, b in zip(layers, A, B):
        prefix = f"base_model.model.model.layers.{L}.mlp.down_proj"
        tensors[f"{prefix}.lora_A.weight"] = a[None, :].astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = b[:, None].astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "use_rslora": rslora}))


def test_read_rank1_and_norms(tmp_path):
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((2, 32)), rng.standard_normal((2, 8))
    _write_adapter(tmp_path / "c1", [15, 9], A, B)
    ad = read_rank1(tmp_path / "c1")
    assert [a.layer for a in ad] == [9, 15]
    np.testing.assert_allclose(ad[0].B, B[1] * 64, rtol=1e-6)  # rslora scale alpha / sqrt(r)
    np.testing.assert_allclose(ad[1].norm, np.linalg.norm(A[0]) * np.linalg.norm(B[0]) * 64, rtol=1e-5)
    _write_adapter(tmp_path / "c2", [15, 9], A, 2 * B)
    path = AdapterPath.from_checkpoints([tmp_path / "c1", tmp_path / "c2"], [5, 10])
    assert path.vectors.shape == (2, 16)
    np.testing.assert_allclose(path.norms[1], 2 * path.norms[0], rtol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no adapter_model"):
        read_rank1(tmp_path / "empty")


def _planted_tokens(informative: int, n_examples: int = 80, n_adapters: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats, labels, groups = [], [], []
    for i in range(n_examples):
        y = i % 2
        x = rng.standard_normal((int(rng.integers(5, 15)), n_adapters))
        x[:, informative] += 1.5 * y  # only this adapter's scalar knows the domain
        feats.append(x), labels.append(y), groups.append(f"ex{i}")
    return feats, labels, groups


def test_lora_probe_recovers_the_planted_adapter():
    layers = [9, 10, 11, 13, 14, 15, 17, 18, 19]
    feats, labels, groups = _planted_tokens(informative=4)
    res = lora_probe(feats, labels, groups, layers, C=0.01, n_boot=200)
    assert res.carriers[0] == 14 and len(res.carriers) <= 3, res.carriers
    assert res.auroc_lo > 0.75 and np.argmax(res.single_auroc) == 4
    # the control: labels that no adapter knows leave a chance-level probe
    shuffled = list(np.random.default_rng(1).permutation(labels))
    null = lora_probe(feats, shuffled, groups, layers, C=0.01, n_boot=200)
    assert abs(null.auroc - 0.5) < 0.1 and null.auroc < res.auroc_lo, (null.auroc, res.auroc_lo)


def test_lora_probe_bad_input():
    feats, labels, groups = _planted_tokens(0, 20)
    with pytest.raises(BadInput, match="both classes"):
        lora_probe(feats, [1] * len(labels), groups, list(range(9)))
    with pytest.raises(BadInput, match="one label"):
        lora_probe(feats, labels[:-1], groups, list(range(9)))


def test_dynamics_cli_on_smollm2_and_rerun_loads_no_model(tmp_path):
    """A 3-step rank-1 organism with a checkpoint every step: the adapter's norm grows from zero (B
    starts at 0), every checkpoint gets an EM score, the probe runs; the rerun reads files only."""
    from experiments import checkpoints as dynamics
    from lab.core.config import parse_config
    from tests.no_weights import run_without_weights

    args = ["--recipes", "mo-rank1", "--max-steps", "3", "--checkpoint-every", "1", "--lr", "1e-3", "--eval-limit", "2",
            "--probe-limit", "12", "--n-boot", "50", "--step-gaps", "1", "2", "--train-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    first = dynamics.run_adapters(parse_config(dynamics.DynamicsConfig, args))
    r = first["runs"]["mo-rank1"]
    assert r["layers"] == [15] and [x["step"] for x in r["rows"]] == [1, 2, 3]
    norms = [x["norm"] for x in r["rows"]]
    assert 0 < norms[0] < norms[1] < norms[2]  # LoRA B starts at zero and grows
    assert [e["step"] for e in r["em"]] == [0, 1, 2, 3] and all("in_domain" in e for e in r["em"])
    assert {p["features"] for p in r["probes"]} == {"adapters' A", "random A, same norms"}
    _, rows = run_without_weights(f"""
from experiments import checkpoints as dynamics
from lab.core.config import parse_config
s = dynamics.run_adapters(parse_config(dynamics.DynamicsConfig, {args!r}))
print(json.dumps(s["runs"]["mo-rank1"]["rows"]))
""")
    assert rows == json.loads(json.dumps(r["rows"]))
    with pytest.raises(BadInput, match="not a rank-1 recipe"):
        dynamics.run_adapters(parse_config(dynamics.DynamicsConfig, args[:1] + ["mo"] + args[2:]))


def test_transition_ignores_the_warm_up_when_asked():
    steps, vecs = planted_path()
    vecs[0] = np.eye(vecs.shape[1])[5]  # the first checkpoint points elsewhere (B just out of zero)
    local = local_cosine(vecs, steps, 5)
    assert transition(local)[0] == 10  # the warm-up artefact is the lowest overall
    assert transition(local, min_earlier=10)[0] == 50  # past it, the planted rotation
