"""A small thorax phantom for FLASH and immune-sparing examples and tests.

Our own simplified geometry (not an anatomical model): an elliptic water body 300 x 200 mm
(left-right x anterior-posterior), two elliptic lungs (HU -750, about the density of inflated
lung), a heart (HU 40) anterior and left of the midline, a spinal cord posterior, and a spherical
tumour (PTV) in the right lung. LPS: x to the patient's left, y posterior.
"""

from __future__ import annotations

import numpy as np

from ..errors import GeometryError
from ..geometry import Grid, Patient, Structure

#: HU of inflated lung and of heart muscle used here (typical CT numbers; our choice).
LUNG_HU = -750.0
HEART_HU = 40.0


def thorax(spacing_mm: float = 5.0, length_mm: float = 60.0, tumour_radius_mm: float = 15.0) -> Patient:
    """Thorax phantom on a grid of ``spacing_mm`` (cubic voxels) and ``length_mm`` along z.

    Structures: "PTV" (target, sphere of ``tumour_radius_mm`` centred at x = -70, y = 15 mm),
    "Lungs" (oar, both lungs without the PTV), "Heart" (oar), "Cord" (oar), "Body" (other).
    """
    sizes = {"spacing_mm": spacing_mm, "length_mm": length_mm, "tumour_radius_mm": tumour_radius_mm}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not (np.isfinite(value) and value > 0):
            raise GeometryError(f"thorax: {name}: expected a positive length in mm, got {value!r}")
    bx, by = 300.0, 200.0
    n = [max(1, int(round(length_mm / spacing_mm))), int(round((by + 20) / spacing_mm)),
         int(round((bx + 20) / spacing_mm))]
    origin = tuple(-(k - 1) * spacing_mm / 2 for k in n)
    grid = Grid(tuple(n), (spacing_mm,) * 3, origin)
    z, y, x = np.meshgrid(*grid.axes_mm(), indexing="ij")
    body = (x / (bx / 2)) ** 2 + (y / (by / 2)) ** 2 <= 1.0
    right = ((x + 70) / 55) ** 2 + ((y - 5) / 75) ** 2 <= 1.0
    left = ((x - 75) / 50) ** 2 + ((y - 10) / 70) ** 2 <= 1.0
    lungs = right | left
    heart = ((x - 20) / 45) ** 2 + ((y + 45) / 40) ** 2 <= 1.0
    lungs &= ~heart
    cord = (x ** 2 + (y - 80) ** 2 <= 8.0 ** 2)
    ptv = (x + 70) ** 2 + (y - 15) ** 2 + z ** 2 <= tumour_radius_mm ** 2
    ct = np.where(body, 0.0, -1000.0)
    ct = np.where(lungs & ~ptv, LUNG_HU, ct)
    ct = np.where(heart, HEART_HU, ct).astype(np.float32)
    return Patient(grid, ct, [
        Structure("PTV", ptv, "target", (1.0, 0.2, 0.2)),
        Structure("Lungs", lungs & ~ptv, "oar", (0.3, 0.7, 1.0)),
        Structure("Heart", heart, "oar", (0.9, 0.5, 0.1)),
        Structure("Cord", cord, "oar", (0.6, 0.2, 0.8)),
        Structure("Body", body, "other", (0.6, 0.6, 0.6)),
    ], name="thorax_flash")
