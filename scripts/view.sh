#!/usr/bin/env bash
# napari with the napari-lsr docks: sets up .venv with the Qt binding (PyQt6) and DICOM
# support, then opens the given file through the plugin's reader, or a sample.
# Usage: bash scripts/view.sh [FILE] [--sample truncation|metal|ct|none]
set -euo pipefail
args=()
for a in "$@"; do  # setup.sh changes to the repository root: make paths absolute first
    if [ -e "$a" ]; then args+=("$(cd "$(dirname "$a")" && pwd)/$(basename "$a")"); else args+=("$a"); fi
done
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" "qt,dicom"
napari-lsr view ${args[@]+"${args[@]}"}
