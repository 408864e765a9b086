"""Assembly of planning terms into one cvxpy problem, and its certified solve."""

from __future__ import annotations

import numbers
import re
import time
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from objectives.errors import BioplanError
from objectives.terms import Term, TermContext

from .errors import PlanError, SolverError
from .geometry import Patient, _normalize
from .influence import InfluenceMatrix, InfluenceSet
from .resample import coarse_grid

#: Preferred solvers, in order, when none is named: interior-point methods that certify
#: optimality with a duality gap; CLARABEL handles every cone our terms use.
DEFAULT_SOLVERS = ("CLARABEL", "ECOS", "SCS")

#: The matrix-free first-order solver (:mod:`optimizer.solvers.first_order`): every voxel, no
#: sampling; options ``violation_tol``, ``gap_tol``, ``kkt_tol``, ``max_outer``, ``max_inner``,
#: ``inner`` ("lbfgsb" | "spg"), ``device`` ("cpu" | "cuda"), ``warm_start``.
FIRST_ORDER = "FIRST_ORDER"
#: With no solver named (and no solver options), problems whose influence matrices hold at
#: least this many non-zeros and whose terms all offer the numeric protocol go to the
#: first-order solver (on every voxel, certified), the rest to CLARABEL (on its sampled helper
#: structures). A first-order solve that does not certify falls back to CLARABEL (recorded).
#: Measured on 2 cores, first-order on every voxel vs CLARABEL on the sample (solve seconds;
#: ``bench_solvers.py``): C-shape photons 8 mm (1.8 M) 3.0 vs 27.4 and 6 mm (4.3 M) 17.4 vs 72.2
#: (2026-11-27), 4 mm (14.9 M, the example) 37.9 vs 60.4 (2026-11-29). It loses on the CT-size
#: photon plan (4.4 M) 50 vs 26 s, where CLARABEL on every voxel takes 137 s. Below 1 M
#: CLARABEL's solves take seconds and stay the exact reference (the test suite's problems).
AUTO_FIRST_ORDER_NNZ = 1_000_000
#: ... and from this many for spot plans (beamlets with an energy: proton PBS, proton
#: minibeams). It wins on those measured too (CT protons, 10.4 M: 46 vs 85 s; the 3-beam proton
#: C-shape example, 13.9 M: 64 vs 75 s; proton minibeams, 19.7 M: 2.0 vs 5.8 s), but the robust
#: proton example (9 scenarios, 5.45 M) loses its nominal plan (19.2 vs 8.3 s) while it wins the
#: robust one (72.7 vs 228.3 s), and spot plans between 1 and 30 M are otherwise unmeasured: a
#: first-order solve that does not certify costs its full run before the fallback.
#: From here CLARABEL's factorisation runs out of memory (a 38 M non-zero proton plan took 3.1 GB).
AUTO_FIRST_ORDER_NNZ_SPOTS = 30_000_000
#: Structures on the CT grid (``ct_grid_structures``) also send a problem to the first-order
#: solver, whatever its size: CLARABEL gets their interpolated rows, the first-order solver
#: multiplies the dose-grid rows once (C-shape, 9 beams, 2.5 mm CT, 5 mm dose grid, PTV on the
#: CT grid: 48 vs 490 s, 2026-11-28).


#: the dose form of one robust scenario (:func:`objectives.robust.scenario_form`)
_SCENARIO_FORM = re.compile(r"dose_s\d+")

