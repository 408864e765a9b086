"""A duality-gap bound for the first-order solver that holds although its inner solves are inexact.

The Lagrangian bound ``L(x) - g^T x`` lower-bounds the optimum only when the gradient g of the
Lagrangian in the weights is >= 0, and its gap ``g^T x - comp`` only reflects the optimum when g
vanishes on the beamlets in use. An inexact inner solve leaves small gradients of both signs:
ignoring them claimed a gap ten times below the true one (CT photons: 3.2e-5 claimed, >= 3.8e-4
true; the negative parts times the weights alone were 0.12 of an objective of 151.6).

Fenchel duality gives a bound for *any* dual point: each soft term h_k of one linear form y_k
contributes ``-h_k*(u_k)``, the hard terms ``-sigma_C(lambda)``, and the bound holds when
``K^T (sum u_k + lambda) (+ the weight terms' gradient) >= 0``. At u_k = grad h_k(y_k) this is the
Lagrangian bound. Here the squared penalties (:meth:`objectives.terms.Term.quadratic_conjugate`,
whose conjugates are known in closed form) move their u by delta:

1. a few conjugate-gradient steps on ``K_F^T D K_F s = g_F`` (F: beamlets in use, D: the penalties'
   curvature), delta = -D K s, cancel most of g on F (the bound's price is then about a Newton
   decrement, the inner problem's own distance to its optimum);
2. what is left negative anywhere is covered by raising u (delta >= 0, :func:`_raise`) on the
   penalties whose slopes may rise (over-dose, deviation).

The gap is then ``g^T x - comp + sum_k h_k*(u_k + delta_k) - h_k*(u_k)``, exact arithmetic on the
full voxel sets, no assumption on the optimum. A beamlet with a negative gradient that no such
penalty reaches keeps a first-order estimate ``-g_i x_i`` (the bound at x* = x), and the record
says the gap is then an estimate.
"""

from __future__ import annotations

import numpy as np

#: most conjugate-gradient steps of (1); each is one product K s and one K^T r. Measured on CT
#: photons (1633 beamlets) at a plan 1e-6 above the optimum: relative gap 1.9e-3 / 5.5e-4 / 2.0e-4 /
#: 2.9e-5 / 4.4e-6 / 2.3e-6 after 0 / 10 / 30 / 60 / 100 / 200 steps; they stop earlier on their
#: own estimate of the gap (:func:`_cancel`)
CG_STEPS = 200
#: relative residual (of the right-hand side g on the beamlets in use) at which they stop
CG_RTOL = 1e-6
#: conjugate-gradient solves of (1), each on the beamlets in use and those the previous one left
#: with a negative gradient
ACTIVE_PASSES = 3
#: the steps stop once their own gap estimate has not fallen PLATEAU_FRACTION below its lowest in
#: PLATEAU_STEPS steps, keeping the step with the lowest estimate. The estimate flattens long
#: before CG_STEPS where the plan is not yet near the optimum (CT photons: at 1.86 from step ~120 on,
#: against a target of 1), and at an iterate away from the inner optimum it rises from step 0 on
#: (C-shape 8 mm protons: 2.7 -> 95-260 after 10-190 steps, s = 0 the best)
PLATEAU_STEPS = 20
PLATEAU_FRACTION = 0.01
#: ... but only while that lowest estimate is above PLATEAU_FAR x the gap sought: near it the steps
#: go on (an estimate stopped at a plateau near it left a robust warm start uncertified at a gap
#: of 3.6e-4 for 40 rounds)
PLATEAU_FAR = 2.0
#: steps without a new lowest estimate that end them near the gap sought (away from the inner
#: optimum the estimate can also climb from near it: 120k-voxel synthetic case, 0.008 -> 1.4
#: against a target of 0.009)
NEAR_PLATEAU_STEPS = 60
#: the raise's price over (negative gradient x weight) (C-shape 6 mm photons: 3.2-3.4 after 3 to 20
#: rounds; a bound on it would need the optimum of a linear program)
RAISE_OVERSHOOT = 4.0
#: rescaling rounds of the raise (2): each is one product K s and one K^T delta
RAISE_ROUNDS = 3


def quadratic_terms(model, blocks, x) -> list:
    """(term, block, conjugate data) of the soft terms (not robust epigraphs) with a closed-form
    quadratic conjugate on a form of the voxels."""
    out = []
    for t in model.terms:
        if t.hard or t.epi is not None:
            continue
        data = t.term.quadratic_conjugate(model.forms(t, blocks, x), t.ctx)
        if data is None:
            continue
        block = t.blocks.get(data["form"])
        if block is not None and block != "weights":
            out.append((t, block, data))
    return out


