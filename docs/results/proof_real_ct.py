"""The phantom proof grid's models on the two real CT fixtures (made proof_real_ct.json).

    python docs/results/proof_real_ct.py --worktree WT --out proof_real_ct.json

WT: a worktree of commit cb1e09b (the configs the phantom grid was trained with) holding the grid's
output in WT/runs/proof; run with PYTHONPATH=WT so that its `bundle` package serves its configs.
Scoring is bundle.evaluation's evaluate_model (then scripts/evaluate_real.py), as `spleen-kd evaluate --real
--grid` does for grids trained with the current configs.
"""
import argparse
import json
import os
import statistics
from pathlib import Path

ARMS = ("teacher-T1", "S1-f50-base-", "T1-S1-f50-dist-", "T1-S1-f50-dist+unl-")

parser = argparse.ArgumentParser()
parser.add_argument("--worktree", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
out_file = Path(args.out).resolve()
from bundle import evaluation
os.chdir(args.worktree)  # its configs link each other by paths relative to it
grid = Path("runs/proof").resolve()
teacher_def = json.loads(Path("configs/demo.json").read_text())["teacher_def"]
runs = {}
for marker in sorted(grid.glob("stages/*/train.json")):
    name = marker.parent.name
    if not name.startswith(ARMS):
        continue
    trained = json.loads(marker.read_text())
    per = evaluation.evaluate_model(teacher_def if name.startswith("teacher") else None, grid / "models" / name / "model.pt",
                                       [*trained["config_files"], "configs/evaluate.json"], overrides=trained["overrides"])
    runs[name] = {"mean_dice": evaluation.summarised(per)["mean_dice"], "subjects": {s: r["dice"] for s, r in per.items()}}
    print(name, runs[name], flush=True)
configs = {}
for name, result in runs.items():
    configs.setdefault(name if name.startswith("teacher") else name.rsplit("-s", 1)[0], []).append(result["mean_dice"])
out_file.write_text(json.dumps({"runs": runs, "mean_dice": {c: round(statistics.mean(v), 4) for c, v in configs.items()}}, indent=2))
