"""Biological volume metrics and outcome models of a plan: BED / EQD2 DVHs and Dx, statistics of
voxel values, Poisson TCP and LKB NTCP.

Volume metrics reuse :mod:`optimizer.evaluate.dose_volume` on the BED / EQD2 voxel values of
:mod:`optimizer.evaluate.biology`, so "BED D95" is the BED that the hottest 95 % of the volume
receives at least, with the same interpolation convention as the physical D95. TCP and NTCP are
the formulas of :mod:`objectives.radiobiology` applied to a plan's voxels.
"""

from __future__ import annotations

import math

import numpy as np

from objectives import radiobiology as rb
from objectives.errors import BiologyError

from . import dose_volume as _dvh
from .biology import _at, _structure_dose, alpha_values, bed_values, beta_values, eqd2_values

#: Default clonogen density for Poisson TCP, per cm^3: the common modelling value 1e7 /cc
#: (e.g. Webb & Nahum, Phys Med Biol 1993;38:653; verify for the tumour type).
DEFAULT_CLONOGEN_DENSITY_PER_CC = 1e7


# -- DVHs, Dx, statistics ----------------------------------------------------------------------

def bed_dvh(plan, structure: str, lq, bins=None):
    """Cumulative BED-volume histogram: (BED bins in Gy, volume % with BED >= each bin)."""
    return _dvh.dvh(bed_values(plan, structure, lq), bins=bins)


def eqd2_dvh(plan, structure: str, lq, bins=None):
    """Cumulative EQD2-volume histogram: (EQD2 bins in Gy, volume %)."""
    return _dvh.dvh(eqd2_values(plan, structure, lq), bins=bins)


def bed_at_volume(plan, structure: str, lq, volume_pct: float) -> float:
    """BED_x (Gy): the BED that the hottest ``volume_pct`` % of the structure receives at least."""
    return _dvh.dose_at_volume(bed_values(plan, structure, lq), volume_pct)


def eqd2_at_volume(plan, structure: str, lq, volume_pct: float) -> float:
    """EQD2_x (Gy), as :func:`bed_at_volume`."""
    return _dvh.dose_at_volume(eqd2_values(plan, structure, lq), volume_pct)


def statistics(voxel_values: np.ndarray) -> dict[str, float]:
    """min, mean, max and D98/D95/D50/D10/D5/D2 of voxel values (equal voxel volumes), with
    the keys of :func:`optimizer.evaluate.dose_statistics` (``*_Gy``; for GARD the unit is none)."""
    return _dvh.dose_statistics(voxel_values)


# -- TCP / NTCP --------------------------------------------------------------------------------

def tcp(plan, structure: str, lq, clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC) -> float:
    """Poisson LQ tumour control probability of a target,
    TCP = exp(-sum_i rho_i V_i exp(-(alpha_i D_i + beta_i D_i^2 / n))),
    with per-voxel alpha and beta from ``lq`` (alpha table/map needed), voxel volumes V_i in cm^3
    from the grid, and ``clonogen_density_per_cc`` (scalar or 3-D map, per cm^3). No
    repopulation. See :func:`objectives.radiobiology.tcp_poisson`."""
    return math.exp(log_tcp(plan, structure, lq, clonogen_density_per_cc))


def log_tcp(plan, structure: str, lq, clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC) -> float:
    """Natural log of :func:`tcp` (useful when TCP underflows): -expected surviving clonogens."""
    D = _structure_dose(plan, structure)
    rho = _at(clonogen_density_per_cc, plan, structure, "clonogen_density_per_cc")
    with rb._course_dose_checked():
        return rb.log_tcp(D, plan.fractions, alpha_values(plan, structure, lq),
                          beta_values(plan, structure, lq), clonogen_density_per_cc=rho,
                          voxel_volumes_cc=plan.patient.grid.voxel_volume_cc)


def _lkb(parameters) -> rb.LKBParameters:
    if isinstance(parameters, rb.LKBParameters):
        return parameters
    if isinstance(parameters, str):
        key = " ".join(parameters.lower().split())
        if key in rb.NTCP_PARAMETERS:
            return rb.NTCP_PARAMETERS[key]
        raise BiologyError(f"parameters: no LKB parameters for organ {parameters!r} "
                           f"(known: {sorted(rb.NTCP_PARAMETERS)})")
    raise BiologyError(f"parameters: expected an organ name in NTCP_PARAMETERS or an LKBParameters, "
                       f"got {parameters!r}")


def ntcp(plan, structure: str, lq, parameters=None) -> float:
    """LKB NTCP of an organ at risk on voxel **EQD2** (the published parameters were fitted to
    conventionally fractionated doses): NTCP = Phi((gEUD_{1/n}(EQD2) - TD50) / (m TD50)).

    Parameters
    ----------
    plan, structure, lq : as elsewhere (alpha/beta of the organ from ``lq``)
    parameters : an organ key of :data:`objectives.radiobiology.NTCP_PARAMETERS` (e.g.
        "spinal cord"), or an :class:`~objectives.radiobiology.LKBParameters`; default the
        structure's own name looked up in that table
    """
    p = _lkb(structure if parameters is None else parameters)
    e = eqd2_values(plan, structure, lq)
    return rb.ntcp_lkb(e, np.ones_like(e), p.td50_Gy, p.m, p.n, dose_kind="EQD2")
