"""The four semantic tasks of UNet++ (Table 1): preparation, registration, mapper, loaders.

Every prepared data set has one layout, under ``$DETECTRON2_DATASETS`` (default
``./datasets``)::

    <folder>/{train,val}/images/<name>.png|.nii.gz    uint8 intensities 0..255
    <folder>/{train,val}/labels/<name>.png|.nii.gz    uint8 class ids (0 background, 1 object)
    <folder>/report.json                               what was kept, skipped and why

2D data are PNG files, 3D data NIfTI. CT is HU-windowed to 0..255 when prepared, so every
task is normalized the same way (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` on the 0..255 scale).
Splits are made by group (source image, CT scan, video sequence) so that near-identical
samples never sit on both sides. A preparation writes into a temporary folder and swaps
it in whole, so a failed run leaves the previous data set untouched.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
)
from PIL import Image

from ..utils.errors import UserError
from ..utils.io import atomic_write_json
from ..utils.tiles import tile_starts
from .coco import DatasetNotPreparedError, datasets_root
from .dsb2018 import (
    SampleProblem,
    find_sample_folders,
    is_jpeg,
    mask_files,
    read_image_bgr8,
    read_mask,
    split_val_ids,
)
from .image_io import (
    IMAGE_EXTENSIONS,
    Intensity,
    UnreadableImageError,
    normalize_intensity,
    read_image,
)
from .sampling import build_resumable_train_loader
from .sources import display_name, source_root

__all__ = [
    "SemanticDataError", "SemanticDatasetInfo", "SEMANTIC_DATASETS",
    "register_semantic_datasets", "load_semantic_split", "read_nifti", "hu_window",
    "prepare_nuclei_patches", "prepare_polyp", "prepare_liver", "prepare_nodule",
    "SemanticDatasetMapper", "read_semantic_image", "semantic_network_input",
    "build_semantic_train_loader", "build_semantic_test_loader",
    "iter_report_lines",
]

SPLITS = ("train", "val")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# First frame of each of the 29 video sequences of CVC-ClinicDB (its README.txt).
CLINICDB_SEQUENCE_STARTS = (1, 26, 51, 68, 79, 104, 127, 152, 178, 200, 206, 228, 253, 278, 298,
                            318, 343, 364, 384, 409, 429, 448, 467, 479, 504, 529, 547, 572, 592)


class SemanticDataError(UserError, ValueError):
    """A source or prepared file that cannot be used; the message names it."""


@dataclass(frozen=True)
class SemanticDatasetInfo:
    """Where a prepared data set lives and how to make it."""

    folder: str
    classes: tuple[str, ...]
    prepare_command: str


SEMANTIC_DATASETS: dict[str, SemanticDatasetInfo] = {
    "nuclei_patches": SemanticDatasetInfo(
        "nuclei_patches", ("background", "nucleus"),
        "python datasets/prepare_nuclei_patches.py --source <stage1_train folder or .tar.gz>"),
    "polyp_kvasir": SemanticDatasetInfo(
        "polyp_kvasir", ("background", "polyp"),
        "python datasets/prepare_polyp.py --name kvasir --source <Kvasir-SEG folder>"),
    "polyp_clinicdb": SemanticDatasetInfo(
        "polyp_clinicdb", ("background", "polyp"),
        "python datasets/prepare_polyp.py --name clinicdb --source <CVC-ClinicDB folder>"),
    "liver": SemanticDatasetInfo(
        "liver", ("background", "liver"),
        "python datasets/prepare_liver.py --source <folder of LiTS volume-N/segmentation-N>"),
    "nodule": SemanticDatasetInfo(
        "nodule", ("background", "nodule"),
        "python datasets/prepare_nodule.py --source <folder with images/ and labels/>"),
}


# ---------------------------------------------------------------- readers and small helpers

def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume in the closest canonical (RAS+) orientation, and its affine.

    Raises :class:`SemanticDataError` naming the file if it cannot be read or is not 3D.
    """
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for broken files
        raise SemanticDataError(f"{path}: not a readable NIfTI file ({err})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SemanticDataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, img.affine


def hu_window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip Hounsfield units to ``[low, high]`` and map them linearly to uint8 0..255."""
    if not high > low:
        raise UserError(f"HU window needs low < high, got [{low}, {high}]")
    scaled = (np.clip(hu.astype(np.float32), low, high) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def _read_gray(path: Path) -> np.ndarray:
    """An 8-bit single-channel image, or :class:`SemanticDataError` naming the file."""
    array = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise SemanticDataError(f"{path}: not a readable image")
    return array


def _read_bgr(path: Path) -> np.ndarray:
    """An 8-bit BGR image (OpenCV's order), or :class:`SemanticDataError` naming the file."""
    array = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if array is None:
        raise SemanticDataError(f"{path}: not a readable image")
    return array


def _write_png(path: Path, array: np.ndarray) -> None:
    """PNG of a gray (H, W) or BGR (H, W, 3) uint8 array (into a staging folder, which is
    what makes the output atomic)."""
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _resize_2d(array: np.ndarray, size: int, is_label: bool) -> np.ndarray:
    if array.shape[:2] == (size, size):
        return array
    if is_label:
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_NEAREST)
    shrink = min(array.shape[:2]) > size
    return cv2.resize(array, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class _Preparation:
    """One preparation run: a staging folder, the report, and the split by group.

    Samples are written to ``staging/train`` (see :meth:`path`) and recorded with their
    group; :meth:`finish` moves the groups chosen for validation and writes
    ``report.json``. Groups are drawn among the usable ones only, the way the DSB2018
    converter draws its images, so equal settings give the instance and the semantic nuclei
    data sets the same validation images. Leaving the ``with`` block normally swaps the
    staging folder in for ``<root>/<folder>``; an error leaves the old one untouched.
    """

    def __init__(self, output_root: Path | None, folder: str, source: Path, *,
                 extracted_to: Path, val_fraction: float, seed: int, **settings):
        if not 0 <= val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(output_root) if output_root is not None else datasets_root()
        self.folder = folder
        self.source, self.extracted_to = Path(source), Path(extracted_to)
        self.val_fraction, self.seed = val_fraction, seed
        self.sources_used = 0
        self.groups: dict[str, list[str]] = {}
        self.report: dict = {"dataset": folder, "source": str(source),
                             "settings": dict(settings, val_fraction=val_fraction, seed=seed),
                             "samples": {}, "sources_used": 0, "skipped": [], "warnings": []}

    def __enter__(self) -> _Preparation:
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.folder}.", dir=self.root))
        self.staging.chmod(0o755)  # mkdtemp makes it private; the data set is not
        for split in SPLITS:
            for kind in ("images", "labels"):
                (self.staging / split / kind).mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                final = self.root / self.folder
                old = self.root / f".{self.folder}.old"
                shutil.rmtree(old, ignore_errors=True)
                if final.exists():
                    final.replace(old)
                self.staging.replace(final)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def skip(self, file: Path, reason: str) -> None:
        self.report["skipped"].append({"file": self._name(file), "reason": reason})

    def warn(self, file: Path, reason: str) -> None:
        self.report["warnings"].append({"file": self._name(file), "reason": reason})

    def read(self, reader: Callable[[Path], np.ndarray], file: Path) -> np.ndarray | None:
        """``reader(file)``, or None after reporting the file as unreadable."""
        try:
            return reader(file)
        except SemanticDataError:
            self.skip(file, "not a readable image")
            return None

    def _name(self, file: Path) -> str:
        return display_name(file, self.extracted_to, self.source)

    def path(self, kind: str, name: str) -> Path:
        """Where to write sample ``name`` (``kind`` "images" or "labels") before the split."""
        return self.staging / "train" / kind / name

    def add(self, group: str, name: str) -> None:
        self.groups.setdefault(group, []).append(name)

    def finish(self, what: str) -> dict:
        """Split, write ``report.json`` and return the report; no usable source is an error."""
        if self.sources_used == 0:
            reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in self.report["skipped"][:3])
            raise SemanticDataError(f"{self.report['source']}: no usable {what} found"
                                    + (f" ({reasons})" if reasons else ""))
        val = split_val_ids(sorted(self.groups), self.val_fraction, self.seed)
        counts = dict.fromkeys(SPLITS, 0)
        for group, names in self.groups.items():
            split = "val" if group in val else "train"
            counts[split] += len(names)
            for name in names if split == "val" else []:
                for kind in ("images", "labels"):
                    self.path(kind, name).replace(self.staging / "val" / kind / name)
        self.report.update(samples=counts, sources_used=self.sources_used)
        atomic_write_json(self.staging / "report.json", self.report, indent=2)
        return self.report


