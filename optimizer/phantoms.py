"""Digital phantoms: a water box and the AAPM TG-119 C-shape.

Grids are centred on the LPS origin unless an origin is given. HU: water 0, air -1000.
"""

from __future__ import annotations

import numpy as np

from .errors import GeometryError
from .geometry import Grid, Patient, Structure, _numbers


def _grid_for(size_mm, spacing_mm) -> Grid:
    size = np.asarray(_numbers(size_mm, "size_mm", "3 positive extents (z, y, x) in mm", float))
    spacing = np.asarray(_numbers(spacing_mm, "spacing_mm", "positive voxel size(s) in mm", float))
    if size.shape != (3,) or not np.all(np.isfinite(size) & (size > 0)):
        raise GeometryError(f"size_mm: expected 3 positive extents (z, y, x) in mm, got {size_mm}")
    if spacing.shape not in ((1,), (3,)) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise GeometryError(f"spacing_mm: expected positive voxel size(s) in mm, got {spacing_mm}")
    spacing = np.broadcast_to(spacing, (3,))
    shape = tuple(int(max(1, round(s / h))) for s, h in zip(size, spacing))
    origin = tuple(-(n - 1) * h / 2 for n, h in zip(shape, spacing))
    return Grid(shape, tuple(spacing), origin)


def water_box(
    size_mm=(200.0, 300.0, 200.0),
    spacing_mm=2.5,
    air_margin_mm: float = 0.0,
    hu: float = 0.0,
) -> Patient:
    """A homogeneous box (default water) of ``size_mm`` (z, y, x), centred on the origin.

    With ``air_margin_mm`` > 0 the box is surrounded by that much air on the y (anterior /
    posterior) and x sides. Structure "Body" covers the box.
    """
    size = np.asarray(size_mm, dtype=float)
    outer = size + np.array([0.0, 2 * air_margin_mm, 2 * air_margin_mm])
    grid = _grid_for(outer, spacing_mm)
    z, y, x = np.meshgrid(*grid.axes_mm(), indexing="ij")
    body = (np.abs(y) <= size[1] / 2) & (np.abs(x) <= size[2] / 2) & (np.abs(z) <= size[0] / 2)
    ct = np.where(body, hu, -1000.0).astype(np.float32)
    return Patient(grid, ct, [Structure("Body", body, "other")], name="water_box")


# TG-119 C-shape geometry (Ezzell et al., "IMRT commissioning: multiple institution planning and
# dosimetry comparisons, a report from AAPM Task Group 119", Med Phys 2009;36:5359-5373, Fig. 1
# and Sec. II.A): the core OAR is a cylinder of 1 cm radius; the PTV is a C-shape around it with
# an inner radius of 1.5 cm (0.5 cm gap to the core) and an outer radius of 3.7 cm; PTV length
# 8 cm, core length 10 cm (verify against the report's structure files). The body (an outer
# water-equivalent slab, 30 cm x 20 cm in the axial plane) is our choice: TG-119 used each
# institution's own phantom CT.
CSHAPE_CORE_RADIUS_MM = 10.0
CSHAPE_PTV_INNER_RADIUS_MM = 15.0
CSHAPE_PTV_OUTER_RADIUS_MM = 37.0
CSHAPE_PTV_LENGTH_MM = 80.0
CSHAPE_CORE_LENGTH_MM = 100.0
CSHAPE_BODY_MM = (300.0, 200.0)  # (x: left-right, y: anterior-posterior)

# Goals for 50 Gy in 25 fractions (TG-119 Table II / REFERENCES.md): (structure, metric, op, Gy).
def cshape_goals(target: str = "PTV", core: str = "Core") -> list[tuple[str, str, str, float]]:
    """The TG-119 C-shape goals (50 Gy in 25 fractions) with the target and core named as in the
    patient at hand: target D95 >= 50, D10 <= 55, core D10 <= 25 Gy."""
    return [
        (target, "D95", ">=", 50.0),
        (target, "D10", "<=", 55.0),
        (core, "D10", "<=", 25.0),
    ]


def cshape_hard_goals(core: str = "Core") -> list[tuple[str, str, str, float]]:
    """The harder TG-119 C-shape core goal, core D10 <= 10 Gy."""
    return [(core, "D10", "<=", 10.0)]


TG119_CSHAPE_GOALS = cshape_goals()
TG119_CSHAPE_HARD_GOALS = cshape_hard_goals()
TG119_CSHAPE_FRACTIONS = 25


