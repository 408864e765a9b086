"""The first-order solver from C-shape to clinical size, on synthetic banded influence matrices.

Each case is a cubic phantom (3 mm voxels) with a spherical target, an organ at risk beside it
and the rest of the body as "Tissue", irradiated by 9 coplanar beams of pencil beams on a
square grid. A pencil beam deposits exp(-mu s) exp(-d^2 / 2 sigma^2) (s: depth, d: distance to
its axis, cut at 3 sigma), so every column of the matrix is a band of voxels along a line, as
in real beams. The terms are those of the C-shape example (hard CVaR target goals, squared
soft penalties, fluence smoothness), scaled to 60 Gy in 30 fractions.

Every case runs in its own process (peak memory is its own) and prints one row: voxels,
beamlets, non-zeros, matrix MB (float32 values + int32 indices, as an InfluenceMatrix holds
them), build and solve seconds, evaluations, milliseconds per evaluation (one K x and one
K^T r plus the terms), peak resident MB, the certificate and whether it certified.

Run:  python benchmarks/bench_scaling.py                   # up to ~40 M non-zeros
      python benchmarks/bench_scaling.py --clinical        # adds 500k voxels x 20k beamlets, ~200 M
      python benchmarks/bench_scaling.py --sizes 20000 --matrix-dtype float32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import time

import numpy as np

#: (voxels, beamlets) of the default cases; the clinical case is added by --clinical
SIZES = [(30_000, 1_500), (120_000, 5_000), (250_000, 10_000)]
CLINICAL = (500_000, 20_000)
NNZ_PER_VOXEL_PER_BEAM = 44  # ~400 non-zeros per voxel over 9 beams (clinical: ~200 M in all)


def synthetic_case(n_voxels: int, n_beamlets: int, beams: int = 9, seed: int = 0):
    """A patient and an InfluenceMatrix of about ``n_voxels`` voxels and ``n_beamlets`` pencil
    beams (see the module docstring); returns (patient, influence)."""
    import scipy.sparse as sp

    from optimizer.geometry import Grid, Patient, Structure
    from optimizer.influence import InfluenceMatrix

    side = int(round(n_voxels ** (1 / 3)))
    h = 3.0  # mm
    grid = Grid((side, side, side), (h, h, h))
    z, y, x = np.meshgrid(*[(np.arange(side) - (side - 1) / 2) * h] * 3, indexing="ij")
    half = side * h / 2
    r_t = 0.25 * half
    target = (x ** 2 + y ** 2 + z ** 2) <= r_t ** 2
    oar = ((x - 1.6 * r_t) ** 2 + y ** 2 + z ** 2) <= (0.5 * r_t) ** 2
    tissue = ~(target | oar)
    patient = Patient(grid, np.zeros(grid.shape), [Structure("PTV", target, "target"),
                                                   Structure("OAR", oar, "oar"),
                                                   Structure("Tissue", tissue, "other")])
    per_beam = max(1, n_beamlets // beams)
    m = int(round(np.sqrt(per_beam)))  # m x m pencil beams per beam
    field = 1.2 * half  # the pencil beams cover a square of this side at the centre, mm
    pitch = field / m
    sigma = pitch * np.sqrt(NNZ_PER_VOXEL_PER_BEAM / (9 * np.pi))  # pi (3 sigma)^2 / pitch^2 per voxel
    reach = 3.0 * sigma
    mu = 0.005  # 1/mm, about the attenuation of 6 MV photons in water (REFERENCES.md order of size)
    rows_all, cols_all, vals_all = [], [], []
    flat = np.arange(grid.n_voxels)
    stencil = int(np.ceil(reach / pitch))
    for b in range(beams):
        th = 2 * np.pi * b / beams
        u = (-x * np.sin(th) + y * np.cos(th)).ravel()
        s = (x * np.cos(th) + y * np.sin(th)).ravel() + half * 1.8  # depth from the entrance, mm
        v = z.ravel()
        iu0 = np.floor(u / pitch + m / 2).astype(np.int64)
        iv0 = np.floor(v / pitch + m / 2).astype(np.int64)
        atten = np.exp(-mu * s)
        for du in range(-stencil, stencil + 1):
            iu = iu0 + du
            cu = (iu + 0.5 - m / 2) * pitch
            ok_u = (iu >= 0) & (iu < m) & (np.abs(u - cu) <= reach)
            for dv in range(-stencil, stencil + 1):
                iv = iv0 + dv
                cv = (iv + 0.5 - m / 2) * pitch
                d2 = (u - cu) ** 2 + (v - cv) ** 2
                ok = ok_u & (iv >= 0) & (iv < m) & (d2 <= reach ** 2)
                rows_all.append(flat[ok])
                cols_all.append(b * m * m + iu[ok] * m + iv[ok])
                vals_all.append((atten[ok] * np.exp(-d2[ok] / (2 * sigma ** 2))).astype(np.float32))
    rows, cols, vals = (np.concatenate(a) for a in (rows_all, cols_all, vals_all))
    del rows_all, cols_all, vals_all
    n_cols = beams * m * m
    A = sp.csr_matrix((vals * np.float32(0.02), (rows, cols)), shape=(grid.n_voxels, n_cols))
    del rows, cols, vals
    keep = np.flatnonzero(np.diff(A.indptr) > 0)
    A = A[keep]
    beam = np.repeat(np.arange(beams), m * m)
    local = np.tile(np.arange(m * m), beams)
    inf = InfluenceMatrix(A, keep, grid, {"beam": beam, "row": local // m, "col": local % m},
                          [{"gantry_deg": 360.0 * b / beams, "couch_deg": 0.0, "isocenter_mm": [0, 0, 0],
                            "map_shape": [m, m]} for b in range(beams)])
    return patient, inf


def planning_terms():
    from objectives import DVHMax, DVHMin, FluenceSmoothness, SquaredDeviation, SquaredOverdose

    return [DVHMin("PTV", 60.5, volume_pct=95), DVHMax("PTV", 65.0, volume_pct=10),
            SquaredDeviation("PTV", 62.5, weight=1.0), SquaredOverdose("OAR", 0.0, weight=0.3),
            SquaredOverdose("Tissue", 25.0, weight=1.0), FluenceSmoothness(weight=1e-3)]


def _run(args):
    n_vox, n_beamlets, dtype = args
    from optimizer import PlanProblem

    t0 = time.perf_counter()
    patient, inf = synthetic_case(n_vox, n_beamlets)
    make_s = time.perf_counter() - t0
    problem = PlanProblem(patient, inf, fractions=30, max_voxels_per_structure=None)
    for term in planning_terms():
        problem += term
    t0 = time.perf_counter()
    out = {"voxels": patient.grid.n_voxels, "beamlets": inf.n_beamlets, "nnz": inf.nnz,
           "matrix_MB": sum(getattr(inf.matrix, a).nbytes for a in ("data", "indices", "indptr")) / 2**20,
           "make_s": make_s}
    try:
        plan = problem.solve(solver="FIRST_ORDER", matrix_dtype=dtype)
        s = plan.solver
        out.update(status="certified", evals=s["iterations"], build_s=s["build_s"], solve_s=s["solve_s"],
                   max_violation=s["max_violation"], rel_gap=s["rel_gap"], kkt=s["kkt"])
    except Exception as err:  # noqa: BLE001 - a benchmark row reports the failure
        out.update(status=f"failed: {type(err).__name__}: {str(err)[:120]}", evals=0, build_s=float("nan"),
                   solve_s=time.perf_counter() - t0, max_violation=float("nan"), rel_gap=float("nan"),
                   kkt=float("nan"))
    out["peak_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clinical", action="store_true", help="add the 500k x 20k (~200 M non-zero) case")
    ap.add_argument("--sizes", type=int, nargs="*", default=None,
                    help="voxel counts to run instead (beamlets: voxels / 25)")
    ap.add_argument("--matrix-dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per case")
    args = ap.parse_args(argv)
    sizes = [(v, max(9, v // 25)) for v in args.sizes] if args.sizes else list(SIZES)
    if args.clinical:
        sizes.append(CLINICAL)
    print(f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}, "
          f"products in {args.matrix_dtype} (measured {time.strftime('%Y-%m-%d')})")
    cols = ["voxels", "beamlets", "nnz", "matrix_MB", "build_s", "solve_s", "evals", "ms/eval", "peak_MB",
            "peak/matrix", "max_viol_Gy", "rel_gap", "status"]
    print(" | ".join(f"{c:>11}" for c in cols), flush=True)
    ctx = mp.get_context("spawn")
    for n_vox, n_beamlets in sizes:
        with ctx.Pool(1) as pool:
            job = pool.apply_async(_run, ((n_vox, n_beamlets, args.matrix_dtype),))
            try:
                r = job.get(timeout=args.timeout_s)
            except mp.TimeoutError:
                print(f"{n_vox:>11} | {n_beamlets:>11} | timed out after {args.timeout_s:g} s", flush=True)
                continue
        ms = 1e3 * r["solve_s"] / r["evals"] if r["evals"] else float("nan")
        row = [r["voxels"], r["beamlets"], r["nnz"], f"{r['matrix_MB']:.0f}", f"{r['build_s']:.1f}",
               f"{r['solve_s']:.1f}", r["evals"], f"{ms:.1f}", f"{r['peak_MB']:.0f}",
               f"{r['peak_MB'] / r['matrix_MB']:.2f}", f"{r['max_violation']:.2g}", f"{r['rel_gap']:.1e}",
               r["status"]]
        print(" | ".join(f"{str(v):>11}" for v in row), flush=True)


if __name__ == "__main__":
    main()
