#!/usr/bin/env python
"""Predict nuclei: overlays, uint16 instance label images and COCO results for any images.

    python tools/predict.py --config-file configs/mask_rcnn_pp.yaml \\
        --weights output/mask_rcnn_pp/model_final.pth images/ extra.tif --output out/ \\
        [--score-thresh 0.5] [--tile-size N] [--tile-overlap N] [--gt GT.json] [KEY VALUE ...]

INPUTs are PNG, JPEG or TIFF files (8/16-bit, grayscale, RGB, RGBA) or folders searched for
them. Images larger than the tile size run as overlapping tiles whose nuclei are merged
across seams. Config overrides (``MODEL.DEVICE cpu``) may follow the inputs. With
``--gt`` the results use that COCO file's image ids, so ``tools/eval_nuclei.py --gt GT.json
--pred out/coco_instances_results.json`` scores them. See ``maskrcnn_pp.engine.predictor``.
"""
from __future__ import annotations

import argparse
import logging

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from maskrcnn_pp.config import add_maskrcnn_pp_config
from maskrcnn_pp.engine.predictor import (
    NucleiPredictor,
    find_images,
    image_ids_from_coco,
    predict_images,
    split_config_overrides,
)
from maskrcnn_pp.engine.trainer import load_config
from maskrcnn_pp.utils.errors import UserError, exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Config overrides (KEY VALUE ...) may follow the inputs.")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="model weights (.pth written by tools/train_net.py)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files or folders (PNG, JPEG, TIFF)")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="keep detections scoring at least this; default 0.5")
    parser.add_argument("--tile-size", type=int, metavar="N",
                        help="side of the square tiles; default INPUT.MIN_SIZE_TEST")
    parser.add_argument("--tile-overlap", type=int, metavar="N",
                        help="pixels shared by neighbouring tiles, larger than a nucleus; "
                             "default a quarter of the tile size")
    parser.add_argument("--gt", metavar="GT.json",
                        help="use this COCO file's image ids (matched by file name)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="allow weights that need full unpickling (e.g. legacy .pkl): this "
                             "can run arbitrary code, use trusted files only")
    return parser.parse_intermixed_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    inputs, opts = split_config_overrides(args.inputs, add_maskrcnn_pp_config(get_cfg()))
    if not inputs:
        raise UserError("no INPUT image or folder given before the config overrides")
    images = find_images(inputs)
    cfg = load_config(args.config_file, opts)
    image_ids = image_ids_from_coco(args.gt, images) if args.gt else None
    predictor = NucleiPredictor.from_config(
        cfg, args.weights, allow_unsafe_pickle=args.allow_unsafe_pickle,
        score_thresh=args.score_thresh, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap)
    datasets = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    metadata = MetadataCatalog.get(datasets[0]) if datasets else None
    run = predict_images(predictor, images, args.output, metadata, image_ids)
    skipped = f", {len(run.skipped)} skipped" if run.skipped else ""
    print(f"{len(run.images)} images, {run.num_instances} nuclei{skipped}: {run.output_dir}")


if __name__ == "__main__":
    main()