def _check_source(source: Path, what: str) -> Path:
    source = Path(source)
    if not source.exists():
        raise UserError(f"source {source} does not exist (expected {what})")
    return source


def _folder_with(root: Path, source: Path, *names: str) -> Path:
    """The one folder at or under ``root`` that holds all the sub-folders ``names``
    (an archive usually wraps the data set in a top folder such as ``Kvasir-SEG/``)."""
    def holds(folder: Path) -> bool:
        return all((folder / n).is_dir() for n in names)

    if holds(root):
        return root
    found = sorted({d.parent for d in root.rglob(names[0]) if d.is_dir() and holds(d.parent)})
    wanted = " and ".join(f"{n}/" for n in names)
    if not found:
        raise UserError(f"{source}: expected the folders {wanted} (at its top or in one "
                        "sub-folder)")
    if len(found) > 1:
        places = ", ".join(display_name(f, root, source) for f in found[:4])
        raise UserError(f"{source}: several folders hold {wanted} ({places}); point "
                        "--source at one of them")
    return found[0]


# ---------------------------------------------------------------- nuclei (DSB2018)

def _nuclei_union(folder: Path, prep: _Preparation) -> tuple[np.ndarray, np.ndarray] | None:
    """BGR image and binary union of its nucleus masks, or None (reported) if unusable.

    Reads with the DSB2018 converter's readers, so the semantic and instance data sets see
    the same pixels and reject the same files.
    """
    image_path = folder / "images" / f"{folder.name}.png"
    try:
        image = read_image_bgr8(image_path)
        union = np.zeros(image.shape[:2], bool)
        for mask_path in mask_files(folder):
            mask = read_mask(mask_path, union.shape)
            if is_jpeg(mask_path):
                prep.warn(mask_path, "lossy JPEG mask, thresholded at half range")
            if not mask.any():
                prep.warn(mask_path, "empty mask ignored")
            union |= mask
    except SampleProblem as problem:
        prep.skip(problem.path, problem.reason)
        return None
    if not union.any():
        prep.skip(folder, "no nucleus mask")
        return None
    return image, union.astype(np.uint8)


