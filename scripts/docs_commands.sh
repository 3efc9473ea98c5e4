#!/usr/bin/env bash
# The fine-tuning run options of docs/methods.md (LoRA, EMA, resume, data-parallel), each run as documented
# but short (4 trajectories of 2 prompts, 10 DDIM steps) on the embedded tiny models, so the documented
# commands are known to work. Prints each command and the last line it printed.
#
#   bash scripts/docs_commands.sh [DATA] [WORK]
# DATA: a dataset folder (default: the quickstart's cached synthetic set, generated when missing);
# WORK: a scratch folder (default: a new temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${1:-$HOME/.cache/easytune/synth-600-seed0}
WORK=${2:-$(mktemp -d)}
[ -f "$DATA/Mean.npy" ] || "$BIN/easytune" data synth --out "$DATA" --clips 600 --seed 0 --no-progress
SHORT=(--data "$DATA" --steps 4 --batch-size 2 --inference-steps 10 --warmup 1 --no-progress --device cpu)

run() {
    echo "\$ $*"
    "$@" 2>&1 | grep -v '^INFO' | tail -n 1
}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
run "$BIN/easytune" finetune --method easytune --out "$WORK/et-lora" --lora-rank 8 --lora-alpha 16 "${SHORT[@]}"
run "$BIN/easytune" finetune --method easytune --out "$WORK/et-ema" --ema 0.999 "${SHORT[@]}"
run "$BIN/easytune" finetune --method easytune --out "$WORK/et" "${SHORT[@]}" --steps 2
run "$BIN/easytune" finetune --method easytune --out "$WORK/et" "${SHORT[@]}" --resume
run "$BIN/torchrun" --nproc-per-node 2 -m easytune finetune --method easytune --out "$WORK/et-ddp" "${SHORT[@]}"
echo "run directories in $WORK:"
ls "$WORK"/*
