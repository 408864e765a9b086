"""Scenario influence sets: the nominal beamlets' dose in every uncertainty scenario.

Each scenario's dose matrix has the *same columns* as the nominal one (the beamlets / spots are
placed once, on the nominal geometry, :meth:`optimizer.beams.base.BeamModel.scenario_influence`)
and rows only for the voxels of the structures that robust terms (or the evaluation) use. The
matrices become forms of one :class:`~optimizer.influence.InfluenceSet`, named
:func:`scenario_form` (``"dose_s0"``, ``"dose_s1"``, ...), which
:class:`objectives.robust.Robust` terms read.

The scenario dose calculations are independent pure functions of picklable inputs: with an
active ``dask.distributed`` client (``get_client()`` succeeds, e.g. inside a cohort study or
after ``Client()``) they are submitted to it, otherwise they run here one after the other.
"""

from __future__ import annotations

import time

import numpy as np

from objectives.robust import scenario_form

from ..errors import PlanError
from ..geometry import Patient
from ..influence import InfluenceMatrix, InfluenceSet
from ..resample import target_grid
from .scenarios import Scenario, scenario_list

__all__ = ["scenario_form", "scenario_influence", "active_client"]


def active_client():
    """The active ``dask.distributed`` client, or None (no client, or dask not installed)."""
    try:
        from dask.distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # "No global client found"
        return None


def _one_scenario(model, patient, target, isocenter_mm, dose_mask, voxel_mask, scenario: Scenario,
                  options: dict) -> tuple[InfluenceMatrix, float]:
    """The dose form of one scenario and its computation time, s (a Dask work unit); ``options``
    may hold ``dose_grid`` / ``target_rule`` (``patient`` is then the CT patient)."""
    t0 = time.perf_counter()
    out = model.scenario_influence(patient, target, isocenter_mm=isocenter_mm, dose_mask=dose_mask,
                                   shift_mm=scenario.shift_mm, wepl_scale=scenario.wepl_scale,
                                   wepl_offset_mm=scenario.range_mm, voxel_mask=voxel_mask, **options)
    return out.dose_form(), time.perf_counter() - t0


def scenario_influence(model, patient: Patient, scenarios, structures,
                       influence: InfluenceMatrix | None = None, *, target: str | None = None,
                       isocenter_mm=None, dose_mask=None, dose_grid=None, target_rule: str = "centre",
                       client="auto", **options) -> InfluenceSet:
    """The nominal influence set plus one dose form per scenario.

    Parameters
    ----------
    model : the beam model of the nominal plan (e.g. ``ProtonBeams``, ``PhotonBeams``)
    patient : the patient (CT and structures); with a dose grid the CT patient
        (``problem.ct_patient``): the scenario doses are computed on the dose grid with depths
        traced through the CT, as the nominal influence's
    scenarios : list of :class:`~optimizer.robust.scenarios.Scenario` (or what
        :func:`~optimizer.robust.scenarios.scenario_list` accepts), e.g. ``nominal9()``
    structures : names of the structures whose voxels the scenario doses cover (those of the
        robust terms and of the evaluation); other voxels get no scenario dose
    influence : the nominal influence set (same model, target and isocentre); computed here
        when None
    target, isocenter_mm, dose_mask : as in ``model.influence`` (the isocentre defaults to
        the target's centroid, the same in every scenario)
    dose_grid, target_rule : as in ``model.influence``; default those of ``influence`` when it
        was computed on a dose grid (``influence(..., dose_grid=)``)
    client : a ``dask.distributed.Client``, None (in-process) or "auto" (the active client if
        there is one)
    options : the model's own options (``with_let`` defaults to False for the scenario doses)

    Returns
    -------
    InfluenceSet : the nominal forms plus ``dose_s{k}`` (Gy per fraction per unit weight) for
        scenario k, with attributes ``scenarios`` (the list), ``scenario_structures`` (the
        covered structures), ``scenario_times_s`` (seconds per scenario dose calculation) and
        ``scenario_executor`` ("in-process" or "dask").
    """
    scen = scenario_list(scenarios)
    if any(s.has_range_error for s in scen) and not getattr(model, "traces_wepl", False):
        raise PlanError(f"scenarios: range errors need a model that traces WEPL (protons); "
                        f"{type(model).__name__} does not")
    if isinstance(structures, str) or not structures:
        raise PlanError(f"structures: expected a non-empty list of structure names, got {structures!r}")
    ct_grid = getattr(influence, "ct_grid", None)
    if dose_grid is None and ct_grid is not None:
        if patient.grid != ct_grid:
            raise PlanError("patient: the nominal influence was computed on a dose grid from a CT of another "
                            "grid; pass that CT patient (problem.ct_patient): the scenario doses trace their "
                            "depths through it, as the nominal's")
        dose_grid, target_rule = influence.grid, influence.target_rule
    on_grid, grid_options = patient, {}
    if dose_grid is not None:
        on_grid = patient.resample(target_grid(patient.grid, dose_grid, "dose_grid"), target_rule)
        grid_options = {"dose_grid": on_grid.grid, "target_rule": target_rule}
    mask = np.zeros(on_grid.grid.shape, dtype=bool)
    for name in structures:
        mask |= on_grid.structure(name).mask
    if "let_dose" in getattr(model, "form_names", ()):
        options.setdefault("with_let", False)
    if influence is None:
        influence = model.influence(patient, target, isocenter_mm=isocenter_mm, dose_mask=dose_mask,
                                    **grid_options)
    if influence.grid != on_grid.grid:
        raise PlanError("influence: computed on another grid than patient" + (
            f"'s dose grid ({dose_grid})" if dose_grid is not None else
            "; with a dose grid pass the CT patient (problem.ct_patient) and dose_grid="))
    if isocenter_mm is None:  # fix it once: the nominal beams' isocentre
        isocenter_mm = tuple(influence.beams[0]["isocenter_mm"]) if influence.beams else None
    client = active_client() if client == "auto" else client
    args = [(model, patient, target, isocenter_mm, dose_mask, mask, s, {**options, **grid_options})
            for s in scen]
    if client is None:
        results = [_one_scenario(*a) for a in args]
    else:
        futures = [client.submit(_one_scenario, *a, pure=False) for a in args]
        results = client.gather(futures)
    out = InfluenceSet.of(influence)
    for k, (form, _) in enumerate(results):
        if form.n_beamlets != influence.n_beamlets or any(
                not np.array_equal(form.beamlets[c], influence.beamlets[c]) for c in ("beam", "row", "col")
                if c in form.beamlets and c in influence.beamlets):
            raise PlanError(f"scenario '{scen[k].name}': its beamlets differ from the nominal influence's; "
                            "pass the nominal influence of the same model, target and isocentre")
        out.add_form(scenario_form(k), form)
    out.scenarios = scen
    out.scenario_structures = [on_grid.structure(n).name for n in structures]
    out.scenario_times_s = [t for _, t in results]
    out.scenario_executor = "in-process" if client is None else "dask"
    return out


def scenario_forms(influence: InfluenceSet) -> list[InfluenceMatrix]:
    """The scenario dose forms of a set, in scenario order."""
    forms = influence.forms if isinstance(influence, InfluenceSet) else {}
    out = []
    while scenario_form(len(out)) in forms:
        out.append(forms[scenario_form(len(out))])
    if not out:
        raise PlanError("influence: has no scenario forms; build it with optimizer.robust.influence."
                        "scenario_influence")
    return out
