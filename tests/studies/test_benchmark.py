"""The benchmark machinery runs (tiny sizes); the timings themselves live in docs/."""
import os

import pytest

from maskrcnn_pp.studies import benchmark
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # every test here times real models


def test_semantic_group_rows_ratios_and_table():
    cands = benchmark.semantic_group(size=32, batch=1, with_monai=False)
    rows = benchmark.run_group(cands, repeats=1, warmup=1, memory=False, progress=lambda m: None)
    by_name = {r["model"]: r for r in rows}
    assert by_name["UNet++ L4 (fast mode)"]["train_ratio"] == 1.0
    params = [by_name[f"UNet++ L{j} (fast mode)"]["params_M"] for j in (1, 2, 3, 4)]
    assert params == sorted(params) and abs(params[-1] - 9.045) < 0.01
    gflops = [by_name[f"UNet++ L{j} (fast mode)"]["gflops"] for j in (1, 2, 3, 4)]
    assert gflops == sorted(gflops) and gflops[0] > 0
    table = benchmark.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "UNet++ L3 (fast mode)" in table


def test_peak_memory_is_measured_in_a_fresh_process():
    cand = benchmark.semantic_group(size=32, batch=1, with_monai=False)[0]
    assert benchmark.peak_train_memory_mib(cand, "cpu", steps=1) > 0


def test_export_groups_time_eager_torchscript_and_onnx_side_by_side(tmp_path):
    from tests.helpers import ROOT

    config = str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml")
    groups = benchmark._semantic_export_groups(config, str(tmp_path), size=32, batch=1)
    assert len(groups) == 2   # the quick UNet++ has levels 1 and 2
    rows = benchmark.run_group(groups[0], repeats=1, warmup=0, memory=False,
                               progress=lambda m: None)
    assert [r["model"] for r in rows] == ["UNet++ L1 eager", "UNet++ L1 TorchScript",
                                          "UNet++ L1 ONNX Runtime"]
    assert rows[0]["infer_ratio"] == 1.0 and all(r["infer_s"] > 0 for r in rows)
    assert all(r["train_step_s"] is None for r in rows)
    assert "train step" not in benchmark.markdown_table(rows)


def test_train_step_timing_compares_the_same_steps_of_both_paths():
    from maskrcnn_pp.studies.training_speed import machine_throughput, step_times

    config = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
    row = step_times(config, rounds=2, steps=2, warmup_rounds=1, progress=lambda m: None)
    assert set(row["seconds_per_step"]) == {"detectron2 paths", "fast paths"}
    assert row["steps_timed"] == 2 and row["steps_compared"] == 4
    assert all(0 < t < 60 for t in row["seconds_per_step"].values())
    # Same seed, same data stream, same computation: the first losses agree to rounding.
    assert row["first_step_relative_loss_difference"] < 1e-5
    assert row["config"] == "configs/quick_schedules/mask_rcnn_pp_synthetic.yaml"
    both = machine_throughput(config, jobs=2, threads=1, fast_paths=True, warmup=1, steps=2)
    assert len(set(both["worker_pids"])) == 2 and os.getpid() not in both["worker_pids"]
    assert both["iterations_per_second"] > 0
