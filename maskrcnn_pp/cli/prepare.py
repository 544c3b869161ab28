"""The one command line of every data preparer (``datasets/prepare_<name>.py``)::

    prepare_<name>.py SRC [OUT] [--val-fraction F [--keep-in-train COCO_JSON] | --split NAME]
                      [--seed S] [--strict] [the preparer's own flags]

SRC is the source folder or archive, OUT the data set folder, replaced whole when the run
succeeds (default ``$DETECTRON2_DATASETS/<the preparer's folder>``). The spelling of the
earlier semantic preparers, ``--source SRC --output ROOT`` (OUT = ``ROOT/<folder>``), still
works for one release, with a ``FutureWarning`` on one line.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Callable

from maskrcnn_pp.data.catalog import datasets_root
from maskrcnn_pp.data.prepare.base import PreparationReport, Preparer, SplitPlan
from maskrcnn_pp.utils.errors import UserError, exit_on_user_error
from maskrcnn_pp.utils.io import check_output_dir

__all__ = ["preparer_parser", "preparer_main"]


def preparer_parser(preparer: type[Preparer]) -> argparse.ArgumentParser:
    """The flags every preparer takes, then the preparer's own."""
    parser = argparse.ArgumentParser(
        description=f"{preparer.description}. Bad files are skipped and named on stderr and "
                    "in OUT/report.json; --strict makes any of them an error (exit code 2).")
    parser.add_argument("src", nargs="?", metavar="SRC", help=preparer.source_help)
    parser.add_argument("out", nargs="?", metavar="OUT",
                        help="the data set folder to write, replaced whole when the run "
                             "succeeds (default: $DETECTRON2_DATASETS/"
                             f"{preparer.folder})")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help=f"{preparer.val_help}, in [0, 1) (default "
                             f"{preparer.val_fraction})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--keep-in-train", metavar="COCO_JSON",
                        help="the images of this COCO file never enter the validation split, "
                             "which keeps the size --val-fraction of all images gives (a "
                             "second split disjoint from an earlier one's validation set)")
    parser.add_argument("--split", metavar="NAME",
                        help="instance data sets: put every item in this one split instead "
                             "(e.g. test: annotations/instances_test.json, registered as "
                             "OUT_test), for a set used for evaluation only; needs OUT")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 2 if any item is skipped or any file left out "
                             "(OUT then holds only report.json)")
    parser.add_argument("--source", help="deprecated: give SRC")
    parser.add_argument("--output", metavar="ROOT",
                        help="deprecated: give OUT (the data set folder; --output ROOT meant "
                             "ROOT/<folder>)")
    preparer.add_arguments(parser)
    return parser


def _deprecated(message: str) -> None:
    """A ``FutureWarning`` printed on one line (Python's default adds a source line)."""
    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"{category.__name__}: {message}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        warnings.warn(message, FutureWarning, stacklevel=3)


def _source(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    if args.source is None:
        if args.src is None:
            parser.error("the following arguments are required: SRC")
        return Path(args.src)
    if args.src is not None and args.out is not None:
        raise UserError("SRC given twice: as an argument and as --source")
    _deprecated("--source is deprecated: give the source as the first argument, SRC")
    # with --source, one positional argument is OUT
    args.out = args.out if args.out is not None else args.src
    return Path(args.source)


def _output(args: argparse.Namespace, preparer: Preparer, source: Path) -> Path:
    """OUT, checked writable before any slow work."""
    if args.split and args.out is None:
        raise UserError("--split needs OUT, the folder of the new data set (the default "
                        f"{datasets_root() / preparer.folder_name(source)} holds the "
                        "train/val one)")
    if args.output is not None:
        if args.out is not None:
            raise UserError("OUT given twice: as an argument and as --output")
        out = Path(args.output) / preparer.folder_name(source)
        _deprecated(f"--output is deprecated: give the data set folder as OUT (here {out})")
        check_output_dir(args.output, "--output")
        return out
    out = (Path(args.out) if args.out is not None
           else datasets_root() / preparer.folder_name(source))
    existed = out.exists()
    check_output_dir(out, "OUT")
    if not existed:  # it appears when the run succeeds, not before
        out.rmdir()
    return out


def preparer_main(preparer: type[Preparer]) -> Callable[[list[str] | None], PreparationReport]:
    """The ``main(argv)`` of ``datasets/prepare_<name>.py``: parse, check the plan and OUT
    before any work, prepare, print one summary line."""

    @exit_on_user_error
    def main(argv: list[str] | None = None) -> PreparationReport:
        parser = preparer_parser(preparer)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        instance = preparer(**preparer.settings_from(args))
        source = _source(args, parser)
        plan = SplitPlan.of(args.val_fraction, preparer.val_fraction, args.seed, args.split,
                            args.keep_in_train)
        instance.check_plan(plan)
        out = _output(args, instance, source)
        report = instance.prepare(source, out, plan, strict=args.strict)
        print(instance.summary(report))
        return report

    return main
