"""Per-volume 3D Dice of trained models on the real labelled CT fixtures (transfer to real scans).

    spleen-kd evaluate --real --out demo_out      # the demo's teacher, baseline and KD student
    spleen-kd evaluate --real --grid runs/proof   # every trained run of an experiment grid
    spleen-kd evaluate --real --shipped           # the weights in models/

Prediction follows ``configs/evaluate.json`` (its image preprocessing, ``SliceInferer``, sigmoid,
inversion to the image grid, threshold 0.5, no post-processing). The label map is resampled onto the
image's grid with nearest neighbour, so a DICOM series and a LAS label map pair up correctly. Dice is
also given after keeping the largest connected component, as ``configs/inference.json`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data.assets import REAL_CASES


def dice(prediction, label) -> float:
    """Dice of two binary volumes; 1.0 when both are empty."""
    total = prediction.sum() + label.sum()
    return 1.0 if total == 0 else float(2.0 * (prediction & label).sum() / total)


def evaluate_model(network_def, ckpt_path: str | Path | None, config_files: list[str],
                   cases: dict[str, tuple[Path, Path]] = REAL_CASES, label_value: int = 1,
                   overrides: dict | None = None) -> dict[str, dict]:
    """``{subject: {"dice": ..., "dice_largest_component": ..., "label_voxels": ..., "predicted_voxels": ...}}``
    for a network config (``network_def``; None: the configs' own) with weights at ``ckpt_path``, or a ready
    ``torch.nn.Module``; ``overrides`` are applied to the merged configs, as ``monai.bundle run`` would."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, KeepLargestConnectedComponent,
                                  LoadImaged, ResampleToMatchd)

    from .checkpoint import load_weights
    from .teacher import binary_logit

    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update(overrides or {})
    image_preprocessing = Compose(parser.get_parsed_content("image_preprocessing"))
    inferer = parser.get_parsed_content("inferer")
    if isinstance(network_def, torch.nn.Module):
        network = network_def.eval()
    elif network_def is None:
        network = load_weights(parser.get_parsed_content("network_def"), ckpt_path).eval()
    else:
        network = load_weights(ConfigParser({"net": network_def}).get_parsed_content("net"), ckpt_path).eval()
    to_image_grid = Compose([Invertd("pred", image_preprocessing, orig_keys="image", nearest_interp=False),
                             AsDiscreted("pred", threshold=0.5)])
    load_reference = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                              ResampleToMatchd("label", "image", mode="nearest")])
    results = {}
    for subject, (image_path, label_path) in cases.items():
        for path in (image_path, label_path):
            if not Path(path).exists():
                raise FileNotFoundError(f"real CT case '{path}' is missing.")
        data = image_preprocessing({"image": str(image_path)})
        with torch.no_grad():
            outputs = inferer(data["image"][None], network)
        logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        if logits.shape[1] > 1:  # a softmax network (background, spleen): a 3D teacher
            logits = binary_logit(logits, 1, "softmax")
        data["pred"] = torch.sigmoid(logits[0])
        prediction = np.asarray(to_image_grid(data)["pred"][0]) > 0
        label = np.asarray(load_reference({"image": str(image_path), "label": str(label_path)})["label"][0])
        label = np.round(label) == label_value
        if prediction.shape != label.shape:
            raise RuntimeError(f"{subject}: prediction {prediction.shape} and label {label.shape} differ in shape")
        largest = np.asarray(KeepLargestConnectedComponent()(torch.as_tensor(prediction[None])))[0] > 0
        results[subject] = {"dice": round(dice(prediction, label), 4),
                            "dice_largest_component": round(dice(largest, label), 4),
                            "label_voxels": int(label.sum()), "predicted_voxels": int(prediction.sum())}
    return results


def evaluate_checkpoint(ckpt: str | Path, extra_configs: list[str] = (),
                        cases: dict[str, tuple[Path, Path]] = REAL_CASES) -> dict[str, dict]:
    """:func:`evaluate_model` for a checkpoint with its ``model.json``: the network and preprocessing it
    was trained with, as inference serves it."""
    from .serving import model_info
    from .workflows import config_files

    info = model_info.read(ckpt)
    overrides = {k: info[k] for k in ("slice_size", "hu_window", "axcodes", "pixdim")}
    return evaluate_model(info["network_def"], ckpt, config_files("student", *extra_configs, evaluate=True),
                          cases, overrides=overrides)


def evaluate_demo(out: Path, configs: list[str]) -> dict[str, dict]:
    """The teacher, baseline and KD student of a ``spleen-kd demo`` run (``out``, trained with the override
    ``configs``) on the real fixtures."""
    from .demo import EVALUATED, best_model, teacher_checkpoint
    from .workflows import config_files, network_definition

    results = {}
    for name, stage in EVALUATED.items():
        files = config_files(stage, *configs, evaluate=True)
        ckpt = teacher_checkpoint(out) if stage == "teacher" else best_model(out, stage)
        results[name] = summarised(evaluate_model(network_definition(files, stage), ckpt, files))
    return results


def summarised(per_subject: dict) -> dict:
    return {"subjects": per_subject,
            "mean_dice": round(sum(r["dice"] for r in per_subject.values()) / len(per_subject), 4),
            "mean_dice_largest_component": round(
                sum(r["dice_largest_component"] for r in per_subject.values()) / len(per_subject), 4)}


def evaluate_grid(out: Path) -> dict[str, dict]:
    """Every trained run of a ``spleen-kd grid`` output folder, with the configs and overrides its
    training used (``OUT/stages/<run>/train.json``) and its best checkpoint (``OUT/models/<run>/model.pt``)."""
    from .workflows import EVALUATION, WORKFLOWS, located

    results = {}
    for marker in sorted(Path(out).glob("stages/*/train.json")):
        run, trained = marker.parent.name, json.loads(marker.read_text())
        ckpt = Path(out) / "models" / run / "model.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{marker} says '{run}' was trained, but {ckpt} is missing.")
        names = {Path(f).name for f in trained["config_files"]}
        evaluation = [located("evaluate"), *(located(f) for workflow, extra in EVALUATION.items()
                                             if WORKFLOWS[workflow][-1] in names for f in extra)]
        per_subject = evaluate_model(None, ckpt, [*trained["config_files"], *evaluation],
                                     overrides=trained["overrides"])
        results[run] = summarised(per_subject)
        print(f"{run}: mean Dice {results[run]['mean_dice']:.3f}", flush=True)
    return results


def report(results: dict[str, dict]) -> str:
    """One line per model: its mean Dice and the per-subject Dice."""
    return "\n".join(f"{name}: mean Dice {entry['mean_dice']:.3f} ("
                     + " | ".join(f"{s} {r['dice']:.3f}" for s, r in entry["subjects"].items())
                     + f"); largest component {entry['mean_dice_largest_component']:.3f}"
                     for name, entry in results.items())
