"""Planning arms of a study: how each patient is planned.

An :class:`Arm` is a name, a *module-level* function ``build(case, **params) -> list[Term]``
(so Dask can pickle it by reference) and its parameters. Arms that share a ``family`` and a
``retune(terms, case, **params)`` function differ only in cvxpy Parameters: the study builds and
compiles the family's problem once per patient, and for each further arm ``retune`` changes the
terms' Parameters in place (limits, floors, maps) before ``problem.solve()`` re-solves the
compiled problem (DPP: no recompilation; the first-order solver also warm-starts).

Built-in arms (30 fractions by default, organ-at-risk terms shared):

* :func:`conventional_terms` : uniform physical prescription (60 Gy in 30 fractions).
* :func:`personalized_terms` : a GARD floor in every oxic target voxel from the patient's RSI
  (Scott et al., Lancet Oncol 2017;18:202), the floor dose kept within [min_dose_Gy, max_dose_Gy];
  with ``boost`` the hypoxic voxels get the same GARD with their own hypoxia-modified alpha and
  beta (a per-voxel BED floor, capped at ``hypoxic_max_dose_Gy``), without it the oxic floor dose.
  ``retune`` = :func:`personalized_retune`.

User-defined arms: any function ``build(case, **params)`` returning terms, e.g.
``Arm("escalated", conventional_terms, {"dose_Gy": 66.0})`` or an arm of your own terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from objectives import (
    BEDFloor,
    DVHMin,
    EQD2Max,
    GARDFloor,
    SquaredDeviation,
    SquaredOverdose,
)
from objectives.radiobiology import bed, dose_for_bed, dose_for_gard, gard

from ..errors import PlanError

#: Cord limit: maximum EQD2 50 Gy (QUANTEC spinal cord, Kirkpatrick et al., IJROBP
#: 2010;76(3 Suppl):S42: 50 Gy in 2 Gy fractions, myelopathy risk ~0.2 %), hard in every arm.
CORD_EQD2_MAX_GY = 50.0
#: Conventional prescription: 60 Gy in 30 fractions of 2 Gy (a common definitive / adjuvant
#: schedule; demonstration choice), target D95 >= prescription through the CVaR surrogate.
CONVENTIONAL_DOSE_GY = 60.0
#: Default GARD target: the GARD of 60 Gy in 2 Gy fractions at RSI 0.45, -30 ln(0.45) = 23.96
#: (GARD = -n ln RSI at 2 Gy; Scott et al. 2017), so the median patient of the default cohort
#: keeps about the conventional dose and the arm redistributes dose by radiosensitivity.
DEFAULT_GARD_TARGET = 24.0


def _params(params) -> tuple:
    if params is None:
        return ()
    if isinstance(params, Mapping):
        items = tuple(sorted(params.items()))
    else:
        try:
            items = tuple((str(k), v) for k, v in params)
        except (TypeError, ValueError):
            raise PlanError(f"Arm.params: expected a mapping of name to value, got {params!r}") from None
    for k, _ in items:
        if not isinstance(k, str) or not k.isidentifier():
            raise PlanError(f"Arm.params: expected keyword names, got {k!r}")
    return items


@dataclass(frozen=True)
class Arm:
    """One planning arm.

    Parameters
    ----------
    name : label of the arm (a column value of the results; unique within a study)
    build : ``build(case, **params) -> list[Term]``, a module-level function
    params : keyword parameters of ``build`` (a mapping; stored as sorted pairs)
    family : arms with the same family (and the same ``build`` and ``retune``) are solved on one
        compiled problem per patient; default: the arm's own name
    retune : ``retune(terms, case, **params)``: set the terms built by ``build`` to this arm's
        parameters in place (only Parameters may change); needed for a shared family
    """

    name: str
    build: Callable
    params: tuple = ()
    family: str | None = None
    retune: Callable | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or "," in self.name:
            raise PlanError(f"Arm.name: expected a non-empty label without commas, got {self.name!r}")
        if not callable(self.build):
            raise PlanError(f"Arm.build ({self.name}): expected a function build(case, **params) -> terms, "
                            f"got {self.build!r}")
        if self.retune is not None and not callable(self.retune):
            raise PlanError(f"Arm.retune ({self.name}): expected a function or None, got {self.retune!r}")
        object.__setattr__(self, "params", _params(self.params))
        object.__setattr__(self, "family", self.family or self.name)

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def terms(self, case) -> list:
        """Fresh terms of this arm for ``case``."""
        terms = self.build(case, **self.kwargs)
        if not isinstance(terms, (list, tuple)) or not terms:
            raise PlanError(f"arm '{self.name}': build() returned {type(terms).__name__}; expected a "
                            f"non-empty list of objectives.Term")
        return list(terms)


def check_arms(arms) -> list[Arm]:
    """Validated list of arms: unique names; a family shared by several arms needs one build
    and one retune function."""
    arms = list(arms)
    if not arms or not all(isinstance(a, Arm) for a in arms):
        raise PlanError("arms: expected a non-empty list of optimizer.studies.Arm")
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PlanError(f"arms: names must be unique; repeated: {', '.join(dup)}")
    for fam in {a.family for a in arms}:
        members = [a for a in arms if a.family == fam]
        if len(members) > 1:
            first = members[0]
            if first.retune is None:
                raise PlanError(f"arms: family '{fam}' has {len(members)} arms but no retune function; "
                                f"give Arm(retune=...) or separate families")
            if any(a.build is not first.build or a.retune is not first.retune for a in members):
                raise PlanError(f"arms: family '{fam}': every arm needs the same build and retune functions")
    return arms


def families(arms: list[Arm]) -> list[list[Arm]]:
    """Arms grouped by family, in first-appearance order."""
    out: dict[str, list[Arm]] = {}
    for a in arms:
        out.setdefault(a.family, []).append(a)
    return list(out.values())


# -- built-in arms --------------------------------------------------------------------------------

def organ_terms(case, dose_scale_Gy: float = CONVENTIONAL_DOSE_GY) -> list:
    """Organ-at-risk and fall-off terms shared by the built-in arms: hard cord EQD2 max
    (:data:`CORD_EQD2_MAX_GY`, the patient's cord alpha/beta); soft gland, ring (2/3 of
    ``dose_scale_Gy``) and tissue (40 %) overdose penalties."""
    return [
        EQD2Max("Cord", CORD_EQD2_MAX_GY, case.lq_oar),
        SquaredOverdose("Cord", 0.0, weight=0.1),
        SquaredOverdose("Gland", 0.0, weight=0.3),
        SquaredOverdose("Ring", 2.0 / 3.0 * dose_scale_Gy, weight=1.0),
        SquaredOverdose("Tissue", 0.4 * dose_scale_Gy, weight=1.0),
    ]


def conventional_terms(case, dose_Gy: float = CONVENTIONAL_DOSE_GY) -> list:
    """Uniform physical prescription ``dose_Gy`` (total, Gy): hard PTV D95 >= dose_Gy (CVaR
    surrogate: the mean of the coldest 5 % >= dose_Gy, conservative), soft homogeneity at
    dose_Gy + 1 Gy, the shared organ terms."""
    return [DVHMin("PTV", dose_Gy, volume_pct=95),
            SquaredDeviation("PTV", dose_Gy + 1.0, weight=1.0)] + organ_terms(case)


def _floors(case, gard_target: float, min_dose_Gy: float, max_dose_Gy: float, boost: bool,
            hypoxic_max_dose_Gy: float):
    """(oxic GARD floor, oxic floor dose Gy, hypoxic BED floor map Gy) of the personalized arm."""
    n = case.setup.fractions
    rsi = case.vp.rsi
    for name, v in (("gard_target", gard_target), ("min_dose_Gy", min_dose_Gy), ("max_dose_Gy", max_dose_Gy),
                    ("hypoxic_max_dose_Gy", hypoxic_max_dose_Gy)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise PlanError(f"personalized arm: {name} expected a number > 0, got {v!r}")
    if not min_dose_Gy <= max_dose_Gy <= hypoxic_max_dose_Gy:
        raise PlanError(f"personalized arm: expected min_dose_Gy <= max_dose_Gy <= hypoxic_max_dose_Gy, got "
                        f"{min_dose_Gy}, {max_dose_Gy}, {hypoxic_max_dose_Gy}")
    d_oxic = float(np.clip(dose_for_gard(gard_target, n, rsi=rsi), min_dose_Gy, max_dose_Gy))
    g_oxic = float(gard(d_oxic, n, rsi=rsi))  # the GARD the oxic floor reaches (target, unless clipped)
    idx = case.patient.flat_indices("Hypoxic")
    alpha = case.alpha_map.ravel()[idx]
    beta = case.beta_map.ravel()[idx]
    ab = alpha / beta
    if boost:  # same GARD as the oxic voxels with the voxel's own alpha, beta: BED_i = G / alpha_i
        floor_dose = np.minimum(dose_for_bed(g_oxic / alpha, n, ab), hypoxic_max_dose_Gy)
    else:  # the oxic floor dose
        floor_dose = np.full(len(idx), d_oxic)
    bed_map = np.zeros(case.patient.grid.shape)
    bed_map.ravel()[idx] = bed(floor_dose, n, ab)
    return g_oxic, d_oxic, bed_map


def personalized_terms(case, gard_target: float = DEFAULT_GARD_TARGET, min_dose_Gy: float = 50.0,
                       max_dose_Gy: float = 72.0, boost: bool = True,
                       hypoxic_max_dose_Gy: float = 80.0) -> list:
    """GARD-personalized prescription with an optional hypoxia boost (see the module docstring).

    Parameters
    ----------
    gard_target : GARD to reach in every oxic target voxel (dimensionless)
    min_dose_Gy, max_dose_Gy : bounds of the oxic floor dose (total, Gy): de-escalation and
        escalation limits (demonstration choices)
    boost : hypoxic voxels get the GARD target with their hypoxia-modified alpha, beta
    hypoxic_max_dose_Gy : cap of the hypoxic floor dose, Gy

    Terms (in this order, which :func:`personalized_retune` relies on): GARDFloor on PTV_oxic,
    BEDFloor on Hypoxic (tumour LQ maps), soft SquaredOverdose on PTV above the oxic floor dose
    + 1 Gy (weight 10), then the shared organ terms.
    """
    g_oxic, d_oxic, bed_map = _floors(case, gard_target, min_dose_Gy, max_dose_Gy, boost, hypoxic_max_dose_Gy)
    return [GARDFloor("PTV_oxic", g_oxic, rsi=case.vp.rsi),
            BEDFloor("Hypoxic", bed_map, case.lq_tumour),
            SquaredOverdose("PTV", d_oxic + 1.0, weight=10.0)] + organ_terms(case)


def personalized_retune(terms: list, case, gard_target: float = DEFAULT_GARD_TARGET,
                        min_dose_Gy: float = 50.0, max_dose_Gy: float = 72.0, boost: bool = True,
                        hypoxic_max_dose_Gy: float = 80.0) -> None:
    """Set the terms of :func:`personalized_terms` to other parameters in place (Parameters only)."""
    g_oxic, d_oxic, bed_map = _floors(case, gard_target, min_dose_Gy, max_dose_Gy, boost, hypoxic_max_dose_Gy)
    terms[0].gard = g_oxic
    terms[1].bed_Gy = bed_map
    terms[2].limit.value = d_oxic + 1.0


def default_arms() -> list[Arm]:
    """conventional (60 Gy / 30); personalized (GARD 24 with hypoxia boost) and
    personalized_noboost (same GARD floor, hypoxic voxels at the oxic floor dose): the last two
    share one compiled problem per patient."""
    return [
        Arm("conventional", conventional_terms),
        Arm("personalized", personalized_terms, {"boost": True}, family="personalized",
            retune=personalized_retune),
        Arm("personalized_noboost", personalized_terms, {"boost": False}, family="personalized",
            retune=personalized_retune),
    ]
