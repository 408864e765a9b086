"""Patient geometry: the voxel grid, the CT and the structures.

Arrays are indexed ``[z, y, x]`` (slice, row, column). Positions are in the DICOM patient
coordinate system (LPS, mm). ``Grid.origin_mm`` is the position of the *centre* of voxel
``[0, 0, 0]`` and, like ``spacing_mm``, is given in ``(z, y, x)`` order.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import GeometryError

ROLES = ("target", "oar", "other")

#: a voxel centre this close (mm) to a margin counts as at it (Patient.expand): float noise of
#: the distance transform, far below any voxel size
MARGIN_TIE_MM = 1e-6

# HU -> relative electron density (electron density relative to water), piecewise linear.
# Representative bilinear CT calibration of the kind described by Schneider, Pedroni & Lomax,
# Phys Med Biol 1996;41:111 and tabulated for commissioning in AAPM TG-66 (Mutic et al., Med Phys
# 2003;30:2762): air 0.001, lung ~0.2-0.3, water 1.0, cortical bone ~1.7. Every scanner must be
# commissioned with its own phantom; pass ``table`` to override.
HU_TO_RED_TABLE = np.array(
    [
        [-1000.0, 0.001],  # air
        [-800.0, 0.20],  # inflated lung
        [-100.0, 0.93],  # adipose
        [0.0, 1.00],  # water
        [100.0, 1.07],  # muscle / soft tissue
        [1000.0, 1.58],  # dense bone
        [3000.0, 2.60],  # metal-like extreme, keeps the curve monotone
    ]
)


def check_hu_table(table, quantity: str = "density") -> np.ndarray:
    """A CT calibration as a float (N, 2) array (HU, ``quantity``), N >= 2, finite, HU strictly
    increasing, ``quantity`` >= 0; else :class:`GeometryError` naming what is wrong. A table
    whose ``quantity`` falls as HU rises (a typo, or the columns swapped) gives a warning: no
    tissue gets less dense with its CT number."""
    try:
        t = np.asarray(table, dtype=float)
    except (TypeError, ValueError):
        raise GeometryError(f"table: expected an (N, 2) array of HU and {quantity}, got {table!r}") from None
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] < 2:
        raise GeometryError(f"table: expected an (N, 2) array (N >= 2) of HU and {quantity}, "
                            f"got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise GeometryError("table: contains NaN or infinite values")
    if np.any(np.diff(t[:, 0]) <= 0):
        raise GeometryError("table: HU values (first column) must be strictly increasing")
    if np.any(t[:, 1] < 0):
        raise GeometryError(f"table: {quantity} values (second column) must be >= 0, got "
                            f"{t[:, 1].min():g} (columns swapped? expected HU first)")
    falls = np.flatnonzero(np.diff(t[:, 1]) < 0)
    if falls.size:
        warnings.warn(f"table: {quantity} falls as HU rises between rows {falls[0]} and {falls[0] + 1}; "
                      "check the calibration", stacklevel=3)
    return t


def hu_to_red(hu: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """Relative electron density (water = 1) from CT numbers in HU.

    Linear interpolation in ``table`` (N x 2: HU, density), clamped at the ends; the table is
    checked by :func:`check_hu_table` (:class:`GeometryError` when it is not N >= 2 finite rows
    of strictly increasing HU and densities >= 0; a swapped-column table, HU -1000.. as density,
    used to give a silently wrong dose).
    """
    t = HU_TO_RED_TABLE if table is None else check_hu_table(table, "density")
    return np.interp(np.asarray(hu, dtype=float), t[:, 0], t[:, 1]).astype(np.float32)


def _numbers(value, name: str, expected: str, kind) -> tuple:
    """A tuple of numbers from a sequence, or a GeometryError naming the field."""
    try:
        raw = np.atleast_1d(np.asarray(value))
        odd = (bool, np.bool_, str, bytes)
        mixed = isinstance(value, (list, tuple)) and any(isinstance(v, odd) for v in value)
        if raw.dtype.kind not in "iuf" or mixed:  # booleans and strings: True was a 1 mm voxel
            raise TypeError
        items = raw.astype(float)
        if items.ndim != 1 or (kind is int and not np.all(np.isfinite(items) & (items == np.round(items)))):
            raise ValueError
        return tuple(kind(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        raise GeometryError(f"{name}: expected {expected}, got {value!r}") from None


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid.

    Parameters
    ----------
    shape : (nz, ny, nx)
    spacing_mm : (dz, dy, dx) voxel size in mm
    origin_mm : (z, y, x) patient position (LPS, mm) of the centre of voxel [0, 0, 0]
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        shape = _numbers(self.shape, "shape", "3 positive ints (nz, ny, nx)", int)
        spacing = _numbers(self.spacing_mm, "spacing_mm", "3 positive finite values (dz, dy, dx)", float)
        origin = _numbers(self.origin_mm, "origin_mm", "3 finite values (z, y, x)", float)
        if len(shape) != 3 or min(shape) < 1:
            raise GeometryError(f"shape: expected 3 positive ints (nz, ny, nx), got {self.shape}")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(
                f"spacing_mm: expected 3 positive finite values (dz, dy, dx), got {self.spacing_mm}"
            )
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise GeometryError(f"origin_mm: expected 3 finite values (z, y, x), got {self.origin_mm}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def voxel_volume_cc(self) -> float:
        """Volume of one voxel in cm^3."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (z, y, x) along each axis, mm."""
        return tuple(
            o + s * np.arange(n) for o, s, n in zip(self.origin_mm, self.spacing_mm, self.shape)
        )

    def positions_mm(self, flat_index: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) array of voxel-centre positions in (x, y, z) LPS order, mm.

        ``flat_index`` selects voxels by their C-order flat index into ``shape``; all voxels
        when omitted.
        """
        if flat_index is None:
            flat_index = np.arange(self.n_voxels)
        iz, iy, ix = np.unravel_index(np.asarray(flat_index), self.shape)
        oz, oy, ox = self.origin_mm
        sz, sy, sx = self.spacing_mm
        return np.stack([ox + ix * sx, oy + iy * sy, oz + iz * sz], axis=1)

    def centre_mm(self) -> np.ndarray:
        """Geometric centre of the grid, (x, y, z) LPS mm."""
        return np.array(
            [o + s * (n - 1) / 2 for o, s, n in zip(self.origin_mm, self.spacing_mm, self.shape)]
        )[::-1]


#: Every assignment of a mask, role, name, CT or structure list draws a new number, so a problem
#: can tell whether the geometry it was built from has changed (ids of freed arrays are reused).
_REVISIONS = itertools.count(1)


def _frozen(array: np.ndarray, dtype) -> np.ndarray:
    """A read-only private copy: later changes to the caller's array cannot reach us."""
    out = np.array(array, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


@dataclass
class Structure:
    """A named region of interest.

    ``mask`` is a boolean array of the grid shape; ``role`` is one of "target", "oar", "other".
    The mask is copied and made read-only on assignment, so two structures built from one array
    never share it; assign a new mask (``s.mask = m2``) to change a structure.
    """

    name: str
    mask: np.ndarray
    role: str = "other"
    color: tuple[float, float, float] | None = None

    def __setattr__(self, key, value):
        if key == "name" and (not isinstance(value, str) or not value.strip()):
            raise GeometryError(f"Structure.name: expected a non-empty string, got {value!r}")
        if key == "role" and (not isinstance(value, str) or value not in ROLES):
            raise GeometryError(f"Structure '{self.name}'.role: expected one of {ROLES}, got {value!r}")
        if key == "mask":
            try:
                value = _frozen(value, bool)
            except (TypeError, ValueError) as exc:
                raise GeometryError(f"Structure '{self.name}'.mask: expected a 3-D [z, y, x] boolean "
                                    f"array ({exc})") from None
            if value.ndim != 3:
                raise GeometryError(f"Structure '{self.name}'.mask: expected a 3-D [z, y, x] boolean "
                                    f"array, got {value.ndim} dimensions")
        object.__setattr__(self, key, value)
        object.__setattr__(self, "revision", next(_REVISIONS))

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())


