"""The base shared by every beam model (photon, proton, minibeam): one entry point.

``model.influence(patient, target=None, *, isocenter_mm=None, dose_mask=None, max_memory_mb=None,
progress=False, ...)`` returns an :class:`~optimizer.influence.InfluenceSet` (the dose matrix plus
the further linear forms the model computes, e.g. ``"let_dose"`` for protons). Everything that
does not depend on the physics happens here, once:

* beam angles (IEC 61217, degrees): parsed and checked when the model is built (finite; a
  direction given twice, equal modulo 360 deg, is refused; only couch 0 for now);
* the patient and the target: the target defaults to the patient's single structure with role
  "target" (several or none: a :class:`~optimizer.errors.BeamError` that lists them), and must
  exist and be non-empty;
* the isocentre (default: the target's centroid, LPS mm), the relative-density cube of the model
  (:meth:`BeamModel._density`), the dose mask (default: the body contour, else density > 0.05) and
  one :class:`~optimizer.beams.raytrace.BeamGeometry` per beam;
* the memory check: after placing the beamlets and before any dose is computed, the model's
  estimate of the peak memory is compared with ``max_memory_mb`` (default: the memory available
  now) and a larger one is refused;
* progress of the per-beam loop through ``tqdm`` when ``progress=True`` and one ``logging``
  record (INFO, logger ``optimizer.beams.<model>``) per beam.

A subclass sets :attr:`BeamModel.modality` and :attr:`BeamModel.form_names` and implements its
physics only: :meth:`~BeamModel._density`, :meth:`~BeamModel._place` (beamlets or spots per beam),
:meth:`~BeamModel._estimate` (memory) and :meth:`~BeamModel._compute` (the matrices). A model
with options of its own (photon ``fields``, proton ``with_let``) overrides :meth:`influence` and
:meth:`estimate_memory` with the same parameters plus its keyword-only options, checks them in
:meth:`~BeamModel._options` and hands them on to :meth:`~BeamModel._run`.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from ..errors import BeamError, GeometryError
from ..geometry import Grid, Patient
from ..influence import InfluenceSet
from ..resample import TARGET_RULES, covered_fraction, support_mask, target_grid
from .raytrace import (
    BeamGeometry,
    available_memory_mb,
    check_beam_angles,
    check_dose_mask,
    check_max_memory,
    check_point,
    fan_samples,
    radiological_depth,
    refuse_if_too_large,
)

logger = logging.getLogger(__name__)

#: Voxels with a relative density at or below this value are outside the patient (the default
#: dose mask of every model).
BODY_DENSITY_THRESHOLD = 0.05

#: Dose-mask voxels sampled (at most) by the memory estimates of the models.
ESTIMATE_SAMPLE = 20_000


@dataclass(frozen=True, eq=False)
class BeamSetup:
    """The checked inputs of one :meth:`BeamModel.influence` call, shared by the physics.

    Attributes
    ----------
    patient : the patient
    target : name of the target structure as the patient spells it, or None (a model that needs
        no target for these options, e.g. photon beams with a field for every beam)
    target_mask : [z, y, x] boolean mask of the target, or None
    isocenter_mm : (x, y, z) LPS, mm
    density : [z, y, x] relative density the model traces through (electron density for
        photons, stopping power for protons), water = 1
    dose_mask : [z, y, x] boolean mask of the voxels to compute dose in (non-empty)
    voxels : flat C-order indices of ``dose_mask``, ascending
    geometries : one :class:`~optimizer.beams.raytrace.BeamGeometry` per beam, in beam order
    wepl_error : (scale, offset_mm) applied to every water-equivalent depth w inside the
        patient, ``w * scale + offset_mm`` (range-error scenarios of models that trace WEPL,
        :meth:`BeamModel.scenario_influence`); (1, 0) is the nominal case
    trace : (density, grid) the depths are traced through when finer than ``density``: the CT's
        when the dose is computed on a coarser dose grid (``influence(..., dose_grid=...)``), so a
        dose-grid point has the depth of its position in the CT, not in the resampled density;
        None: ``density`` on the patient's grid
    ct : the CT patient when the dose is computed on a coarser dose grid: beamlets and spots are
        placed around its target (:meth:`placement`), None otherwise
    """

    patient: Patient
    target: str | None
    target_mask: np.ndarray | None
    isocenter_mm: tuple[float, float, float]
    density: np.ndarray
    dose_mask: np.ndarray
    voxels: np.ndarray
    geometries: tuple[BeamGeometry, ...]
    wepl_error: tuple[float, float] = (1.0, 0.0)
    trace: tuple[np.ndarray, Grid] | None = None
    ct: Patient | None = None

    @property
    def grid(self) -> Grid:
        return self.patient.grid

    def placement(self) -> tuple[Patient, np.ndarray]:
        """(patient, target mask) the beamlets and spots are placed around: the CT's on a dose
        grid. Why: the resampled target is smaller by up to half a dose-grid voxel, and a field
        placed around it missed ``margin_mm`` on the CT target (2 mm CT, 4 mm dose grid, margin
        5 mm: 33 photon beamlets instead of 73, 202 proton spots instead of 468)."""
        if self.target_mask is None:
            raise BeamError("target: no target structure for this computation")
        if self.ct is None:
            return self.patient, self.target_mask
        return self.ct, self.ct.structure(self.target).mask

    def depth(self, geom: BeamGeometry, positions_xyz: np.ndarray, ray_spacing_mm: float | None = None,
              step_mm: float | None = None, exact_surface: bool = False):
        """:func:`~optimizer.beams.raytrace.radiological_depth` of points (LPS, mm) through
        :attr:`trace` where set: rays one dose-grid voxel apart (default), steps of half a CT
        voxel, the CT's own surface. Why: the dose grid's trilinear density puts a surface up to
        half a dose-grid voxel off, more along oblique rays (C-shape CT at a 5 mm dose grid, a
        72 deg beam: 95th percentile 4.6 mm off a 0.5 mm ray trace of the CT; through the CT
        0.28 mm). Returns (u_iso, v_iso, t, depth_mm)."""
        density, grid, ray, step = self._traced_fan(ray_spacing_mm, step_mm)
        return radiological_depth(density, grid, geom, positions_xyz, ray, step, exact_surface=exact_surface)

    def fan_samples(self, geom: BeamGeometry, u: np.ndarray, v: np.ndarray) -> int:
        """Size of the ray fan :meth:`depth` traces for points at these isocentre-plane
        coordinates (its default spacings), for memory estimates."""
        _, grid, ray, step = self._traced_fan()
        return fan_samples(grid, geom, u, v, ray, step)

    def _traced_fan(self, ray_spacing_mm: float | None = None, step_mm: float | None = None):
        """(density, grid, ray spacing, step) :meth:`depth` traces with; None: radiological_depth's
        defaults for that grid."""
        if self.trace is None:
            return self.density, self.grid, ray_spacing_mm, step_mm
        density, grid = self.trace
        half = min(grid.spacing_mm) / 2
        ray = min(self.grid.spacing_mm) if ray_spacing_mm is None else ray_spacing_mm
        return density, grid, ray, half if step_mm is None else min(step_mm, half)

    def estimate_sample(self) -> tuple[np.ndarray, float]:
        """LPS positions (N, 3, mm) of the dose-mask voxels a memory estimate traces (a fixed
        random sample of at most :data:`ESTIMATE_SAMPLE`) and the factor that scales counts on
        the sample up to the whole mask."""
        sample = self.voxels
        if len(sample) > ESTIMATE_SAMPLE:
            sample = np.sort(np.random.default_rng(0).choice(sample, ESTIMATE_SAMPLE, replace=False))
        return self.grid.positions_mm(sample), len(self.voxels) / len(sample)

    def target_positions_mm(self) -> np.ndarray:
        """(N, 3) LPS positions of the target voxels, mm (on the CT grid: :meth:`placement`)."""
        patient, mask = self.placement()
        return patient.grid.positions_mm(np.flatnonzero(mask.ravel()))


def _check_flag(value, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise BeamError(f"{name}: expected True or False, got {value!r}")


class BeamModel(ABC):
    """A set of beams that turns a patient into an :class:`~optimizer.influence.InfluenceSet`.

    Parameters
    ----------
    gantry_deg : gantry angle(s), degrees (IEC 61217); each direction once
    couch_deg : patient-support angle(s), degrees (IEC 61217): one for every beam or one per
        beam; only 0 (coplanar beams) is supported for now

    Attributes
    ----------
    modality : "photon", "proton", "minibeam", ... (the influence matrices' modality)
    form_names : the forms :meth:`influence` returns with its default options, "dose" first
    gantry_deg, couch_deg : lists of floats, one per beam
    """

    modality: ClassVar[str] = ""
    form_names: ClassVar[tuple[str, ...]] = ("dose",)
    #: How to need less memory; ends the message of a refused computation.
    _memory_hint: ClassVar[str] = "Use a coarser dose grid (dose_grid=) or fewer beams"

    def __init__(self, gantry_deg: Iterable[float] | float, couch_deg: Iterable[float] | float = 0.0):
        gantry, couch = check_beam_angles(gantry_deg, couch_deg)
        for b, c in enumerate(couch):
            if c != 0:
                raise BeamError(f"couch_deg: only 0 (coplanar beams) is supported, got {c:g} for beam {b}")
        self.gantry_deg: list[float] = gantry
        self.couch_deg: list[float] = couch

    @property
    def n_beams(self) -> int:
        return len(self.gantry_deg)

    @property
    @abstractmethod
    def source_axis_distance_mm(self) -> float:
        """Distance from the (virtual) source to the isocentre, mm."""

    # -- public ---------------------------------------------------------------------------------
    def influence(self, patient: Patient, target: str | None = None, *,
                  isocenter_mm: tuple[float, float, float] | None = None,
                  dose_mask: np.ndarray | None = None, max_memory_mb: float | None = None,
                  progress: bool = False, dose_grid=None, target_rule: str = "centre") -> InfluenceSet:
        """The influence set of all beams on the patient grid, or on a coarser dose grid.

        Parameters
        ----------
        patient : the geometry (CT and structures)
        target : structure the beams cover; default the patient's single structure with role
            "target" (a :class:`~optimizer.errors.BeamError` lists them when there are several)
        isocenter_mm : (x, y, z) LPS, mm; default the target's centroid
        dose_mask : [z, y, x] boolean mask of the voxels to compute dose in; default the body /
            external contour (:meth:`Patient.body`) where the patient has one, else the voxels
            with relative density > 0.05
        max_memory_mb : memory the computation may use, MB. After the beamlets are placed and
            before any dose is computed the peak memory is estimated (:meth:`estimate_memory`)
            and a larger estimate raises :class:`~optimizer.errors.BeamError`. Default: the
            memory available now (Linux ``MemAvailable``; no check where unknown); ``math.inf``
            switches the check off.
        progress : show a ``tqdm`` progress bar over the beams (quiet by default)
        dose_grid : voxel size of the dose grid, mm (one value or (dz, dy, dx)), or a
            :class:`~optimizer.geometry.Grid` overlapping the patient's; default the
            patient's grid. The dose is computed on ``patient.resample(dose_grid)`` (CT
            trilinear, structures by the centre point, :mod:`optimizer.resample`), its points'
            depths traced through the CT itself (:meth:`BeamSetup.depth`); a ``dose_mask``
            is then on that grid, or on the patient's (CT) grid, where it stands for every
            dose-grid voxel the interpolation onto its voxels reads; the default is the body so,
            and the surface dose on the CT grid is whole.
            ``PlanProblem(patient, influence)`` plans on the same resampled patient.
        target_rule : with ``dose_grid``, how targets are resampled: "centre" (default) or
            "support" (every dose-grid voxel the interpolation of a CT target voxel reads, so
            floors hold on the CT grid; :mod:`optimizer.resample`); ``PlanProblem`` follows it.

        Returns
        -------
        InfluenceSet : "dose" (Gy per fraction per unit beamlet weight) and the model's further
            forms, on the rows of the dose-mask voxels that some beamlet reaches.
        """
        return self._run(patient, target, isocenter_mm, dose_mask, max_memory_mb, progress,
                         dose_grid=dose_grid, target_rule=target_rule)

    def estimate_memory(self, patient: Patient, target: str | None = None, *,
                        isocenter_mm: tuple[float, float, float] | None = None,
                        dose_mask: np.ndarray | None = None, dose_grid=None,
                        target_rule: str = "centre") -> dict[str, float]:
        """Size of what :meth:`influence` would build with these arguments (``dose_grid`` and
        ``target_rule`` included), before building it: ``nnz`` (nonzeros of the dose matrix),
        ``matrix_mb`` (the finished float32 CSR matrices) and ``peak_mb`` (peak memory of the
        computation), from the placed beamlets and a sample of the dose-mask voxels."""
        return self._estimate_for(patient, target, isocenter_mm, dose_mask, dose_grid, target_rule)

    @staticmethod
    def default_target(patient: Patient) -> str:
        """The patient's single structure with role "target"; a :class:`~optimizer.errors.
        BeamError` that lists the candidates when there is none or there are several."""
        targets = [s.name for s in patient.structures if s.role == "target"]
        if len(targets) == 1:
            return targets[0]
        if not targets:
            raise BeamError("target: the patient has no structure with role 'target'; name the structure "
                            f"the beams should cover (structures: {', '.join(patient.structure_names)})")
        raise BeamError(f"target: the patient has {len(targets)} structures with role 'target' "
                        f"({', '.join(targets)}); name the one the beams should cover")

    def scenario_influence(self, patient: Patient, target: str | None = None, *,
                           isocenter_mm: tuple[float, float, float] | None = None,
                           dose_mask: np.ndarray | None = None, shift_mm=(0.0, 0.0, 0.0),
                           wepl_scale: float = 1.0, wepl_offset_mm: float = 0.0,
                           voxel_mask: np.ndarray | None = None, dose_grid=None, target_rule: str = "centre",
                           **options: Any) -> InfluenceSet:
        """The influence set of the *nominal* beamlets / spots (same table, same columns as
        :meth:`influence` with the same arguments) for the patient moved by ``shift_mm`` (x, y,
        z, LPS mm) relative to the isocentre, and (models that trace WEPL, protons) every
        water-equivalent depth inside the patient changed to ``w * wepl_scale + wepl_offset_mm``
        (a range error: stopping power scaled by ``wepl_scale``, plus an offset, mm).

        The beamlets are placed on the nominal geometry; then the isocentre moves by
        ``-shift_mm`` in the patient's frame (the patient moves by ``+shift_mm`` in the room) and
        the dose is computed in the voxels of ``voxel_mask`` ([z, y, x] bool, default the dose
        mask) only. ``dose_grid``, ``target_rule``: as in :meth:`influence` (``patient`` the CT
        patient, ``voxel_mask`` on the dose grid). Used by :mod:`optimizer.robust`."""
        _, setup, options = self._prepare(patient, target, isocenter_mm, dose_mask, dose_grid, target_rule,
                                          options)
        placed = self._place(setup, **options)
        shift = check_point(shift_mm, "shift_mm")
        scale = float(wepl_scale)
        offset = float(wepl_offset_mm)
        if not (np.isfinite(scale) and scale > 0 and np.isfinite(offset)):
            raise BeamError(f"wepl_scale / wepl_offset_mm: expected a factor > 0 and a finite offset in mm, "
                            f"got {wepl_scale!r}, {wepl_offset_mm!r}")
        if (scale, offset) != (1.0, 0.0) and not self.traces_wepl:
            raise BeamError(f"{type(self).__name__}: range errors (wepl_scale, wepl_offset_mm) apply to "
                            "models that trace water-equivalent depth (protons) only")
        iso = tuple(float(a) - float(b) for a, b in zip(setup.isocenter_mm, shift))
        geoms = tuple(BeamGeometry(g.gantry_deg, iso, g.sad_mm, g.couch_deg) for g in setup.geometries)
        mask = setup.dose_mask if voxel_mask is None else check_dose_mask(voxel_mask, setup.grid.shape)
        moved = dataclasses.replace(setup, isocenter_mm=iso, geometries=geoms, dose_mask=mask,
                                    voxels=np.flatnonzero(mask.ravel()), wepl_error=(scale, offset))
        return self._compute(moved, self._on_geometries(placed, geoms), False, **options)

    #: True for models whose dose depends on water-equivalent depth (range errors apply)
    traces_wepl: ClassVar[bool] = False

    def _on_geometries(self, placed: list, geometries: tuple[BeamGeometry, ...]) -> list:
        """``placed`` for moved beam geometries (same beamlets); default: unchanged (a model whose
        ``placed`` carries its geometries overrides this)."""
        return placed

    # -- the template ---------------------------------------------------------------------------
    def _run(self, patient, target, isocenter_mm, dose_mask, max_memory_mb, progress, dose_grid=None,
             target_rule: str = "centre", **options: Any) -> InfluenceSet:
        """Check everything, place the beamlets, refuse what does not fit in memory, compute."""
        fine, setup, options = self._prepare(patient, target, isocenter_mm, dose_mask, dose_grid, target_rule,
                                             options)
        limit = check_max_memory(max_memory_mb)
        progress = _check_flag(progress, "progress")
        placed = self._place(setup, **options)
        refuse_if_too_large(lambda: self._estimate(setup, placed, **options), limit,
                            available_memory_mb() if limit is None else None, self._memory_hint)
        out = self._compute(setup, placed, progress, **options)
        if dose_grid is not None:
            # what PlanProblem checks the patient's grid against, and resamples it by
            out.ct_grid, out.target_rule = fine.grid, target_rule
        return out

    def _prepare(self, patient, target, isocenter_mm, dose_mask, dose_grid, target_rule, options: dict):
        """(CT patient or None, the checked beam setup, the model's options): the common start of
        influence, scenario_influence and estimate_memory (on a dose grid: resampled, its depths
        traced through the CT, aimed at the CT target)."""
        fine, patient, dose_mask, isocenter_mm = self._on_dose_grid(
            patient, dose_grid, target_rule, dose_mask, target, isocenter_mm)
        options = self._options(**options)
        setup = self._setup(patient, target, isocenter_mm, dose_mask, self._target_required(**options))
        return fine, self._traced(setup, fine), options

    def _on_dose_grid(self, patient, dose_grid, target_rule, dose_mask, target=None, isocenter_mm=None):
        """(CT patient or None, the patient the dose is computed on, its dose mask, the isocentre):
        with a ``dose_grid`` the patient resampled onto it (see :meth:`influence`), else as given. A
        target the resampling loses (no dose-grid voxel centre inside it) is refused naming
        ``dose_grid``: the target itself is fine, the grid is too coarse or lies elsewhere. The
        default isocentre is the centroid of the target on the CT grid, not of its resampled mask:
        that one is lopsided by up to half a dose-grid voxel (ties go to the upper voxel), and the
        beams moved with it (C-shape 4 mm CT, 8 mm dose grid: by (-4.4, -1.9, -4.0) mm)."""
        if target_rule not in TARGET_RULES:
            raise BeamError(f"target_rule: expected one of {TARGET_RULES}, got {target_rule!r}")
        if target_rule != "centre" and dose_grid is None:
            raise BeamError("target_rule: applies to the resampling onto a dose grid; give dose_grid too")
        if dose_grid is None:
            return None, patient, dose_mask, isocenter_mm
        if not isinstance(patient, Patient):
            raise BeamError(f"patient: expected an optimizer.Patient, got {type(patient).__name__}")
        grid = target_grid(patient.grid, dose_grid, "dose_grid")
        wanted = _ct_targets(patient, target)
        other = [s.name for s in wanted if s.role != "target"]
        if target_rule == "support" and other:  # the rule goes by role: this target would not get it
            raise BeamError(f"target_rule: 'support' resamples the structures of role 'target'; the target "
                            f"'{other[0]}' has role '{wanted[0].role}': give it role 'target'")
        fine, patient = patient, patient.resample(grid, target_rule)
        kept = set(patient.structure_names)
        if wanted and not any(s.name in kept for s in wanted):
            names = " / ".join(repr(s.name) for s in wanted)
            spacing = tuple(float(v) for v in grid.spacing_mm)
            origin = tuple(round(float(v), 2) for v in grid.origin_mm)
            raise BeamError(f"dose_grid: the target {names} has no voxel centre on the {spacing} mm dose "
                            f"grid of shape {grid.shape} (origin {origin} mm); use a finer dose grid or "
                            f"one that covers the target")
        for t in wanted:  # a target planned on the part the grid covers would be planned short
            kept = covered_fraction(grid, fine.grid, t.mask)
            if kept < 1.0:
                raise BeamError(f"dose_grid: the {tuple(float(v) for v in grid.spacing_mm)} mm dose grid of "
                                f"shape {grid.shape} covers only {100 * kept:.1f} % of the target "
                                f"'{t.name}'; use a dose grid that covers the whole target")
        if dose_mask is not None and np.shape(dose_mask) == fine.grid.shape != patient.grid.shape:
            # a CT-grid mask: the dose-grid voxels its interpolation reads (as the default)
            dose_mask = support_mask(check_dose_mask(dose_mask, fine.grid.shape), fine.grid, patient.grid)
        elif dose_mask is None:
            # every dose-grid voxel the interpolation of a CT body voxel reads (support rule):
            # with the coarse body (centre rule) alone the outer CT layer of the body read
            # voxels without dose, biased low (8 / 12 mm: 13 % of the body, up to 75 % of the
            # interpolation weight; a skin max of 14 Gy was 16.4 Gy with the dose computed)
            dose_mask = support_mask(self._default_dose_mask(fine), fine.grid, patient.grid)
        if isocenter_mm is None and len(wanted) == 1:
            isocenter_mm = _centroid_mm(fine.grid, wanted[0].mask)
        return fine, patient, dose_mask, isocenter_mm

    def _traced(self, setup: BeamSetup, fine: Patient | None) -> BeamSetup:
        """``setup`` with its depths traced through the CT patient ``fine`` (BeamSetup.depth) and
        its beamlets placed around the CT target (BeamSetup.placement)."""
        return setup if fine is None else dataclasses.replace(setup, trace=(self._density(fine), fine.grid),
                                                              ct=fine)

    def _estimate_for(self, patient, target, isocenter_mm, dose_mask, dose_grid=None, target_rule="centre",
                      **options: Any) -> dict[str, float]:
        _, setup, options = self._prepare(patient, target, isocenter_mm, dose_mask, dose_grid, target_rule,
                                          options)
        return self._estimate(setup, self._place(setup, **options), **options)

    def _default_dose_mask(self, patient: Patient, density: np.ndarray | None = None) -> np.ndarray:
        """The body / external contour where there is one (no dose in couch, air or
        immobilisation devices), else every voxel denser than air."""
        body = patient.body()
        if body is not None:
            return body.mask
        return (self._density(patient) if density is None else density) > BODY_DENSITY_THRESHOLD

    def _setup(self, patient, target, isocenter_mm, dose_mask, target_required: bool = True) -> BeamSetup:
        """Check the patient, the target, the isocentre and the dose mask; the beam geometries."""
        if not isinstance(patient, Patient):
            raise BeamError(f"patient: expected an optimizer.Patient, got {type(patient).__name__}")
        if target is not None and not isinstance(target, str):
            raise BeamError(f"target: expected a structure name (str) or None, got {type(target).__name__}")
        target_mask = None
        if target is None:
            if target_required:
                target = self.default_target(patient)
            else:  # the target only places the isocentre
                targets = [s.name for s in patient.structures if s.role == "target"]
                target = targets[0] if len(targets) == 1 else None
                if target is None and isocenter_mm is None:
                    raise BeamError(f"isocenter_mm: required when no target is given (the patient has "
                                    f"{len(targets) or 'no'} structures with role 'target')")
        if target is not None:
            try:
                structure = patient.structure(target)
            except GeometryError as e:
                raise BeamError(f"target: {e}") from None
            target, target_mask = structure.name, structure.mask
            if not target_mask.any():
                raise BeamError(f"target '{target}': structure is empty (no voxels)")
        grid = patient.grid
        if isocenter_mm is None:
            isocenter_mm = _centroid_mm(grid, target_mask)
        iso = check_point(isocenter_mm, "isocenter_mm")
        density = self._density(patient)
        if dose_mask is None:
            dose_mask = self._default_dose_mask(patient, density)
        mask = check_dose_mask(dose_mask, grid.shape)
        geoms = tuple(BeamGeometry(g, iso, self.source_axis_distance_mm, c)
                      for g, c in zip(self.gantry_deg, self.couch_deg))
        voxels = np.flatnonzero(mask.ravel())
        return BeamSetup(patient, target, target_mask, iso, density, mask, voxels, geoms)

    # -- progress and messages ------------------------------------------------------------------
    def _progress(self, progress: bool) -> tqdm:
        """A progress bar over the beams (disabled unless ``progress``); use as a context manager
        and call :meth:`_beam_done` after each beam."""
        return tqdm(total=self.n_beams, desc=f"{self.modality} dose", unit="beam", disable=not progress)

    def _beam_done(self, bar: tqdm, b: int, started: float, summary: str) -> None:
        """Log one beam (``summary``: what it holds) and advance the bar; ``started``: its
        :func:`time.perf_counter` at the start of the beam."""
        seconds = time.perf_counter() - started
        logger.info("%s beam %d/%d, gantry %g deg, couch %g deg: %s, %.1f s", self.modality, b + 1,
                    self.n_beams, self.gantry_deg[b], self.couch_deg[b], summary, seconds)
        bar.set_postfix_str(f"gantry {self.gantry_deg[b]:g}: {summary}", refresh=False)
        bar.update()

    # -- the physics: what a subclass implements ------------------------------------------------
    def _options(self, **options: Any) -> dict[str, Any]:
        """The model's own options of :meth:`influence`, checked (none by default)."""
        if options:
            raise BeamError(f"{', '.join(options)}: not an option of {type(self).__name__}.influence")
        return {}

    def _target_required(self, **options: Any) -> bool:
        """Whether the beams need a target with these options (default: always)."""
        return True

    @abstractmethod
    def _density(self, patient: Patient) -> np.ndarray:
        """[z, y, x] relative density traced by this model (water = 1)."""

    @abstractmethod
    def _place(self, setup: BeamSetup, **options: Any) -> list:
        """Beamlets (or spots) of every beam, in beam order, for :meth:`_estimate` and
        :meth:`_compute`."""

    @abstractmethod
    def _estimate(self, setup: BeamSetup, placed: list, **options: Any) -> dict[str, float]:
        """``nnz``, ``matrix_mb`` and ``peak_mb`` of the computation (see :meth:`estimate_memory`)."""

    @abstractmethod
    def _compute(self, setup: BeamSetup, placed: list, progress: bool, **options: Any) -> InfluenceSet:
        """The influence set; per beam, :meth:`_beam_done` inside ``with self._progress(progress)``."""


def _ct_targets(patient: Patient, target) -> list:
    """The structures the beams aim at on the CT patient: the one named ``target`` (none if the
    CT has no such structure: the beam setup names the problem), or every non-empty role-"target"
    one."""
    if isinstance(target, str):
        try:
            return [patient.structure(target)]
        except GeometryError:
            return []
    return [s for s in patient.structures if s.role == "target" and s.mask.any()]


def _centroid_mm(grid: Grid, mask: np.ndarray) -> tuple[float, float, float]:
    """Mean position (LPS, mm) of the voxels of ``mask``: the default isocentre."""
    return tuple(float(c) for c in grid.positions_mm(np.flatnonzero(mask.ravel())).mean(axis=0))
