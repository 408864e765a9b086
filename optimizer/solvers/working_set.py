"""Working set of the first-order solver: the rows of the influence operators that can move
the objective of one inner solve.

Most voxels of a plan sit where no term acts on them: a body structure below its overdose
threshold, a ring far from its limit. Their rows of ``K`` add nothing to the value or the
gradient, yet cost as much as any other row in every product. The inner solve multiplies only
the rows whose gradient is non-zero at the current forms or at the forms scaled by
``1 +- PROBE``; the other rows keep their value from the point where the set was made, which
changes the objective only by a constant while they stay inactive.

Nothing here touches the certificate: it is always computed with the full products. At every
certificate check the solver asks :meth:`WorkingSet.invalid` whether a frozen row has become
active; if so the inner solve ends, the set is rebuilt at the new point and the round goes on.
"""

from __future__ import annotations

import numpy as np

#: relative change of the forms a frozen row must survive without its terms acting on it
PROBE = 0.15
#: restrict an operator only when its active rows hold at most this share of its non-zeros
#: (below, the copy of those rows pays back within a few products)
MAX_SHARE = 0.8


class WorkingSet:
    """Per operator of a :class:`~.first_order.Model`: ``None`` (all rows multiplied) or the
    active rows, their own operator and the full product at the point where the set was made."""

    def __init__(self, parts: list, frozen: list, share: float):
        self.parts = parts
        self.frozen = frozen  # per operator: None, or a mask of the rows left out (+ the pad row)
        self.share = share  # non-zeros multiplied / all non-zeros

    @classmethod
    def build(cls, model, objective, z):
        """The working set at ``z`` for the augmented Lagrangian ``objective`` (its multipliers
        and penalties decide which hard-term rows act)."""
        from .first_order import _Operator

        x = z[:model.n_beamlets]
        ys = [op.matvec(x, model.pool) for op in model.operators]
        active = _active_rows(model, objective, model.split(model.stack(ys)), z)
        parts, frozen, used = [], [], 0
        for op, y, mask in zip(model.operators, ys, active):
            rows = np.flatnonzero(mask[:-1])
            nnz = _nnz(op, rows)
            if nnz > MAX_SHARE * op.nnz:
                parts.append(None)
                frozen.append(None)
                used += op.nnz
                continue
            # float32 kernels multiply the rows in place; otherwise a copy of them (pays back
            # within a few products)
            sub = _RowsInPlace(op, rows) if op.kernel is not None else \
                _Operator(op.M[rows], op.factor, model.xp, model.threads)
            parts.append((rows, sub, y))
            frozen.append(~mask)
            frozen[-1][-1] = False  # the pad row ('no beamlet reaches') reads 0 and never acts
            used += nnz
        return cls(parts, frozen, used / max(model.nnz, 1))

    def matvec(self, i: int, x, pool):
        rows, op, stale = self.parts[i]
        y = stale.copy()
        y[rows] = op.matvec(x, pool)
        return y

    def rmatvec(self, i: int, r, pool):
        rows, op, _ = self.parts[i]
        return op.rmatvec(r[rows], pool)

    def restricted(self, i: int) -> bool:
        return self.parts[i] is not None

    def invalid(self, model, objective, blocks, z) -> bool:
        """True when a row outside the set acts at the full forms ``blocks`` (at ``z``)."""
        frozen = self.frozen
        _, gy, _, _ = objective.at_forms(blocks, z[:model.n_beamlets], z[model.n_beamlets:])
        for b, g in zip(model.block_rows, gy):
            if frozen[b.o] is not None and np.any(frozen[b.o][b.source_rows(g != 0)]):
                return True
        return False


class _RowsInPlace:
    """Rows ``rows`` of an operator with float32 kernels, multiplied where they lie (no copy:
    the memory stays that of the influence matrix)."""

    def __init__(self, op, rows):
        self.op, self.rows = op, rows
        self.ranges = op.kernel.row_ranges(rows)  # the thread split, once per set

    def matvec(self, x, pool):
        return self.op.factor * self.op.kernel.matvec_rows(x, self.rows, pool, self.ranges)

    def rmatvec(self, r, pool):
        full = np.zeros(self.op.n_rows)
        full[self.rows] = r  # the kernel skips the zero rows
        return self.op.factor * self.op.kernel.rmatvec(full, pool)


def _nnz(op, rows) -> int:
    return int((op.M.indptr[rows + 1] - op.M.indptr[rows]).sum())


def _active_rows(model, objective, base, z) -> list:
    """Per operator, a mask over its rows (plus the 'no beamlet' row) of those whose gradient is
    non-zero at the form blocks ``base``, or at them scaled by 1 - PROBE or 1 + PROBE."""
    x, a = z[:model.n_beamlets], z[model.n_beamlets:]
    active = [np.zeros(op.n_rows + 1, dtype=bool) for op in model.operators]
    for factor in (1.0 - PROBE, 1.0, 1.0 + PROBE):
        _, gy, _, _ = objective.at_forms([b * factor for b in base], x, a)
        for b, g in zip(model.block_rows, gy):
            active[b.o][b.source_rows(g != 0)] = True
    return active
