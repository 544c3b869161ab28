"""The install-time patch of pb1-detectron2 0.6, and that the installed build carries it."""
import importlib.util
import inspect
import re
import shutil
import sys
from pathlib import Path

import detectron2
import pytest
import torch

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("install_detectron2",
                                              ROOT / "tools" / "install_detectron2.py")
installer = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = installer  # dataclasses look their module up there
spec.loader.exec_module(installer)

D2_ROOT = Path(detectron2.__file__).parent
PATCHED_V06 = detectron2.__version__ == "0.6" and importlib.util.find_spec("detectron2._C") is None


def test_edits_apply_and_refuse_a_source_they_do_not_match(tmp_path):
    (tmp_path / "setup.py").write_text("ext_modules=get_extensions(),\n")
    (tmp_path / "np.py").write_text("a = np.int\nb = np.bool_\nc = np.float\n")
    edits = (installer.Edit("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],"),
             installer.Edit("np.py", installer._NUMPY_ALIAS, r"\1", count=2, regex=True))
    installer.apply_edits(tmp_path, edits)
    assert (tmp_path / "setup.py").read_text() == "ext_modules=[],\n"
    assert (tmp_path / "np.py").read_text() == "a = int\nb = np.bool_\nc = float\n"
    # the same edits on the now-patched tree no longer match: refuse, write nothing
    before = (tmp_path / "np.py").read_text()
    with pytest.raises(installer.PatchMismatch, match="setup.py: expected 1 match"):
        installer.apply_edits(tmp_path, edits)
    assert (tmp_path / "np.py").read_text() == before
    with pytest.raises(installer.PatchMismatch, match="missing.py: file not found"):
        installer.apply_edits(tmp_path, (installer.Edit("missing.py", "a", "b"),))


def test_sdist_checksum_is_verified(tmp_path):
    fake = tmp_path / installer.SDIST_NAME
    fake.write_bytes(b"not the real archive")
    with pytest.raises(installer.PatchMismatch, match="sha256"):
        installer.unpack_verified(fake, tmp_path)


@pytest.mark.skipif(not PATCHED_V06, reason="an official detectron2 build is installed")
def test_installed_detectron2_carries_every_runtime_edit():
    for edit in installer.EDITS:
        if edit.path == "setup.py":
            continue
        text = (D2_ROOT.parent / edit.path).read_text()
        if edit.regex:
            assert not re.search(edit.old, text), edit.path
        else:
            assert (edit.new in text) if edit.new else (edit.old not in text), edit.path


def test_detectron2_imports_under_current_pillow_numpy_setuptools():
    import numpy as np
    from detectron2 import model_zoo
    from detectron2.data import transforms
    from detectron2.evaluation import COCOEvaluator  # noqa: F401
    from detectron2.structures.masks import polygons_to_bitmask
    from PIL import Image

    assert not hasattr(Image, "LINEAR")  # Pillow >= 10: the name v0.6 used is gone
    default_interp = inspect.signature(transforms.ExtentTransform.__init__).parameters["interp"]
    assert default_interp.default == Image.BILINEAR
    config = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert Path(config).is_file()
    square = [np.array([1, 1, 5, 1, 5, 5, 1, 5], dtype=float)]
    assert polygons_to_bitmask(square, 8, 8).dtype == bool


def test_data_loader_restart_works_with_eager_and_lazy_iterators():
    """compat.restart_data_loader on v0.6's SimpleTrainer (iterator made in __init__) and on
    upstream's (a lazy ``_data_loader_iter`` property over ``_data_loader_iter_obj``)."""
    from detectron2.engine import SimpleTrainer

    from maskrcnn_pp.compat import restart_data_loader

    class Upstream:
        def __init__(self, data_loader):
            self.data_loader, self._data_loader_iter_obj = data_loader, None

        @property
        def _data_loader_iter(self):
            if self._data_loader_iter_obj is None:
                self._data_loader_iter_obj = iter(self.data_loader)
            return self._data_loader_iter_obj

    loader = [1, 2, 3]
    v06 = SimpleTrainer(torch.nn.Linear(1, 1), loader, None)
    for trainer in (v06, Upstream(loader)):
        assert next(trainer._data_loader_iter) == 1
        restart_data_loader(trainer)
        assert next(trainer._data_loader_iter) == 1


def test_coco_evaluator_counts_every_detection_where_the_build_can(monkeypatch):
    import detectron2.evaluation

    from maskrcnn_pp.compat import coco_evaluator

    class Upstream:  # upstream's COCOEvaluator takes max_dets_per_image; v0.6's does not
        def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                     max_dets_per_image=None, use_fast_impl=True):
            self.max_dets_per_image = max_dets_per_image

    class V06:
        def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                     use_fast_impl=True):
            self.use_fast_impl = use_fast_impl

    monkeypatch.setattr(detectron2.evaluation, "COCOEvaluator", Upstream)
    assert coco_evaluator("x", max_dets_per_image=400).max_dets_per_image == 400
    monkeypatch.setattr(detectron2.evaluation, "COCOEvaluator", V06)
    assert isinstance(coco_evaluator("x", max_dets_per_image=400), V06)


# detectron2/export/__init__.py of pb1-detectron2 0.6 (upstream v0.6), verbatim
V06_EXPORT_INIT = '''# -*- coding: utf-8 -*-

from .api import *
from .flatten import TracingAdapter
from .torchscript import scripting_with_instances, dump_torchscript_IR

__all__ = [k for k in globals().keys() if not k.startswith("_")]
'''


def _import_package(name, folder):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    return module


@pytest.mark.skipif(importlib.util.find_spec("caffe2") is not None,
                    reason="caffe2 is installed here, so v0.6's import does not fail")
def test_export_guard_makes_v06_export_importable_without_caffe2(tmp_path):
    """The edit applied to v0.6's text: the unpatched package fails on caffe2, the patched
    one imports TracingAdapter and the TorchScript helpers (submodules from this build)."""
    folder = tmp_path / "detectron2" / "export"
    shutil.copytree(D2_ROOT / "export", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "__init__.py").write_text(V06_EXPORT_INIT)
    with pytest.raises(ImportError, match="caffe2"):
        _import_package("v06_export_unpatched", folder)
    guard = [e for e in installer.EDITS if e.path == "detectron2/export/__init__.py"]
    installer.apply_edits(tmp_path, guard)
    patched = _import_package("v06_export_patched", folder)
    assert patched.TracingAdapter.__name__ == "TracingAdapter"
    assert callable(patched.scripting_with_instances)
    assert not hasattr(patched, "Caffe2Tracer")
