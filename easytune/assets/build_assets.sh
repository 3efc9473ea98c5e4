#!/usr/bin/env bash
# Rebuilds the embedded tiny models in easytune/assets/ from nothing but the project's own commands.
# `easytune quickstart --from-scratch` replays this script; run it by hand with
#   OUT=easytune/assets DATA=~/.cache/easytune/synth-600-seed0 bash easytune/assets/build_assets.sh
# Inputs (environment): OUT (folder for the checkpoints), DATA (dataset folder; generated when missing),
# EASYTUNE (the command, default `easytune`), FLOW (1, the default: also the flow-matching twin; 0: skip it).
# Deterministic for a given machine and thread count.
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
: "${DATA:?set DATA to the dataset folder}"
EASYTUNE=${EASYTUNE:-easytune}
FLOW=${FLOW:-1}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

[ -f "$DATA/Mean.npy" ] || $EASYTUNE data synth --out "$DATA" --clips 600 --seed 0
$EASYTUNE data check "$DATA" -q

# 1. Motion VAE, then the latent denoiser on its frozen latents (preset `tiny`), exported without
#    optimizer state.
#    The VAE loss (MSE on the features, no joint-position term) comes from the preset's train defaults.
$EASYTUNE pretrain vae --data "$DATA" --preset tiny --steps 3600 --batch-size 16 --lr 2e-3 --warmup 200 \
    --out "$WORK/vae.pt" --seed 0 --no-progress
$EASYTUNE pretrain mld --data "$DATA" --preset tiny --vae "$WORK/vae.pt" --steps 3000 --batch-size 32 \
    --lr 5e-4 --warmup 50 --out "$WORK/mld_train.pt" --seed 0 --no-progress
$EASYTUNE export "$WORK/mld_train.pt" --out "$WORK/mld_tiny.pt" --no-data-path --max-frames 196 --max-text-tokens 1 \
    --source "easytune/assets/build_assets.sh (pretrain vae + pretrain mld, preset tiny, synthetic data 600 clips seed 0)"
# 1b. Its flow-matching twin: the same denoiser preset on the same frozen VAE, trained with the flow objective
#     (velocity targets, FlowMatchEulerDiscreteScheduler); `--base default-flow`.
MODELS="mld_tiny reward evaluator"
if [ "$FLOW" = 1 ]; then
  $EASYTUNE pretrain mld --data "$DATA" --preset tiny --vae "$WORK/vae.pt" --objective flow --steps 3000 \
      --batch-size 32 --lr 5e-4 --warmup 50 --out "$WORK/mld_flow_train.pt" --seed 0 --no-progress
  $EASYTUNE export "$WORK/mld_flow_train.pt" --out "$WORK/mld_tiny_flow.pt" --no-data-path --max-frames 196 \
      --max-text-tokens 1 --source "easytune/assets/build_assets.sh (pretrain mld --objective flow on the VAE of \
mld_tiny.pt, preset tiny, synthetic data 600 clips seed 0)"
  MODELS="$MODELS mld_tiny_flow"
fi
# 2. Reward model: stage 1 (retrieval + reconstruction), then SPL self-refinement (lr 1e-5, top-10).
$EASYTUNE reward train --data "$DATA" --preset tiny --steps 600 --lr 5e-4 --sample-scale 1.0 \
    --out "$WORK/reward_stage1.pt" --seed 0
$EASYTUNE reward refine --init "$WORK/reward_stage1.pt" --data "$DATA" --steps 150 --out "$WORK/reward_train.pt" \
    --seed 0
$EASYTUNE export "$WORK/reward_train.pt" --out "$WORK/reward.pt" --no-data-path --source "easytune/assets/build_assets.sh"
# 3. The independent evaluator (different architecture and training from the reward model).
$EASYTUNE evaluator train --data "$DATA" --preset tiny --steps 1000 --lr 5e-4 --out "$WORK/evaluator_train.pt" \
    --seed 0
$EASYTUNE export "$WORK/evaluator_train.pt" --out "$WORK/evaluator.pt" --no-data-path \
    --source "easytune/assets/build_assets.sh"

for name in $MODELS; do cp "$WORK/$name.pt" "$OUT/$name.pt"; done
echo "wrote $MODELS into $OUT"
