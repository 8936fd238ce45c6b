#!/usr/bin/env bash
# Pretrain the bundled samliver_tiny model and export it as weights/samliver_tiny.safetensors
# (+ weights/samliver_tiny.json: phantom version, training config, validation Dice; + .sha256).
#
# Full fine-tuning with the prompt encoder, from random weights, on organ phantoms
# (configs/train/pretrain_tiny.yaml); about an hour on a laptop CPU. Extra arguments go to
# train_adapter.py and win over the preset, e.g. a quick check that writes nothing into weights/:
#
#   bash scripts/pretrain_tiny.sh --max-steps 20 --output-dir /tmp/pt --export-base /tmp/pt/tiny.safetensors
#
# Several processes / GPUs: LAUNCH_ARGS="--multi_gpu --num_processes 2" bash scripts/pretrain_tiny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/accelerate ]; then ACCELERATE=.venv/bin/accelerate; else ACCELERATE=accelerate; fi
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of flags
exec "$ACCELERATE" launch ${LAUNCH_ARGS:-} train_adapter.py --config configs/train/pretrain_tiny.yaml \
    --export-base weights/samliver_tiny.safetensors "$@"
