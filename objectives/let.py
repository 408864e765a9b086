"""LET planning terms for proton plans: LETd limits, LET x dose limits and dirty-dose limits.

Linear forms in the spot weights x (per fraction; the terms see total-course quantities, n x):

* dose            d_i = n sum_j D_ij x_j                      (Gy)
* LET x dose      l_i = n sum_j L_ij D_ij x_j                 (keV/um x Gy)
* dirty dose      q_i = n sum_j [L_ij > T] D_ij x_j           (Gy delivered at LET above T)

with L_ij the dose-averaged LET of spot j in voxel i. The dose-averaged LET of the plan,
LETd_i = l_i / d_i, is linear-fractional, but ``LETd_i <= L`` is *exactly* the linear constraint
``l_i - L d_i <= 0`` (d_i >= 0; a voxel without dose satisfies it trivially). All three terms
are therefore affine in x, hence convex, hard or soft.

The terms are shapes on quantities (:mod:`objectives.quantities`) that declare the linear forms
they read ("dose", "let_dose"); the problem provides those forms' expressions, so nothing here
is special-cased. Standalone use needs no problem: ``q = term.quantity_expression({"dose":
n * (D @ x), "let_dose": n * (L @ x)}, ctx)`` then ``term.violation(q, ctx) <= 0``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import shapes
from .errors import TermError
from .quantities import DirtyDose, LETdExcess, LETxDose
from .terms import fixed_setting, positive_number


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


class LETDoseMax(shapes.Max):
    """LET x dose limit in every voxel: l_i = sum_j L_ij d_ij <= ``limit_keVum_Gy`` (total
    course, keV/um x Gy). Affine in the weights (hard), or a volume-weighted linear penalty on the
    excess (soft). Used as a surrogate for variable-RBE effects in OARs (e.g. brainstem, where
    high LET x dose flags regions of raised RBE). ``Max`` on :class:`~objectives.quantities.LETxDose`."""

    _limit_name = "limit_keVum_Gy"

    def __init__(self, structure: str, limit_keVum_Gy: float, weight: float | None = None):
        super().__init__(structure, limit_keVum_Gy, LETxDose(), weight)
        self.limit_keVum_Gy = self.limit


class LETdMax(shapes.Max):
    """Dose-averaged LET limit in every voxel: LETd_i <= ``let_keV_um``.

    Exact linear form: sum_j (L_ij - L) d_ij x_j <= 0, i.e. ``let_dose - L * dose <= 0`` (no
    surrogate, see the module docstring): ``Max(0)`` on
    :class:`~objectives.quantities.LETdExcess`. It binds in every voxel, including low-dose
    voxels in the distal fall-off where LETd is high; restrict the structure accordingly.
    Soft form: weight x sum_i v_i max(l_i - L d_i, 0), in keV/um x Gy.
    """

    def __init__(self, structure: str, let_keV_um: float, weight: float | None = None):
        super().__init__(structure, 0.0, LETdExcess(let_keV_um), weight)
        self.let_keV_um = self.quantity.let_keV_um

    def describe(self):
        return f"LETdMax({self._where}, {self.let_keV_um.value:g} keV/um)"


class DirtyDoseMax(shapes.Max):
    """Dirty-dose limit: the dose delivered by spot-voxel contributions with LET above
    ``let_threshold_keV_um`` is <= ``dose_Gy`` (total course) in every voxel. ``Max`` on
    :class:`~objectives.quantities.DirtyDose`, whose linear form is built from the dose and
    LET x dose rows (:func:`dirty_dose_matrix`). Affine in the weights."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, let_threshold_keV_um: float,
                 weight: float | None = None):
        super().__init__(structure, dose_Gy, DirtyDose(let_threshold_keV_um), weight)
        self.dose_Gy = self.limit

    # the quantity's, fixed when the term is made (assigning it was ignored by the built program)
    let_threshold_keV_um = fixed_setting("let_threshold_keV_um", "_let_threshold", "the LET threshold")

    @property
    def _let_threshold(self) -> float:
        return self.quantity.let_threshold_keV_um

    def dirty_rows(self, dose_rows, let_dose_rows) -> sp.csr_matrix:
        """Per-fraction dirty-dose rows from the dose and LET x dose rows."""
        return dirty_dose_matrix(dose_rows, let_dose_rows, self.let_threshold_keV_um)

    def describe(self):
        return (f"DirtyDoseMax({self._where}, {self.limit.value:g} Gy above "
                f"{self.let_threshold_keV_um:g} keV/um)")
