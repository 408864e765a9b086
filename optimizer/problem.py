"""Assembly of planning terms into one cvxpy problem, and its certified solve."""

from __future__ import annotations

import importlib.metadata
import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from objectives.terms import Term, TermContext

from .errors import InfeasiblePlanError, PlanError, SolverError
from .geometry import Patient
from .influence import InfluenceMatrix

#: Preferred solvers, in order, when none is named: interior-point methods that certify
#: optimality with a duality gap; CLARABEL handles every cone our terms use.
DEFAULT_SOLVERS = ("CLARABEL", "ECOS", "SCS")


@dataclass
class _StructureData:
    name: str
    voxel_index: np.ndarray  # flat grid indices of the optimization voxels
    volumes: np.ndarray  # relative volumes, sum 1
    n_total: int  # voxels of the structure on the grid


class PlanProblem:
    """A convex planning problem over beamlet (or spot) weights.

    Parameters
    ----------
    patient : the planning geometry
    influence : dose-influence matrix on ``patient.grid`` (Gy per fraction per unit weight)
    fractions : number of fractions n; terms see the total course dose ``n * A x`` in Gy
    max_voxels_per_structure : helper structures (role "other": body, rings) with more voxels
        are optimized on a uniform random sample of this many voxels, each then standing for
        ``n_total / n_sample`` of the volume. Targets and OARs are never sampled. Evaluation
        always uses the full grid. ``None`` disables sampling.
    seed : seed of that sample, for reproducible plans
    let_dose : proton LET x dose matrix of the same spots (keV/um x Gy per fraction per unit
        weight, ``ProtonBeams.let_dose_influence``), needed by LET terms (``objectives.let``)

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
    ):
        if not isinstance(patient, Patient):
            raise PlanError(f"patient: expected an optimizer.Patient, got {type(patient).__name__}")
        if not isinstance(influence, InfluenceMatrix):
            raise PlanError(f"influence: expected an InfluenceMatrix, got {type(influence).__name__}")
        if influence.grid != patient.grid:
            raise PlanError("influence: its grid differs from patient.grid; compute it on this patient")
        if isinstance(fractions, bool) or not float(fractions).is_integer() or fractions < 1:
            raise PlanError(f"fractions: expected an integer >= 1, got {fractions!r}")
        if max_voxels_per_structure is not None and max_voxels_per_structure < 1:
            raise PlanError("max_voxels_per_structure: expected a positive integer or None")
        if let_dose is not None and (not isinstance(let_dose, InfluenceMatrix)
                                     or let_dose.grid != patient.grid
                                     or let_dose.n_beamlets != influence.n_beamlets):
            raise PlanError("let_dose: expected an InfluenceMatrix of the same grid and spots as influence")
        self.patient = patient
        self.influence = influence
        self.let_dose = let_dose
        self.fractions = int(fractions)
        self.max_voxels_per_structure = max_voxels_per_structure
        self.seed = int(seed)
        self.terms: list[Term] = []
        self._problem: cp.Problem | None = None
        self._x: cp.Variable | None = None
        self._structures: dict[str, _StructureData] = {}
        self._contexts: list[TermContext] = []
        self.build_time_s = 0.0

    # -- terms ---------------------------------------------------------------------------------
    def add(self, term: Term) -> PlanProblem:
        if not isinstance(term, Term):
            raise PlanError(f"term: expected an objectives.Term, got {type(term).__name__}")
        self.patient.structure(term.structure)  # unknown names fail here, with the known list
        self.terms.append(term)
        self._problem = None
        return self

    def __iadd__(self, term: Term) -> PlanProblem:
        return self.add(term)

    # -- assembly ------------------------------------------------------------------------------
    def structure_data(self, name: str) -> _StructureData:
        key = self.patient.structure(name).name
        if key not in self._structures:
            idx = self.patient.flat_indices(key)
            n_total = len(idx)
            role = self.patient.structure(key).role
            if (role == "other" and self.max_voxels_per_structure is not None
                    and n_total > self.max_voxels_per_structure):
                rng = np.random.default_rng(self.seed)
                idx = np.sort(rng.choice(idx, self.max_voxels_per_structure, replace=False))
            self._structures[key] = _StructureData(key, idx, np.full(len(idx), 1.0 / len(idx)), n_total)
        return self._structures[key]

    @property
    def n_opt_voxels(self) -> int:
        """Distinct grid voxels that enter the optimization."""
        if not self._structures:
            return 0
        return len(np.unique(np.concatenate([s.voxel_index for s in self._structures.values()])))

    def build(self) -> cp.Problem:
        """Assemble (or return the cached) cvxpy problem."""
        if self._problem is not None:
            return self._problem
        if not self.terms:
            raise PlanError("terms: the problem has no terms; add objectives or constraints first")
        t0 = time.perf_counter()
        x = cp.Variable(self.influence.n_beamlets, nonneg=True, name="weights")
        # one dose expression per structure; a structure used by several terms gets an auxiliary
        # dose variable so the large matrix enters the problem once
        uses: dict[str, int] = {}
        for term in self.terms:
            name = self.patient.structure(term.structure).name
            uses[name] = uses.get(name, 0) + 1
        doses, constraints = {}, []
        for name, n_uses in uses.items():
            sd = self.structure_data(name)
            A = self.influence.rows_of(sd.voxel_index) * float(self.fractions)
            if A.nnz == 0:
                raise PlanError(f"structure '{name}': no beamlet reaches it; check beams and target")
            expr = A @ x
            if n_uses > 1:
                d = cp.Variable(len(sd.voxel_index), name=f"dose_{name}")
                constraints.append(d == expr)
                expr = d
            doses[name] = expr
        objective = 0
        self._contexts = []
        self._hard: list[tuple[Term, cp.Expression]] = []
        for term in self.terms:
            name = self.patient.structure(term.structure).name
            sd = self._structures[name]
            ctx = TermContext(name, sd.volumes, sd.voxel_index, self.fractions, self.patient.grid.shape)
            self._contexts.append(ctx)
            term.refresh(ctx)
            extras = self._extras(term, x, sd, ctx)
            if term.hard:
                if len(sd.voxel_index) < sd.n_total:
                    warnings.warn(f"{term.describe()}: hard term on a sampled structure holds only on "
                                  f"its {len(sd.voxel_index)} sampled voxels of {sd.n_total}; check the "
                                  f"full-grid dose or raise max_voxels_per_structure", stacklevel=3)
                g = term.violation(doses[name], ctx, **extras)
                self._hard.append((term, g))
                constraints.append(g <= 0)
            else:
                # epigraph keeps weight x (cost with Parameters) DPP
                t = cp.Variable(nonneg=True, name=f"cost_{len(self._contexts)}")
                constraints.append(term.cost(doses[name], ctx, **extras) <= t)
                objective = objective + term.weight * t
        self._doses = doses
        self._x = x
        self._problem = cp.Problem(cp.Minimize(objective), constraints)
        if not self._problem.is_dcp():
            raise PlanError("the assembled problem is not DCP; a term produced a non-convex expression")
        self.build_time_s = time.perf_counter() - t0
        return self._problem

    def _extras(self, term: Term, x: cp.Variable, sd: _StructureData, ctx: TermContext) -> dict:
        """Extra linear forms a term asks for through ``term.needs`` (e.g. LET x dose)."""
        needs = getattr(term, "needs", ())
        if not needs:
            return {}
        available = {"dose": self.influence}
        if self.let_dose is not None:
            available["let_dose"] = self.let_dose
        missing = [k for k in needs if k not in available]
        if missing:
            raise PlanError(f"{term.describe()}: needs {', '.join(missing)} rows; pass "
                            f"PlanProblem(..., let_dose=ProtonBeams.let_dose_influence(...))")
        rows = {k: available[k].rows_of(sd.voxel_index) for k in needs}
        return term.extra_expressions(x, rows, ctx)

    # -- solve ---------------------------------------------------------------------------------
    def _pick_solver(self, solver: str | None) -> str:
        installed = cp.installed_solvers()
        if solver is not None:
            if solver.upper() not in installed:
                raise SolverError(f"solver: '{solver}' is not installed; installed: {', '.join(installed)}")
            return solver.upper()
        for s in DEFAULT_SOLVERS:
            if s in installed:
                return s
        raise SolverError(f"no conic solver found; install clarabel (installed: {', '.join(installed)})")

    def solve(self, solver: str | None = None, verbose: bool = False, **solver_options):
        """Solve to a certified optimum and return a :class:`optimizer.plan.Plan`.

        Parameters
        ----------
        solver : any installed cvxpy solver name; default the first of ``DEFAULT_SOLVERS``
        verbose : print the solver log
        solver_options : passed to ``cvxpy.Problem.solve``

        Raises
        ------
        InfeasiblePlanError : the hard terms cannot all hold; ``.terms`` names those in conflict
        SolverError : unbounded, inaccurate or failed solve
        """
        from .plan import Plan  # plan imports this module's results, not the other way round

        problem = self.build()
        for term, ctx in zip(self.terms, self._contexts):
            term.refresh(ctx)
        name = self._pick_solver(solver)
        t0 = time.perf_counter()
        try:
            problem.solve(solver=name, verbose=verbose, **solver_options)
        except cp.error.SolverError as exc:
            # numerical failure is often an infeasible hard set in disguise: check with the
            # elastic problem before reporting a generic failure
            culprits = self._violated_hard_terms(name)
            if culprits:
                raise InfeasiblePlanError(
                    f"solver {name} failed ({exc}); the hard constraints cannot all hold; in conflict: "
                    + "; ".join(culprits), culprits) from exc
            raise SolverError(f"solver {name} failed: {exc}") from exc
        wall = time.perf_counter() - t0
        status = problem.status
        if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            culprits = self.diagnose_infeasibility(name)
            raise InfeasiblePlanError(
                "the hard constraints cannot all hold; in conflict: " + "; ".join(culprits), culprits)
        if status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
            raise SolverError(f"solver {name}: problem is unbounded; add limits on every structure")
        if status != cp.OPTIMAL:
            raise SolverError(
                f"solver {name}: status '{status}', not a certified optimum; try another solver "
                f"or rescale weights")
        stats = problem.solver_stats
        solve_s = stats.solve_time if stats.solve_time is not None else wall
        info = {
            "name": name,
            "status": status,
            "objective": float(problem.value),
            "iterations": stats.num_iters,
            "build_s": self.build_time_s,
            "compile_s": max(wall - solve_s, 0.0),
            "solve_s": float(solve_s),
            "wall_s": wall,
            "versions": _versions(name),
            "opt_voxels": self.n_opt_voxels,
            "certificate": _certificate(name, solver_options),
            "terms": [repr(t) for t in self.terms],
        }
        weights = np.maximum(np.asarray(self._x.value, dtype=float), 0.0)
        return Plan.from_weights(self.patient, self.influence, weights, self.fractions, info,
                                 let_dose=self.let_dose)

    def _violated_hard_terms(self, solver: str) -> list[str]:
        if not self._hard:
            return []
        try:
            names = self.diagnose_infeasibility(solver)
        except cp.error.SolverError:
            return []
        return [n for n in names if "violated by" in n]

    def diagnose_infeasibility(self, solver: str | None = None) -> list[str]:
        """Names of hard terms in conflict, from an elastic re-solve.

        Each hard term ``g_k <= 0`` is relaxed to ``g_k <= s_k`` with a scalar slack ``s_k >= 0``
        and the sum of slacks is minimised: terms left with a positive slack cannot be met
        together with the others (soft terms are ignored).
        """
        self.build()
        slacks, cons = [], []
        for _term, g in self._hard:
            s = cp.Variable(nonneg=True)
            slacks.append(s)
            cons.append(g <= s)
        aux = [c for c in self._problem.constraints if isinstance(c, cp.constraints.Zero)]
        elastic = cp.Problem(cp.Minimize(cp.sum(cp.hstack(slacks))), cons + aux)
        elastic.solve(solver=self._pick_solver(solver))
        if elastic.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return [t.describe() for t, _ in self._hard]
        vals = np.array([s.value for s in slacks], dtype=float)
        duals = np.array([float(np.sum(np.abs(c.dual_value))) if c.dual_value is not None else 0.0
                          for c in cons])
        tol = 1e-6 * max(1.0, float(np.max(np.abs(vals))))
        # involved: relaxed (positive slack) or binding with a non-zero multiplier in the elastic
        # problem, i.e. part of the certificate of infeasibility
        names = []
        for (t, _), v, y in zip(self._hard, vals, duals):
            if v > tol:
                names.append(t.describe() + f" (violated by {v:.3g})")
            elif y > 1e-4:
                names.append(t.describe())
        return names or [t.describe() for t, _ in self._hard]


def _certificate(solver: str, options: dict) -> str:
    """What the solver's 'optimal' status guarantees, with the tolerances in force."""
    if solver == "CLARABEL":
        gap = options.get("tol_gap_rel", 1e-8)
        feas = options.get("tol_feas", 1e-8)
        return (f"interior point: relative duality gap <= {gap:g}, primal/dual feasibility "
                f"residuals <= {feas:g} (CLARABEL)")
    return f"solver {solver} reported status 'optimal' within its default tolerances"


def _versions(solver: str) -> dict[str, str]:
    out = {"cvxpy": cp.__version__}
    dist = {"CLARABEL": "clarabel", "OSQP": "osqp", "SCS": "scs", "ECOS": "ecos", "HIGHS": "highspy"}
    if solver in dist:
        try:
            out[dist[solver]] = importlib.metadata.version(dist[solver])
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
