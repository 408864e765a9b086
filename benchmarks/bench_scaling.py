"""The first-order solver from C-shape to clinical size, on synthetic banded influence matrices.

Each case is a water cylinder (axis z, radius R, 3 mm voxels, air outside) on a cubic grid of
side 2R, with a spherical target (radius R / 4) at its centre, an organ at risk beside it and the
rest of the body as "Tissue", irradiated by 9 coplanar beams. Every beam is an m x m map of
pencil beams at a ~5.5 mm pitch whose field (2R x 2R at the axis) covers the body's projection,
so every body voxel lies in every field. A pencil beam deposits 0.02 exp(-mu s) exp(-d^2 / 2
sigma^2) Gy per fraction per unit weight (s: depth below the body surface along the beam, d:
distance to its axis), cut at d <= 3 sigma: every column is a band of voxels along a line through
the body, as in real beams. sigma (~7 mm) is set per case so that a body voxel receives 400
non-zeros on average over the 9 beams (the clinical density: ~200 M non-zeros at 500k voxels);
the non-zeros per voxel and per beamlet are measured and printed. The beamlet size is the same
at every size, so beamlets grow with the body's cross-section (500k voxels: 19,881 beamlets;
20k: 2,304). The terms are those of the C-shape example (hard CVaR target goals, squared soft
penalties, fluence smoothness), scaled to 60 Gy in 30 fractions, on every voxel (no sampling).

Each case runs two fresh processes so that each peak is its own: one builds the matrix in row
chunks (bounded memory) straight into uncompressed files in a temporary directory, the other
memory-maps them and solves with ``solver="FIRST_ORDER"``; the files are deleted afterwards, also
on failure. Columns: body voxels (= matrix rows), beamlets, non-zeros, matrix MB (float32 data +
int32 indices + indptr), build s and build peak MB, solve s (the wall time of ``problem.solve``,
the solver's model build included), evaluations (one K x and one K^T r plus the terms each), ms
per evaluation (the solver's own solve time / evaluations), solve peak MB (imports, the mapped
matrix and the solver), its ratio to the matrix MB, the certificate (largest hard violation in
Gy, relative gap) and the status. Peaks are each process's VmHWM (its own resident high-water
mark; ru_maxrss would carry the parent's peak across fork + exec). Comment lines after the table
give the non-zeros per voxel and per beamlet (min / median / max) and the solve process's
resident MB right after its imports (part of its peak).

Run:  python benchmarks/bench_scaling.py                   # 30k, 120k, 250k voxels (up to ~100 M nnz)
      python benchmarks/bench_scaling.py --clinical        # adds 500k voxels x 19,881 beamlets, ~200 M
      python benchmarks/bench_scaling.py --clinical-only --matrix-dtype float32 --inner lbfgsb
      python benchmarks/bench_scaling.py --sizes 20000     # one small case, < 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

#: body voxels of the default cases; the clinical case is added by --clinical
SIZES = [30_000, 120_000, 250_000]
CLINICAL = 500_000  # 86^3 grid, 499,488 body voxels, 9 x 47 x 47 = 19,881 beamlets
BEAMS = 9
BEAMLET_PITCH_MM = 5.5  # at the axis; 5 mm class beamlets as in the C-shape example (beamlet_mm=5)
NNZ_PER_VOXEL = 400  # over all beams: the density of a clinical matrix (issue 14: 500k x 20k, ~200 M)
VOXEL_MM = 3.0
MU_PER_MM = 0.005  # 6 MV effective attenuation in water, 0.045-0.05 /cm (REFERENCES.md, photons)
GY_PER_WEIGHT = 0.02  # dose per fraction per unit weight on the axis at the surface
CHUNK_ROWS = 4_000  # voxels per build chunk: ~1.6 M non-zeros, ~60 MB of temporaries


class Layout:
    """The geometry of a case of about ``n_voxels`` body voxels (lengths in mm): grid side, body
    radius, m x m beamlets per beam at a pitch of about BEAMLET_PITCH_MM, their sigma."""

    def __init__(self, n_voxels: int):
        if isinstance(n_voxels, bool) or not isinstance(n_voxels, (int, np.integer)) or n_voxels < 1000:
            raise ValueError(f"n_voxels: expected an integer >= 1000, got {n_voxels!r}")
        self.side = int(round((n_voxels / (np.pi / 4)) ** (1 / 3)))  # a cylinder fills pi/4 of its cube
        self.radius = self.side * VOXEL_MM / 2
        self.m = max(1, int(round(2 * self.radius / BEAMLET_PITCH_MM)))
        self.pitch = 2 * self.radius / self.m
        x, y, _ = self.coords(np.arange(self.side ** 3))
        self.body = (x ** 2 + y ** 2 <= self.radius ** 2).reshape((self.side,) * 3)
        self.voxel_index = np.flatnonzero(self.body.ravel())
        self.reach = self._calibrated_reach()
        self.sigma = self.reach / 3.0

    @property
    def n_beamlets(self) -> int:
        return BEAMS * self.m * self.m

    def coords(self, flat):
        """Voxel centres (x, y, z) in mm of flat C-order grid indices."""
        iz, iy, ix = np.unravel_index(flat, (self.side,) * 3)
        c = (self.side - 1) / 2
        return (ix - c) * VOXEL_MM, (iy - c) * VOXEL_MM, (iz - c) * VOXEL_MM

    def beam_frame(self, b: int, x, y, z):
        """Lateral (u, v) and depth s below the body surface, mm, of points in beam b's frame."""
        th = 2 * np.pi * b / BEAMS
        u = -x * np.sin(th) + y * np.cos(th)
        t = x * np.cos(th) + y * np.sin(th)
        return u, z, t + np.sqrt(np.maximum(self.radius ** 2 - u ** 2, 0.0))

    def _counts(self, u, v, reach):
        """Beamlets of one beam whose axis passes within ``reach`` of each point (u, v)."""
        m, p = self.m, self.pitch
        cu = (np.arange(m) + 0.5 - m / 2) * p
        w2 = reach ** 2 - (u[:, None] - cu[None, :]) ** 2
        w = np.sqrt(np.maximum(w2, 0.0))
        lo = np.clip(np.ceil((v[:, None] - w) / p + m / 2 - 0.5), 0, m)
        hi = np.clip(np.floor((v[:, None] + w) / p + m / 2 - 0.5), -1, m - 1)
        return np.where(w2 >= 0, np.maximum(hi - lo + 1, 0), 0).sum(axis=1)

    def _calibrated_reach(self) -> float:
        """The cut-off radius (3 sigma) at which body voxels receive NNZ_PER_VOXEL non-zeros on
        average over the beams: bisection on a fixed sample of 1,500 body voxels."""
        rng = np.random.default_rng(0)
        sample = rng.choice(self.voxel_index, min(1500, len(self.voxel_index)), replace=False)
        x, y, z = self.coords(sample)
        uv = [self.beam_frame(b, x, y, z)[:2] for b in range(BEAMS)]
        u, v = (np.concatenate(a) for a in zip(*uv))
        lo, hi = 0.0, 4 * self.radius
        for _ in range(40):
            mid = (lo + hi) / 2
            if self._counts(u, v, mid).mean() * BEAMS < NNZ_PER_VOXEL:
                lo = mid
            else:
                hi = mid
        return hi


