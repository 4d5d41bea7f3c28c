"""Direction fits on CUDA agree with the CPU (skipped without a GPU; run on the lent machine).

The device rule (results live where the features live) and the CPU/CUDA agreement of the
full sweep: every method, the probe's two solvers and the bootstrap CIs.
"""

import numpy as np
import pytest
import torch

from lab.directions import METHODS, fit_contrast
from lab.stats.metrics import auroc, bootstrap_ci, dense_ranks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _Cache:
    def __init__(self, X: np.ndarray, y: np.ndarray):
        self._X = X
        self.labels = ["trait" if t else "control" for t in y]
        self.ids = [f"q{i:05d}" for i in range(len(y))]
        self.layers = list(range(X.shape[0]))
        self.groups = None
        self.n_layers, self.d_model = X.shape[0], X.shape[2]
        self.model_fingerprint = "synthetic"
        self.attrs = {"key": "synthetic"}

    def label_array(self, positive):
        return np.array([lab == positive for lab in self.labels], dtype=np.int64)

    def stack(self, pooling="last", layers=None, examples=None, k=8):
        return self._X if examples is None else self._X[:, np.asarray(examples)]


def _data(L=6, n=600, d=256, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(size=(L, n, d)) + np.linspace(0.5, 3.0, L)[:, None, None] * (y[:, None] - 0.5) * v
    return X.astype(np.float32), y


@pytest.mark.parametrize("n,d", [(300, 512), (1200, 256)])   # n < d and n > d
def test_cpu_and_cuda_sweeps_agree(n, d):
    X, y = _data(n=n, d=d)
    cpu = fit_contrast(_Cache(X, y), "trait", n_boot=500, device="cpu")
    gpu = fit_contrast(_Cache(X, y), "trait", n_boot=500, device="cuda")
    assert gpu.features.device.type == "cuda"
    assert [(r["method"], r["layer"]) for r in cpu.rows] == [(r["method"], r["layer"]) for r in gpu.rows]
    for a, b in zip(cpu.rows, gpu.rows):
        assert abs(a["auroc"] - b["auroc"]) <= 1e-3, (a["method"], a["layer"])
        assert abs(a["auroc_lo"] - b["auroc_lo"]) <= 1e-2 and abs(a["auroc_hi"] - b["auroc_hi"]) <= 1e-2
        assert abs(a["sep_sd"] - b["sep_sd"]) <= 1e-2 * max(1.0, abs(a["sep_sd"]))
    for m in cpu.directions:
        cos = torch.nn.functional.cosine_similarity(cpu.directions[m].vectors, gpu.directions[m].vectors, dim=-1)
        assert float(cos[1:].min()) > 0.99, m   # layer 0 is weakest; AUROC above covers it


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_on_the_features_device(method):
    X, y = _data(L=3, n=200, d=64)
    out = METHODS[method](torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda())
    assert out.device.type == "cuda" and out.shape == (3, 64)
    ref = METHODS[method](X, y)
    assert float(torch.nn.functional.cosine_similarity(out.cpu(), ref, dim=-1).min()) > 0.999


def test_probe_solvers_on_cuda():
    X, y = _data(L=4, n=500, d=1024)
    Xc, yc = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    for solver in ("lbfgs", "newton"):
        out = METHODS["probe"](Xc, yc, solver=solver)
        ref = METHODS["probe"](X, y, solver=solver)
        assert out.device.type == "cuda"
        assert float(torch.nn.functional.cosine_similarity(out.cpu(), ref, dim=-1).min()) > 0.999


def test_bootstrap_on_cuda_equals_numpy():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(4, 200))
    y = (rng.random(200) < 0.5).astype(np.int64)
    ref = bootstrap_ci(auroc, dense_ranks(scores), y, n_boot=400, seed=1, strata=y)
    ts, ty = torch.from_numpy(scores).cuda(), torch.from_numpy(y).cuda()
    got = bootstrap_ci(auroc, dense_ranks(ts), ty, n_boot=400, seed=1, strata=y)
    for a, b in zip(got, ref):
        assert a.device.type == "cuda"
        np.testing.assert_allclose(a.cpu().numpy(), b, atol=1e-12)
