#!/usr/bin/env bash
# GPU check of issue 7 on one H100/H200 (about 5 minutes): speed of inference and training, bf16 masks
# against fp32, and a real `train_adapter.py --method lora --max-steps 20` run in bf16.
#
#   bash bench/gpu_check.sh [--quick] [--device cpu] [--no-compile] [--sections ...]   (from anywhere)
#
# Needs PyTorch, transformers, peft, accelerate and safetensors (preinstalled there). Everything else
# comes from wheels carried beside the script: $WHEELS, default bench/wheels, else the repository's .whl/
# (segment_anything, monai, nibabel; `pip download --no-deps` them here). The repository is installed
# with `pip install --no-deps --no-build-isolation --no-index --target $SITE` (samliver.adapters etc.
# exist only installed) and everything runs from $WORK, outside the source tree, so the installed
# package is the one imported. Optional: CT=... LABEL=... also run bench/gpu_check.py (Predictor on
# CUDA against the upstream SamPredictor on a real CT). --quick --device cpu smoke-tests this script
# on a CPU with tiny sizes. Output: one line per measurement, then SUMMARY lines (JSON).
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/samliver_site}"
WORK="${WORK:-/tmp/samliver_gpu_check}"
WHEELS="${WHEELS:-$HERE/wheels}"
[ -d "$WHEELS" ] || WHEELS="$ROOT/.whl"

QUICK=0; DEVICE=""
for arg in "$@"; do
  case "$arg" in --quick) QUICK=1 ;; cpu|cuda|cuda:*) DEVICE="$arg" ;; esac
done
START=$(date +%s)
echo "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname), args: $*"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

rm -rf "$SITE" "$WORK"; mkdir -p "$SITE" "$WORK"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
fi
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --target "$SITE" "$ROOT"
export PYTHONPATH="$SITE:$ROOT"             # samliver from $SITE; bench from the source tree
cd "$WORK"
"$PY" -c "import samliver, segment_anything, monai; print('samliver', samliver.__version__, 'from', samliver.__file__)"

"$PY" -m bench.gpu_perf "$@"

# A real training run: the default LoRA job (bundled samliver_tiny, liver-tumour phantoms), bf16 on the GPU.
cp "$ROOT/train_adapter.py" "$WORK/"
if [ "$QUICK" = 1 ]; then STEPS=2; else STEPS=20; fi
TRAIN=(--method lora --max-steps "$STEPS" --output-dir "$WORK/run_lora" --overwrite --eval-every 10
       --checkpoint-every 0 --log-with none)
if [ "$DEVICE" = cpu ]; then TRAIN+=(--cpu); else TRAIN+=(--mixed-precision bf16); fi
echo "train_adapter.py ${TRAIN[*]}"
T0=$(date +%s)
# progress-bar frames dropped from the log (tqdm separates them with carriage returns)
"$PY" train_adapter.py "${TRAIN[@]}" 2>&1 | tr '\r' '\n' | grep -v -E '[0-9]+/[0-9]+ \[|^\s*$' \
  || { echo "train_adapter.py FAILED"; exit 1; }
"$PY" - "$WORK/run_lora" <<'PY'
import json, sys
from pathlib import Path
run = json.loads((Path(sys.argv[1]) / "run.json").read_text())
keys = ("status", "mixed_precision", "device", "trainable_parameters", "train_slices")
print("SUMMARY train_adapter " + json.dumps({k: run.get(k) for k in keys}))
PY
echo "train_adapter.py wall $(( $(date +%s) - T0 )) s"

if [ -n "${CT:-}" ] && [ -n "${LABEL:-}" ]; then
  "$PY" -m bench.gpu_check --ct "$CT" --label "$LABEL" --models sam_vit_b
fi
echo "gpu_check.sh done in $(( $(date +%s) - START )) s"
