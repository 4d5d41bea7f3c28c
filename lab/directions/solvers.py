"""The five direction methods: features and labels in, one unit vector per layer out.

All of them take features `X` of shape (n, d) or (layers, n, d) and 0/1 labels `y`, work
on every layer at once, on X's device, and return unit vectors (d,) or (layers, d) as
float32 tensors on that device. The sign is fixed so that class 1 (the "trait" side, e.g.
misaligned) projects *higher*.

    mean_diff  difference of class means. The classic steering vector; optimal when
               the noise is isotropic, blind to correlated noise.
    probe      L2-regularised logistic regression on standardised features (the
               sklearn `LogisticRegression(C=1)` objective, `lab.directions.logistic`).
               The boundary normal w is mapped back to raw space as w / sigma. Accounts
               for the noise covariance, so it can differ from mean_diff.
    pca        first principal component of the pooled data centred at the midpoint of
               the two class means. Unsupervised apart from the centring and the sign.
    gradient   a 1-D projection plus bias trained by plain accelerated gradient descent
               on the logistic loss, in raw (not standardised) geometry, stopped after a
               fixed number of steps (early stopping is its only regulariser).
    random     a seeded Gaussian unit vector: the chance baseline (arbitrary sign).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Float

from lab.directions.logistic import Solver, logistic_fit
from lab.directions.validation import (
    Features,
    Labels,
    class_means,
    finish,
    rows_times,
    times_rows,
    toward_class1,
    unit,
    validate,
)
from lab.core.errors import BadInput

EIGH_MAX_SIZE = 1024  # pca: exact eigendecomposition while min(n, d) is at most this


def mean_diff(X: Features, y: Labels, *, seed: int = 0) -> Float[torch.Tensor, "*layer d"]:
    """Unit vector along mean(X | y=1) - mean(X | y=0), per layer. `seed` is unused."""
    Xt, yt, batched = validate(X, y)
    m0, m1 = class_means(Xt, yt)
    return finish(m1 - m0, batched, "mean_diff")


def probe(X: Features, y: Labels, *, seed: int = 0, C: float = 1.0, solver: Solver = "auto",
          max_iter: int | None = None, tol: float | None = None) -> Float[torch.Tensor, "*layer d"]:
    """Normal of an L2-regularised logistic-regression boundary, per layer, in raw feature space.

    Features are standardised per layer (mean 0, SD 1 per feature; constant features keep
    scale 1, as in sklearn's StandardScaler), then `logistic_fit` minimises sklearn's
    `LogisticRegression(C=C)` objective for all layers in one batch: exact Newton for
    small problems, L-BFGS (no d x d or n x n matrix) for large ones; `solver` forces one.
    L-BFGS reads the standardised features in float32 (half the memory traffic; its
    products are the only rounded step). In standardised space the score is
    w . (x - mu) / sigma, so the raw-space direction is w / sigma. `seed` is unused (the
    problem is convex and solved from zero).
    """
    Xt, yt, batched = validate(X, y)
    mu = Xt.mean(1, keepdim=True)
    sigma = Xt.std(1, unbiased=False, keepdim=True)
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    w, _ = logistic_fit((Xt - mu) / sigma, yt, C=C, solver=solver, max_iter=max_iter, tol=tol)
    return finish(w / sigma.squeeze(1), batched, "probe")


def pca(X: Features, y: Labels, *, seed: int = 0, iters: int = 50) -> Float[torch.Tensor, "*layer d"]:
    """First principal component of the data centred at the midpoint of the two class means.

    Our examples are unpaired (no trait/control twin per prompt), so instead of PCA on
    paired differences we centre every example at m = (mu0 + mu1) / 2 and take the top
    eigenvector of the second-moment matrix S = mean (x - m)(x - m)^T. Then
        S = within-class covariance + (mu1 - mu0)(mu1 - mu0)^T / 4,
    whatever the class balance (centring at the pooled mean would shrink the class term
    by p0 p1, to nothing for rare classes). PC1 is the class direction when that rank-one
    term dominates the largest within-class variance, and a nuisance axis otherwise:
    exactly what the baseline should reveal. Sign: toward class 1. `seed` is unused.

    Small problems (min(n, d) <= EIGH_MAX_SIZE): exact eigendecomposition of whichever is
    smaller, the (n, n) Gram matrix or the (d, d) scatter. Larger ones: block subspace
    iteration with Rayleigh-Ritz (`_top_eigenvector`), products with the data only.
    """
    Xt, yt, batched = validate(X, y)
    m0, m1 = class_means(Xt, yt)
    Zc = Xt - ((m0 + m1) / 2).unsqueeze(1)
    n, d = Zc.shape[1:]
    if min(n, d) > EIGH_MAX_SIZE:
        V = _top_eigenvector(Zc, m1 - m0, iters)
    elif n < d:
        _, vecs = torch.linalg.eigh(Zc @ Zc.transpose(1, 2))
        V = rows_times(vecs[..., -1], Zc)
    else:
        _, vecs = torch.linalg.eigh(Zc.transpose(1, 2) @ Zc)
        V = vecs[..., -1]
    V = unit(V, "pca")
    return finish(toward_class1(V, Xt, yt), batched, "pca")


def _top_eigenvector(Zc: Float[torch.Tensor, "layer n d"], start: Float[torch.Tensor, "layer d"], iters: int,
                     block: int = 8) -> Float[torch.Tensor, "layer d"]:
    """Top eigenvector of Zc^T Zc per layer by block subspace iteration (2 passes over Zc each).

    The block starts from the class-mean difference (often close to PC1) plus fixed
    deterministic vectors (cosines over the feature index: no random generator, so CPU
    and CUDA start from the same block); each iteration multiplies by Zc^T Zc and
    re-orthonormalises; a final Rayleigh-Ritz step picks the best vector in the block.
    The convergence rate per iteration is lambda_{block+1} / lambda_1.
    """
    L, n, d = Zc.shape
    grid = torch.arange(d, dtype=Zc.dtype, device=Zc.device)
    basis = torch.stack([torch.cos((k + 1) * (grid + 0.5) * torch.pi / d) for k in range(block - 1)], dim=-1)
    Q = torch.cat([start.unsqueeze(-1), basis.expand(L, d, block - 1)], dim=-1)
    Q, _ = torch.linalg.qr(Q)
    for _ in range(iters):  # Zc^T (Zc Q), the outer product written as (P^T Zc)^T: BLAS's fast layout
        Q, _ = torch.linalg.qr(torch.bmm((Zc @ Q).transpose(1, 2), Zc).transpose(1, 2))
    P = Zc @ Q
    _, vecs = torch.linalg.eigh(P.transpose(1, 2) @ P)
    return torch.einsum("ldk,lk->ld", Q, vecs[..., -1])


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
    dev = Xt.device
    Zc = Xt - Xt.mean(1, keepdim=True)
    rms = Zc.pow(2).mean((1, 2), keepdim=True).sqrt().clamp(min=1e-30)
    A = torch.cat([Zc / rms, torch.ones(L, n, 1, dtype=Xt.dtype, device=dev)], dim=-1)
    dual = n < d + 1
    K = A @ A.transpose(1, 2) if dual else None

    def margins(coef: torch.Tensor) -> torch.Tensor:        # A theta, theta = A^T coef if dual
        return rows_times(coef, K) if dual else times_rows(A, coef)   # K is symmetric

    def to_coef(r: torch.Tensor) -> torch.Tensor:           # A^T r in coefficient space
        return r if dual else rows_times(r, A)

    lam = _top_eigenvalue(lambda v: to_coef(margins(v)) / n, (L, n if dual else d + 1), seed, dev)
    lr = (1.0 / (0.25 * lam * 1.1)).unsqueeze(-1)  # 10% margin: power iteration undershoots
    coef = prev = torch.zeros(L, n if dual else d + 1, dtype=Xt.dtype, device=dev)
    for k in range(1, steps + 1):
        look = coef + (k - 1) / (k + 2) * (coef - prev)
        residual = (torch.sigmoid(margins(look)) - yt) / n
        prev, coef = coef, look - lr * to_coef(residual)
    theta = rows_times(coef, A) if dual else coef
    V = unit(theta[:, :-1], "gradient")
    return finish(toward_class1(V, Xt, yt), batched, "gradient")


def _top_eigenvalue(apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], seed: int,
                    device: torch.device, iters: int = 50) -> Float[torch.Tensor, " layer"]:
    """Largest eigenvalue of a batch of PSD linear maps, by power iteration from a seeded start.

    The start is drawn on the CPU (one generator, the same numbers on every device) and moved.
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape, generator=g, dtype=torch.float64, device="cpu").to(device)
    for _ in range(iters):
        v = apply(v)
        v = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    return (v * apply(v)).sum(-1)


