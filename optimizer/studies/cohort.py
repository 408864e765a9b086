"""A seeded generator of virtual patients: geometry variations of a small head-and-neck-like
phantom, tumour radiosensitivity (RSI), alpha/beta per structure, a hypoxic sub-volume and the
clonogen density.

Each patient is a frozen, picklable :class:`VirtualPatient` (plain floats and strings), so a
work unit that receives one is a pure function of it. Patient ``i`` of a cohort draws from its
own child of ``numpy.random.SeedSequence(seed)`` (``spawn``), so the first k patients of a
cohort of N equal a cohort of k with the same seed: a study can grow without changing the
patients it already has.

The distributions are demonstration choices for a planning study (not a fitted population);
each range carries the source that motivates it in :class:`CohortRanges`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import PlanError


@dataclass(frozen=True)
class VirtualPatient:
    """One virtual patient (all lengths in mm, pO2 in mmHg, alpha/beta in Gy).

    Attributes
    ----------
    patient_id : unique label, e.g. "P0003"
    seed : integer seed of this patient's own draws (reproducible sub-sampling downstream)
    target_radius_mm : radius of the spherical target (PTV)
    cord_gap_mm : shortest distance between the target surface and the cord cylinder
    gland_gap_mm : shortest distance between the target surface and the gland sphere
    rsi : radiosensitivity index of the tumour, in (0, 1) (SF2; Scott et al., Lancet Oncol
        2017;18:202): tumour alpha = -ln(RSI)/2 - 0.1 Gy^-1, beta 0.05 Gy^-2 at the baseline pO2
    alpha_beta_cord_Gy, alpha_beta_gland_Gy, alpha_beta_tissue_Gy : alpha/beta of the organs at
        risk and of the rest of the body
    hypoxic_radius_mm : radius of the spherical hypoxic well inside the target
    hypoxic_offset_mm : (x, y, z) offset of the well's centre from the target centre, mm
    po2_min_mmHg : pO2 at the centre of the well (the baseline elsewhere is
        :data:`PO2_BASELINE_MMHG`)
    clonogens_per_cc : tumour clonogen density, per cm^3 (Poisson TCP)
    """

    patient_id: str
    seed: int
    target_radius_mm: float
    cord_gap_mm: float
    gland_gap_mm: float
    rsi: float
    alpha_beta_cord_Gy: float
    alpha_beta_gland_Gy: float
    alpha_beta_tissue_Gy: float
    hypoxic_radius_mm: float
    hypoxic_offset_mm: tuple[float, float, float]
    po2_min_mmHg: float
    clonogens_per_cc: float

    def __post_init__(self):
        if not isinstance(self.patient_id, str) or not self.patient_id.strip():
            raise PlanError(f"VirtualPatient.patient_id: expected a non-empty string, "
                            f"got {self.patient_id!r}")
        for f in fields(self):
            if f.name in ("patient_id", "seed", "hypoxic_offset_mm"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise PlanError(f"VirtualPatient.{f.name} ({self.patient_id}): expected a finite number > 0, "
                                f"got {v!r}")
        if not 0.0 < self.rsi < 1.0:
            raise PlanError(f"VirtualPatient.rsi ({self.patient_id}): expected a value in (0, 1), "
                            f"got {self.rsi}")
        off = tuple(float(v) for v in self.hypoxic_offset_mm)
        if len(off) != 3 or not all(math.isfinite(v) for v in off):
            raise PlanError(f"VirtualPatient.hypoxic_offset_mm ({self.patient_id}): expected 3 finite "
                            f"numbers (x, y, z) mm, got {self.hypoxic_offset_mm!r}")
        object.__setattr__(self, "hypoxic_offset_mm", off)

    def covariates(self) -> dict:
        """The patient's parameters as flat columns of a result row (offset split into x/y/z)."""
        d = asdict(self)
        ox, oy, oz = d.pop("hypoxic_offset_mm")
        d.update(hypoxic_offset_x_mm=ox, hypoxic_offset_y_mm=oy, hypoxic_offset_z_mm=oz)
        return d


#: pO2 of well-oxygenated tissue, mmHg (the baseline of examples/personalized_bed.py; tumour
#: pO2 below ~10 mmHg counts as hypoxic, e.g. Vaupel et al., Cancer Res 1989;49:6449).
PO2_BASELINE_MMHG = 40.0


