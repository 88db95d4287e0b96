#!/usr/bin/env bash
# A student-schedule grid (configs/experiments/$GRID.json, default student_schedule): one grid process a seed, side by
# side, one torch thread each; then one pass without training writes the summary of those seeds and the
# real-fixture scores. A rerun skips finished runs and resumes interrupted ones from their training state.
#   bash docs/results/student_schedule.sh                                           # seeds 0-2 (the study)
#   OUT=runs/student_schedule_seeds34 SEEDS="3 4" bash docs/results/student_schedule.sh   # the spread's seeds 3-4
#   GRID=more_volumes MORE_TRAINING=data/pretrained_more bash docs/results/student_schedule.sh  # more training volumes
# (from the repository root, the venv active)
set -euo pipefail
GRID=${GRID:-student_schedule}
OUT=${OUT:-runs/$GRID}
SEEDS=${SEEDS:-0 1 2}
DATA=(--dataset_dir data/pretrained ${MORE_TRAINING:+--more_training "$MORE_TRAINING"})
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for seed in $SEEDS; do
    spleen-kd grid --out "$OUT" --grid "$GRID" "${DATA[@]}" --seeds "$seed" \
        > "$OUT/grid-s$seed.log" 2>&1 &
    sleep 20
done
wait
spleen-kd grid --out "$OUT" --grid "$GRID" "${DATA[@]}" --seeds $SEEDS > "$OUT/grid.log" 2>&1
spleen-kd evaluate --real --grid "$OUT" --json "$OUT/real_ct.json" > "$OUT/real_ct.log" 2>&1
