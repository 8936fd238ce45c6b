#!/usr/bin/env bash
# Train the bundled box U-Net and export it as weights/box_unet_phantom.safetensors + .json
# (the JSON records the phantom seeds, the training config, validation Dice and held-out box recall).
#
# configs/box_unet/phantom.yaml: liver-tumour phantoms, seeds 2000-2159 (train/val) and 3000-3007 (test);
# 10,000 steps at 256 px: about an hour on two CPU cores (OMP_NUM_THREADS=2), minutes on a GPU. Extra arguments go to train_box_unet.py and win
# over the preset, e.g. a quick check that writes nothing into weights/:
#
#   bash scripts/train_box_unet.sh --max-steps 20 --output-dir /tmp/bu --export /tmp/bu/export
#
# Several processes / GPUs: LAUNCH_ARGS="--multi_gpu --num_processes 2" bash scripts/train_box_unet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/accelerate ]; then ACCELERATE=.venv/bin/accelerate; else ACCELERATE=accelerate; fi
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of flags
exec "$ACCELERATE" launch ${LAUNCH_ARGS:-} train_box_unet.py --config configs/box_unet/phantom.yaml \
    --export weights/box_unet_phantom.safetensors "$@"
