"""Predict many files and write what viewers open (``tools/predict.py``).

Any predictor (:class:`~maskrcnn_pp.inference.predictor.Predictor`) takes each input through
its ``prepare_file`` -> ``run`` -> ``write`` steps; this module only chooses the inputs, the
ids and the folder. Under the output folder, per input ``<name>``, the predictor writes
``labels/``, ``probabilities/`` and ``overlays/`` files (:mod:`.outputs`), and here:

* ``run.json``: the run's settings (the predictor's thresholds and tiling, what is written,
  the config, the hash of the weights or exported graph), written before the first outputs;
* ``results.jsonl``: one line per finished image (its index entry, its COCO results, and the
  identity of its input file: path, size, modification time), appended as each image is
  done, so a crash loses only the image in progress and ``resume`` skips the images already
  there. At the end the lines are merged into ``coco_instances_results.json`` (models with
  COCO results) and ``images.json`` (the COCO ``images`` list and categories that map
  results' ``image_id`` to files).

A folder that holds an earlier run is refused unless it is resumed (same settings, same
input files, checked first) or overwritten (its earlier outputs removed first, so none is
left orphaned).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from detectron2.config import CfgNode
from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import config_value
from ..data.image_io import IMAGE_EXTENSIONS, UnreadableImageError, nifti_stem
from ..data.validation import check_coco_results
from ..evaluation.nuclei import load_coco_ground_truth
from ..utils.errors import UserError
from ..utils.io import (
    PathLike,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    cut_json_lines,
    fsync_folder,
)
from ..utils.progress import ProgressBar
from .instance import COCO_RESULTS_FILE
from .outputs import OUTPUT_FOLDERS, WriteOptions
from .predictor import Predictor

__all__ = [
    "InputImage", "find_inputs", "split_config_overrides", "image_ids_from_coco",
    "WriteOptions", "PredictionRun", "predict_files", "check_earlier_outputs", "RESULTS_FILE",
    "IMAGES_INDEX_FILE", "PROGRESS_FILE", "RUN_FILE",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = COCO_RESULTS_FILE
IMAGES_INDEX_FILE = "images.json"
PROGRESS_FILE = "results.jsonl"
RUN_FILE = "run.json"
RUN_FILE_VERSION = 1
# An image needing at least this many network calls gets a line with the count first.
MANY_STEPS = 100
# Settings that change no prediction, so a resumed run may differ in them.
_UNCOMPARED_SETTINGS = ("write.overlays", "config.MODEL.WEIGHTS")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """A file to predict on; ``name`` is its path relative to the folder it was found in
    (its file name when given directly), and names the output files."""

    path: Path
    name: str

    @property
    def stem(self) -> str:
        """``name`` without its extension (both parts of ``.nii.gz``)."""
        return (Path(self.name).parent / nifti_stem(self.name)).as_posix()

    def identity(self) -> dict[str, Any]:
        """What tells this file from another of the same name: its absolute path, size and
        modification time."""
        stat = self.path.stat()
        return {"path": str(self.path.resolve()), "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}


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


_MISSING = object()


def split_config_overrides(tokens: Sequence[str], cfg: CfgNode) -> tuple[list[str], list[str]]:
    """Split ``INPUT... [KEY VALUE...]``: overrides start at the first token that is a key
    of ``cfg`` (like ``MODEL.DEVICE``) and not an existing path."""
    for index, token in enumerate(tokens):
        if ("." in token and not os.path.exists(token)
                and config_value(cfg, token, _MISSING) is not _MISSING):
            return list(tokens[:index]), list(tokens[index:])
    return list(tokens), []


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


# --------------------------------------------------------------------------- the run record


@dataclass
class PredictionRun:
    """What :func:`predict_files` wrote, resumed and skipped."""

    output_dir: Path
    images: list[dict] = field(default_factory=list)        # the images index entries
    num_instances: int = 0
    resumed: int = 0
    skipped: list[str] = field(default_factory=list)        # "path: problem"


def _earlier_outputs(output_dir: Path) -> list[Path]:
    """The files an earlier prediction left in ``output_dir``."""
    files = [output_dir / name for name in (RUN_FILE, PROGRESS_FILE, RESULTS_FILE,
                                            IMAGES_INDEX_FILE)]
    found = [path for path in files if path.exists()]
    for folder in OUTPUT_FOLDERS:
        if (output_dir / folder).is_dir():
            found += sorted(p for p in (output_dir / folder).rglob("*") if p.is_file())
    return found


def check_earlier_outputs(output_dir: PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a folder holding an earlier prediction unless it is resumed
    or overwritten, and asking for both."""
    if resume and overwrite:
        raise UserError("--resume continues an earlier run, --overwrite replaces it: give one")
    output_dir = Path(output_dir)
    earlier = _earlier_outputs(output_dir) if output_dir.is_dir() else []
    if earlier and not (resume or overwrite):
        shown = ", ".join(p.relative_to(output_dir).as_posix() for p in earlier[:3])
        more = f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""
        raise UserError(f"{output_dir} holds an earlier prediction ({shown}{more}); --resume "
                        "continues it, --overwrite replaces it")


