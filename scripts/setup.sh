#!/usr/bin/env bash
# Set up diffjscc in ./.venv: PyTorch first (the pinned CPU build where there is no NVIDIA GPU,
# so that pip does not pull a multi-GB CUDA build), then the project with its test and Sionna extras.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CPU_TORCH=${DIFFJSCC_CPU_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        pip install --quiet "torch>=2.2"          # GPU machine: the default (CUDA) build
    else
        pip install --quiet "$CPU_TORCH"          # CPU machine: the pinned CPU build
    fi
fi
pip install --quiet -e ".[test,sionna,heif]"   # sionna: Sionna 2.x (PyTorch) where Python >= 3.11; heif: pillow-heif
python -c "import torch, diffjscc; print(f'diffjscc {diffjscc.__version__} with torch {torch.__version__} ready in .venv')"
