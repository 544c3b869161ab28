"""Predict many files and write what viewers open (``tools/predict.py``).

Under the output folder, per input ``<name>``:

* ``labels/<name>.tif``: the label image (instances 1..N, uint16 or uint32; semantic
  class ids, uint8), via tifffile (napari, Fiji, QuPath); ``.png`` on request (uint16 at
  most: images with more instances stay TIFF); ``.nii.gz`` for NIfTI volumes, with the
  input's affine;
* ``probabilities/<name>.tif`` / ``.nii.gz``: semantic probability maps, on request;
* ``overlays/<name>.png``: the image with its labels, shrunk to at most 2048 pixels
  (unless turned off);
* ``results.jsonl``: one line per finished image (its index entry and its COCO results),
  appended as each image is done, so a crash loses only the image in progress and
  ``resume`` skips the images already there. At the end the lines are merged into
  ``coco_instances_results.json`` (instance models) and ``images.json`` (the COCO
  ``images`` list and categories that map results' ``image_id`` to files).
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import nibabel as nib
import numpy as np
import tifffile
from detectron2.config import CfgNode
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.image_io import (
    IMAGE_EXTENSIONS,
    NIFTI_SUFFIXES,
    TIFF_EXTENSIONS,
    UnreadableImageError,
    decode_image_file,
    is_nifti,
    nifti_affine,
    read_nifti,
)
from ..evaluation.nuclei import load_coco_ground_truth
from ..utils.errors import UserError
from ..utils.io import (
    PathLike,
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    cut_json_lines,
    fsync_folder,
)
from .overlay import draw_label_overlay

__all__ = [
    "InputImage", "find_inputs", "split_config_overrides", "image_ids_from_coco",
    "WriteOptions", "PredictionRun", "predict_files", "RESULTS_FILE",
    "IMAGES_INDEX_FILE", "PROGRESS_FILE",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"
IMAGES_INDEX_FILE = "images.json"
PROGRESS_FILE = "results.jsonl"
LABEL_FORMATS = ("tif", "png")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """A file to predict on; ``name`` is its path relative to the folder it was found in
    (its file name when given directly), and names the output files."""

    path: Path
    name: str

    @property
    def is_volume(self) -> bool:
        return is_nifti(self.path)

    @property
    def stem(self) -> str:
        """``name`` without its extension (both parts of ``.nii.gz``)."""
        lowered = self.name.lower()
        suffix = next((s for s in NIFTI_SUFFIXES if lowered.endswith(s)), None)
        return self.name[:-len(suffix)] if suffix else str(Path(self.name).with_suffix(""))


def find_inputs(inputs: Sequence[PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS
                ) -> list[InputImage]:
    """Files as given, and every file with one of ``extensions`` under each folder
    (recursively, sorted, hidden ones left out).

    Raises :class:`UserError` for a missing path, a folder without such files, or two
    inputs whose outputs would have the same name.
    """
    found: list[InputImage] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file()
                           and p.name.lower().endswith(tuple(extensions))
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not files:
                raise UserError(f"input folder {item} holds no {'/'.join(extensions)} files")
            found += [InputImage(p, p.relative_to(item).as_posix()) for p in files]
        elif item.is_file():
            found.append(InputImage(item, item.name))
        else:
            raise UserError(f"input {item} does not exist")
    seen: dict[str, Path] = {}
    for image in found:
        if image.stem in seen:
            raise UserError(f"inputs {seen[image.stem]} and {image.path} would write the same "
                            f"output files ({image.stem}.*); predict them separately")
        seen[image.stem] = image.path
    return found


def split_config_overrides(tokens: Sequence[str], cfg: CfgNode) -> tuple[list[str], list[str]]:
    """Split ``INPUT... [KEY VALUE...]``: overrides start at the first token that is a key
    of ``cfg`` (like ``MODEL.DEVICE``) and not an existing path."""
    for index, token in enumerate(tokens):
        if "." in token and not os.path.exists(token) and _is_config_key(cfg, token):
            return list(tokens[:index]), list(tokens[index:])
    return list(tokens), []


def _is_config_key(cfg: CfgNode, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def image_ids_from_coco(gt_json: PathLike, images: Sequence[InputImage]) -> dict[str, int]:
    """The ground truth's id of each input (matched by file name), so that results can be
    scored against it with ``tools/eval_nuclei.py``."""
    coco = load_coco_ground_truth(gt_json)
    by_name: dict[str, int] = {}
    for image in coco.dataset["images"]:
        name = os.path.basename(image.get("file_name", ""))
        if name in by_name:
            raise UserError(f"{gt_json}: two images are named {name}; cannot match inputs")
        by_name[name] = image["id"]
    ids = {}
    for image in images:
        name = os.path.basename(image.name)
        if name not in by_name:
            raise UserError(f"{gt_json}: has no image named {name} (input {image.path})")
        ids[image.name] = by_name[name]
    return ids


# --------------------------------------------------------------------------- writing


@dataclass
class WriteOptions:
    """What to write besides the label images and results."""

    label_format: str = "tif"
    overlays: bool = True
    probabilities: bool = False
    page: Optional[int] = None
    channel: Optional[int] = None

    def __post_init__(self):
        if self.label_format not in LABEL_FORMATS:
            raise UserError(f"label format must be one of {', '.join(LABEL_FORMATS)}, got "
                            f"{self.label_format!r}")


@dataclass
class PredictionRun:
    """What :func:`predict_files` wrote, resumed and skipped."""

    output_dir: Path
    images: list[dict] = field(default_factory=list)        # the images index entries
    num_instances: int = 0
    resumed: int = 0
    skipped: list[str] = field(default_factory=list)        # "path: problem"


def _class_names(metadata: Any, key: str = "thing_classes") -> list[str]:
    """The data set's class names (one ``nucleus`` class, or background / foreground, when
    none are recorded)."""
    names = metadata.get(key, None) if metadata is not None else None
    return list(names or (["nucleus"] if key == "thing_classes" else ["background",
                                                                      "foreground"]))


def _category_ids(metadata: Any) -> list[int]:
    """Data set category id of each contiguous class (COCO's 1..K when none is recorded)."""
    count = len(_class_names(metadata))
    mapping = (metadata.get("thing_dataset_id_to_contiguous_id", None)
               if metadata is not None else None)
    if mapping:
        inverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        return [inverse[k] for k in range(count)]
    return list(range(1, count + 1))


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, png.tobytes())


