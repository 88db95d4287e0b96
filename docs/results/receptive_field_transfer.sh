#!/bin/bash
# The script that made receptive_field_transfer.json (run at commit 250d495; REPO is the repository, OUT the
# output folder; the real-CT scoring was then scripts/evaluate_real.py, now bundle.evaluation).
# Receptive-field diagnostic for synthetic -> real transfer of the student (protocol fixed before results):
# the demo's synthetic data (16 cases, seed 0, split seed 0), configs/demo.json, baseline students
# S1, S1-fast (stride-2 stem: twice the receptive field, same weights count) and S2 (three levels),
# one seed (0); per-volume 3D Dice on the two real CT fixtures (bundle.evaluation), all reported.
set -e
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
OUT=${OUT:-rf}
mkdir -p "$OUT" && cd "$OUT" && OUT=$(pwd) && . "$REPO/.venv/bin/activate"
export REPO OUT
export OMP_NUM_THREADS=2
B=$REPO
python - <<'PY'
from pathlib import Path
from bundle.data.synthetic import make_synthetic_dataset
import os
out = os.environ["OUT"]
if not Path(out, "synthetic/dataset.json").is_file():
    make_synthetic_dataset(f"{out}/synthetic", cases=16, seed=0)
PY
declare -A DEF
DEF[S1]="{'_target_': 'bundle.networks.FeatureUNet', 'in_channels': 1, 'out_channels': 1, 'channels': [16, 32], 'bottleneck': 64, 'convs_per_block': 1}"
DEF[S1fast]="{'_target_': 'bundle.networks.FeatureUNet', 'in_channels': 1, 'out_channels': 1, 'channels': [16, 32], 'bottleneck': 64, 'convs_per_block': 1, 'stem_stride': 2}"
DEF[S2]="{'_target_': 'bundle.networks.FeatureUNet', 'in_channels': 1, 'out_channels': 1, 'channels': [16, 32, 64], 'bottleneck': 128, 'convs_per_block': 1}"
for s in S1 S1fast S2; do
  [ -f out/models/$s/model.pt ] || python -m monai.bundle run training --config_file "['$B/configs/train.json','$B/configs/demo.json']" \
     --bundle_root $B --output_root $OUT/out --dataset_dir $OUT/synthetic --datalist_file $OUT/out/datalist.json \
     --seed 0 --run_name $s --publish false --student_def "${DEF[$s]}" > $OUT/$s.log 2>&1
  [ -f out/eval/$s/test/summary.json ] || python -m monai.bundle run evaluating --config_file "['$B/configs/train.json','$B/configs/evaluate.json','$B/configs/demo.json']" \
     --bundle_root $B --output_root $OUT/out --dataset_dir $OUT/synthetic --datalist_file $OUT/out/datalist.json \
     --run_name $s --student_def "${DEF[$s]}" > $OUT/$s.eval.log 2>&1
done
python - <<'PY'
import json, os
from bundle.evaluation import evaluate_model, REAL_CASES
repo, out_dir = os.environ["REPO"], os.environ["OUT"]
files = [f"{repo}/configs/{name}.json" for name in ("train", "evaluate", "demo")]
defs = {"S1": dict(channels=[16, 32], bottleneck=64), "S1fast": dict(channels=[16, 32], bottleneck=64, stem_stride=2),
        "S2": dict(channels=[16, 32, 64], bottleneck=128)}
out = {}
for name, d in defs.items():
    net = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "convs_per_block": 1, **d}
    out[name] = evaluate_model(net, f"{out_dir}/out/models/{name}/model.pt", files, REAL_CASES)
json.dump(out, open(f"{out_dir}/real_ct.json", "w"), indent=2)
print(json.dumps(out, indent=1))
PY
echo RFDONE > $OUT/done
