"""Predict with any trained model: label images, overlays, COCO results, probability maps.

    python tools/predict.py --config-file configs/mask_rcnn_pp.yaml \\
        --weights output/mask_rcnn_pp/model_final.pth images/ extra.tif --output out/ \\
        [--score-thresh 0.5] [--tile-size N] [--tile-overlap N] [--gt GT.json] \\
        [--resume | --overwrite] [KEY VALUE ...]
    python tools/predict.py --config-file configs/semantic/nodule_unetpp.yaml \\
        --weights model_final.pth scans/ --output out/ --probabilities
    python tools/predict.py --exported export/model.ts images/ --output out/
    python tools/predict.py --config-file configs/mask_rcnn_pp.yaml --weights model.pth \
        slides/*.svs --output out/ [--workers N | --scheduler tcp://HOST:PORT] \
        [--resume] [--no-tissue-mask | --tissue-mask MASK.png] [--strict]

Works for Mask R-CNN++, the baseline and the semantic UNet++ / U-Net (2D images; 3D models
take NIfTI volumes, with sliding windows over volumes larger than the training patch).
INPUTs are PNG, JPEG or TIFF files (8/16-bit, float, gray, RGB, RGBA; multi-page TIFFs with
--page) or NIfTI volumes, or folders searched for them. Label images are TIFF (uint16, or
uint32 beyond 65,535 instances; --label-format png for PNG) or NIfTI with the input's
affine. Results are appended per image (results.jsonl), so --resume continues a run
that stopped (with the same settings and input files, recorded in run.json); an output
folder holding an earlier run is refused unless --resume or --overwrite is given. Where
instances overlap, the higher score keeps the pixels, and an instance left with less than
--min-visible-fraction of its mask is dropped, so the label image and the results list the
same instances. Config overrides (``MODEL.DEVICE cpu``) may follow the inputs. With --gt the
results use that COCO file's image ids, so ``tools/eval_nuclei.py --gt GT.json --pred
out/coco_instances_results.json`` scores them. See ``maskrcnn_pp.inference``.

Whole slides (SVS, NDPI, MRXS, ..., OME-TIFF, pyramidal TIFF) are predicted block by block
in bounded memory, each into ``out/<slide>/``: an OME-Zarr label pyramid, a GeoJSON of the
nuclei for QuPath, a per-nucleus table and an overview picture; see
``maskrcnn_pp.inference.slide``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
from pathlib import Path

from maskrcnn_pp.cli.arguments import (
    add_model_arguments,
    add_score_threshold_argument,
    add_tiling_arguments,
    add_unsafe_pickle_argument,
)
from maskrcnn_pp.utils.errors import UserError, check_finite, exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir

# The library's defaults and choices that --help shows, repeated here so that --help answers
# before torch loads (their modules import it); tests/tools/test_help_is_fast.py keeps each
# equal to the library's.
HELP_VALUES = {
    "maskrcnn_pp.inference.instance.MIN_VISIBLE_FRACTION": 0.5,
    "maskrcnn_pp.inference.outputs.LABEL_FORMATS": ("tif", "png"),
    "maskrcnn_pp.inference.slide.DEFAULT_BLOCK_SIZE": 4096,
    "maskrcnn_pp.data.slide.SLIDE_BACKENDS": ("auto", "tifffile", "openslide"),
}
MIN_VISIBLE_FRACTION, LABEL_FORMATS, DEFAULT_BLOCK_SIZE, SLIDE_BACKENDS = HELP_VALUES.values()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Config overrides (KEY VALUE ...) may follow the inputs.")
    model = parser.add_argument_group("model: --config-file and --weights, or --exported")
    add_model_arguments(model)
    model.add_argument("--exported", metavar="FILE",
                       help="an exported model.ts / model.onnx (tools/export_model.py)")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, NIfTI volumes, whole slides or folders of them")
    parser.add_argument("--output", required=True, metavar="DIR")
    add_score_threshold_argument(parser, "instances: keep detections scoring at least this")
    parser.add_argument("--min-visible-fraction", type=float, default=MIN_VISIBLE_FRACTION,
                        metavar="F",
                        help="instances: where masks overlap the higher score keeps the "
                             "pixels; drop an instance left with less than this fraction of "
                             f"its mask; default {MIN_VISIBLE_FRACTION}")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="semantic: foreground probability threshold; default 0.5")
    parser.add_argument("--level", type=int, metavar="J",
                        help="UNet++ inference level (0 accurate, J the pruned output J) of a "
                             "semantic UNet++ or the Mask R-CNN++ mask head")
    add_tiling_arguments(parser)
    parser.add_argument("--page", type=int, metavar="K",
                        help="the image of multi-page TIFFs to use (0-based; other formats "
                             "hold one image)")
    parser.add_argument("--channel", type=int, metavar="C",
                        help="use this channel of colour images, as gray (0-based)")
    parser.add_argument("--label-format", choices=LABEL_FORMATS, default="tif",
                        help="label image format; default tif")
    parser.add_argument("--probabilities", action="store_true",
                        help="semantic: also write the probability maps")
    parser.add_argument("--no-overlays", action="store_true", help="write no overlay PNGs")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output (same settings and input files), "
                             "skipping the inputs it holds results for")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier run in --output, removing its outputs")
    parser.add_argument("--gt", metavar="GT.json",
                        help="use this COCO file's image ids (matched by file name)")
    parser.add_argument("--device", help="MODEL.DEVICE, e.g. cpu or cuda")
    add_unsafe_pickle_argument(parser)
    slides = parser.add_argument_group("whole slides (SVS, NDPI, MRXS, OME-TIFF, pyramidal TIFF)")
    slides.add_argument("--workers", type=int, metavar="N",
                        help="predict blocks in N processes (a local dask cluster)")
    slides.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="predict blocks on this running dask cluster (its workers must "
                             "reach the slides, the model files and this package)")
    slides.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, metavar="N",
                        help=f"block side in model pixels; default {DEFAULT_BLOCK_SIZE}")
    slides.add_argument("--block-margin", type=int, metavar="N",
                        help="context read around each block, at least the largest nucleus "
                             "(model pixels); default the tile overlap")
    mask = slides.add_mutually_exclusive_group()
    mask.add_argument("--no-tissue-mask", action="store_true",
                      help="predict every block, background too")
    mask.add_argument("--tissue-mask", metavar="IMAGE",
                      help="predict the blocks this mask image (nonzero: tissue, any size of "
                           "the slide's aspect ratio) marks, instead of Otsu's tissue mask")
    slides.add_argument("--slide-pixel-size", type=float, metavar="UM",
                        help="micrometres per level-0 pixel, for slides that do not say it")
    slides.add_argument("--slide-backend", choices=SLIDE_BACKENDS, default="auto",
                        help="slide reader: tifffile (TIFF, OME-TIFF), openslide (vendor "
                             "formats), auto; default auto")
    slides.add_argument("--coco", action="store_true",
                        help="also write COCO results (polygon masks) per slide")
    slides.add_argument("--strict", action="store_true",
                        help="stop at a block that cannot be read instead of skipping it")
    return parser.parse_intermixed_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from detectron2.config import get_cfg

    from maskrcnn_pp.config import add_maskrcnn_pp_config
    from maskrcnn_pp.data.image_io import IMAGE_EXTENSIONS, NIFTI_SUFFIXES
    from maskrcnn_pp.data.slide import OPENSLIDE_EXTENSIONS, is_slide_file
    from maskrcnn_pp.inference import EXPORTED_SUFFIXES, load_predictor
    from maskrcnn_pp.inference.batch import (
        check_earlier_outputs,
        find_inputs,
        image_ids_from_coco,
        predict_files,
        split_config_overrides,
    )
    from maskrcnn_pp.inference.outputs import WriteOptions
    from maskrcnn_pp.inference.predictor import check_unit_interval

    logging.basicConfig(format="%(levelname)s: %(message)s")
    logging.getLogger("maskrcnn_pp.inference").setLevel(logging.INFO)   # the tile counts
    if bool(args.exported) == bool(args.config_file or args.weights):
        raise UserError("give --config-file and --weights, or --exported alone")
    if args.exported and not args.exported.endswith(EXPORTED_SUFFIXES):
        raise UserError(f"--exported {args.exported}: expected a "
                        f"{' or '.join(EXPORTED_SUFFIXES)} file")
    if args.config_file and not args.weights:
        raise UserError("--weights is required with --config-file")
    for value, flag in ((args.score_thresh, "--score-thresh"), (args.threshold, "--threshold"),
                        (args.min_visible_fraction, "--min-visible-fraction")):
        check_unit_interval(check_finite(value, flag), flag)
    inputs, opts = split_config_overrides(args.inputs, add_maskrcnn_pp_config(get_cfg()))
    if not inputs:  # INPUT is optional for argparse, so this is the one message for it
        raise UserError("no INPUT file or folder given (before any config overrides)")
    if opts and args.exported:
        raise UserError("config overrides need --config-file, not --exported")
    options = WriteOptions(label_format=args.label_format, overlays=not args.no_overlays,
                           probabilities=args.probabilities, page=args.page,
                           channel=args.channel)
    images = find_inputs(inputs, (*IMAGE_EXTENSIONS, *NIFTI_SUFFIXES, *OPENSLIDE_EXTENSIONS))
    load_options = dict(opts=opts, device=args.device, level=args.level,
                        score_thresh=args.score_thresh, threshold=args.threshold,
                        tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                        min_visible_fraction=args.min_visible_fraction,
                        allow_unsafe_pickle=args.allow_unsafe_pickle)
    slides = [item for item in images if is_slide_file(item.path)]
    if slides:
        return _predict_slides(args, images, slides, load_options)
    check_output_dir(args.output, "--output")
    check_earlier_outputs(args.output, args.resume, args.overwrite)
    image_ids = image_ids_from_coco(args.gt, images) if args.gt else None
    predictor = load_predictor(args.exported or args.config_file, args.weights,
                               progress=True, **load_options)
    run = predict_files(predictor, images, args.output, _metadata(predictor), image_ids, options,
                        resume=args.resume, overwrite=args.overwrite)
    what = f"{run.num_instances} instances" if predictor.kind == "instance" else "label maps"
    resumed = f", {run.resumed} already done" if run.resumed else ""
    skipped = f", {len(run.skipped)} skipped" if run.skipped else ""
    print(f"{len(run.images)} inputs, {what}{resumed}{skipped}: {run.output_dir}")


def _metadata(predictor):
    """The class names of the model's data set, if it is registered."""
    from detectron2.data import MetadataCatalog

    datasets = [*predictor.cfg.DATASETS.TEST, *predictor.cfg.DATASETS.TRAIN]
    return (MetadataCatalog.get(datasets[0])
            if datasets and datasets[0] in MetadataCatalog.list() else None)


