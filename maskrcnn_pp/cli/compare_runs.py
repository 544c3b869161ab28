"""Compare finished semantic runs: network, parameters, IoU, Dice, per-level IoU, time.

    tools/compare_runs.py output/cpu_study/nuclei_unet output/cpu_study/nuclei_unetpp ...
        [--dataset nuclei_patches_val] [--output comparison.md]

Each run folder is a training ``OUTPUT_DIR``: its ``config.yaml`` says what the network is,
``inference/<dataset>/semantic_results.json`` holds the scores of its last evaluation (the
end of training, or ``tools/train_net.py --eval-only``). Prints a Markdown table; with
``--output`` also writes it, and the rows as JSON beside it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskrcnn_pp.utils.errors import UserError, exit_on_user_error
from maskrcnn_pp.utils.io import atomic_write_json, atomic_write_text, check_output_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="training output folders (OUTPUT_DIR)")
    parser.add_argument("--dataset", default=None,
                        help="evaluated data set (default: each run's first DATASETS.TEST)")
    parser.add_argument("--output", default=None,
                        help="write the table to this .md file (and the rows to .json)")
    return parser.parse_args(argv)


def run_row(run: Path, dataset: str | None) -> dict:
    from maskrcnn_pp.engine import is_semantic, load_config
    from maskrcnn_pp.evaluation.semantic import RESULTS_FILE
    from maskrcnn_pp.studies.comparison import comparison_row

    config = run / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run}: no config.yaml, not a training output folder")
    cfg = load_config(str(config))
    if not is_semantic(cfg):
        raise UserError(f"{config}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}; "
                        "compare_runs compares semantic runs (SemanticUNetPP)")
    if dataset is None and not cfg.DATASETS.TEST:
        raise UserError(f"{config}: DATASETS.TEST is empty; pass --dataset")
    results_file = run / "inference" / (dataset or cfg.DATASETS.TEST[0]) / RESULTS_FILE
    if not results_file.is_file():
        raise UserError(f"{results_file} does not exist: evaluate the run first "
                        f"(tools/train_net.py --config-file {config} --eval-only "
                        f"MODEL.WEIGHTS {run / 'model_final.pth'})")
    try:
        results = json.loads(results_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{results_file}: not valid JSON ({err})") from None
    numbers = {key: value for key, value in results.items()
               if key in ("IoU", "Dice") or key.startswith("IoU_L")
               } if isinstance(results, dict) else {}
    if not ({"IoU", "Dice"} <= numbers.keys() and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values())):
        raise UserError(f"{results_file}: not a semantic evaluation result (expected a JSON "
                        "object with numbers under 'IoU', 'Dice' and 'IoU_L<j>')")
    return comparison_row(run.name, cfg, results)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from maskrcnn_pp.studies.comparison import comparison_markdown

    if args.output:
        check_output_file(args.output, "--output")
    rows = [run_row(Path(run), args.dataset) for run in args.runs]
    table = comparison_markdown(rows)
    print(table, end="")
    if args.output:
        output = Path(args.output)
        atomic_write_text(output, table)
        atomic_write_json(output.with_suffix(".json"), rows, indent=2)
        print(f"written: {output}, {output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
