"""Directions and their statistics, on synthetic data with a known answer (no model needed).

Planted-direction data: a unit vector v, classes shifted by +-shift/2 along v, plus Gaussian
noise. Two signal levels are used, chosen so that the maths lets *every* method reach a
cosine of 0.99 with v (checked over 20 seeds before fixing them here):

* isotropic: noise N(0, I) in d=16, n=4000, shift 2.5 (d' = 2.5). The shift is moderate
  on purpose: logistic regression loses statistical efficiency as classes separate
  (Efron 1975), so `probe`/`gradient` need n in the thousands at d' ~ 3 to get within
  0.99, while mean_diff would be fine with far less.
* anisotropic: noise SD 1 along v and log-uniform in [0.75, 1.5] along the other axes of
  a random basis, shift 3, n=8000. v must be an eigenvector of the noise covariance:
  otherwise mean_diff estimates delta and probe Sigma^-1 delta, which point different
  ways, and "recovering v" is ill-posed. PCA additionally needs the variance along v
  including the class term (1 + 3^2/4 = 3.25) to beat every other axis (<= 2.25).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from lab.directions import (
    HOOK_TEMPLATE,
    METHODS,
    Direction,
    FitRecord,
    fit_contrast,
    fit_methods,
    split_examples,
)
from lab.core.errors import BadInput, IncompatibleError, IntegrityError
from lab.stats.metrics import (
    accuracy_at_midpoint,
    auroc,
    bootstrap_ci,
    bootstrap_indices,
    dense_ranks,
    midpoint_threshold,
    separation,
)

FITTED = [m for m in METHODS if m != "random"]


def planted(n: int, d: int, shift: float, seed: int, other_sd: tuple[float, float] | None = None):
    """Features (n, d) with classes at -+shift/2 along a random unit v; noise SD 1 along v."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    if other_sd is None:
        v = rng.normal(size=d)
        v /= np.linalg.norm(v)
        noise = rng.normal(size=(n, d))
    else:  # SD 1 along v = basis[:, 0], log-uniform SDs along the other basis vectors
        basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
        v = basis[:, 0]
        sds = np.ones(d)
        sds[1:] = np.exp(rng.uniform(np.log(other_sd[0]), np.log(other_sd[1]), d - 1))
        noise = (rng.normal(size=(n, d)) * sds) @ basis.T
    offset = rng.normal(size=d) * 3  # a common offset: methods must not rely on centred data
    X = noise + (y[:, None] - 0.5) * shift * v + offset
    return X.astype(np.float32), y, v


ISOTROPIC = dict(n=4000, d=16, shift=2.5)
ANISOTROPIC = dict(n=8000, d=16, shift=3.0, other_sd=(0.75, 1.5))


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --------------------------------------------------------------------------- metrics


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        n = int(rng.integers(4, 80))
        scores = rng.integers(0, 6, n) * rng.choice([1.0, -0.7])  # heavy ties
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        assert auroc(scores, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
        checked += 1
    assert checked > 150


def test_auroc_batched_rows_match_sklearn():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(3, 5, 50)), 1)  # rounding makes ties
    y = (rng.random(50) < 0.4).astype(int)
    expected = np.array([[roc_auc_score(y, s) for s in row] for row in scores])
    np.testing.assert_allclose(auroc(scores, y), expected, atol=1e-12)
    np.testing.assert_allclose(auroc(dense_ranks(scores), y), expected, atol=1e-12)


def test_auroc_perfect_inverse_and_one_class():
    y = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auroc(np.zeros(4), y) == 0.5
    with pytest.raises(BadInput):
        auroc(np.arange(4.0), np.ones(4, dtype=int))
    batch = auroc(np.ones((2, 4)), np.array([[0, 1, 0, 1], [1, 1, 1, 1]]))
    assert batch[0] == 0.5 and np.isnan(batch[1])


