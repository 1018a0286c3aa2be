#!/usr/bin/env bash
# The accelerator check on one lent GPU (or TPU) chip: at most 8 minutes, every figure in one JSON file.
#
#   bash benchmarks/accelerator_check.sh [OUT_DIR] [--dry_run]     # OUT_DIR default: $OUT, else /tmp/...
#   bash benchmarks/accelerator_check.sh --prepare_wheels           # here, with network: see below
#
# The device machine has jax (with CUDA), flax, optax, orbax, torch and transformers but no network.
# The project's other pure-Python dependencies that the check imports travel as wheels in
# benchmarks/.wheels (untracked, so the working-tree copy carries them), built here beforehand with
#   pip wheel --no-deps -w benchmarks/.wheels ml-collections etils dill cloudpickle absl-py
# (`--prepare_wheels` runs exactly that). On the device machine any of those modules that is missing
# is installed with `pip install --no-index --find-links benchmarks/.wheels`; the project itself runs
# from the source tree (PYTHONPATH), never installed. Sections and targets: benchmarks/accelerator_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/.wheels
PACKAGES=(ml-collections etils dill cloudpickle absl-py)
MODULES=(ml_collections etils dill cloudpickle absl)
PYTHON=${PYTHON:-python}

if [[ "${1:-}" == "--prepare_wheels" ]]; then
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip wheel --no-deps -w "$WHEELS" "${PACKAGES[@]}"
  ls "$WHEELS"
  exit 0
fi

OUT_DIR=${OUT:-/tmp/accelerator_check}
if [[ $# -gt 0 && "$1" != --* ]]; then OUT_DIR=$1; shift; fi
mkdir -p "$OUT_DIR"

missing=()
for i in "${!MODULES[@]}"; do
  if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${MODULES[$i]}') is None)"; then
    missing+=("${PACKAGES[$i]}")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ ! -d "$WHEELS" ]]; then
    echo "missing ${missing[*]} and no $WHEELS: run '$0 --prepare_wheels' where pip has network." >&2
    exit 2
  fi
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}"
fi

# bash's timeout leaves a minute of the 8 for start-up and the JSON already written per section.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
timeout 420 "$PYTHON" benchmarks/accelerator_check.py --out_dir="$OUT_DIR" "$@"
echo "figures: $OUT_DIR/accelerator_check.json"
