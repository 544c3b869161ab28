"""tools/train_net.py end to end on CPU, and its handling of user mistakes."""
import json
import os
import subprocess
import sys

import pytest
import torch

from maskrcnn_pp.engine import load_config
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import ROOT, liver_phantom, write_lits

QUICK_PP = str(ROOT / "configs" / "quick_schedules" / "mask_rcnn_pp_synthetic.yaml")


def train_net(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_unknown_config_key_is_one_line_exit_2_no_traceback():
    proc = train_net("--config-file", QUICK_PP, "SOLVER.NOT_A_KEY", "3")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "SOLVER.NOT_A_KEY" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.MAX_ITER", "many"], "SOLVER.MAX_ITER"),
    (["DATASETS.TRAIN", "('no_such_set',)"], "unknown data set 'no_such_set' in DATASETS.TRAIN"),
])
def test_bad_overrides_name_the_key(opts, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(QUICK_PP, opts)


@pytest.mark.slow
def test_missing_files_are_named(tmp_path):
    with pytest.raises(UserError, match="config file .*nope.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    proc = train_net("--config-file", QUICK_PP, "MODEL.WEIGHTS", str(tmp_path / "w.pth"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"MODEL.WEIGHTS file {tmp_path / 'w.pth'} does not exist" in proc.stderr


def test_yaml_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"_BASE_: {QUICK_PP}\nSOLVER:\n  MAX_ITER: !!python/object/apply:os.system "
                    f"[\"touch {marker}\"]\n")
    with pytest.raises(UserError, match="not a safe YAML config"):
        load_config(str(evil))
    assert not marker.exists()


@pytest.mark.slow
def test_train_then_evaluate_quick_config(tmp_path):
    out = tmp_path / "run"
    proc = train_net("--config-file", QUICK_PP, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD",
                     "2", "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(out),
                     "DATASETS.TEST", "('nuclei_synthetic_val',)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "loss_mask_1" in m][-1] == 3
    results = out / "inference" / "nuclei_synthetic_val" / "coco_instances_results.json"
    assert results.is_file()

    evaluated = train_net("--config-file", QUICK_PP, "--eval-only", "MODEL.WEIGHTS",
                          str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "copypaste: Task: segm" in evaluated.stdout + evaluated.stderr

    # A new training into the finished run's folder is refused until --overwrite says so,
    # which removes the earlier run's checkpoints and metrics records first.
    again = ["--config-file", QUICK_PP, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
             "OUTPUT_DIR", str(out)]
    final = (out / "model_final.pth").read_bytes()
    refused = train_net(*again)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert f"OUTPUT_DIR {out} holds an earlier training" in last
    assert "--resume continues it" in last and "--overwrite replaces it" in last
    assert (out / "model_final.pth").read_bytes() == final
    replaced = train_net("--overwrite", *again)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert not (out / "model_0000001.pth").exists()
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    # the 4-step run's loss records (up to iteration 3) are gone
    assert max(m["iteration"] for m in records if "loss_mask_1" in m) == 1
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1


@pytest.mark.slow
def test_semantic_unetpp_trains_and_reports_each_pruning_level(tmp_path):

    from maskrcnn_pp.data.prepare import prepare_liver

    hu, seg = liver_phantom()
    for number in range(3):
        write_lits(tmp_path / "lits", number, hu, seg)
    prepare_liver(tmp_path / "lits", tmp_path / "datasets", size=64, val_fraction=0.34)
    out = tmp_path / "semantic"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file",
         str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml"),
         "OUTPUT_DIR", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    header = next(line for line in (out / "log.txt").read_text().splitlines()
                  if "copypaste: IoU" in line).split("copypaste: ")[1].split(",")
    assert {"IoU", "Dice", "IoU_L1", "IoU_L2", "IoU_accurate"} <= set(header)



@pytest.mark.slow
def test_a_training_reads_its_config_once(tmp_path):
    """The launcher's config (which chose and locked OUTPUT_DIR) is the one the trainer
    runs, not a second reading of the files. (In a fresh process: training sets up
    Detectron2's loggers, which would stay so for the tests after it.)"""
    script = f"""
from maskrcnn_pp.cli.train_net import argument_parser
from maskrcnn_pp.engine import config, train
reads = []
def counted(*args, _load=config.load_config):
    reads.append(args)
    return _load(*args)
train.load_config = config.load_config = counted
args = argument_parser().parse_args([
    "--config-file", {QUICK_PP!r}, "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "DATASETS.TEST", "()",
    "OUTPUT_DIR", {str(tmp_path / "run")!r}])
assert train.launch_from_args(args) == 0
print("config reads:", len(reads))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "config reads: 1"
    assert (tmp_path / "run" / "model_final.pth").is_file()
