"""The semantic preparers, one module per task, writing the layout of
:mod:`maskrcnn_pp.data.catalog` through the shared staging of :mod:`.staging`."""
from .liver import prepare_liver
from .nodule import prepare_nodule
from .nuclei_patches import prepare_nuclei_patches
from .polyp import prepare_polyp
from .staging import hu_window, iter_report_lines

__all__ = ["prepare_nuclei_patches", "prepare_polyp", "prepare_liver", "prepare_nodule",
           "hu_window", "iter_report_lines"]
