"""RTSTRUCT rasterization at voxel-centre edges, and the ROI named in duplicate-item errors.

The phantom: 3 slices of 12 x 12 voxels, 2 mm cubes, origin 0, so voxel centres lie at
x, y = 0, 2, ..., 22 mm and z = 0, 2, 4 mm. An 8 x 8 mm square with corners (4, 4) and (12, 12)
has its edges through voxel centres: 5 x 5 = 25 centres on or inside it, centroid (8, 8).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from optimizer.geometry import Grid, Patient, Structure
from optimizer.io import DicomError, load_rtstruct, write_ct_series, write_rtstruct
from optimizer.io.rtstruct import _rasterize

SQUARE = np.array([[4.0, 4.0], [12.0, 4.0], [12.0, 12.0], [4.0, 12.0]])  # counter-clockwise


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtstruct_probe")
    grid = Grid((3, 12, 12), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    ptv = np.zeros(grid.shape, bool)
    ptv[1, 3:7, 3:7] = True
    body = Structure("Body", np.ones(grid.shape, bool), "other")
    patient = Patient(grid, np.zeros(grid.shape, np.float32), [body, Structure("PTV", ptv, "target")])
    info = write_ct_series(patient, root)
    write_rtstruct(patient, root / "RS.dcm", info)
    return {"root": root, "grid": grid, "uid": info.frame_of_reference_uid}


@pytest.mark.parametrize("outer_cw", [False, True])
@pytest.mark.parametrize("hole_cw", [False, True])
def test_hole_with_edges_through_voxel_centres_even_odd_any_orientation(outer_cw, hole_cw):
    """Outer square 0..16 mm: 9 x 9 = 81 centres; hole 4..12 mm: 5 x 5 = 25 centres (its edge
    centres are in the hole); even-odd: 81 - 25 = 56, whichever way each runs."""
    xs = ys = np.arange(0.0, 24.0, 2.0)
    outer = np.array([[0.0, 0.0], [16.0, 0.0], [16.0, 16.0], [0.0, 16.0]])
    outer, hole = (outer[::-1] if outer_cw else outer), (SQUARE[::-1] if hole_cw else SQUARE)
    mask = _rasterize([outer, hole], xs, ys)
    assert mask.sum() == 56
    assert not mask[2:7, 2:7].any() and mask[:9, :9].sum() == 56


def test_edge_tolerance_counts_a_centre_within_1e_6_mm_of_the_edge():
    """The square shrunk by 8e-7 mm per side (within the 1e-6 mm edge tolerance): still the 25
    centres (the bounding-box pre-filter without the tolerance kept 3 x 3 = 9; matplotlib's
    radius offsets by half of it, 5e-7 mm). Shrunk by 2e-6 mm, beyond it: the edge centres are
    out, 3 x 3 = 9."""
    xs = ys = np.arange(0.0, 24.0, 2.0)
    outward = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    for shrink, expected in ((8e-7, 25), (2e-6, 9)):
        poly = SQUARE - outward * shrink
        assert _rasterize([poly], xs, ys).sum() == expected
        assert _rasterize([poly[::-1]], xs, ys).sum() == expected


@pytest.mark.parametrize("sequence, label", [("RTROIObservationsSequence", "RT ROI Observations"),
                                             ("ROIContourSequence", "ROI Contour")])
def test_two_items_for_one_roi_number_are_refused_naming_the_roi(phantom, tmp_path, sequence, label):
    """The PTV's (ROI 2) item re-pointed at ROI 1: Body's contours or type silently replaced."""
    ds = pydicom.dcmread(phantom["root"] / "RS.dcm")
    getattr(ds, sequence)[1].ReferencedROINumber = 1
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.raises(DicomError, match=f"two {label} items refer to ROINumber 1 \\(ROI 'Body'\\); "
                                         "expected one per ROI"):
        load_rtstruct(tmp_path / "RS.dcm", phantom["grid"], phantom["uid"])

