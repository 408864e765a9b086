"""Fluence terms: shapes of the :class:`~objectives.quantities.Weights` quantity (the
beamlet / spot weights themselves), e.g. smoothness of each beam's fluence map."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .errors import TermError
from .quantities import Weights
from .terms import Term


def neighbour_differences(beamlets: dict) -> sp.csr_matrix:
    """Sparse D with one row per pair of neighbouring beamlets (same beam and energy layer,
    adjacent row or column of the map): (D w)_k = w_a - w_b."""
    beam = np.asarray(beamlets["beam"])
    layer = np.asarray(beamlets.get("layer", np.zeros(len(beam), int)))
    row, col = np.asarray(beamlets["row"]), np.asarray(beamlets["col"])
    index = {key: j for j, key in enumerate(zip(beam.tolist(), layer.tolist(), row.tolist(), col.tolist()))}
    a_idx, b_idx = [], []
    for (b, lay, r, c), j in index.items():
        for nb in ((b, lay, r + 1, c), (b, lay, r, c + 1)):
            k = index.get(nb)
            if k is not None:
                a_idx.append(j)
                b_idx.append(k)
    n_pairs = len(a_idx)
    data = np.r_[np.ones(n_pairs), -np.ones(n_pairs)]
    rows = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    return sp.csr_matrix((data, (rows, np.r_[a_idx, b_idx])), shape=(n_pairs, len(beam)))


class FluenceSmoothness(Term):
    """Soft: weight x sum over neighbouring beamlet pairs (same beam and layer, adjacent map
    row or column) of (w_a - w_b)^2, on the :class:`~objectives.quantities.Weights` quantity.
    Smoother fluence maps need fewer, larger MLC segments. QP-representable and DPP."""

    soft_only = True
    smooth = True

    def __init__(self, weight: float):
        super().__init__(None, weight, Weights())
        self._sqrt_w = cp.Parameter(nonneg=True, name="FluenceSmoothness.sqrt_weight")
        self._D: tuple[tuple, sp.csr_matrix] | None = None  # (the beamlet table's columns, D)

    def _differences(self, ctx) -> sp.csr_matrix:
        if ctx.beamlets is None:
            raise TermError("FluenceSmoothness: needs the beamlet table (ctx.beamlets)")
        # the key is every column the pairs depend on, compared by value (a table that differed
        # only in its layers reused the other table's pairs: cost 202 for 101)
        # (compared as they are on every call, copied only when a new matrix is cached)
        key = [np.asarray(ctx.beamlets[k]) for k in ("beam", "layer", "row", "col") if k in ctx.beamlets]
        if self._D is not None:
            cached, D = self._D
            if len(cached) == len(key) and all(np.array_equal(a, b) for a, b in zip(cached, key)):
                return D
        D = neighbour_differences(ctx.beamlets)
        self._D = (tuple(np.array(c) for c in key), D)
        return D

    def refresh(self, ctx):
        self._sqrt_w.value = float(np.sqrt(float(self.weight.value)))

    def _cost(self, q, ctx):
        return cp.sum_squares(self._differences(ctx) @ q)

    def _objective(self, q, ctx):
        self.refresh(ctx)
        return cp.sum_squares(self._sqrt_w * (self._differences(ctx) @ q))

    def _cost_value(self, q, ctx):
        r = self._differences(ctx) @ q
        return float(r @ r)

    def _gradient(self, q, ctx):
        D = self._differences(ctx)
        return 2.0 * (D.T @ (D @ q))

    def describe(self):
        return "FluenceSmoothness()"