def tg119_cshape(spacing_mm: float | tuple = 2.5, length_mm: float = 120.0) -> Patient:
    """The AAPM TG-119 C-shape phantom (dimensions and source in the module constants).

    The core cylinder and the PTV run along z (superior-inferior); the C opens anteriorly
    (-y) with a slot as wide as the PTV's inner diameter, so the core sits in the mouth of the C.

    Parameters
    ----------
    spacing_mm : voxel size in mm, scalar or (dz, dy, dx)
    length_mm : extent of the grid along z, mm (>= the core length)

    Structures: "PTV" (target), "Core" (oar), "Body" (other).
    """
    if length_mm < CSHAPE_CORE_LENGTH_MM:
        raise GeometryError(f"length_mm: expected >= {CSHAPE_CORE_LENGTH_MM} mm, got {length_mm}")
    bx, by = CSHAPE_BODY_MM
    grid = _grid_for((length_mm, by + 20.0, bx + 20.0), spacing_mm)
    z, y, x = np.meshgrid(*grid.axes_mm(), indexing="ij")
    body = (np.abs(x) <= bx / 2) & (np.abs(y) <= by / 2)
    r = np.hypot(x, y)
    annulus = (r >= CSHAPE_PTV_INNER_RADIUS_MM) & (r <= CSHAPE_PTV_OUTER_RADIUS_MM)
    mouth = (y < 0) & (np.abs(x) < CSHAPE_PTV_INNER_RADIUS_MM)
    ptv = annulus & ~mouth & (np.abs(z) <= CSHAPE_PTV_LENGTH_MM / 2)
    core = (r <= CSHAPE_CORE_RADIUS_MM) & (np.abs(z) <= CSHAPE_CORE_LENGTH_MM / 2)
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    return Patient(
        grid,
        ct,
        [
            Structure("PTV", ptv, "target", (1.0, 0.2, 0.2)),
            Structure("Core", core, "oar", (0.2, 0.6, 1.0)),
            Structure("Body", body, "other", (0.6, 0.6, 0.6)),
        ],
        name="tg119_cshape",
    )


def add_cshape_helper_structures(
    patient: Patient,
    ring_color: tuple[float, float, float] = (0.2, 0.7, 0.3),
    tissue_color: tuple[float, float, float] = (0.45, 0.45, 0.45),
    *,
    target: str = "PTV",
    body: str = "Body",
    ring: str = "Ring",
    tissue: str = "Tissue",
) -> None:
    """Add the planning helper structures the C-shape examples use (role "other"):
    ``ring`` ("Ring"), 3-20 mm around ``target`` inside ``body``, steering the fall-off; and
    ``tissue`` ("Tissue"), the body beyond 20 mm of the target. Both are usually optimized on a
    random sample (``PlanProblem.max_voxels_per_structure``).

    ``target`` and ``body`` name the patient's own structures (any case / spacing), so the
    helpers work on imported patients ("PTV_70", "BODY", "External", ...). A helper that would
    be empty (e.g. a target filling the body) raises :class:`~optimizer.errors.GeometryError`,
    as do a missing target or body and helper names that exist already.
    """
    for name in (ring, tissue):
        if name in patient:
            raise GeometryError(f"helper structure '{name}': the patient already has a structure of that "
                                f"name; pass ring= / tissue= to name the helpers differently")
    ring_mask = patient.ring(target, 3.0, 20.0, within=body)
    tissue_mask = patient.structure(body).mask & ~patient.expand(target, 20.0)
    for name, mask, where in ((ring, ring_mask, f"3-20 mm around '{target}' inside '{body}'"),
                              (tissue, tissue_mask, f"'{body}' beyond 20 mm of '{target}'")):
        if not mask.any():  # checked before adding either, so the patient is left unchanged
            raise GeometryError(f"helper structure '{name}' ({where}) would be empty")
    patient.add_structure(Structure(ring, ring_mask, "other", ring_color))
    patient.add_structure(Structure(tissue, tissue_mask, "other", tissue_color))


def cshape_planning_terms(target: str = "PTV", core: str = "Core", ring: str = "Ring",
                          tissue: str = "Tissue") -> list:
    """Fresh copies of the physical-dose terms of the C-shape examples (50 Gy in 25 fractions).

    Hard: the TG-119 target goals through their conservative CVaR surrogates, with 0.5 Gy of
    room (D95 >= 50.5, D10 <= 54.5). Soft: a homogeneous target (52.5 Gy), then spare the core,
    the ring (30 Gy) and the rest of the body (20 Gy). The names default to the phantom's;
    needs :func:`add_cshape_helper_structures` (with the same ``ring`` / ``tissue`` names).
    """
    from objectives import DVHMax, DVHMin, SquaredDeviation, SquaredOverdose

    return [
        DVHMin(target, 50.5, volume_pct=95),
        DVHMax(target, 54.5, volume_pct=10),
        SquaredDeviation(target, 52.5, weight=1.0),
        SquaredOverdose(core, 0.0, weight=0.3),
        SquaredOverdose(ring, 30.0, weight=1.0),
        SquaredOverdose(tissue, 20.0, weight=1.0),
    ]