def conjugate_shift(data: dict, delta) -> float:
    """h*(u + delta) - h*(u) summed over the voxels (``delta`` within the slope range)."""
    u, c, t = data["slope"], data["curvature"], data["limit"]
    v = u + delta
    return float(delta @ (t + (u + v) / (2.0 * c)))


def bound(model, x, blocks, g, base: float, target: float = 0.0) -> tuple[float, float, dict]:
    """(gap, estimated part, details: ``dual_moved``, ``gap_is_bound``) for the weights ``x``
    (>= 0), the forms ``blocks`` = K x,
    the gradient ``g`` of the Lagrangian in x and ``base`` = g^T x - comp; ``target``: the gap
    sought (the conjugate gradients stop once their own estimate is within half). The gap is >= the
    objective's excess over the optimum where ``estimated`` is 0. Its absolute value is taken, as
    for the first-order gap: a plan below the bound (the optimum) has bought that much with hard
    violations within tolerance, which the certificate keeps small too."""
    xp = model.xp
    need = xp.maximum(-g, 0.0)
    terms = quadratic_terms(model, blocks, x)
    if not terms:
        return abs(base) + float(need @ x), float(need @ x), {"dual_moved": 0.0,
                                                             "gap_is_bound": not bool((need > 0).any())}
    # the beamlets to cancel on: those in use, then also those left with a negative gradient
    # (a raise there costs about their column's dose, not their weight, which is 0)
    free = x > 0
    for _ in range(ACTIVE_PASSES):
        deltas, plateau = _cancel(model, x, g, terms, base, target, free)
        parts = _stacked(model, [(b, d) for (_, b, _), d in zip(terms, deltas)])
        g1 = g + model.rmatvec(parts) if parts is not None else g
        model.certificate_products += 1
        more = (g1 < 0) & ~free
        if plateau or not bool(more.any()):
            break  # (a plateau far from the target: more beamlets to cancel on would not reach it)
        free = free | more
    raised, estimate, uncovered = _raise(model, xp.maximum(-g1, 0.0), x, terms)
    deltas = [d + r for d, r in zip(deltas, raised)]
    moved = sum(conjugate_shift(data, d) for (_, _, data), d in zip(terms, deltas))
    return abs(base + moved) + estimate, estimate, {"dual_moved": moved, "gap_is_bound": not uncovered}


def _stacked(model, pieces):
    """``model.per_block(pieces)`` stacked into one vector over the model's rows."""
    parts = model.per_block(pieces)
    return model.xp.concatenate(parts) if parts else None


