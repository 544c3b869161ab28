"""One table of several evaluated semantic runs (``tools/compare_runs.py``): what each
network is, its size, and the scores its evaluation wrote."""
from __future__ import annotations

from collections.abc import Sequence

from detectron2.config import CfgNode

from ..modeling.semantic_arch import build_semantic_net

__all__ = ["comparison_row", "comparison_markdown"]


def _network_name(cfg: CfgNode) -> str:
    sem = cfg.MODEL.SEMANTIC
    if sem.ARCH.lower() == "unetpp":
        return "UNet++ " + ("w/ DS" if sem.DEEP_SUPERVISION else "w/o DS")
    return "U-Net"


def comparison_row(run: str, cfg: CfgNode, results: dict) -> dict:
    """One trained network of a comparison: what it is (from its config), its size, and
    the scores an evaluation wrote (:data:`RESULTS_FILE`); ``IoU_L<j>`` are present for the
    levels the run measured. Speed is not compared here: evaluation scores every mode from
    one pass and times none (``tools/prune_report.py`` times each)."""
    row = {"run": run, "network": _network_name(cfg),
           "widths": list(cfg.MODEL.SEMANTIC.WIDTHS),
           "parameters": build_semantic_net(cfg).parameter_count(),
           "IoU": results["IoU"], "Dice": results["Dice"]}
    row.update({key: value for key, value in results.items()
                if key.startswith("IoU_L") and key[len("IoU_L"):].isdigit()})
    return row


def comparison_markdown(rows: Sequence[dict]) -> str:
    """A table of :func:`comparison_row` rows, with one column per measured pruning level."""
    levels = sorted({int(k[len("IoU_L"):]) for r in rows for k in r if k.startswith("IoU_L")})
    head = ["run", "network", "widths", "parameters (M)", "IoU (%)", "Dice (%)",
            *(f"IoU L{j} (%)" for j in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["network"], "/".join(map(str, r["widths"])),
                 f"{r['parameters'] / 1e6:.3f}", f"{r['IoU']:.2f}", f"{r['Dice']:.2f}"]
        cells += [f"{r[f'IoU_L{j}']:.2f}" if f"IoU_L{j}" in r else "-" for j in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
