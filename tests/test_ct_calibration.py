"""CT calibration tables (HU -> relative electron density, HU -> relative stopping power): one
check for both, so a table the stopping power refuses is not taken for density."""

import numpy as np
import pytest

from optimizer import GeometryError
from optimizer.geometry import HU_TO_RED_TABLE, hu_to_red
from optimizer.stopping_power import hu_to_rsp


def test_a_swapped_or_negative_density_table_is_refused_like_a_stopping_power_table():
    swapped = np.asarray(HU_TO_RED_TABLE)[:, ::-1]  # (density, HU): the density column is -1000 ...
    for convert in (hu_to_red, hu_to_rsp):
        with pytest.raises(GeometryError, match=r"second column\) must be >= 0.*swapped"):
            convert(np.zeros(3), swapped)
        with pytest.raises(GeometryError, match="N >= 2"):
            convert(np.zeros(3), [[0.0, 1.0]])


def test_a_density_table_is_interpolated_by_hand_and_a_falling_one_warns():
    table = [[-1000.0, 0.0], [0.0, 1.0], [1000.0, 1.5]]
    # hand: -500 HU halfway between air (0) and water (1); 400 HU: 1 + 0.4 x 0.5; clamped ends
    got = hu_to_red(np.array([-500.0, 400.0, -2000.0, 3000.0]), table)
    assert got == pytest.approx([0.5, 1.2, 0.0, 1.5], abs=1e-6)
    with pytest.warns(UserWarning, match="falls as HU rises between rows 1 and 2"):
        hu_to_red(np.zeros(2), [[-1000.0, 0.0], [0.0, 1.0], [1000.0, 0.15]])
