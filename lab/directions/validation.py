"""Checks on features and labels, and the small tensor helpers every direction method shares.

The one device rule of `lab.directions`: results live where the features live. `validate`
keeps the input's device (a numpy array is a CPU tensor), every tensor a method builds is
created with `device=X.device`, and so a sweep on CUDA features never touches the CPU
except to read back a handful of scalars.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int

from lab.core.errors import BadInput

MIN_PER_CLASS = 4        # fewer examples per class than this cannot support a direction
MIN_TEST_PER_CLASS = 2   # held-out examples per class needed for a meaningful AUROC

Features = Float[np.ndarray, "*layer n d"] | Float[torch.Tensor, "*layer n d"]
Labels = Int[np.ndarray, " n"] | Int[torch.Tensor, " n"]


def tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor stays where it is; anything else becomes a CPU tensor (never the default
    device: `torch.as_tensor` would move even a tensor to a `torch.device(...)` context's)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def validate(X: Features, y: Labels, min_per_class: int = MIN_PER_CLASS
             ) -> tuple[Float[torch.Tensor, "layer n d"], Float[torch.Tensor, " n"], bool]:
    """Check features and labels; return float64 tensors (layer, n, d), (n,) and whether X was 3-D.

    Both come back on the features' device (labels are moved there). Raises `BadInput` for:
    a shape that is not (n, d) or (layers, n, d), a length mismatch, labels other than 0/1,
    a single class, fewer than `min_per_class` examples in a class, and NaN/inf features
    (named by layer and example, so a bad cache row is easy to find).
    """
    Xt = tensor(X)
    yt = tensor(y).to(Xt.device)
    if Xt.ndim not in (2, 3):
        raise BadInput(f"features must be (n, d) or (layers, n, d), got shape {tuple(Xt.shape)}")
    if yt.ndim != 1:
        raise BadInput(f"labels must be 1-D, got shape {tuple(yt.shape)}")
    batched = Xt.ndim == 3
    Xt = Xt if batched else Xt.unsqueeze(0)
    if Xt.shape[1] != yt.shape[0]:
        raise BadInput(f"features hold {Xt.shape[1]} examples but there are {yt.shape[0]} labels")
    if not bool(((yt == 0) | (yt == 1)).all()):
        raise BadInput(f"labels must be 0/1, got values {torch.unique(yt)[:5].tolist()}")
    n1 = int(yt.sum())
    n0 = len(yt) - n1
    if n0 == 0 or n1 == 0:
        raise BadInput(f"labels hold one class only (all {int(yt[0]) if len(yt) else '-'}); a direction needs both")
    if min(n0, n1) < min_per_class:
        raise BadInput(f"too few examples: class 0 has {n0}, class 1 has {n1}; "
                       f"at least {min_per_class} per class are needed")
    Xt = Xt.to(torch.float64)
    finite = torch.isfinite(Xt)
    if not bool(finite.all()):
        layer, example, _ = (~finite).nonzero()[0].tolist()
        where = f"layer index {layer}, example {example}" if batched else f"example {example}"
        raise BadInput(f"features contain NaN or inf ({where})")
    return Xt, yt.to(torch.float64), batched


def rows_times(r: Float[torch.Tensor, "layer n"], Z: Float[torch.Tensor, "layer n d"]
               ) -> Float[torch.Tensor, "layer d"]:
    """Z^T r per layer, as a batched row-vector product: BLAS's fast layout (the einsum
    "lnd,ln->ld" runs ~20x slower on a CPU)."""
    return torch.bmm(r.unsqueeze(1), Z).squeeze(1)


def times_rows(Z: Float[torch.Tensor, "layer n d"], v: Float[torch.Tensor, "layer d"]
               ) -> Float[torch.Tensor, "layer n"]:
    """Z v per layer, as the row-vector product v^T Z^T (a plain batched mat-vec is ~4x slower on a CPU)."""
    return torch.bmm(v.unsqueeze(1), Z.transpose(1, 2)).squeeze(1)


def unit(V: Float[torch.Tensor, "layer d"], method: str) -> Float[torch.Tensor, "layer d"]:
    """Rows scaled to norm 1; `BadInput` naming the layer if a row is zero (no direction)."""
    norms = V.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        layer = int((norms.squeeze(-1) == 0).nonzero()[0])
        raise BadInput(f"{method}: no direction at layer index {layer} (the fitted vector is zero; "
                       "are the two classes' features identical?)")
    return V / norms


def rounding_bound(storage: np.dtype | torch.dtype, d: int) -> float:
    """How far, relative to a feature row's norm, two computations of the same row can differ by
    rounding alone: one unit in the last place of the storage dtype (fp16 2^-10, bf16 2^-7), or for
    fp32 storage the kernels' rounding, 4·sqrt(d)·eps (a d-term dot product rounds to ~sqrt(d)·eps
    of its scale; a layer adds a few). Another batch shape or padding picks other kernels."""
    eps = float(torch.finfo(storage).eps) if isinstance(storage, torch.dtype) else float(np.finfo(storage).eps)
    return max(eps, 4 * d ** 0.5 * float(np.finfo(np.float32).eps))


def classes_identical(X: Float[torch.Tensor, "layer n d"], y: Float[torch.Tensor, " n"], bound: float) -> bool:
    """Whether the two classes' mean features agree at every layer to within `bound` of the mean row
    norm: then they are the same features up to rounding (e.g. the last prompt token before paired
    answers, computed in batches padded to other widths) and no direction separates them."""
    m0, m1 = class_means(X, y)
    scale = X.norm(dim=-1).mean(dim=-1)
    return bool(((m1 - m0).norm(dim=-1) <= bound * scale).all())


def class_means(X: Float[torch.Tensor, "layer n d"], y: Float[torch.Tensor, " n"]
                ) -> tuple[Float[torch.Tensor, "layer d"], Float[torch.Tensor, "layer d"]]:
    """Per-layer means of class 0 and class 1."""
    L = X.shape[0]
    w1 = y / y.sum()
    w0 = (1 - y) / (1 - y).sum()
    return rows_times(w0.expand(L, -1), X), rows_times(w1.expand(L, -1), X)


def toward_class1(V: Float[torch.Tensor, "layer d"], X: Float[torch.Tensor, "layer n d"],
                  y: Float[torch.Tensor, " n"]) -> Float[torch.Tensor, "layer d"]:
    """Flip rows whose class-1 mean projects below the class-0 mean (sign convention)."""
    m0, m1 = class_means(X, y)
    gap = torch.einsum("ld,ld->l", V, m1 - m0)
    return V * torch.where(gap < 0, -1.0, 1.0).to(V.dtype).unsqueeze(-1)


def finish(V: Float[torch.Tensor, "layer d"], batched: bool, method: str) -> torch.Tensor:
    """Unit float32 rows, on V's device; (d,) again if the caller passed (n, d) features."""
    V = unit(V, method).to(torch.float32)
    return V if batched else V[0]
