"""Every data preparer, on one framework (:mod:`.base`): the instance ones write COCO JSON
(:mod:`.instance_output`: DSB2018, label images), the semantic ones image/label folders in
the layout of :mod:`maskrcnn_pp.data.catalog` (:mod:`.semantic_output`: nuclei patches,
polyp, liver, nodule). ``datasets/prepare_<name>.py`` runs each through
:mod:`maskrcnn_pp.cli.prepare`."""
from .base import PreparationReport, Preparer, SplitPlan
from .dsb2018 import Dsb2018Preparer, convert_dsb2018
from .instances import InstancesPreparer, convert_instances
from .liver import LiverPreparer, prepare_liver
from .nodule import NodulePreparer, prepare_nodule
from .nuclei_patches import NucleiPatchesPreparer, prepare_nuclei_patches
from .polyp import PolypPreparer, prepare_polyp
from .semantic_output import hu_window

__all__ = [
    "Preparer", "PreparationReport", "SplitPlan", "Dsb2018Preparer", "InstancesPreparer",
    "NucleiPatchesPreparer", "PolypPreparer", "LiverPreparer", "NodulePreparer",
    "convert_dsb2018", "convert_instances", "prepare_nuclei_patches", "prepare_polyp",
    "prepare_liver", "prepare_nodule", "hu_window",
]
