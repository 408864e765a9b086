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
    return patient, dense_influence(A, grid), A.astype(np.float32).astype(float)


def dense_influence(A, grid):
    """An InfluenceMatrix of a dense (voxels of ``grid`` x beamlets) array: its non-zero rows, one
    beam of one row of beamlets."""
    n_beamlets = A.shape[1]
    rows = np.flatnonzero(A.any(axis=1))
    return InfluenceMatrix(sp.csr_matrix(A[rows]), rows, grid,
                           {"beam": np.zeros(n_beamlets, int), "row": np.zeros(n_beamlets, int),
                            "col": np.arange(n_beamlets)},
                           [{"gantry_deg": 0.0, "couch_deg": 0.0, "isocenter_mm": [0, 0, 0],
                             "map_shape": [1, n_beamlets]}])


@pytest.fixture
def toy():
    return make_toy()


def make_scenario_toy(target_rows, oar_rows, width, n_beamlets, oar_max, perturb, n_scen, seed):
    """A 1 x (target_rows + oar_rows) x width grid: target "T" in the first rows, OAR "O" in the
    others; a random nominal influence matrix (target 0.5-1.5, OAR 0-``oar_max`` Gy per fraction
    per unit weight) and ``n_scen`` - 1 scenarios, each the nominal matrix with every entry scaled
    by an independent factor in ``perturb`` = (low, high). Returns the patient, an influence set
    with the nominal matrix and one scenario form per scenario (scenario 0 = nominal), and the
    scenario matrices as float arrays."""
    from objectives.robust import scenario_form
    from optimizer.influence import InfluenceSet

    grid = Grid((1, target_rows + oar_rows, width), (3.0, 3.0, 3.0))
    t = np.zeros(grid.shape, bool)
    t[0, :target_rows] = True
    o = np.zeros(grid.shape, bool)
    o[0, target_rows:] = True
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", t, "target"), Structure("O", o, "oar")])
    rng = np.random.default_rng(seed)
    n_t, n_o = target_rows * width, oar_rows * width
    A = np.vstack([rng.uniform(0.5, 1.5, (n_t, n_beamlets)),
                   rng.uniform(0.0, oar_max, (n_o, n_beamlets))]).astype(np.float32)
    table = {"beam": np.zeros(n_beamlets, int), "row": np.zeros(n_beamlets, int),
             "col": np.arange(n_beamlets)}
    rows = np.arange(n_t + n_o)

    def inf(M):
        return InfluenceMatrix(sp.csr_matrix(M), rows, grid, table, [])

    mats = [A] + [(A * rng.uniform(*perturb, A.shape)).astype(np.float32) for _ in range(n_scen - 1)]
    out = InfluenceSet(inf(A))
    for k, M in enumerate(mats):
        out.add_form(scenario_form(k), inf(M))
    return patient, out, [M.astype(float) for M in mats]
