"""Speed, size and memory of the models, and of instance post-processing on huge images.

    tools/benchmark.py --group mask_rcnn --output docs/bench     # 256 px, batch 2
    tools/benchmark.py --group semantic --output docs/bench      # 96 px, batch 8
    tools/benchmark.py --group export --output docs/bench        # eager / TorchScript / ONNX
    tools/benchmark.py --device cuda ...                         # on a GPU
    tools/benchmark.py --group scale --output docs/bench         # post-processing at scale
    tools/benchmark.py --group throughput --doc docs/benchmarks.md   # images/s, AMP on CUDA
    tools/benchmark.py --group train_step --output docs/bench    # CPU study step, fast paths
    tools/benchmark.py --group slide --output docs/bench         # whole slides, 10k-40k px

Writes ``<group>_<device>.md`` and ``.json`` under --output; prints the table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from maskrcnn_pp.model_zoo import get_config_file
from maskrcnn_pp.utils.errors import UserError, exit_on_user_error
from maskrcnn_pp.utils.io import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    replace_between_markers,
)

EXPORT_CONFIGS = ("quick_schedules/mask_rcnn_pp_synthetic.yaml", "cpu_study/mask_rcnn_pp.yaml",
                  "mask_rcnn_pp.yaml", "semantic/nuclei_unetpp.yaml",
                  "semantic/polyp_unetpp.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", required=True,
                   choices=("mask_rcnn", "semantic", "scale", "export", "throughput",
                            "train_step", "slide"))
    p.add_argument("--cases", default="2048:4096,4096:16384,8192:65536",
                   help="scale: SIZE:NUCLEI,... (square nuclei counts)")
    p.add_argument("--tile-size", type=int, default=1024, help="scale: tile side")
    p.add_argument("--tile-overlap", type=int, default=128, help="scale: tile overlap")
    p.add_argument("--device")  # default: cuda where available, else cpu (set in main)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--size", type=int, help="input size (default 256 / 96)")
    p.add_argument("--batch", type=int, help="batch size (default 2 / 8)")
    p.add_argument("--pp-config", default=get_config_file("mask_rcnn_pp.yaml"))
    p.add_argument("--baseline-config", default=get_config_file("mask_rcnn_baseline.yaml"))
    p.add_argument("--export-configs", nargs="+", metavar="CONFIG",
                   default=[get_config_file(name) for name in EXPORT_CONFIGS],
                   help="export: the configs whose models are exported and timed (default: "
                        "the demo's, the CPU study's and the full Mask R-CNN++, the nuclei and "
                        "polyp UNet++); each at the size it predicts on unless --size")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--train-configs", nargs="+",
                   default=[get_config_file("cpu_study/mask_rcnn_pp.yaml"),
                            get_config_file("cpu_study/mask_rcnn_baseline.yaml")],
                   help="train_step: the configs whose real training step is timed")
    p.add_argument("--threads", type=int, default=1,
                   help="train_step: threads of the step timing (a study job's)")
    p.add_argument("--no-profile", action="store_true",
                   help="train_step: skip the per-operator profiles")
    p.add_argument("--slide-sizes", default="10000,20000,40000",
                   help="slide: sides of the synthetic slides (perfect stand-in model)")
    p.add_argument("--slide-model-size", type=int, default=2048,
                   help="slide: side of the slide the real model predicts (0: none)")
    p.add_argument("--output", type=Path, default=Path("docs/bench"))
    p.add_argument("--doc", type=Path, help="throughput: also write the table into this "
                   "Markdown file, between the gpu-check markers")
    return p.parse_args(argv)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_rows(args) -> list:
    """Eager vs TorchScript vs ONNX Runtime, one interleaved group per model."""
    from maskrcnn_pp.studies import model_speed

    if args.device != "cpu":
        raise UserError("--group export measures CPU latency: use --device cpu")
    with tempfile.TemporaryDirectory(prefix="export-bench-") as workdir:
        groups = model_speed.export_groups(args.export_configs, workdir, size=args.size,
                                         batch=args.batch or 8)
        return [row for cands in groups
                for row in model_speed.run_group(cands, device="cpu", repeats=args.repeats,
                                               memory=False, progress=_progress)]


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from maskrcnn_pp.studies import model_speed
    from maskrcnn_pp.studies.timing import machine_description

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available")
    for flag, value in (("--repeats", args.repeats), ("--size", args.size),
                        ("--batch", args.batch)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    check_output_dir(args.output, "--output")
    if args.group == "scale":
        return _scale(args)
    if args.group == "throughput":
        return _throughput(args)
    if args.group == "train_step":
        return _train_step(args)
    if args.group == "slide":
        return _slide(args)
    if args.group == "mask_rcnn":
        cands = model_speed.mask_rcnn_group(args.pp_config, args.baseline_config,
                                          size=args.size or 256, batch=args.batch or 2,
                                          device=args.device)
    elif args.group == "semantic":
        cands = model_speed.semantic_group(size=args.size or 96, batch=args.batch or 8,
                                         device=args.device)
    if args.group == "export":
        rows = export_rows(args)
    else:
        rows = model_speed.run_group(cands, device=args.device, repeats=args.repeats,
                                   memory=not args.no_memory, progress=_progress)
    table = model_speed.markdown_table(rows)
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    header = (f"Machine: {machine_description(args.device)}; "
              f"command: `{command}`")
    stem = args.output / f"{args.group}_{args.device.split(':')[0]}"
    atomic_write_text(stem.with_suffix(".md"), header + "\n\n" + table + "\n")
    atomic_write_json(stem.with_suffix(".json"), {"machine": machine_description(args.device),
                                                  "command": command, "rows": rows}, indent=2)
    print(header)
    print(table)
    return 0


def _scale(args) -> int:
    """Post-processing of huge images with a perfect synthetic model, one process each."""
    from maskrcnn_pp.studies import postprocessing_scale
    from maskrcnn_pp.studies.timing import machine_description

    try:
        cases = [tuple(int(v) for v in case.split(":")) for case in args.cases.split(",")]
    except ValueError:
        raise UserError(f"--cases {args.cases!r}: expected SIZE:NUCLEI,...") from None
    rows = []
    for size, count in cases:
        print(f"{size}x{size}, {count} nuclei", file=sys.stderr, flush=True)
        rows.append(postprocessing_scale.run_scale_case(size, count, args.tile_size,
                                                        args.tile_overlap))
    with open("/proc/loadavg") as load:
        load_average = load.read().split()[0]
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    header = (f"Machine: {machine_description('cpu')}, load average "
              f"{load_average} when it finished; command: `{command}`")
    table = postprocessing_scale.scale_table(rows)
    stem = args.output / "scale_cpu"
    atomic_write_text(stem.with_suffix(".md"), header + "\n\n" + table + "\n")
    atomic_write_json(stem.with_suffix(".json"), {"command": command, "load": load_average,
                                                  "rows": rows}, indent=2)
    print(header)
    print(table)
def _slide(args) -> int:
    """Whole-slide prediction: the perfect model by slide size and workers, the real
    model's seconds per mm² of tissue, and an overview picture (slide_overview.png)."""
    from maskrcnn_pp.studies import slide_benchmark
    from maskrcnn_pp.studies.timing import machine_description

    try:
        sizes = [int(v) for v in args.slide_sizes.split(",")]
    except ValueError:
        raise UserError(f"--slide-sizes {args.slide_sizes!r}: expected SIDE,...") from None
    with tempfile.TemporaryDirectory(prefix="slide-bench-") as workdir:
        rows, model_rows = slide_benchmark.run_slide_benchmark(
            sizes, Path(workdir), get_config_file("cpu_study/mask_rcnn_pp.yaml")
            if args.slide_model_size else None, args.slide_model_size,
            picture=args.output / "slide_overview.png", progress=_progress)
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    text = (f"Machine: {machine_description('cpu')}; command: "
            f"`{command}`\n\n{slide_benchmark.slide_table(rows, model_rows)}")
    atomic_write_text(args.output / "slide_cpu.md", text + "\n")
    atomic_write_json(args.output / "slide_cpu.json", {"command": command, "rows": rows,
                                                       "model_rows": model_rows}, indent=2)
    print(text)
    return 0


