#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the LSR demo (bundled sample + default
# prior, truncation and metal correction) writing PNGs, TIFFs and a JSON report to out/demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" dicom
napari-lsr demo --out out/demo "$@"