def _remove_earlier_outputs(output_dir: Path) -> None:
    for path in _earlier_outputs(output_dir):
        path.unlink()
    for folder in OUTPUT_FOLDERS:
        if (output_dir / folder).is_dir():
            for sub in sorted((output_dir / folder).rglob("*"), reverse=True):
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
    fsync_folder(output_dir)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": value}``."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_settings(predictor: Predictor, options: WriteOptions,
                  image_ids: Optional[Mapping[str, int]]) -> dict[str, Any]:
    """Everything that decides what a run writes, flat and as JSON reads it back."""
    settings = {**predictor.settings(), **_flat(asdict(options), "write"),
                "image_ids": "given" if image_ids is not None else "input order"}
    for what, path in predictor.source.items():
        settings[f"{what} sha256"] = _file_sha256(path)
    if predictor.cfg is not None:
        settings.update(_flat(predictor.cfg, "config"))
    return json.loads(json.dumps(settings))


def settings_change(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    keys = sorted((recorded.keys() | settings.keys()) - set(_UNCOMPARED_SETTINGS))
    return [f"{key} {recorded.get(key, '(none)')!s} -> {settings.get(key, '(none)')!s}"
            for key in keys if recorded.get(key, _MISSING) != settings.get(key, _MISSING)]


def check_resumable(run_file: Path, settings: Mapping[str, Any], *,
                    version: int = RUN_FILE_VERSION, what: str = "run",
                    redo: str = "everything", folder: Optional[Path] = None) -> None:
    """Refuse to resume a run (of images, or of a slide: ``what``) made with other settings,
    or one without a record of them (``run_file``, written when it started); ``folder``
    is the output folder the messages name (default: the record's)."""
    folder = folder or run_file.parent
    try:
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--resume: {folder} has results but no {run_file.name} saying how "
                        f"they were made; --overwrite predicts {redo} again") from None
    except (OSError, ValueError) as err:
        raise UserError(f"--resume: {run_file} cannot be read ({err}); --overwrite predicts "
                        f"{redo} again") from None
    if not (isinstance(recorded, dict) and recorded.get("version") == version
            and isinstance(recorded.get("settings"), dict)):
        raise UserError(f"--resume: {run_file} is not a {what} record of this version; "
                        f"--overwrite predicts {redo} again")
    changes = settings_change(recorded["settings"], settings)
    if changes:
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        raise UserError(f"--resume: {folder} was predicted with other settings: "
                        f"{'; '.join(changes[:3])}{more}; predict into another folder, or "
                        "--overwrite")


# --------------------------------------------------------------------------- records


def _record_problem(record: Any, category_ids: Sequence[Any], where: str) -> Optional[str]:
    """What is wrong with one line of ``results.jsonl``, or None; COCO results are checked
    as ``tools/eval_nuclei.py`` checks its input."""
    if not (isinstance(record, dict) and isinstance(record.get("image"), dict)):
        return "not a prediction record ({'image': ..., 'results': [...], 'source': ...})"
    image, source = record["image"], record.get("source")
    if not isinstance(image.get("file_name"), str):
        return "its image has no file_name"
    if not all(isinstance(image.get(k), int) and not isinstance(image.get(k), bool)
               and image[k] > 0 for k in ("height", "width")):
        return f"image {image['file_name']} has no positive integer height and width"
    if not (isinstance(source, dict) and isinstance(source.get("path"), str)
            and all(isinstance(source.get(k), int) for k in ("bytes", "mtime_ns"))):
        return f"image {image['file_name']} has no source file identity"
    try:
        check_coco_results(record.get("results"), {image.get("id"): image}, category_ids,
                           where)
    except UserError as err:
        return str(err)
    return None


def _read_records(progress_file: Path, category_ids: Sequence[Any]) -> dict[str, dict]:
    """The valid records of ``results.jsonl`` by file name. A line cut short by a kill ends
    the file there; a line that is not a valid record is dropped from the file, with a
    warning naming it, so its image (if it names one) is predicted again."""
    done: dict[str, dict] = {}
    lines, dropped = [], 0
    for number, record in enumerate(cut_json_lines(progress_file), start=1):
        where = f"{progress_file} line {number}"
        problem = _record_problem(record, category_ids, where)
        if problem:
            dropped += 1
            image = record.get("image") if isinstance(record, dict) else None
            again = (f"; {image['file_name']} is predicted again" if isinstance(image, dict)
                     and isinstance(image.get("file_name"), str) else "")
            logger.warning("%s dropped: %s%s", where, problem.removeprefix(f"{where}: "),
                           again)
            continue
        done[record["image"]["file_name"]] = record
        lines.append(json.dumps(record) + "\n")
    if dropped:
        atomic_write_text(progress_file, "".join(lines))
    return done


