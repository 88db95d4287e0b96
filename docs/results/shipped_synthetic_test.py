"""The shipped models on the synthetic test split of the data they were trained from: made shipped_synthetic_test.json.

    python docs/results/shipped_synthetic_test.py --work runs/shipped_test --out docs/results/shipped_synthetic_test.json

The shipped models were trained on `spleen-kd synthesize --cases 360 --seed 1000` split by
`configs/pretrained.json` (split seed 0, 5 % validation, 10 % test; the served student also on cases 360-665 of
that seed, added to the training volumes only). Case i of a seed depends only on
(seed, i), so the 36 test cases are made again alone (not the 2.7 GB of the other 324) with the
generator of this commit, and each shipped checkpoint is scored on them as `spleen-kd evaluate` scores a
test split (configs/evaluate.json: SliceInferer, inversion to the image grid, per-volume 3D metrics).
"""
import argparse
import json
from pathlib import Path

from bundle.data.datalist import split_by_volume
from bundle.data.synthetic import make_synthetic_dataset
from bundle.serving import model_info
from bundle.stats import read_volume_metrics
from bundle.workflows import bundle_run, config_files, models_dir, parsed, shipped_checkpoints

CASES, SEED = 360, 1000

parser = argparse.ArgumentParser()
parser.add_argument("--work", required=True, help="folder for the regenerated test cases and the evaluations")
parser.add_argument("--out", required=True)
args = parser.parse_args()
work = Path(args.work).resolve()
recipe = parsed(config_files("kd", "pretrained"))
fractions = {key: recipe.get_parsed_content(key) for key in ("val_fraction", "test_fraction", "student_fraction")}
names = [{"image": f"imagesTr/spleen_{i}.nii.gz", "label": f"labelsTr/spleen_{i}.nii.gz"} for i in range(CASES)]
test = split_by_volume(names, seed=0, **fractions)["test"]
indices = sorted(int(pair["image"].split("_")[1].split(".")[0]) for pair in test)
data = work / "synthetic"
for index in indices:
    make_synthetic_dataset(data, cases=1, seed=SEED, first_case=index)
datalist = work / "datalist.json"
datalist.write_text(json.dumps({"teacher_train": [], "validation": [], "student_train": [],
                                "test": [{"image": str(data / p["image"]), "label": str(data / p["label"])} for p in test]}))

results = {"data": f"the {len(indices)} test cases of spleen-kd synthesize --cases {CASES} --seed {SEED} "
                   f"(split seed 0, {fractions}), regenerated alone", "test_cases": indices, "models": {}}
for ckpt in shipped_checkpoints():
    info = model_info.read(ckpt)
    stage = "teacher" if info["network_def"].get("reconstruction") else "kd"
    name = ckpt.parent.name if ckpt.parent != models_dir() else "served"
    out = work / "eval" / name
    bundle_run("evaluating", config_files(stage, "pretrained", evaluate=True), output_root=str(out),
               datalist_file=str(datalist), dataset_dir=str(data), ckpt_path=str(ckpt), split="test",
               network_def=info["network_def"], slice_size=info["slice_size"], outputs=["seg"])
    summary = json.loads((out / "eval" / stage / "test" / "summary.json").read_text())
    volumes = read_volume_metrics(out / "eval" / stage / "test" / "metrics.csv")
    per_volume = {case: round(metrics["dice"], 4) for case, metrics in volumes.items()}
    results["models"][f"{name} ({info['name']})"] = {
        "checkpoint": str(ckpt.relative_to(models_dir().parent)), "checkpoint_sha256": info["checkpoint_sha256"],
        "volumes": summary["volumes"], "dice": {k: round(v, 4) for k, v in summary["metrics"]["dice"].items() if k != "n"},
        "surface_dice": round(summary["metrics"]["surface_dice"]["mean"], 4),
        "hd95_mm": round(summary["metrics"]["hd95_mm"]["mean"], 2), "dice_per_volume": per_volume}
    print(name, results["models"][f"{name} ({info['name']})"]["dice"], flush=True)
Path(args.out).write_text(json.dumps(results, indent=2))
