"""File input and output, one module per object.

DICOM (positions in the patient coordinate system, LPS mm; arrays ``[z, y, x]``):

- :mod:`~optimizer.io.ct` — CT Image series: :func:`load_ct_series`, :func:`write_ct_series`;
- :mod:`~optimizer.io.rtstruct` — RT Structure Set: :func:`load_rtstruct`, :func:`write_rtstruct`;
- :mod:`~optimizer.io.rtdose` — RT Dose: :func:`load_rtdose`, :func:`write_rtdose` (of a
  :class:`~optimizer.plan.Plan` or a dose array);
- :mod:`~optimizer.io.rtplan` — RT Ion Plan (proton PBS): :func:`write_rt_ion_plan` (of a proton
  Plan or spot arrays);
- :mod:`~optimizer.io.rtplan_photon` — RT Plan (photon step-and-shoot / sliding-window MLC):
  :func:`write_rt_plan` (of a sequenced :class:`optimizer.deliver.Delivery`), :func:`load_rt_plan`;
- :mod:`~optimizer.io.dicom_folder` — :func:`load_dicom`, a CT series and its structure set in
  one folder, as a :class:`~optimizer.geometry.Patient`.

All objects written for one patient share the patient, study and frame of reference of the CT
(pass the :class:`CTInfo` returned by :func:`write_ct_series`, or ``load_ct_series(folder).info``
for an imported CT). Every file is written atomically (:func:`optimizer._files.atomic_write`) and
nothing is overwritten unless ``overwrite=True``. What is wrong with a file raises
:class:`DicomError` naming it; text values DICOM would read back differently are refused, never
changed. Typical use::

    info = write_ct_series(plan.patient, "out/ct")
    ss_uid = write_rtstruct(plan.patient, "out/ct/RS.dcm", info)
    plan_uid = write_rt_ion_plan("out/RN.dcm", plan, info, structure_set_uid=ss_uid)
    write_rtdose(plan, "out/RD.dcm", info, referenced_plan_uid=plan_uid)

matRad: :mod:`~optimizer.io.matrad` — :func:`load_matrad` reads a matRad patient (``ct`` and
``cst``) from a MATLAB .mat file.
"""

from ._dicom_common import CTInfo, DicomError
from .ct import CT_HU_RANGE, CTSeries, load_ct_series, write_ct_series
from .dicom_folder import load_dicom
from .matrad import BODY_NAMES, MatradError, is_body_name, load_matrad
from .rtdose import load_rtdose, write_rtdose
from .rtplan import write_rt_ion_plan
from .rtplan_photon import RTPlanContents, load_rt_plan, write_rt_plan
from .rtstruct import load_rtstruct, write_rtstruct

__all__ = [
    "DicomError", "CTInfo", "CTSeries", "CT_HU_RANGE",
    "load_ct_series", "load_rtstruct", "load_dicom", "load_rtdose",
    "write_ct_series", "write_rtstruct", "write_rtdose", "write_rt_ion_plan",
    "write_rt_plan", "load_rt_plan", "RTPlanContents",
    "MatradError", "BODY_NAMES", "is_body_name", "load_matrad",
]
