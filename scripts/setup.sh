#!/usr/bin/env bash
# Create .venv and install the project. Usage: bash scripts/setup.sh [train|dev]
#   train (default): the inspector runtime plus the training extra (torch, onnx, ...)
#   dev:             train + the line outputs (plant) + stream scaling (scale) + the test tools
# torch is pinned to 2.13.0: that CPU build installs from local disk on the project's machines,
# while a looser requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-train}"
case "$extra" in
  train) extras="train" ;;
  dev) extras="train,plant,scale,dev" ;;
  runtime) extras="" ;;
  *) echo "usage: bash scripts/setup.sh [train|dev|runtime]" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
echo "installed into .venv ($extra)"
