"""A matrix-free first-order solver for planning problems: augmented Lagrangian outer loop,
bound-constrained quasi-Newton (or spectral projected gradient) inner loop.

The problem, in the graph form of ``shared/SOLVER.md``: minimize sum_k w_k cost_k(y_k) subject to
y_j in C_j for the hard terms and x >= 0, where y = K x stacks the linear forms (total course
dose, LET x dose, ...) of every structure the terms use, over *all* its voxels (no sampling).
K is touched only through the products ``K x`` and ``K^T r`` (one CSR matrix per form, its
row blocks multiplied in threads; no transpose copy), never ``K^T K`` and never a
factorization. Terms enter through the numeric protocol:
soft terms by value and gradient, hard terms by their projection (Rockafellar's augmented
Lagrangian ``(rho/2) dist(y_j + lambda_j / rho, C_j)^2``, whose gradient is
``rho (z - P(z))``; multipliers ``lambda_j <- rho (z - P(z))`` after each inner solve). Soft
robust worst cases (composite, voxelwise; not smooth) are lifted exactly by epigraph
constraints (:mod:`.epigraph`): composite's scalar t is minimised out in every evaluation,
voxelwise's per-voxel variables are free variables appended to the weights.

Certificate (all on the full voxel sets): the largest violation of every hard term (in its
unit, Gy for dose limits), the relative KKT residual of the bound constraints, and a duality
gap from the Lagrangian lower bound ``phi(x) - g^T x - sigma_C(lambda)`` (phi: objective plus
lambda^T y, g its gradient; a valid bound only when g >= 0, so before a plan is certified the
squared penalties' dual point is moved until it holds exactly, :mod:`.dual_certificate`; a
robust worst case enters it through its multiplier-weighted scenario mixture, a minorant).
"Optimal" only when all three are within tolerance; otherwise :class:`SolverError` with the
residuals reached.

Arrays are NumPy, or CuPy with ``device="cuda"`` (same code; the spectral projected gradient
inner solver then runs on the GPU; SciPy's L-BFGS-B is CPU only).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from objectives.errors import TermError

from ..errors import PlanError, SolverError
from . import dual_certificate, newton_lm, products
from .epigraph import Epigraph, is_worst_case, unsupported_reason
from .working_set import WorkingSet

#: Storage precision of the matrices the products read; the arithmetic is float64 either way.
#: "float64" multiplies a double-precision copy with SciPy (20 bytes per non-zero held).
#: "float32" multiplies the float32 influence matrices where they lie (no copy: 8 bytes per
#: non-zero) with the compiled kernels of :mod:`.products`, which accumulate in float64; it is
#: for memory, not speed (C-shape 4 mm: 24.8 vs 22.4 ms per evaluation). "auto" (default) picks
#: float32 from FLOAT32_NNZ non-zeros on, and for spot plans. Float32 arithmetic is not offered:
#: it stalled the line searches near the optimum (C-shape: relative gap stuck at 1e-4 to 1e-1).
#: Without Numba, and on the GPU, "float32" falls back to the float64 copy.
MATRIX_DTYPES = ("auto", "float32", "float64")
#: "auto" stores float32 from this many non-zeros on (the float64 copy would hold 2.4 GB at 200 M
#: non-zeros, the issue's clinical size); below, float64 is a little faster for the L-BFGS-B
#: inner solver. Spot plans (the Newton inner solver) store float32 at any size: CT-size protons
#: (10.4 M) 48.8 s, peak 911 MB against 64.5 s, 1179 MB with the float64 copy; 8 mm C-shape
#: protons 14.9 vs 14.4 s (2026-11-29, side by side; the same certified objective within the gaps)
FLOAT32_NNZ = 30_000_000

@dataclass
class Settings:
    """Tolerances and limits of the first-order solver (units: the hard terms' own, Gy for dose)."""

    violation_tol: float = 0.01  # largest hard-term violation accepted, Gy
    gap_tol: float = 1e-4  # relative duality gap
    kkt_tol: float = 1e-4  # relative KKT residual of x >= 0
    max_outer: int = 40
    max_inner: int = 3000  # inner evaluations per outer round (6 mm C-shape: ~3000 needed)
    # "lbfgsb" (CPU), "newton" (CPU; damped Newton for spot problems, :mod:`.newton_lm`), "spg"
    # (CPU or GPU); "auto": on the CPU newton for proton spots without robust worst-case
    # (epigraph) terms, else lbfgsb; spg on the GPU. C-shape 8 mm protons with the exact gap:
    # newton certified in 430 evaluations / 20 s, L-BFGS-B not in 40 rounds (17,755 evaluations,
    # 191 s). The robust proton example (9 scenarios, composite worst cases): L-BFGS-B certified
    # in 91 s (5071 evaluations), Newton not in 540 s (its Gram matrix over the 9 scenario
    # operators is rebuilt at ~1 s per step) (2026-11-29)
    inner: str = "auto"
    device: str = "cpu"
    matrix_dtype: str = "auto"  # storage of the matrices the products read (see MATRIX_DTYPES)
    threads: int = 0  # product threads on the CPU; 0: one per core
    # L-BFGS-B correction pairs; C-shape evaluations at 20 / 50: 294 / 195 (8 mm), 1964 / 1729
    # (6 mm, equal time), 1865 / 2109 (4 mm example): no size wins everywhere
    memory: int = 20
    rho0: float = 10.0  # initial penalty, relative to the soft terms' curvature
    # the factor of one penalty step up or down (_penalty_step); steps count against
    # INFEASIBLE_RAISES
    penalty_factor: float = 10.0
    working_set: bool = True  # multiply only the rows that can act in an inner solve (CPU)
    # wall-clock budget of one solve, s (None: none): past it the solve stops at the next check
    # (every CHECK_EVERY inner iterations) and raises SolverError with the residuals reached
    time_limit_s: float | None = None
    verbose: bool = False

    def __post_init__(self):
        for name in ("violation_tol", "gap_tol", "kkt_tol", "rho0", "penalty_factor"):
            value = getattr(self, name)
            try:
                if isinstance(value, (bool, np.bool_, str, bytes)):
                    raise TypeError
                value = float(value)
            except (TypeError, ValueError):
                raise SolverError(f"{name}: expected a number > 0, got {value!r}") from None
            if not (np.isfinite(value) and value > 0):
                raise SolverError(f"{name}: expected a finite number > 0, got {value!r}")
            setattr(self, name, value)
        if self.penalty_factor <= 1:
            raise SolverError(f"penalty_factor: expected a number > 1, got {self.penalty_factor!r}")
        if self.time_limit_s is not None:
            try:
                limit = float(self.time_limit_s)
            except (TypeError, ValueError):
                limit = float("nan")
            if isinstance(self.time_limit_s, bool) or not (np.isfinite(limit) and limit > 0):
                raise SolverError(f"time_limit_s: expected a number of seconds > 0 or None, got "
                                  f"{self.time_limit_s!r}")
            self.time_limit_s = limit
        for name, low in (("max_outer", 1), ("max_inner", 1), ("threads", 0), ("memory", 1)):
            value = getattr(self, name)
            try:
                ok = float(value).is_integer() and int(float(value)) >= low and not isinstance(value, bool)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise SolverError(f"{name}: expected an integer >= {low}, got {value!r}")
            setattr(self, name, int(float(value)))
        if self.inner not in ("auto", "lbfgsb", "newton", "spg"):
            raise SolverError(f"inner: expected 'auto', 'lbfgsb', 'newton' or 'spg', got {self.inner!r}")
        if not isinstance(self.device, str):
            raise SolverError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.matrix_dtype not in MATRIX_DTYPES:
            raise SolverError(f"matrix_dtype: expected one of {MATRIX_DTYPES}, got {self.matrix_dtype!r}")


@dataclass
class _Term:
    term: object
    ctx: object
    blocks: dict  # form name -> block index, or "weights"
    hard: bool
    epi: object = None  # soft robust worst case: its epigraph (:mod:`.epigraph`)
    aux: slice = None  # its auxiliary variables in the auxiliary vector


class _Operator:
    """One sparse matrix M (rows: voxels of a form, columns: beamlets) with a factor, used as
    ``factor * M @ x`` and ``factor * M^T @ r``. On the CPU the products run on row blocks of M
    in threads; the blocks are views of M's arrays (CSR slices built from its data, indices
    and indptr), so nothing is copied."""

    def __init__(self, M, factor: float, xp, threads: int):
        self.M, self.factor, self.xp = M, float(factor), xp
        self.n_rows = M.shape[0]
        self.parts, self.edges = [], [0, self.n_rows]
        # float32 storage: the compiled float64-accumulating kernels (threaded themselves)
        self.kernel = products.Float32Product(M, threads) if xp is np and M.dtype == np.float32 else None
        if self.kernel is None and xp is np and threads > 1 and M.nnz > 1_000_000:
            bounds = np.searchsorted(M.indptr, np.linspace(0, M.nnz, threads + 1)[1:-1])
            self.edges = [0, *[int(b) for b in bounds], self.n_rows]
            self.parts = [_csr_rows_view(M, a, b) for a, b in zip(self.edges[:-1], self.edges[1:])]

    @property
    def nnz(self) -> int:
        return int(self.M.nnz)

    def matvec(self, x, pool):
        if self.kernel is not None:
            return self.factor * self.kernel.matvec(x, pool)
        xm = x.astype(self.M.dtype, copy=False)
        if pool is None or not self.parts:
            y = self.M @ xm
        else:
            y = np.concatenate([f.result() for f in [pool.submit(P.__matmul__, xm) for P in self.parts]])
        return self.factor * y.astype(np.float64, copy=False)

    def rmatvec(self, r, pool):
        if self.kernel is not None:
            return self.factor * self.kernel.rmatvec(r, pool)
        rm = r.astype(self.M.dtype, copy=False)
        if pool is None or not self.parts:
            g = self.M.T @ rm
        else:
            jobs = [pool.submit(P.T.__matmul__, rm[a:b])
                    for P, a, b in zip(self.parts, self.edges[:-1], self.edges[1:])]
            g = sum(f.result().astype(np.float64) for f in jobs)
        return self.factor * g.astype(np.float64, copy=False)

    def column_norms_sq(self, row_weights):
        """sum_i row_weights_i (factor M_ij)^2 per column j, in row chunks (bounded memory)."""
        xp = self.xp
        if self.kernel is not None:
            return self.kernel.column_norms_sq(row_weights) * self.factor ** 2
        out = xp.zeros(self.M.shape[1])
        step = max(1, self.n_rows // 8)
        for a in range(0, self.n_rows, step):
            P = self.M[a:a + step] if xp is not np else _csr_rows_view(self.M, a, min(a + step, self.n_rows))
            out += xp.asarray(P.multiply(P).T @ row_weights[a:a + step].astype(P.dtype)).ravel()
        return out * self.factor ** 2


def _csr_rows_view(M, a: int, b: int):
    """Rows a..b-1 of a CSR matrix sharing its data and indices arrays (no copy)."""
    lo, hi = int(M.indptr[a]), int(M.indptr[b])
    return sp.csr_matrix((M.data[lo:hi], M.indices[lo:hi], M.indptr[a:b + 1] - lo),
                         shape=(b - a, M.shape[1]), copy=False)


@dataclass
class _Block:
    """One block of the stacked forms: the rows ``rows`` of operator ``o``'s product, or with
    ``interp`` (a structure on the CT grid, ``PlanProblem(..., ct_grid_structures=...)``) their
    trilinear interpolation ``interp @ y[rows]`` onto the structure's CT voxels. The operator's
    rows are multiplied once; the interpolation (<= 8 entries per CT voxel) is applied after."""

    o: int
    rows: object
    interp: object = None

    @property
    def size(self) -> int:
        return len(self.rows) if self.interp is None else int(self.interp.shape[0])

    def take(self, y):
        """The block's values from its operator's product ``y`` (with the pad row)."""
        return y[self.rows] if self.interp is None else self.interp @ y[self.rows]

    def onto_rows(self, part):
        """The transpose of :meth:`take`: ``part`` (one value per block entry) onto ``rows``."""
        return part if self.interp is None else self.interp.T @ part

    def source_rows(self, mask):
        """The operator rows that the block entries in ``mask`` read."""
        if self.interp is None:
            return self.rows[mask]
        return self.rows[(self.interp.T @ mask.astype(float)) > 0]


@dataclass
class Model:
    """The linear forms of a problem, K x stacked block by block, and the terms reading them.

    Each block (:class:`_Block`) is the rows ``rows`` of one operator's product (a position past
    the operator's last row reads 0: a voxel no beamlet reaches), interpolated onto CT-grid
    voxels for structures optimized there."""

    operators: list
    block_rows: list  # per block: a _Block (operator number, row positions, interpolation)
    terms: list[_Term]
    n_beamlets: int
    xp: object = np
    build_s: float = 0.0
    pool: object = None
    n_aux: int = 0  # auxiliary (free) variables of the robust worst cases, after the weights
    working: object = None  # the rows the objective multiplies (:class:`.working_set.WorkingSet`)
    threads: int = 1  # product threads of the operators (row blocks); the working set's copies too
    matrix_dtype: str = "float64"  # storage the products read (MATRIX_DTYPES, "auto" resolved)
    gy_per_weight: float = 1.0  # the largest course dose of one unit of weight in a voxel, Gy
    spots: bool = False  # proton spots (the beamlet table has finite energies)
    certificate_products: int = 0  # products (K s or K^T r) the exact gaps took
    # non-zeros the evaluations have read (two products each, over the working set's rows): the
    # exact gaps' products read every row, so the throttle compares reads, not product counts
    evaluation_reads: float = 0.0
    priced_at: tuple = (-1.0, 0)  # (evaluation reads, certificate products) when the last exact gap began
    # the last exact gap: (x, g, base, target, result); an inner solve's last check and its round's
    # certificate price the same point (CT photons: 5 of 11 exact gaps, 1.4-1.8 s each)
    last_bound: tuple = None

    @cached_property
    def epigraph_terms(self) -> list:
        """The terms lifted by an epigraph (soft robust worst cases), in model order."""
        return [t for t in self.terms if t.epi is not None]

    @cached_property
    def offsets(self) -> list[int]:
        """Start of each block in the stacked forms (the blocks are fixed once built; read on
        every product)."""
        return [int(v) for v in np.cumsum([0] + [b.size for b in self.block_rows])]

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def nnz(self) -> int:
        return int(sum(op.nnz for op in self.operators))

    def matvec(self, x, full: bool = True):
        """K x, every block, stacked (float64). ``full=False``: only the rows of the working set
        (:mod:`.working_set`) are multiplied, the others keep their value from when it was made."""
        ws = None if full else self.working
        return self.stack([ws.matvec(i, x, self.pool) if ws is not None and ws.restricted(i)
                           else op.matvec(x, self.pool) for i, op in enumerate(self.operators)])

    def stack(self, ys):
        """The stacked blocks of the operators' products ``ys`` (one per operator)."""
        xp = self.xp
        ys = [xp.concatenate([y, xp.zeros(1)]) for y in ys]
        parts = [b.take(ys[b.o]) for b in self.block_rows]
        return xp.concatenate(parts) if parts else xp.zeros(0)

    def rmatvec(self, r, full: bool = True):
        """K^T r for a stacked r (float64); ``full=False``: the working set's rows only (r is
        zero on the others when the working set is valid)."""
        xp = self.xp
        acc = self.unstack(self.split(r))
        g = xp.zeros(self.n_beamlets)
        ws = None if full else self.working
        for i, (op, a) in enumerate(zip(self.operators, acc)):
            g += ws.rmatvec(i, a[:-1], self.pool) if ws is not None and ws.restricted(i) \
                else op.rmatvec(a[:-1], self.pool)
        return g

    def column_norms(self, block_weights=None):
        """Norms of the columns of K, rows weighted: sqrt(sum_i w_i K_ij^2) with ``block_weights``
        one array per block (default all 1: the Euclidean norms)."""
        xp = self.xp
        if block_weights is None:
            block_weights = [xp.ones(b.size) for b in self.block_rows]
        total = xp.zeros(self.n_beamlets)
        for op, counts in zip(self.operators, self.unstack(block_weights)):
            total += op.column_norms_sq(counts[:-1])
        return xp.sqrt(total)

    def unstack(self, parts) -> list:
        """The transpose of :meth:`stack`: per operator, the values ``parts`` (one array per
        block) summed onto its rows (length n_rows + 1, the last the 'no beamlet' pad row)."""
        xp = self.xp
        acc = [xp.zeros(op.n_rows + 1) for op in self.operators]
        for b, part in zip(self.block_rows, parts):
            part = b.onto_rows(xp.asarray(part, dtype=float))
            if xp is np:
                acc[b.o] += np.bincount(b.rows, weights=part, minlength=len(acc[b.o]))
            else:
                xp.add.at(acc[b.o], b.rows, part)
        return acc

    def per_block(self, pieces) -> list:
        """One array per block, zero but for ``pieces`` = (block, values or scalar) added."""
        parts = [self.xp.zeros(b.size) for b in self.block_rows]
        for block, d in pieces:
            parts[block] = parts[block] + d
        return parts

    def split(self, y) -> list:
        off = self.offsets
        return [y[a:b] for a, b in zip(off[:-1], off[1:])]

    def forms(self, t: _Term, blocks, x) -> dict:
        return {name: (x if b == "weights" else blocks[b]) for name, b in t.blocks.items()}

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None


def build_model(problem, device: str = "cpu", matrix_dtype: str = "auto", threads: int = 0) -> Model:
    """The forms of every term over all voxels of its structure (no sampling). A base form of
    the influence set is one operator for all terms; its blocks pick rows of one product. The
    operator keeps only the rows some block reads, unless it can use the float32 influence
    matrix in place and those rows hold most (>= 60 %) of its non-zeros. Derived forms (dirty
    dose, ...) get their own matrix over their voxels."""
    from objectives.quantities import Quantity

    t0 = time.perf_counter()
    xp = _array_module(device)
    threads = threads or min(2, os.cpu_count() or 1)
    mats, mat_of, block_rows, block_of, terms = [], {}, [], {}, []
    n_aux = 0

    def matrix(key, M):
        if key not in mat_of:
            mat_of[key] = len(mats)
            mats.append(M)
        return mat_of[key]

    available = problem.influence.forms
    for term in problem.terms:
        vs = None if term.structure is None else problem.voxel_set(term.structure, "all")
        ctx = problem._context(vs)
        term.refresh(ctx)
        q = term.quantity
        blocks = {}
        if q.base_forms == ("weights",):
            blocks = {"weights": "weights"}
        elif vs is not None and type(q).linear_forms is Quantity.linear_forms and all(
                f in available for f in q.base_forms):
            # on the CT grid: the rows of the dose-grid voxels its interpolation reads
            voxels = vs.voxel_index if vs.interp is None else vs.support
            for f in q.base_forms:
                inf = available[f]
                key = (vs.name, vs.interp is not None, f)
                if key not in block_of:
                    o = matrix(("form", f), inf.matrix)
                    rows = np.searchsorted(inf.voxel_index, voxels)
                    rows_c = np.minimum(rows, max(len(inf.voxel_index) - 1, 0))
                    present = (len(inf.voxel_index) > 0) & (inf.voxel_index[rows_c] == voxels)
                    reached, indptr = rows_c[present], inf.matrix.indptr
                    if f == "dose" and not (indptr[reached + 1] - indptr[reached]).any():
                        # as the cvxpy path: a term no weight can move is a setup error, not a constant
                        raise PlanError(f"structure '{vs.name}': no beamlet reaches it; check beams and "
                                        f"target")
                    block_of[key] = len(block_rows)
                    block_rows.append(_Block(o, np.where(present, rows_c, inf.matrix.shape[0]), vs.interp))
                blocks[f] = block_of[key]
        else:
            for key, R in problem._form_rows(term, vs, ctx).items():
                name = key[2].split("@")[0]
                if R is None:
                    blocks[name] = "weights"
                    continue
                if key not in block_of:
                    o = matrix(("derived", key), sp.csr_matrix(R))
                    block_of[key] = len(block_rows)
                    block_rows.append(_Block(o, np.arange(R.shape[0])))
                blocks[name] = block_of[key]
        if is_worst_case(term):
            epi = Epigraph(term, ctx)
            size = epi.n_aux(len(ctx.volumes))
            terms.append(_Term(term, ctx, blocks, False, epi, slice(n_aux, n_aux + size)))
            n_aux += size
        else:
            terms.append(_Term(term, ctx, blocks, term.hard))
    spots = _has_spots(problem.influence)
    if matrix_dtype == "auto":
        # spot plans go to the Newton inner solver (inner="auto"), whose time is its dense
        # algebra, not the products: the float64 copy only adds memory there
        newton = _newton_by_default(spots, terms)
        matrix_dtype = "float32" if newton or sum(int(M.nnz) for M in mats) >= FLOAT32_NNZ else "float64"
    if matrix_dtype == "float32" and (xp is not np or not products.available()):
        matrix_dtype = "float64"  # SciPy / CuPy would multiply in float32: the exact float64 copy instead
    dtype = np.dtype(matrix_dtype)
    operators = []
    for o, M in enumerate(mats):
        mine = [i for i, b in enumerate(block_rows) if b.o == o]
        used = np.unique(np.concatenate([block_rows[i].rows for i in mine]))
        used = used[used < M.shape[0]]
        used_nnz = int((M.indptr[used + 1] - M.indptr[used]).sum())
        if len(used) < M.shape[0] and (M.dtype != dtype or used_nnz < 0.6 * M.nnz):
            M = M[used]
            for i in mine:
                rows = block_rows[i].rows
                pos = np.searchsorted(used, rows)
                block_rows[i] = _Block(o, np.where(rows < mats[o].shape[0], pos, len(used)),
                                       block_rows[i].interp)
        if M.dtype != dtype:
            M = M.astype(dtype)
        if xp is not np:
            import cupyx.scipy.sparse as csp

            M = csp.csr_matrix(M)
        operators.append(_Operator(M, float(problem.fractions), xp, threads))
    block_rows = [_Block(b.o, xp.asarray(b.rows), _on_device(b.interp, xp)) for b in block_rows]
    threaded = xp is np and threads > 1 and any(op.parts or op.kernel is not None for op in operators)
    pool = ThreadPoolExecutor(threads) if threaded else None
    dose = available.get("dose")
    # max |a_ij| without np.abs's copy of the data (800 MB at 200 M non-zeros)
    data = dose.matrix.data if dose is not None else None
    peak = max(float(data.max()), -float(data.min())) if data is not None and data.size else 1.0
    return Model(operators, block_rows, terms, problem.influence.n_beamlets, xp,
                 time.perf_counter() - t0, pool, n_aux, threads=threads, matrix_dtype=matrix_dtype,
                 gy_per_weight=float(problem.fractions) * peak, spots=spots)


def _newton_by_default(spots: bool, terms) -> bool:
    """``inner="auto"`` on the CPU takes the Newton inner solver: spot plans without robust
    worst-case (epigraph) terms (see :attr:`Settings.inner`)."""
    return spots and not any(t.epi is not None for t in terms)


def _has_spots(influence) -> bool:
    energies = (influence.beamlets or {}).get("energy_MeV")
    return energies is not None and bool(np.isfinite(np.asarray(energies, dtype=float)).any())


def _on_device(M, xp):
    """A SciPy sparse matrix (or None) on the array module's device."""
    if M is None or xp is np:
        return M
    import cupyx.scipy.sparse as csp

    return csp.csr_matrix(M)


def _array_module(device: str):
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            return cupy
        except Exception as exc:  # ImportError, CUDARuntimeError: no usable GPU here
            raise SolverError(f"device '{device}': no usable CUDA GPU / CuPy here ({type(exc).__name__}: "
                              f"{exc}); use device='cpu' (the same solver on NumPy)") from None
    raise SolverError(f"device: expected 'cpu' or 'cuda', got {device!r}")


def check_supported(problem) -> list[str]:
    """Terms the first-order path cannot drive (no gradient for a soft term, no projection
    for a hard one), as descriptions; empty when every term is supported. Soft robust worst
    cases (composite, voxelwise) are taken through an epigraph when the wrapped cost is smooth
    (and, voxelwise, monotone on its side); otherwise the description says why not."""
    bad = []
    for term in problem.terms:
        if is_worst_case(term):
            reason = unsupported_reason(term)
            if reason:
                bad.append(reason)
            continue
        if term.hard:
            ok = _has_projection(term)
        else:
            ok = bool(getattr(term, "smooth", False))
        if not ok:
            bad.append(term.describe())
    return bad


def _has_projection(term) -> bool:
    from objectives.terms import Term, TermContext

    n = 3
    names = term.quantity.base_forms + ((term.quantity.form,) if term.quantity.form else ())
    forms = {f: np.ones(n) for f in names}
    ctx = TermContext("probe", np.full(n, 1 / n), np.arange(n), 1, (1, 1, n),
                      {"beam": np.zeros(n, int), "row": np.zeros(n, int), "col": np.arange(n)})
    try:
        term.project(forms, ctx)
        return True
    except TermError as err:
        return "cvxpy only" not in str(err)
    except Exception:  # a probe that needs real inputs (maps on the grid): offered if implemented
        return term.quantity.form is not None or type(term).project is not Term.project


class _Objective:
    """The augmented Lagrangian of a model for fixed multipliers and penalties, as a function
    of z = (weights, auxiliary variables of the robust worst cases)."""

    def __init__(self, model: Model, lam: list, rho: list, mu: list = (), rho_e: list = ()):
        self.m, self.lam, self.rho, self.mu, self.rho_e = model, lam, rho, mu, rho_e
        self.evals = 0

    def __call__(self, z):
        m, xp = self.m, self.m.xp
        self.evals += 1
        m.evaluation_reads += 2.0 * m.nnz * (m.working.share if m.working is not None else 1.0)
        x, a = z[:m.n_beamlets], z[m.n_beamlets:]
        total, gy, gx, ga = self.at_forms(_forms_at(m, x, full=False), x, a)
        if len(gy):
            gx = gx + m.rmatvec(xp.concatenate(gy), full=False)
        return total, (xp.concatenate([gx, ga]) if m.n_aux else gx)

    def at_forms(self, blocks, x, a, skip=()):
        """Value and gradients (per form block, in x, in the auxiliary variables) given the
        forms ``blocks`` (no product); the hard terms numbered in ``skip`` are left out."""
        m, xp = self.m, self.m.xp
        gy = [xp.zeros_like(b) for b in blocks]
        gx = xp.zeros_like(x)
        ga = xp.zeros(m.n_aux)
        total = 0.0
        h = e = 0
        for t in m.terms:
            forms = m.forms(t, blocks, x)
            if t.hard and h in skip:
                h += 1
            elif t.hard:
                z, p = _shifted_projection(t, forms, self.lam[h], self.rho[h])
                for k in z:
                    r = z[k] - p[k]
                    shift = float(self.lam[h][k] @ self.lam[h][k]) / self.rho[h] ** 2
                    total += 0.5 * self.rho[h] * (float(r @ r) - shift)
                    _add(gy, gx, t.blocks[k], self.rho[h] * r)
                h += 1
            elif t.epi is not None:
                value, grads, g_a, _ = t.epi.alm(forms, a[t.aux], self.mu[e], self.rho_e[e], xp)
                total += value
                for k, g in grads.items():
                    if g is not None:
                        _add(gy, gx, t.blocks[k], g)
                ga[t.aux] += g_a
                e += 1
            else:
                total += _soft_part(t, forms, gy, gx)
        return total, gy, gx, ga


def _forms_at(model: Model, x, full: bool = True) -> list:
    """The stacked forms K x, split into their blocks (views, double precision); ``full=False``
    multiplies the working set's rows only."""
    return model.split(model.matvec(model.xp.asarray(x, dtype=np.float64), full=full))


def _shifted_projection(t: _Term, forms: dict, lam: dict, rho: float) -> tuple[dict, dict]:
    """z = y + lambda / rho and its projection onto the hard term's set (forms it leaves alone
    are kept as they are)."""
    z = {k: v + lam[k] / rho for k, v in forms.items()}
    return z, {**z, **t.term.project(z, t.ctx)}


def _soft_part(t: _Term, forms: dict, gy: list, gx) -> float:
    """A soft term's weighted cost; its weighted gradient is added to the form gradients."""
    w = float(t.term.weight.value)
    if w == 0:
        return 0.0
    for k, g in t.term.gradient(forms, t.ctx).items():
        _add(gy, gx, t.blocks[k], w * g)
    return w * t.term.cost_value(forms, t.ctx)


def _add(gy, gx, block, g):
    if block == "weights":
        gx += g
    else:
        gy[block] += g


def solve(problem, settings: Settings, warm: dict | None = None):
    """Run the solver on ``problem``; return (weights as NumPy, info dict, warm-start state)."""
    t_start = time.perf_counter()
    model = build_model(problem, settings.device, settings.matrix_dtype, settings.threads)
    try:
        with threadpool_limits(1, user_api="blas"):
            # the solver's own threads run the sparse products; multi-threaded BLAS inside
            # L-BFGS-B and 1-D dot products then only competes with them for the cores
            # (measured: one BLAS thread took a CT-size photon solve from 161 s to 54 s)
            return _run(model, settings, warm, t_start)
    finally:
        model.close()


def _run(model: Model, settings: Settings, warm: dict | None, t_start: float):
    xp = model.xp
    hard = [t for t in model.terms if t.hard]
    n = model.n_beamlets
    # scale of the soft curvature: sum of weights x volume per voxel (squared penalties)
    soft_w = sum(float(t.term.weight.value) for t in model.terms if not t.hard) or 1.0
    x = xp.asarray(warm["x"]) if warm and warm.get("n") == n else xp.zeros(n)
    lam = warm["lam"] if warm and warm.get("n") == n and _fits(model, hard, warm["lam"]) else None
    if lam is None:
        lam = [{k: xp.zeros(_block_size(model, t, k)) for k in t.blocks} for t in hard]
    if x.sum() == 0:
        x = _initial_guess(model, x)
    # a limit on the weights is penalised in the dose its excess gives (:attr:`Model.gy_per_weight`)
    rho = warm["rho"] if warm and lam is warm.get("lam") else [
        settings.rho0 * soft_w / max(len(t.ctx.volumes), 1)
        * (model.gy_per_weight ** 2 if "weights" in t.blocks else 1.0) for t in hard]
    inner = settings.inner
    if inner == "auto":
        newton = _newton_by_default(model.spots, model.terms)
        inner = "spg" if xp is not np else "newton" if newton else "lbfgsb"
    if inner in ("lbfgsb", "newton") and xp is not np:
        raise SolverError(f"inner={inner!r} runs on the CPU only; use inner='spg' with device='cuda'")
    if inner == "newton" and model.n_aux:
        raise SolverError("inner='newton' does not take robust worst-case terms (their epigraph "
                          "variables); use inner='lbfgsb'")
    newton_state = {}  # the Newton damping, carried from one outer round to the next
    # steps: tenfold penalty steps above the initial penalty (raised minus lowered)
    history, evals, prev_viol, prev_epi, steps = [], 0, np.inf, np.inf, 0
    lowered = cycled = False  # the penalty was lowered; then raised again (NEWTON_LOWERS_ONCE)
    cert = None
    scale, curvature = _diagonal_scaling(model) if model.n_rows else (xp.ones(n), 1.0)
    floors = _certificate_floors(model, settings.violation_tol)
    z, mu, rho_e, scale, lower = _lift(model, x, scale, curvature, settings.rho0, warm)
    # restricted row copies pay on the CPU, where the products are the cost (not on a GPU)
    use_working_set = settings.working_set and xp is np and model.n_rows > 0
    shares = []

    def out_of_time() -> bool:
        return settings.time_limit_s is not None and time.perf_counter() - t_start > settings.time_limit_s

    stuck_key = None
    for outer in range(1, settings.max_outer + 1):
        f = _Objective(model, lam, rho, mu, rho_e)
        z_start = z
        # inexact inner solves while the hard terms are far from feasible, tight once they hold
        # or once the violation stopped falling: ftol 1e-8 then ended the inner solve after 2
        # evaluations round after round (relative progress under the raised penalty's cost),
        # and a feasible BED limit "looked infeasible" at 0.0205 against a tolerance of 0.01
        stalled = len(history) > 1 and history[-1]["max_violation"] >= 0.99 * history[-2]["max_violation"]
        near = cert is not None and (cert["max_violation"] <= settings.violation_tol or stalled)
        ftol = 1e-13 if near else 1e-8
        seen, grow = [], [False]

        def certified(zk, blocks=None, lam=lam, rho=rho, mu=mu, rho_e=rho_e, seen=seen, f=f, grow=grow):
            """Stop the inner solve as soon as its iterate certifies (checked every few steps),
            once the hard violation has stalled above tolerance (only a multiplier update moves
            it), or when a row outside the working set has become active. ``blocks``: the full
            forms at ``zk`` where the caller has them."""
            if out_of_time():
                return True
            if blocks is None:
                blocks = _forms_at(model, zk[:model.n_beamlets])
            _, _, cert_k = _update_and_certify(model, zk, lam, rho, mu, rho_e, blocks, floors, settings,
                                               throttle=True)
            seen.append((cert_k["max_violation"], cert_k["objective"], abs(cert_k["complementarity"])))
            if _meets(cert_k, settings) or _stalled(seen, cert_k, settings):
                return True
            grow[0] = model.working is not None and model.working.invalid(model, f, blocks, zk)
            return grow[0]

        for rebuild in range(MAX_REBUILDS + 1):
            model.working = None
            if use_working_set and rebuild < MAX_REBUILDS:
                model.working = WorkingSet.build(model, f, z)
                shares.append(model.working.share)
            grow[0] = False
            if inner == "newton":
                def presolve(x, evals, f=f, ftol=ftol, certified=certified, scale=scale):
                    return _inner_solve(f, x, "lbfgsb", evals, xp, scale, ftol, certified, settings.memory,
                                        lower)

                z = newton_lm.inner_solve(f, z, settings.max_inner, ftol, certified, presolve, newton_state)
            else:
                z = _inner_solve(f, z, inner, settings.max_inner, xp, scale, ftol, certified, settings.memory,
                                 lower)
            blocks = _forms_at(model, z[:model.n_beamlets])  # full: for the check and the certificate
            if model.working is None or not (grow[0] or model.working.invalid(model, f, blocks, z)):
                break
        model.working = None
        evals += f.evals
        lam_new, mu, cert = _update_and_certify(model, z, lam, rho, mu, rho_e, blocks, floors, settings)
        history.append({"outer": outer, "evals": f.evals, "penalty_steps": steps,
                        **{k: cert[k] for k in ("max_violation", "rel_gap", "kkt")}})
        if settings.verbose:
            print(f"outer {outer}: evals {f.evals}, violation {cert['max_violation']:.3g}, "
                  f"gap {cert['rel_gap']:.2e}, kkt {cert['kkt']:.2e}")
        lam = lam_new
        if _meets(cert, settings):
            break
        if out_of_time():
            raise SolverError(
                f"first-order solver: time limit of {settings.time_limit_s:g} s reached after {outer} "
                f"outer iterations ({evals} evaluations, {time.perf_counter() - t_start:.1f} s) without a "
                f"certified optimum: {_residuals(cert, settings)}; raise time_limit_s or try "
                f"solver='CLARABEL'")
        step = _penalty_step(cert, prev_viol, history[-2]["rel_gap"] if len(history) > 1 else np.inf,
                             steps, settings, cycled)
        lowered = lowered or step < 0
        cycled = cycled or (NEWTON_LOWERS_ONCE and inner == "newton" and lowered and step > 0)
        rho = [r * settings.penalty_factor ** step for r in rho]
        steps += step
        prev_viol = cert["max_violation"]
        if _looks_infeasible(history, steps, settings):
            worst = max(cert["hard_terms"], key=lambda c: c["max_violation"])
            raise SolverError(
                f"first-order solver: the hard terms look infeasible: the largest violation stayed at "
                f"{cert['max_violation']:.3g} (tolerance {settings.violation_tol:g}; worst: {worst['term']}, "
                f"{worst['max_violation']:.3g}) over the last {INFEASIBLE_ROUNDS} outer iterations while the "
                f"penalty grew {settings.penalty_factor ** steps:.0e}-fold ({outer} outer iterations, "
                f"{evals} evaluations); "
                f"relax the hard terms, or run problem.diagnose_infeasibility() to name those in conflict")
        # the same for the epigraphs of robust worst cases (relative constraint violation; not
        # below a tenth of the gap tolerance, where it no longer limits the certificate)
        epi_viol = cert["epigraph_infeasibility"]
        if epi_viol > 0.1 * settings.gap_tol and epi_viol > 0.25 * prev_epi:
            rho_e = [r * 10.0 for r in rho_e]
        prev_epi = cert["epigraph_infeasibility"]
        # a composite epigraph's penalty follows its cost down: rho0 w / (worst cost now), so the
        # slack w / rho below the worst case stays small against the cost (never lowered)
        epis = model.epigraph_terms
        rho_e = [max(r, t.epi.penalty(settings.rho0, max(c, 1e-12), xp)) if t.epi.composite else r
                 for t, r, c in zip(epis, rho_e, cert["epigraph_worst"])]
        if epis:
            scale = _aux_scale(model, scale, rho_e, curvature, settings.rho0)
        # a round that left z where it was, with the same certificate and penalties as the round
        # before, repeats itself up to max_outer (multipliers from the same z are the same)
        key = (cert["objective"], cert["max_violation"], cert["rel_gap"], list(rho),
               [float(xp.max(xp.asarray(r))) for r in rho_e])
        unmoved = bool(xp.all(z == z_start))
        if unmoved and key == stuck_key:
            raise SolverError(
                f"first-order solver: the inner {inner} solves made no progress in two outer iterations "
                f"({outer} outer iterations, {evals} evaluations): {_residuals(cert, settings)}; try "
                f"inner='spg', warm_start=False or solver='CLARABEL'")
        stuck_key = key if unmoved else None
    else:
        raise SolverError(
            f"first-order solver: no certified optimum after {settings.max_outer} outer iterations "
            f"({evals} evaluations): {_residuals(cert, settings)}; try solver='CLARABEL'")
    x = z[:n]
    x_np = np.asarray(x.get() if hasattr(x, "get") else x, dtype=float)
    info = {
        "iterations": evals,
        # the exact gaps' products (:mod:`.dual_certificate`), besides the evaluations (2 each)
        "certificate_products": model.certificate_products,
        "outer_iterations": len(history),
        "build_s": model.build_s,
        "solve_s": time.perf_counter() - t_start - model.build_s,
        "objective": cert["objective"],
        "certificate": cert,
        "history": history,
        "inner": inner,
        "device": settings.device,
        "opt_voxels": int(sum(len(t.ctx.volumes) for t in model.terms if t.term.structure is not None)),
        "nnz": model.nnz,
        "matrix_dtype": model.matrix_dtype,
        "aux_variables": model.n_aux,
        # non-zeros multiplied per evaluation / all non-zeros, per working set built
        "working_set_share": [round(v, 3) for v in shares],
    }
    return x_np, info, {"x": x, "lam": lam, "rho": rho, "n": n,
                        "epi": {"mu": mu, "rho": rho_e, "n_aux": model.n_aux}}


def _lift(model: Model, x, scale, curvature: float, rho0: float, warm: dict | None):
    """z = (x, auxiliary variables at the worst cases of x), the epigraph multipliers and
    penalties (warm ones when the problem has the same epigraphs), the scaling of z (an
    auxiliary variable's curvature is about its penalty: scaled to the weights' ``curvature``)
    and the lower bounds of z (0 for the weights, none for the auxiliary variables)."""
    xp = model.xp
    epis = model.epigraph_terms
    if not epis:
        return x, [], [], scale, xp.zeros(model.n_beamlets)
    old = (warm or {}).get("epi") or {}
    reuse = warm is not None and warm.get("n") == model.n_beamlets and old.get("n_aux") == model.n_aux \
        and len(old.get("mu", ())) == len(epis)
    blocks = _forms_at(model, x)
    a, mu, rho_e, s_aux = xp.zeros(model.n_aux), [], [], xp.ones(model.n_aux)
    starts = [t.epi.start(model.forms(t, blocks, x), xp) for t in epis]
    # the warm multipliers only where every epigraph kept its shape (scenarios, voxels)
    reuse = reuse and all(old["mu"][i].shape == s[1].shape for i, s in enumerate(starts))
    for i, (t, (a0, mu0, c0)) in enumerate(zip(epis, starts)):
        a[t.aux] = a0
        mu.append(old["mu"][i] if reuse else mu0)
        rho_e.append(old["rho"][i] if reuse else t.epi.penalty(rho0, c0, xp))
    lower = xp.concatenate([xp.zeros(model.n_beamlets), xp.full(model.n_aux, -np.inf)])
    z_scale = _aux_scale(model, xp.concatenate([scale, s_aux]), rho_e, curvature, rho0)
    return xp.concatenate([x, a]), mu, rho_e, z_scale, lower


def _aux_scale(model: Model, z_scale, rho_e, curvature: float, rho0: float):
    """The auxiliary variables' part of the scaling: curvature about rho (1 + 2 / rho0)."""
    n = model.n_beamlets
    for t, r in zip(model.epigraph_terms, rho_e):
        z_scale[n + t.aux.start:n + t.aux.stop] = model.xp.sqrt(curvature / (1.0 + 2.0 / rho0) / r)
    return z_scale


def _soft_row_weights(model: Model) -> list:
    """Per form block: sum of weight x relative volume of the soft terms reading each row."""
    xp = model.xp
    return model.per_block([(b, float(t.term.weight.value) * xp.asarray(t.ctx.volumes, dtype=float))
                            for t in model.terms if not t.hard for b in t.blocks.values() if b != "weights"])


#: the deviation (in the terms' unit: Gy for dose) whose pull floors the certificate's KKT
#: residual (:func:`_certificate_floors`)
FLOOR_DEVIATION = 1.0


def _certificate_floors(model: Model, gap_deviation: float) -> tuple[float, float]:
    """Floors of the two relative measures of the certificate: the cost of a ``gap_deviation``
    deviation (the hard-violation tolerance, 0.01 Gy by default) in every voxel of every soft term
    (sum of weights x d^2: volumes sum to 1) for the gap, and the largest pull a FLOOR_DEVIATION
    deviation puts on a beamlet (2 d K^T (w v) for the squared penalties) for the KKT residual.
    Without them a plan whose optimum is 0 (every soft goal met exactly) never certifies: its
    objective and gradient go to 0 with the error they measure. The gap's floor was the cost of
    1 Gy, and a plan whose optimum cost less than that certified 4 % above it (objective 6.1e-4
    against CLARABEL's 5.9e-4, weights summing to 1); it now binds only below the cost of a dose
    error the certificate accepts anyway. A large weight on a term that costs nothing at the
    optimum still raises it (recorded as ``gap_floor``)."""
    xp = model.xp
    soft = [t for t in model.terms if not t.hard]
    objective = sum(float(t.term.weight.value) for t in soft) * gap_deviation ** 2
    pull = 2.0 * FLOOR_DEVIATION * sum(float(t.term.weight.value) for t in soft if "weights" in t.blocks)
    if model.n_rows:
        pull += 2.0 * FLOOR_DEVIATION * float(model.rmatvec(xp.concatenate(_soft_row_weights(model))).max())
    return objective, pull


def _diagonal_scaling(model: Model):
    """Jacobi scaling of the beamlets: 1 / sqrt of the diagonal of the soft terms' curvature,
    sum_k w_k sum_i v_i K_ij^2 (squared penalties: the volume-weighted column norms), plus a
    small share of the plain column norms so beamlets that only hard terms see keep a scale."""
    xp = model.xp
    soft = model.column_norms(_soft_row_weights(model)) ** 2
    plain = model.column_norms() ** 2
    ratio = float(soft.mean()) / max(float(plain.mean()), 1e-300)
    diag = soft + 1e-2 * ratio * plain if float(soft.max()) > 0 else plain
    positive = diag[diag > 0]
    if positive.size == 0:
        return xp.ones_like(diag), 1.0
    # relative to the typical (median) beamlet, not the largest or the mean: one beamlet that no
    # termed voxel sees (diagonal 0) or that grazes one with a 1e-8 dose would otherwise take a
    # scale ~1e12 and, after the normalization, shrink every other beamlet's to ~1e-12
    typical = float(xp.median(positive))
    regular = diag >= DIAG_FLOOR * typical
    diag = xp.where(diag > 0, xp.maximum(diag, DIAG_FLOOR * typical), typical)
    scale = 1.0 / xp.sqrt(diag)
    scale = scale / float(scale[regular].mean())  # mean 1 over the beamlets the floor left alone
    return scale, float((diag * scale * scale).mean())


#: the smallest diagonal :func:`_diagonal_scaling` uses, as a share of the median beamlet's: a
#: beamlet scaled more than 1e3 times the typical one gains nothing (bug: a 1e-8 Gy graze)
DIAG_FLOOR = 1e-6


#: inexact augmented Lagrangian: an inner round ends when the hard violation, above tolerance,
#: changed by less than this fraction over the last three checks (C-shape 6 mm: 1827 -> 1298
#: evaluations)
STALL_FRACTION = 0.02


#: the complementarity part of the gap, lambda^T (y - P(z)) (relative), counts as settled when it
#: changed by at most this fraction over the last three checks. 0.1 against 0.05, evaluations
#: (2026-11-28, same run): CT-size photons 4235 vs 7518 (the inner rounds no longer polish for
#: ~3000 evaluations with multipliers still to move), C-shape 4 mm 2287 vs 3136, 6 mm 1367 vs
#: 1320, 8 mm photons and protons (Newton) and the warm-start sweep unchanged; 0.2 took CT photons
#: to 2845 but the 4 and 6 mm C-shapes to 3415 and 1367
COMP_STEADY = 0.1


def _stalled(seen: list, cert: dict, settings: Settings) -> bool:
    """True when the inner solve no longer reduces what keeps the certificate out, which only
    the multiplier update of the next outer round can: the hard violation, while above
    tolerance, changed by less than STALL_FRACTION over the last three checks; or, with the
    violation within tolerance and the gap not, either the complementarity part of the gap
    (lambda^T (y - P(z)) = lambda_new^T (lambda_new - lambda_old) / rho at an inner optimum) alone
    exceeds the gap tolerance and has settled (COMP_STEADY), or the inner problem is solved (KKT
    residual within tolerance, objective steady to a tenth of the gap tolerance) while the gap,
    which swings with the inner iterate, is still out.
    ``seen``: (violation, objective, |complementarity|) per check."""
    if len(seen) < 3:
        return False
    if cert["max_violation"] > settings.violation_tol:
        return _steady([v[0] for v in seen[-3:]], STALL_FRACTION)
    if cert["rel_gap"] <= settings.gap_tol:
        return False
    comps = [v[2] for v in seen[-3:]]
    if min(comps) > settings.gap_tol and _steady(comps, COMP_STEADY):
        return True
    if cert["kkt"] > settings.kkt_tol:
        return False
    recent = [v[1] for v in seen[-3:]]
    return max(recent) - min(recent) <= 0.1 * settings.gap_tol * max(abs(recent[-1]), 1e-12)


#: with the Newton inner solver, a penalty lowered and then raised again is not lowered any
#: more: CT-size protons were lowered on a grown gap at 0.007-0.0096 Gy (tolerance
#: 0.01), raised on the 0.027-0.035 Gy that followed, in turn for 18 rounds without a certificate
#: (with the rule: certified in 11 rounds). Not for L-BFGS-B: CT photons lower and raise it in turn
#: several times on their way to a certificate (with the rule: 10,711 evaluations against 5311).
NEWTON_LOWERS_ONCE = True

#: a gap this many times the previous round's is a swing (the penalty is lowered); below, a
#: rise is the inner solve's noise: on CT photons the gap alternated 3.29 / 2.98 / 3.10 / 2.87e-4
#: round after round, lowering and raising the penalty in turn, and crept for 25 rounds
GAP_SWING = 1.5


def _penalty_step(cert: dict, prev_viol: float, prev_gap: float, steps: int, settings: Settings,
                  cycled: bool = False) -> int:
    """The hard terms' penalty for the next round, in tenfold steps (``steps``: how many it is
    above the initial penalty); ``prev_viol`` and ``prev_gap``: the previous round's violation and
    relative gap.

    +1 while the hard terms are violated beyond tolerance and the violation did not shrink to a
    quarter of the previous round's (the standard augmented-Lagrangian safeguard). Once they hold,
    with the multiplier step (the gap's complementarity part) out of tolerance:
    -1 (only back towards the initial penalty) when the gap grew: a penalty raised for an early
    large violation makes the multiplier updates overshoot and the gap swing round after round
    (residual balancing, Boyd et al., Found Trends Mach Learn 2011, sec 3.4.1; CT C-shape photons:
    11,901 -> 4382-5341 evaluations);
    +1 when the inner solve was exact (KKT residual within tolerance) but the gap shrank by less
    than half: the multipliers converge at a rate that improves with the penalty (the method of
    multipliers is a proximal point method on the dual, step = penalty; Rockafellar 1976). Without
    it, a lowered penalty left the CT photon case, and a small DADR problem at its initial
    penalty, creeping at a gap of 1.7e-4 / 2.6e-2 for 20-30 rounds. 0 otherwise.
    ``cycled``: not lowered any more (see :data:`NEWTON_LOWERS_ONCE`)."""
    viol = cert["max_violation"]
    if viol > settings.violation_tol:
        return 1 if viol > 0.25 * prev_viol else 0
    if abs(cert["complementarity"]) <= settings.gap_tol:
        return 0
    if steps > 0 and not cycled and cert["rel_gap"] > GAP_SWING * prev_gap:
        return -1
    if cert["kkt"] <= settings.kkt_tol and cert["rel_gap"] > 0.5 * prev_gap:
        return 1
    return 0


#: a problem whose hard violation, above tolerance, changed by at most INFEASIBLE_CHANGE
#: (relative) over INFEASIBLE_ROUNDS outer iterations after the penalty grew at least
#: 10^INFEASIBLE_RAISES-fold is reported as looking infeasible (a feasible one's violation falls
#: about as 1 / penalty; an infeasible C-shape CT case kept 2.26 Gy for 35 rounds up to 1e36)
INFEASIBLE_RAISES = 4
INFEASIBLE_ROUNDS = 3
INFEASIBLE_CHANGE = 0.01


def _looks_infeasible(history: list, steps: int, settings: Settings) -> bool:
    if steps < INFEASIBLE_RAISES or len(history) < INFEASIBLE_ROUNDS:
        return False
    recent = [h["max_violation"] for h in history[-INFEASIBLE_ROUNDS:]]
    return min(recent) > settings.violation_tol and _steady(recent, INFEASIBLE_CHANGE)


def _steady(values: list, fraction: float) -> bool:
    """The values (>= 0) spread by at most ``fraction`` of the largest."""
    return max(values) - min(values) <= fraction * max(values)


def _residuals(cert: dict, settings: Settings) -> str:
    """The certificate's residuals against their tolerances, for error messages."""
    return (f"max hard violation {cert['max_violation']:.3g} (tolerance {settings.violation_tol:g}), "
            f"relative gap {cert['rel_gap']:.2e} (tolerance {settings.gap_tol:g}), KKT residual "
            f"{cert['kkt']:.2e} (tolerance {settings.kkt_tol:g})")


def _within(cert: dict, settings: Settings, gap_factor: float) -> bool:
    """Violation and KKT residual within tolerance, the gap within ``gap_factor`` x its own."""
    return (cert["max_violation"] <= settings.violation_tol and cert["kkt"] <= settings.kkt_tol
            and cert["rel_gap"] <= gap_factor * settings.gap_tol)


def _meets(cert: dict, settings: Settings) -> bool:
    """All three measures within tolerance, the gap exact (:mod:`.dual_certificate`)."""
    return cert["gap_exact"] and _within(cert, settings, 1.0)


def _fits(model, hard: list, lam: list) -> bool:
    """Whether warm multipliers ``lam`` belong to these hard terms: one per term, the same forms,
    the same sizes (the terms may have been edited since the warm state was saved)."""
    return len(lam) == len(hard) and all(
        set(old) == set(t.blocks) and all(len(old[k]) == _block_size(model, t, k) for k in t.blocks)
        for t, old in zip(hard, lam))


def _block_size(model, t, k):
    b = t.blocks[k]
    if b == "weights":
        return model.n_beamlets
    return int(model.offsets[b + 1] - model.offsets[b])


def _initial_guess(model, x):
    """Uniform weights scaled so the mean target dose is of the order of the prescriptions."""
    xp = model.xp
    x1 = xp.ones_like(x)
    y = model.matvec(x1)
    mean = float(y.mean()) if y.size else 1.0
    limits = [float(t.term.limit.value) for t in model.terms if hasattr(t.term, "limit")
              and float(t.term.limit.value) > 0]
    target = float(np.median(limits)) if limits else 1.0
    return x1 * (target / mean if mean > 0 else 1.0)


#: working-set rebuilds allowed in one outer round before it goes on with all rows
MAX_REBUILDS = 8

#: inner iterations between two certificate checks (each costs about one evaluation)
CHECK_EVERY = 25


def _inner_solve(f, x0, inner: str, max_iter: int, xp, scale, ftol: float, certified=None, memory: int = 20,
                 lower=None):
    """Minimize f over x >= lower (default 0; -inf: a free variable) from x0, in the scaled
    variables u = x / scale (diagonal preconditioning by the soft curvature,
    :func:`_diagonal_scaling`).
    Every CHECK_EVERY iterations ``certified(x)`` may end the solve early: the certificate does
    not depend on how x was reached, so the multiplier round need not finish."""
    def fu(u):
        val, g = f(u * scale)
        return val, g * scale

    u0 = x0 / scale
    lower = xp.zeros_like(x0) if lower is None else lower
    lo = lower / scale
    if inner == "lbfgsb":
        from scipy.optimize import minimize

        count = [0]

        def callback(intermediate_result):
            count[0] += 1
            if certified is not None and count[0] % CHECK_EVERY == 0:
                if certified(np.maximum(intermediate_result.x, lo) * scale):
                    raise StopIteration

        best = [np.inf, None]
        # SciPy's ftol test divides the decrease by max(|f|, 1): below 1 it is an absolute test,
        # and an inner solve whose objective was 1.8e-3 stopped after 2 evaluations round after
        # round (gap 6e-3 for 40 rounds). Such an objective is divided by its value at the start.
        unit = []

        def fu_best(u):
            val, g = fu(u)
            if val < best[0]:
                best[0], best[1] = val, np.array(u, copy=True)
            if not unit:
                unit.append(min(max(abs(float(val)), 1e-300), 1.0))
            return val / unit[0], g / unit[0]

        res = minimize(fu_best, np.asarray(u0, dtype=float), jac=True, method="L-BFGS-B",
                       bounds=[(float(b), None) if np.isfinite(b) else (None, None) for b in lo],
                       callback=callback,
                       options={"maxiter": max_iter, "maxcor": memory, "ftol": ftol, "gtol": 0.0})
        u = res.x
        if res.status == 2 and best[1] is not None and best[0] < fu(u)[0]:
            # a failed line search ("ABNORMAL") returns its last trial point, which can lie above
            # the best point evaluated (robust C-shape, warm start: 135.45 against 134.55)
            u = best[1]
        return np.maximum(u, lo) * scale
    if inner == "spg":
        check = None if certified is None else (lambda u: certified(u * scale))
        return _spg(fu, u0, max_iter, xp, check=check, lower=lo) * scale
    raise SolverError(f"inner: expected 'lbfgsb', 'spg' or 'auto', got {inner!r}")


def _spg(f, x, max_iter: int, xp, memory: int = 10, check=None, lower=0.0):
    """Spectral projected gradient (Birgin, Martinez & Raydan, SIAM J Optim 2000) on
    x >= lower with a non-monotone Armijo line search: array-API code, runs on NumPy or CuPy."""
    x = xp.maximum(x, lower)
    fx, g = f(x)
    recent = [fx]
    step = 1.0 / max(float(xp.abs(g).max()), 1e-30)
    for it in range(1, max_iter + 1):
        if check is not None and it % CHECK_EVERY == 0 and check(x):
            break
        d = xp.maximum(x - step * g, lower) - x
        gd = float(g @ d)
        if gd > -1e-16 * max(abs(fx), 1.0):
            break
        a, ref = 1.0, max(recent[-memory:])
        while True:
            xn = x + a * d
            fn, gn = f(xn)
            if fn <= ref + 1e-4 * a * gd or a < 1e-12:
                break
            a *= 0.5
        s, yv = xn - x, gn - g
        sy = float(s @ yv)
        step = float(s @ s) / sy if sy > 0 else 1e3 * step
        x, fx, g = xn, fn, gn
        recent.append(fx)
    return x


#: the exact gap (:mod:`.dual_certificate`: up to ~1200 products, mostly far fewer) is worked out
#: once the first-order gap |g^T x - comp| is within PRICE_AT x the gap tolerance (the exact one
#: may come out above or below it)
PRICE_AT = 10.0


def _update_and_certify(model: Model, z, lam, rho, mu=(), rho_e=(), blocks=None, floors=(0.0, 0.0),
                        settings: Settings | None = None, throttle: bool = False):
    """New multipliers (hard terms, epigraphs) and the certificate at z = (x, auxiliary
    variables) (all voxels); ``floors``: of the gap's and the KKT residual's scales
    (:func:`_certificate_floors`). A robust worst case enters the bound through its multiplier
    mixture (:meth:`.epigraph.Epigraph.bound`): the gap adds its true value minus the mixture.
    With ``settings``, a certificate whose first-order gap is near them (PRICE_AT) gets its exact
    gap (:mod:`.dual_certificate`; only that one certifies). ``throttle`` (the checks inside an
    inner solve): not before the evaluations since the last exact gap have read as many non-zeros
    as it did (its products read every row, theirs the working set's; counted, not timed, so that
    a solve does not depend on the machine's speed)."""
    xp = model.xp
    x, a = z[:model.n_beamlets], z[model.n_beamlets:]
    blocks = _forms_at(model, x) if blocks is None else blocks
    gy = [xp.zeros_like(b) for b in blocks]
    gx = xp.zeros_like(x)
    soft, lam_new, comp, worst = 0.0, [], 0.0, 0.0
    checks, mu_new, minorant, infeasible, worst_costs = [], [], 0.0, 0.0, []
    gy_hard = [xp.zeros_like(b) for b in blocks]
    gy_epi = [xp.zeros_like(b) for b in blocks] if model.epigraph_terms else []
    h = e = 0
    for t in model.terms:
        forms = model.forms(t, blocks, x)
        if t.hard:
            z, p = _shifted_projection(t, forms, lam[h], rho[h])
            new = {k: rho[h] * (z[k] - p[k]) for k in z}
            for k in z:
                _add(gy_hard, gx, t.blocks[k], new[k])
                # lambda^T (y - P(z)): the complementarity part of the gap (sigma_C = lambda^T P(z))
                comp += float(new[k] @ (forms[k] - p[k]))
            viol = float(max(np.max(_np(t.term.violation_values(forms, t.ctx))), 0.0))
            check = {"term": t.term.describe(), "structure": t.ctx.structure,
                     "voxels_checked": int(len(t.ctx.volumes)), "max_violation": viol}
            if "weights" in t.blocks:
                # a limit on the weights, in weight units: checked as the most course dose its
                # excess can add to a voxel (Gy), so the Gy tolerance means the same at any scale
                # of the influence (an absolute 0.01 let weights of 1e-3 exceed a cap of 5e-4)
                check["max_violation_weights"] = viol
                check["max_violation"] = viol = viol * model.gy_per_weight
            worst = max(worst, viol)
            checks.append(check)
            lam_new.append(new)
            h += 1
        elif t.epi is not None:
            r = t.epi.alm(forms, a[t.aux], mu[e], rho_e[e], xp)[3]
            true, mixture, grads = t.epi.bound(forms, r, xp)
            soft += true
            worst_costs.append(true / max(t.epi.weight, 1e-300))
            minorant += true - mixture
            for k, g in grads.items():
                _add(gy_epi, gx, t.blocks[k], g)
            mu_new.append(r)
            infeasible = max(infeasible, t.epi.infeasibility(forms, a[t.aux], xp))
            e += 1
        else:
            soft += _soft_part(t, forms, gy, gx)
    # the gradient of the Lagrangian in x, and for scale its one-signed parts: the soft costs'
    # pull up and push down (which cancel at the optimum, also without hard terms, where the net
    # soft gradient goes to 0), the multipliers', the robust worst cases'
    pieces = [[xp.maximum(g, 0.0) for g in gy], [xp.minimum(g, 0.0) for g in gy], gy_hard, gy_epi]
    g_parts = [model.rmatvec(xp.concatenate(part)) for part in pieces if len(part)] + [gx]
    gx = sum(g_parts)
    # x >= 0: the Lagrangian bound needs g >= 0; its negative part, relative to the largest of
    # the parts that cancel at the optimum, is the KKT residual
    g_scale = max(max(float(xp.abs(g).max()) for g in g_parts), floors[1], 1e-30) if x.size else 1.0
    kkt = float(xp.maximum(-gx, 0).max()) if x.size else 0.0
    base = float(gx @ x) - comp  # the first-order gap: exact where g >= 0 (see dual_certificate)
    gap_abs = abs(base) + max(minorant, 0.0)
    scale = max(abs(soft), floors[0], 1e-12)
    # complementarity: lambda^T (y - P(z)), the gap's part that only a multiplier update moves
    cert = {"objective": soft, "max_violation": worst, "rel_gap": gap_abs / scale,
            "gap": gap_abs, "gap_floor": floors[0],
            "kkt": kkt / g_scale, "complementarity": comp / scale, "hard_terms": checks,
            "epigraph_infeasibility": infeasible, "epigraph_worst": worst_costs,
            "gap_estimated": 0.0, "dual_moved": 0.0, "gap_is_bound": False, "gap_exact": False}
    last_reads, last_products = model.priced_at
    due = not throttle or (model.evaluation_reads - last_reads
                           >= (model.certificate_products - last_products) * model.nnz)
    if settings is not None and due and _within(cert, settings, PRICE_AT):
        gap, estimate, details = _exact_gap(model, x, blocks, gx, base, settings.gap_tol * scale)
        gap += max(minorant, 0.0)
        cert.update(gap=gap, rel_gap=gap / scale, gap_estimated=estimate, gap_exact=True, **details)
    return lam_new, mu_new, cert


def _exact_gap(model: Model, x, blocks, g, base: float, target: float) -> tuple:
    """:func:`.dual_certificate.bound`, not worked out again for the point it last priced (the
    same weights, gradient and first-order gap give the same bound)."""
    xp, last = model.xp, model.last_bound
    if last is not None and last[2] == base and last[3] == target and bool(xp.array_equal(last[0], x)) \
            and bool(xp.array_equal(last[1], g)):
        return last[4]
    model.priced_at = (model.evaluation_reads, model.certificate_products)
    result = dual_certificate.bound(model, x, blocks, g, base, target)
    model.last_bound = (x.copy(), g.copy(), base, target, result)
    return result


def _np(a):
    return np.asarray(a.get() if hasattr(a, "get") else a)
