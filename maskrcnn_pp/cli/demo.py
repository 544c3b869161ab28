"""`make demo`: Mask R-CNN++ trained and evaluated on embedded synthetic nuclei, on the CPU.

    tools/demo.py --output output/demo [--retrain]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maskrcnn_pp.utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("output/demo"))
    parser.add_argument("--retrain", action="store_true", help="train again from scratch")
    args = parser.parse_args(argv)
    from maskrcnn_pp.studies.demo import run_demo

    summary = run_demo(args.output, retrain=args.retrain)
    print("\nDemo finished. Segm AP on nuclei_synthetic_val: trained "
          f"{summary['trained']['segm']['AP']:.1f} vs untrained "
          f"{summary['untrained']['segm']['AP']:.1f}")
    print(json.dumps({k: summary["trained"].get("nuclei", {}).get(k)
                      for k in ("dsb_map", "aji", "dice", "iou", "f1_50")}, indent=1))
    print(f"Look at:\n  {args.output / 'metrics.json'}\n  {args.output / 'vis'}/*.png\n"
          f"  {args.output / 'training_curve.png'}\n"
          f"  tensorboard --logdir {args.output / 'train'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