def _chunk_csr(lay: Layout, flat):
    """CSR pieces (indptr counts, column indices, float32 values) of the rows ``flat``; columns
    ordered beam, map row, map column, so every row's indices come out sorted."""
    x, y, z = lay.coords(flat)
    m, p = lay.m, lay.pitch
    k = np.arange(-int(np.ceil(lay.reach / p)) - 1, int(np.ceil(lay.reach / p)) + 2)
    rows, cols, vals = [], [], []
    for b in range(BEAMS):
        u, v, s = lay.beam_frame(b, x, y, z)
        iu = np.floor(u / p + m / 2 - 0.5).astype(np.int64)[:, None] + k
        iv = np.floor(v / p + m / 2 - 0.5).astype(np.int64)[:, None] + k
        du2 = (u[:, None] - (iu + 0.5 - m / 2) * p) ** 2
        dv2 = (v[:, None] - (iv + 0.5 - m / 2) * p) ** 2
        du2[(iu < 0) | (iu >= m)] = np.inf
        dv2[(iv < 0) | (iv >= m)] = np.inf
        d2 = du2[:, :, None] + dv2[:, None, :]
        r, a, c = np.nonzero(d2 <= lay.reach ** 2)
        rows.append(r.astype(np.int32))
        cols.append((b * m * m + iu[r, a] * m + iv[r, c]).astype(np.int32))
        vals.append((GY_PER_WEIGHT * np.exp(-MU_PER_MM * s[r] - d2[r, a, c] / (2 * lay.sigma ** 2)))
                    .astype(np.float32))
    rows = np.concatenate(rows)
    order = np.argsort(rows, kind="stable")  # beams stay in order inside a row
    return (np.bincount(rows, minlength=len(flat)), np.concatenate(cols)[order],
            np.concatenate(vals)[order])