def prepare_nuclei_patches(source: Path, output_root: Path | None = None, *,
                           patch_size: int = 96, stride: int | None = None,
                           val_fraction: float = 0.1, seed: int = 0) -> dict:
    """DSB2018 (folder or archive) to ``patch_size`` tiles of image and nucleus-union mask.

    The paper trained on 96x96 patches, not on whole images shrunk to 96x96 (the gap
    between its 92.5 IoU and re-implementations' ~84). Tiles step by ``stride`` (default
    ``patch_size``) with the last one aligned to the border; images smaller than a patch are
    zero-padded. Files are named ``<image id>_<y>_<x>.png``. The split is by source image.
    Returns the report (also written to ``<root>/nuclei_patches/report.json``).
    """
    source = _check_source(source, "a DSB2018 stage1_train folder or archive")
    stride = stride or patch_size
    if patch_size < 1 or stride < 1:
        raise UserError(f"patch size and stride must be positive, got {patch_size}, {stride}")
    with source_root(source) as dsb, _Preparation(
            output_root, "nuclei_patches", source, extracted_to=dsb,
            val_fraction=val_fraction, seed=seed,
            patch_size=patch_size, stride=stride) as prep:
        for folder in find_sample_folders(dsb):
            loaded = _nuclei_union(folder, prep)
            if loaded is None:
                continue
            image, label = loaded
            pad = [(0, max(0, patch_size - n)) for n in label.shape]
            image = np.pad(image, pad + [(0, 0)])
            label = np.pad(label, pad)
            for y in tile_starts(label.shape[0], patch_size, stride):
                for x in tile_starts(label.shape[1], patch_size, stride):
                    name = f"{folder.name}_{y}_{x}.png"
                    window = np.s_[y:y + patch_size, x:x + patch_size]
                    _write_png(prep.path("images", name), image[window])
                    _write_png(prep.path("labels", name), label[window])
                    prep.add(folder.name, name)
            prep.sources_used += 1
        return prep.finish("DSB2018 images with masks")


# ---------------------------------------------------------------- polyps

