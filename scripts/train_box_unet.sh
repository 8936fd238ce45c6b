#!/usr/bin/env bash
# Train the bundled box U-Net and export it as weights/box_unet_phantom.safetensors + .json
# (the JSON records the phantom seeds, the training config, validation Dice, held-out box recall and, for
# stage 2, stage 1's own record under training.init).
#
# Stage 1, configs/box_unet/phantom.yaml: liver-tumour phantoms 2000-2159 (train/val), 3000-3007 (test),
#   10,000 steps at 256 px.
# Stage 2: the same preset continued from stage 1 (init) on 160 new phantoms, 4000-4159, 4,000 steps at
#   lr 5e-4. On 1000-1003 it raised tumour box recall from 0.848 to 0.939 (bench/RESULTS.md).
# About 40 + 20 minutes on two CPU cores (OMP_NUM_THREADS=2), minutes on a GPU. Extra arguments go to both
# stages' train_box_unet.py and win over the preset, e.g. a quick check that writes nothing into weights/:
#
#   OUT=/tmp/bu bash scripts/train_box_unet.sh --max-steps 20
#
# Several processes / GPUs: LAUNCH_ARGS="--multi_gpu --num_processes 2" bash scripts/train_box_unet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
    case "$arg" in
        --output-dir*|--output_dir*|--export*|init=*)
            echo "train_box_unet.sh: $arg would apply to both stages; set OUT=DIR instead" >&2; exit 2 ;;
    esac
done
if [ -x .venv/bin/accelerate ]; then ACCELERATE=.venv/bin/accelerate; else ACCELERATE=accelerate; fi
OUT=${OUT:-runs}
EXPORT=weights/box_unet_phantom.safetensors
if [ "$OUT" != runs ]; then EXPORT="$OUT/box_unet_phantom.safetensors"; fi
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of flags
"$ACCELERATE" launch ${LAUNCH_ARGS:-} train_box_unet.py --config configs/box_unet/phantom.yaml \
    --output-dir "$OUT/box_unet" "$@"
# shellcheck disable=SC2086
exec "$ACCELERATE" launch ${LAUNCH_ARGS:-} train_box_unet.py --config configs/box_unet/phantom.yaml \
    --data "phantom:liver-tumor?n=160&seed=4000" --max-steps 4000 --lr 0.0005 --set "init=$OUT/box_unet" \
    --output-dir "$OUT/box_unet_stage2" --export "$EXPORT" "$@"
