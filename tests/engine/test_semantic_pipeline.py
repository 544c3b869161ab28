"""Semantic UNet++ through Detectron2: config, loaders, training steps, evaluator, pruning
report, on phantoms written in the LiTS and LIDC formats and prepared by the library."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import cv2
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from maskrcnn_pp.config import add_maskrcnn_pp_config
from maskrcnn_pp.data.prepare import prepare_liver, prepare_nodule
from maskrcnn_pp.data.semantic_mapper import (
    build_semantic_test_loader,
    build_semantic_train_loader,
)
from maskrcnn_pp.engine import load_config
from maskrcnn_pp.engine.inference_modes import InferenceModes
from maskrcnn_pp.engine.optim import build_optimizer
from maskrcnn_pp.evaluation.semantic import SemanticEvaluator, overlap_scores
from maskrcnn_pp.modeling.semantic_arch import SemanticUNetPP, build_semantic_net
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import (
    ROOT,
    flatten_config,
    liver_phantom,
    nodule_phantom,
    write_lits,
    write_nodule,
)


def quick_cfg(name: str, *opts):
    cfg = add_maskrcnn_pp_config(get_cfg())
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / name))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture
def datasets(tmp_path, monkeypatch) -> Path:
    """Liver (2D) and nodule (3D) phantoms, prepared under $DETECTRON2_DATASETS."""
    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    hu, seg = liver_phantom()
    for number in range(3):
        write_lits(tmp_path / "lits", number, hu, seg)
    prepare_liver(tmp_path / "lits", root, size=64, val_fraction=0.34)
    for number in range(4):
        write_nodule(tmp_path / "crops", f"n{number}", *nodule_phantom(size=32, radius=4 + number))
    prepare_nodule(tmp_path / "crops", root, size=32, val_fraction=0.25)
    return root


def test_config_defaults_are_the_papers():
    cfg = add_maskrcnn_pp_config(get_cfg())
    sem = cfg.MODEL.SEMANTIC
    assert (sem.ARCH, list(sem.WIDTHS), sem.NORM, sem.UPSAMPLE, sem.DEEP_SUPERVISION) == (
        "unetpp", [32, 64, 128, 256, 512], "BN", "transpose", True)
    assert cfg.SOLVER.OPTIMIZER == "SGD"  # detection configs keep Detectron2's optimizer
    add_maskrcnn_pp_config(cfg)  # twice is harmless
    for task, size, channels in [("nuclei", 96, 3), ("polyp", 224, 3), ("liver", 512, 1),
                                 ("nodule", 64, 1)]:
        for arch, widths in [("unetpp", 32), ("unet", 32), ("wide_unet", 35)]:
            cfg = add_maskrcnn_pp_config(get_cfg())
            cfg.merge_from_file(str(ROOT / "configs" / "semantic" / f"{task}_{arch}.yaml"))
            assert cfg.MODEL.META_ARCHITECTURE == "SemanticUNetPP"
            assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR) == ("ADAM", 0.0003)
            assert cfg.INPUT.SEMANTIC_SIZE == size
            assert cfg.MODEL.SEMANTIC.IN_CHANNELS == len(cfg.MODEL.PIXEL_MEAN) == channels
            assert cfg.MODEL.SEMANTIC.WIDTHS[0] == widths
            assert cfg.MODEL.SEMANTIC.ARCH == ("unetpp" if arch == "unetpp" else "unet")
            assert cfg.MODEL.SEMANTIC.DIMS == (3 if task == "nodule" else 2)
            assert cfg.OUTPUT_DIR.endswith(f"{task}_{arch}")


@pytest.mark.parametrize("task", ["nuclei", "polyp"])
def test_cpu_study_configs_differ_only_in_the_network(task):
    """The CPU study (docs/results.md) compares networks, nothing else: one schedule, seed
    and data set; the wide U-Net about as large as UNet++ at the same (quarter) widths."""
    def flat(name):
        return flatten_config(load_config(str(ROOT / "configs" / f"{name}.yaml")))

    pp = flat(f"cpu_study/{task}_unetpp")
    one_output = {"MODEL.SEMANTIC.DEEP_SUPERVISION_WEIGHTS": []}
    for variant, changes in [
            ("unetpp_nods", {"MODEL.SEMANTIC.DEEP_SUPERVISION": False, **one_output}),
            ("unet", {"MODEL.SEMANTIC.ARCH": "unet", **one_output}),
            ("wide_unet", {"MODEL.SEMANTIC.ARCH": "unet", **one_output,
                           "MODEL.SEMANTIC.WIDTHS": [9, 18, 35, 70, 140]})]:
        other = flat(f"cpu_study/{task}_{variant}")
        differing = {k: other[k] for k in pp if pp[k] != other[k]}
        assert differing == {**changes, "OUTPUT_DIR": f"output/cpu_study/{task}_{variant}"}
    paper = flat(f"semantic/{task}_unetpp")
    changed = {k for k in pp if pp[k] != paper[k]}
    assert changed <= {"MODEL.SEMANTIC.WIDTHS", "MODEL.SEMANTIC.DEEP_SUPERVISION_WEIGHTS",
                       "INPUT.SEMANTIC_SIZE", "DATALOADER.NUM_WORKERS",
                       "SOLVER.MAX_ITER", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
                       "SEED", "OUTPUT_DIR"}
    assert pp["SEED"] == 0 and pp["SOLVER.OPTIMIZER"] == "ADAM"
    sizes = {v: build_semantic_net(load_config(
        str(ROOT / "configs" / "cpu_study" / f"{task}_{v}.yaml"))).parameter_count()
        for v in ("unetpp", "wide_unet", "unet")}
    assert sizes["unet"] < sizes["unetpp"] < sizes["wide_unet"] < 1.05 * sizes["unetpp"]


def test_optimizer_choice():
    cfg = quick_cfg("semantic_2d_quick.yaml")
    model = build_model(cfg)
    adam = build_optimizer(cfg, model)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 3e-4
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(build_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "RMSPROP"
    with pytest.raises(UserError, match="SOLVER.OPTIMIZER must be 'SGD' or 'ADAM'"):
        build_optimizer(cfg, model)


def test_2d_training_logs_each_output_and_learns(datasets):
    torch.manual_seed(0)
    cfg = quick_cfg("semantic_2d_quick.yaml")
    model = build_model(cfg)
    assert isinstance(model, SemanticUNetPP) and model.levels == (1, 2)
    loader = build_semantic_train_loader(cfg)
    trainer = SimpleTrainer(model, loader, build_optimizer(cfg, model))
    trainer.train(0, 2)
    logged = trainer.storage.histories()
    assert {"loss_seg_1", "loss_seg_2", "total_loss"} <= set(logged)
    batch = next(iter(loader))
    assert [d["image"].shape for d in batch] == [(1, 32, 32)] * 2
    # Overfitting one batch with Adam drives the summed loss down (a larger step than the
    # paper's 3e-4, to see it within a few dozen iterations).
    cfg.SOLVER.BASE_LR = 0.01
    optimizer = build_optimizer(cfg, model)
    losses = []
    for _ in range(50):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_evaluator_accumulates_over_the_data_set():
    evaluator = SemanticEvaluator("unused", distributed=False)
    truth_a = torch.zeros(4, 4, dtype=torch.long)
    truth_a[:2] = 1  # 8 pixels
    probs_a = torch.zeros(1, 4, 4)
    probs_a[0, :1] = 0.9  # 4 predicted, all inside: IoU 0.5
    truth_b = torch.zeros(4, 4, dtype=torch.long)
    truth_b[0, 0] = 1
    probs_b = torch.zeros(1, 4, 4)
    probs_b[0, 0, :2] = 0.6  # 2 predicted, 1 right: IoU 0.5
    evaluator.process([{"sem_seg": truth_a}, {"sem_seg": truth_b}],
                      [{"sem_seg": probs_a}, {"sem_seg": probs_b}])
    scores = evaluator.evaluate()["sem_seg"]
    # Accumulated: intersection 5, predicted 6, truth 9 -> IoU 5/10, Dice 10/15.
    assert scores == pytest.approx({"IoU": 50.0, "Dice": 200 / 3})
    assert overlap_scores(0, 0, 0) == {"IoU": 1.0, "Dice": 1.0}
    assert overlap_scores(0, 3, 0) == {"IoU": 0.0, "Dice": 0.0}


def test_evaluator_per_level_with_timing(datasets):
    cfg = quick_cfg("semantic_2d_quick.yaml")
    model = build_model(cfg)
    loader = build_semantic_test_loader(cfg, "liver_val")
    evaluator = InferenceModes(model, SemanticEvaluator("liver_val"), timed=True)
    scores = inference_on_dataset(model, loader, evaluator)["sem_seg"]
    expected = {f"{metric}{mode}" for mode in ("", "_L1", "_L2", "_accurate")
                for metric in ("IoU", "Dice")}
    timings = {f"ms_per_image_{mode}" for mode in ("L1", "L2", "accurate")}
    assert set(scores) == expected | timings
    assert all(scores[f"ms_per_image_{m}"] > 0 for m in ("L1", "L2", "accurate"))
    one_pass = inference_on_dataset(model, loader,
                                    InferenceModes(model, SemanticEvaluator("liver_val")))
    assert set(one_pass["sem_seg"]) == expected  # untimed: the modes from one forward pass
    assert one_pass["sem_seg"] == pytest.approx({k: scores[k] for k in expected})
    assert scores["IoU"] == scores["IoU_accurate"]  # INFERENCE_LEVEL 0: the accurate mode
    model.inference_level = 1
    evaluator.reset()
    assert inference_on_dataset(model, loader, evaluator)["sem_seg"]["IoU"] == scores["IoU_L1"]
    outputs = model.eval()([next(iter(loader))[0]])
    assert outputs[0]["sem_seg"].shape == (1, 64, 64)  # back at the stored 64x64 size


def test_3d_training_step_and_evaluation(datasets):
    torch.manual_seed(0)
    cfg = quick_cfg("semantic_3d_quick.yaml")
    model = build_model(cfg)
    trainer = SimpleTrainer(model, build_semantic_train_loader(cfg), build_optimizer(cfg, model))
    trainer.train(0, 1)
    assert {"loss_seg_1", "loss_seg_2"} <= set(trainer.storage.histories())
    loader = build_semantic_test_loader(cfg, "nodule_val")
    sample = next(iter(loader))[0]
    assert sample["image"].shape == (1, 16, 16, 16) and sample["sem_seg"].shape == (32, 32, 32)
    scores = inference_on_dataset(model, loader,
                                  InferenceModes(model, SemanticEvaluator("nodule_val")))
    assert 0 <= scores["sem_seg"]["IoU_L2"] <= 100


def test_meta_arch_checks_its_config():
    cfg = quick_cfg("semantic_2d_quick.yaml", "MODEL.PIXEL_MEAN", "[1.0, 2.0, 3.0]")
    with pytest.raises(ValueError, match="MODEL.PIXEL_MEAN needs one value per input channel"):
        build_model(cfg)
    cfg = quick_cfg("semantic_2d_quick.yaml", "MODEL.SEMANTIC.INFERENCE_LEVEL", "3")
    with pytest.raises(ValueError, match=r"inference level 3 .* use 0 \(accurate\) or one of"):
        build_model(cfg)
    cfg = quick_cfg("semantic_2d_quick.yaml", "MODEL.SEMANTIC.ARCH", "segnet")
    with pytest.raises(ValueError, match="MODEL.SEMANTIC.ARCH must be 'unetpp' or 'unet'"):
        build_model(cfg)


def test_prune_report_cli(datasets, tmp_path, capsys):
    cfg = quick_cfg("semantic_2d_quick.yaml")
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    main = runpy.run_path(str(ROOT / "tools" / "prune_report.py"), run_name="cli")["main"]
    config = str(ROOT / "configs" / "quick_schedules" / "semantic_2d_quick.yaml")
    out = tmp_path / "report"
    main(["--config-file", config, "--weights", str(tmp_path / "model.pth"),
          "--output", str(out)])
    rows = json.loads((out / "prune_report.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["L1", "L2", "accurate"]
    assert [r["parameters"] for r in rows] == [model.net.parameter_count(1),
                                               model.net.parameter_count(2),
                                               model.net.parameter_count()]
    assert rows[0]["parameters"] < rows[1]["parameters"] < rows[2]["parameters"]
    assert "| L1 |" in (out / "prune_report.md").read_text()
    assert cv2.imread(str(out / "prune_report.png")).shape[2] == 3
    capsys.readouterr()
    weights = str(tmp_path / "model.pth")
    for args, message in [
        (["--weights", str(tmp_path / "missing.pth")], "missing.pth does not exist"),
        (["--weights", weights, "MODEL.SEMANTIC.ARCH", "unet"],
         "pruning needs UNet++ with deep supervision"),
        (["--weights", weights, "--dataset", "nodule_none"], "unknown data set 'nodule_none'")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--config-file", config, "--output", str(out), *args])
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        assert len(stderr.splitlines()) == 1 and message in stderr, stderr


def test_compare_runs_cli_tabulates_evaluated_runs(datasets, tmp_path, capsys):
    """Two runs (UNet++ with deep supervision, U-Net) evaluated by the evaluator into their
    output folders, then tabulated: names, sizes and scores come from those files."""
    expected = {}
    for name, opts in [("pp", ()), ("unet", ("MODEL.SEMANTIC.ARCH", "unet"))]:
        cfg = quick_cfg("semantic_2d_quick.yaml", "OUTPUT_DIR", str(tmp_path / name), *opts)
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(cfg.dump())
        model = build_model(cfg)
        evaluator = InferenceModes(model, SemanticEvaluator(
            "liver_val", output_dir=str(tmp_path / name / "inference" / "liver_val")))
        scores = inference_on_dataset(model, build_semantic_test_loader(cfg, "liver_val"),
                                      evaluator)["sem_seg"]
        expected[name] = (model.net.parameter_count(), scores)
    main = runpy.run_path(str(ROOT / "tools" / "compare_runs.py"), run_name="cli")["main"]
    main([str(tmp_path / "pp"), str(tmp_path / "unet"), "--output", str(tmp_path / "cmp.md")])
    rows = json.loads((tmp_path / "cmp.json").read_text())
    assert [(r["run"], r["network"], r["widths"]) for r in rows] == [
        ("pp", "UNet++ w/ DS", [4, 8, 16]), ("unet", "U-Net", [4, 8, 16])]
    for row, (parameters, scores) in zip(rows, expected.values()):
        assert row["parameters"] == parameters
        assert (row["IoU"], row["Dice"]) == (scores["IoU"], scores["Dice"])
        # training's evaluation scores every mode from one pass and times none of them
        assert "ms_per_image" not in row and "ms_per_image_accurate" not in scores
    assert (rows[0]["IoU_L1"], rows[0]["IoU_L2"]) == (expected["pp"][1]["IoU_L1"],
                                                      expected["pp"][1]["IoU_L2"])
    assert "IoU_L1" not in rows[1]
    table = (tmp_path / "cmp.md").read_text()
    assert table in capsys.readouterr().out
    assert table.splitlines()[0].startswith("| run | network | widths |")
    assert "| unet | U-Net | 4/8/16 |" in table and table.splitlines()[3].count(" - ") >= 1
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "pp"), "--dataset", "nodule_val"])
    assert exit_info.value.code == 2
    assert "nodule_val/semantic_results.json does not exist" in capsys.readouterr().err
