"""Contrast directions in the residual stream: fit, compare, save, load, project.

A *direction* is one unit vector per layer that separates two groups of examples, e.g.
misaligned vs aligned answers. Five interchangeable methods find it; all of them take
features `X` of shape (n, d) or (layers, n, d) and 0/1 labels `y`, work on every layer at
once, and return unit vectors (d,) or (layers, d) as float32 torch tensors. The sign is
always fixed so that class 1 (the "trait" side, e.g. misaligned) projects *higher*.

    mean_diff  difference of class means. The classic steering vector; optimal when
               the noise is isotropic, blind to correlated noise.
    probe      L2-regularised logistic regression on standardised features (the
               sklearn `LogisticRegression(C=1)` objective, solved by batched Newton).
               The boundary normal w is mapped back to raw space as w / sigma. Accounts
               for the noise covariance, so it can differ from mean_diff.
    pca        first principal component of the pooled data centred at the midpoint of
               the two class means. Unsupervised apart from the centring and the sign.
    gradient   a 1-D projection plus bias trained by plain accelerated gradient descent
               on the logistic loss, in raw (not standardised) geometry, stopped after a
               fixed number of steps (early stopping is its only regulariser).
    random     a seeded Gaussian unit vector: the chance baseline (arbitrary sign).

`sweep(cache, "misaligned")` splits the cache's examples into train/test by id, fits every
method on the training split for all layers, and scores each (method, layer) on the
held-out split (AUROC, accuracy at the train midpoint, separation), with bootstrap CIs.
`Direction` carries the vectors plus their provenance and round-trips through safetensors.

Features come from `lab.cache.ActivationCache`, which already leaves out position 0 (BOS).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from lab.data import split_ids
from lab.errors import BadInput, IncompatibleError, IntegrityError
from lab.io import sha256_json
from lab.metrics import auroc, bootstrap_ci, dense_ranks, midpoint_threshold, separation

MIN_PER_CLASS = 4        # fewer examples per class than this cannot support a direction
MIN_TEST_PER_CLASS = 2   # held-out examples per class needed for a meaningful AUROC
HOOK_TEMPLATE = "blocks.{L}.hook_resid_post"
FORMAT = "emlab-direction"
VERSION = 1

Features = Float[np.ndarray, "*layer n d"] | Float[torch.Tensor, "*layer n d"]
Labels = Int[np.ndarray, " n"] | Int[torch.Tensor, " n"]

# --------------------------------------------------------------------------- validation


def validate(X: Features, y: Labels, min_per_class: int = MIN_PER_CLASS
             ) -> tuple[Float[torch.Tensor, "layer n d"], Float[torch.Tensor, " n"], bool]:
    """Check features and labels; return float64 tensors (layer, n, d), (n,) and whether X was 3-D.

    Raises `BadInput` for: a shape that is not (n, d) or (layers, n, d), a length mismatch,
    labels other than 0/1, a single class, fewer than `min_per_class` examples in a class,
    and NaN/inf features (named by layer and example, so a bad cache row is easy to find).
    """
    Xt = torch.as_tensor(X)
    yt = torch.as_tensor(y)
    if Xt.ndim not in (2, 3):
        raise BadInput(f"features must be (n, d) or (layers, n, d), got shape {tuple(Xt.shape)}")
    if yt.ndim != 1:
        raise BadInput(f"labels must be 1-D, got shape {tuple(yt.shape)}")
    batched = Xt.ndim == 3
    Xt = Xt if batched else Xt.unsqueeze(0)
    if Xt.shape[1] != yt.shape[0]:
        raise BadInput(f"features hold {Xt.shape[1]} examples but there are {yt.shape[0]} labels")
    if not ((yt == 0) | (yt == 1)).all():
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
    if not finite.all():
        layer, example, _ = (~finite).nonzero()[0].tolist()
        where = f"layer index {layer}, example {example}" if batched else f"example {example}"
        raise BadInput(f"features contain NaN or inf ({where})")
    return Xt, yt.to(torch.float64), batched


def _unit(V: Float[torch.Tensor, "layer d"], method: str) -> Float[torch.Tensor, "layer d"]:
    norms = V.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        layer = int((norms.squeeze(-1) == 0).nonzero()[0])
        raise BadInput(f"{method}: no direction at layer index {layer} (the fitted vector is zero; "
                       "are the two classes' features identical?)")
    return V / norms


def _toward_class1(V: Float[torch.Tensor, "layer d"], X: Float[torch.Tensor, "layer n d"],
                   y: Float[torch.Tensor, " n"]) -> Float[torch.Tensor, "layer d"]:
    """Flip rows whose class-1 mean projects below the class-0 mean (sign convention)."""
    m0, m1 = _class_means(X, y)
    gap = torch.einsum("ld,ld->l", V, m1 - m0)
    return V * torch.where(gap < 0, -1.0, 1.0).to(V.dtype).unsqueeze(-1)


def _class_means(X: Float[torch.Tensor, "layer n d"], y: Float[torch.Tensor, " n"]):
    w1 = y / y.sum()
    w0 = (1 - y) / (1 - y).sum()
    return torch.einsum("lnd,n->ld", X, w0), torch.einsum("lnd,n->ld", X, w1)


def _finish(V: Float[torch.Tensor, "layer d"], batched: bool, method: str) -> torch.Tensor:
    V = _unit(V, method).to(torch.float32)
    return V if batched else V[0]


# --------------------------------------------------------------------------- methods


def mean_diff(X: Features, y: Labels, *, seed: int = 0) -> Float[torch.Tensor, "*layer d"]:
    """Unit vector along mean(X | y=1) - mean(X | y=0), per layer. `seed` is unused."""
    Xt, yt, batched = validate(X, y)
    m0, m1 = _class_means(Xt, yt)
    return _finish(m1 - m0, batched, "mean_diff")


def probe(X: Features, y: Labels, *, seed: int = 0, C: float = 1.0, max_iter: int = 50,
          tol: float = 1e-10) -> Float[torch.Tensor, "*layer d"]:
    """Normal of an L2-regularised logistic-regression boundary, per layer, in raw feature space.

    Features are standardised per layer (mean 0, SD 1 per feature; constant features keep
    scale 1, as in sklearn's StandardScaler), then we minimise
        C * sum_i logloss(y_i, z_i . w + b) + |w|^2 / 2        (b unpenalised)
    exactly sklearn's `LogisticRegression(C=C)` objective, by Newton's method with a
    backtracking line search, all layers in one batch (`_newton_logistic`). In standardised
    space the score is w . (x - mu) / sigma, so the raw-space direction is w / sigma.
    `seed` is unused (the problem is convex and solved from zero).
    """
    Xt, yt, batched = validate(X, y)
    mu = Xt.mean(1, keepdim=True)
    sigma = Xt.std(1, unbiased=False, keepdim=True)
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    w, _ = _newton_logistic((Xt - mu) / sigma, yt, C=C, max_iter=max_iter, tol=tol)
    return _finish(w / sigma.squeeze(1), batched, "probe")


class _NewtonStep(NamedTuple):
    """A Newton direction and what the line search needs to evaluate the objective along it."""

    delta: torch.Tensor    # (layer, params) step to add
    f: torch.Tensor        # (layer, n) current margins (before the label sign)
    df: torch.Tensor       # (layer, n) change of the margins per unit step
    slope: torch.Tensor    # (layer,) directional derivative grad . delta (< 0 for descent)
    norm_terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # |w|^2, w.dw, |dw|^2


def _newton_logistic(Z: Float[torch.Tensor, "layer n d"], y: Float[torch.Tensor, " n"], C: float = 1.0,
                     max_iter: int = 50, tol: float = 1e-10
                     ) -> tuple[Float[torch.Tensor, "layer d"], Float[torch.Tensor, " layer"]]:
    """Batched Newton for L2 logistic regression with an unpenalised intercept.

    Newton converges in ~10 iterations on this smooth, strongly convex objective, against
    hundreds of first-order steps. The step is solved in whichever space is smaller:
    `_primal_step` (n > d) or `_dual_step` (n <= d, the usual case for activations).
    Each step is damped by Armijo backtracking tried at 12 step sizes at once (cheap: along
    the step the objective is a 1-D function of the margins), so no layer overshoots.
    Stops when every layer's Newton decrement / 2 falls below `tol`.
    """
    L, n, d = Z.shape
    dual = n <= d
    if dual:
        K = Z @ Z.transpose(1, 2)
        params = torch.zeros(L, n + 1, dtype=Z.dtype)   # (a, b) with w = Z^T a
    else:
        A = torch.cat([Z, torch.ones(L, n, 1, dtype=Z.dtype)], dim=-1)
        params = torch.zeros(L, d + 1, dtype=Z.dtype)   # (w, b)
    sign = (2 * y - 1)[None, :, None]
    steps = 0.5 ** torch.arange(12, dtype=Z.dtype)
    for _ in range(max_iter):
        step = _dual_step(K, params, y, C) if dual else _primal_step(A, params, y, C)
        if (-step.slope / 2 < tol).all():
            break
        norm0, cross, quad = (x.unsqueeze(-1) for x in step.norm_terms)

        def along(t: torch.Tensor) -> torch.Tensor:  # objective at params + t * delta
            data = torch.nn.functional.softplus(-(step.f.unsqueeze(-1) + step.df.unsqueeze(-1) * t) * sign)
            return C * data.sum(1) + 0.5 * (norm0 + 2 * t * cross + t ** 2 * quad)

        f0 = along(torch.zeros(1, dtype=Z.dtype))[:, 0]
        ok = along(steps) <= f0.unsqueeze(-1) + 1e-4 * steps * step.slope.unsqueeze(-1)
        # largest step passing Armijo; if none does (round-off at the optimum), stay put
        first = torch.where(ok.any(-1), ok.to(torch.int64).argmax(-1), torch.full((L,), -1))
        t = torch.where(first >= 0, steps[first.clamp(min=0)], torch.zeros((), dtype=Z.dtype))
        params = params + t.unsqueeze(-1) * step.delta
    else:
        warnings.warn(f"probe: Newton stopped after {max_iter} iterations before reaching tol={tol:g} "
                      f"(largest decrement {float((-step.slope / 2).max()):.3g})", RuntimeWarning, stacklevel=3)
    if dual:
        return torch.einsum("lnd,ln->ld", Z, params[:, :-1]), params[:, -1]
    return params[:, :-1], params[:, -1]


def _primal_step(A: Float[torch.Tensor, "layer n p"], params: Float[torch.Tensor, "layer p"],
                 y: Float[torch.Tensor, " n"], C: float) -> _NewtonStep:
    """Newton step from the (d+1, d+1) Hessian C A^T D A + diag(1, .., 1, 0), A = [Z, 1]."""
    penalty = torch.ones(A.shape[-1], dtype=A.dtype)
    penalty[-1] = 0.0  # the intercept is not penalised
    f = torch.einsum("lnd,ld->ln", A, params)
    p = torch.sigmoid(f)
    grad = C * torch.einsum("lnd,ln->ld", A, p - y) + penalty * params
    # the tiny ridge only guards Cholesky if every p(1-p) underflows; the gradient stays exact
    hess = C * (A * (p * (1 - p)).unsqueeze(-1)).transpose(1, 2) @ A + torch.diag(penalty + 1e-10)
    delta = -torch.cholesky_solve(grad.unsqueeze(-1), torch.linalg.cholesky(hess)).squeeze(-1)
    w, dw = params[:, :-1], delta[:, :-1]
    return _NewtonStep(delta, f, torch.einsum("lnd,ld->ln", A, delta), (grad * delta).sum(-1),
                       ((w * w).sum(-1), (w * dw).sum(-1), (dw * dw).sum(-1)))


def _dual_step(K: Float[torch.Tensor, "layer n n"], params: Float[torch.Tensor, "layer n+1"],
               y: Float[torch.Tensor, " n"], C: float) -> _NewtonStep:
    """Newton step in the span of the examples, for n <= d.

    The optimal w lies in the row span of Z, w = Z^T a. With the Gram matrix K = Z Z^T the
    margins are f = K a + b and |w|^2 = a^T K a, and the Newton step solves the (n+1) system
        [C D K + I   C D 1] [da]   [-(C g + a)]
        [   1^T        0  ] [db] = [  -1^T a  ]
    (g = p - y, D = diag(p(1-p))). Multiplying its first row by K gives the primal Newton
    equations, so the iterates are the primal ones; yet the matrix stays nonsingular when
    K is singular (centred features always make it so), as the primal Hessian would not.
    """
    L, n = params.shape[0], params.shape[1] - 1
    a, b = params[:, :-1], params[:, -1:]
    Ka = torch.einsum("lij,lj->li", K, a)
    f = Ka + b
    p = torch.sigmoid(f)
    CD = C * (p * (1 - p)).unsqueeze(-1)
    system = torch.cat([
        torch.cat([CD * K + torch.eye(n, dtype=K.dtype), CD], dim=-1),
        torch.cat([torch.ones(L, 1, n, dtype=K.dtype), torch.zeros(L, 1, 1, dtype=K.dtype)], dim=-1),
    ], dim=1)
    rhs = torch.cat([-(C * (p - y) + a), -a.sum(-1, keepdim=True)], dim=-1)
    delta = torch.linalg.solve(system, rhs)
    da, db = delta[:, :-1], delta[:, -1:]
    Kda = torch.einsum("lij,lj->li", K, da)
    df = Kda + db
    # grad . delta with grad_w = Z^T (C g + a), delta_w = Z^T da, grad_b = C sum(g)
    slope = (C * (p - y) * df).sum(-1) + (a * Kda).sum(-1)
    return _NewtonStep(delta, f, df, slope, ((a * Ka).sum(-1), (a * Kda).sum(-1), (da * Kda).sum(-1)))


def pca(X: Features, y: Labels, *, seed: int = 0) -> Float[torch.Tensor, "*layer d"]:
    """First principal component of the data centred at the midpoint of the two class means.

    Our examples are unpaired (no trait/control twin per prompt), so instead of PCA on
    paired differences we centre every example at m = (mu0 + mu1) / 2 and take the top
    eigenvector of the second-moment matrix S = mean (x - m)(x - m)^T. Then
        S = within-class covariance + (mu1 - mu0)(mu1 - mu0)^T / 4,
    whatever the class balance (centring at the pooled mean would shrink the class term
    by p0 p1, to nothing for rare classes). PC1 is the class direction when that rank-one
    term dominates the largest within-class variance, and a nuisance axis otherwise:
    exactly what the baseline should reveal. Sign: toward class 1. `seed` is unused.

    Computed from whichever is smaller: the (n, n) Gram matrix or the (d, d) scatter.
    """
    Xt, yt, batched = validate(X, y)
    m0, m1 = _class_means(Xt, yt)
    Zc = Xt - ((m0 + m1) / 2).unsqueeze(1)
    n, d = Zc.shape[1:]
    if n < d:
        _, vecs = torch.linalg.eigh(Zc @ Zc.transpose(1, 2))
        V = torch.einsum("lnd,ln->ld", Zc, vecs[..., -1])
    else:
        _, vecs = torch.linalg.eigh(Zc.transpose(1, 2) @ Zc)
        V = vecs[..., -1]
    V = _unit(V, "pca")
    return _finish(_toward_class1(V, Xt, yt), batched, "pca")


def gradient(X: Features, y: Labels, *, seed: int = 0, steps: int = 300) -> Float[torch.Tensor, "*layer d"]:
    """A 1-D logistic projection w.x + b fitted by Nesterov-accelerated gradient descent.

    Features are centred and divided by one scalar per layer (their RMS), which keeps the
    residual-stream geometry (no per-feature scaling, unlike `probe`). Training starts at
    zero, whose first gradient step is the mean difference; later steps tilt it toward the
    unregularised logistic solution. Stopping after `steps` steps is the regulariser. The
    step size 1/L uses the loss's smoothness L = lambda_max(A^T A / n) / 4 of the
    bias-augmented data A = [Z, 1], found by power iteration from a `seed`-ed start (the
    only use of randomness, so the result is deterministic).

    Every gradient A^T r lies in the row span of A, so the iterates are theta = A^T alpha;
    when n < d we run the same iteration on alpha with the Gram matrix K = A A^T, one
    (n, n) product per step instead of two (n, d) ones.
    """
    Xt, yt, batched = validate(X, y)
    L, n, d = Xt.shape
    Zc = Xt - Xt.mean(1, keepdim=True)
    rms = Zc.pow(2).mean((1, 2), keepdim=True).sqrt().clamp(min=1e-30)
    A = torch.cat([Zc / rms, torch.ones(L, n, 1, dtype=Xt.dtype)], dim=-1)
    dual = n < d + 1
    K = A @ A.transpose(1, 2) if dual else None

    def margins(coef: torch.Tensor) -> torch.Tensor:        # A theta, theta = A^T coef if dual
        return torch.einsum("lij,lj->li", K, coef) if dual else torch.einsum("lnd,ld->ln", A, coef)

    def to_coef(r: torch.Tensor) -> torch.Tensor:           # A^T r in coefficient space
        return r if dual else torch.einsum("lnd,ln->ld", A, r)

    lam = _top_eigenvalue(lambda v: to_coef(margins(v)) / n, (L, n if dual else d + 1), seed)
    lr = (1.0 / (0.25 * lam * 1.1)).unsqueeze(-1)  # 10% margin: power iteration undershoots
    coef = prev = torch.zeros(L, n if dual else d + 1, dtype=Xt.dtype)
    for k in range(1, steps + 1):
        look = coef + (k - 1) / (k + 2) * (coef - prev)
        residual = (torch.sigmoid(margins(look)) - yt) / n
        prev, coef = coef, look - lr * to_coef(residual)
    theta = torch.einsum("lnd,ln->ld", A, coef) if dual else coef
    V = _unit(theta[:, :-1], "gradient")
    return _finish(_toward_class1(V, Xt, yt), batched, "gradient")


def _top_eigenvalue(apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], seed: int,
                    iters: int = 50) -> Float[torch.Tensor, " layer"]:
    """Largest eigenvalue of a batch of PSD linear maps, by power iteration from a seeded start."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape, generator=g, dtype=torch.float64)
    for _ in range(iters):
        v = apply(v)
        v = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    return (v * apply(v)).sum(-1)


def random(X: Features, y: Labels, *, seed: int = 0) -> Float[torch.Tensor, "*layer d"]:
    """Seeded Gaussian unit vector(s), independent of the data: the chance-level baseline.

    Layer l of an (L, n, d) call gets the l-th of L successive (d,) draws from one
    generator seeded with `seed`, so a 2-D call equals layer 0 of a batched one. The sign
    is arbitrary, so its AUROC scatters around 0.5 on both sides.
    """
    Xt, _, batched = validate(X, y)
    g = torch.Generator().manual_seed(seed)
    # one (d,) draw per layer: torch's (L, d) draw is ordered differently from L (d,) draws
    V = torch.stack([torch.randn(Xt.shape[2], generator=g, dtype=torch.float64) for _ in range(Xt.shape[0])])
    return _finish(V, batched, "random")


Method = Callable[..., torch.Tensor]
METHODS: dict[str, Method] = {
    "mean_diff": mean_diff,
    "probe": probe,
    "pca": pca,
    "gradient": gradient,
    "random": random,
}
DEFAULT_METHODS = tuple(METHODS)


# --------------------------------------------------------------------------- Direction


@dataclass(eq=False)  # tensors do not compare with ==; compare fields explicitly
class Direction:
    """Unit vectors (one row per layer in `layers`) plus where they came from.

    `hook` is a template: `hook.format(L=layer)` names the hook a row belongs to.
    `d_model` / `n_layers` describe the model the direction was made on, checked by
    `check_model` before it is applied to another one.
    """

    vectors: Float[torch.Tensor, "layer d"]
    layers: list[int]
    _: KW_ONLY
    n_layers: int
    d_model: int | None = None
    model_fingerprint: str = ""
    hook: str = HOOK_TEMPLATE
    pooling: str = "last"
    method: str = ""
    data_hash: str = ""
    contrast: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.vectors = torch.as_tensor(self.vectors).detach().to("cpu", torch.float32).contiguous()
        if self.vectors.ndim != 2:
            raise BadInput(f"direction vectors must be (layers, d_model), got {tuple(self.vectors.shape)}")
        self.layers = [int(L) for L in self.layers]
        if len(self.layers) != self.vectors.shape[0] or len(set(self.layers)) != len(self.layers):
            raise BadInput(f"{self.vectors.shape[0]} direction rows but layers {self.layers}")
        self.d_model = int(self.vectors.shape[1]) if self.d_model is None else int(self.d_model)
        self.n_layers = int(self.n_layers)
        if self.vectors.shape[1] != self.d_model:
            raise BadInput(f"direction rows have {self.vectors.shape[1]} entries, d_model is {self.d_model}")
        if any(not 0 <= L < self.n_layers for L in self.layers):
            raise BadInput(f"layers {self.layers} outside 0..{self.n_layers - 1}")
        norms = self.vectors.norm(dim=-1)
        if not torch.isfinite(self.vectors).all() or (norms - 1).abs().max() > 1e-3:
            raise BadInput(f"direction rows must be finite unit vectors (norms {norms.min():.4g}..{norms.max():.4g})")

    def check_model(self, d_model: int, n_layers: int) -> None:
        """Raise `IncompatibleError` unless the model has this direction's width and depth."""
        if (int(d_model), int(n_layers)) != (self.d_model, self.n_layers):
            raise IncompatibleError(f"direction made for d_model {self.d_model} / {self.n_layers} layers, "
                                    f"model has d_model {d_model} / {n_layers} layers")

    def at(self, layer: int) -> Float[torch.Tensor, " d"]:
        """The unit vector of one layer."""
        if layer not in self.layers:
            raise BadInput(f"direction has no layer {layer} (it has {_span(self.layers)})")
        return self.vectors[self.layers.index(layer)]

    def only(self, layer: int) -> "Direction":
        """A one-row copy holding just `layer` (e.g. the best layer, for steering)."""
        return Direction(self.at(layer).unsqueeze(0).clone(), [layer], **self._provenance())

    def project(self, features: Float[np.ndarray, "n d"] | Float[torch.Tensor, "n d"], layer: int
                ) -> Float[np.ndarray, " n"] | Float[torch.Tensor, " n"]:
        """Scalar projection of each row on the layer's unit vector (numpy in, numpy out)."""
        v = self.at(layer)
        if features.shape[-1] != self.d_model:
            raise IncompatibleError(f"features have width {features.shape[-1]}, direction has d_model {self.d_model}")
        if isinstance(features, np.ndarray):
            return features.astype(np.float32, copy=False) @ v.numpy()
        return features.to(torch.float32) @ v.to(features.device)

    def _provenance(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "d_model": self.d_model, "model_fingerprint": self.model_fingerprint,
                "hook": self.hook, "pooling": self.pooling, "method": self.method, "data_hash": self.data_hash,
                "contrast": self.contrast, "metrics": json.loads(json.dumps(self.metrics, default=_jsonable))}

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensor `vectors`; provenance as string metadata, JSON for
        lists/dicts) under a temporary name, then rename: readers never see half a file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": str(VERSION), "layers": json.dumps(self.layers),
                "n_layers": str(self.n_layers), "d_model": str(self.d_model),
                "model_fingerprint": self.model_fingerprint, "hook": self.hook, "pooling": self.pooling,
                "method": self.method, "data_hash": self.data_hash, "contrast": self.contrast,
                "metrics": json.dumps(self.metrics, sort_keys=True, default=_jsonable)}
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        try:
            save_file({"vectors": self.vectors}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Direction":
        """Read a file written by `save`; `IntegrityError` if it is not an emlab direction."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.exists():
            raise BadInput(f"{path}: no such direction file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or "vectors" not in f.keys():
                    raise IntegrityError(f"{path} is not an emlab direction file")
                if int(meta["version"]) != VERSION:
                    raise IntegrityError(f"{path}: direction format version {meta['version']} (expected {VERSION})")
                vectors = f.get_tensor("vectors")
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise IntegrityError(f"{path}: unreadable direction file ({str(exc).splitlines()[0][:120]})") from None
        return cls(vectors, json.loads(meta["layers"]), n_layers=int(meta["n_layers"]),
                   d_model=int(meta["d_model"]), model_fingerprint=meta["model_fingerprint"], hook=meta["hook"],
                   pooling=meta["pooling"], method=meta["method"], data_hash=meta["data_hash"],
                   contrast=meta["contrast"], metrics=json.loads(meta["metrics"]))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, torch.Tensor)) and np.ndim(x) == 0:
        return x.item()
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.tolist()
    return str(x)


def _span(layers: list[int]) -> str:
    return str(layers) if len(layers) <= 6 else f"{len(layers)} layers, {layers[0]}..{layers[-1]}"


# --------------------------------------------------------------------------- splitting


def _id_score(seed: int, example_id: str) -> float:
    """The seeded per-id hash of `lab.data.split_ids`, as a number in [0, 1]."""
    return int(hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_examples(ids: Sequence[str], y: Int[np.ndarray, " n"], test_fraction: float = 0.25, seed: int = 0,
                   stratify: bool = True) -> tuple[Int[np.ndarray, " n_train"], Int[np.ndarray, " n_test"]]:
    """Fixed, seeded train/test example indices, decided by example id.

    `stratify=False` is exactly `lab.data.split_ids` (each id independently goes to test
    with probability `test_fraction`). `stratify=True` ranks the ids of each class by the
    same seeded hash and sends the first round(test_fraction * n_class) to test (at least
    one, never all), so both splits keep the class balance. Either way an id's side does
    not depend on the order of the examples, and an id keeps its side when other examples
    are added (up to the per-class count, when stratified).
    """
    ids = list(ids)
    y = np.asarray(y)
    if len(set(ids)) != len(ids):
        raise BadInput("example ids are not unique; a split by id needs unique ids")
    if not 0 < test_fraction < 1:
        raise BadInput(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not stratify:
        side = split_ids(ids, test_fraction, seed)
        is_test = np.array([side[i] == "test" for i in ids])
    else:
        is_test = np.zeros(len(ids), dtype=bool)
        for cls in np.unique(y):
            members = np.flatnonzero(y == cls)
            ranked = members[np.argsort([_id_score(seed, ids[i]) for i in members], kind="stable")]
            k = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
            is_test[ranked[:k]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


# --------------------------------------------------------------------------- sweeps


def fit_all(X: Features, y: Labels, methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0
            ) -> dict[str, Float[torch.Tensor, "*layer d"]]:
    """Run several registered methods on the same data: {method: unit vectors}."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown direction method(s) {unknown} (known: {', '.join(METHODS)})")
    Xt, yt, batched = validate(X, y)  # convert once; methods reuse the float64 tensor
    Xt = Xt if batched else Xt[0]
    return {m: METHODS[m](Xt, yt, seed=seed) for m in methods}