@dataclass
class _VoxelSet:
    """The optimization voxels of one structure for one kind of term.

    ``kind`` is "all" (every voxel), "sample" (a uniform random sample of a large helper
    structure, for soft terms) or "hard" (the sample plus the voxels that constraint generation
    found violated, for voxelwise hard terms)."""

    name: str
    kind: str
    voxel_index: np.ndarray  # flat grid indices, ascending
    volumes: np.ndarray  # relative volumes, sum 1
    n_total: int  # voxels of the structure on the grid
    # a structure optimized on the CT grid (``PlanProblem(..., ct_grid_structures=...)``):
    # voxel_index are CT-grid voxels, their forms the trilinear interpolation ``interp``
    # (rows: these voxels, columns: the dose-grid voxels ``support``, ascending) of the forms
    # on the dose grid
    support: np.ndarray | None = None
    interp: object = None

    @property
    def sampled(self) -> bool:
        return len(self.voxel_index) < self.n_total

    def rows(self, influence: InfluenceMatrix):
        """Per-fraction rows of ``influence`` (a form on the dose grid) for these voxels: its
        own rows, or on the CT grid the interpolation of the rows of the support voxels."""
        if self.interp is None:
            return influence.rows_of(self.voxel_index)
        return (self.interp @ influence.rows_of(self.support)).tocsr()


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise PlanError(f"{name}: expected an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value) or not float(value).is_integer() or value < minimum:
        raise PlanError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


class PlanProblem:
    """A convex planning problem over beamlet (or spot) weights.

    Parameters
    ----------
    patient : the planning geometry. It is not copied; instead every solve checks
        ``patient.revision()`` and rebuilds when a structure, the CT or the structure list
        changed since the last build.
    influence : dose-influence matrix on ``patient.grid`` (Gy per fraction per unit weight), or an
        :class:`~optimizer.influence.InfluenceSet` carrying further linear forms ("let_dose").
        An influence on a coarser dose grid (``influence(..., dose_grid=5.0)``) plans on
        ``patient.resample`` of that spacing (kept as ``problem.patient``; the patient as given
        is ``problem.ct_patient``; ``plan.on_patient(problem.ct_patient)`` brings the dose back).
    fractions : number of fractions n; terms see the total course dose ``n * A x`` in Gy.
        Assigning ``problem.fractions`` later rebuilds the problem.
    max_voxels_per_structure : helper structures (role "other": body, rings) with more voxels
        are optimized on a uniform random sample of this many voxels, each then standing for
        ``n_total / n_sample`` of the volume. Targets and OARs are never sampled. Hard terms on
        a sampled structure still hold on every voxel: voxelwise ones (max / min dose, voxel
        BED limits) by constraint generation (solve, check every voxel, add the violated ones,
        re-solve), aggregate ones (mean, DVH, gEUD) by optimizing that structure unsampled.
        ``None`` disables sampling.
    seed : seed of that sample, for reproducible plans
    let_dose : proton LET x dose matrix of the same spots (keV/um x Gy per fraction per unit
        weight), needed by LET terms, when ``influence`` does not carry it already
    hard_tolerance : largest violation of a hard term (in the term's unit: Gy for dose limits)
        on the full grid that still counts as met; a solve whose result exceeds it raises
        :class:`SolverError` instead of returning a plan. Default (None): each solver's own,
        1e-3 for the cvxpy solvers, 0.01 for FIRST_ORDER (its ``violation_tol``); given, both use it.
        FIRST_ORDER judges a limit on the beamlet weights by the most course dose its excess can
        add to a voxel (Gy), so the tolerance means the same at any scale of the influence (the
        excess in weights is in ``plan.solver["hard_terms"][k]["max_violation_weights"]``)
    ct_grid_structures : names of structures to optimize on the CT grid when the influence is on
        a coarser dose grid: their voxels are those of ``problem.ct_patient`` and their dose the
        trilinear interpolation of the dose grid, exactly what ``plan.on_patient(ct_patient)``
        reports, so their goals hold on the CT grid as optimized (the centre-point resampling
        loses target coverage at the edge there). Costs rows: a CT voxel reads up to 8 dose-grid
        voxels (the first-order solver multiplies the dose-grid rows once and interpolates).
        Voxel maps of terms on these structures (alpha/beta, radiosensitivity, ...) are read on
        the CT grid.

    Add terms with ``problem += term`` (or :meth:`add`), then call :meth:`solve`.
    """

    def __init__(
        self,
        patient: Patient,
        influence: InfluenceMatrix,
        fractions: int,
        max_voxels_per_structure: int | None = 2000,
        seed: int = 0,
        let_dose: InfluenceMatrix | None = None,
        hard_tolerance: float | None = None,
        ct_grid_structures=None,
    ):
        if not isinstance(patient, Patient):
            raise PlanError(f"patient: expected an optimizer.Patient, got {type(patient).__name__}")
        if not isinstance(influence, InfluenceMatrix):
            raise PlanError(f"influence: expected an InfluenceMatrix, got {type(influence).__name__}")
        self.ct_patient = None  # the patient as given, when the influence is on a dose grid
        if influence.grid != patient.grid:
            self.ct_patient, self._ct_revision = patient, patient.revision()
            patient = _on_dose_grid(patient, influence)
        try:
            influence.check_patient(patient)  # same grid, and rows that index it plausibly
        except BioplanError as exc:
            raise PlanError(f"influence: {exc}") from None
        if max_voxels_per_structure is not None:
            max_voxels_per_structure = _check_int(max_voxels_per_structure, "max_voxels_per_structure", 1)
        if let_dose is not None and (not isinstance(let_dose, InfluenceMatrix)
                                     or let_dose.grid != patient.grid
                                     or let_dose.n_beamlets != influence.n_beamlets):
            raise PlanError("let_dose: expected an InfluenceMatrix of the same grid and spots as influence")
        if hard_tolerance is None:  # each solver's own (the first-order one's violation_tol)
            self._hard_tolerance, self._hard_tolerance_given = 1e-3, False
        else:
            self.hard_tolerance = hard_tolerance
        self.patient = patient
        self.ct_grid_structures = self._check_ct_grid_structures(ct_grid_structures)
        # the solvers cache models built from these arrays: frozen before they are shared
        given = list(influence.forms.values()) if isinstance(influence, InfluenceSet) else [influence]
        for form in given + ([] if let_dose is None else [let_dose]):
            form.freeze()
        # one influence type: the set of named linear forms ("dose", "let_dose", ...)
        self.influence = InfluenceSet.of(influence, let_dose=let_dose)
        self.fractions = fractions
        self.max_voxels_per_structure = max_voxels_per_structure
        self.seed = _check_int(seed, "seed", 0)
        self.terms: list[Term] = []
        self._problem: cp.Problem | None = None
        self._x: cp.Variable | None = None
        self._built_for = None
        self._built_terms: list[Term] = []  # the terms the cached problem was built from
        self._sets: dict[tuple[str, str], _VoxelSet] = {}
        self._generated: dict[str, np.ndarray] = {}  # voxels added by constraint generation
        self._unsampled: set[str] = set()  # sampled helpers that carry an aggregate hard term
        self._contexts: list[TermContext] = []
        self._term_sets: list[_VoxelSet] = []
        self._hard: list[tuple[Term, cp.Expression]] = []
        self._warm, self._warm_state = None, None  # first-order iterates for warm starts
        self.build_time_s = 0.0

    @property
    def hard_tolerance(self) -> float:
        """Largest violation of a hard term on the full grid that still counts as met (see the
        class docstring); set it to a finite number > 0. A value set here is used by every solver,
        the first-order one included (it was read only from the constructor there, and a NaN set
        here switched the full-grid check off)."""
        return self._hard_tolerance

    @hard_tolerance.setter
    def hard_tolerance(self, value) -> None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise PlanError(f"hard_tolerance: expected a finite number > 0, got {value!r}")
        value = float(value)
        if not np.isfinite(value) or value <= 0:
            raise PlanError(f"hard_tolerance: expected a finite number > 0, got {value!r}")
        self._hard_tolerance, self._hard_tolerance_given = value, True
    def _check_ct_grid_structures(self, names) -> frozenset:
        """Canonical (CT patient's) names of the structures optimized on the CT grid."""
        if names is None:
            return frozenset()
        if isinstance(names, str):
            names = [names]
        if isinstance(names, (bytes, bytearray)):
            raise PlanError(f"ct_grid_structures: expected structure names (a list of str), got {names!r}")
        try:
            names = list(names)
        except TypeError:
            raise PlanError(f"ct_grid_structures: expected structure names (a list of str), got "
                            f"{names!r}") from None
        if names and self.ct_patient is None:
            raise PlanError("ct_grid_structures: the influence is on the patient's own grid, so every "
                            "structure is already optimized on it; compute the influence with "
                            "influence(..., dose_grid=SPACING_MM) to plan on a coarser dose grid")
        out = set()
        for name in names:
            if not isinstance(name, str):
                raise PlanError(f"ct_grid_structures: expected structure names (str), got {name!r}")
            try:
                out.add(self.ct_patient.structure(name).name)
            except BioplanError as exc:
                raise PlanError(f"ct_grid_structures: {exc}") from None
        return frozenset(out)

    def _on_ct_grid(self, name: str) -> bool:
        return self.ct_patient is not None and any(
            _normalize(n) == _normalize(name) for n in self.ct_grid_structures)

    @property
    def fractions(self) -> int:
        """Number of fractions; assigning it rebuilds the problem at the next solve."""
        return self._fractions

    @fractions.setter
    def fractions(self, value) -> None:
        self._fractions = _check_int(value, "fractions", 1)
        self._problem = None

    # -- terms ---------------------------------------------------------------------------------
    def add(self, term: Term) -> PlanProblem:
        if not isinstance(term, Term):
            raise PlanError(f"term: expected an objectives.Term, got {type(term).__name__}")
        # None: a term on the beamlet weights; a CT-grid structure was checked when it was named
        if term.structure is not None and not self._on_ct_grid(term.structure):
            self._check_on_dose_grid(term.structure)
        self.terms.append(term)
        self._problem = None
        return self

    def _check_on_dose_grid(self, name: str) -> None:
        """Unknown names fail with the known list; a CT structure the dose grid lost says so."""
        try:
            self.patient.structure(name)
        except BioplanError:
            if self.ct_patient is None or name not in self.ct_patient:
                raise
            raise PlanError(
                f"structure '{name}': no voxel of the {tuple(self.patient.grid.spacing_mm)} mm dose grid has "
                f"its centre inside it (dropped by the resampling); optimize it on the CT grid with "
                f"PlanProblem(..., ct_grid_structures=['{name}']) or use a finer dose grid") from None

    def __iadd__(self, term: Term) -> PlanProblem:
        return self.add(term)

    # -- voxel sets ----------------------------------------------------------------------------
    def _state(self) -> tuple:
        return (self.patient.revision(), self.fractions, self.max_voxels_per_structure, self.seed,
                None if self.ct_patient is None else self.ct_patient.revision())

    def _sync(self) -> None:
        """Drop everything derived from the geometry when it changed since the last build."""
        if self.ct_patient is not None and self.ct_patient.revision() != self._ct_revision:
            # structures changed on the CT grid: resample them again onto the dose grid
            self.patient = _on_dose_grid(self.ct_patient, self.influence)
            self._ct_revision = self.ct_patient.revision()
        state = self._state()
        if state != self._built_for:
            self._problem = None
            self._sets.clear()
            self._generated.clear()
            self._unsampled.clear()
            self._built_for = state

    def voxel_set(self, name: str, kind: str = "sample") -> _VoxelSet:
        """Optimization voxels of a structure: ``kind`` "sample" for soft terms (a sample of
        large helpers), "hard" for voxelwise hard terms (that sample plus the voxels constraint
        generation added), "all" for every voxel."""
        on_ct = self._on_ct_grid(name)
        patient = self.ct_patient if on_ct else self.patient
        key = patient.structure(name).name
        structure = patient.structure(key)
        all_idx = patient.flat_indices(key)
        n_total = len(all_idx)
        sampled = (structure.role == "other" and self.max_voxels_per_structure is not None
                   and n_total > self.max_voxels_per_structure and key not in self._unsampled)
        if not sampled:
            kind = "all"
        if (key, kind) not in self._sets:
            if kind == "all":
                idx = all_idx
            else:
                rng = np.random.default_rng(self.seed)
                idx = np.sort(rng.choice(all_idx, self.max_voxels_per_structure, replace=False))
                if kind == "hard" and key in self._generated:
                    idx = np.union1d(idx, self._generated[key])
            vs = _VoxelSet(key, kind, idx, np.full(len(idx), 1.0 / len(idx)), n_total)
            if on_ct:
                from .resample import interpolation_matrix

                P = interpolation_matrix(self.patient.grid, self.ct_patient.grid, idx).tocsc()
                vs.support = np.flatnonzero(np.diff(P.indptr))
                vs.interp = P[:, vs.support].tocsr()
            self._sets[(key, kind)] = vs
        return self._sets[(key, kind)]

    @property
    def n_opt_voxels(self) -> int:
        """Distinct grid voxels that enter the optimization (dose-grid and CT-grid voxels apart)."""
        total = 0
        for on_ct in (False, True):
            sets = [s.voxel_index for s in self._term_sets
                    if s is not None and (s.interp is not None) == on_ct]
            total += len(np.unique(np.concatenate(sets))) if sets else 0
        return total

    # -- assembly ------------------------------------------------------------------------------
    def build(self) -> cp.Problem:
        """Assemble (or return the cached) cvxpy problem."""
        self._sync()
        built = self._built_terms
        if self._problem is not None and len(built) == len(self.terms) and all(
                a is b for a, b in zip(built, self.terms)):
            return self._problem
        # a term replaced or removed in the plain list ``terms`` (``problem.terms[i] = ...``) was
        # invisible to the cache: CLARABEL solved the old terms and called the plan optimal
        self._problem = None
        if not self.terms:
            raise PlanError("terms: the problem has no terms; add objectives or constraints first")
        t0 = time.perf_counter()
        while True:
            # soft quadratic costs as QP objectives where the whole problem is then a QP (QP
            # solvers accept it); otherwise in epigraphs, which interior-point conic solvers
            # handle more accurately next to cone constraints (BED, gEUD)
            aggregate = self._assemble(qp_forms=True)
            if not aggregate and not self._problem.is_qp():
                aggregate = self._assemble(qp_forms=False)
            if not aggregate:
                break
            # an aggregate hard term (mean, DVH, gEUD) on a sample says nothing about the rest of
            # the structure: optimize those structures on every voxel
            self._unsampled |= aggregate
            self._sets = {k: v for k, v in self._sets.items() if k[0] not in aggregate}
        if not self._problem.is_dcp():
            raise PlanError("the assembled problem is not DCP; a term produced a non-convex expression")
        self.build_time_s = time.perf_counter() - t0
        return self._problem

    def _assemble(self, qp_forms: bool = True) -> set[str]:
        """Build the cvxpy problem; return sampled structures that carry aggregate hard terms."""
        x = cp.Variable(self.influence.n_beamlets, nonneg=True, name="weights")
        self._term_sets = [None if term.structure is None else
                           self.voxel_set(term.structure, "hard" if term.hard else "sample")
                           for term in self.terms]
        # the linear forms each term reads, per voxel set; a form used by several terms gets an
        # auxiliary variable so its (large) matrix enters the problem once
        self._contexts = [self._context(vs) for vs in self._term_sets]
        term_rows = [self._form_rows(term, vs, ctx)
                     for term, vs, ctx in zip(self.terms, self._term_sets, self._contexts)]
        uses: dict[tuple, int] = {}
        for rows in term_rows:
            for key in rows:
                uses[key] = uses.get(key, 0) + 1
        exprs, constraints = {}, []
        for rows in term_rows:
            for key, R in rows.items():
                if key in exprs:
                    continue
                if R is None:  # the weights themselves
                    exprs[key] = x
                    continue
                if R.nnz == 0 and key[2] == "dose":
                    raise PlanError(f"structure '{key[0]}': no beamlet reaches it; check beams and target")
                expr = (R * float(self.fractions)) @ x
                if uses[key] > 1:
                    d = cp.Variable(R.shape[0], name=f"{key[2].split('@')[0]}_{key[0]}_{key[1]}")
                    constraints.append(d == expr)
                    expr = d
                exprs[key] = expr
        objective = 0
        self._hard = []
        aggregate = set()
        parts = zip(self.terms, self._term_sets, self._contexts, term_rows)
        for k, (term, vs, ctx, rows) in enumerate(parts):
            term.refresh(ctx)
            forms = {key[2].split("@")[0]: exprs[key] for key in rows}
            # a term that reads only the dose gets the dose expression itself (user-defined terms
            # are written as functions of the dose)
            q = forms["dose"] if list(forms) == ["dose"] else forms
            if term.hard:
                g = term.violation(q, ctx)
                # aggregate: not one entry per sampled voxel; a sample of one voxel cannot tell
                # (a mean limit on it was taken as per-voxel and held on that voxel only)
                if vs is not None and vs.sampled and (g.size != len(vs.voxel_index) or g.size == 1):
                    aggregate.add(vs.name)
                self._hard.append((term, g))
                constraints.append(g <= 0)
                continue
            weighted = term.objective(q, ctx) if qp_forms else None
            if weighted is None:
                # epigraph keeps weight x (cost with Parameters) DPP; t is free so that a cost
                # that can be negative (a custom term) is minimised exactly, not clipped at 0
                t = cp.Variable(name=f"cost_{k}")
                constraints.append(term.cost(q, ctx) <= t)
                weighted = term.weight * t
            objective = objective + weighted
        self._x = x
        self._problem = cp.Problem(cp.Minimize(objective), constraints)
        self._built_terms = list(self.terms)  # compared by identity
        return aggregate

    def _context(self, vs: _VoxelSet | None) -> TermContext:
        if vs is None:  # a term on the beamlet weights
            n = self.influence.n_beamlets
            return TermContext("weights", np.full(n, 1.0 / n), np.arange(n), self.fractions,
                               self.patient.grid.shape, self.influence.beamlets)
        grid = (self.patient if vs.interp is None else self.ct_patient).grid
        return TermContext(vs.name, vs.volumes, vs.voxel_index, self.fractions, grid.shape,
                           self.influence.beamlets)

    def _form_rows(self, term: Term, vs: _VoxelSet | None, ctx: TermContext) -> dict:
        """Per-fraction rows of every linear form the term's quantity reads, keyed by
        (structure, voxel-set kind, form name); None stands for the weights themselves."""
        quantity = term.quantity
        if quantity.base_forms == ("weights",):
            return {("weights", "all", "weights"): None}
        if vs is None:
            raise PlanError(f"{term.describe()}: a term on voxel forms needs a structure")
        available = self.influence.forms
        missing = [f for f in quantity.base_forms if f not in available]
        if missing:
            raise PlanError(f"{term.describe()}: needs the {', '.join(missing)} form(s); pass an "
                            f"InfluenceSet that carries them (ProtonBeams.influence(..., with_let=True) for "
                            f"LET terms, optimizer.robust.influence.scenario_influence for Robust terms)")
        self._check_scenarios(term, vs)
        base = {f: vs.rows(available[f]) for f in quantity.base_forms}
        rows = quantity.linear_forms(base, ctx)
        # a derived form (e.g. the dirty dose at a threshold) belongs to its quantity
        return {(vs.name, vs.kind, f if f in available else f"{f}@{quantity.describe()}"): R
                for f, R in rows.items()}

    def _check_scenarios(self, term: Term, vs: _VoxelSet) -> None:
        """A robust term must read every scenario of the influence set, and its structure must
        have scenario doses: otherwise it holds (or costs) only on the scenarios it read, or on
        doses of 0 (both were solved and marked optimal)."""
        wanted = [f for f in term.quantity.base_forms if _SCENARIO_FORM.fullmatch(f)]
        if not wanted:
            return
        carried = sorted((f for f in self.influence.forms if _SCENARIO_FORM.fullmatch(f)),
                         key=lambda f: int(f[len("dose_s"):]))
        if len(wanted) != len(carried):
            raise PlanError(f"{term.describe()}: reads {len(wanted)} scenario(s), the influence set carries "
                            f"{len(carried)} ({carried[0]} .. {carried[-1]}); give Robust(..., scenarios=) "
                            f"the scenario list the influence was built with (or its length)")
        covered = getattr(self.influence, "scenario_structures", None)
        if covered is not None and not any(_normalize(c) == _normalize(vs.name) for c in covered):
            raise PlanError(f"{term.describe()}: structure '{vs.name}' has no scenario doses (covered: "
                            f"{', '.join(covered)}); list it in scenario_influence(structures=...)")

    # -- solve ---------------------------------------------------------------------------------
    def _pick_solver(self, solver: str | None) -> str:
        installed = cp.installed_solvers()
        if solver is not None:
            if not isinstance(solver, str):
                raise PlanError(f"solver: expected a solver name (str) such as 'CLARABEL', got {solver!r}")
            if solver.upper() == FIRST_ORDER:
                return FIRST_ORDER
            if solver.upper() not in installed:
                raise PlanError(f"solver: '{solver}' is not installed; installed: {', '.join(installed)}, "
                                f"{FIRST_ORDER}")
            return solver.upper()
        for s in DEFAULT_SOLVERS:
            if s in installed:
                return s
        raise SolverError(f"no conic solver found; install clarabel (installed: {', '.join(installed)})")
    def solve(self, solver: str | None = None, verbose: bool = False, max_rounds: int = 20,
              **solver_options):
        """Solve to a certified optimum and return a :class:`optimizer.plan.Plan`.

        Parameters
        ----------
        solver : any installed cvxpy solver name, or "FIRST_ORDER" (matrix-free, every voxel,
            certified). Default (None): "FIRST_ORDER" when no solver options are given, every term
            offers the numeric protocol and the influence matrices hold at least
            ``AUTO_FIRST_ORDER_NNZ`` non-zeros (``AUTO_FIRST_ORDER_NNZ_SPOTS`` for spot plans) or
            the problem has ``ct_grid_structures``, falling
            back to CLARABEL (the first of ``DEFAULT_SOLVERS``) if it does not certify, with the reason in
            ``plan.solver["fallback"]``; otherwise the first of ``DEFAULT_SOLVERS``.
        verbose : print the solver log
        max_rounds : most constraint-generation rounds for voxelwise hard terms on sampled
            helper structures (each round is one solve)
        solver_options : passed to ``cvxpy.Problem.solve``

        The plan's ``solver`` record holds, besides the solver's own status, ``hard_terms``: the
        largest violation of every hard term over all voxels of its structure on the full grid,
        ``hard_tolerance``, and ``rounds`` (one entry per solve of the constraint generation).

        Raises
        ------
        InfeasiblePlanError : the hard terms cannot all hold; ``.terms`` names those in conflict
        SolverError : unbounded, inaccurate or failed solve, badly scaled weights, or a result
            that breaks a hard term on the full grid by more than ``hard_tolerance``
        """
        from .solvers import cvxpy_backend, plan_first_order

        for term in self.terms:
            term.check_parameters()
        name = self._pick_solver(solver)
        if not isinstance(verbose, bool):
            raise PlanError(f"verbose: expected True or False, got {verbose!r}")
        max_rounds = _check_int(max_rounds, "max_rounds", 1)
        if name == FIRST_ORDER:
            return plan_first_order.solve_plan(self, verbose, solver_options)
        if solver is None and not solver_options and self._first_order_by_default():
            try:
                return plan_first_order.solve_plan(self, verbose, {})
            except SolverError as err:
                plan = cvxpy_backend.solve(self, name, verbose, max_rounds, {})
                plan.solver["fallback"] = {"from": FIRST_ORDER, "reason": str(err)}
                return plan
        return cvxpy_backend.solve(self, name, verbose, max_rounds, solver_options)

    def _first_order_by_default(self) -> bool:
        from .solvers import first_order

        self._sync()
        nnz = sum(m.nnz for m in self.influence.forms.values())
        least = AUTO_FIRST_ORDER_NNZ_SPOTS if first_order._has_spots(self.influence) else AUTO_FIRST_ORDER_NNZ
        large = nnz >= least or bool(self.ct_grid_structures)
        return bool(self.terms) and large and not first_order.check_supported(self)

    def diagnose_infeasibility(self, solver: str | None = None) -> list[str]:
        """Names of hard terms in conflict, from an elastic re-solve (see
        :func:`optimizer.solvers.cvxpy_backend.diagnose_infeasibility`)."""
        from .solvers import cvxpy_backend

        return cvxpy_backend.diagnose_infeasibility(self, solver)


def _on_dose_grid(patient: Patient, influence) -> Patient:
    """The patient resampled onto an influence matrix's dose grid (CT trilinear, structures by the
    rules of :mod:`optimizer.resample`, targets by the influence's ``target_rule``): the grid
    ``influence(..., dose_grid=...)`` computed on for this patient's grid, or the one
    ``patient.resample(spacing)`` gives."""
    grid = influence.grid
    source = getattr(influence, "ct_grid", None)
    if source == patient.grid or (source is None and coarse_grid(patient.grid, grid.spacing_mm) == grid):
        return patient.resample(grid, getattr(influence, "target_rule", "centre"))
    made = (f"influence(..., dose_grid=...) of a patient on {source.shape} / {tuple(source.spacing_mm)} mm"
            if source is not None else "a patient on that grid")
    raise PlanError(f"influence: computed on a grid of shape {grid.shape} (z, y, x) and spacing "
                    f"{tuple(grid.spacing_mm)} mm by {made}; this patient is on {patient.grid.shape} / "
                    f"{tuple(patient.grid.spacing_mm)} mm; compute the influence on this patient, or with "
                    "influence(patient, ..., dose_grid=...)")
