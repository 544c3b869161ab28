"""The benchmark machinery runs (tiny sizes); the timings themselves live in docs/."""
import pytest

from maskrcnn_pp.studies import benchmark

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
