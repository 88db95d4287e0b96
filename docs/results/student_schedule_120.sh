#!/usr/bin/env bash
# Grid student_schedule_120 (configs/experiments/student_schedule_120.json): each 120-epoch run continues its
# 60-epoch twin of grid student_schedule from that run's final training state, copied here once (a rerun keeps
# the copy and resumes from wherever the continuation stopped). Seeds 0-2 (the study) three side by side, then
# seeds 3-4 (the spread) two side by side, one torch thread each.
#   bash docs/results/student_schedule_120.sh     (from the repository root, the venv active)
set -euo pipefail
continue_from() {  # continue_from FROM OUT SEEDS...: copy the 60-epoch runs' checkpoints under this grid's names
    local from=$1 out=$2 seed pair old new; shift 2
    for seed in "$@"; do
        for pair in "long-S1-fast-f50-dist e120-S1-fast-f50-dist" "S1-fast-f50-base S1-fast-f50-base"; do
            read -r old new <<< "$pair"
            if [ ! -e "$out/models/$new-s$seed/training_state.pt" ]; then
                mkdir -p "$out/models/$new-s$seed"
                cp "$from/models/$old-s$seed/model.pt" "$from/models/$old-s$seed/training_state.pt" "$out/models/$new-s$seed/"
            fi
        done
    done
}
continue_from runs/student_schedule runs/student_schedule_120 0 1 2
GRID=student_schedule_120 bash docs/results/student_schedule.sh
continue_from runs/student_schedule_seeds34 runs/student_schedule_120_seeds34 3 4
GRID=student_schedule_120 OUT=runs/student_schedule_120_seeds34 SEEDS="3 4" bash docs/results/student_schedule.sh