def build_matrix(n_voxels: int, out_dir: str, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write the case's matrix to ``out_dir`` (data.f32, indices.i32: raw little-endian;
    indptr.npy, voxel_index.npy, meta.json) chunk by chunk; return the metadata."""
    lay = Layout(n_voxels)
    n_rows, n_cols = len(lay.voxel_index), lay.n_beamlets
    counts = np.zeros(n_rows, np.int64)
    per_col = np.zeros(n_cols, np.int64)
    with open(os.path.join(out_dir, "data.f32"), "wb") as fd, \
            open(os.path.join(out_dir, "indices.i32"), "wb") as fi:
        for a in range(0, n_rows, chunk_rows):
            c, idx, val = _chunk_csr(lay, lay.voxel_index[a:a + chunk_rows])
            counts[a:a + len(c)] = c
            per_col += np.bincount(idx, minlength=n_cols)
            fd.write(val.astype("<f4").tobytes())
            fi.write(idx.astype("<i4").tobytes())
    nnz = int(counts.sum())
    # int32 indptr while nnz fits, so scipy keeps the int32 indices as they are (no copy)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32 if nnz < 2 ** 31 else np.int64)
    np.save(os.path.join(out_dir, "indptr.npy"), indptr)
    np.save(os.path.join(out_dir, "voxel_index.npy"), lay.voxel_index)
    meta = {"n_voxels": n_voxels, "shape": [n_rows, n_cols], "nnz": nnz,
            "side": lay.side, "m": lay.m, "pitch_mm": lay.pitch, "sigma_mm": lay.sigma,
            "matrix_MB": (8 * nnz + indptr.nbytes) / 2 ** 20,
            "per_row": _stats(counts), "per_col": _stats(per_col)}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
    return meta


def _stats(a) -> dict:
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max()), "mean": float(a.mean())}


def synthetic_patient(lay: Layout):
    """The phantom of the module docstring: a water cylinder in air with PTV, OAR and Tissue."""
    from optimizer.geometry import Grid, Patient, Structure

    grid = Grid((lay.side,) * 3, (VOXEL_MM,) * 3)
    x, y, z = lay.coords(np.arange(grid.n_voxels))
    x, y, z = (a.reshape(grid.shape) for a in (x, y, z))
    r_t = 0.25 * lay.radius
    target = (x ** 2 + y ** 2 + z ** 2) <= r_t ** 2
    oar = ((x - 1.6 * r_t) ** 2 + y ** 2 + z ** 2) <= (0.5 * r_t) ** 2
    tissue = lay.body & ~(target | oar)
    return Patient(grid, np.where(lay.body, 0.0, -1000.0),
                   [Structure("PTV", target, "target"), Structure("OAR", oar, "oar"),
                    Structure("Tissue", tissue, "other")])


def load_case(case_dir: str):
    """(patient, InfluenceMatrix) of a written case; the matrix arrays are memory-mapped."""
    import scipy.sparse as sp

    from optimizer.influence import InfluenceMatrix

    with open(os.path.join(case_dir, "meta.json")) as f:
        meta = json.load(f)
    lay = Layout(meta["n_voxels"])
    nnz, (n_rows, n_cols), m = meta["nnz"], meta["shape"], lay.m
    data = np.memmap(os.path.join(case_dir, "data.f32"), "<f4", "r", shape=(nnz,))
    indices = np.memmap(os.path.join(case_dir, "indices.i32"), "<i4", "r", shape=(nnz,))
    indptr = np.load(os.path.join(case_dir, "indptr.npy"), mmap_mode="r")
    A = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)
    A.has_sorted_indices = True  # columns come out sorted per row (see _chunk_csr)
    local = np.arange(m * m)
    beams = [{"gantry_deg": 360.0 * b / BEAMS, "couch_deg": 0.0, "isocenter_mm": [0.0, 0.0, 0.0],
              "map_shape": [m, m]} for b in range(BEAMS)]
    patient = synthetic_patient(lay)
    inf = InfluenceMatrix(A, np.load(os.path.join(case_dir, "voxel_index.npy")), patient.grid,
                          {"beam": np.repeat(np.arange(BEAMS), m * m), "row": np.tile(local // m, BEAMS),
                           "col": np.tile(local % m, BEAMS)}, beams)
    return patient, inf


def planning_terms():
    from objectives import DVHMax, DVHMin, FluenceSmoothness, SquaredDeviation, SquaredOverdose

    return [DVHMin("PTV", 60.5, volume_pct=95), DVHMax("PTV", 65.0, volume_pct=10),
            SquaredDeviation("PTV", 62.5, weight=1.0), SquaredOverdose("OAR", 0.0, weight=0.3),
            SquaredOverdose("Tissue", 25.0, weight=1.0), FluenceSmoothness(weight=1e-3)]


def _rss_MB() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_MB() -> float:
    """This process's peak resident MB: VmHWM, the high-water mark of its own address space.
    ru_maxrss would not do: Linux carries the parent's peak across fork + exec into it."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024.0  # kB


