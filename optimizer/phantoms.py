"""Digital phantoms: a water box and the AAPM TG-119 C-shape.

Grids are centred on the LPS origin unless an origin is given. HU: water 0, air -1000.
"""

from __future__ import annotations

import numpy as np

from .errors import GeometryError
from .geometry import Grid, Patient, Structure


def _grid_for(size_mm, spacing_mm) -> Grid:
    size = np.asarray(size_mm, dtype=float)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if size.shape != (3,) or np.any(size <= 0):
        raise GeometryError(f"size_mm: expected 3 positive extents (z, y, x) in mm, got {size_mm}")
    if np.any(spacing <= 0):
        raise GeometryError(f"spacing_mm: expected positive voxel size(s) in mm, got {spacing_mm}")
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
TG119_CSHAPE_GOALS = [
    ("PTV", "D95", ">=", 50.0),
    ("PTV", "D10", "<=", 55.0),
    ("Core", "D10", "<=", 25.0),
]
TG119_CSHAPE_HARD_GOALS = [("Core", "D10", "<=", 10.0)]
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
) -> None:
    """Add the planning helper structures the C-shape examples use (role "other"):
    "Ring", 3-20 mm around the PTV inside the body, steering the fall-off; and "Tissue", the
    body beyond 20 mm of the PTV. Both are usually optimized on a random sample
    (``PlanProblem.max_voxels_per_structure``)."""
    ring = patient.ring("PTV", 3.0, 20.0, within="Body")
    patient.add_structure(Structure("Ring", ring, "other", ring_color))
    tissue = patient.structure("Body").mask & ~patient.expand("PTV", 20.0)
    patient.add_structure(Structure("Tissue", tissue, "other", tissue_color))


def cshape_planning_terms() -> list:
    """Fresh copies of the physical-dose terms of the C-shape examples (50 Gy in 25 fractions).

    Hard: the TG-119 PTV goals through their conservative CVaR surrogates, with 0.5 Gy of room
    (D95 >= 50.5, D10 <= 54.5). Soft: a homogeneous PTV (52.5 Gy), then spare the core, the ring
    (30 Gy) and the rest of the body (20 Gy). Needs :func:`add_cshape_helper_structures`.
    """
    from objectives import DVHMax, DVHMin, SquaredDeviation, SquaredOverdose

    return [
        DVHMin("PTV", 50.5, volume_pct=95),
        DVHMax("PTV", 54.5, volume_pct=10),
        SquaredDeviation("PTV", 52.5, weight=1.0),
        SquaredOverdose("Core", 0.0, weight=0.3),
        SquaredOverdose("Ring", 30.0, weight=1.0),
        SquaredOverdose("Tissue", 20.0, weight=1.0),
    ]
