"""LET planning terms for proton plans: LETd limits, LET x dose limits and dirty-dose limits.

Linear forms in the spot weights x (per fraction; the terms see total-course quantities, n x):

* dose            d_i = n sum_j D_ij x_j                      (Gy)
* LET x dose      l_i = n sum_j L_ij D_ij x_j                 (keV/um x Gy)
* dirty dose      q_i = n sum_j [L_ij > T] D_ij x_j           (Gy delivered at LET above T)

with L_ij the dose-averaged LET of spot j in voxel i. The dose-averaged LET of the plan,
LETd_i = l_i / d_i, is linear-fractional, but ``LETd_i <= L`` is *exactly* the linear constraint
``l_i - L d_i <= 0`` (d_i >= 0; a voxel without dose satisfies it trivially). All three terms
are therefore affine in x, hence convex, hard or soft.

How a term gets its extra expressions (the protocol ``optimizer.problem`` implements)
--------------------------------------------------------------------------------------
A term with a non-empty class attribute ``needs`` asks the problem for per-fraction influence
rows of its structure's optimization voxels (same voxel order as ``ctx.voxel_index``), by name:

* ``"dose"``: rows of the physical dose-influence matrix (Gy per unit weight);
* ``"let_dose"``: rows of the LET x dose matrix of the same beams (keV/um x Gy per unit weight,
  e.g. ``optimizer.ProtonBeams.let_dose_influence``).

The problem then calls ``extras = term.extra_expressions(x, rows, ctx)`` (a dict of cvxpy
expressions of total-course quantities) and passes them as keywords:
``term.violation(dose, ctx, **extras)`` / ``term.penalty(dose, ctx, **extras)``. Standalone use
needs no problem at all: pass the expressions yourself, e.g.
``term.violation(n * (D @ x), ctx, let_dose=n * (L @ x))``.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .errors import TermError
from .terms import Term, TermContext, nonneg_parameter, positive_number


def dirty_dose_matrix(dose, let_dose, let_threshold_keV_um: float) -> sp.csr_matrix:
    """Dirty-dose influence: the entries of ``dose`` whose LET exceeds a threshold.

    Parameters
    ----------
    dose : sparse (voxels x spots) physical dose influence, Gy per unit weight
    let_dose : sparse LET x dose influence of the same shape and sparsity, keV/um x Gy
    let_threshold_keV_um : LET threshold T, keV/um; an entry counts when L_ij = let_dose / dose > T

    Returns a CSR float32 matrix with the sparsity of ``dose`` (entries at or below T removed).
    """
    thr = positive_number(let_threshold_keV_um, "let_threshold_keV_um")
    d = sp.csr_matrix(dose, dtype=np.float64)
    ld = sp.csr_matrix(let_dose, dtype=np.float64)
    if d.shape != ld.shape:
        raise TermError(f"let_dose: shape {ld.shape} differs from the dose matrix shape {d.shape}")
    d.sum_duplicates()
    ld.sum_duplicates()
    if not (np.array_equal(d.indptr, ld.indptr) and np.array_equal(d.indices, ld.indices)):
        # general case: L_ij on the common pattern (entries of let_dose without dose carry none)
        let = ld.multiply(d.power(-1.0)).tocsr()
        out = sp.csr_matrix(d.multiply(let > thr), dtype=np.float32)
        out.eliminate_zeros()
        return out
    keep = ld.data > thr * d.data
    out = sp.csr_matrix((np.where(keep, d.data, 0.0).astype(np.float32), d.indices.copy(), d.indptr.copy()),
                        shape=d.shape)
    out.eliminate_zeros()
    return out


def _need(extras: dict, key: str, term: Term):
    expr = extras.get(key)
    if expr is None:
        raise TermError(
            f"{term.describe()}: needs the '{key}' expression of its voxels (total course); pass "
            f"{key}=... to violation()/penalty(), or build it with extra_expressions()")
    return expr


class _LinearExtraTerm(Term):
    """A term that also needs linear forms other than the dose (see the module docstring)."""

    #: per-fraction influence rows the problem must provide, by name
    needs: tuple[str, ...] = ("let_dose",)

    def extra_expressions(self, x: cp.Expression, rows: dict, ctx: TermContext) -> dict:
        """Total-course expressions of the extra quantities from the weight variable ``x`` and
        the per-fraction rows ``rows[name]`` (sparse, optimization voxels x spots)."""
        out = {}
        for key in self.needs:
            if key not in rows:
                raise TermError(f"{self.describe()}: the problem did not provide '{key}' rows")
            m = rows[key]
            if m.shape[0] != len(ctx.volumes):
                raise TermError(f"{self.describe()}: '{key}' rows have {m.shape[0]} rows, expected one "
                                f"per optimization voxel ({len(ctx.volumes)})")
            if key != "dose":
                out[key] = float(ctx.fractions) * (m @ x)
        return out

    def violation(self, dose, ctx, **extras):  # pragma: no cover - abstract
        raise NotImplementedError

    def penalty(self, dose, ctx, **extras):
        """Weight x volume-weighted sum of the positive part of the violation."""
        g = self.violation(dose, ctx, **extras)
        if g.size == 1:
            return self.weight * cp.pos(g)
        return self.weight * (ctx.volumes @ cp.pos(g))


class LETDoseMax(_LinearExtraTerm):
    """LET x dose limit in every voxel: l_i = sum_j L_ij d_ij <= ``limit_keVum_Gy`` (total
    course, keV/um x Gy). Affine in the weights (hard), or a volume-weighted linear penalty on the
    excess (soft). Used as a surrogate for variable-RBE effects in OARs (e.g. brainstem, where
    high LET x dose flags regions of raised RBE)."""

    needs = ("let_dose",)

    def __init__(self, structure: str, limit_keVum_Gy: float, weight: float | None = None):
        super().__init__(structure, weight)
        self.limit_keVum_Gy = nonneg_parameter(limit_keVum_Gy, "LETDoseMax.limit_keVum_Gy")

    def violation(self, dose, ctx, let_dose=None, **extras):
        return _need({"let_dose": let_dose}, "let_dose", self) - self.limit_keVum_Gy

    def describe(self):
        return f"LETDoseMax('{self.structure}', {self.limit_keVum_Gy.value:g} keV/um Gy)"


class LETdMax(_LinearExtraTerm):
    """Dose-averaged LET limit in every voxel: LETd_i <= ``let_keV_um``.

    Exact linear form: sum_j (L_ij - L) d_ij x_j <= 0, i.e. ``let_dose - L * dose <= 0`` (no
    surrogate, see the module docstring). Note that it binds in every voxel, including low-dose
    voxels in the distal fall-off where LETd is high; restrict the structure accordingly.
    Soft form: weight x sum_i v_i max(l_i - L d_i, 0), in keV/um x Gy.
    """

    needs = ("let_dose",)

    def __init__(self, structure: str, let_keV_um: float, weight: float | None = None):
        super().__init__(structure, weight)
        self.let_keV_um = nonneg_parameter(let_keV_um, "LETdMax.let_keV_um")

    def violation(self, dose, ctx, let_dose=None, **extras):
        return _need({"let_dose": let_dose}, "let_dose", self) - self.let_keV_um * dose

    def describe(self):
        return f"LETdMax('{self.structure}', {self.let_keV_um.value:g} keV/um)"


class DirtyDoseMax(_LinearExtraTerm):
    """Dirty-dose limit: the dose delivered by spot-voxel contributions with LET above
    ``let_threshold_keV_um`` is <= ``dose_Gy`` (total course) in every voxel.

    Needs the "dose" and "let_dose" rows, from which :meth:`extra_expressions` builds the
    dirty-dose matrix (:func:`dirty_dose_matrix`, cached per voxel set); standalone, pass
    ``dirty_dose=n * (Q @ x)`` to :meth:`violation`. Affine in the weights.
    """

    needs = ("dose", "let_dose")

    def __init__(self, structure: str, dose_Gy: float, let_threshold_keV_um: float,
                 weight: float | None = None):
        super().__init__(structure, weight)
        self.dose_Gy = nonneg_parameter(dose_Gy, "DirtyDoseMax.dose_Gy")
        self.let_threshold_keV_um = positive_number(let_threshold_keV_um, "DirtyDoseMax.let_threshold_keV_um")

    def dirty_rows(self, dose_rows, let_dose_rows) -> sp.csr_matrix:
        """Per-fraction dirty-dose rows from the dose and LET x dose rows."""
        return dirty_dose_matrix(dose_rows, let_dose_rows, self.let_threshold_keV_um)

    def extra_expressions(self, x, rows, ctx):
        super().extra_expressions(x, rows, ctx)  # validates names and shapes
        q = self.dirty_rows(rows["dose"], rows["let_dose"])
        return {"dirty_dose": float(ctx.fractions) * (q @ x)}

    def violation(self, dose, ctx, dirty_dose=None, **extras):
        return _need({"dirty_dose": dirty_dose}, "dirty_dose", self) - self.dose_Gy

    def describe(self):
        return (f"DirtyDoseMax('{self.structure}', {self.dose_Gy.value:g} Gy above "
                f"{self.let_threshold_keV_um:g} keV/um)")
