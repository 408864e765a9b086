"""Dose-rate planning terms for proton pencil-beam scanning (FLASH): the linear DADR limit.

Dose-averaged dose rate (DADR; van de Water et al., "Towards FLASH proton therapy: the impact of
treatment planning and machine characteristics on achievable dose rates", Acta Oncol
2019;58:1463-1469): in voxel i, with d_ij the dose of spot j and r_ij its dose rate there,

    DADR_i = sum_j d_ij r_ij / sum_j d_ij.

A spot is delivered at a fixed beam current, i.e. a fixed rate ``M`` of spot weight per second
(weight units / s; for 1e8-proton weights M = I / (1e8 e)), so it lasts t_j = x_j / M and
r_ij = D_ij x_j / t_j = M D_ij with D_ij the dose per unit weight. Then DADR_i is linear-fractional
in the weights x, and ``DADR_i >= R`` is **exactly** the linear constraint

    sum_j D_ij (M D_ij - R) x_j >= 0,   equivalently   q_i = sum_j D_ij (1 - (M/R) D_ij) x_j <= 0

(d_i > 0; a voxel without dose satisfies it trivially). We use the second, scaled form, total
course: q_i = n sum_j D_ij (1 - (M/R) D_ij) x_j = d_i (1 - DADR_i / R), in Gy (the dose delivered
"below" the rate, weighted by the rate shortfall), so the solvers' Gy tolerances apply.

Exactness needs each delivered spot to last x_j / M: with a minimum spot time t_min (machine
dead time), spots with x_j < M t_min last longer and their r_ij is lower than M D_ij. A plan whose
spots are 0 or >= M t_min (the two-stage minimum-weight method of :mod:`optimizer.flash`) meets
the constraint exactly when recomputed from the delivery model.

Which voxels: "DADR >= R wherever the dose exceeds a threshold" is disjunctive (d_i <= T or
DADR_i >= R), not convex. The term therefore constrains the voxels of a fixed ``region`` (a 3-D
boolean map), typically the voxels of an OAR above the threshold in a reference plan
(:func:`optimizer.flash.dose_rate_region`); outside it the form's rows are zero.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from . import shapes
from .errors import TermError
from .quantities import _LinearForm, at_voxels
from .terms import positive_number


def _region(region):
    if region is None:
        return None
    arr = np.asarray(region)
    if arr.ndim != 3 or arr.dtype != bool:
        raise TermError(f"DADRMin.region: expected a 3-D [z, y, x] boolean map or None, got "
                        f"{'shape ' + str(arr.shape) if arr.ndim != 3 else 'dtype ' + str(arr.dtype)}")
    out = arr.copy()
    out.setflags(write=False)
    return out


class DADRDeficit(_LinearForm):
    """q_i = d_i (1 - DADR_i / R) in Gy (total course): a linear form of its own, rows
    D_ij (1 - (M/R) D_ij) built from the dose rows (per fraction, per unit weight); <= 0 exactly
    when DADR_i >= R (module docstring).

    Parameters
    ----------
    rate_Gy_s : the dose-rate limit R, Gy/s (e.g. 40, the usual FLASH threshold)
    weight_rate_per_s : spot weight delivered per second at the beam current, M (weight units / s;
        :attr:`optimizer.flash.Machine.weight_rate_per_s`)
    region : optional 3-D boolean map [z, y, x] of the planning grid: only these voxels are
        constrained (rows elsewhere are zero); None: every voxel of the term's structure

    R, M and the region are fixed at construction (the rows are built from them): make a new term
    to change them.
    """

    base_forms = ("dose",)
    form = "dadr_deficit"
    unit = "Gy"

    def __init__(self, rate_Gy_s: float, weight_rate_per_s: float, region=None):
        self._rate = positive_number(rate_Gy_s, "DADRMin.rate_Gy_s")
        self._weight_rate = positive_number(weight_rate_per_s, "DADRMin.weight_rate_per_s")
        self._region = _region(region)

    rate_Gy_s = property(lambda self: self._rate, doc="the DADR limit R, Gy/s")
    weight_rate_per_s = property(lambda self: self._weight_rate, doc="M, weight units / s")
    region = property(lambda self: self._region, doc="the constrained voxels (3-D bool) or None")

    def linear_forms(self, rows, ctx):
        D = sp.csr_matrix(rows["dose"], dtype=np.float64)
        kappa = self._weight_rate / self._rate  # s/Gy x weight/s: 1 / (Gy per unit weight)
        E = sp.csr_matrix((D.data * (1.0 - kappa * D.data), D.indices.copy(), D.indptr.copy()),
                          shape=D.shape)
        if self._region is not None:
            keep = at_voxels(self._region.astype(float), ctx, "DADRMin.region") > 0.5
            E = sp.diags(keep.astype(np.float64)) @ E
        E = sp.csr_matrix(E, dtype=np.float32)
        E.eliminate_zeros()
        return {"dadr_deficit": E}

    def describe(self):
        tag = ""
        if self._region is not None:
            digest = hashlib.blake2b(np.packbits(self._region).tobytes(), digest_size=4).hexdigest()
            tag = f", region {int(self._region.sum())} vox #{digest}"
        return f"DADRDeficit({self._rate:g} Gy/s at {self._weight_rate:g} weight/s{tag})"


class DADRMin(shapes.Max):
    """Dose-averaged dose rate >= ``rate_Gy_s`` in every voxel of ``structure`` (inside
    ``region`` when given): ``Max(0)`` on :class:`DADRDeficit`, an exact linear constraint in the
    spot weights at a fixed beam current (module docstring). Hard without a weight; soft
    (weight x sum_i v_i max(q_i, 0), Gy) with one. For a smooth soft form (first-order solver)
    use ``SquaredOver(structure, 0, quantity=DADRDeficit(...), weight=w)``.

    Parameters
    ----------
    structure : structure name
    rate_Gy_s : DADR limit R, Gy/s
    weight_rate_per_s : spot weight per second at the beam current (weight units / s)
    region : optional 3-D boolean [z, y, x] map of the voxels to constrain
    weight : None (hard) or >= 0 (soft)
    """

    def __init__(self, structure: str, rate_Gy_s: float, weight_rate_per_s: float, region=None,
                 weight: float | None = None):
        super().__init__(structure, 0.0, DADRDeficit(rate_Gy_s, weight_rate_per_s, region), weight)

    @property
    def rate_Gy_s(self) -> float:
        return self.quantity.rate_Gy_s

    def describe(self):
        return f"DADRMin({self._where}, {self.quantity.rate_Gy_s:g} Gy/s)"


def dadr_deficit_rows(dose_rows, rate_Gy_s: float, weight_rate_per_s: float) -> sp.csr_matrix:
    """Rows D_ij (1 - (M/R) D_ij) of the DADR deficit form (per fraction, per unit weight) from
    dose rows D (Gy per fraction per unit weight), all voxels."""
    return DADRDeficit(rate_Gy_s, weight_rate_per_s).linear_forms({"dose": dose_rows}, None)["dadr_deficit"]
