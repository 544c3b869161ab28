"""One reader, one error: every image, label or volume file is decoded in data/image_io.py,
and a file that cannot be read is an UnreadableImageError naming it, on every path that
reads one (training mapper, semantic mapper, prediction, converters, preparers)."""
from __future__ import annotations

import ast
import re
import shutil
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskrcnn_pp.data.dsb2018 import convert_dsb2018
from maskrcnn_pp.data.image_io import (
    UnreadableImageError,
    decode_image_file,
    read_label,
    read_nifti,
)
from maskrcnn_pp.data.mapper import CheckedDatasetMapper
from maskrcnn_pp.data.prepare.base import SampleProblem, read_sample_file
from maskrcnn_pp.data.prepare.instances import convert_instances
from maskrcnn_pp.data.semantic_mapper import SemanticDatasetMapper
from maskrcnn_pp.inference.batch import InputImage, predict_files
from maskrcnn_pp.inference.semantic import SemanticPredictor
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

PACKAGE = ROOT / "maskrcnn_pp"
READER = PACKAGE / "data" / "image_io.py"
# Calls that decode an image, label or volume file.
DECODERS = {"cv2.imread", "cv2.imreadmulti", "cv2.imdecode", "cv2.imdecodemulti",
            "PIL.Image.open", "tifffile.imread", "tifffile.TiffFile", "nibabel.load",
            "detectron2.data.detection_utils.read_image", "imageio.imread", "imageio.v3.imread",
            "skimage.io.imread"}
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _decoder_calls(path: Path) -> list[str]:
    """The qualified names of the decoders of :data:`DECODERS` that ``path`` uses, with
    import aliases resolved (``import nibabel as nib`` makes ``nib.load`` ``nibabel.load``)."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def qualified(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    return sorted({name for node in ast.walk(tree)
                   if isinstance(node, (ast.Name, ast.Attribute))
                   for name in [qualified(node)] if name in DECODERS})


def test_only_image_io_decodes_image_files():
    outside = {str(path.relative_to(PACKAGE.parent)): calls
               for path in sorted(PACKAGE.rglob("*.py")) if path != READER
               for calls in [_decoder_calls(path)] if calls}
    assert not outside, outside
    assert {"cv2.imread", "PIL.Image.open", "tifffile.TiffFile",
            "nibabel.load"} <= set(_decoder_calls(READER))


def test_the_decoder_check_sees_aliases(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import cv2\nimport nibabel as nib\nfrom PIL import Image\n"
                     "from detectron2.data import detection_utils as utils\n"
                     "cv2.imread('a')\nnib.load('b')\nImage.open('c')\n"
                     "utils.read_image('d', 'L')\ncv2.imwrite('e', None)\n")
    assert _decoder_calls(probe) == ["PIL.Image.open", "cv2.imread",
                                     "detectron2.data.detection_utils.read_image",
                                     "nibabel.load"]


@pytest.fixture
def files(tmp_path) -> types.SimpleNamespace:
    """A good 8x8 image and label, a corrupt PNG, an empty file and a corrupt NIfTI."""
    good_image, good_label = tmp_path / "good.png", tmp_path / "label.png"
    cv2.imwrite(str(good_image), np.full((8, 8, 3), 90, np.uint8))
    cv2.imwrite(str(good_label), np.eye(8, dtype=np.uint8))
    broken, empty, volume = tmp_path / "broken.png", tmp_path / "empty.png", tmp_path / "v.nii.gz"
    broken.write_bytes(BROKEN_PNG)
    empty.write_bytes(b"")
    volume.write_bytes(b"not a nifti file")
    return types.SimpleNamespace(image=good_image, label=good_label, broken=broken,
                                 empty=empty, volume=volume)


def _error(read, path) -> UnreadableImageError:
    with pytest.raises(UnreadableImageError) as caught:
        read(path)
    assert caught.value.path == Path(path) and str(caught.value).startswith(f"{path}: ")
    return caught.value


def test_the_readers_name_the_file_and_say_why(files):
    assert "cannot be decoded" in _error(decode_image_file, files.broken).reason
    assert _error(decode_image_file, files.empty).reason == "file is empty"
    assert "cannot be decoded" in _error(read_label, files.broken).reason
    assert "not a readable NIfTI file" in _error(read_nifti, files.volume).reason
    colour = files.image
    assert "a label image has one channel" in _error(read_label, colour).reason
    assert _error(read_label, files.label.parent / "missing.png").reason.startswith(
        "cannot be read")


def test_read_label_keeps_the_stored_values(tmp_path):
    from PIL import Image

    palette = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "palette.png")
    assert read_label(tmp_path / "palette.png").tolist() == [[0, 1], [2, 3]]
    deep = np.array([[0, 300], [65535, 7]], np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    labels = read_label(tmp_path / "deep.png")
    assert labels.dtype == np.uint16 and labels.tolist() == deep.tolist()


def test_training_mapper_names_the_unreadable_image_or_label(files):
    mapper = CheckedDatasetMapper(True, augmentations=[], image_format="RGB")
    record = {"file_name": str(files.image), "height": 8, "width": 8, "image_id": 1,
              "sem_seg_file_name": str(files.label)}
    assert mapper(dict(record))["sem_seg"].tolist() == np.eye(8).tolist()
    for key, what in (("file_name", "image"), ("sem_seg_file_name", "label")):
        with pytest.raises(UnreadableImageError, match=f"^{re.escape(str(files.broken))}: "
                                                       rf"cannot read {what} \(cannot be "
                                                       r"decoded.*SKIP_BAD_IMAGES"):
            mapper({**record, key: str(files.broken)})


def test_semantic_mapper_names_the_unreadable_image_or_label(files):
    mapper = SemanticDatasetMapper(False, image_format="L", size=0, num_classes=2, flip=False)
    record = {"file_name": str(files.image), "sem_seg_file_name": str(files.label),
              "image_id": "good"}
    assert mapper(dict(record))["sem_seg"].tolist() == np.eye(8).tolist()
    for key, bad in (("file_name", files.broken), ("sem_seg_file_name", files.empty),
                     ("file_name", files.volume), ("sem_seg_file_name", files.volume)):
        with pytest.raises(UnreadableImageError) as caught:
            mapper({**record, key: str(bad)})
        assert caught.value.path == bad


@pytest.mark.parametrize("name,dims", [("broken.png", 2), ("v.nii.gz", 3)])
def test_prediction_reports_the_unreadable_input(files, tmp_path, name, dims):
    path = tmp_path / name
    expected = _error(read_nifti if dims == 3 else decode_image_file, path)
    predictor = SemanticPredictor(lambda batch: batch, dims=dims)
    with pytest.raises(UserError) as caught:
        predict_files(predictor, [InputImage(path, name)], tmp_path / "out", progress=False)
    assert str(caught.value) == f"none of the 1 inputs could be read; first: {expected}"


def test_converters_report_the_readers_reason(files, tmp_path):
    with pytest.raises(SampleProblem) as caught:
        read_sample_file(files.broken, "unreadable_image")
    assert isinstance(caught.value.__cause__, UnreadableImageError)
    reason = caught.value.reason

    dsb = tmp_path / "dsb" / "s1"
    (dsb / "images").mkdir(parents=True)
    (dsb / "masks").mkdir()
    (dsb / "images" / "s1.png").write_bytes(BROKEN_PNG)
    cv2.imwrite(str(dsb / "masks" / "m0.png"), np.eye(8, dtype=np.uint8) * 255)
    shutil.copytree(dsb, tmp_path / "dsb" / "s0")  # a usable image: the run writes a data set
    cv2.imwrite(str(tmp_path / "dsb" / "s0" / "images" / "s0.png"), np.eye(8, dtype=np.uint8))
    (tmp_path / "dsb" / "s0" / "images" / "s1.png").unlink()
    report = convert_dsb2018(tmp_path / "dsb", tmp_path / "dsb_out", progress=False)
    assert [(Path(p.file).name, p.kind, p.reason) for p in report.problems] == [
        ("s1.png", "unreadable_image", reason)]

    src = tmp_path / "instances"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    cv2.imwrite(str(src / "images" / "a.png"), np.full((8, 8), 90, np.uint8))
    (src / "masks" / "a.png").write_bytes(BROKEN_PNG)
    cv2.imwrite(str(src / "images" / "b.png"), np.full((8, 8), 90, np.uint8))
    cv2.imwrite(str(src / "masks" / "b.png"), np.eye(8, dtype=np.uint8))
    report = convert_instances(src, tmp_path / "instances_out", progress=False)
    assert [(Path(p.file).name, p.kind, p.reason) for p in report.problems] == [
        ("a.png", "unreadable_mask", _error(read_label, src / "masks" / "a.png").reason)]
