"""Two-process DDP (gloo, CPU) through torchrun with the multi-GPU override, as on a cluster node."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDENT = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "channels": [4, 8],
           "bottleneck": 8, "convs_per_block": 1}
TEACHER = {**STUDENT, "reconstruction": True}


@pytest.mark.parametrize("workflow", ["teacher", "kd"])
def test_two_ranks_train_on_disjoint_volumes_for_the_configured_steps(phantom_dir, tmp_path, workflow):
    root = tmp_path / "root"
    probe = tmp_path / "probe"
    if workflow == "kd":  # a teacher checkpoint to distill from
        import torch

        from bundle.networks import FeatureUNet

        (root / "models/teacher").mkdir(parents=True)
        torch.save(FeatureUNet(channels=(4, 8), bottleneck=8, reconstruction=True).state_dict(),
                   root / "models/teacher/model.pt")
    extra = tmp_path / "probe.json"
    trained = ["@network", "@loss"] if workflow == "kd" else ["@network"]
    extra.write_text(json.dumps({"+train#handlers": [{"_target_": "tests.ddp_probe.SeenVolumes", "out_dir": "@probe_dir",
                                                      "modules": trained, "validator": "@validate#evaluator"}]}))
    configs = f"['configs/{workflow}.json','configs/multi_gpu_{workflow}.json','{extra}']"
    epochs = 2
    overrides = {"bundle_root": root, "dataset_dir": phantom_dir, "datalist_file": root / "datalist.json",
                 "slice_size": 32, "slices_per_volume": 2, "epochs": epochs, "val_interval": 1,
                 "teacher_def": json.dumps(TEACHER), "student_def": json.dumps(STUDENT), "probe_dir": probe,
                 "student_fraction": 1.0, "val_fraction": 0.35}  # 3 validation volumes: one rank has 2, the other 1
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "monai.bundle", "run", "training", "--config_file", configs,
               "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    split = json.loads((root / "datalist.json").read_text())
    volumes = len(split["teacher_train" if workflow == "teacher" else "student_train"])
    per_rank_steps = epochs * -(-volumes // 2)  # DistributedSampler pads to an even share
    assert [r["iterations"] for r in ranks] == [per_rank_steps, per_rank_steps]
    first_epoch = [set(r["seen"][: len(r["seen"]) // epochs]) for r in ranks]
    if volumes % 2 == 0:
        assert not first_epoch[0] & first_epoch[1]
    assert first_epoch[0] | first_epoch[1] == {p["image"] for p in split[
        "teacher_train" if workflow == "teacher" else "student_train"]}
    assert (root / ("models/model.pt" if workflow == "kd" else "models/teacher/model.pt")).is_file()
    # gradients are synchronised: student (and distillation heads) end identical on both ranks
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    # validation scores every volume once: no padded duplicate counts in the key metric
    assert len(split["validation"]) == 3
    assert ranks[0]["validation_scored"]["val_mean_dice"] == len(split["validation"])
    assert ranks[0]["validation_scored"] == ranks[1]["validation_scored"]
