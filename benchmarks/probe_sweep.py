"""Time emlab's all-layer direction sweep against a per-layer sklearn probe loop.

Synthetic data shaped like a small model's cache: 30 layers x 400 examples x 576 features
(SmolLM2-135M), a class shift along one direction that grows with depth. Both sides fit on
the same 300-example training split and score AUROC on the same 100 held-out examples.

* emlab: `lab.directions.sweep` -- 5 methods (mean_diff, probe, pca, gradient, random),
  all layers batched, plus 1000-replicate bootstrap CIs of AUROC, accuracy and Cohen's d.
* sklearn: for each layer, StandardScaler + LogisticRegression(C=1) (one method, no CIs),
  at its default tolerance and at a tight one (emlab's Newton runs to convergence).
* also emlab's probe alone (`lab.directions.probe` on all layers), like-for-like with sklearn.

    .venv/bin/python benchmarks/probe_sweep.py [--layers 30 --n 400 --d 576 --n-boot 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import lab  # noqa: F401  -- first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (else 10x+ slowdowns)


class ArrayCache:
    """Just enough of `lab.cache.ActivationCache` for `sweep`, over an in-memory array."""

    def __init__(self, X: np.ndarray, labels: list[str]):
        self._X = X
        self.labels = labels
        self.ids = [f"ex{i:05d}" for i in range(len(labels))]
        self.layers = list(range(X.shape[0]))
        self.n_layers, self.d_model = X.shape[0], X.shape[2]
        self.model_fingerprint = "synthetic"
        self.attrs = {"key": "synthetic"}

    def label_array(self, positive: str) -> np.ndarray:
        return np.array([lab == positive for lab in self.labels], dtype=np.int64)

    def features(self, layer, pooling="last", examples=None, k=8):
        return self._X[layer] if examples is None else self._X[layer][np.asarray(examples)]

    def stack(self, pooling="last", layers=None, examples=None, k=8):
        return np.stack([self.features(L, pooling, examples, k) for L in (layers or self.layers)])


def synthetic(layers: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    y = rng.permutation(np.arange(n) % 2)
    strength = np.linspace(0.0, 3.0, layers)[:, None, None]
    X = rng.normal(size=(layers, n, d)) + strength * (y[:, None] - 0.5) * v
    return X.astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lab.directions import probe, split_examples, sweep
    from lab.metrics import auroc

    X, y = synthetic(args.layers, args.n, args.d)
    cache = ArrayCache(X, ["trait" if t else "control" for t in y])
    train, test = split_examples(cache.ids, y, 0.25, seed=0)
    print(f"data: {args.layers} layers x {args.n} examples x {args.d} features "
          f"(train {len(train)}, test {len(test)}); torch threads {torch.get_num_threads()}")

    sweep(ArrayCache(X[:2, :40], cache.labels[:40]), "trait", n_boot=10)  # warm-up (imports, allocator)

    t0 = time.perf_counter()
    rows = sweep(cache, "trait", n_boot=args.n_boot)
    t_sweep = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = probe(X[:, train], y[train]).numpy()
    t_probe = time.perf_counter() - t0

    def sklearn_loop(tol: float) -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        scores = []
        for layer in range(args.layers):
            scaler = StandardScaler().fit(X[layer, train])
            clf = LogisticRegression(C=1.0, max_iter=10000, tol=tol).fit(scaler.transform(X[layer, train]), y[train])
            scores.append(auroc(clf.decision_function(scaler.transform(X[layer, test])), y[test]))
        return time.perf_counter() - t0, scores

    t_sklearn, sk_auroc = sklearn_loop(1e-4)   # sklearn's default tolerance
    t_sklearn_tight, _ = sklearn_loop(1e-10)   # converged as tightly as emlab's Newton

    ours_auroc = [auroc(X[layer, test] @ ours[layer], y[test]) for layer in range(args.layers)]
    gap = max(abs(a - b) for a, b in zip(ours_auroc, sk_auroc))
    best = {m: max((r for r in rows if r["method"] == m), key=lambda r: r["auroc"]) for m in dict.fromkeys(
        r["method"] for r in rows)}

    print(f"emlab sweep, 5 methods x {args.layers} layers + {args.n_boot}-replicate CIs: {t_sweep:7.2f} s")
    print(f"emlab probe only, {args.layers} layers batched:                 {t_probe:7.2f} s")
    print(f"sklearn LogisticRegression loop, {args.layers} layers (tol 1e-4):  {t_sklearn:7.2f} s")
    print(f"sklearn LogisticRegression loop, {args.layers} layers (tol 1e-10): {t_sklearn_tight:7.2f} s")
    print(f"ratio sklearn loop / emlab full sweep: {t_sklearn / t_sweep:.2f}x;  "
          f"sklearn loop / emlab probe: {t_sklearn / t_probe:.2f}x")
    print(f"max |AUROC(emlab probe) - AUROC(sklearn)| over layers: {gap:.4f}")
    for m, r in best.items():
        print(f"  best layer {m:9s}: L{r['layer']:<3d} AUROC {r['auroc']:.3f} "
              f"[{r['auroc_lo']:.3f}, {r['auroc_hi']:.3f}]  acc {r['acc']:.3f}  d {r['sep_sd']:.2f}")


if __name__ == "__main__":
    main()
