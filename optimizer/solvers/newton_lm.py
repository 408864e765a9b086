"""Damped Newton inner solver of the first-order solver (``inner="newton"``, CPU): for spot
problems, whose inner problems L-BFGS-B solves slowly.

Why: pencil beams of one beam overlap laterally, so spot patterns that alternate from spot to
spot barely change the dose. The Hessian of the C-shape 8 mm proton inner problem on its free
spots has a condition number of ~3e8 after Jacobi scaling; L-BFGS-B then needs up to 3000
evaluations per outer round (49,000 in all on that case). A Newton step sees that curvature.

Each step (x >= 0, objective f: the augmented Lagrangian of one outer round, piecewise quadratic
in the forms y = K x):

* the row curvature D of f in y, probed from the form gradients at y and at y + eps s (s random
  signs; no product of K; exact for the voxelwise squared penalties and limits); for the hard
  DVH / CVaR limits the exact generalised Jacobian of their projection instead
  (:func:`coupled_curvature`): a diagonal on the voxels at the threshold plus a rank-2 coupling
  (the threshold moves with them), which the diagonal probe misses;
* H = K_C^T D K_C + (K^T U) rho C (K^T U)^T, dense on the candidate spots C (x > 0 or gradient
  < 0; a set larger than MAX_CANDIDATES at the start of an inner solve, as at a cold start,
  first gets PRESOLVE_EVALS evaluations of L-BFGS-B); K_C^T D K_C is kept from step to step
  (:class:`Gram`) and updated by the rows whose curvature changed;
* the bound-constrained quadratic model min g^T d + 1/2 d^T (H + mu diag(Gmax)) d, x + d >= 0,
  solved in spot space by an active-set projected Newton method (no product of K); Gmax is the
  curvature every row can reach (D probed at y +- 1000, in the forms' unit), so mu damps each
  spot by its own scale (Levenberg-Marquardt);
* one evaluation at x + d; the ratio of actual to predicted decrease adapts mu (x1/4 above 0.75,
  x4 below 0.25, as in trust-region methods) and rejects steps below 1e-4; mu carries over to
  the next outer round.

It is the one place the solver forms a product of K with itself: a dense block on the spots
kept (up to GRAM_GROWTH x the candidates; CT-size protons: ~2500 spots, 50 MB).
Measured (C-shape 8 mm, 2 proton beams, 4550 spots, 2 cores): 49,000 evaluations / 175-249 s
with L-BFGS-B against 398 evaluations / 13.9-15.6 s, the same certified objective within 1.1e-5;
on photons (6 mm) it takes fewer evaluations (516 vs 1324) but more time (14.9 vs 8.7 s: the
dense algebra), so it is not the default.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

#: more candidate spots than this at the start of an inner solve get an L-BFGS-B presolve first
MAX_CANDIDATES = 2000
#: L-BFGS-B evaluations first when more spots are candidates (a cold start)
PRESOLVE_EVALS = 300
#: active-set iterations of the quadratic subproblem
QP_ITERATIONS = 30
#: up to this share of the candidates fixed at their bound, an iteration of the quadratic
#: subproblem uses the factor of the whole B and a Schur complement on the fixed ones; more, a
#: factorisation of the free block (CT-size protons: ~11 factorisations of ~2000^2 per subproblem)
SCHUR_SHARE = 0.25
#: initial damping, relative to the largest reachable curvature of each spot
MU0 = 1e-3
#: probe offset of the forms for the reachable curvature (forms' unit, Gy for dose)
REACH_SHIFT = 1e3
#: the Gram matrix is rebuilt when more than this share of its curved rows changed curvature
GRAM_REBUILD_SHARE = 0.3
#: ... or after this many updates by changed rows (their rounding adds up)
GRAM_MAX_UPDATES = 20
#: a row's curvature counts as changed when it moved by more than this, relative
GRAM_RTOL = 1e-6
#: its spot set is the union of the candidates seen while at most this multiple of the candidates
GRAM_GROWTH = 1.5
#: new candidates up to this share of its spots are added as columns, more rebuild it
GRAM_NEW_SHARE = 0.2


def row_curvature(model, f, blocks, x, rng, shift: float = 0.0, skip=()):
    """Curvature of ``f`` per row of each form block at the forms ``blocks + shift`` (list of
    arrays, >= 0) and of the terms on the weights themselves (array), by one gradient difference
    along random signs with a step of 1e-6 of the largest form (no product of K); the hard terms
    numbered in ``skip`` are left out (:func:`coupled_curvature` gives theirs)."""
    a = np.zeros(model.n_aux)
    base = [b + shift for b in blocks]
    _, gy0, gx0, _ = f.at_forms(base, x, a, skip)
    signs = [rng.choice([-1.0, 1.0], size=len(b)) for b in base]
    eps = [1e-6 * max(float(np.abs(b).max()), 1e-12) if len(b) else 1.0 for b in base]
    s_x = rng.choice([-1.0, 1.0], size=len(x))
    e_x = 1e-6 * max(float(np.abs(x).max()), 1e-12)
    _, gy1, gx1, _ = f.at_forms([b + e * s for b, e, s in zip(base, eps, signs)], x + e_x * s_x, a, skip)
    rows = [np.maximum(s * (g1 - g0) / e, 0.0) for s, g0, g1, e in zip(signs, gy0, gy1, eps)]
    return rows, np.maximum(s_x * (gx1 - gx0) / e_x, 0.0)


def coupled_curvature(model, f, blocks, x):
    """The exact curvature of the hard terms whose projection couples voxels (CVaR limits):
    rho (diag(d) + U C U^T) per form block of their augmented-Lagrangian distance term (a
    diagonal probe sees only diag(d), plus noise, and misses that the voxels at a CVaR threshold
    move together with it). Returns (the hard terms' numbers, per-block diagonal pieces
    (block, rho d), low-rank pieces (K^T U as spots x r, rho C)); K^T U costs r products."""
    from .first_order import _shifted_projection  # (first_order imports this module)

    numbers, diagonal, low_rank = [], [], []
    for h, t in enumerate(t for t in model.terms if t.hard):
        forms = model.forms(t, blocks, x)
        z, _ = _shifted_projection(t, forms, f.lam[h], f.rho[h])
        jac = t.term.projection_jacobian(z, t.ctx)
        if jac is None or any(t.blocks[k] == "weights" for k in jac):
            continue
        numbers.append(h)
        rho = float(f.rho[h])
        for k, (d, U, C) in jac.items():
            b = t.blocks[k]
            diagonal.append((b, rho * d))
            if U.shape[1]:
                KU = np.stack([model.rmatvec(np.concatenate(model.per_block([(b, u)]))) for u in U.T], axis=1)
                low_rank.append((KU, rho * C))
    return numbers, diagonal, low_rank


def newton_hessian(model, f, blocks, x, C, rng, gram):
    """The Newton model's Hessian of ``f`` on the candidate spots ``C`` at the forms ``blocks``:
    K_C^T D K_C from ``gram`` (:class:`Gram`; D the probed rows of the soft terms and the hard
    limits' exact diagonal), the hard limits' low-rank coupling and the curvature of the terms on
    the weights themselves."""
    coupled, diagonal, low_rank = coupled_curvature(model, f, blocks, x)
    curv, curv_x = row_curvature(model, f, blocks, x, rng, skip=coupled)
    for b, d in diagonal:
        curv[b] = curv[b] + d
    H = gram.on(model, curv, C)
    for KU, R in low_rank:
        H += KU[C] @ R @ KU[C].T
    H[np.diag_indices_from(H)] += curv_x[C]
    return H


def _operator_curvature(model, rows_curv) -> list:
    """The curvature ``rows_curv`` (one array per block) on each operator's rows, in units of
    its unscaled matrix (the operator's factor squared folded in)."""
    return [d[:-1] * op.factor ** 2 for op, d in zip(model.operators, model.unstack(rows_curv))]


def _weighted_rows(model, curv_ops):
    """sqrt(D) K per operator (CSC, only rows with D > 0; ``curv_ops`` from
    :func:`_operator_curvature`): its Gram on columns C is K_C^T D K_C."""
    out = []
    for op, d in zip(model.operators, curv_ops):
        rows = np.flatnonzero(d > 0)
        if len(rows):
            out.append((sp.diags(np.sqrt(d[rows])) @ op.M[rows].astype(np.float64)).tocsc())
    return out


class Gram:
    """H = K_S^T D K_S, dense, on a set S of spots, kept from one Newton step to the next.

    A step changes the curvature D of few rows (CT-size protons: ~700 of ~8200 curved rows, each
    read by ~600 spots), so H is updated by the changed rows only, H += K_r^T (D_new - D_old) K_r.
    Candidates outside S (a few per step) are added as columns, K_new^T D K_S over the rows they
    reach, while they are at most GRAM_NEW_SHARE of S and S stays within GRAM_GROWTH of the
    candidates. H is rebuilt in full otherwise (on the union of S and the candidates within
    GRAM_GROWTH, else on the candidates), when more than GRAM_REBUILD_SHARE of the curved rows
    changed, or after GRAM_MAX_UPDATES updates (rounding)."""

    def __init__(self):
        self.S, self.d, self.H, self.updates = None, None, None, 0
        self.rebuilds = 0  # full builds so far (read by the tests)
        self.extensions = 0  # extensions by new spots so far (read by the tests)

    def on(self, model, curv, C):
        """K_C^T D K_C (dense) for the row curvature ``curv`` (one array per block) and the
        sorted candidate spots ``C``."""
        d = _operator_curvature(model, curv)
        changed = None
        if self.S is not None:
            new = C[~np.isin(C, self.S, assume_unique=True)]
            if len(new) <= GRAM_NEW_SHARE * len(self.S) and len(self.S) + len(new) <= GRAM_GROWTH * len(C):
                if len(new):
                    self._add_columns(model, new)
                # a row whose curvature moved by rounding only (it is probed by a difference of
                # gradients) keeps its old value in H and in self.d
                changed = [np.flatnonzero(np.abs(a - b) > GRAM_RTOL * np.maximum(np.abs(a), np.abs(b)))
                           for a, b in zip(d, self.d)]
        curved = sum(int(np.count_nonzero(a)) for a in d)
        if changed is None or self.updates >= GRAM_MAX_UPDATES or \
                sum(len(c) for c in changed) > GRAM_REBUILD_SHARE * max(curved, 1):
            S = C if self.S is None else np.union1d(C, self.S)
            self.S = S if len(S) <= GRAM_GROWTH * len(C) else C
            self.H = np.zeros((len(self.S), len(self.S)))
            for W in _weighted_rows(model, d):
                Ws = W[:, self.S]
                self.H += (Ws.T @ Ws).toarray()
            self.d = d
            self.updates, self.rebuilds = 0, self.rebuilds + 1
        else:
            for op, rows, a, b in zip(model.operators, changed, d, self.d):
                if len(rows):
                    U = op.M[rows][:, self.S].astype(np.float64)
                    self.H += (U.T @ sp.diags(a[rows] - b[rows]) @ U).toarray()
                    b[rows] = a[rows]
            self.updates += 1
        at = np.searchsorted(self.S, C)
        return self.H[np.ix_(at, at)]

    def _add_columns(self, model, new):
        """Extend H to the spots S + ``new`` (not in S) at the curvature it holds: the new rows
        and columns are K_new^T D K over the rows the new spots reach (a few of all)."""
        S = np.union1d(self.S, new)
        old_at, new_at = np.searchsorted(S, self.S), np.searchsorted(S, new)
        cross = np.zeros((len(new), len(S)))
        for op, d in zip(model.operators, self.d):
            rows = np.flatnonzero(np.diff(op.M[:, new].indptr))  # the rows the new spots reach
            rows = rows[d[rows] > 0]
            if len(rows):
                M = op.M[rows].astype(np.float64)
                cross += (M[:, new].T @ sp.diags(d[rows]) @ M[:, S]).toarray()
        H = np.zeros((len(S), len(S)))
        H[np.ix_(old_at, old_at)] = self.H
        H[new_at, :] = cross
        H[:, new_at] = cross.T
        self.S, self.H = S, H
        self.extensions += 1


def box_qp(B, g, x, iterations: int = QP_ITERATIONS):
    """d minimising q(d) = g^T d + 1/2 d^T B d subject to x + d >= 0 (B symmetric positive
    definite, dense), by an active-set projected Newton method; returns (d, q(d))."""
    n = len(x)
    d = np.zeros(n)
    free = ~((x <= 0) & (g > 0))
    q_d = 0.0
    whole = {}  # B's Cholesky factor and -B^-1 g, made once: each iteration is then a few solves
    for _ in range(iterations):
        F, A = np.flatnonzero(free), np.flatnonzero(~free)
        target = np.zeros(n)
        target[A] = -x[A]  # the bound variables go to their bound
        fixed = _fixed_step(whole, x, A) if len(A) <= SCHUR_SHARE * n and _whole(whole, B, g) else None
        if fixed is not None:
            target = fixed
        else:
            rhs = -(g[F] + B[np.ix_(F, A)] @ target[A]) if len(A) else -g[F]
            try:
                factor = sla.cho_factor(B[np.ix_(F, F)], lower=True, check_finite=False)
                target[F] = sla.cho_solve(factor, rhs, check_finite=False)
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


def _whole(cache: dict, B, g) -> bool:
    """Factor B once into ``cache`` (and u = -B^-1 g); False where B is not numerically positive
    definite (the caller factors its free block instead)."""
    if "factor" not in cache:
        try:
            cache["factor"] = sla.cho_factor(B, lower=True, check_finite=False)
            cache["u"] = sla.cho_solve(cache["factor"], -g, check_finite=False)
        except np.linalg.LinAlgError:
            cache["factor"] = None
    return cache["factor"] is not None


def _fixed_step(cache: dict, x, A):
    """The minimiser of the quadratic with the variables A at their bound (d_A = -x_A) from the
    whole B's factor (:func:`_whole`): d = u + Z m, Z = B^-1 E_A, (Z_A) m = -x_A - u_A (m: the
    fixed ones' Lagrange multipliers; O(n^2 |A|) instead of a factorisation). None where Z_A is
    singular (the caller factors the free block instead)."""
    d = cache["u"].copy()
    if len(A):
        Z = _inverse_columns(cache, A)
        try:
            d += Z @ np.linalg.solve(Z[A], -x[A] - cache["u"][A])
        except np.linalg.LinAlgError:
            return None
        d[A] = -x[A]
    return d


def _inverse_columns(cache: dict, A):
    """The columns A of B^-1 from the factor in ``cache`` (:func:`_whole`); each column is solved
    once per subproblem (the fixed set grows and shrinks by a few per iteration)."""
    n = len(cache["u"])
    at = cache.setdefault("at", np.full(n, -1))
    missing = A[at[A] < 0]
    if len(missing):
        E = np.zeros((n, len(missing)))
        E[missing, np.arange(len(missing))] = 1.0
        new = sla.cho_solve(cache["factor"], E, check_finite=False)
        old = cache.get("Z")
        at[missing] = np.arange(len(missing)) + (0 if old is None else old.shape[1])
        cache["Z"] = new if old is None else np.concatenate([old, new], axis=1)
    return cache["Z"][:, at[A]]


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
    for W in _weighted_rows(model, _operator_curvature(model, reach)):
        scale += np.asarray(W.multiply(W).sum(axis=0)).ravel()
    scale = np.maximum(scale, 1e-12 * max(float(scale.max()), 1e-300))
    fx, g = f(x)
    if int(((x > 0) | (g < 0)).sum()) > MAX_CANDIDATES:
        x = np.maximum(presolve(x, min(PRESOLVE_EVALS, max_evals)), 0.0)
        fx, g = f(x)
        blocks = _full_forms(f, x)
    mu = state.get("mu") or MU0
    gram = state.setdefault("gram", Gram())
    small = 0
    while f.evals - start < max_evals:
        C = np.flatnonzero((x > 0) | (g < 0))
        H = newton_hessian(model, f, blocks, x, C, rng, gram)
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
