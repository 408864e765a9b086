"""Proton minibeam plan on a fine anisotropic grid: dose time, solve time, nnz and peak memory.

A water slab 40 mm across (x, 0.2 mm: the modulation), ``--depth`` mm deep (y, 1 mm) and
``--height`` mm high (z, 1 mm): 200 x 120 x 44 = 1.06 M voxels by default. One beam of 1 mm
FWHM focused minibeams at 4 mm, energy layers every 3 mm of range over a target at 80-95 mm,
an OAR at 5-20 mm; terms: squared deviation in the target, hard target maximum, hard valley-dose
ceiling in the OAR. Prints one table (sizes, nnz, seconds, peak MB of the process).

    python benchmarks/bench_minibeam.py [--height 44] [--solver CLARABEL]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from objectives import MaxDose, SquaredDeviation
from objectives.minibeam import ValleyMax
from optimizer.beams.minibeam import ProtonMinibeams
from optimizer.beams.minibeam_pattern import MinibeamPattern
from optimizer.evaluate.pvdr import peak_valley_masks
from optimizer.geometry import Grid, Patient, Structure
from optimizer.problem import PlanProblem


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--height", type=float, default=44.0, help="slab height along the slits (z), mm")
    ap.add_argument("--depth", type=float, default=120.0, help="slab depth (y), mm")
    ap.add_argument("--solver", default=None, help="solver name (default: PlanProblem's choice by size)")
    args = ap.parse_args(argv)
    nz, ny, nx = int(args.height), int(args.depth), 200
    g = Grid((nz, ny, nx), (1.0, 1.0, 0.2), (-(nz - 1) / 2, 0.5, -19.9))
    z, y, x = np.meshgrid(*g.axes_mm(), indexing="ij")
    ptv = (y >= 80) & (y <= 95) & (np.abs(x) <= 8) & (np.abs(z) <= 8)
    oar = (y >= 5) & (y <= 20) & (np.abs(x) <= 8) & (np.abs(z) <= 8)
    structures = [Structure("Body", np.ones(g.shape, bool)), Structure("PTV", ptv, "target"),
                  Structure("OAR", oar, "oar")]
    p = Patient(g, np.zeros(g.shape, np.float32), structures)
    del z, y, x
    model = ProtonMinibeams(0, MinibeamPattern(1.0, 4.0), field_mm=20, length_mm=20, layer_spacing_mm=3.0)
    t0 = time.perf_counter()
    inf = model.influence(p, max_memory_mb=8000)
    t_dose = time.perf_counter() - t0
    mb_dose = peak_mb()
    _, valley = peak_valley_masks(g, inf)
    prob = PlanProblem(p, inf, fractions=1)
    prob += SquaredDeviation("PTV", 20.0, weight=1.0)
    prob += MaxDose("PTV", 22.0)
    prob += ValleyMax("OAR", 1.0, valley)
    t0 = time.perf_counter()
    plan = prob.solve(solver=args.solver)
    t_solve = time.perf_counter() - t0
    vmax = float(plan.dose[oar & valley].max())
    row = {"voxels": g.n_voxels, "columns": inf.matrix.shape[1], "nnz": int(inf.matrix.nnz),
           "dose_s": round(t_dose, 2), "solve_s": round(t_solve, 2), "solver": plan.solver.get("name"),
           "peak_MB_after_dose": round(mb_dose, 0), "peak_MB": round(peak_mb(), 0),
           "oar_valley_max_Gy": round(vmax, 3)}
    print(" | ".join(row))
    print(" | ".join(str(v) for v in row.values()))
    return row


if __name__ == "__main__":
    main()
