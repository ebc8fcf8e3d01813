#!/usr/bin/env bash
# The test suite on a fresh machine: Xvfb for napari's canvas (Debian packages, installed
# when missing and we are root), the virtual environment, then pytest (headless Qt).
set -euo pipefail
if ! command -v Xvfb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libgl1 libegl1 \
            libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
            libxcb-image0 libxcb-render-util0 libxcb-shape0 libdbus-1-3 libfontconfig1 >/dev/null
    else
        echo "Xvfb is missing: install the Debian package 'xvfb' (see README)" >&2
        exit 1
    fi
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" "test,dicom"
python -m pytest -q "$@"
