#!/usr/bin/env bash
# Grid ensemble_teacher (configs/experiments/ensemble_teacher.json): the served recipe distilled from the teacher
# ensemble. Its baseline arm is grid student_schedule's S1-fast-f50-base-sN (the same runs, not re-run): their
# checkpoints, evaluations and stage markers are copied here once, with the split, so the grid trains only the
# ens-* runs. Seeds 0-2 (the study) three side by side, then seeds 3-4 (the spread) two side by side, one torch
# thread each. Needs runs/teacher_ensemble (python docs/results/teacher_ensemble.py --out docs/results/teacher_ensemble).
#   bash docs/results/ensemble_teacher.sh     (from the repository root, the venv active)
set -euo pipefail
[ -f runs/teacher_ensemble/models/teacher/model.pt ] || {
    echo "runs/teacher_ensemble is missing: run python docs/results/teacher_ensemble.py --out docs/results/teacher_ensemble" >&2
    exit 1
}
baselines_from() {  # baselines_from FROM OUT SEEDS...: the student-alone runs of grid student_schedule, as they are
    local from=$1 out=$2 seed run part; shift 2
    mkdir -p "$out/datalists"
    cp -n "$from/datalists/split0-f50.json" "$out/datalists/"
    for seed in "$@"; do
        run=S1-fast-f50-base-s$seed
        for part in models eval stages; do
            [ -e "$out/$part/$run" ] || { mkdir -p "$out/$part" && cp -r "$from/$part/$run" "$out/$part/"; }
        done
    done
}
baselines_from runs/student_schedule runs/ensemble_teacher 0 1 2
GRID=ensemble_teacher bash docs/results/student_schedule.sh
baselines_from runs/student_schedule_seeds34 runs/ensemble_teacher_seeds34 3 4
GRID=ensemble_teacher OUT=runs/ensemble_teacher_seeds34 SEEDS="3 4" bash docs/results/student_schedule.sh
