"""Items 4 and 7 of the claim at full width on one GPU, within about 8 minutes.

    make gpu-study                                  # = tools/gpu_study.py --doc docs/results.md
    tools/gpu_study.py --dry-run --doc /tmp/x.md    # the same code path on the CPU, tiny

Prepares DSB2018 and its nuclei patches from $MASKRCNN_PP_DATA where missing, trains and
evaluates configs/studies/dsb2018_claim_gpu.yaml and nuclei_semantic_claim_gpu.yaml side by
side on the GPU, and writes the GPU section of the document (between its gpu-study markers).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from maskrcnn_pp.utils.errors import UserError, exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, help="write the section into this Markdown file")
    p.add_argument("--data", type=Path, default=os.environ.get("MASKRCNN_PP_DATA"),
                   help="folder of dsb2018_stage1_train.tar.gz (default: $MASKRCNN_PP_DATA)")
    p.add_argument("--output", type=Path, default=Path("output/studies"),
                   help="where the studies' runs and reports go")
    p.add_argument("--dry-run", action="store_true",
                   help="the same code path on the CPU: 6 images, 1 seed, 2 iterations")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.data is None:
        raise UserError("--data (or $MASKRCNN_PP_DATA) must name the folder of "
                        "dsb2018_stage1_train.tar.gz")
    from maskrcnn_pp.studies.gpu_study import run_gpu_study

    print(run_gpu_study(args.doc, args.data, dry_run=args.dry_run, output=args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
