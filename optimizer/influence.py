"""The dose-influence matrix: dose per fraction per unit beamlet (or spot) weight."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import BeamError
from .geometry import Grid


@dataclass
class InfluenceMatrix:
    """Sparse dose-influence matrix with its maps back to the grid and to the beamlets.

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix, float32, shape (n_rows, n_beamlets)
        Dose in Gy per fraction per unit beamlet weight.
    voxel_index : int64 array (n_rows,)
        Flat C-order index into ``grid.shape`` of each row, strictly increasing. Grid voxels
        that no beamlet reaches have no row.
    grid : Grid
    beamlets : dict of equal-length arrays (n_beamlets,)
        At least ``beam`` (beam number) and ``row``/``col`` (position in that beam's 2-D map).
        Photon beamlets add ``u_mm``/``v_mm`` (centre in the isocentre plane); proton spots add
        ``energy_MeV`` and ``layer``.
    beams : list of dict
        One entry per beam: ``gantry_deg``, ``couch_deg``, ``isocenter_mm`` (x, y, z),
        ``map_shape`` (rows, cols) and model-specific fields.
    modality : "photon", "proton" or "minibeam"

    Matrices computed elsewhere: :meth:`from_matrad_dij` converts matRad's row order;
    :meth:`check_patient` rejects a matrix on another grid or with implausibly ordered rows.
    """

    matrix: sp.csr_matrix
    voxel_index: np.ndarray
    grid: Grid
    beamlets: dict[str, np.ndarray]
    beams: list[dict] = field(default_factory=list)
    modality: str = "photon"

    def __post_init__(self):
        self.matrix = sp.csr_matrix(self.matrix, dtype=np.float32)
        self.voxel_index = np.asarray(self.voxel_index, dtype=np.int64)
        n_rows, n_cols = self.matrix.shape
        if self.voxel_index.shape != (n_rows,):
            raise BeamError(
                f"voxel_index: expected {n_rows} entries (one per matrix row), "
                f"got {self.voxel_index.shape}"
            )
        if n_rows and (np.any(np.diff(self.voxel_index) <= 0) or self.voxel_index[0] < 0
                       or self.voxel_index[-1] >= self.grid.n_voxels):
            raise BeamError("voxel_index: expected strictly increasing flat indices inside the grid")
        for key, col in self.beamlets.items():
            if len(col) != n_cols:
                raise BeamError(f"beamlets['{key}']: expected {n_cols} entries, got {len(col)}")
        if "beam" not in self.beamlets:
            raise BeamError("beamlets: a 'beam' column is required")

    def freeze(self) -> None:
        """Make the matrix arrays, ``voxel_index`` and the beamlet columns read-only (in place,
        no copy). :class:`~optimizer.problem.PlanProblem` freezes what it takes: a solver keeps a
        model built from them, and an in-place edit (``matrix.data *= 1.5``) reached the plan's
        dose but not the cached model (CLARABEL re-solved 'optimal', 10 Gy over a hard max).
        Edit a copy (``dataclasses.replace(inf, matrix=inf.matrix * 1.5)``) and build a new
        problem instead. Other views of the same memory (the SciPy matrix this one was made from
        without a copy) stay writeable: NumPy cannot reach them; an edit through them is still
        caught for hard terms, which every solve checks on the returned weights' dose."""
        self.matrix.sum_duplicates()  # canonical now: SciPy never sorts it in place later
        arrays = [self.matrix.data, self.matrix.indices, self.matrix.indptr, self.voxel_index]
        for arr in arrays + [c for c in self.beamlets.values() if isinstance(c, np.ndarray)]:
            while isinstance(arr, np.ndarray):  # the arrays it views too (the user's matrix)
                arr.flags.writeable = False
                arr = arr.base

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_beamlets(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def n_beams(self) -> int:
        return len(self.beams)

    # -- matRad dose-influence matrices -------------------------------------------------------
    @classmethod
    def from_matrad_dij(
        cls,
        matrix,
        grid: Grid,
        voxel_index: np.ndarray | None = None,
        beamlets: dict[str, np.ndarray] | None = None,
        beams: list[dict] | None = None,
        modality: str = "photon",
    ) -> InfluenceMatrix:
        """An influence matrix from a matRad ``dij`` (e.g. ``dij.physicalDose{1}``).

        matRad numbers voxels with 1-based MATLAB linear indices into a cube of size
        ``[ny nx nz]`` in column-major order, ``L - 1 = iy + ny * (ix + nx * iz)``; bioplan rows
        hold 0-based C-order flat indices into ``[z, y, x]``, ``iz * ny * nx + iy * nx + ix``.
        This converts the one into the other, sorts the rows and drops empty ones.

        Parameters
        ----------
        matrix : sparse or dense (n_rows, n_beamlets), Gy per fraction per unit weight (as
            matRad's ``dij.physicalDose{1}``)
        grid : the grid of the dose cube, bioplan order: ``Grid((nz, ny, nx), (dz, dy, dx), ...)``
            for matRad's ``dij.doseGrid`` (``dimensions = [ny nx nz]``, ``resolution.x/y/z``),
            e.g. ``patient.grid`` when the dose grid is the CT grid
        voxel_index : 1-based matRad linear indices of the rows; default: the matrix has one
            row per voxel of the grid (``grid.n_voxels`` rows) in matRad order, as
            ``dij.physicalDose{1}`` does
        beamlets : beamlet table (see the class); default ``beam`` all 0, ``row`` 0 and ``col``
            the beamlet's number. Pass matRad's ``dij.beamNum - 1`` as ``beam`` to keep beams.
        beams, modality : as in the class

        Raises
        ------
        BeamError : wrong row count, indices outside ``1..grid.n_voxels`` (0-based indices are
            reported as such) or repeated.
        """
        m = sp.csr_matrix(matrix, dtype=np.float32)
        n_rows, n_cols = m.shape
        nz, ny, nx = grid.shape
        if voxel_index is None:
            if n_rows != grid.n_voxels:
                raise BeamError(
                    f"from_matrad_dij: the matrix has {n_rows} rows but the grid {grid.shape} (z, y, x) "
                    f"has {grid.n_voxels} voxels; pass voxel_index (1-based matRad indices of the rows) "
                    "or the dose grid the dij was computed on")
            linear = np.arange(1, n_rows + 1, dtype=np.int64)
        else:
            raw = np.asarray(voxel_index, dtype=float).ravel()
            if raw.shape != (n_rows,):
                raise BeamError(f"from_matrad_dij: voxel_index has {raw.size} entries for {n_rows} rows")
            if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
                raise BeamError("from_matrad_dij: voxel_index: expected integer matRad indices")
            linear = raw.astype(np.int64)
            if n_rows and (linear.min() < 1 or linear.max() > grid.n_voxels):
                hint = (" (0-based? matRad indices are 1-based)" if linear.min() == 0
                        and linear.max() < grid.n_voxels else "")
                raise BeamError(f"from_matrad_dij: voxel_index {linear.min()}..{linear.max()} outside "
                                f"1..{grid.n_voxels}, expected 1-based matRad linear indices{hint}")
        iy, ix, iz = np.unravel_index(linear - 1, (ny, nx, nz), order="F")
        flat = np.ravel_multi_index((iz, iy, ix), grid.shape)
        order = np.argsort(flat, kind="stable")
        flat, m = flat[order], m[order]
        if np.any(np.diff(flat) == 0):
            raise BeamError("from_matrad_dij: voxel_index repeats a voxel")
        keep = np.flatnonzero(np.diff(m.indptr) > 0)
        if beamlets is None:
            beamlets = {"beam": np.zeros(n_cols, dtype=np.int64), "row": np.zeros(n_cols, dtype=np.int64),
                        "col": np.arange(n_cols, dtype=np.int64)}
        return cls(m[keep], flat[keep], grid, dict(beamlets), list(beams or []), modality)

    # -- consistency with a patient -----------------------------------------------------------
    def air_fraction(self, patient, air_hu: float = -900.0, order: str = "C") -> float:
        """Fraction of the matrix's total dose (all beamlets at unit weight) in voxels with CT
        numbers below ``air_hu``. ``order="matrad"`` reads the rows' flat indices as matRad's
        0-based column-major ``(y, x, z)`` indices instead (what they would mean if a matRad
        index had been stored without conversion). 0 for an empty matrix."""
        per_voxel = np.asarray(self.matrix.sum(axis=1), dtype=np.float64).ravel()
        total = float(per_voxel.sum())
        if not total > 0:
            return 0.0
        flat = self.voxel_index
        if order == "matrad":
            nz, ny, nx = self.grid.shape
            iy, ix, iz = np.unravel_index(flat, (ny, nx, nz), order="F")
            flat = np.ravel_multi_index((iz, iy, ix), self.grid.shape)
        elif order != "C":
            raise BeamError(f"order: expected 'C' or 'matrad', got {order!r}")
        hu = np.asarray(patient.ct_hu).ravel()[flat]
        return float(per_voxel[hu < air_hu].sum()) / total

    def check_patient(self, patient, air_hu: float = -900.0, max_air_fraction: float = 0.5) -> None:
        """Raise :class:`BeamError` when this matrix cannot be the dose on ``patient``.

        Checks, in order:

        1. the grid: ``self.grid`` must equal ``patient.grid`` (shape, spacing and origin); the
           message names both;
        2. plausibility of the row order. Dose from beams lies inside the patient; a matrix whose
           rows index the grid in another order (e.g. matRad's column-major ``(y, x, z)``
           indices used as bioplan's C-order ``[z, y, x]`` indices) puts much of it into air.
           Raised when more than ``max_air_fraction`` of the total dose (all beamlets at unit
           weight) lies in voxels with HU < ``air_hu``, or when more than 5 % does and reading
           the rows as matRad indices would put less than a quarter of that into air. (The second
           rule catches square ``ny == nx`` grids, where the mix-up is an in-plane transpose that
           keeps most of the dose inside the body.)

        Use :meth:`from_matrad_dij` to convert matRad indices.
        """
        if self.grid != patient.grid:
            raise BeamError(f"influence matrix grid {self.grid} differs from patient.grid {patient.grid}; "
                            "compute the matrix on this patient's grid (or resample the patient)")
        air = self.air_fraction(patient, air_hu)
        if air <= 0.05 and air <= max_air_fraction:
            return
        as_matrad = self.air_fraction(patient, air_hu, order="matrad")
        if air > max_air_fraction or as_matrad < 0.25 * air:
            raise BeamError(
                f"influence matrix implausible for patient '{patient.name}': {100 * air:.0f} % of its dose "
                f"(all beamlets at unit weight) lies in voxels with HU < {air_hu:g} (air); read as matRad "
                f"indices, {100 * as_matrad:.0f} % would. Its rows probably index the grid in another "
                f"order: bioplan rows are 0-based C-order flat indices into [z, y, x] (shape "
                f"{patient.grid.shape}); matRad's are 1-based column-major (y, x, z) indices; convert "
                f"them with InfluenceMatrix.from_matrad_dij")

    # -- rows --------------------------------------------------------------------------------
    def rows_of(self, flat_index: np.ndarray) -> sp.csr_matrix:
        """Rows for the given grid voxels (flat indices); voxels without a row get a zero row."""
        flat_index = np.asarray(flat_index, dtype=np.int64)
        pos = np.searchsorted(self.voxel_index, flat_index)
        pos_c = np.minimum(pos, max(len(self.voxel_index) - 1, 0))
        present = (len(self.voxel_index) > 0) & (self.voxel_index[pos_c] == flat_index)
        sel = sp.csr_matrix(
            (np.ones(int(present.sum()), dtype=np.float32),
             (np.flatnonzero(present), pos_c[present])),
            shape=(len(flat_index), self.matrix.shape[0]),
        )
        return (sel @ self.matrix).tocsr()

    # -- dose --------------------------------------------------------------------------------
    def dose_per_fraction(self, weights: np.ndarray) -> np.ndarray:
        """Dose per fraction on the full grid, Gy, ``[z, y, x]``."""
        from .solvers.products import matvec64

        w = self._check_weights(weights)
        out = np.zeros(self.grid.n_voxels, dtype=np.float64)
        out[self.voxel_index] = matvec64(self.matrix, w)  # float64, without a float64 matrix copy
        return out.reshape(self.grid.shape)

    def _check_weights(self, weights: np.ndarray) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != (self.n_beamlets,):
            raise BeamError(f"weights: expected {self.n_beamlets} beamlet weights, got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise BeamError("weights: expected finite, non-negative beamlet weights")
        return w

    # -- combine -----------------------------------------------------------------------------
    @staticmethod
    def concatenate(parts: list[InfluenceMatrix]) -> InfluenceMatrix:
        """Join the beamlets of several matrices on the same grid (beams renumbered)."""
        if not parts:
            raise BeamError("concatenate: no influence matrices given")
        grid = parts[0].grid
        if any(p.grid != grid for p in parts):
            raise BeamError("concatenate: all influence matrices must share one grid")
        voxel_index = np.unique(np.concatenate([p.voxel_index for p in parts]))
        blocks, beamlets, beams = [], {}, []
        for p in parts:
            rows = np.searchsorted(voxel_index, p.voxel_index)
            coo = p.matrix.tocoo()
            blocks.append(sp.csr_matrix((coo.data, (rows[coo.row], coo.col)),
                                        shape=(len(voxel_index), p.n_beamlets)))
            offset = len(beams)
            for key, col in p.beamlets.items():
                col = col + offset if key == "beam" else col
                beamlets.setdefault(key, []).append(np.asarray(col))
            beams.extend(p.beams)
        keys = set.intersection(*(set(p.beamlets) for p in parts))
        table = {k: np.concatenate(v) for k, v in beamlets.items() if k in keys}
        return InfluenceMatrix(sp.hstack(blocks, format="csr"), voxel_index, grid, table, beams,
                               parts[0].modality)


#: attributes of a scenario influence set (:func:`optimizer.robust.influence.scenario_influence`)
#: that :meth:`InfluenceSet.of` and the constructor carry over
SCENARIO_ATTRIBUTES = ("scenarios", "scenario_structures", "scenario_times_s", "scenario_executor")


class InfluenceSet(InfluenceMatrix):
    """Named linear forms of one set of beamlets on one grid: the dose matrix (this object
    itself, so it is used wherever an :class:`InfluenceMatrix` is) plus further forms such as
    ``"let_dose"`` (keV/um x Gy per fraction per unit weight) in :attr:`forms`.

    Every beam model returns one; ``PlanProblem`` reads the forms its terms' quantities declare.
    """

    def __init__(self, dose: InfluenceMatrix, **forms: InfluenceMatrix):
        if not isinstance(dose, InfluenceMatrix):
            raise BeamError(f"dose: expected an InfluenceMatrix, got {type(dose).__name__}")
        super().__init__(dose.matrix, dose.voxel_index, dose.grid, dose.beamlets, dose.beams, dose.modality)
        #: the CT grid a dose-grid influence was resampled from (``influence(..., dose_grid=)``), else None;
        self.ct_grid = getattr(dose, "ct_grid", None)
        #: how its targets were resampled onto the dose grid ("centre" or "support")
        self.target_rule = getattr(dose, "target_rule", "centre")
        # what optimizer.robust.influence.scenario_influence records (the scenario list, the
        # structures with scenario doses, ...): PlanProblem's copy checks robust terms against it
        for name in SCENARIO_ATTRIBUTES:
            if hasattr(dose, name):
                setattr(self, name, getattr(dose, name))
        self._extra: dict[str, InfluenceMatrix] = {}
        for name, form in forms.items():
            self.add_form(name, form)

    def add_form(self, name: str, form: InfluenceMatrix) -> None:
        """Add a linear form of the same beamlets on the same grid."""
        if not isinstance(name, str) or not name.isidentifier() or name in ("dose", "weights"):
            raise BeamError(f"form name: expected an identifier other than 'dose' / 'weights', got {name!r}")
        if (not isinstance(form, InfluenceMatrix) or form.grid != self.grid
                or form.n_beamlets != self.n_beamlets):
            raise BeamError(f"forms['{name}']: expected an InfluenceMatrix on the same grid with "
                            f"{self.n_beamlets} columns")
        self._extra[name] = form.dose_form() if isinstance(form, InfluenceSet) else form

    def dose_form(self) -> InfluenceMatrix:
        """The dose matrix as a plain :class:`InfluenceMatrix`."""
        return InfluenceMatrix(self.matrix, self.voxel_index, self.grid, self.beamlets, self.beams,
                               self.modality)

    @property
    def forms(self) -> dict[str, InfluenceMatrix]:
        """All forms by name, "dose" first."""
        return {"dose": self, **self._extra}

    @classmethod
    def of(cls, influence: InfluenceMatrix, **forms: InfluenceMatrix) -> InfluenceSet:
        """An InfluenceSet from a plain matrix or a set, adding ``forms``."""
        out = cls(influence)
        if isinstance(influence, InfluenceSet):
            for name, form in influence._extra.items():
                out.add_form(name, form)
        for name, form in forms.items():
            if form is not None:
                out.add_form(name, form)
        return out



#: LETd is undefined without dose: below this dose per fraction (Gy) :func:`let_d_map` gives NaN
LETD_MIN_DOSE_GY = 1e-3


def let_d_map(influence: InfluenceMatrix, let_dose: InfluenceMatrix, weights: np.ndarray,
              min_dose_Gy: float = LETD_MIN_DOSE_GY) -> np.ndarray:
    """Dose-averaged LET of a plan on the full grid, keV/um: (L x) / (D x) where the dose per
    fraction is at least ``min_dose_Gy`` (Gy), NaN elsewhere (LETd is undefined without dose).
    The one definition of LETd in bioplan."""
    if let_dose.matrix.shape != influence.matrix.shape or not np.array_equal(
            let_dose.voxel_index, influence.voxel_index):
        raise BeamError("let_dose: rows and columns must match the dose influence matrix")
    if (isinstance(min_dose_Gy, bool) or not isinstance(min_dose_Gy, (int, float, np.integer, np.floating))
            or not np.isfinite(min_dose_Gy) or min_dose_Gy < 0):
        raise BeamError(f"min_dose_Gy: expected a dose >= 0 Gy, got {min_dose_Gy!r}")
    d = influence.dose_per_fraction(weights)
    ld = let_dose.dose_per_fraction(weights)
    out = np.full(d.shape, np.nan)
    ok = d >= min_dose_Gy
    out[ok] = ld[ok] / d[ok]
    return out
