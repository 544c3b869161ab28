"""The benchmark machinery (tiny sizes): what it measures is what it says; the timings
themselves live in docs/."""
import os
import platform

import numpy as np
import pytest
import torch

from maskrcnn_pp.studies import model_speed as benchmark
from maskrcnn_pp.studies.timing import interleaved_times, run_spawned
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT

QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")

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
    """The parent holds 600 MiB; a measurement in the parent, or one that kept the parent's
    high-water mark, would report at least that."""
    ballast = np.ones(600 * 2**20, np.uint8)
    cand = benchmark.semantic_group(size=32, batch=1, with_monai=False)[0]
    peak = benchmark.peak_train_memory_mib(cand, "cpu", steps=1)
    assert 0 < peak < 300 and ballast.sum() == ballast.size


def _pid(_: int) -> int:
    return os.getpid()


def _pid_after_barrier(_: int, *, barrier) -> int:
    barrier.wait()
    return os.getpid()


def test_spawned_work_runs_in_separate_processes_side_by_side():
    pids = run_spawned(_pid, [(0,), (1,)])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert len(set(run_spawned(_pid_after_barrier, [(0,), (1,)], together=True))) == 2


def test_interleaved_times_alternates_the_calls_and_drops_the_warm_up():
    order = []
    times = interleaved_times({"a": lambda: order.append("a"),
                               "b": lambda: order.append("b")}, repeats=2, warmup=1)
    assert order == ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [2, 2] and all(
        t >= 0 for v in times.values() for t in v)


def test_export_groups_time_eager_torchscript_and_onnx_side_by_side(tmp_path):
    config = str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml")
    groups = benchmark.export_groups([config], str(tmp_path), size=32, batch=1)
    assert len(groups) == 2   # the quick UNet++ has levels 1 and 2
    rows = benchmark.run_group(groups[0], repeats=1, warmup=0, memory=False,
                               progress=lambda m: None)
    assert [r["model"] for r in rows] == ["quick_schedules/semantic_2d_quick 32 px L1 eager",
                                          "quick_schedules/semantic_2d_quick 32 px L1 TorchScript",
                                          "quick_schedules/semantic_2d_quick 32 px L1 ONNX Runtime"]
    assert rows[0]["infer_ratio"] == 1.0 and all(r["infer_s"] > 0 for r in rows)
    assert all(r["train_step_s"] is None for r in rows)
    assert "train step" not in benchmark.markdown_table(rows)


def test_each_detector_config_is_exported_at_the_side_it_predicts_on():
    from maskrcnn_pp.engine.config import load_config

    sides = {name: benchmark.detector_input_side(load_config(str(ROOT / "configs" / name)))
             for name in ("quick_schedules/mask_rcnn_pp_synthetic.yaml",
                          "cpu_study/mask_rcnn_pp.yaml", "mask_rcnn_pp.yaml")}
    assert sides == {"quick_schedules/mask_rcnn_pp_synthetic.yaml": 128,
                     "cpu_study/mask_rcnn_pp.yaml": 256, "mask_rcnn_pp.yaml": 640}


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


def test_throughput_rows_and_the_marked_block_of_a_document(tmp_path):
    from maskrcnn_pp.studies.throughput import MARKERS, measure_throughput, throughput_markdown
    from maskrcnn_pp.utils.io import replace_between_markers

    rows = measure_throughput({"pp": QUICK_PP}, size=64, batch=2, device="cpu", steps=1,
                              warmup=0, progress=lambda m: None)
    # one step of two 64 px images on the CPU: well under a minute, above 0
    assert 2 / 60 < rows[0]["train_images_per_s"] < 1e4
    assert 2 / 60 < rows[0]["infer_images_per_s"] < 1e4
    assert rows[0]["machine"].startswith(platform.machine())
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nbefore\n\n{MARKERS[0]}\nold numbers\n{MARKERS[1]}\n\nafter\n")
    replace_between_markers(doc, throughput_markdown(rows), MARKERS)
    replace_between_markers(doc, "GPU: X\n\n" + throughput_markdown(rows), MARKERS)
    text = doc.read_text()
    assert text.count(MARKERS[0]) == 1 and "old numbers" not in text
    assert text.startswith("# B\n\nbefore\n") and text.endswith("\n\nafter\n")
    assert "GPU: X" in text and "| pp | " in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_throughput_on_cuda_without_cuda_is_one_clear_error():
    from maskrcnn_pp.studies.throughput import measure_throughput

    with pytest.raises(UserError, match="no CUDA device"):
        measure_throughput({"pp": QUICK_PP}, device="cuda")


def test_a_timed_trainer_leaves_no_open_metrics_files(tmp_path):
    """It never reaches train()'s end, which would close Detectron2's writers."""
    from maskrcnn_pp.studies.training_speed import SteppingTrainer

    config = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")
    trainer = SteppingTrainer(config, ["DATASETS.TEST", "()"], True, str(tmp_path))
    assert trainer.step() > 0
    assert list(tmp_path.iterdir()) == []