def _train_step(args) -> int:
    """The real training step with Detectron2's paths vs the fast paths (interleaved), the
    machine's training throughput under the old and new study settings, and profiles."""
    from maskrcnn_pp.studies import training_speed
    from maskrcnn_pp.studies.timing import machine_description

    if args.device != "cpu":
        raise UserError("--group train_step measures the CPU training step: use --device cpu")
    rounds = max(args.repeats, 2)
    steps = [training_speed.step_times(config, rounds=rounds, steps=5, threads=args.threads,
                                       progress=_progress)
             for config in args.train_configs]
    cores = os.cpu_count() or 1
    settings = [(1, cores, False), (1, 1, False), (1, 1, True), (cores, 1, True)]
    throughput_rows = []
    for jobs, threads, fast in settings:
        _progress(f"throughput: {jobs} job(s) x {threads} thread(s), fast paths {fast}")
        throughput_rows.append(training_speed.machine_throughput(
            args.train_configs[0], jobs, threads, fast, steps=4 * rounds))
    profiles = [] if args.no_profile else [
        training_speed.profile_steps(config, fast)
        for config in args.train_configs for fast in (False, True)]
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    text = "\n\n".join([
        f"Machine: {machine_description('cpu')}; "
        f"command: `{command}`",
        "Training step (median s/step, interleaved rounds; losses of the same steps compared):",
        training_speed.step_table(steps),
        "Training iterations per second of the whole machine (fresh processes):",
        training_speed.throughput_table(throughput_rows),
        *[training_speed.profile_table(p) for p in profiles]])
    stem = args.output / "train_step_cpu"
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    atomic_write_json(stem.with_suffix(".json"), {"command": command, "steps": steps,
                                                  "throughput": throughput_rows,
                                                  "profiles": profiles}, indent=2)
    print(text)
    return 0


def _throughput(args) -> int:
    """Train (AMP on CUDA) and inference images/s, 512 px and batch 8 unless given."""
    from maskrcnn_pp.studies import throughput
    from maskrcnn_pp.studies.timing import machine_description

    rows = throughput.measure_throughput(
        {"Mask R-CNN (baseline)": args.baseline_config, "Mask R-CNN++": args.pp_config},
        size=args.size or 512, batch=args.batch or 8, device=args.device, steps=args.repeats,
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    command = "tools/benchmark.py " + " ".join(sys.argv[1:])
    text = (f"Machine: {machine_description(args.device)}; "
            f"{rows[0]['size']}x{rows[0]['size']} synthetic nuclei, batch {rows[0]['batch']}, "
            f"AMP {'on' if rows[0]['amp'] and args.device.startswith('cuda') else 'off'}; "
            f"command: `{command}`\n\n{throughput.throughput_markdown(rows)}")
    stem = args.output / f"throughput_{args.device.split(':')[0]}"
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    atomic_write_json(stem.with_suffix(".json"), {"machine": machine_description(args.device),
                                                  "command": command, "rows": rows}, indent=2)
    if args.doc:
        replace_between_markers(args.doc, text, throughput.MARKERS)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