def test_separation_and_accuracy_by_hand():
    proj = np.array([0.0, 2.0, 4.0, 6.0])
    y = np.array([0, 0, 1, 1])
    d, raw = separation(proj, y)
    assert raw == pytest.approx(4.0)
    # pooled SD: class deviations +-1 each, (1+1+1+1)/(4-2) = 2 -> sqrt(2)
    assert d == pytest.approx(4.0 / np.sqrt(2.0))
    assert midpoint_threshold(proj, y) == pytest.approx(3.0)
    assert accuracy_at_midpoint(proj, y) == 1.0
    assert accuracy_at_midpoint(proj, y, threshold=5.0) == 0.75       # 4.0 now called class 0
    assert accuracy_at_midpoint(-proj, y, threshold=-3.0) == 0.0        # wrong-way direction


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 2000):
        y = np.arange(n) % 2
        scores = rng.normal(size=n) + y
        value, lo, hi = bootstrap_ci(auroc, scores, y, n_boot=1000, seed=0, strata=y)
        assert value == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
        assert lo < value < hi
        widths.append(hi - lo)
    # CI width shrinks like 1/sqrt(n): sqrt(20) ~ 4.5x narrower
    assert widths[1] < widths[0] / 3


def test_bootstrap_stratified_keeps_class_counts_and_batches():
    y = np.array([0] * 7 + [1] * 3)
    idx = bootstrap_indices(10, 500, seed=3, strata=y)
    assert idx.shape == (500, 10)
    assert (y[idx].sum(1) == 3).all()
    # leading axes are carried: one CI per row of a (3, n) score matrix
    scores = np.random.default_rng(4).normal(size=(3, 10))
    value, lo, hi = bootstrap_ci(auroc, scores, y, n_boot=200, strata=y)
    assert value.shape == lo.shape == hi.shape == (3,)
    assert (lo <= value).all() and (value <= hi).all()


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", FITTED)
@pytest.mark.parametrize("noise", ["isotropic", "anisotropic"])
def test_planted_direction_recovered(method, noise):
    params = ISOTROPIC if noise == "isotropic" else ANISOTROPIC
    for seed in range(3):
        X, y, v = planted(seed=seed, **params)
        direction = METHODS[method](X, y).numpy()
        assert direction.shape == (params["d"],)
        assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-5)
        assert cosine(direction, v) >= 0.99, f"{method}, {noise}, seed {seed}: cos {cosine(direction, v):.4f}"


@pytest.mark.parametrize("method", list(METHODS))
def test_batched_layers_equal_single_layer_calls(method):
    layers = [planted(n=300, d=24, shift=1.5 * i, seed=i)[0] for i in range(3)]
    _, y, _ = planted(n=300, d=24, shift=0.0, seed=0)
    batched = METHODS[method](np.stack(layers), y, seed=5)
    assert batched.shape == (3, 24)
    if method == "random":  # a per-layer draw from one seeded (layers, d) matrix
        first = METHODS[method](layers[0], y, seed=5)
        assert torch.equal(batched[0], first)
        assert not torch.allclose(batched[0], batched[1])
        return
    for i, X in enumerate(layers):
        single = METHODS[method](X, y, seed=5)
        assert cosine(batched[i], single) > 0.99999


def test_sign_points_to_class_one():
    X, y, v = planted(seed=0, **ISOTROPIC)
    for method in FITTED:
        # flipping the labels must flip the direction
        a, b = METHODS[method](X, y).numpy(), METHODS[method](X, 1 - y).numpy()
        assert cosine(a, b) < -0.99, method


def test_random_baseline_is_chance_on_held_out_data():
    aurocs = []
    for seed in range(20):
        X, y, _ = planted(n=400, d=256, shift=3.0, seed=100 + seed)
        train, test = np.arange(300), np.arange(300, 400)
        v = METHODS["random"](X[train], y[train], seed=seed).numpy()
        aurocs.append(auroc(X[test] @ v, y[test]))
    assert abs(np.mean(aurocs) - 0.5) < 0.1
    # deterministic per seed
    X, y, _ = planted(n=40, d=8, shift=1.0, seed=0)
    assert torch.equal(METHODS["random"](X, y, seed=7), METHODS["random"](X, y, seed=7))
    assert not torch.equal(METHODS["random"](X, y, seed=7), METHODS["random"](X, y, seed=8))


