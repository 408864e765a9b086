"""Damped Newton inner solver of the first-order solver (``inner="newton"``, CPU): for spot
problems, whose inner problems L-BFGS-B solves slowly.

Why: pencil beams of one beam overlap laterally, so spot patterns that alternate from spot to
spot barely change the dose. The Hessian of the C-shape 8 mm proton inner problem on its free
spots has a condition number of ~3e8 after Jacobi scaling; L-BFGS-B then needs up to 3000
evaluations per outer round (49,000 in all on that case). A Newton step sees that curvature.

Each step (x >= 0, objective f: the augmented Lagrangian of one outer round, piecewise quadratic
in the forms y = K x):

* the row curvature D of f in y, probed from the form gradients at y and at y + eps s (s random
  signs; no product of K; exact for the voxelwise squared penalties, a diagonal approximation
  for the DVH / CVaR terms);
* H = K_C^T D K_C, dense on the candidate spots C (x > 0 or gradient < 0; at most
  MAX_CANDIDATES: a larger set, as at a cold start, first gets PRESOLVE_EVALS evaluations of
  L-BFGS-B);
* the bound-constrained quadratic model min g^T d + 1/2 d^T (H + mu diag(Gmax)) d, x + d >= 0,
  solved in spot space by an active-set projected Newton method (no product of K); Gmax is the
  curvature every row can reach (D probed at y +- 1000, in the forms' unit), so mu damps each
  spot by its own scale (Levenberg-Marquardt);
* one evaluation at x + d; the ratio of actual to predicted decrease adapts mu (x1/4 above 0.75,
  x4 below 0.25, as in trust-region methods) and rejects steps below 1e-4; mu carries over to
  the next outer round.

It is the one place the solver forms a product of K with itself: a dense block of at most
MAX_CANDIDATES^2 (32 MB) per step. Measured (C-shape 8 mm, 2 proton beams, 4550 spots, 2 cores):
49,000 evaluations / 175-249 s with L-BFGS-B against 398 evaluations / 13.9-15.6 s, the same
certified objective within 1.1e-5; on photons (6 mm) it takes fewer evaluations (516 vs 1324)
but more time (14.9 vs 8.7 s: the dense algebra), so it is not the default.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

#: largest candidate set the dense Newton step is built on (spots)
MAX_CANDIDATES = 2000
#: L-BFGS-B evaluations first when more spots are candidates (a cold start)
PRESOLVE_EVALS = 300
#: active-set iterations of the quadratic subproblem
QP_ITERATIONS = 30
#: initial damping, relative to the largest reachable curvature of each spot
MU0 = 1e-3
#: probe offset of the forms for the reachable curvature (forms' unit, Gy for dose)
REACH_SHIFT = 1e3


def row_curvature(model, f, blocks, x, rng, shift: float = 0.0):
    """Curvature of ``f`` per row of each form block at the forms ``blocks + shift`` (list of
    arrays, >= 0) and of the terms on the weights themselves (array), by one gradient difference
    along random signs with a step of 1e-6 of the largest form (no product of K)."""
    a = np.zeros(model.n_aux)
    base = [b + shift for b in blocks]
    _, gy0, gx0, _ = f.at_forms(base, x, a)
    signs = [rng.choice([-1.0, 1.0], size=len(b)) for b in base]
    eps = [1e-6 * max(float(np.abs(b).max()), 1e-12) if len(b) else 1.0 for b in base]
    s_x = rng.choice([-1.0, 1.0], size=len(x))
    e_x = 1e-6 * max(float(np.abs(x).max()), 1e-12)
    _, gy1, gx1, _ = f.at_forms([b + e * s for b, e, s in zip(base, eps, signs)], x + e_x * s_x, a)
    rows = [np.maximum(s * (g1 - g0) / e, 0.0) for s, g0, g1, e in zip(signs, gy0, gy1, eps)]
    return rows, np.maximum(s_x * (gx1 - gx0) / e_x, 0.0)


def _weighted_rows(model, rows_curv):
    """sqrt(D) K per operator (CSC, only rows with D > 0): its Gram on columns C is K_C^T D K_C."""
    out = []
    for op, d in zip(model.operators, model.unstack(rows_curv)):
        rows = np.flatnonzero(d[:-1] > 0)
        if len(rows):
            out.append((sp.diags(np.sqrt(d[rows]) * op.factor) @ op.M[rows].astype(np.float64)).tocsc())
    return out


def box_qp(B, g, x, iterations: int = QP_ITERATIONS):
    """d minimising q(d) = g^T d + 1/2 d^T B d subject to x + d >= 0 (B symmetric positive
    definite, dense), by an active-set projected Newton method; returns (d, q(d))."""
    n = len(x)
    d = np.zeros(n)
    free = ~((x <= 0) & (g > 0))
    q_d = 0.0
    for _ in range(iterations):
        F, A = np.flatnonzero(free), np.flatnonzero(~free)
        target = np.zeros(n)
        target[A] = -x[A]  # the bound variables go to their bound
        rhs = -(g[F] + B[np.ix_(F, A)] @ target[A]) if len(A) else -g[F]
        try:
            target[F] = sla.cho_solve(sla.cho_factor(B[np.ix_(F, F)], lower=True, check_finite=False), rhs,
                                      check_finite=False)
        except np.linalg.LinAlgError:
            target[F] = rhs / np.diag(B)[F]
        step, t = target - d, 1.0
        while t > 1e-6:  # projected search on the quadratic
            y = np.maximum(x + d + t * step, 0.0) - x
            q_y = float(g @ y + 0.5 * y @ (B @ y))
            if q_y < q_d:
                break
            t *= 0.5
        if not q_y < q_d:
            break
        d, q_d = y, q_y
        new_free = (x + d > 0) | (g + B @ d < 0)
        if t == 1.0 and np.array_equal(new_free, free):
            break
        free = new_free
    return d, q_d


def _full_forms(f, x) -> list:
    """The full forms K x (every row, for the curvature probe and the certificate check), counted
    as one evaluation of ``f``."""
    from .first_order import _forms_at  # (first_order imports this module)

    f.evals += 1
    return _forms_at(f.m, x)


def inner_solve(f, x0, max_evals: int, ftol: float, certified, presolve, state: dict):
    """Minimise ``f`` (an augmented Lagrangian of :mod:`.first_order`, no auxiliary variables)
    over x >= 0 from ``x0``; ``certified(x)`` after every step may end it; ``presolve(x, evals)``
    runs L-BFGS-B; ``state["mu"]`` keeps the damping between calls. Returns x."""
    model = f.m
    rng = np.random.default_rng(0)
    start = f.evals
    x = np.maximum(np.asarray(x0, dtype=float), 0.0)
    blocks = _full_forms(f, x)  # one full product per x: the probe and the certificate share it
    reach = [np.maximum(a, b) for a, b in zip(row_curvature(model, f, blocks, x, rng, REACH_SHIFT)[0],
                                              row_curvature(model, f, blocks, x, rng, -REACH_SHIFT)[0])]
    scale = np.zeros(model.n_beamlets)
    for W in _weighted_rows(model, reach):
        scale += np.asarray(W.multiply(W).sum(axis=0)).ravel()
    scale = np.maximum(scale, 1e-12 * max(float(scale.max()), 1e-300))
    fx, g = f(x)
    if int(((x > 0) | (g < 0)).sum()) > MAX_CANDIDATES:
        x = np.maximum(presolve(x, min(PRESOLVE_EVALS, max_evals)), 0.0)
        fx, g = f(x)
        blocks = _full_forms(f, x)
    mu = state.get("mu") or MU0
    small = 0
    while f.evals - start < max_evals:
        C = np.flatnonzero((x > 0) | (g < 0))
        curv, curv_x = row_curvature(model, f, blocks, x, rng)
        H = np.zeros((len(C), len(C)))
        for W in _weighted_rows(model, curv):
            Wc = W[:, C]
            H += (Wc.T @ Wc).toarray()
        H[np.diag_indices_from(H)] += curv_x[C]
        ratio = 0.0
        while f.evals - start < max_evals and mu <= 1e12:
            B = H.copy()
            B[np.diag_indices_from(B)] += mu * scale[C]
            dC, q = box_qp(B, g[C], x[C])
            if not q < 0:
                mu *= 4.0
                continue
            d = np.zeros_like(x)
            d[C] = dC
            xn = np.maximum(x + d, 0.0)
            fn, gn = f(xn)
            ratio = (fn - fx) / q
            mu = mu / 4.0 if ratio > 0.75 else (mu * 4.0 if ratio < 0.25 else mu)
            if ratio > 1e-4:
                break
        if not ratio > 1e-4:
            break
        rel = (fx - fn) / max(abs(fx), 1e-300)
        x, fx, g = xn, fn, gn
        blocks = _full_forms(f, x)
        if certified is not None and certified(x, blocks):
            break
        small = small + 1 if rel <= ftol else 0
        if small >= 3:
            break
    state["mu"] = max(mu, 1e-8)
    return x
