"""Small, vectorised statistics for judging a direction: AUROC, separation, accuracy, CIs.

Every metric reduces the *last* axis (the examples) and broadcasts over any leading axes,
so one call scores many (method, layer, bootstrap replicate) projections at once:

    scores: (methods, layers, n)    y: (n,)          ->  auroc: (methods, layers)
    scores: (layers, B, n)          y: (B, n)        ->  auroc: (layers, B)

`bootstrap_ci` relies on that: it draws all replicates as one index matrix (B, n), gathers
every array with it and calls the metric once, instead of looping B times in Python.

Numpy arrays in, numpy out; torch tensors in, torch tensors out, computed on the tensors'
device (so a sweep on CUDA scores and bootstraps there). The two backends give the same
numbers: numpy is the faster one on a CPU (it radix-sorts 16-bit ranks, ~15x faster than
torch's CPU sort), torch the one for GPUs. Bootstrap indices always come from numpy's
seeded generator on the host and are moved to the data, so a seed means the same
replicates on every device. Labels are 0/1 with 1 = the "trait" (e.g. misaligned) class.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from jaxtyping import Float, Int

from lab.core.errors import BadInput

# Bootstrap gathers are chunked so that one chunk holds at most this many elements.
_BOOT_CHUNK_ELEMENTS = 1 << 24


def _binary(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.size and not np.isin(y, (0, 1)).all():
        raise BadInput(f"labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
    return y.astype(np.float64)


def _broadcast(scores, y) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    y = _binary(y)
    if scores.shape[-1:] != y.shape[-1:]:
        raise BadInput(f"scores have {scores.shape[-1:]} examples but labels {y.shape[-1:]}")
    if not np.isfinite(scores).all():
        raise BadInput("scores contain NaN or inf")
    return np.broadcast_arrays(scores, y)


def _broadcast_torch(scores: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    scores = scores.to(torch.float64)
    y = _on(y, scores.device)
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise BadInput(f"labels must be 0/1, got values {torch.unique(y)[:5].tolist()}")
    if scores.shape[-1:] != y.shape[-1:]:
        raise BadInput(f"scores have {tuple(scores.shape[-1:])} examples but labels {tuple(y.shape[-1:])}")
    if not bool(torch.isfinite(scores).all()):
        raise BadInput("scores contain NaN or inf")
    return torch.broadcast_tensors(scores, y.to(torch.float64))


def _class_means(proj, y):
    """Per-class counts and means along the last axis (nan where a class is empty)."""
    n1 = y.sum(-1)
    n0 = y.shape[-1] - n1
    if isinstance(proj, torch.Tensor):  # 0/0 is nan in torch without a warning
        return n0, n1, (proj * (1 - y)).sum(-1) / n0, (proj * y).sum(-1) / n1
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = (proj * y).sum(-1) / n1
        m0 = (proj * (1 - y)).sum(-1) / n0
    return n0, n1, m0, m1


def dense_ranks(scores: Float[np.ndarray, "*batch n"]) -> Int[np.ndarray, "*batch n"]:
    """Dense ranks 0..k-1 along the last axis (ties share a rank): int16 if n < 2^14, else int64.

    A monotone transform, so AUROC is unchanged. Bootstrapping AUROC on these ranks instead
    of raw scores lets every replicate sort small integers (numpy radix-sorts 16-bit ints,
    ~10x faster than float sorting): `bootstrap_ci(auroc, dense_ranks(scores), y)`.
    """
    if isinstance(scores, torch.Tensor):
        return _dense_ranks_torch(scores)
    s = np.asarray(scores)
    if s.dtype == np.int16 and s.size and 0 <= s.min() and s.max() < 2**14:  # already ranks: keep
        return s
    s = np.asarray(s, dtype=np.float64)
    if not np.isfinite(s).all():
        raise BadInput("scores contain NaN or inf")
    order = np.argsort(s, axis=-1)
    s_sorted = np.take_along_axis(s, order, -1)
    new = np.zeros(s.shape, dtype=np.int64)
    new[..., 1:] = s_sorted[..., 1:] != s_sorted[..., :-1]
    dtype = np.int16 if s.shape[-1] < 2**14 else np.int64  # 2*rank+1 must fit (see auroc)
    ranks = np.empty(s.shape, dtype=dtype)
    np.put_along_axis(ranks, order, np.cumsum(new, axis=-1).astype(dtype), -1)
    return ranks


def auroc(scores: Float[np.ndarray, "*batch n"], y: Int[np.ndarray, "*batch n"]) -> Float[np.ndarray, "*batch"]:
    """Area under the ROC curve: P(score of a random 1 > score of a random 0), ties count 1/2.

    Mann-Whitney form, from two sorts of the keys 2*rank + label. Sorting with negatives
    first inside each tie group counts, for every positive, the negatives scored <= it;
    sorting with positives first counts those scored < it. Their average is exactly the
    tie-corrected U statistic, so the result equals `sklearn.metrics.roc_auc_score`, ties
    included. Rows holding one class only give nan (AUROC is undefined there); a plain 1-D
    call with one class raises `BadInput`.
    """
    if isinstance(scores, torch.Tensor):
        return _auroc_torch(scores, y)
    ranks = dense_ranks(scores)
    y = _binary(y)
    if ranks.shape[-1:] != y.shape[-1:]:
        raise BadInput(f"scores have {ranks.shape[-1]} examples but labels {y.shape[-1:]}")
    n = ranks.shape[-1]
    if ranks.ndim == 1 and y.ndim == 1 and y.sum() in (0, n):
        raise BadInput("AUROC needs both classes among the labels")
    yi = y.astype(ranks.dtype)
    n1 = np.broadcast_to(y.sum(-1), np.broadcast_shapes(ranks.shape, y.shape)[:-1])
    n0 = n - n1
    positions = np.arange(n, dtype=np.float64)

    def negatives_below_positives(keys: np.ndarray, positive_bit: int) -> np.ndarray:
        # In sorted order a positive at position j has j - (#positives before it) negatives
        # below it; summed over positives that is sum(j) - n1(n1-1)/2 (no cumsum needed).
        is_pos = ((np.sort(keys, axis=-1) & 1) == positive_bit).astype(np.float64)
        return is_pos @ positions - n1 * (n1 - 1) / 2.0

    le = negatives_below_positives(2 * ranks + yi, 1)        # ties: negatives sort first
    lt = negatives_below_positives(2 * ranks + (1 - yi), 0)  # ties: positives sort first
    with np.errstate(invalid="ignore", divide="ignore"):
        return (le + lt) / 2.0 / (n1 * n0)


def separation(proj: Float[np.ndarray, "*batch n"], y: Int[np.ndarray, "*batch n"]
               ) -> tuple[Float[np.ndarray, "*batch"], Float[np.ndarray, "*batch"]]:
    """Gap between the class means of a projection: (Cohen's d, raw gap).

    raw = mean(proj | y=1) - mean(proj | y=0), in the projection's own units (for a unit
    direction: residual-stream units, comparable to steering strengths). Cohen's d divides
    it by the pooled within-class SD, sqrt(((n1-1)s1^2 + (n0-1)s0^2) / (n-2)), which makes
    layers with different activation scales comparable. Positive when class 1 lies on the
    positive side, as every fitted direction promises.
    """
    if isinstance(proj, torch.Tensor):
        p, yb = _broadcast_torch(proj, y)
        n0, n1, m0, m1 = _class_means(p, yb)
        resid = p - torch.where(yb == 1, m1[..., None], m0[..., None])
        raw = m1 - m0
        return raw / torch.sqrt((resid ** 2).sum(-1) / (n0 + n1 - 2)), raw
    p, yb = _broadcast(proj, y)
    n0, n1, m0, m1 = _class_means(p, yb)
    resid = p - np.where(yb == 1, m1[..., None], m0[..., None])
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled_sd = np.sqrt((resid ** 2).sum(-1) / (n0 + n1 - 2))
        raw = m1 - m0
        return raw / pooled_sd, raw


def midpoint_threshold(proj: Float[np.ndarray, "*batch n"], y: Int[np.ndarray, "*batch n"]) -> Float[np.ndarray, "*batch"]:
    """Halfway between the two class means: the natural 1-D decision threshold (fit on train)."""
    p, yb = _broadcast_torch(proj, y) if isinstance(proj, torch.Tensor) else _broadcast(proj, y)
    _, _, m0, m1 = _class_means(p, yb)
    return (m0 + m1) / 2.0


def accuracy_at_midpoint(proj: Float[np.ndarray, "*batch n"], y: Int[np.ndarray, "*batch n"],
                         threshold: float | Float[np.ndarray, "*batch"] | None = None) -> Float[np.ndarray, "*batch"]:
    """Accuracy of the rule `predict 1 iff proj > threshold`.

    Pass the threshold fitted on training data (`midpoint_threshold(proj_train, y_train)`)
    to score held-out data honestly; without one, the midpoint of `proj`'s own class means
    is used (an in-sample number). The rule follows the sign convention: class 1 is
    expected on the positive side, so a direction pointing the wrong way scores < 0.5.
    """
    p, yb = _broadcast(proj, y)
    thr = midpoint_threshold(p, yb) if threshold is None else np.asarray(threshold, dtype=np.float64)
    return ((p > thr[..., None]) == (yb == 1)).mean(-1)


def bootstrap_indices(n: int, n_boot: int, seed: int = 0, strata: np.ndarray | None = None
                      ) -> Int[np.ndarray, "boot n"]:
    """Row indices of `n_boot` bootstrap resamples, drawn in one go.

    With `strata` (e.g. the labels) each stratum is resampled within itself, so every
    replicate keeps the original class counts: no replicate loses a class, and the CI
    reflects sampling noise rather than class-balance noise.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise BadInput(f"strata must have shape ({n},), got {strata.shape}")
    idx = np.empty((n_boot, n), dtype=np.int64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        idx[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return idx


def bootstrap_ci(fn: Callable[..., np.ndarray], *arrays: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, strata: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and percentile bootstrap CI of `fn(*arrays)`: (value, lo, hi).

    Rows (the last axis of every array, which must agree) are resampled with replacement;
    leading axes are kept, so `bootstrap_ci(auroc, scores_LxN, y_N)` returns one CI per
    layer. `fn` must reduce the last axis and broadcast over leading ones (every metric
    here does): it is called once on the original arrays and once per chunk of replicates,
    with the replicate axis inserted just before the row axis. Pass `strata=y` for a
    stratified bootstrap. Replicates where `fn` is undefined (nan) are ignored.
    """
    if arrays and isinstance(arrays[0], torch.Tensor):
        return _bootstrap_ci_torch(fn, arrays, n_boot, seed, alpha, strata)
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise BadInput("bootstrap_ci needs at least one array")
    n = arrays[0].shape[-1]
    if any(a.shape[-1] != n for a in arrays):
        raise BadInput(f"arrays disagree on the number of rows: {[a.shape for a in arrays]}")
    if not 0 < alpha < 1:
        raise BadInput(f"alpha must be in (0, 1), got {alpha}")
    value = np.asarray(fn(*arrays), dtype=np.float64)
    idx = bootstrap_indices(n, n_boot, seed, strata)
    per_replicate = max(max(a.size for a in arrays), 1)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // per_replicate)
    boots = [np.asarray(fn(*(a[..., idx[i: i + chunk]] for a in arrays)), dtype=np.float64)
             for i in range(0, n_boot, chunk)]
    boot = np.concatenate(boots, axis=-1)
    with warnings.catch_warnings():  # an all-nan row (undefined everywhere) is reported as nan
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2], axis=-1)
    return value, lo, hi



# --------------------------------------------------------------------------- torch backend


def _on(x, device: torch.device) -> torch.Tensor:
    """x as a tensor on `device` (numpy goes through the CPU, never the default device)."""
    return (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).to(device)


def _dense_ranks_torch(scores: torch.Tensor) -> torch.Tensor:
    """`dense_ranks` on the tensor's device (int64)."""
    if not scores.is_floating_point():
        return scores.to(torch.int64)
    if not bool(torch.isfinite(scores).all()):
        raise BadInput("scores contain NaN or inf")
    s_sorted, order = torch.sort(scores, dim=-1)
    new = torch.zeros(scores.shape, dtype=torch.int64, device=scores.device)
    new[..., 1:] = s_sorted[..., 1:] != s_sorted[..., :-1]
    return torch.empty_like(new).scatter_(-1, order, new.cumsum(-1))


def _auroc_torch(scores: torch.Tensor, y) -> torch.Tensor:
    """`auroc` on the tensor's device: the same two sorts of 2*rank + label."""
    ranks = _dense_ranks_torch(scores)
    y = _on(y, ranks.device)
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise BadInput(f"labels must be 0/1, got values {torch.unique(y)[:5].tolist()}")
    if ranks.shape[-1:] != y.shape[-1:]:
        raise BadInput(f"scores have {ranks.shape[-1]} examples but labels {tuple(y.shape[-1:])}")
    n = ranks.shape[-1]
    yi = y.to(torch.int64)
    if ranks.ndim == 1 and y.ndim == 1 and int(yi.sum()) in (0, n):
        raise BadInput("AUROC needs both classes among the labels")
    n1 = yi.sum(-1).to(torch.float64).expand(torch.broadcast_shapes(ranks.shape, y.shape)[:-1])
    positions = torch.arange(n, dtype=torch.float64, device=ranks.device)

    def negatives_below_positives(keys: torch.Tensor, positive_bit: int) -> torch.Tensor:
        is_pos = ((torch.sort(keys, dim=-1).values & 1) == positive_bit).to(torch.float64)
        return is_pos @ positions - n1 * (n1 - 1) / 2.0

    le = negatives_below_positives(2 * ranks + yi, 1)
    lt = negatives_below_positives(2 * ranks + (1 - yi), 0)
    return (le + lt) / 2.0 / (n1 * (n - n1))


def _nanquantile_torch(x: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """numpy's default (linear) nanquantile over the last axis; torch's own refuses > 16M elements."""
    s = torch.sort(x, dim=-1).values  # nan sorts last
    k = (~torch.isnan(s)).sum(-1)
    out = []
    for q in qs:
        pos = q * (k - 1).clamp(min=0).to(torch.float64)
        lo = pos.floor().to(torch.int64)
        hi = (lo + 1).clamp(max=(k - 1).clamp(min=0))
        a, b = s.gather(-1, lo.unsqueeze(-1)).squeeze(-1), s.gather(-1, hi.unsqueeze(-1)).squeeze(-1)
        val = a + (b - a) * (pos - lo)
        out.append(torch.where(k > 0, val, torch.full_like(val, float("nan"))))
    return out


def _bootstrap_ci_torch(fn, arrays, n_boot: int, seed: int, alpha: float, strata):
    """`bootstrap_ci` for tensors: host-drawn indices, gathers and metric on the tensors' device."""
    device = arrays[0].device
    arrays = tuple(_on(a, device) for a in arrays)
    n = arrays[0].shape[-1]
    if any(a.shape[-1] != n for a in arrays):
        raise BadInput(f"arrays disagree on the number of rows: {[tuple(a.shape) for a in arrays]}")
    if not 0 < alpha < 1:
        raise BadInput(f"alpha must be in (0, 1), got {alpha}")
    value = fn(*arrays).to(torch.float64)
    strata = strata.cpu().numpy() if isinstance(strata, torch.Tensor) else strata
    idx = torch.from_numpy(bootstrap_indices(n, n_boot, seed, strata)).to(device)
    per_replicate = max(max(a.numel() for a in arrays), 1)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // per_replicate)
    boot = torch.cat([fn(*(a[..., idx[i: i + chunk]] for a in arrays)).to(torch.float64)
                      for i in range(0, n_boot, chunk)], dim=-1)
    lo, hi = _nanquantile_torch(boot, (alpha / 2, 1 - alpha / 2))
    return value, lo, hi