def _write_tiff(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib")
    atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class _NiftiSpace:
    """An input volume's affine, and the nibabel orientation transform from the canonical
    (RAS+) voxel order the network sees (:func:`read_nifti`) back to the input's."""

    affine: np.ndarray
    to_input: np.ndarray


def _write_nifti(path: Path, array_zyx: np.ndarray, space: _NiftiSpace) -> None:
    """A (K,) D x H x W array as NIfTI (x, y, z[, K]) in the input's voxel order and affine."""
    xyz = np.moveaxis(array_zyx, 0, -1).transpose(2, 1, 0, 3) if array_zyx.ndim == 4 \
        else array_zyx.transpose(2, 1, 0)
    xyz = nib.orientations.apply_orientation(xyz, space.to_input)
    image = nib.Nifti1Image(np.ascontiguousarray(xyz), space.affine)
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6))


def _append_line(progress_file: Path, record: dict) -> None:
    with open(progress_file, "a", encoding="utf-8") as lines:
        lines.write(json.dumps(record) + "\n")
        lines.flush()
        os.fsync(lines.fileno())


def _read_input(item: InputImage, predictor, options: WriteOptions
                ) -> tuple[np.ndarray, Optional[_NiftiSpace], Optional[np.ndarray]]:
    """(network pixels, the input volume's space or None, 8-bit RGB for the overlay or
    None)."""
    if item.is_volume:
        if predictor.kind != "semantic" or predictor.dims != 3:
            raise UnreadableImageError(item.path, "a NIfTI volume needs a 3D semantic model")
        volume, canonical_affine = read_nifti(item.path)
        affine = nifti_affine(item.path)
        space = _NiftiSpace(affine, nib.orientations.ornt_transform(
            nib.io_orientation(canonical_affine), nib.io_orientation(affine)))
        return predictor.prepare(volume.transpose(2, 1, 0)), space, None
    if getattr(predictor, "dims", 2) == 3:
        raise UnreadableImageError(item.path, "a 3D model predicts on NIfTI volumes only")
    is_tiff = item.path.suffix.lower() in TIFF_EXTENSIONS    # only TIFFs hold pages
    pixels = decode_image_file(item.path, options.page if is_tiff else None)
    try:
        prepared = predictor.prepare(pixels, options.channel)
    except UserError as err:
        raise UnreadableImageError(item.path, str(err)) from None
    if predictor.kind == "instance":
        return prepared, None, prepared
    rgb = prepared.transpose(1, 2, 0)
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    return prepared, None, rgb[..., ::-1] if predictor.image_format == "BGR" else rgb


