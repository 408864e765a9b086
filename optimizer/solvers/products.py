"""Sparse products of the first-order solver: a float32 CSR matrix, float64 arithmetic.

The influence matrices are stored in float32 (8 bytes per non-zero with the int32 column
index). SciPy multiplies a float32 matrix by a float64 vector only after converting the
matrix's values to float64 (a copy per product: 2.3x the time of a float64 product, measured),
and float32 arithmetic is too coarse for the solver's line searches and certificate (the
C-shape stalls at a relative gap of 1e-4 to 1e-1). These kernels read the float32 values and
accumulate every product in float64: the result is the float64 product of the stored matrix
(to float64 rounding), the matrix is never copied, and a product reads 8 instead of 12 bytes
per non-zero.

``K x`` runs over row ranges in the solver's thread pool (the kernels release the GIL; no
Numba threading layer); ``K^T r`` gives each range its own accumulator of one value per column
(columns are beamlets: few), sums them, and skips the rows where r is 0 (voxels no term acts
on). Compiled by Numba on first use (cached on disk where the package is writable).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

try:
    import numba as _nb
except ImportError:  # pragma: no cover - numba is a dependency; SciPy stays the fallback
    _nb = None

#: row ranges per thread in K^T r (more ranges than threads evens out unequal rows)
RANGES_PER_THREAD = 4


def available() -> bool:
    """True when the compiled kernels can run (Numba imported)."""
    return _nb is not None


if _nb is not None:
    @_nb.njit(cache=True, nogil=True)
    def _matvec_rows(indptr, indices, data, x, rows, lo, hi, out):  # pragma: no cover - compiled
        for j in range(lo, hi):
            i = rows[j]
            acc = 0.0
            for k in range(indptr[i], indptr[i + 1]):
                acc += np.float64(data[k]) * x[indices[k]]
            out[j] = acc

    @_nb.njit(cache=True, nogil=True)
    def _column_sq(indptr, indices, data, w, lo, hi, acc):  # pragma: no cover - compiled
        acc[:] = 0.0
        for i in range(lo, hi):
            wi = w[i]
            if wi != 0.0:
                for k in range(indptr[i], indptr[i + 1]):
                    v = np.float64(data[k])
                    acc[indices[k]] += wi * v * v

    @_nb.njit(cache=True, nogil=True)
    def _rmatvec(indptr, indices, data, r, lo, hi, acc):  # pragma: no cover - compiled
        acc[:] = 0.0
        for i in range(lo, hi):
            ri = r[i]
            if ri != 0.0:
                for k in range(indptr[i], indptr[i + 1]):
                    acc[indices[k]] += np.float64(data[k]) * ri


def matvec64(M, x):
    """``M @ x`` in float64 for any SciPy sparse ``M``: a float32 CSR matrix through the kernel
    (no float64 copy of its values, which SciPy would make: 1.6 GB at 200 M non-zeros),
    anything else through SciPy."""
    if available() and sp.issparse(M) and M.format == "csr" and M.dtype == np.float32:
        return Float32Product(M, 1).matvec(x)
    return M @ np.asarray(x, dtype=np.float64)


class Float32Product:
    """``M @ x`` and ``M.T @ r`` in float64 for a float32 CSR matrix ``M`` (not copied), over
    row ranges of about equal non-zeros run in a thread pool (the kernels release the GIL)."""

    def __init__(self, M, threads: int):
        if not available():
            raise RuntimeError("numba is not installed: the float32 kernels need it (pip install numba)")
        self.indptr, self.indices, self.data, self.shape = M.indptr, M.indices, M.data, M.shape
        ranges = max(1, int(threads)) * RANGES_PER_THREAD if M.nnz > 1_000_000 else 1
        cuts = np.searchsorted(M.indptr, np.linspace(0, M.nnz, ranges + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], cuts, [M.shape[0]]])).astype(np.int64)
        self.ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        self._buf = self._all = None

    def matvec(self, x, pool=None):
        """M @ x (every row: the row subset of all rows, split as the matrix's ranges)."""
        if self._all is None:
            self._all = np.arange(self.shape[0], dtype=np.int64)
        return self.matvec_rows(x, self._all, pool, self.ranges)

    def row_ranges(self, rows) -> list:
        """Ranges of positions in ``rows`` with about equal non-zeros, one per range of the
        matrix (made once per row subset: :meth:`matvec_rows` reuses them)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.ranges) == 1 or len(rows) < 2:
            return [(0, len(rows))]
        nnz = np.cumsum(self.indptr[rows + 1] - self.indptr[rows])
        cuts = np.searchsorted(nnz, np.linspace(0, nnz[-1], len(self.ranges) + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], cuts, [len(rows)]])).tolist()
        return list(zip(bounds[:-1], bounds[1:]))

    def matvec_rows(self, x, rows, pool=None, ranges=None):
        """(M @ x)[rows] without copying those rows (the solver's working set); ``ranges``:
        :meth:`row_ranges` of ``rows``, made here when not given."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        ranges = self.row_ranges(rows) if ranges is None else ranges
        out = np.empty(len(rows))
        args = (self.indptr, self.indices, self.data, x, rows)
        if pool is None or len(ranges) == 1:
            for lo, hi in ranges:
                _matvec_rows(*args, lo, hi, out)
        else:
            for job in [pool.submit(_matvec_rows, *args, lo, hi, out) for lo, hi in ranges]:
                job.result()
        return out

    def rmatvec(self, r, pool=None):
        return self._per_column(_rmatvec, r, pool)

    def column_norms_sq(self, row_weights, pool=None):
        """sum_i row_weights_i M_ij^2 per column j (float64; no copy of M)."""
        return self._per_column(_column_sq, row_weights, pool)

    def _per_column(self, kernel, r, pool):
        """A kernel over the row ranges that adds into one accumulator per range, summed."""
        r = np.ascontiguousarray(r, dtype=np.float64)
        if self._buf is None:
            self._buf = np.empty((len(self.ranges), self.shape[1]))
        args = (self.indptr, self.indices, self.data, r)
        if pool is None or len(self.ranges) == 1:
            for (lo, hi), acc in zip(self.ranges, self._buf):
                kernel(*args, lo, hi, acc)
        else:
            jobs = [pool.submit(kernel, *args, lo, hi, acc) for (lo, hi), acc in zip(self.ranges, self._buf)]
            for job in jobs:
                job.result()
        return self._buf.sum(axis=0)