def _clinicdb_sequence(stem: str) -> str:
    """The video sequence of a CVC-ClinicDB frame number (frames of one sequence are
    near-duplicates and must not be split between train and val)."""
    if not stem.isdigit():
        return stem
    return str(int(np.searchsorted(CLINICDB_SEQUENCE_STARTS, int(stem), side="right")))


def prepare_polyp(source: Path, output_root: Path | None = None, *, name: str = "kvasir",
                  size: int = 224, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Kvasir-SEG or CVC-ClinicDB (``images/``, ``masks/``) to ``size`` x ``size`` PNGs.

    ``source`` is the folder or its archive as downloaded (.zip, .tar.gz), with
    ``images/`` and ``masks/`` at its top or in one sub-folder (``Kvasir-SEG/``).

    Masks are thresholded at 127 (they are JPEG in both releases), after resizing the gray
    mask, which keeps the border where the JPEG put it. Frames without any polyp pixel are
    skipped and reported. CVC-ClinicDB is split by video sequence, Kvasir-SEG by frame.
    """
    if name not in ("kvasir", "clinicdb"):
        raise UserError(f"--name must be 'kvasir' or 'clinicdb', got {name!r}")
    source = _check_source(source, "a folder or archive with images/ and masks/")
    with source_root(source) as root, _Preparation(
            output_root, f"polyp_{name}", source, extracted_to=root,
            val_fraction=val_fraction, seed=seed, size=size) as prep:
        folder = _folder_with(root, source, "images", "masks")
        image_dir, mask_dir = folder / "images", folder / "masks"
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for image_path in images:
            mask_path = masks.get(image_path.stem)
            if mask_path is None:
                prep.skip(image_path, "no mask with the same name in masks/")
                continue
            image = prep.read(_read_bgr, image_path)
            mask = None if image is None else prep.read(_read_gray, mask_path)
            if mask is None:
                continue
            if image.shape[:2] != mask.shape:
                prep.skip(image_path, f"image {image.shape[1]}x{image.shape[0]} and mask "
                                      f"{mask.shape[1]}x{mask.shape[0]} differ in size")
                continue
            label = (_resize_2d(mask, size, is_label=False) > 127).astype(np.uint8)
            if not label.any():
                prep.skip(mask_path, "empty mask: every frame must show a polyp")
                continue
            out_name = f"{image_path.stem}.png"
            _write_png(prep.path("images", out_name), _resize_2d(image, size, is_label=False))
            _write_png(prep.path("labels", out_name), label)
            group = _clinicdb_sequence(image_path.stem) if name == "clinicdb" else out_name
            prep.add(group, out_name)
            prep.sources_used += 1
        return prep.finish("image/mask pairs")


# ---------------------------------------------------------------- liver (LiTS)

def _lits_pairs(source: Path, prep: _Preparation) -> list[tuple[str, Path, Path]]:
    """``(N, volume-N, segmentation-N)`` for every volume under ``source`` (any depth)."""
    pairs = []
    for volume in sorted(p for p in source.rglob("volume-*") if _is_nifti(p)):
        number = _stem(volume)[len("volume-"):]
        candidates = [volume.with_name(f"segmentation-{number}{s}") for s in NIFTI_SUFFIXES]
        segmentation = next((c for c in candidates if c.is_file()), None)
        if segmentation is None:
            prep.skip(volume, f"no segmentation-{number}.nii[.gz] beside it")
            continue
        pairs.append((number, volume, segmentation))
    return pairs


def _axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of a RAS+ volume as seen in radiology: anterior up, patient's right on
    the image's left."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1, ::-1])


def _read_nifti_pair(image_path: Path, label_path: Path, prep: _Preparation):
    """``(image, label, image affine)``, or None after reporting an unreadable file or a
    shape mismatch (the item is skipped, the preparation goes on)."""
    try:
        image, affine = read_nifti(image_path)
        label, _ = read_nifti(label_path)
    except SemanticDataError as err:
        prep.skip(image_path, str(err))
        return None
    if image.shape != label.shape:
        prep.skip(image_path, f"image {image.shape} and label {label.shape} differ in shape")
        return None
    return image, label, affine


def prepare_liver(source: Path, output_root: Path | None = None, *, size: int = 512,
                  window: tuple[float, float] = (-200.0, 250.0), val_fraction: float = 0.2,
                  seed: int = 0, keep_empty_slices: bool = False) -> dict:
    """LiTS ``volume-N`` / ``segmentation-N`` NIfTI pairs to axial ``size`` x ``size`` slices.

    Volumes are read in RAS+ orientation whatever their affine. Intensities are
    HU-windowed to 0..255; liver (1) and tumour (2) merge into liver. Only slices that show
    liver are kept unless ``keep_empty_slices``. Slices are named ``volume-N_zNNNN.png``;
    the split is by CT scan.
    """
    source = _check_source(source, "a folder or archive of LiTS volume-N / segmentation-N "
                                   "NIfTI files")
    with source_root(source) as root, _Preparation(
            output_root, "liver", source, extracted_to=root, val_fraction=val_fraction,
            seed=seed, size=size, window=list(window),
            keep_empty_slices=keep_empty_slices) as prep:
        for number, volume_path, segmentation_path in _lits_pairs(root, prep):
            pair = _read_nifti_pair(volume_path, segmentation_path, prep)
            if pair is None:
                continue
            hu, seg, _ = pair
            unexpected = sorted(set(np.unique(seg).tolist()) - {0, 1, 2})
            if unexpected:
                prep.skip(segmentation_path, f"label values {unexpected[:5]} outside "
                                             "{0 background, 1 liver, 2 tumour}")
                continue
            liver = np.asarray(seg) > 0
            if not liver.any():
                prep.skip(segmentation_path, "no liver voxel")
                continue
            image = hu_window(np.asarray(hu), *window)
            for z in range(hu.shape[2]):
                if not keep_empty_slices and not liver[:, :, z].any():
                    continue
                out_name = f"volume-{number}_z{z:04d}.png"
                _write_png(prep.path("images", out_name),
                           _resize_2d(_axial_slice(image, z), size, is_label=False))
                _write_png(prep.path("labels", out_name),
                           _resize_2d(_axial_slice(liver, z).astype(np.uint8), size, True))
                prep.add(number, out_name)
            prep.sources_used += 1
        return prep.finish("CT volumes with liver")


# ---------------------------------------------------------------- lung nodules

def _center_crop_or_pad(volume: np.ndarray, size: int) -> np.ndarray:
    """A ``size``^3 block around the volume's centre, zero-padded where it is smaller."""
    out = np.zeros((size,) * 3, volume.dtype)
    src, dst = [], []
    for n in volume.shape:
        start = max(0, (n - size) // 2)
        length = min(n, size)
        offset = max(0, (size - n) // 2)
        src.append(slice(start, start + length))
        dst.append(slice(offset, offset + length))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def prepare_nodule(source: Path, output_root: Path | None = None, *, size: int = 64,
                   window: tuple[float, float] = (-1000.0, 400.0), val_fraction: float = 0.2,
                   seed: int = 0, allow_empty: bool = False) -> dict:
    """Nodule crops (``images/<name>.nii[.gz]`` in HU, ``labels/<name>.nii[.gz]``) to
    ``size``^3 uint8 NIfTI volumes, HU-windowed to 0..255 (lung window by default).

    Crops larger or smaller than ``size`` are centre-cropped or padded with 0 (the window's
    low end: air with the default window). A crop whose label has no nodule voxel is
    skipped and reported unless ``allow_empty``. The split is by crop.
    """
    source = _check_source(source, "a folder or archive with images/ and labels/ NIfTI "
                                   "crops")
    with source_root(source) as root, _Preparation(
            output_root, "nodule", source, extracted_to=root, val_fraction=val_fraction,
            seed=seed, size=size, window=list(window), allow_empty=allow_empty) as prep:
        folder = _folder_with(root, source, "images", "labels")
        image_dir, label_dir = folder / "images", folder / "labels"
        labels = {_stem(p): p for p in label_dir.iterdir() if _is_nifti(p)}
        for image_path in sorted(p for p in image_dir.iterdir() if _is_nifti(p)):
            label_path = labels.get(_stem(image_path))
            if label_path is None:
                prep.skip(image_path, "no label with the same name in labels/")
                continue
            pair = _read_nifti_pair(image_path, label_path, prep)
            if pair is None:
                continue
            hu, label, affine = pair
            nodule = np.asarray(label) > 0
            if not nodule.any() and not allow_empty:
                prep.skip(label_path, "empty label: no nodule voxel")
                continue
            out_name = f"{_stem(image_path)}.nii.gz"
            for kind, volume in (("images", hu_window(np.asarray(hu), *window)),
                                 ("labels", nodule.astype(np.uint8))):
                nib.save(nib.Nifti1Image(_center_crop_or_pad(volume, size), affine),
                         str(prep.path(kind, out_name)))
            prep.add(out_name, out_name)
            prep.sources_used += 1
        return prep.finish("image/label crops")


# ---------------------------------------------------------------- registration

def _sample_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and (_is_nifti(p) or p.suffix.lower() in IMAGE_EXTENSIONS))


def load_semantic_split(split_dir: Path) -> list[dict]:
    """Dataset dicts (``file_name``, ``sem_seg_file_name``, ``image_id``) of one prepared
    split folder; every image needs a label of the same name."""
    split_dir = Path(split_dir)
    image_dir, label_dir = split_dir / "images", split_dir / "labels"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DatasetNotPreparedError(f"{split_dir}: expected the folders images/ and labels/")
    dicts = []
    for image_path in _sample_files(image_dir):
        label_path = label_dir / image_path.name
        if not label_path.is_file():
            raise SemanticDataError(f"{image_path}: no label {label_path}")
        dicts.append({"file_name": str(image_path), "sem_seg_file_name": str(label_path),
                      "image_id": _stem(image_path)})
    if not dicts:
        raise SemanticDataError(f"{image_dir}: no images")
    return dicts


def _lazy_loader(dataset_name: str, info: SemanticDatasetInfo, split: str) -> Callable:
    def load() -> list[dict]:
        split_dir = datasets_root() / info.folder / split
        if not split_dir.is_dir():
            raise DatasetNotPreparedError(
                f"data set {dataset_name!r} is not prepared: {split_dir} does not exist; run "
                f"`{info.prepare_command} --output {datasets_root()}`")
        return load_semantic_split(split_dir)

    return load


def register_semantic_datasets() -> None:
    """Register ``<key>_train`` / ``<key>_val`` for every entry of :data:`SEMANTIC_DATASETS`.

    Lazy (files are listed when the data set is first used, under the
    ``$DETECTRON2_DATASETS`` of that moment) and idempotent.
    """
    for key, info in SEMANTIC_DATASETS.items():
        for split in SPLITS:
            name = f"{key}_{split}"
            if name in DatasetCatalog.list():
                continue
            DatasetCatalog.register(name, _lazy_loader(name, info, split))
            MetadataCatalog.get(name).set(stuff_classes=list(info.classes),
                                          evaluator_type="semantic",
                                          prepare_command=info.prepare_command)


# ---------------------------------------------------------------- mapper and loaders

def read_semantic_image(path: Path, image_format: str, intensity: Intensity) -> np.ndarray:
    """Channels-first uint8 image ``(C, *spatial)`` of an image file or a NIfTI volume
    (``(1, D, H, W)`` = NIfTI ``(z, y, x)``), normalized by :mod:`.image_io`."""
    path = Path(path)
    if _is_nifti(path):
        return normalize_intensity(read_nifti(path)[0].transpose(2, 1, 0), intensity)[None]
    return read_image(path, image_format, intensity).transpose(2, 0, 1)


def _read_sample(dataset_dict: dict, image_format: str, intensity: Intensity
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Channels-first image ``(C, *spatial)`` and label ``(*spatial)`` of one sample; 3D
    volumes come as ``(D, H, W)`` = NIfTI ``(z, y, x)``."""
    image_path = Path(dataset_dict["file_name"])
    label_path = Path(dataset_dict["sem_seg_file_name"])
    try:
        image = read_semantic_image(image_path, image_format, intensity)
    except UnreadableImageError as err:
        raise SemanticDataError(f"{image_path}: unreadable ({err.reason})") from None
    if _is_nifti(label_path):
        label = read_nifti(label_path)[0].transpose(2, 1, 0)
    else:
        try:
            with Image.open(label_path) as pil_label:
                label = np.asarray(pil_label)
        except (OSError, ValueError) as err:
            raise SemanticDataError(f"{label_path}: unreadable ({err})") from None
        if label.ndim != 2:
            raise SemanticDataError(f"{label_path}: a label must be a single-channel image of "
                                    f"class ids, got shape {label.shape}")
    if image.shape[1:] != label.shape:
        raise SemanticDataError(f"{image_path} {image.shape[1:]} and {label_path} "
                                f"{label.shape} differ in size")
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _resize(tensor: torch.Tensor, size: Sequence[int], is_label: bool) -> torch.Tensor:
    """Resize ``(C, *spatial)`` (or a label ``(*spatial)``) with torch, in 2D or 3D."""
    if list(tensor.shape[-len(size):]) == list(size):
        return tensor
    if is_label:
        resized = F.interpolate(tensor[None, None].float(), size=list(size), mode="nearest")
        return resized[0, 0].to(tensor.dtype)
    mode = ("bilinear", "trilinear")[len(size) - 2]
    return F.interpolate(tensor[None], size=list(size), mode=mode, align_corners=False)[0]


def semantic_network_input(image: np.ndarray, size: int) -> torch.Tensor:
    """float32 ``(C, *spatial)`` on the 0..255 scale, resized to ``size`` in every spatial
    dimension when ``size > 0``: what the network sees, in training and in prediction."""
    tensor = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32))
    return _resize(tensor, [size] * (tensor.dim() - 1), is_label=False) if size > 0 else tensor


class SemanticDatasetMapper:
    """Reads one sample into Detectron2's semantic format.

    Output: ``image`` float32 ``(C, *spatial)`` on the 0..255 scale, resized to ``size``
    in every spatial dimension when ``size > 0``; ``sem_seg`` int64 class ids; ``height``,
    ``width`` (and ``depth``) of ``sem_seg``. Training resizes the label with the image
    and flips both at random along each spatial axis; testing keeps the label at its stored
    size, so the model's prediction is resized back and scored at full resolution.
    """

    @configurable
    def __init__(self, is_train: bool, *, image_format: str, size: int, num_classes: int,
                 flip: bool, intensity: Intensity | None = None):
        self.is_train = is_train
        self.image_format = image_format
        self.intensity = intensity or Intensity()
        self.size = size
        self.num_label_classes = max(2, num_classes)
        self.flip = flip and is_train

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        return {"is_train": is_train, "image_format": cfg.INPUT.FORMAT,
                "size": cfg.INPUT.SEMANTIC_SIZE, "num_classes": cfg.MODEL.SEMANTIC.NUM_CLASSES,
                "flip": cfg.INPUT.SEMANTIC_FLIP, "intensity": Intensity.from_config(cfg)}

    def __call__(self, dataset_dict: dict) -> dict:
        image_np, label_np = _read_sample(dataset_dict, self.image_format, self.intensity)
        if label_np.size and label_np.max() >= self.num_label_classes:
            raise SemanticDataError(
                f"{dataset_dict['sem_seg_file_name']}: label value {int(label_np.max())} is "
                f"not a class id below {self.num_label_classes} (0/255 masks must be "
                "converted by a datasets/prepare_* script)")
        image = semantic_network_input(image_np, self.size)
        label = torch.from_numpy(label_np.astype(np.int64))
        spatial = image.dim() - 1
        if self.size > 0 and self.is_train:
            label = _resize(label, [self.size] * spatial, is_label=True)
        if self.flip:
            for axis in range(spatial):
                if np.random.rand() < 0.5:
                    image, label = image.flip(axis + 1), label.flip(axis)
        out = {"file_name": dataset_dict["file_name"], "image_id": dataset_dict["image_id"],
               "image": image.contiguous(), "sem_seg": label.contiguous()}
        out.update(zip(("depth", "height", "width")[-spatial:], label.shape))
        return out


def build_semantic_train_loader(cfg: CfgNode):
    """Detectron2's training loader over ``cfg.DATASETS.TRAIN`` with the semantic mapper,
    resumable (:func:`~maskrcnn_pp.data.sampling.build_resumable_train_loader`)."""
    return build_resumable_train_loader(cfg, SemanticDatasetMapper(cfg, is_train=True))


def build_semantic_test_loader(cfg: CfgNode, dataset_name: str):
    """Detectron2's test loader (one image per batch) with the semantic mapper."""
    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=SemanticDatasetMapper(cfg, is_train=False))


def iter_report_lines(report: dict) -> Iterable[str]:
    """Human summary of a preparation report, for the prepare CLIs."""
    samples = report["samples"]
    yield (f"{report['dataset']}: {report['sources_used']} source(s) used, "
           f"{samples['train']} train / {samples['val']} val samples")
    for item in report["skipped"]:
        yield f"skipped {item['file']}: {item['reason']}"
    if report["warnings"]:
        yield f"{len(report['warnings'])} warning(s), see report.json"