@contextlib.contextmanager
def _cluster(args):
    """The dask client of --workers or --scheduler (None: blocks run in this process), and
    the torch threads of each worker."""
    if args.workers is not None and args.scheduler:
        raise UserError("--workers starts a local cluster, --scheduler uses a running one: "
                        "give one")
    if args.workers is not None:
        from maskrcnn_pp.inference.slide import local_cluster

        with local_cluster(args.workers) as client:
            yield client, max(1, (os.cpu_count() or 1) // args.workers)
    elif args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout=30)
        except (OSError, ValueError) as err:
            raise UserError(f"--scheduler {args.scheduler}: cannot connect ({err})") from None
        with client:
            yield client, None
    else:
        yield None, None


def _predict_slides(args, inputs, slides, load_options) -> None:
    """Each slide block by block into ``--output/<slide name>/``."""
    from maskrcnn_pp.data.slide import open_slide, slide_stem
    from maskrcnn_pp.inference import load_predictor
    from maskrcnn_pp.inference.slide import predict_slide

    if len(slides) != len(inputs):
        image = next(item for item in inputs if item not in slides)
        raise UserError(f"the inputs mix whole slides ({slides[0].name}) and images "
                        f"({image.name}); predict them in separate runs")
    for flag, value in (("--gt", args.gt), ("--page", args.page),
                        ("--probabilities", args.probabilities)):
        if value not in (None, False):
            raise UserError(f"{flag} applies to images, not to whole slides")
    check_output_dir(args.output, "--output")
    for item in slides:     # each opens (cheap) before the model is built
        open_slide(item.path, args.slide_backend).close()
    model = args.exported or args.config_file
    predictor = load_predictor(model, args.weights, **load_options)
    loader = functools.partial(load_predictor, model, args.weights, **load_options)
    tissue_mask = False if args.no_tissue_mask else (args.tissue_mask or True)
    with _cluster(args) as (client, threads):
        for item in slides:
            run = predict_slide(
                loader if client is not None else predictor, item.path,
                Path(args.output) / Path(item.name).parent / slide_stem(item.name),
                metadata=_metadata(predictor),
                block_size=args.block_size, block_margin=args.block_margin,
                tissue_mask=tissue_mask, slide_pixel_size_um=args.slide_pixel_size,
                channel=args.channel, backend=args.slide_backend, coco=args.coco,
                overview=not args.no_overlays, resume=args.resume, overwrite=args.overwrite,
                strict=args.strict, client=client, worker_threads=threads)
            done = "already done" if run.already_done else (
                f"{run.tissue_blocks} of {run.blocks} blocks with tissue"
                + (f", {run.resumed_blocks} done before" if run.resumed_blocks else ""))
            skipped = (f", {len(run.skipped)} blocks skipped (unreadable; listed in "
                       "slide.json)" if run.skipped else "")
            print(f"{item.name}: {run.instances} nuclei, {done}{skipped}: {run.folder}")


if __name__ == "__main__":
    main()