@dataclass(frozen=True)
class CohortRanges:
    """Sampling ranges of :func:`generate_cohort` (uniform in [lo, hi] unless said otherwise).

    All are demonstration choices for a planning study; the comment of each names what it rests
    on. Lengths in mm, pO2 in mmHg, alpha/beta in Gy.
    """

    #: target radius: small head-and-neck nodal / primary volumes of 15-35 cc
    target_radius_mm: tuple[float, float] = (15.0, 20.0)
    #: target-to-cord distance: a few mm (abutting) to 2 cm
    cord_gap_mm: tuple[float, float] = (6.0, 20.0)
    #: target-to-gland distance
    gland_gap_mm: tuple[float, float] = (4.0, 20.0)
    #: RSI spread of the Total Cancer Care cohort of Scott et al. (Lancet Oncol 2017;18:202,
    #: most tumours between about 0.2 and 0.7; verify for the disease site)
    rsi: tuple[float, float] = (0.25, 0.65)
    #: cord alpha/beta: 2 Gy typical (TYPICAL_ALPHA_BETA_GY["spinal cord"], van Leeuwen 2018) +- 25 %
    alpha_beta_cord_Gy: tuple[float, float] = (1.5, 2.5)
    #: gland and other normal tissue: 3 Gy late-responding tissue (TYPICAL_ALPHA_BETA_GY) +- 33 %
    alpha_beta_gland_Gy: tuple[float, float] = (2.0, 4.0)
    alpha_beta_tissue_Gy: tuple[float, float] = (2.0, 4.0)
    #: hypoxic well radius as a fraction of the target radius
    hypoxic_radius_fraction: tuple[float, float] = (0.4, 0.7)
    #: minimum pO2 in the well: severe (1 mmHg) to moderate (10 mmHg) hypoxia (Vaupel 1989)
    po2_min_mmHg: tuple[float, float] = (1.0, 10.0)
    #: clonogen density, log-uniform over a decade on each side of the common 1e7 /cc
    #: (Webb & Nahum, Phys Med Biol 1993;38:653)
    log10_clonogens_per_cc: tuple[float, float] = (6.0, 8.0)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            try:
                lo, hi = (float(x) for x in v)
            except (TypeError, ValueError):
                raise PlanError(f"CohortRanges.{f.name}: expected (lo, hi), got {v!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise PlanError(f"CohortRanges.{f.name}: expected finite lo <= hi, got {v!r}")
            if f.name != "log10_clonogens_per_cc" and lo <= 0:
                raise PlanError(f"CohortRanges.{f.name}: expected values > 0, got {v!r}")
        if self.rsi[1] >= 1.0:
            raise PlanError(f"CohortRanges.rsi: expected values in (0, 1), got {self.rsi!r}")
        if self.hypoxic_radius_fraction[1] >= 1.0:
            raise PlanError(f"CohortRanges.hypoxic_radius_fraction: expected values in (0, 1), "
                            f"got {self.hypoxic_radius_fraction!r}")


def _draw(rng: np.random.Generator, lohi) -> float:
    lo, hi = lohi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def virtual_patient(index: int, seed: int, ranges: CohortRanges | None = None) -> VirtualPatient:
    """Patient ``index`` of the cohort with ``seed`` (independent of the cohort's size)."""
    ranges = ranges or CohortRanges()
    child = np.random.SeedSequence(seed, spawn_key=(index,))
    rng = np.random.default_rng(child)
    radius = _draw(rng, ranges.target_radius_mm)
    hyp_r = radius * _draw(rng, ranges.hypoxic_radius_fraction)
    # the well's centre lies inside the target, half-way to the edge in a random axial direction
    angle = _draw(rng, (0.0, 2.0 * math.pi))
    shift = 0.5 * (radius - hyp_r)
    return VirtualPatient(
        patient_id=f"P{index:04d}",
        seed=int(child.generate_state(1)[0]),
        target_radius_mm=radius,
        cord_gap_mm=_draw(rng, ranges.cord_gap_mm),
        gland_gap_mm=_draw(rng, ranges.gland_gap_mm),
        rsi=_draw(rng, ranges.rsi),
        alpha_beta_cord_Gy=_draw(rng, ranges.alpha_beta_cord_Gy),
        alpha_beta_gland_Gy=_draw(rng, ranges.alpha_beta_gland_Gy),
        alpha_beta_tissue_Gy=_draw(rng, ranges.alpha_beta_tissue_Gy),
        hypoxic_radius_mm=hyp_r,
        hypoxic_offset_mm=(shift * math.cos(angle), shift * math.sin(angle), 0.0),
        po2_min_mmHg=_draw(rng, ranges.po2_min_mmHg),
        clonogens_per_cc=10.0 ** _draw(rng, ranges.log10_clonogens_per_cc),
    )


def generate_cohort(n_patients: int, seed: int = 0,
                    ranges: CohortRanges | None = None) -> list[VirtualPatient]:
    """``n_patients`` virtual patients drawn with ``seed`` (see the module docstring).

    Parameters
    ----------
    n_patients : number of patients (>= 1)
    seed : non-negative integer; the same seed gives the same patients on any machine
    ranges : sampling ranges (default :class:`CohortRanges`)
    """
    for name, v, lo in (("n_patients", n_patients, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise PlanError(f"{name}: expected an integer >= {lo}, got {v!r}")
    if ranges is not None and not isinstance(ranges, CohortRanges):
        raise PlanError(f"ranges: expected a CohortRanges, got {type(ranges).__name__}")
    return [virtual_patient(i, int(seed), ranges) for i in range(int(n_patients))]
