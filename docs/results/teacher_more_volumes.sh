#!/usr/bin/env bash
# The teacher on twice the labelled volumes (configs/experiments/teacher_choice/more_volumes.json): the shipped
# teacher recipe on grid more_volumes' split (612 training volumes, the shipped split's validation and test), 4
# slices from each of 4 volumes a step, seeds 0-2 three side by side, each job resumable (teacher_choice.sh's).
#   bash docs/results/teacher_more_volumes.sh      (from the repository root, the venv active)
set -euo pipefail
SPLIT=runs/more_volumes/datalists/split0-f100.json
[ -f "$SPLIT" ] || {
    echo "$SPLIT is missing: run GRID=more_volumes MORE_TRAINING=data/pretrained_more bash docs/results/student_schedule.sh" >&2
    exit 1
}
job() { echo "T1-128-612 $1 --config pretrained --slices_per_volume 4 --volumes_per_batch 4"; }
OUT=runs/teacher_more_volumes SPLIT=$SPLIT WORKERS=3 JOBS="$(job 0; job 1; job 2)" bash docs/results/teacher_choice.sh
