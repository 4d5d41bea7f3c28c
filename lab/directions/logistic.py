"""L2-regularised logistic regression for many layers at once: the solver behind `probe`.

Every layer l has its own problem on standardised features Z_l (n, d):

    minimise  C * sum_i softplus(-s_i (z_i . w + b)) + |w|^2 / 2,   s_i = 2 y_i - 1,

which is sklearn's `LogisticRegression(C)` objective (b unpenalised). Two solvers, both
batched over layers and both on the features' device:

    newton  exact Newton steps, from the (d+1, d+1) Hessian when n > d or from an
            (n+1, n+1) system in the span of the examples when n <= d. ~10 iterations,
            but each costs min(n, d)^3 and building the system n * min(n, d)^2: cheap
            for small problems, the bottleneck at 7B widths (4096 features, 3000 rows).
    lbfgs   limited-memory BFGS: only products Z v and Z^T r (2 n d per iteration), a
            (layer, memory, d) history and no d x d or n x n matrix. Costs grow like n d.

`logistic_fit(..., solver="auto")` takes Newton when min(n, d) <= NEWTON_MAX_SIZE and
L-BFGS otherwise. Both share one trick for the line search: along a direction the margins
move linearly, f + t df, so one product Z dw gives the objective at a dozen step sizes for
the price of elementwise work on (layer, n, steps).
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float

from lab.directions.validation import rows_times, times_rows
from lab.core.errors import BadInput

Solver = Literal["auto", "newton", "lbfgs"]
NEWTON_MAX_SIZE = 128   # exact Newton while min(n, d) is at most this (its cubic cost is small there)
LBFGS_MEMORY = 10


def logistic_fit(Z: Float[torch.Tensor, "layer n d"], y: Float[torch.Tensor, " n"], C: float = 1.0,
                 solver: Solver = "auto", max_iter: int | None = None, tol: float | None = None
                 ) -> tuple[Float[torch.Tensor, "layer d"], Float[torch.Tensor, " layer"]]:
    """Weights (layer, d) and intercepts (layer,) of the batched problem, on Z's device.

    `tol`: Newton stops when every layer's Newton decrement / 2 < tol (default 1e-10);
    L-BFGS when every layer's largest gradient entry, divided by C n (sklearn's units:
    its objective is ours / (C n)), is below tol (default 1e-6, sklearn's default is 1e-4).
    """
    n, d = Z.shape[1:]
    if solver == "auto":
        solver = "newton" if min(n, d) <= NEWTON_MAX_SIZE else "lbfgs"
    if solver == "newton":
        return _newton(Z, y, C, max_iter or 50, 1e-10 if tol is None else tol)
    if solver == "lbfgs":
        return _lbfgs(Z, y, C, max_iter or 1000, 1e-6 if tol is None else tol)
    raise BadInput(f"unknown probe solver {solver!r} (auto, newton or lbfgs)")


def _steps(like: torch.Tensor, largest: int = 0, count: int = 12) -> torch.Tensor:
    """Step sizes 2^largest, 2^(largest-1), ... (count of them), on like's device and dtype."""
    return 2.0 ** (largest - torch.arange(count, dtype=like.dtype, device=like.device))


def _objective_along(f, df, sign, C, norm0, cross, quad, t):
    """Objective at params + t * delta for each step size t (last axis), from the margins."""
    data = torch.nn.functional.softplus(-(f.unsqueeze(-1) + df.unsqueeze(-1) * t) * sign.unsqueeze(-1))
    return C * data.sum(1) + 0.5 * (norm0.unsqueeze(-1) + 2 * t * cross.unsqueeze(-1) + t ** 2 * quad.unsqueeze(-1))


# --------------------------------------------------------------------------- L-BFGS


def _lbfgs(Z, y, C: float, max_iter: int, tol: float, memory: int = LBFGS_MEMORY):
    """Batched L-BFGS on (w, b); all layers step together, a converged layer stops moving.

    Per iteration: the two-loop recursion on a (layer, memory, d+1) history, one product
    Z dw for the line search (the step minimising the objective among 2^2 .. 2^-9, which
    keeps the curvature pairs s . y > 0 on this convex problem) and one product Z^T r for
    the new gradient. Z may be float32 (half the memory traffic); the parameters, margins
    and history stay float64, so only the products are rounded.
    """
    Z = Z.to(torch.float32)
    L, n, d = Z.shape
    dev, dt = Z.device, torch.float64
    p = d + 1
    sign = 2 * y - 1
    theta = torch.zeros(L, p, dtype=dt, device=dev)
    f = torch.zeros(L, n, dtype=dt, device=dev)

    def gradient(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        r = C * (torch.sigmoid(f) - y)
        gw = rows_times(r.to(Z.dtype), Z).to(dt) + w
        return torch.cat([gw, r.sum(-1, keepdim=True)], dim=-1)

    def margins(v: torch.Tensor) -> torch.Tensor:
        return times_rows(Z, v[:, :-1].to(Z.dtype)).to(dt) + v[:, -1:]

    g = gradient(f, theta[:, :-1])
    S = torch.zeros(L, memory, p, dtype=dt, device=dev)
    Yh = torch.zeros(L, memory, p, dtype=dt, device=dev)
    rho = torch.zeros(L, memory, dtype=dt, device=dev)
    gamma = torch.full((L, 1), 1.0 / (C * n / 4 + 1), dtype=dt, device=dev)  # inverse Hessian diagonal at 0
    order: list[int] = []       # slots from oldest to newest
    steps = _steps(theta, largest=2)
    scale = C * n
    for _ in range(max_iter):
        active = (g.abs().amax(-1) / scale > tol)
        if not bool(active.any()):
            break
        q = g.clone()
        alphas = []
        for k in reversed(order):
            a = rho[:, k] * (S[:, k] * q).sum(-1)
            q -= a.unsqueeze(-1) * Yh[:, k]
            alphas.append(a)
        r = gamma * q
        for k, a in zip(order, reversed(alphas)):
            beta = rho[:, k] * (Yh[:, k] * r).sum(-1)
            r += (a - beta).unsqueeze(-1) * S[:, k]
        delta = -r * active.unsqueeze(-1)
        df = margins(delta)
        w, dw = theta[:, :-1], delta[:, :-1]
        along = _objective_along(f, df, sign, C, (w * w).sum(-1), (w * dw).sum(-1), (dw * dw).sum(-1), steps)
        f0 = _objective_along(f, df, sign, C, (w * w).sum(-1), (w * dw).sum(-1), (dw * dw).sum(-1),
                              torch.zeros(1, dtype=dt, device=dev))[:, 0]
        best = along.argmin(-1)
        t = torch.where(along.gather(-1, best[:, None])[:, 0] < f0, steps[best], torch.zeros((), dtype=dt, device=dev))
        s = t.unsqueeze(-1) * delta
        theta = theta + s
        f = f + t.unsqueeze(-1) * df
        g_new = gradient(f, theta[:, :-1])
        yv = g_new - g
        g = g_new
        sy = (s * yv).sum(-1)
        ok = sy > 1e-12 * (yv * yv).sum(-1).clamp(min=1e-300)  # skip pairs without curvature (or a zero step)
        slot = order.pop(0) if len(order) == memory else len(order)
        order.append(slot)
        S[:, slot] = s
        Yh[:, slot] = yv
        rho[:, slot] = torch.where(ok, 1.0 / sy.clamp(min=1e-300), torch.zeros_like(sy))
        gamma = torch.where(ok.unsqueeze(-1), (sy / (yv * yv).sum(-1).clamp(min=1e-300)).unsqueeze(-1), gamma)
    else:
        worst = float((g.abs().amax(-1) / scale).max())
        warnings.warn(f"probe: L-BFGS stopped after {max_iter} iterations before reaching tol={tol:g} "
                      f"(largest scaled gradient {worst:.3g})", RuntimeWarning, stacklevel=4)
    return theta[:, :-1], theta[:, -1]


# --------------------------------------------------------------------------- exact Newton


class _NewtonStep(NamedTuple):
    """A Newton direction and what the line search needs to evaluate the objective along it."""

    delta: torch.Tensor    # (layer, params) step to add
    f: torch.Tensor        # (layer, n) current margins (before the label sign)
    df: torch.Tensor       # (layer, n) change of the margins per unit step
    slope: torch.Tensor    # (layer,) directional derivative grad . delta (< 0 for descent)
    norm_terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # |w|^2, w.dw, |dw|^2


def _newton(Z, y, C: float, max_iter: int, tol: float):
    """Batched Newton with an unpenalised intercept.

    Newton converges in ~10 iterations on this smooth, strongly convex objective. The step
    is solved in whichever space is smaller: `_primal_step` (n > d) or `_dual_step` (n <= d).
    Each step is damped by Armijo backtracking tried at 12 step sizes at once, so no layer
    overshoots. Stops when every layer's Newton decrement / 2 falls below `tol`.
    """
    Z = Z.to(torch.float64)
    L, n, d = Z.shape
    dev, dt = Z.device, Z.dtype
    dual = n <= d
    if dual:
        K = Z @ Z.transpose(1, 2)
        params = torch.zeros(L, n + 1, dtype=dt, device=dev)   # (a, b) with w = Z^T a
    else:
        A = torch.cat([Z, torch.ones(L, n, 1, dtype=dt, device=dev)], dim=-1)
        params = torch.zeros(L, d + 1, dtype=dt, device=dev)   # (w, b)
    sign = 2 * y - 1
    steps = _steps(Z)
    for _ in range(max_iter):
        step = _dual_step(K, params, y, C) if dual else _primal_step(A, params, y, C)
        if bool((-step.slope / 2 < tol).all()):
            break
        along = _objective_along(step.f, step.df, sign, C, *step.norm_terms, steps)
        f0 = _objective_along(step.f, step.df, sign, C, *step.norm_terms, torch.zeros(1, dtype=dt, device=dev))[:, 0]
        ok = along <= f0.unsqueeze(-1) + 1e-4 * steps * step.slope.unsqueeze(-1)
        # largest step passing Armijo; if none does (round-off at the optimum), stay put
        first = torch.where(ok.any(-1), ok.to(torch.int64).argmax(-1), torch.full((L,), -1, device=dev))
        t = torch.where(first >= 0, steps[first.clamp(min=0)], torch.zeros((), dtype=dt, device=dev))
        params = params + t.unsqueeze(-1) * step.delta
    else:
        warnings.warn(f"probe: Newton stopped after {max_iter} iterations before reaching tol={tol:g} "
                      f"(largest decrement {float((-step.slope / 2).max()):.3g})", RuntimeWarning, stacklevel=4)
    if dual:
        return rows_times(params[:, :-1], Z), params[:, -1]
    return params[:, :-1], params[:, -1]


def _primal_step(A, params, y, C: float) -> _NewtonStep:
    """Newton step from the (d+1, d+1) Hessian C A^T D A + diag(1, .., 1, 0), A = [Z, 1]."""
    penalty = torch.ones(A.shape[-1], dtype=A.dtype, device=A.device)
    penalty[-1] = 0.0  # the intercept is not penalised
    f = times_rows(A, params)
    p = torch.sigmoid(f)
    grad = C * rows_times(p - y, A) + penalty * params
    # the tiny ridge only guards Cholesky if every p(1-p) underflows; the gradient stays exact
    hess = C * (A * (p * (1 - p)).unsqueeze(-1)).transpose(1, 2) @ A + torch.diag(penalty + 1e-10)
    delta = -torch.cholesky_solve(grad.unsqueeze(-1), torch.linalg.cholesky(hess)).squeeze(-1)
    w, dw = params[:, :-1], delta[:, :-1]
    return _NewtonStep(delta, f, times_rows(A, delta), (grad * delta).sum(-1),
                       ((w * w).sum(-1), (w * dw).sum(-1), (dw * dw).sum(-1)))


def _dual_step(K, params, y, C: float) -> _NewtonStep:
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
    dev, dt = K.device, K.dtype
    a, b = params[:, :-1], params[:, -1:]
    Ka = rows_times(a, K)  # K is symmetric
    f = Ka + b
    p = torch.sigmoid(f)
    CD = C * (p * (1 - p)).unsqueeze(-1)
    system = torch.cat([
        torch.cat([CD * K + torch.eye(n, dtype=dt, device=dev), CD], dim=-1),
        torch.cat([torch.ones(L, 1, n, dtype=dt, device=dev), torch.zeros(L, 1, 1, dtype=dt, device=dev)], dim=-1),
    ], dim=1)
    rhs = torch.cat([-(C * (p - y) + a), -a.sum(-1, keepdim=True)], dim=-1)
    delta = torch.linalg.solve(system, rhs)
    da, db = delta[:, :-1], delta[:, -1:]
    Kda = rows_times(da, K)
    df = Kda + db
    # grad . delta with grad_w = Z^T (C g + a), delta_w = Z^T da, grad_b = C sum(g)
    slope = (C * (p - y) * df).sum(-1) + (a * Kda).sum(-1)
    return _NewtonStep(delta, f, df, slope, ((a * Ka).sum(-1), (a * Kda).sum(-1), (da * Kda).sum(-1)))
