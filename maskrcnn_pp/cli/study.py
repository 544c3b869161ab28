"""Compare models over several seeds: train what is missing, evaluate, bootstrap the CIs.

    tools/study.py configs/studies/dsb2018_instance_cpu.yaml --jobs 2
    tools/study.py STUDY.yaml --no-train          # report the finished runs only
    tools/study.py STUDY.yaml --seeds 0 1 --output output/studies/mine \\
        --model pp=configs/mask_rcnn_pp.yaml --model base=configs/mask_rcnn_baseline.yaml \\
        --override SOLVER.MAX_ITER=2000 --eval-sets dsb2018_val my_registered_set

Writes ``study.json``, ``study.md`` and one PNG per key metric into the study's output
folder; runs live in ``<output>/runs/<model>/seed<seed>`` (see maskrcnn_pp/studies/study.py).
A killed study continues where it stopped when started again.
"""
from __future__ import annotations

import argparse
import shlex
import sys

import yaml

from maskrcnn_pp.utils.errors import UserError, exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", help="study YAML (output, models, seeds, overrides, eval_sets)")
    p.add_argument("--output", help="replaces the study's output folder")
    p.add_argument("--model", action="append", metavar="NAME=CONFIG",
                   help="replaces the study's models (repeat for each model)")
    p.add_argument("--seeds", type=int, nargs="+", help="replaces the study's seeds")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="added to (or replacing one of) the study's overrides")
    p.add_argument("--eval-sets", nargs="+", help="replaces the study's eval_sets")
    p.add_argument("--jobs", type=int, default=1, help="trainings run side by side")
    p.add_argument("--threads", type=int,
                   help="CPU threads shared by the jobs (default: one per job)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: evaluate and report the finished runs only")
    p.add_argument("--train-only", action="store_true",
                   help="train the unfinished runs, evaluate nothing")
    p.add_argument("--only", nargs="+", metavar="MODEL", default=(),
                   help="train only these models of the study (e.g. the main pair first)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--ap-resamples", type=int, default=200,
                   help="bootstrap resamples for COCO AP (slower: recomputed per resample)")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    return p.parse_args(argv)


def _pairs(items, flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value) if flag == "--override" else value
    return out


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from maskrcnn_pp.studies.study import load_spec, run_study

    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--jobs and --threads must be at least 1")
    if args.resamples < 100 or args.ap_resamples < 1:
        raise UserError("--resamples must be at least 100 and --ap-resamples at least 1")
    spec = load_spec(args.study, output=args.output, seeds=args.seeds,
                     eval_sets=args.eval_sets,
                     models=_pairs(args.model, "--model") if args.model else None,
                     more_overrides=_pairs(args.override or [], "--override"))
    if args.no_train and args.train_only:
        raise UserError("--no-train and --train-only exclude each other")
    run_study(spec, jobs=args.jobs, threads=args.threads, train=not args.no_train,
              evaluate=not args.train_only, only=args.only,
              resamples=args.resamples, ap_resamples=args.ap_resamples,
              seed=args.bootstrap_seed,
              command=shlex.join(["tools/study.py", *(sys.argv[1:] if argv is None else argv)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