def _solve(case_dir: str, options: dict) -> dict:
    from optimizer import PlanProblem

    out = {"imports_MB": _rss_MB()}
    t0 = time.perf_counter()
    patient, inf = load_case(case_dir)
    problem = PlanProblem(patient, inf, fractions=30, max_voxels_per_structure=None)
    for term in planning_terms():
        problem += term
    out["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        s = problem.solve(solver="FIRST_ORDER", **options).solver
        out.update(status="certified", evals=s["iterations"], solver_s=s["solve_s"], model_s=s["build_s"],
                   max_violation=s["max_violation"], rel_gap=s["rel_gap"], kkt=s["kkt"], inner=s["inner"],
                   matrix_dtype=s["matrix_dtype"], working_set_share=s.get("working_set_share"))
    except Exception as err:  # noqa: BLE001 - a benchmark row reports the failure
        out.update(status=f"failed: {type(err).__name__}: {str(err)[:300]}", **_residuals(str(err)))
    out["solve_s"] = time.perf_counter() - t0
    out.setdefault("solver_s", out["solve_s"])  # a failed solve: the wall time per evaluation
    return out


def _residuals(message: str) -> dict:
    """Evaluations and the certificate reached, read from the first-order solver's SolverError
    message ("... (N evaluations): max hard violation V (...), relative gap G ..."); 0 / NaN
    where the message does not say."""
    found = {}
    for key, pattern, cast in (("evals", r"\((\d+) evaluations", int),
                               ("max_violation", r"max hard violation ([-+.\deEinfa]+)", float),
                               ("rel_gap", r"relative gap ([-+.\deEinfa]+)", float)):
        hit = re.search(pattern, message)
        found[key] = cast(hit.group(1)) if hit else (0 if key == "evals" else float("nan"))
    return found


def _worker(kind: str, case_dir: str, params: dict) -> None:
    """Entry point of the child processes: build or solve, write <kind>.json into case_dir."""
    t0 = time.perf_counter()
    if kind == "build":
        out = build_matrix(params["voxels"], case_dir)
        out["build_s"] = time.perf_counter() - t0
    else:
        out = _solve(case_dir, params)
    out["peak_MB"] = _peak_MB()
    with open(os.path.join(case_dir, f"{kind}.json"), "w") as f:
        json.dump(out, f)


def _child(kind: str, case_dir: str, params: dict, timeout_s: float) -> dict:
    """Run one worker in a fresh interpreter; its result, or {"error": ...}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, case_dir, json.dumps(params)]
    try:
        p = subprocess.run(cmd, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} timed out after {timeout_s:g} s"}
    path = os.path.join(case_dir, f"{kind}.json")
    if p.returncode != 0 or not os.path.exists(path):
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{kind} exited {p.returncode}: {tail[:200]}"}
    with open(path) as f:
        return json.load(f)


def run_case(n_voxels: int, options: dict, timeout_s: float, tmp_root=None) -> dict:
    """Build (one process) and solve (another) one case; the files are removed in any case."""
    case_dir = tempfile.mkdtemp(prefix="bioplan-scaling-", dir=tmp_root)
    try:
        build = _child("build", case_dir, {"voxels": n_voxels}, timeout_s)
        if "error" in build:
            return {"build": build, "solve": {"error": "not run"}}
        return {"build": build, "solve": _child("solve", case_dir, options, timeout_s)}
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)


COLUMNS = ["voxels", "beamlets", "nnz", "matrix_MB", "build_s", "build_peak_MB", "solve_s", "evals",
           "ms/eval", "solve_peak_MB", "peak/matrix", "max_viol_Gy", "rel_gap", "status"]


def format_row(r: dict) -> str:
    b, s = r["build"], r["solve"]
    if "error" in b:
        return f"# build failed: {b['error']}"
    nan = float("nan")
    evals = s.get("evals", 0)
    ms = 1e3 * s["solver_s"] / evals if evals else nan
    peak = s.get("peak_MB", nan)
    row = [b["shape"][0], b["shape"][1], b["nnz"], f"{b['matrix_MB']:.0f}", f"{b['build_s']:.1f}",
           f"{b['peak_MB']:.0f}", f"{s.get('solve_s', nan):.1f}", evals, f"{ms:.1f}", f"{peak:.0f}",
           f"{peak / b['matrix_MB']:.2f}", f"{s.get('max_violation', nan):.2g}",
           f"{s.get('rel_gap', nan):.1e}", s.get("status", s.get("error", "?"))]
    return " | ".join(f"{str(v):>11}" for v in row)


def _machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        mem = {ln.split(":")[0]: int(ln.split()[1]) / 2 ** 20 for ln in f}  # kB -> GB
    import scipy

    return (f"# machine: {cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), RAM "
            f"{mem['MemTotal']:.1f} GB ({mem['MemAvailable']:.1f} GB available), load average "
            f"{os.getloadavg()[0]:.2f}; Python {platform.python_version()}, NumPy {np.__version__}, "
            f"SciPy {scipy.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def _settings(options: dict) -> str:
    from optimizer.solvers.first_order import Settings

    s = Settings(**options)
    keys = ("violation_tol", "gap_tol", "kkt_tol", "max_outer", "max_inner", "inner", "matrix_dtype",
            "threads", "memory", "working_set")
    return "# solver FIRST_ORDER: " + ", ".join(f"{k}={getattr(s, k)}" for k in keys) + \
        (" (threads=0: one per core, at most 2)" if s.threads == 0 else "")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2], json.loads(argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clinical", action="store_true", help="add the 500k x 20k (~200 M non-zero) case")
    ap.add_argument("--clinical-only", action="store_true", help="run only the 500k x 20k case")
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="body voxel counts to run instead of the defaults (>= 1000 each)")
    ap.add_argument("--matrix-dtype", default=None, choices=["float64", "float32"],
                    help="precision of the solver's products (default: the solver's)")
    ap.add_argument("--inner", default=None, choices=["auto", "lbfgsb", "spg"],
                    help="the solver's inner method (default: the solver's)")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per process (build, solve)")
    ap.add_argument("--tmp-dir", default=None, help="where the matrices are written (default: the system's)")
    args = ap.parse_args(argv)
    if args.clinical_only:
        sizes = [CLINICAL]
    else:
        sizes = list(args.sizes or SIZES)
        if min(sizes) < 1000:
            ap.error(f"--sizes: expected body voxel counts >= 1000, got {min(sizes)}")
        if args.clinical:
            sizes.append(CLINICAL)
    options = {k: v for k, v in (("matrix_dtype", args.matrix_dtype), ("inner", args.inner)) if v}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clauses remove the files
    print(_machine())
    print(_settings(options))
    print(" | ".join(f"{c:>11}" for c in COLUMNS), flush=True)
    notes = []
    for n_vox in sizes:
        r = run_case(n_vox, options, args.timeout_s, args.tmp_dir)
        print(format_row(r), flush=True)
        b, s = r["build"], r["solve"]
        if "error" not in b:
            pr, pc = b["per_row"], b["per_col"]
            notes.append(f"# {b['shape'][0]} voxels: non-zeros per voxel min / median / max {pr['min']} / "
                         f"{pr['median']:.0f} / {pr['max']} (mean {pr['mean']:.0f}), per beamlet "
                         f"{pc['min']} / {pc['median']:.0f} / {pc['max']}; beamlet pitch {b['pitch_mm']:.1f} "
                         f"mm, sigma {b['sigma_mm']:.1f} mm; solve process after imports "
                         f"{s.get('imports_MB', float('nan')):.0f} MB, load + problem "
                         f"{s.get('load_s', float('nan')):.1f} s, solver model build "
                         f"{s.get('model_s', float('nan')):.1f} s")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
