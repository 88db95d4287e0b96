"""Two-process DDP (gloo, CPU) through torchrun with the multi-GPU override, as on a cluster node."""

import json
import os
import subprocess

import pytest

from conftest import REPO, TINY_STUDENT as STUDENT, TINY_TEACHER as TEACHER, bundle_cli, config_files


def _first_error(text: str) -> str:
    """From the first traceback or abort of any rank on (torchrun's own summary at the end names no cause)."""
    found = [i for i in (text.find("Traceback"), text.find("terminate called")) if i >= 0]
    start = min(found) if found else max(0, len(text) - 4000)
    return text[start:start + 6000]


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
    # one override serves every workflow: train.json, the workflow's override, multi_gpu_train.json
    files = config_files(workflow, "multi_gpu_train", str(extra))
    epochs = 2
    overrides = {"output_root": root, "dataset_dir": phantom_dir, "slice_size": 32, "slices_per_volume": 2,
                 "epochs": epochs, "val_interval": 1, "teacher_def": TEACHER, "student_def": STUDENT, "probe_dir": probe,
                 "student_fraction": 1.0, "val_fraction": 0.35}  # 3 validation volumes: one rank has 2, the other 1
    command = bundle_cli("training", files, **overrides)
    command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # from another working directory; the probe handler is imported as tests.ddp_probe
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, _first_error(result.stdout + result.stderr)
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    split = json.loads((root / "eval/datalist.json").read_text())
    volumes = len(split["teacher_train" if workflow == "teacher" else "student_train"])
    per_rank_steps = epochs * -(-volumes // 2)  # DistributedSampler pads to an even share
    assert [r["iterations"] for r in ranks] == [per_rank_steps, per_rank_steps]
    first_epoch = [set(r["seen"][: len(r["seen"]) // epochs]) for r in ranks]
    if volumes % 2 == 0:
        assert not first_epoch[0] & first_epoch[1]
    assert first_epoch[0] | first_epoch[1] == {p["image"] for p in split[
        "teacher_train" if workflow == "teacher" else "student_train"]}
    assert (root / "models" / workflow / "model.pt").is_file()
    assert (root / "models/model.pt").is_file() == (workflow == "kd")  # a teacher run publishes nothing
    # gradients are synchronised: student (and distillation heads) end identical on both ranks
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    # validation scores every volume once: no padded duplicate counts in the key metric
    assert len(split["validation"]) == 3
    assert ranks[0]["validation_scored"]["val_mean_dice"] == len(split["validation"])
    assert ranks[0]["validation_scored"] == ranks[1]["validation_scored"]