def _check_same_inputs(done: Mapping[str, dict], images: Sequence[InputImage],
                       ids: Mapping[str, Any], output_dir: Path) -> None:
    """Refuse to resume when a finished image's file or id is not this run's."""
    for item in images:
        record = done.get(item.name)
        if record is None:
            continue
        was, now = record["source"], item.identity()
        change = next((f"{what} {was[key]}, now {now[key]}" for key, what in
                       (("path", "path"), ("bytes", "size in bytes")) if was[key] != now[key]),
                      "modified since" if was["mtime_ns"] != now["mtime_ns"] else None)
        if change:
            raise UserError(f"--resume: input {item.name} is not the file {output_dir} was "
                            f"predicted from ({change}); predict into another folder, or "
                            "--overwrite")
        if record["image"]["id"] != ids[item.name]:
            raise UserError(f"--resume: input {item.name} had image id "
                            f"{record['image']['id']}, now {ids[item.name]} (the inputs or "
                            "--gt changed); predict into another folder, or --overwrite")


def _append_line(progress_file: Path, record: dict) -> None:
    with open(progress_file, "a", encoding="utf-8") as lines:
        lines.write(json.dumps(record) + "\n")
        lines.flush()
        os.fsync(lines.fileno())


def _iterate(images: Sequence[InputImage], progress: bool) -> Iterator[InputImage]:
    with logging_redirect_tqdm():
        yield from ProgressBar(images, desc="predict", unit="image", disable=not progress)


def predict_files(predictor: Predictor, images: Sequence[InputImage], output_dir: PathLike,
                  metadata: Any = None, image_ids: Optional[Mapping[str, int]] = None,
                  options: Optional[WriteOptions] = None, resume: bool = False,
                  overwrite: bool = False, progress: bool = True) -> PredictionRun:
    """Predict every file and write the outputs of the module docstring.

    Ids are ``image_ids[name]`` or 1, 2, ... in input order. A folder holding an earlier run
    is refused unless ``resume`` (same settings and input files, else refused naming what
    changed) or ``overwrite`` (its earlier outputs are removed first). Unreadable, empty,
    wrong-format or degenerate files (no finite pixel, no contrast) are skipped with a
    warning naming them; if none succeeds, :class:`UserError` is raised and the merged JSON
    files are not written.
    """
    options = options or WriteOptions()
    output_dir = check_output_dir(output_dir, "output folder")
    check_earlier_outputs(output_dir, resume, overwrite)
    progress_file = output_dir / PROGRESS_FILE
    categories = predictor.categories(metadata)
    ids = dict(image_ids) if image_ids is not None else {
        item.name: number for number, item in enumerate(images, start=1)}
    settings = run_settings(predictor, options, image_ids)
    done: dict[str, dict] = {}
    if resume and progress_file.exists():
        check_resumable(output_dir / RUN_FILE, settings)
        done = _read_records(progress_file, [c["id"] for c in categories])
        _check_same_inputs(done, images, ids, output_dir)
    elif overwrite:
        _remove_earlier_outputs(output_dir)
    recorded = bool(done)      # run.json is written before this run's first outputs
    run = PredictionRun(output_dir)
    for item in _iterate(images, progress):
        if item.name in done:
            run.resumed += 1
            continue
        try:
            prepared = predictor.prepare_file(item.path, options.page, options.channel)
        except UnreadableImageError as err:
            run.skipped.append(str(err))
            logger.warning("skipped %s", err)
            continue
        steps = predictor.steps(prepared)
        if steps >= MANY_STEPS:
            logger.info("%s: %d tiles to predict", item.name, steps)
        result = predictor.run(prepared)
        if not recorded:
            atomic_write_json(output_dir / RUN_FILE,
                              {"version": RUN_FILE_VERSION, "settings": settings}, indent=1)
            recorded = True
        size, results = predictor.write(result, prepared, output_dir, item.stem,
                                        ids[item.name], categories, options)
        entry = {"id": ids[item.name], "file_name": item.name, "path": str(item.path), **size}
        done[item.name] = {"image": entry, "results": results, "source": item.identity()}
        _append_line(progress_file, done[item.name])
    fsync_folder(output_dir)
    finished = [done[item.name] for item in images if item.name in done]
    if not finished:
        raise UserError(f"none of the {len(images)} inputs could be read; first: "
                        f"{run.skipped[0] if run.skipped else 'no inputs'}")
    run.images = [record["image"] for record in finished]
    run.num_instances = sum(len(record["results"]) for record in finished)
    if predictor.results_file:
        atomic_write_json(output_dir / predictor.results_file,
                          [r for record in finished for r in record["results"]])
    atomic_write_json(output_dir / IMAGES_INDEX_FILE,
                      {"images": run.images, "categories": categories}, indent=1)
    return run
