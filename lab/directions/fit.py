"""Fit a contrast: split, fit every method on all layers, score on held-out examples.

    fit = fit_contrast(cache, "misaligned", ["mean_diff", "probe"], "mean_response",
                       negative_label="aligned", contrast="general_answers")
    fit.rows                 # one dict per (method, layer): held-out AUROC, accuracy, Cohen's d, CIs
    fit.directions["probe"]  # a `Direction`; its `record` holds the split ids and scores
    fit.split.test_ids       # what no direction of this fit saw
    fit.score({"theirs": other.vectors})   # other directions on this fit's held-out split

The features are stacked from the cache once and moved to `device`; fitting, projection,
and the bootstrap all run there. Only the rows (floats) and the directions (CPU float32,
the file format) come back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from lab.directions.record import HOOK_TEMPLATE, Direction, FitRecord
from lab.directions.solvers import DEFAULT_METHODS, fit_methods
from lab.directions.splits import CacheLike, Split, split_contrast
from lab.directions.validation import classes_identical, rounding_bound, tensor
from lab.core.errors import BadInput
from lab.stats.metrics import auroc, bootstrap_ci, dense_ranks, midpoint_threshold, separation

NUMPY_STATS_ON = ("cpu",)   # device types whose statistics run in numpy (faster there); others in torch
Row = dict[str, Any]   # a table row (written with lab.core.io.write_rows): method, layer, pooling, auroc, auroc_lo, ...


@dataclass(eq=False)
class Fit:
    """The result of `fit_contrast`: held-out rows, the fitted directions and the split."""

    rows: list[Row]
    directions: dict[str, Direction]
    split: Split
    layers: list[int]
    pooling: str
    features: Float[torch.Tensor, "layer n d"] = field(repr=False)   # the split's rows, on the fit's device
    n_boot: int = 1000

    def score(self, vectors: dict[str, Float[torch.Tensor, "layer d"]], n_boot: int | None = None,
              seed: int | None = None) -> list[Row]:
        """Rows for other directions (e.g. another model's) on this fit's held-out split,
        with this fit's training split setting the accuracy threshold."""
        s = self.split
        X = self.features
        return evaluate(vectors, X[:, s.train], s.y[s.train], X[:, s.test], s.y[s.test], self.layers, self.pooling,
                        self.n_boot if n_boot is None else n_boot, s.seed if seed is None else seed)


def fit_contrast(cache: CacheLike, positive_label: str, methods: Sequence[str] = DEFAULT_METHODS,
                 pooling: str = "last", test_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000, *,
                 stratify: bool = True, negative_label: str | None = None, contrast: str | None = None,
                 device: str | torch.device | None = None, split: Split | None = None) -> Fit:
    """Fit every method on the training split of every layer; score each on held-out examples.

    Class 1 is the examples labelled `positive_label`; class 0 is every other example, or
    only those labelled `negative_label` when it is given (others are left out).
    `fit.rows` has one row per (method, layer) with keys: method, layer, pooling, auroc,
    auroc_lo, auroc_hi, acc, acc_lo, acc_hi, sep_sd, sep_sd_lo, sep_sd_hi, sep_raw,
    n_train, n_test (CIs: 95% stratified bootstrap of the test rows). Each direction's
    `record` holds its per-layer held-out scores, best layer by AUROC and the split.
    `contrast` names the directions (default: `positive_label`). `device` (default CPU)
    is where the features go and every computation runs. `split` (default: `split_contrast`'s)
    is a split made by the caller over the same examples (e.g. by question, `from_answers`).
    """
    split = split or split_contrast(cache, positive_label, negative_label, pooling, test_fraction, seed, stratify)
    layers = list(cache.layers)
    examples = None if negative_label is None else split.rows
    X = torch.from_numpy(np.asarray(cache.stack(pooling, layers=layers, examples=examples), dtype=np.float32))
    X = X.to(device or "cpu")
    train, test, y = split.train, split.test, split.y
    y_train = torch.from_numpy(y[train]).to(X.device)
    storage = getattr(cache, "storage_dtype", "float32")  # features are read as fp32 from this dtype
    storage = getattr(torch, storage) if isinstance(storage, str) else storage
    if classes_identical(X[:, train], y_train.to(X.dtype), rounding_bound(storage, X.shape[-1])):
        raise BadInput(f"the two classes' {pooling} features are identical up to rounding: no direction separates them")
    fitted = fit_methods(X[:, train], y_train, methods, seed)
    rows = evaluate(fitted, X[:, train], y[train], X[:, test], y[test], layers, pooling, n_boot, seed)
    directions = {}
    for m, V in fitted.items():
        mine = [r for r in rows if r["method"] == m]
        record = FitRecord(
            method=m, pooling=pooling, contrast=contrast or positive_label, data_hash=split.data_hash,
            positive_label=positive_label, negative_label=negative_label, layers=tuple(layers),
            heldout_auroc=tuple(r["auroc"] for r in mine), heldout_acc=tuple(r["acc"] for r in mine),
            heldout_sep_sd=tuple(r["sep_sd"] for r in mine), best_layer=max(mine, key=lambda r: r["auroc"])["layer"],
            split_seed=seed, test_fraction=test_fraction, stratify=stratify,
            train_ids=split.train_ids, test_ids=split.test_ids)
        directions[m] = Direction(V, layers, n_layers=cache.n_layers, d_model=cache.d_model,
                                  model_fingerprint=cache.model_fingerprint, hook=HOOK_TEMPLATE, record=record)
    return Fit(rows, directions, split, layers, pooling, X, n_boot)


def evaluate(vectors: dict[str, Float[torch.Tensor, "layer d"]], X_train, y_train, X_test, y_test,
             layers: Sequence[int], pooling: str = "last", n_boot: int = 1000, seed: int = 0) -> list[Row]:
    """Held-out scores of directions, one row per (method, layer), computed on X_test's device.

    The accuracy threshold is the midpoint of the *training* class means of the projection
    (rule: class 1 above it). AUROC, accuracy and Cohen's d get percentile CIs from one
    stratified bootstrap of the test rows, shared by every (method, layer), so differences
    between rows are not bootstrap noise. On a CPU the statistics run in numpy (faster
    there), on a GPU in torch; both give the same numbers.
    """
    Xte = tensor(X_test)
    dev = Xte.device
    names = list(vectors)
    d = Xte.shape[-1]
    V = torch.stack([tensor(vectors[m]).to(dev).reshape(len(layers), -1).to(torch.float64) for m in names])
    Xtr = tensor(X_train).to(dev).reshape(len(layers), -1, d).to(torch.float64)
    Xte = Xte.reshape(len(layers), -1, d).to(torch.float64)
    ytr, yte = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    if yte.min() == yte.max():
        raise BadInput("the test split holds one class only; AUROC is undefined")
    P_train = torch.bmm(V.transpose(0, 1), Xtr.transpose(1, 2)).transpose(0, 1)   # (method, layer, n_train)
    P_test = torch.bmm(V.transpose(0, 1), Xte.transpose(1, 2)).transpose(0, 1)
    if dev.type in NUMPY_STATS_ON:
        P_train, P_test, ytr_, yte_ = P_train.numpy(), P_test.numpy(), ytr, yte
    else:
        ytr_, yte_ = torch.from_numpy(ytr).to(dev), torch.from_numpy(yte).to(dev)
    threshold = midpoint_threshold(P_train, ytr_)
    hit = (P_test > threshold[..., None]) == (yte_ == 1)
    correct = hit.astype(np.float64) if isinstance(hit, np.ndarray) else hit.to(torch.float64)
    ci = dict(n_boot=n_boot, seed=seed, strata=yte)
    au, au_lo, au_hi = bootstrap_ci(auroc, dense_ranks(P_test), yte_, **ci)
    acc, acc_lo, acc_hi = bootstrap_ci(lambda c: c.mean(-1), correct, **ci)
    sd, sd_lo, sd_hi = bootstrap_ci(lambda p, t: separation(p, t)[0], P_test, yte_, **ci)
    raw = separation(P_test, yte_)[1]
    stats = [np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
             for x in (au, au_lo, au_hi, acc, acc_lo, acc_hi, sd, sd_lo, sd_hi, raw)]
    au, au_lo, au_hi, acc, acc_lo, acc_hi, sd, sd_lo, sd_hi, raw = stats
    rows = []
    for i, m in enumerate(names):
        for j, L in enumerate(layers):
            rows.append({
                "method": m, "layer": int(L), "pooling": pooling,
                "auroc": float(au[i, j]), "auroc_lo": float(au_lo[i, j]), "auroc_hi": float(au_hi[i, j]),
                "acc": float(acc[i, j]), "acc_lo": float(acc_lo[i, j]), "acc_hi": float(acc_hi[i, j]),
                "sep_sd": float(sd[i, j]), "sep_sd_lo": float(sd_lo[i, j]), "sep_sd_hi": float(sd_hi[i, j]),
                "sep_raw": float(raw[i, j]), "n_train": int(len(ytr)), "n_test": int(len(yte)),
            })
    return rows
