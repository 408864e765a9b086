"""Plausibility of total course doses: a course dose that looks like a dose per fraction warns."""

from __future__ import annotations

import contextvars
import os
import sys
import warnings
from contextlib import contextmanager

import numpy as np

#: Plausibility limit of :func:`check_course_dose`, Gy per fraction: a course whose largest dose
#: per fraction is above 0 but below this looks like a per-fraction dose passed as the course dose
#: (e.g. 2 Gy with 30 fractions). Not a clinical limit; low-dose courses can silence the warning.
PER_FRACTION_WARNING_GY = 0.5


class PerFractionDoseWarning(UserWarning):
    """A total course dose looks like a dose per fraction (see :func:`check_course_dose`).

    Silence it for a genuine low-dose course with
    ``warnings.filterwarnings("ignore", category=PerFractionDoseWarning)``.
    """


# True while the caller has already checked the course dose (optimizer.bio_evaluate checks the
# whole plan dose once, so that a low-dose organ far from a hot target does not warn).
_COURSE_DOSE_CHECKED = contextvars.ContextVar("bioplan_course_dose_checked", default=False)

# The library's own source folders (objectives/, optimizer/); the warning points at the first
# caller outside them. This file is <root>/objectives/radiobiology/course_dose.py.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LIBRARY_DIRS = tuple(os.path.join(_ROOT, package) + os.sep for package in ("objectives", "optimizer"))


@contextmanager
def _course_dose_checked():
    """Within this context :func:`check_course_dose` is a no-op (the caller checked already)."""
    token = _COURSE_DOSE_CHECKED.set(True)
    try:
        yield
    finally:
        _COURSE_DOSE_CHECKED.reset(token)


def check_course_dose(total_dose_Gy, fractions, name: str = "total_dose_Gy") -> None:
    """Warn with :class:`PerFractionDoseWarning` when a total course dose looks like a dose per
    fraction: 0 < max(D / n) < :data:`PER_FRACTION_WARNING_GY` (0.5 Gy), i.e. for a scalar n,
    0 < max total dose < n x 0.5 Gy. All-zero doses (and zero voxels of a dose map) never warn;
    only the largest dose counts, so a map with a few cold voxels does not warn either.

    The shared check of every public function that takes a total course dose (BED, EQD2, GARD,
    TCP, RBE-weighted dose, ...). The warning points at the first caller outside bioplan.

    Parameters
    ----------
    total_dose_Gy : total physical dose(s) of the course, Gy (already validated >= 0)
    fractions : number of fractions (already validated integer >= 1), scalar or broadcastable
    name : the argument named in the message
    """
    if _COURSE_DOSE_CHECKED.get():
        return
    D = np.asarray(total_dose_Gy, dtype=float)
    n = np.asarray(fractions, dtype=float)
    if D.size == 0 or n.size == 0:
        return
    try:
        with np.errstate(all="ignore"):
            per_fraction = D / n
    except ValueError:  # shapes that do not broadcast: the calling function reports them
        return
    largest = float(np.max(per_fraction))
    if not 0.0 < largest < PER_FRACTION_WARNING_GY:
        return
    n_text = f"{int(n.ravel()[0])}" if n.size == 1 else "the given"
    message = (
        f"{name}: the largest dose is {float(np.max(D)):g} Gy in {n_text} fractions, only "
        f"{largest:.3g} Gy per fraction (< {PER_FRACTION_WARNING_GY:g} Gy); expected the total "
        f"physical dose of the course (per-fraction dose x fractions). Was a per-fraction dose passed? "
        f"For a genuine low-dose course silence this with warnings.filterwarnings('ignore', "
        f"category=PerFractionDoseWarning).")
    # point at the first frame outside the library (objectives/, optimizer/)
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PerFractionDoseWarning, stacklevel=level)