def _write_outputs(item: InputImage, result, space: Optional[_NiftiSpace], overlay_rgb,
                   output_dir: Path, options: WriteOptions) -> None:
    labels = result.label_image
    if space is not None:
        _write_nifti(output_dir / "labels" / f"{item.stem}.nii.gz", labels, space)
        if options.probabilities:
            _write_nifti(output_dir / "probabilities" / f"{item.stem}.nii.gz",
                         result.probabilities, space)
        return
    if options.label_format == "png" and labels.dtype != np.uint32:
        _write_png(output_dir / "labels" / f"{item.stem}.png", labels)
    else:
        if options.label_format == "png":
            logger.warning("%s: %d instances do not fit a 16-bit PNG; wrote a TIFF",
                           item.path, labels.max())
        _write_tiff(output_dir / "labels" / f"{item.stem}.tif", labels)
    if options.probabilities and hasattr(result, "probabilities"):
        _write_tiff(output_dir / "probabilities" / f"{item.stem}.tif", result.probabilities)
    if options.overlays:
        overlay = draw_label_overlay(overlay_rgb, labels)
        _write_png(output_dir / "overlays" / f"{item.stem}.png", overlay[:, :, ::-1])


def _iterate(images: Sequence[InputImage], progress: bool) -> Iterator[tuple[int, InputImage]]:
    with logging_redirect_tqdm():
        yield from enumerate(tqdm(images, desc="predict", unit="image", disable=not progress),
                             start=1)


def predict_files(predictor, images: Sequence[InputImage], output_dir: PathLike,
                  metadata: Any = None, image_ids: Optional[Mapping[str, int]] = None,
                  options: Optional[WriteOptions] = None, resume: bool = False,
                  progress: bool = True) -> PredictionRun:
    """Predict every file and write the outputs of the module docstring.

    Ids are ``image_ids[name]`` or 1, 2, ... in input order. Unreadable, empty or
    wrong-format files are skipped with a warning naming them; if none succeeds,
    :class:`UserError` is raised and the merged JSON files are not written.
    """
    options = options or WriteOptions()
    output_dir = check_output_dir(output_dir, "output folder")
    progress_file = output_dir / PROGRESS_FILE
    if not resume:
        progress_file.unlink(missing_ok=True)
    done = {record["image"]["file_name"]: record for record in cut_json_lines(progress_file)}
    run = PredictionRun(output_dir)
    if predictor.kind == "instance":
        category_ids, class_names = _category_ids(metadata), _class_names(metadata)
    else:   # label values are the class ids
        class_names = _class_names(metadata, "stuff_classes")
        category_ids = list(range(len(class_names)))
    for number, item in _iterate(images, progress):
        if item.name in done:
            run.resumed += 1
            continue
        try:
            pixels, space, overlay_rgb = _read_input(item, predictor, options)
        except UnreadableImageError as err:
            run.skipped.append(str(err))
            logger.warning("skipped %s", err)
            continue
        result = (predictor.predict_rgb(pixels) if predictor.kind == "instance"
                  else predictor.predict_prepared(pixels))
        _write_outputs(item, result, space, overlay_rgb, output_dir, options)
        image_id = image_ids[item.name] if image_ids is not None else number
        entry = {"id": image_id, "file_name": item.name, "path": str(item.path)}
        entry.update(zip(("depth", "height", "width")[-(pixels.ndim - 1):], pixels.shape[1:])
                     if predictor.kind == "semantic" else
                     (("height", result.height), ("width", result.width)))
        results = (result.coco_results(image_id, category_ids)
                   if predictor.kind == "instance" else [])
        _append_line(progress_file, {"image": entry, "results": results})
        done[item.name] = {"image": entry, "results": results}
    fsync_folder(output_dir)
    finished = [done[item.name] for item in images if item.name in done]
    if not finished:
        raise UserError(f"none of the {len(images)} inputs could be read; first: "
                        f"{run.skipped[0] if run.skipped else 'no inputs'}")
    run.images = [record["image"] for record in finished]
    run.num_instances = sum(len(record["results"]) for record in finished)
    if predictor.kind == "instance":
        atomic_write_json(output_dir / RESULTS_FILE,
                          [r for record in finished for r in record["results"]])
    categories = [{"id": i, "name": n} for i, n in zip(category_ids, class_names)]
    atomic_write_json(output_dir / IMAGES_INDEX_FILE,
                      {"images": run.images, "categories": categories}, indent=1)
    return run