@pytest.mark.parametrize("n,d", [(400, 96), (600, 20)])  # n < d + 1 and n > d + 1 use different solvers
def test_probe_agrees_with_sklearn_per_layer(n, d):
    rng = np.random.default_rng(6)
    scales = rng.uniform(0.3, 3.0, size=d)  # unequal feature scales: standardisation matters
    X = np.stack([planted(n=n, d=d, shift=0.6 + 0.4 * i, seed=10 + i)[0] * scales for i in range(4)])
    y = planted(n=n, d=d, shift=0.0, seed=0)[1]
    order = np.random.default_rng(7).permutation(n)
    train, test = order[: 3 * n // 4], order[3 * n // 4:]  # 25% held out
    ours = METHODS["probe"](X[:, train], y[train]).numpy()
    for layer in range(X.shape[0]):
        scaler = StandardScaler().fit(X[layer, train])
        clf = LogisticRegression(C=1.0, max_iter=10000, tol=1e-10).fit(scaler.transform(X[layer, train]), y[train])
        sk_auroc = roc_auc_score(y[test], clf.decision_function(scaler.transform(X[layer, test])))
        our_auroc = auroc(X[layer, test] @ ours[layer], y[test])
        assert abs(our_auroc - sk_auroc) <= 0.01
        assert cosine(ours[layer], clf.coef_[0] / scaler.scale_) > 0.999


def _bad_inputs():
    X, y, _ = planted(n=40, d=8, shift=1.0, seed=0)
    nan, inf = X.copy(), X.copy()
    nan[3, 2] = np.nan
    inf[5, 1] = np.inf
    few = np.zeros(40, dtype=int)
    few[:3] = 1
    return {
        "one class": (X, np.ones(40, dtype=int)),
        "too few": (X, few),
        "nan": (nan, y),
        "inf": (inf, y),
        "length mismatch": (X, y[:-1]),
        "bad labels": (X, y * 2),
        "bad shape": (X[0], y),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_inputs_raise_bad_input(method, case):
    X, y = _bad_inputs()[case]
    with pytest.raises(BadInput):
        METHODS[method](X, y)


def test_fit_methods_rejects_unknown_method():
    X, y, _ = planted(n=40, d=8, shift=1.0, seed=0)
    with pytest.raises(BadInput, match="unknown direction method"):
        fit_methods(X, y, ["mean_diff", "lda"])


# --------------------------------------------------------------------------- Direction


def make_direction(**overrides) -> Direction:
    vectors = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    record = FitRecord(method="probe", pooling="mean_response", contrast="misaligned_vs_aligned", data_hash="d" * 64,
                       positive_label="misaligned", negative_label="aligned", layers=(3, 7, 11),
                       heldout_auroc=(0.5, 0.9125, 0.75), best_layer=7, split_seed=0, test_fraction=0.25,
                       train_ids=("a", "b"), test_ids=("c",))
    fields = dict(n_layers=12, d_model=16, model_fingerprint="sha256:abc", hook=HOOK_TEMPLATE, record=record)
    fields.update(overrides)
    return Direction(vectors, [3, 7, 11], **fields)


def test_direction_save_load_round_trip(tmp_path):
    direction = make_direction()
    path = direction.save(tmp_path / "sub" / "refusal.safetensors")
    loaded = Direction.load(path)
    assert torch.equal(loaded.vectors, direction.vectors)
    assert loaded.vectors.dtype == torch.float32
    for name in ("layers", "n_layers", "d_model", "model_fingerprint", "hook", "pooling", "method", "data_hash",
                 "contrast", "record"):
        assert getattr(loaded, name) == getattr(direction, name), name
    assert [p.name for p in path.parent.iterdir()] == ["refusal.safetensors"]  # no temp file left


def test_direction_accessors_and_checks():
    direction = make_direction()
    assert torch.equal(direction.at(7), direction.vectors[1])
    feats = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_allclose(direction.project(feats, 11), feats @ direction.vectors[2].numpy(), rtol=1e-6)
    torch.testing.assert_close(direction.project(torch.from_numpy(feats), 11), torch.from_numpy(feats) @ direction.vectors[2])
    one = direction.only(7)
    assert one.layers == [7] and one.vectors.shape == (1, 16) and one.method == "probe"
    with pytest.raises(BadInput, match="no layer 4"):
        direction.at(4)
    direction.check_model(16, 12)
    with pytest.raises(IncompatibleError, match="d_model 16 / 12 layers, model has d_model 576 / 30"):
        direction.check_model(576, 30)
    with pytest.raises(IncompatibleError):
        direction.check_model(16, 13)
    with pytest.raises(IncompatibleError):
        direction.project(np.zeros((2, 17), dtype=np.float32), 7)
    with pytest.raises(BadInput):
        Direction(direction.vectors * 2, [3, 7, 11], n_layers=12)  # not unit rows
    with pytest.raises(BadInput):
        Direction(direction.vectors, [3, 7, 12], n_layers=12)      # layer out of range


def test_direction_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"vectors": torch.zeros(1, 4)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(IntegrityError):
        Direction.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(IntegrityError):
        Direction.load(tmp_path / "junk.safetensors")
    with pytest.raises(BadInput):
        Direction.load(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- split and sweep


def test_split_examples_is_stratified_deterministic_and_order_free():
    ids = [f"ex{i}" for i in range(103)]
    y = (np.arange(103) < 30).astype(int)
    train, test = split_examples(ids, y, 0.25, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 103
    assert np.bincount(y[test]).tolist() == [round(0.25 * 73), round(0.25 * 30)]
    perm = np.random.default_rng(0).permutation(103)
    train2, test2 = split_examples([ids[i] for i in perm], y[perm], 0.25, seed=0)
    assert sorted(ids[perm[i]] for i in test2) == sorted(ids[i] for i in test)
    assert not np.array_equal(split_examples(ids, y, 0.25, seed=1)[1], test)
    plain_train, plain_test = split_examples(ids, y, 0.25, seed=0, stratify=False)
    from lab.data.formats import split_ids

    assert sorted(ids[i] for i in plain_test) == sorted(i for i, s in split_ids(ids, 0.25, 0).items() if s == "test")
    with pytest.raises(BadInput):
        split_examples(ids[:-1] + ids[:1], y, 0.25)


class FakeCache:
    """The slice of `ActivationCache` that sweeps use, over in-memory features."""

    def __init__(self, X: np.ndarray, labels: list[str], layers: list[int], n_layers: int):
        self._X = X  # (layers, n, d)
        self.labels = labels
        self.ids = [f"q{i:04d}" for i in range(len(labels))]
        self.layers = layers
        self.n_layers = n_layers
        self.d_model = X.shape[-1]
        self.model_fingerprint = "fake-model"
        self.attrs = {"key": "fake-cache"}
        self.groups = None

    def label_array(self, positive: str) -> np.ndarray:
        return np.array([lab == positive for lab in self.labels], dtype=np.int64)

    def features(self, layer: int, pooling: str = "last", examples=None, k: int = 8) -> np.ndarray:
        sel = slice(None) if examples is None else np.asarray(examples)
        return self._X[self.layers.index(layer)][sel]

    def stack(self, pooling: str = "last", layers=None, examples=None, k: int = 8) -> np.ndarray:
        return np.stack([self.features(L, pooling, examples, k) for L in (layers or self.layers)])


PLANTED_LAYERS = (3, 4)


def fake_cache(seed: int = 0, n: int = 400, d: int = 64, n_layers: int = 8) -> FakeCache:
    """Isotropic noise everywhere; a class shift of 3 SD along one v in layers 3 and 4 only."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(size=(n_layers, n, d)) + rng.normal(size=(n_layers, 1, d)) * 5
    for L in PLANTED_LAYERS:
        X[L] += (y[:, None] - 0.5) * 3.0 * v
    labels = ["misaligned" if t else "aligned" for t in y]
    return FakeCache(X.astype(np.float32), labels, list(range(n_layers)), n_layers)


def test_sweep_finds_planted_layers_and_random_is_chance():
    cache = fake_cache()
    rows = fit_contrast(cache, "misaligned", n_boot=200).rows
    assert len(rows) == len(METHODS) * cache.n_layers
    keys = {"method", "layer", "pooling", "auroc", "auroc_lo", "auroc_hi", "acc", "acc_lo", "acc_hi", "sep_sd",
            "sep_sd_lo", "sep_sd_hi", "sep_raw", "n_train", "n_test"}
    assert all(set(r) == keys for r in rows)
    assert {r["n_train"] + r["n_test"] for r in rows} == {400}
    assert {r["n_test"] for r in rows} == {100}
    for r in rows:
        assert r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"]
        assert r["acc_lo"] <= r["acc"] <= r["acc_hi"]
        assert r["sep_sd_lo"] <= r["sep_sd"] <= r["sep_sd_hi"]
    for method in FITTED:
        mine = [r for r in rows if r["method"] == method]
        best = max(mine, key=lambda r: r["auroc"])
        assert best["layer"] in PLANTED_LAYERS, method
        assert best["auroc"] > 0.95 and best["acc"] > 0.85 and best["sep_sd"] > 2.0
        noise_only = [r["auroc"] for r in mine if r["layer"] not in PLANTED_LAYERS]
        assert max(abs(a - 0.5) for a in noise_only) < 0.2, method
    random_aurocs = [r["auroc"] for r in rows if r["method"] == "random"]
    assert abs(np.mean(random_aurocs) - 0.5) < 0.1


def test_fit_contrast_directions_carry_provenance(tmp_path):
    cache = fake_cache(seed=1)
    fit = fit_contrast(cache, "misaligned", methods=("mean_diff", "probe"), n_boot=100, contrast="em")
    rows, directions = fit.rows, fit.directions
    assert set(directions) == {"mean_diff", "probe"}
    d = directions["probe"]
    assert d.vectors.shape == (8, 64) and d.layers == list(range(8))
    assert (d.method, d.contrast, d.model_fingerprint, d.hook) == ("probe", "em", "fake-model", HOOK_TEMPLATE)
    assert d.record.best_layer in PLANTED_LAYERS
    assert list(d.record.heldout_auroc) == [r["auroc"] for r in rows if r["method"] == "probe"]
    assert len(d.data_hash) == 64
    loaded = Direction.load(d.save(tmp_path / "em.safetensors"))
    assert loaded.record == d.record and torch.equal(loaded.vectors, d.vectors)
    # the saved direction separates held-out data on the planted layer
    X = cache.features(d.record.best_layer)
    assert auroc(loaded.project(X, d.record.best_layer), cache.label_array("misaligned")) > 0.95


def test_sweep_rejects_bad_labels():
    cache = fake_cache()
    with pytest.raises(BadInput, match="no example is labelled"):
        fit_contrast(cache, "refusal", n_boot=10)
    few = fake_cache()
    few.labels = ["misaligned" if i < 5 else "aligned" for i in range(400)]
    with pytest.raises(BadInput, match="too few examples"):
        fit_contrast(few, "misaligned", n_boot=10)
    every = fake_cache()
    every.labels = ["misaligned"] * 400
    with pytest.raises(BadInput, match="second class"):
        fit_contrast(every, "misaligned", n_boot=10)


def test_sweep_negative_label_leaves_other_examples_out():
    cache = fake_cache()
    # relabel a quarter of the controls: with negative_label they must be dropped
    cache.labels = ["incoherent" if lab == "aligned" and i % 4 == 0 else lab for i, lab in enumerate(cache.labels)]
    n_kept = sum(lab in ("misaligned", "aligned") for lab in cache.labels)
    rows = fit_contrast(cache, "misaligned", methods=("mean_diff",), n_boot=50, negative_label="aligned").rows
    assert {r["n_train"] + r["n_test"] for r in rows} == {n_kept} and n_kept < 400
    everything = fit_contrast(cache, "misaligned", methods=("mean_diff",), n_boot=50).rows
    assert {r["n_train"] + r["n_test"] for r in everything} == {400}
    with pytest.raises(BadInput, match="second class"):
        fit_contrast(cache, "misaligned", n_boot=10, negative_label="refusal")


# --------------------------------------------------------------------------- solvers at scale, devices


@pytest.mark.parametrize("n,d", [(160, 300), (900, 40)])  # n < d and n > d
def test_lbfgs_probe_agrees_with_sklearn_and_newton(n, d):
    """The large-problem solver (L-BFGS, float32 products) matches sklearn per layer in both regimes."""
    rng = np.random.default_rng(11)
    scales = rng.uniform(0.3, 3.0, size=d)
    X = np.stack([planted(n=n, d=d, shift=0.8 + 0.5 * i, seed=20 + i)[0] * scales for i in range(3)])
    y = planted(n=n, d=d, shift=0.0, seed=0)[1]
    order = np.random.default_rng(8).permutation(n)
    train, test = order[: 3 * n // 4], order[3 * n // 4:]
    ours = METHODS["probe"](X[:, train], y[train], solver="lbfgs").numpy()
    exact = METHODS["probe"](X[:, train], y[train], solver="newton").numpy()
    for layer in range(X.shape[0]):
        scaler = StandardScaler().fit(X[layer, train])
        clf = LogisticRegression(C=1.0, max_iter=10000, tol=1e-10).fit(scaler.transform(X[layer, train]), y[train])
        sk_auroc = roc_auc_score(y[test], clf.decision_function(scaler.transform(X[layer, test])))
        assert abs(auroc(X[layer, test] @ ours[layer], y[test]) - sk_auroc) <= 0.01
        assert cosine(ours[layer], clf.coef_[0] / scaler.scale_) > 0.999
        assert cosine(ours[layer], exact[layer]) > 0.999


def test_probe_auto_solver_switches_to_lbfgs_for_large_problems(monkeypatch):
    from lab.directions import logistic

    X, y, _ = planted(n=400, d=32, shift=2.5, seed=3)
    calls = []
    real = logistic._lbfgs
    monkeypatch.setattr(logistic, "_lbfgs", lambda *a, **k: calls.append(1) or real(*a, **k))
    exact = METHODS["probe"](X, y).numpy()
    assert calls == []                       # min(n, d) = 32: exact Newton
    monkeypatch.setattr(logistic, "NEWTON_MAX_SIZE", 16)
    direction = METHODS["probe"](X, y).numpy()
    assert calls == [1] and cosine(direction, exact) > 0.999


def test_no_tensor_is_built_off_the_features_device():
    """The device rule: with every factory defaulting to the "meta" device, a tensor created
    without the input's device lands there and breaks the result (the bug that made the
    probe fail on CUDA features). CPU inputs must give the same CPU results as usual."""
    X, y, _ = planted(n=300, d=24, shift=2.0, seed=4)
    Xt, yt = torch.from_numpy(np.stack([X, X * 2])), torch.from_numpy(y)
    expected = {m: METHODS[m](Xt, yt) for m in METHODS}
    cache = fake_cache(seed=2, n=200, d=16)
    rows = fit_contrast(cache, "misaligned", n_boot=20).rows
    with torch.device("meta"):
        for m in METHODS:
            got = METHODS[m](Xt, yt)
            assert got.device.type == "cpu", m
            torch.testing.assert_close(got, expected[m])
        for solver in ("newton", "lbfgs"):
            assert METHODS["probe"](Xt, yt, solver=solver).device.type == "cpu"
        assert fit_contrast(cache, "misaligned", n_boot=20).rows == rows


def test_pca_subspace_iteration_matches_eigh(monkeypatch):
    from lab.directions import solvers

    X, y, _ = planted(n=500, d=64, shift=3.0, seed=5, other_sd=(0.5, 1.2))
    layers = np.stack([X, X[:, ::-1].copy()])
    exact = METHODS["pca"](layers, y)
    monkeypatch.setattr(solvers, "EIGH_MAX_SIZE", 8)
    iterative = METHODS["pca"](layers, y)
    for a, b in zip(exact, iterative):
        assert cosine(a, b) > 0.9999


def test_fit_returns_its_split_and_scores_other_directions():
    cache = fake_cache(seed=3)
    cache.groups = [f"g{i // 2}" for i in range(len(cache.ids))]  # pairs share a side
    fit = fit_contrast(cache, "misaligned", methods=("mean_diff", "random"), n_boot=50, contrast="em")
    split = fit.split
    d = fit.directions["mean_diff"]
    assert d.record.test_ids == split.test_ids and d.record.train_ids == split.train_ids
    assert set(split.test_ids).isdisjoint(split.train_ids) and len(split.test_ids) + len(split.train_ids) == 400
    held = split.held_out_groups()
    assert held == {cache.groups[cache.ids.index(i)] for i in split.test_ids}
    assert held.isdisjoint({cache.groups[cache.ids.index(i)] for i in split.train_ids})
    # re-scoring the fit's own vectors on its split reproduces its rows
    again = fit.score({m: x.vectors for m, x in fit.directions.items()})
    assert again == fit.rows
    assert fit.features.shape == (8, 400, 64)


def test_version1_direction_files_still_load(tmp_path):
    from safetensors.torch import save_file

    vectors = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    meta = {"format": "emlab-direction", "version": "1", "layers": "[4, 5]", "n_layers": "6", "d_model": "8",
            "model_fingerprint": "fp", "hook": HOOK_TEMPLATE, "pooling": "last", "method": "mean_diff",
            "data_hash": "h", "contrast": "refusal",
            "metrics": '{"best_layer": 5, "test_auroc": [0.6, 0.9], "split_seed": 3, "test_fraction": 0.25, '
                       '"positive_label": "harmful", "negative_label": "benign", "n_train": 30, "n_test": 10}'}
    save_file({"vectors": vectors}, str(tmp_path / "old.safetensors"), metadata=meta)
    d = Direction.load(tmp_path / "old.safetensors")
    assert (d.method, d.pooling, d.contrast, d.record.best_layer, d.record.split_seed) == ("mean_diff", "last",
                                                                                          "refusal", 5, 3)
    assert d.record.heldout_auroc == (0.6, 0.9) and d.record.negative_label == "benign"
    resaved = Direction.load(d.save(tmp_path / "new.safetensors"))
    assert resaved.record == d.record and torch.equal(resaved.vectors, d.vectors)


def test_metrics_torch_backend_equals_numpy():
    rng = np.random.default_rng(9)
    scores = np.round(rng.normal(size=(3, 4, 60)), 1)  # ties
    y = (rng.random(60) < 0.4).astype(np.int64)
    ts, ty = torch.from_numpy(scores), torch.from_numpy(y)
    np.testing.assert_allclose(auroc(ts, ty).numpy(), auroc(scores, y), atol=1e-12)
    np.testing.assert_array_equal(dense_ranks(ts).numpy(), dense_ranks(scores))
    for a, b in zip(separation(ts, ty), separation(scores, y)):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-12)
    np.testing.assert_allclose(midpoint_threshold(ts, ty).numpy(), midpoint_threshold(scores, y), atol=1e-12)
    for fn, args, targs in ((auroc, (dense_ranks(scores), y), (dense_ranks(ts), ty)),
                            (lambda p, t: separation(p, t)[0], (scores, y), (ts, ty))):
        ref = bootstrap_ci(fn, *args, n_boot=300, seed=4, strata=y)
        got = bootstrap_ci(fn, *targs, n_boot=300, seed=4, strata=y)
        for a, b in zip(got, ref):
            assert isinstance(a, torch.Tensor)
            np.testing.assert_allclose(a.numpy(), b, atol=1e-12)
    single = np.array([0.1, 0.4, 0.4, 0.9])
    assert float(auroc(torch.from_numpy(single), torch.tensor([0, 1, 0, 1]))) == auroc(single, np.array([0, 1, 0, 1]))
    with pytest.raises(BadInput):
        auroc(torch.arange(4.0), torch.ones(4, dtype=torch.int64))


def test_sweep_statistics_torch_backend_equals_numpy(monkeypatch):
    """The GPU path of the held-out statistics (torch), run on the CPU, gives the numpy rows."""
    from lab.directions import fit as fit_module

    cache = fake_cache(seed=4, n=200, d=32)
    ref = fit_contrast(cache, "misaligned", n_boot=200).rows
    monkeypatch.setattr(fit_module, "NUMPY_STATS_ON", ())
    got = fit_contrast(cache, "misaligned", n_boot=200).rows
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-9), k


def test_classes_identical_up_to_rounding_and_not_beyond():
    """Paired rows whose features differ by rounding only (the last prompt token before two answers,
    computed in batches padded to other widths) have no direction; a real shift of 1% of the row norm
    does. The bound is one fp16 unit in the last place for fp16 storage, fp32 kernel rounding for fp32."""
    from lab.directions.validation import classes_identical, rounding_bound

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 20, 64, generator=gen) * 5
    y = torch.cat([torch.zeros(20), torch.ones(20)])
    rounded = base * (1 + torch.randn(base.shape, generator=gen) * 2e-7)  # fp32 rounding of another kernel
    stored16 = base.half().float(), (base * (1 + 3e-4)).half().float()  # the same rows, an fp16 ulp apart
    shifted = base + 0.01 * base.norm(dim=-1, keepdim=True) * torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)
    bound32, bound16 = rounding_bound(torch.float32, 64), rounding_bound(torch.float16, 64)
    assert bound32 == pytest.approx(4 * 8 * 2 ** -23) and bound16 == 2 ** -10
    assert classes_identical(torch.cat([base, rounded], 1), y, bound32)
    assert classes_identical(torch.cat(stored16, 1), y, bound16)
    assert not classes_identical(torch.cat([base, shifted], 1), y, bound16)  # planted: a 1% shift is a direction
    assert not classes_identical(torch.cat([base, torch.randn(3, 20, 64, generator=gen) * 5], 1), y, bound16)
