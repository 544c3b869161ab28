"""Checks of COCO ground-truth and COCO results data before anything uses them.

pycocotools trusts its input: a run-length encoding whose runs do not add up to the image
makes ``mask_util.merge`` loop for minutes, a list as an image id or a string in ``counts``
ends in a traceback deep inside it, and a NaN score is dropped by one metric but ranked by
another. Every tool reads COCO data through :func:`check_coco_ground_truth` and
:func:`check_coco_results`, which raise :class:`UserError` naming the file, the entry and
what is wrong. They read plain Python data and build nothing, so they cost milliseconds.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from numbers import Real
from typing import Any

from ..utils.errors import UserError

__all__ = ["RESULT_KEYS", "check_coco_ground_truth", "check_coco_results", "read_json",
           "rle_run_lengths"]

RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")
# A compressed count fits 32 bits, i.e. at most 7 characters of 5 bits each.
_MAX_COUNT_CHARS = 7


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; :class:`UserError` if it is missing, unreadable or cut short."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}; "
                        "truncated?)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({err})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    """COCO ids are integers; strings work with pycocotools too (Detectron2 allows them)."""
    return _is_int(value) or isinstance(value, str)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def rle_run_lengths(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or
    ValueError where the string is not such an encoding."""
    runs: list[int] = []
    position, length = 0, len(counts)
    while position < length:
        value, shift, more = 0, 0, True
        while more:
            if position >= length or shift >= 5 * _MAX_COUNT_CHARS:
                raise ValueError("ends inside a run length")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"has the character {counts[position]!r} at {position}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _mask_problem(segmentation: Any, height: int, width: int) -> str | None:
    """What is wrong with a polygon list or an RLE for an image of ``height`` x ``width``."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(isinstance(v, Real) and math.isfinite(v) for v in polygon)):
                return ("a polygon of the mask is not an even list of at least 6 numbers: "
                        f"{_short(polygon)}")
        return None if segmentation else "the mask is an empty polygon list"
    if not (isinstance(segmentation, dict) and {"size", "counts"} <= segmentation.keys()):
        return ("the segmentation is neither polygons nor an RLE "
                f"({{'size': [h, w], 'counts': ...}}): {_short(segmentation)}")
    size, counts = segmentation["size"], segmentation["counts"]
    if size != [height, width]:
        return f"the mask of size {_short(size)} is not its image's size {[height, width]} (h, w)"
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        try:
            runs = rle_run_lengths(counts)
        except ValueError as err:
            return f"the mask's compressed 'counts' string {err}"
    elif isinstance(counts, list):
        if not all(_is_int(run) for run in counts):
            return f"the mask's 'counts' holds a non-integer run length: {_short(counts)}"
        runs = counts
    else:
        return (f"the mask's 'counts' is of type {type(counts).__name__} "
                "(expected a string or a list)")
    if any(run < 0 for run in runs):
        return "the mask's 'counts' holds a negative run length"
    if sum(runs) != height * width:
        return (f"the mask's run lengths add up to {sum(runs)}, not to the image's "
                f"{height}x{width} = {height * width} pixels")
    return None


def check_coco_ground_truth(data: Any, name: str) -> None:
    """A COCO instances dict: images with unique ids and positive integer sizes, annotations
    with unique ids on existing images and categories, and masks that fit their image."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{name}: not a COCO instances file (no 'images' list)")
    if not data["images"]:
        raise UserError(f"{name}: holds no images, so there is nothing to evaluate")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key) or [], list):
            raise UserError(f"{name}: '{key}' is not a list")
    images: dict[Any, dict] = {}
    for index, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and {"id", "height", "width"} <= image.keys()):
            raise UserError(f"{name}: image {index} lacks 'id', 'height' or 'width': "
                            f"{_short(image)}")
        if not _is_id(image["id"]):
            raise UserError(f"{name}: image {index} has id {_short(image['id'])}, "
                            "not an integer")
        if not all(_is_int(image[k]) and image[k] > 0 for k in ("height", "width")):
            raise UserError(f"{name}: image {image['id']!r} has height/width "
                            f"{_short(image['height'])}/{_short(image['width'])}, "
                            "not positive integers")
        if image["id"] in images:
            raise UserError(f"{name}: image id {image['id']!r} is used twice")
        images[image["id"]] = image
    categories = {c.get("id") for c in data.get("categories") or [] if isinstance(c, dict)}
    seen: set = set()
    for index, annotation in enumerate(data.get("annotations") or []):
        where = f"{name}: annotation {index}"
        if not (isinstance(annotation, dict) and "segmentation" in annotation):
            raise UserError(f"{where} has no segmentation: {_short(annotation)}")
        image = images.get(annotation.get("image_id")) if _is_id(
            annotation.get("image_id")) else None
        if image is None:
            raise UserError(f"{where} has image_id {_short(annotation.get('image_id'))}, "
                            "which is not an image of the file")
        if not _is_id(annotation.get("id")) or annotation["id"] in seen:
            raise UserError(f"{where} has a missing or repeated id "
                            f"{_short(annotation.get('id'))}")
        seen.add(annotation["id"])
        if categories and annotation.get("category_id") not in categories:
            raise UserError(f"{where} has category_id {_short(annotation.get('category_id'))}"
                            f", not one of the categories {sorted(categories, key=str)}")
        problem = _mask_problem(annotation["segmentation"], image["height"], image["width"])
        if problem:
            raise UserError(f"{where} (image {image['id']!r}): {problem}")


def check_coco_results(results: Any, images: dict, categories: Sequence, name: str) -> None:
    """A COCO results list: each detection on an image of the ground truth (``images``: id
    -> image dict), of a known category (if the ground truth lists any), with a finite
    score and an RLE mask of its image's size. NaN scores are refused with their count."""
    if not isinstance(results, list):
        raise UserError(f"{name}: not a COCO results file (expected a JSON list of detections)")
    not_finite = []
    known_categories = set(categories)
    for index, result in enumerate(results):
        where = f"{name}: detection {index}"
        if not (isinstance(result, dict) and all(key in result for key in RESULT_KEYS)):
            raise UserError(f"{where} lacks one of {', '.join(RESULT_KEYS)}")
        image_id = result["image_id"]
        image = images.get(image_id) if _is_id(image_id) else None
        if image is None:
            raise UserError(f"{where} has image_id {_short(image_id)}, which is not in the "
                            "ground truth")
        if known_categories and result["category_id"] not in known_categories:
            raise UserError(f"{where} has category_id {_short(result['category_id'])}, not "
                            f"one of the ground truth's {sorted(known_categories, key=str)}")
        score = result["score"]
        if not isinstance(score, Real) or isinstance(score, bool):
            raise UserError(f"{where} has a non-numeric score {_short(score)}")
        if not math.isfinite(score):
            not_finite.append(index)
        segmentation = result["segmentation"]
        if not (isinstance(segmentation, dict) and "counts" in segmentation
                and "size" in segmentation):
            raise UserError(f"{where} has no RLE mask "
                            "(segmentation must be {'size': [h, w], 'counts': ...})")
        problem = _mask_problem(segmentation, image["height"], image["width"])
        if problem:
            raise UserError(f"{where} (image {image_id!r}): {problem}")
    if not_finite:
        raise UserError(f"{name}: {len(not_finite)} detection(s) have a NaN or infinite score "
                        f"(first: detection {not_finite[0]}); fix the file that wrote them")
