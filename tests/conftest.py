import numpy as np
import pytest
import scipy.sparse as sp

from optimizer import Grid, InfluenceMatrix, Patient, Structure


def make_toy(n_target=6, n_oar=6, n_beamlets=4, seed=0):
    """A 1 x 2 x n grid: row 0 is the target "T", row 1 the OAR "O"; a random dense influence
    matrix (Gy per fraction per unit weight) where the target receives more than the OAR."""
    n = max(n_target, n_oar)
    grid = Grid((1, 2, n), (3.0, 3.0, 3.0))
    t = np.zeros(grid.shape, bool)
    t[0, 0, :n_target] = True
    o = np.zeros(grid.shape, bool)
    o[0, 1, :n_oar] = True
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", t, "target"), Structure("O", o, "oar")])
    rng = np.random.default_rng(seed)
    A = np.zeros((grid.n_voxels, n_beamlets))
    A[np.flatnonzero(t.ravel())] = rng.uniform(0.5, 1.5, (n_target, n_beamlets))
    A[np.flatnonzero(o.ravel())] = rng.uniform(0.0, 0.6, (n_oar, n_beamlets))
    rows = np.flatnonzero(A.any(axis=1))
    inf = InfluenceMatrix(sp.csr_matrix(A[rows]), rows, grid,
                          {"beam": np.zeros(n_beamlets, int), "row": np.zeros(n_beamlets, int),
                           "col": np.arange(n_beamlets)},
                          [{"gantry_deg": 0.0, "couch_deg": 0.0, "isocenter_mm": [0, 0, 0],
                            "map_shape": [1, n_beamlets]}])
    return patient, inf, A.astype(np.float32).astype(float)


@pytest.fixture
def toy():
    return make_toy()
