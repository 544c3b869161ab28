#!/usr/bin/env python
"""Speed, size and memory of Mask R-CNN++ vs Mask R-CNN and of the semantic networks.

    tools/benchmark.py --group mask_rcnn --output docs/bench     # 256 px, batch 2
    tools/benchmark.py --group semantic --output docs/bench      # 96 px, batch 8
    tools/benchmark.py --device cuda ...                         # on a GPU
    tools/benchmark.py --group throughput --doc docs/benchmarks.md   # images/s, AMP on CUDA

Writes ``<group>_<device>.md`` and ``.json`` under --output; prints the table.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from maskrcnn_pp.engine import benchmark
from maskrcnn_pp.studies import throughput
from maskrcnn_pp.utils.errors import UserError, exit_on_user_error
from maskrcnn_pp.utils.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", choices=("mask_rcnn", "semantic", "throughput"), required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--size", type=int, help="input size (default 256 / 96)")
    p.add_argument("--batch", type=int, help="batch size (default 2 / 8)")
    p.add_argument("--pp-config", default=str(ROOT / "configs" / "mask_rcnn_pp.yaml"))
    p.add_argument("--baseline-config", default=str(ROOT / "configs" / "mask_rcnn_baseline.yaml"))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "bench")
    p.add_argument("--doc", type=Path, help="throughput: also write the table into this "
                   "Markdown file, between the gpu-check markers")
    return p.parse_args(argv)


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available")
    if args.group == "throughput":
        return _throughput(args)
    if args.group == "mask_rcnn":
        cands = benchmark.mask_rcnn_group(args.pp_config, args.baseline_config,
                                          size=args.size or 256, batch=args.batch or 2,
                                          device=args.device)
    else:
        cands = benchmark.semantic_group(size=args.size or 96, batch=args.batch or 8,
                                         device=args.device)
    rows = benchmark.run_group(cands, device=args.device, repeats=args.repeats,
                               memory=not args.no_memory,
                               progress=lambda m: print(m, file=sys.stderr, flush=True))
    table = benchmark.markdown_table(rows)
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    header = (f"Machine: {machine_description(args.device)}; torch {torch.__version__}; "
              f"command: `{command}`")
    stem = args.output / f"{args.group}_{args.device.split(':')[0]}"
    atomic_write_text(stem.with_suffix(".md"), header + "\n\n" + table + "\n")
    atomic_write_json(stem.with_suffix(".json"), {"machine": machine_description(args.device),
                                                  "command": command, "rows": rows}, indent=2)
    print(header)
    print(table)
    return 0


def _throughput(args) -> int:
    """Train (AMP on CUDA) and inference images/s, 512 px and batch 8 unless given."""
    rows = throughput.measure_throughput(
        {"Mask R-CNN (baseline)": args.baseline_config, "Mask R-CNN++": args.pp_config},
        size=args.size or 512, batch=args.batch or 8, device=args.device, steps=args.repeats,
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    text = (f"Machine: {machine_description(args.device)}; torch {torch.__version__}; "
            f"{rows[0]['size']}x{rows[0]['size']} synthetic nuclei, batch {rows[0]['batch']}, "
            f"AMP {'on' if rows[0]['amp'] and args.device.startswith('cuda') else 'off'}; "
            f"command: `{command}`\n\n{throughput.throughput_markdown(rows)}")
    stem = args.output / f"throughput_{args.device.split(':')[0]}"
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    atomic_write_json(stem.with_suffix(".json"), {"machine": machine_description(args.device),
                                                  "command": command, "rows": rows}, indent=2)
    if args.doc:
        throughput.replace_between_markers(args.doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
