"""`make gpu-study`: its dry run goes through the whole code path on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from maskrcnn_pp.studies.gpu_study import MARKERS
from tests.conftest import DATA_ENV, _require_data_file
from tests.helpers import ROOT


@pytest.mark.slow
def test_gpu_study_dry_run_writes_both_studies_into_the_document(tmp_path):
    archive = _require_data_file("dsb2018_stage1_train.tar.gz")
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkept text\n")
    env = {**os.environ, DATA_ENV: str(archive.parent), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_study.py"), "--dry-run",
                           "--doc", str(doc), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Results\n\nkept text\n")
    block = text[text.index(MARKERS[0]):text.index(MARKERS[1])]
    assert "**Dry run**" in block and "CPU (dry run)" in block
    assert "| mask_rcnn_pp − mask_rcnn_baseline | dsb_map |" in block
    assert "| unetpp − unet | IoU |" in block and "| unetpp − wide_unet | IoU |" in block
    for name, dataset in (("dsb2018_claim_gpu", "dsb2018_val"),
                          ("nuclei_semantic_claim_gpu", "nuclei_patches_val")):
        report = json.loads((tmp_path / "out" / "gpu_study_dry_run" / name / "study.json")
                            .read_text())
        assert list(report["eval_sets"][dataset]) == ["1", "2"] and not report["missing"]
    # The dry run prepared its own few images; a user's data sets are not touched.
    assert (tmp_path / "out" / "gpu_study_dry_run" / "datasets" / "dsb2018").is_dir()


def test_gpu_study_without_a_gpu_says_how_to_dry_run(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_study.py"),
                           "--data", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "needs a CUDA device" in done.stderr and "--dry-run" in done.stderr
