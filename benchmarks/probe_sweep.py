"""Time emlab's all-layer direction fits against a per-layer sklearn probe loop, side by side.

Synthetic data shaped like a model's cache, a class shift along one direction that grows
with depth (layer 0: none). Two sizes:

    smollm2  30 layers x  400 examples x  576 features (SmolLM2-135M), 300 train / 100 test
    7b       32 layers x 4000 examples x 4096 features (a 7B model),   3000 train / 1000 test

Per size, on the CPU and (where present) on CUDA:

* emlab probe alone: `lab.directions.probe` on all layers in one batch (features already
  on the device; the timing includes standardisation and moving the result back).
* emlab full sweep: `lab.directions.fit_contrast`, 5 methods (mean_diff, probe, pca,
  gradient, random) x all layers + 1000-replicate bootstrap CIs of AUROC, accuracy and
  Cohen's d (features moved to the device inside).
* sklearn: for each layer, StandardScaler + LogisticRegression(C=1, default tol 1e-4),
  on the CPU: the reference every emlab time is divided by.

Both fit the same training split and score AUROC on the same held-out examples; the
largest per-layer AUROC gap between emlab's probe and sklearn's is printed per device.

    python benchmarks/probe_sweep.py                                # both sizes, every device present
    python benchmarks/probe_sweep.py --sizes smollm2 --devices cpu  # the quick CPU check
    python benchmarks/probe_sweep.py --skip sweep@cpu@7b            # leave out slow cells
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import lab  # noqa: F401  -- first: sets OMP_WAIT_POLICY=PASSIVE before torch loads (else 10x+ slowdowns)

SIZES = {"smollm2": (30, 400, 576), "7b": (32, 4000, 4096)}


class ArrayCache:
    """Just enough of `lab.cache.ActivationCache` (a `lab.directions.CacheLike`) over an array."""

    def __init__(self, X: np.ndarray, labels: list[str]):
        self._X = X
        self.labels = labels
        self.ids = [f"ex{i:05d}" for i in range(len(labels))]
        self.layers = list(range(X.shape[0]))
        self.groups = None
        self.n_layers, self.d_model = X.shape[0], X.shape[2]
        self.model_fingerprint = "synthetic"
        self.attrs = {"key": "synthetic"}

    def label_array(self, positive: str) -> np.ndarray:
        return np.array([lab == positive for lab in self.labels], dtype=np.int64)

    def stack(self, pooling="last", layers=None, examples=None, k=8):
        X = self._X if layers in (None, self.layers) else self._X[np.asarray(layers)]
        return X if examples is None else X[:, np.asarray(examples)]


def synthetic(layers: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import torch

    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v /= v.norm()
    y = torch.randperm(n, generator=g) % 2
    X = torch.randn(layers, n, d, generator=g)
    X += torch.linspace(0.0, 3.0, layers)[:, None, None] * (y[:, None] - 0.5) * v
    return X.numpy(), y.numpy()


def timed(fn, sync) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"], help="cuda is skipped where absent")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--skip", nargs="*", default=[], help="cells to leave out, e.g. sweep@cpu@7b sklearn@7b")
    args = parser.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lab.directions import fit_contrast, probe, split_examples
    from lab.stats.metrics import auroc

    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, devices {devices}"
          + (f" ({torch.cuda.get_device_name()})" if "cuda" in devices else ""))
    warm = synthetic(2, 64, 32)
    for dev in devices:  # imports, CUDA context, cuBLAS/cuSOLVER handles, allocator
        fit_contrast(ArrayCache(warm[0], ["t" if t else "c" for t in warm[1]]), "t", n_boot=10, device=dev)
        probe(torch.from_numpy(warm[0]).to(dev), torch.from_numpy(warm[1]).to(dev), solver="lbfgs")

    table = []
    for size in args.sizes:
        L, n, d = SIZES[size]
        t0 = time.perf_counter()
        X, y = synthetic(L, n, d)
        cache = ArrayCache(X, ["trait" if t else "control" for t in y])
        train, test = split_examples(cache.ids, y, 0.25, seed=0)
        print(f"\n== {size}: {L} layers x {n} examples x {d} features (train {len(train)}, test {len(test)}); "
              f"data made in {time.perf_counter() - t0:.1f} s")

        t_sk = sk_auroc = None
        if f"sklearn@{size}" not in args.skip:
            t0 = time.perf_counter()
            sk_auroc = []
            for layer in range(L):
                scaler = StandardScaler().fit(X[layer, train])
                clf = LogisticRegression(C=1.0, max_iter=10000).fit(scaler.transform(X[layer, train]), y[train])
                sk_auroc.append(auroc(clf.decision_function(scaler.transform(X[layer, test])), y[test]))
            t_sk = time.perf_counter() - t0
            print(f"sklearn StandardScaler + LogisticRegression loop, {L} layers, CPU: {t_sk:8.2f} s")

        for dev in devices:
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
            row = {"size": size, "device": dev, "sklearn": t_sk}
            if f"probe@{dev}@{size}" not in args.skip:
                Xtr = torch.from_numpy(X[:, train]).to(dev)
                ytr = torch.from_numpy(y[train]).to(dev)
                row["probe"], W = timed(lambda: probe(Xtr, ytr).cpu().numpy(), sync)
                del Xtr
                ours = [auroc(X[layer, test] @ W[layer], y[test]) for layer in range(L)]
                row["gap"] = max(abs(a - b) for a, b in zip(ours, sk_auroc)) if sk_auroc else None
                print(f"emlab probe alone, {L} layers batched, {dev}: {row['probe']:8.2f} s"
                      + (f"   max |AUROC - sklearn| {row['gap']:.4f}" if row["gap"] is not None else ""))
            if f"sweep@{dev}@{size}" not in args.skip:
                row["sweep"], fit = timed(lambda: fit_contrast(cache, "trait", n_boot=args.n_boot, device=dev), sync)
                print(f"emlab full sweep (5 methods, {args.n_boot}-replicate CIs), {dev}: {row['sweep']:8.2f} s")
                for m in dict.fromkeys(r["method"] for r in fit.rows):
                    r = max((r for r in fit.rows if r["method"] == m), key=lambda r: r["auroc"])
                    print(f"  best layer {m:9s}: L{r['layer']:<3d} AUROC {r['auroc']:.3f} "
                          f"[{r['auroc_lo']:.3f}, {r['auroc_hi']:.3f}]  acc {r['acc']:.3f}  d {r['sep_sd']:.2f}")
                del fit
            table.append(row)
            if dev == "cuda":
                torch.cuda.empty_cache()

    def cell(t):
        return "-" if t is None else f"{t:.2f} s"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.1f}x"

    print("\n| size | device | sklearn loop (CPU) | emlab probe | sklearn / probe | max AUROC gap | "
          "emlab full sweep | sklearn / sweep |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        gap = r.get("gap")
        print(f"| {r['size']} | {r['device']} | {cell(r['sklearn'])} | {cell(r.get('probe'))} | "
              f"{ratio(r['sklearn'], r.get('probe'))} | {'-' if gap is None else f'{gap:.4f}'} | "
              f"{cell(r.get('sweep'))} | {ratio(r['sklearn'], r.get('sweep'))} |")


if __name__ == "__main__":
    main()
