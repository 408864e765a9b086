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
        w = self._check_weights(weights)
        out = np.zeros(self.grid.n_voxels, dtype=np.float64)
        out[self.voxel_index] = self.matrix @ w
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
