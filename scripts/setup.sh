#!/usr/bin/env bash
# Create .venv with samliver (editable) and its test dependencies. Idempotent.
# SAMLIVER_TORCH_PIN=0 keeps whatever torch pip picks (e.g. on a GPU machine with its own torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
if [ "${SAMLIVER_TORCH_PIN:-1}" = "1" ]; then
  # PIP_CONSTRAINT (unlike -c) also reaches packages built from source.
  export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
fi
python -m pip install --quiet --upgrade pip setuptools wheel
python -m pip install --quiet torch torchvision
# Meta's SAM 2 (test-only reference) builds from source and needs torch at build time;
# no isolation, so the build uses the torch above instead of fetching another.
SAM2_BUILD_CUDA=0 python -m pip install --quiet --no-build-isolation --no-deps "sam2>=1.0"
python -m pip install --quiet -e ".[test]"
python -c "import samliver, torch; print('samliver', samliver.__version__, 'torch', torch.__version__)"
