"""EDIC of a plan (evaluation) and the immune-sparing terms of a problem
(model and sources: :mod:`objectives.immune`)."""

from __future__ import annotations

import numpy as np

from objectives.immune import EDICModel, ImmuneMeanDose

from ..errors import PlanError


def _names(value, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    if not names or not all(isinstance(n, str) for n in names):
        raise PlanError(f"{what}: expected a structure name or a list of names, got {value!r}")
    return names


def _mask(patient, names) -> np.ndarray:
    mask = np.zeros(patient.grid.shape, dtype=bool)
    for n in names:
        mask |= patient.structure(n).mask
    return mask


def edic(plan, lung, heart, body, model: EDICModel | None = None) -> dict:
    """Effective dose to immune cells of a plan (total course, Gy) and its parts.

    Parameters
    ----------
    plan : a Plan (its ``dose`` is the total course dose, Gy)
    lung, heart : structure name(s); several names are joined (e.g. both lungs)
    body : the body / external structure name (its integral dose is the model's ITD)
    model : :class:`~objectives.immune.EDICModel` (default the published coefficients)

    Returns ``{"edic_Gy", "mean_lung_Gy", "mean_heart_Gy", "integral_body_Gy_cc", "body_volume_cc",
    "fractions"}``.
    """
    model = EDICModel() if model is None else model
    p = plan.patient
    vol = p.grid.voxel_volume_cc
    lung_m, heart_m, body_m = (_mask(p, _names(v, k))
                               for v, k in ((lung, "lung"), (heart, "heart"), (body, "body")))
    mld = float(plan.dose[lung_m].mean())
    mhd = float(plan.dose[heart_m].mean())
    itd = float(plan.dose[body_m].sum()) * vol
    return {"edic_Gy": model.edic_Gy(mld, mhd, itd, plan.fractions), "mean_lung_Gy": mld,
            "mean_heart_Gy": mhd,
            "integral_body_Gy_cc": itd, "body_volume_cc": float(body_m.sum()) * vol,
            "fractions": int(plan.fractions)}


def _refuse_overlaps(patient, names: list, comp: str) -> None:
    """EDIC takes the mean dose over the union of a component's structures; shares by voxel
    count count shared voxels twice (LungA / LungB sharing a voxel: 1.857 Gy against EDIC 1.641)."""
    masks = [patient.structure(n).mask for n in names]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            shared = int(np.count_nonzero(masks[i] & masks[j]))
            if shared:
                raise PlanError(f"{comp}: structures '{names[i]}' and '{names[j]}' share {shared} voxel(s); "
                                f"EDIC uses the mean over their union: give one structure for it (or "
                                f"non-overlapping ones)")


def immune_terms(patient, lung, heart, body, weight: float = 1.0, model: EDICModel | None = None,
                 influence=None) -> list:
    """Soft terms whose sum is ``weight x EDIC`` (Gy): one :class:`~objectives.immune.ImmuneMeanDose`
    per structure. Several lung (or heart) structures share the coefficient by volume (the mean
    over their union); the body term carries the body volume (ITD = mean x volume). With
    ``influence`` given, structures that no spot reaches are left out (their dose, and so their
    part of EDIC, is 0 at any weights; ``PlanProblem`` refuses terms on them)."""
    model = EDICModel() if model is None else model
    vol = patient.grid.voxel_volume_cc
    terms = []

    def reached(name):
        return influence is None or influence.rows_of(patient.flat_indices(name)).nnz > 0

    for comp, value in (("lung", lung), ("heart", heart)):
        names = _names(value, comp)
        _refuse_overlaps(patient, names, comp)
        sizes = np.array([patient.structure(n).n_voxels for n in names], dtype=float)
        c = getattr(model, comp)
        for n, share in zip(names, sizes / sizes.sum()):
            if reached(n):
                terms.append(ImmuneMeanDose(n, c * float(share), weight, model))
    for n in _names(body, "body"):
        if reached(n):
            volume_cc = patient.structure(n).n_voxels * vol
            terms.append(ImmuneMeanDose(n, "body", weight, model, volume_cc=volume_cc))
    return terms