def random(X: Features, y: Labels, *, seed: int = 0) -> Float[torch.Tensor, "*layer d"]:
    """Seeded Gaussian unit vector(s), independent of the data: the chance-level baseline.

    Layer l of an (L, n, d) call gets the l-th of L successive (d,) draws from one
    generator seeded with `seed`, so a 2-D call equals layer 0 of a batched one. The draws
    are made on the CPU and moved to X's device, so every device gets the same vectors.
    The sign is arbitrary, so its AUROC scatters around 0.5 on both sides.
    """
    Xt, _, batched = validate(X, y)
    g = torch.Generator().manual_seed(seed)
    # one (d,) draw per layer: torch's (L, d) draw is ordered differently from L (d,) draws
    V = torch.stack([torch.randn(Xt.shape[2], generator=g, dtype=torch.float64, device="cpu")
                     for _ in range(Xt.shape[0])])
    return finish(V.to(Xt.device), batched, "random")


Method = Callable[..., torch.Tensor]
METHODS: dict[str, Method] = {
    "mean_diff": mean_diff,
    "probe": probe,
    "pca": pca,
    "gradient": gradient,
    "random": random,
}
DEFAULT_METHODS = tuple(METHODS)


def fit_methods(X: Features, y: Labels, methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0
                ) -> dict[str, Float[torch.Tensor, "*layer d"]]:
    """Run several registered methods on the same data: {method: unit vectors} (on X's device).

    Checks and converts the features once; every method reuses the float64 tensor.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown direction method(s) {unknown} (known: {', '.join(METHODS)})")
    Xt, yt, batched = validate(X, y)
    Xt = Xt if batched else Xt[0]
    return {m: METHODS[m](Xt, yt, seed=seed) for m in methods}