def evaluate_directions(vectors: dict[str, Float[torch.Tensor, "layer d"]], X_train: Features, y_train: Labels,
                        X_test: Features, y_test: Labels, layers: Sequence[int], pooling: str = "last",
                        n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Held-out scores of fitted directions, one row per (method, layer).

    The accuracy threshold is the midpoint of the *training* class means of the projection
    (rule: class 1 above it). AUROC, accuracy and Cohen's d get percentile CIs from one
    stratified bootstrap of the test rows, shared by every (method, layer), so differences
    between rows are not bootstrap noise.
    """
    names = list(vectors)
    V = torch.stack([torch.as_tensor(vectors[m]).reshape(len(layers), -1).to(torch.float64) for m in names])
    Xtr = torch.as_tensor(X_train).reshape(len(layers), -1, V.shape[-1]).to(torch.float64)
    Xte = torch.as_tensor(X_test).reshape(len(layers), -1, V.shape[-1]).to(torch.float64)
    ytr, yte = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    if yte.min() == yte.max():
        raise BadInput("the test split holds one class only; AUROC is undefined")
    P_train = torch.einsum("lnd,mld->mln", Xtr, V).numpy()
    P_test = torch.einsum("lnd,mld->mln", Xte, V).numpy()
    threshold = midpoint_threshold(P_train, ytr)
    correct = ((P_test > threshold[..., None]) == (yte == 1)).astype(np.float64)
    ci = dict(n_boot=n_boot, seed=seed, strata=yte)
    au, au_lo, au_hi = bootstrap_ci(auroc, dense_ranks(P_test), yte, **ci)
    acc, acc_lo, acc_hi = bootstrap_ci(lambda c: c.mean(-1), correct, **ci)
    sd, sd_lo, sd_hi = bootstrap_ci(lambda p, t: separation(p, t)[0], P_test, yte, **ci)
    raw = separation(P_test, yte)[1]
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


class SplitFeatures(NamedTuple):
    """A contrast's features with its held-out split (what `sweep` fits and scores)."""

    layers: list[int]
    X: np.ndarray          # (layer, n, d) float32, rows = the examples kept for the contrast
    y: np.ndarray          # (n,) 0/1
    train: np.ndarray      # row indices into X / y / ids
    test: np.ndarray
    data_hash: str
    ids: list[str]         # example id of each row


def split_features(cache: Any, positive_label: str, negative_label: str | None, pooling: str, test_fraction: float,
                   seed: int, stratify: bool = True) -> SplitFeatures:
    """Labels, split and stacked features of a cache, with every check a sweep needs."""
    labels = list(cache.labels)
    if positive_label not in labels:
        found = sorted({str(lab) for lab in labels})[:10]
        raise BadInput(f"no example is labelled {positive_label!r} (labels: {', '.join(found)})")
    if negative_label is None:  # everything else is the control class
        keep = np.arange(len(labels))
    else:
        keep = np.array([i for i, lab in enumerate(labels) if lab in (positive_label, negative_label)])
    y = np.asarray(cache.label_array(positive_label), dtype=np.int64)[keep]
    if y.min() == y.max():
        raise BadInput(f"no example besides those labelled {positive_label!r} "
                       f"{'is left' if negative_label is None else f'is labelled {negative_label!r}'}; "
                       "a contrast needs a second class")
    ids = [cache.ids[i] for i in keep]
    groups = getattr(cache, "groups", None)
    if groups is not None:  # paired data: both members of a group land on the same side
        kept_groups = [groups[i] for i in keep]
        side = split_ids(sorted(set(kept_groups)), test_fraction, seed)
        is_test = np.array([side[g] == "test" for g in kept_groups])
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    else:
        train, test = split_examples(ids, y, test_fraction, seed, stratify)
    for name, idx, need in (("train", train, MIN_PER_CLASS), ("test", test, MIN_TEST_PER_CLASS)):
        counts = np.bincount(y[idx], minlength=2)
        if counts.min() < need:
            raise BadInput(f"too few examples: the {name} split has {counts[0]} of class 0 and {counts[1]} of "
                           f"class 1 ({positive_label!r}); at least {need} per class are needed")
    layers = list(cache.layers)
    examples = None if negative_label is None else keep
    X = np.asarray(cache.stack(pooling, layers=layers, examples=examples), dtype=np.float32)
    data_hash = sha256_json({
        "cache": getattr(cache, "attrs", {}).get("key", ""), "model": cache.model_fingerprint,
        "positive": positive_label, "negative": negative_label, "pooling": pooling,
        "train_ids": sorted(ids[i] for i in train),
    })
    return SplitFeatures(layers, X, y, train, test, data_hash, ids)


def held_out_groups(cache: Any, positive_label: str, negative_label: str | None, pooling: str, test_fraction: float,
                    seed: int) -> set[str]:
    """The groups (paired questions; ids if ungrouped) in a contrast's test split: what a
    direction fitted with the same split never saw. Score effects of the direction on these."""
    prep = split_features(cache, positive_label, negative_label, pooling, test_fraction, seed)
    group_of = dict(zip(cache.ids, getattr(cache, "groups", None) or cache.ids))
    return {group_of[prep.ids[i]] for i in prep.test}


def sweep_and_fit(cache: Any, positive_label: str, methods: Sequence[str] = DEFAULT_METHODS, pooling: str = "last",
                  test_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000, *, stratify: bool = True,
                  negative_label: str | None = None, contrast: str | None = None
                  ) -> tuple[list[dict[str, Any]], dict[str, Direction]]:
    """`sweep`'s rows plus the fitted `Direction` of each method (all layers; train split).

    Each direction's `metrics` holds its per-layer held-out scores (`test_auroc`,
    `test_acc`, `test_sep_sd`, lists in `layers` order), its `best_layer` by test AUROC,
    and the split (`n_train`, `n_test`, `split_seed`, `test_fraction`, `positive_label`,
    `negative_label`). `contrast` names the direction (default: `positive_label`).
    """
    prep = split_features(cache, positive_label, negative_label, pooling, test_fraction, seed, stratify)
    X, y, train, test = prep.X, prep.y, prep.train, prep.test
    fitted = fit_all(X[:, train], y[train], methods, seed)
    rows = evaluate_directions(fitted, X[:, train], y[train], X[:, test], y[test], prep.layers, pooling, n_boot, seed)
    directions = {}
    for m, V in fitted.items():
        mine = [r for r in rows if r["method"] == m]
        directions[m] = Direction(
            V, prep.layers, n_layers=cache.n_layers, d_model=cache.d_model, model_fingerprint=cache.model_fingerprint,
            hook=HOOK_TEMPLATE, pooling=pooling, method=m, data_hash=prep.data_hash,
            contrast=contrast or positive_label,
            metrics={"test_auroc": [r["auroc"] for r in mine], "test_acc": [r["acc"] for r in mine],
                     "test_sep_sd": [r["sep_sd"] for r in mine],
                     "best_layer": max(mine, key=lambda r: r["auroc"])["layer"],
                     "n_train": int(len(train)), "n_test": int(len(test)), "split_seed": seed,
                     "test_fraction": test_fraction, "positive_label": positive_label,
                     "negative_label": negative_label})
    return rows, directions


def sweep(cache: Any, positive_label: str, methods: Sequence[str] = DEFAULT_METHODS, pooling: str = "last",
          test_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000, *, stratify: bool = True,
          negative_label: str | None = None) -> list[dict[str, Any]]:
    """Fit every method on the training split of every layer; score each on held-out examples.

    Class 1 is the examples labelled `positive_label`; class 0 is every other example, or
    only those labelled `negative_label` when it is given (others are left out).
    Returns one row per (method, layer) with keys: method, layer, pooling, auroc, auroc_lo,
    auroc_hi, acc, acc_lo, acc_hi, sep_sd, sep_sd_lo, sep_sd_hi, sep_raw, n_train, n_test
    (CIs: 95% stratified bootstrap of the test rows). `cache` needs `ids`, `labels`,
    `label_array`, `layers`, `stack`, `model_fingerprint`, `d_model`, `n_layers`.
    """
    return sweep_and_fit(cache, positive_label, methods, pooling, test_fraction, seed, n_boot, stratify=stratify,
                         negative_label=negative_label)[0]


def fit_directions(cache: Any, positive_label: str, methods: Sequence[str] = DEFAULT_METHODS, pooling: str = "last",
                   test_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000, *, stratify: bool = True,
                   negative_label: str | None = None, contrast: str | None = None) -> dict[str, Direction]:
    """The fitted `Direction` per method, exactly as `sweep` fits them (same split and seed)."""
    return sweep_and_fit(cache, positive_label, methods, pooling, test_fraction, seed, n_boot, stratify=stratify,
                         negative_label=negative_label, contrast=contrast)[1]
