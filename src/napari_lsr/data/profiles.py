"""Smooth presence profiles along the table axis z (mm), shared by the phantom generators."""

from __future__ import annotations

import numpy as np


def bump(z, lo, hi):
    """Ellipsoid-like presence profile: 1 in the middle of [lo, hi], 0 outside."""
    t = (2.0 * z - lo - hi) / (hi - lo)
    return float(np.sqrt(max(0.0, 1.0 - t * t)))


def ramp(z, lo, hi):
    """Smooth 0 -> 1 step between lo and hi (hi < lo gives a falling step)."""
    t = min(max((z - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)
