#!/bin/bash
# The exact script that made receptive_field_transfer.json (paths of the development machine: /work/main is
# the repository, /work/rf the output folder).
# Receptive-field diagnostic for synthetic -> real transfer of the student (protocol fixed before results):
# the demo's synthetic data (16 cases, seed 0, split seed 0), configs/demo.json, baseline students
# S1, S1-fast (stride-2 stem: twice the receptive field, same weights count) and S2 (three levels),
# one seed (0); per-volume 3D Dice on the two real CT fixtures (scripts/evaluate_real.py), all reported.
set -e
cd /work/rf && . /work/main/.venv/bin/activate
export OMP_NUM_THREADS=2
B=/work/main
python - <<'PY'
from pathlib import Path
from bundle.data.synthetic import make_synthetic_dataset
if not Path("/work/rf/synthetic/dataset.json").is_file():
    make_synthetic_dataset("/work/rf/synthetic", cases=16, seed=0)
PY
declare -A DEF
DEF[S1]="{'_target_': 'bundle.networks.FeatureUNet', 'in_channels': 1, 'out_channels': 1, 'channels': [16, 32], 'bottleneck': 64, 'convs_per_block': 1}"
DEF[S1fast]="{'_target_': 'bundle.networks.FeatureUNet', 'in_channels': 1, 'out_channels': 1, 'channels': [16, 32], 'bottleneck': 64, 'convs_per_block': 1, 'stem_stride': 2}"
DEF[S2]="{'_target_': 'bundle.networks.FeatureUNet', 'in_channels': 1, 'out_channels': 1, 'channels': [16, 32, 64], 'bottleneck': 128, 'convs_per_block': 1}"
for s in S1 S1fast S2; do
  [ -f out/models/$s/model.pt ] || python -m monai.bundle run training --config_file "['$B/configs/train.json','$B/configs/demo.json']" \
     --bundle_root $B --output_root /work/rf/out --dataset_dir /work/rf/synthetic --datalist_file /work/rf/out/datalist.json \
     --seed 0 --run_name $s --publish false --student_def "${DEF[$s]}" > /work/rf/$s.log 2>&1
  [ -f out/eval/$s/test/summary.json ] || python -m monai.bundle run evaluating --config_file "['$B/configs/train.json','$B/configs/evaluate.json','$B/configs/demo.json']" \
     --bundle_root $B --output_root /work/rf/out --dataset_dir /work/rf/synthetic --datalist_file /work/rf/out/datalist.json \
     --run_name $s --student_def "${DEF[$s]}" > /work/rf/$s.eval.log 2>&1
done
python - <<'PY'
import json, sys
sys.path.insert(0, "/work/main/scripts")
from evaluate_real import evaluate_model, REAL_CASES
files = ["/work/main/configs/train.json", "/work/main/configs/evaluate.json", "/work/main/configs/demo.json"]
defs = {"S1": dict(channels=[16, 32], bottleneck=64), "S1fast": dict(channels=[16, 32], bottleneck=64, stem_stride=2),
        "S2": dict(channels=[16, 32, 64], bottleneck=128)}
out = {}
for name, d in defs.items():
    net = {"_target_": "bundle.networks.FeatureUNet", "in_channels": 1, "out_channels": 1, "convs_per_block": 1, **d}
    out[name] = evaluate_model(net, f"/work/rf/out/models/{name}/model.pt", files, REAL_CASES)
json.dump(out, open("/work/rf/real_ct.json", "w"), indent=2)
print(json.dumps(out, indent=1))
PY
echo RFDONE > /work/rf/done
