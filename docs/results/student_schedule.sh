#!/usr/bin/env bash
# The student-schedule grid (configs/experiments/student_schedule.json): one grid process a seed, three side
# by side, one torch thread each; then one pass without training writes the whole grid's summary and the
# real-fixture scores. A rerun skips finished runs and resumes interrupted ones from their training state.
#   bash docs/results/student_schedule.sh         (from the repository root, the venv active)
set -euo pipefail
OUT=runs/student_schedule
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for seed in 0 1 2; do
    spleen-kd grid --out "$OUT" --grid student_schedule --dataset_dir data/pretrained --seeds "$seed" \
        > "$OUT/grid-s$seed.log" 2>&1 &
    sleep 20
done
wait
spleen-kd grid --out "$OUT" --grid student_schedule --dataset_dir data/pretrained > "$OUT/grid.log" 2>&1
spleen-kd evaluate --real --grid "$OUT" --json "$OUT/real_ct.json" > "$OUT/real_ct.log" 2>&1