def _cancel(model, x, g, terms, base: float, target: float, free) -> tuple[list, bool]:
    """Step (1): delta per term from preconditioned conjugate gradients on the beamlets in use,
    clipped to each term's slope range. With delta = -D K s the gap is (g - H s)^T x - comp +
    s^T H s / 2 before clipping and step (2) (the conjugates' shift, by hand): on the beamlets in
    use g - H s is the residual r, so each step knows its gap for two dot products. Returns the
    deltas and whether the steps ended on a plateau of that estimate (PLATEAU_STEPS)."""
    xp = model.xp
    # curvature where the slope is inside its range (a one-sided penalty below its limit is flat)
    active = [data["curvature"] * ((data["slope"] > data["lower"]) & (data["slope"] < data["upper"]))
              for _, _, data in terms]
    curv = model.per_block([(block, c) for (_, block, _), c in zip(terms, active)])
    zero = [xp.zeros_like(data["slope"]) for _, _, data in terms]
    b = xp.where(free, g, 0.0)
    if not bool(free.any()) or float(xp.abs(b).max()) == 0.0:
        return zero, False
    diag = model.column_norms(curv) ** 2
    inv = xp.where(free & (diag > 0), 1.0 / xp.where(diag > 0, diag, 1.0), 0.0)

    def hess(p):
        model.certificate_products += 2
        ks = model.split(model.matvec(p))
        return xp.where(free, model.rmatvec(xp.concatenate([c * k for c, k in zip(curv, ks)])), 0.0)

    # from s = 0: a start from the last call's solution (other multipliers, other beamlets) was
    # clipped hard to the slope ranges (C-shape 8 mm protons at its optimum: gap 0.9 against 4e-5)
    s, r = xp.zeros_like(x), b.copy()
    z = inv * r
    p, rz = z.copy(), float(r @ z)
    r0 = float(xp.sqrt(b @ b))
    # the estimate may end the steps only while every beamlet cancelled on is in use: a negative
    # gradient left on one that is not costs about its column's dose in the raise, not 0
    by_estimate = not bool((free & (x <= 0)).any())

    def estimate_at(s, r):
        # the gap at s, with what the raise adds for the negative residuals by its measured
        # overshoot (~3x); with beamlets not in use among those cancelled on it is optimistic, so
        # there it only stops the steps on a plateau, not at the target
        return abs(base - float(b @ x) + float(r @ x) + 0.5 * float(s @ (b - r))
                   + RAISE_OVERSHOOT * float(xp.maximum(-r, 0.0) @ x))

    best, since, plateau = (np.inf, s), 0, False
    for _ in range(CG_STEPS):
        if float(xp.sqrt(r @ r)) <= CG_RTOL * r0:
            break
        estimate = estimate_at(s, r)
        if by_estimate and estimate <= 0.5 * target:
            break
        if estimate < (1.0 - PLATEAU_FRACTION) * best[0]:
            best, since = (estimate, s), 0
        elif estimate < best[0]:
            best = (estimate, s)
        since += 1
        if since > (PLATEAU_STEPS if best[0] > PLATEAU_FAR * target else NEAR_PLATEAU_STEPS):
            plateau = True
            break
        hp = hess(p)
        php = float(p @ hp)
        if php <= 0 or rz <= 0:
            break
        a = rz / php
        s, r = s + a * p, r - a * hp
        z = inv * r
        rz, rz_old = float(r @ z), rz
        p = z + (rz / rz_old) * p
    if best[0] < estimate_at(s, r):
        s = best[1]  # the bound holds for any s; this one promises the smallest gap
    model.certificate_products += 1
    ks = model.split(model.matvec(s))
    return [xp.clip(-c * ks[block], data["lower"] - data["slope"], data["upper"] - data["slope"])
            for (_, block, data), c in zip(terms, active)], plateau


def _raise(model, need, x, terms) -> tuple[list, float, bool]:
    """Step (2): delta >= 0 per term with K^T delta >= ``need`` on every beamlet some term that
    may raise its slopes reaches (each beamlet's need over its squared column, then rescaled by
    need / cover, then scaled up to cover); the first-order estimate for the others, and whether
    there are any (a beamlet at weight 0 among them adds 0 to the estimate, but no bound holds)."""
    xp = model.xp
    out = [xp.zeros_like(data["slope"]) for _, _, data in terms]
    if not x.size or float(need.max()) == 0.0:
        return out, 0.0, False
    up = [k for k, (_, _, data) in enumerate(terms) if data["upper"] == np.inf]
    if not up:
        return out, float(need @ x), True
    diag = model.column_norms(model.per_block([(terms[k][1], 1.0) for k in up])) ** 2
    s = xp.where(diag > 0, need / xp.where(diag > 0, diag, 1.0), 0.0)
    for round_ in range(RAISE_ROUNDS + 1):
        model.certificate_products += 2
        ks = model.split(model.matvec(s))
        raised = {k: xp.maximum(ks[terms[k][1]], 0.0) for k in up}
        cover = model.rmatvec(_stacked(model, [(terms[k][1], d) for k, d in raised.items()]))
        if round_ < RAISE_ROUNDS:
            s = xp.where((need > 0) & (cover > 0), s * need / xp.where(cover > 0, cover, 1.0), s)
    covered = (need > 0) & (cover > 0)
    uncovered = (need > 0) & ~covered
    estimate = float(need[uncovered] @ x[uncovered]) if bool(uncovered.any()) else 0.0
    if bool(covered.any()):
        # scaled so that K^T delta >= need wherever it reaches (a hair over, for rounding)
        theta = float((need[covered] / cover[covered]).max()) * (1.0 + 1e-9)
        for k, d in raised.items():
            out[k] = theta * d
        # an influence matrix with negative entries (accepted) can push another beamlet's
        # gradient below 0: that part is then an estimate too, and no bound is claimed
        pushed = (need == 0) & (theta * cover < 0)
        if bool(pushed.any()):
            estimate += float(-theta * cover[pushed] @ x[pushed])
            uncovered = uncovered | pushed
    return out, estimate, bool(uncovered.any())
