#!/usr/bin/env bash
# The teacher-choice study and its extension T1-160 (configs/experiments/teacher_choice/study.json): each
# job trains one teacher on the shipped split, evaluates it on the 36 test volumes and on the two real
# fixtures. Two workers (WORKERS=n for another count) take jobs from one queue, one torch thread each.
# A rerun skips the jobs with a real_ct.json and resumes the others from their last training state
# (--resume true; logs are appended to, so the validation history stays whole; train_seconds then
# counts the last attempt only). The extension's seeds 0 and 1 were interrupted after epoch 5 and
# resumed with WORKERS=3 (seed 2 beside them), all three on the 2-core machine.
# OUT, SPLIT and JOBS (queue lines "arm seed configs...") run another teacher study the same way
# (docs/results/teacher_more_volumes.sh).
#   bash docs/results/teacher_choice.sh            (from the repository root, the venv active)
set -euo pipefail
OUT=${OUT:-runs/teacher_choice}
SPLIT=${SPLIT:-runs/shipped/datalists/split0-f50.json}
HALF=configs/experiments/teacher_choice/half_width.json
S160=configs/experiments/teacher_choice/slice160.json
mkdir -p "$OUT"
if [ -n "${JOBS:-}" ]; then
    printf '%s\n' "$JOBS" > "$OUT/queue"
else
    cat > "$OUT/queue" <<JOBS
T1-128 2 --config pretrained
T1-half-128 0 --config pretrained --config $HALF
T1-half-128 1 --config pretrained --config $HALF
T1-half-160 0 --config pretrained --config $HALF --config $S160
T1-half-160 1 --config pretrained --config $HALF --config $S160
T1-160 0 --config pretrained --config $S160
T1-160 1 --config pretrained --config $S160
T1-160 2 --config pretrained --config $S160
JOBS
fi

job() {  # arm seed configs...
    local arm=$1 seed=$2; shift 2
    local run="$OUT/$arm-s$seed"
    [ -f "$run/real_ct.json" ] && return 0
    local start=$(date +%s)
    spleen-kd train teacher "$@" --out "$run" --dataset_dir data/pretrained --datalist_file "$SPLIT" \
        --seed "$seed" --publish true --served_model "$run/served/model.pt" --resume true
    echo "$(( $(date +%s) - start ))" > "$run/train_seconds"
    spleen-kd evaluate teacher "$@" --out "$run" --dataset_dir data/pretrained --datalist_file "$SPLIT"
    spleen-kd evaluate --real --ckpt "$run/served/model.pt" --json "$run/real_ct.json"
}

worker() {
    while true; do
        line=$(flock "$OUT/queue" sh -c 'head -n1 "$0"; sed -i 1d "$0"' "$OUT/queue")
        [ -z "$line" ] && return 0
        echo "$(date -u +%FT%TZ) worker $1 starts: $line"
        job $line >> "$OUT/$(echo "$line" | awk '{print $1"-s"$2}').log" 2>&1 || echo "FAILED: $line"
        echo "$(date -u +%FT%TZ) worker $1 done: $line"
    done
}

export OMP_NUM_THREADS=1
for w in $(seq "${WORKERS:-2}"); do worker "$w" & sleep 5; done; wait
