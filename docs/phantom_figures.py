"""Figures of the training phantoms beside real CT: 16 random slices per region (training
seeds, as the prior sees them: 256 x 256 at 1.5 mm) in a CT window, and the real slices of
pydicom / pydicom-data at the same sampling, for the eye to compare.

    python docs/phantom_figures.py            # writes docs/phantoms-<region>.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from napari_lsr.data.phantoms import REGIONS, generate_slice
from napari_lsr.data.readers import real_ct_slices
from napari_lsr.windows import window_limits

HERE = Path(__file__).parent
WINDOWS = {"thorax": "lung", "abdomen": "soft tissue", "pelvis": "soft tissue", "head": "brain"}


def region_figure(region: str, real, seed0: int = 200, n: int = 16) -> Figure:
    lo, hi = window_limits(WINDOWS[region])
    blo, bhi = window_limits("bone")
    fig = Figure(figsize=(13, 15.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, 4)
    for k in range(n):
        hu = generate_slice(seed0 + k, 256, 1.5, region=region, fit=None)
        ax = axes.flat[k]
        ax.imshow(hu, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(f"{region}, seed {seed0 + k}", fontsize=8)
    for k, (name, hu) in enumerate(real[:4]):
        ax = axes[4, k]
        ax.imshow(hu, cmap="gray", vmin=blo if region == "head" else lo,
                  vmax=bhi if region == "head" else hi)
        ax.set_title(f"real: {name}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"training phantoms, {region} ({WINDOWS[region]} window {lo:.0f}..{hi:.0f} HU); "
                 "bottom row: the real slices of pydicom/pydicom-data (not used for training)")
    fig.tight_layout()
    return fig


def main() -> None:
    real = real_ct_slices(1.5, 256)
    for region in REGIONS:
        path = HERE / f"phantoms-{region}.png"
        region_figure(region, real).savefig(path, dpi=60)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
