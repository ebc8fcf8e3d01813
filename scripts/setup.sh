#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: a virtual environment in .venv with
# the CPU build of PyTorch (constraints-cpu.txt) and the package installed editable.
# Usage: source scripts/setup.sh [extras]   (extras e.g. "dicom" or "test,dicom")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-dicom}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml constraints-cpu.txt | sha1sum | cut -c1-12)-${extras//,/_}"
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[${extras}]"
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