def _normalize(name: str) -> str:
    return "".join(name.split()).lower()


#: Names of body / external contours (compared ignoring case and whitespace): importers make them
#: helpers (role "other") and beam models compute dose inside them by default. matRad files use
#: "BODY" (TG119.mat, PROSTATE.mat) and "Skin" (LIVER.mat); DICOM exports often "External".
BODY_NAMES = ("Body", "External", "Skin", "Outline", "Patient")


def is_body_name(name: str, body_names=None) -> bool:
    """Whether ``name`` is a body / external contour name (case and whitespace ignored);
    ``body_names`` defaults to :data:`BODY_NAMES`."""
    names = BODY_NAMES if body_names is None else body_names
    return _normalize(name) in {_normalize(n) for n in names}


@dataclass
class Patient:
    """A planning geometry: grid, CT (HU) and structures.

    Parameters
    ----------
    grid : Grid
    ct_hu : float array of ``grid.shape``, CT numbers in HU (no NaN)
    structures : list of Structure, masks of ``grid.shape``, non-empty, unique names
    name : a label used in reports and file names
    """

    grid: Grid
    ct_hu: np.ndarray
    structures: list[Structure] = field(default_factory=list)
    name: str = "patient"

    def __setattr__(self, key, value):
        if key == "grid" and not isinstance(value, Grid):
            raise GeometryError(f"grid: expected an optimizer.Grid, got {type(value).__name__}")
        if key == "grid" and "ct_hu" in self.__dict__ and value.shape != self.ct_hu.shape:
            # the CT and the masks stay on the old shape: positions would index them wrongly
            raise GeometryError(f"grid: shape {value.shape} does not match the CT's {self.ct_hu.shape}; "
                                f"make a new Patient (or patient.resample) for another grid")
        if key == "name" and not isinstance(value, str):
            raise GeometryError(f"name: expected a string, got {type(value).__name__}")
        if key == "ct_hu":
            try:
                value = _frozen(value, np.float32)
            except (TypeError, ValueError) as exc:
                raise GeometryError(f"ct_hu: expected a numeric array of grid.shape ({exc})") from None
            if value.shape != self.grid.shape:
                raise GeometryError(f"ct_hu: shape {value.shape} does not match grid.shape {self.grid.shape}")
            if not np.all(np.isfinite(value)):
                n_bad = int((~np.isfinite(value)).sum())
                raise GeometryError(f"ct_hu: contains {n_bad} NaN or infinite values; expected finite HU")
        if key == "structures":
            if isinstance(value, (str, Structure)) or not hasattr(value, "__iter__"):
                raise GeometryError("structures: expected a list of Structure")
            given, value = list(value), []
            object.__setattr__(self, "structures", value)
            for s in given:
                self.add_structure(s)
        object.__setattr__(self, key, value)
        object.__setattr__(self, "_revision", next(_REVISIONS))

    def revision(self) -> tuple:
        """A key that changes whenever the CT, a structure or the structure list changes.

        Problems built from this patient compare it before every solve and rebuild when it
        differs, so a replaced structure is never optimized with its old voxels."""
        return (self._revision, self.grid) + tuple(s.revision for s in self.structures)

    # -- structures -------------------------------------------------------------------------
    def add_structure(self, structure: Structure, replace: bool = False) -> Structure:
        """Add a structure; an existing name is only replaced with ``replace=True``."""
        if not isinstance(structure, Structure):
            raise GeometryError(f"structure: expected an optimizer.Structure, got {type(structure).__name__}")
        if structure.mask.shape != self.grid.shape:
            raise GeometryError(
                f"Structure '{structure.name}'.mask: shape {structure.mask.shape} does not match "
                f"grid.shape {self.grid.shape}"
            )
        if structure.n_voxels == 0:
            raise GeometryError(f"Structure '{structure.name}': mask is empty (no voxels)")
        key = _normalize(structure.name)
        existing = [i for i, s in enumerate(self.structures) if _normalize(s.name) == key]
        if existing and not replace:
            raise GeometryError(
                f"Structure '{structure.name}': a structure of that name exists; pass replace=True"
            )
        for i in reversed(existing):
            self.structures.pop(i)
        self.structures.append(structure)
        object.__setattr__(self, "_revision", next(_REVISIONS))
        return structure

    @property
    def structure_names(self) -> list[str]:
        return [s.name for s in self.structures]

    def structure(self, name: str) -> Structure:
        """Look a structure up by name, ignoring case and whitespace."""
        if not isinstance(name, str):
            raise GeometryError(f"structure name: expected a string, got {type(name).__name__}")
        key = _normalize(name)
        for s in self.structures:
            if _normalize(s.name) == key:
                return s
        raise GeometryError(
            f"structure '{name}' not found; known structures: {', '.join(self.structure_names)}"
        )

    def resample(self, spacing_mm, target_rule: str = "centre") -> Patient:
        """This patient on a grid of voxel size ``spacing_mm`` (mm; one value or (dz, dy, dx)), or
        on a given :class:`Grid` that overlaps its own: CT by trilinear interpolation,
        structures by the centre-point rule; with
        ``target_rule="support"`` targets take every coarse voxel that enters the interpolation
        of a CT target voxel (floors carry back to the CT grid; see :mod:`optimizer.resample`).
        Plan on the result, then bring the dose back with
        :func:`optimizer.resample.resample_dose`."""
        from .resample import resample_patient

        return resample_patient(self, spacing_mm, target_rule)

    def body(self) -> Structure | None:
        """The body / external contour (a structure named as in :data:`BODY_NAMES`), or None;
        the largest one when several match."""
        bodies = [s for s in self.structures if is_body_name(s.name)]
        return max(bodies, key=lambda s: s.n_voxels) if bodies else None

    def __contains__(self, name: str) -> bool:
        return any(_normalize(s.name) == _normalize(name) for s in self.structures)

    def voxel_volumes_cc(self, name: str) -> np.ndarray:
        """Volume (cm^3) of each voxel of a structure, in flat-index order."""
        return np.full(self.structure(name).n_voxels, self.grid.voxel_volume_cc)

    def flat_indices(self, name: str) -> np.ndarray:
        """Flat (C-order) grid indices of a structure's voxels, ascending."""
        return np.flatnonzero(self.structure(name).mask.ravel())

    def relative_electron_density(self, table: np.ndarray | None = None) -> np.ndarray:
        """Relative electron density from the CT through ``table`` (N x 2: HU, density); by
        default the patient's own ``density_table`` where an importer set one (e.g. a matRad
        file's ``ct.hlut``), else :data:`HU_TO_RED_TABLE`."""
        if table is None:
            table = getattr(self, "density_table", None)
        return hu_to_red(self.ct_hu, table)

    # -- derived structures -----------------------------------------------------------------
    def _distance_outside(self, mask: np.ndarray) -> np.ndarray:
        """Distance (mm) of every voxel to the nearest voxel of ``mask`` (0 inside it)."""
        return ndimage.distance_transform_edt(~mask, sampling=self.grid.spacing_mm)

    def _distance_inside(self, mask: np.ndarray) -> np.ndarray:
        """Distance (mm) of every voxel of ``mask`` to the nearest voxel outside it (0 outside);
        a mask that fills the grid has none (the grid's edge is not a boundary, as for any mask
        that touches it): infinite. SciPy's transform of an all-True mask dropped voxels near
        [0, 0, 0] from a shrunk full-grid structure."""
        if mask.all():
            return np.full(mask.shape, np.inf)
        return ndimage.distance_transform_edt(mask, sampling=self.grid.spacing_mm)

    def expand(self, name: str, margin_mm: float) -> np.ndarray:
        """Mask of a structure grown (margin > 0) or shrunk (margin < 0) isotropically, mm.

        Uses the exact Euclidean distance transform with the grid spacing, so the margin is
        correct for anisotropic voxels. A voxel whose centre lies at the margin (to
        MARGIN_TIE_MM) is inside the grown structure and outside the shrunk one.
        """
        if not np.isfinite(margin_mm):
            raise GeometryError("margin_mm: expected a finite number of mm")
        mask = self.structure(name).mask
        # a voxel at exactly the margin is in (3 x 1.1 mm is 3.3000000000000003 in floats: a
        # 3.3 mm margin on 1.1 mm voxels kept 5 voxels in a line, not 7)
        if margin_mm >= 0:
            return self._distance_outside(mask) <= margin_mm + MARGIN_TIE_MM
        return self._distance_inside(mask) > -margin_mm + MARGIN_TIE_MM

    def ring(self, name: str, inner_mm: float, outer_mm: float, within: str | None = None) -> np.ndarray:
        """Shell between ``inner_mm`` and ``outer_mm`` outside a structure, optionally clipped
        to another structure (usually the body)."""
        if not (0 <= inner_mm < outer_mm):
            raise GeometryError(
                f"ring: expected 0 <= inner_mm < outer_mm, got inner_mm={inner_mm}, outer_mm={outer_mm}"
            )
        d = self._distance_outside(self.structure(name).mask)
        mask = (d > inner_mm) & (d <= outer_mm)
        if within is not None:
            mask &= self.structure(within).mask
        return mask
