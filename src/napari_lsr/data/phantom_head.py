"""Head anatomy for :mod:`napari_lsr.data.phantoms`: random draws (``draw``) and painting of
one axial slice at table position ``z`` (``paint``), in patient mm and HU.

``draw(p)`` stores the patient's head parameters on the ``_Patient`` ``p`` (use ``p.rng`` and
``p._harm``); ``paint(p, cv, z, a, b)`` paints inside the body outline of half axes ``a``
(left-right) and ``b`` (anterior-posterior) mm on the ``_Canvas`` ``cv``. Image rows go
anterior (top) to posterior, so negative y is anterior (face, orbits, nose).
"""

from __future__ import annotations

import numpy as np

Z_RANGE = (0.0, 140.0)  # mm, table positions of head slices; z grows towards the vertex


def _bump(z, lo, hi):
    """Ellipsoid-like presence profile: 1 in the middle of [lo, hi], 0 outside."""
    t = (2.0 * z - lo - hi) / (hi - lo)
    return float(np.sqrt(max(0.0, 1.0 - t * t)))


def draw(p) -> None:
    """Random head parameters of patient ``p`` (seeded through ``p.rng``)."""
    u = p.rng.uniform
    p.skull = (u(1.2, 2.2), u(2.0, 5.0), u(1.0, 1.8))  # outer table, diploe, inner (mm)
    p.diploe_hu = u(400, 750)
    p.csf = u(1.0, 4.0)
    p.wm_harm = p._harm(12, 0.05, k0=3)
    p.wm_inset = u(10, 16)
    p.vent = (u(0.7, 1.4), u(0.8, 1.2))
    p.n_sulci = int(u(18, 32))
    p.sulci = (p.rng.uniform(0, 2 * np.pi, 40), p.rng.uniform(4, 12, 40))


def body_axes(p, z):
    """Half axes (left-right, anterior-posterior) of the head outline at z (mm)."""
    lo, hi = Z_RANGE
    s = 0.55 + 0.45 * np.sqrt(max(0.0, 1.0 - ((z - lo) / (1.15 * (hi - lo))) ** 2))
    return p.a * s * (1 + 0.02 * p.drift[0](z)), p.b * (0.8 + 0.2 * s)


def paint(p, cv, z, a, b) -> None:
    """Paint the head of patient ``p`` at table position ``z`` (mm) on canvas ``cv``."""
    o, dip, inn = p.skull
    t = p.fat + p.muscle  # scalp
    sa, sb = a - t, b - t
    cv.paint(p.hu_cort, 0, 0, sa, sb, 0, p.harm)
    cv.paint(p.diploe_hu, 0, 0, sa - o, sb - o, 0, p.harm)
    cv.paint(p.hu_cort, 0, 0, sa - o - dip, sb - o - dip, 0, p.harm)
    ba, bb = sa - o - dip - inn, sb - o - dip - inn
    cv.paint(5.0, 0, 0, ba, bb, 0, p.harm)  # CSF rim
    ga, gb = ba - p.csf, bb - p.csf
    cv.paint(40.0, 0, 0, ga, gb, 0, p.harm)  # grey matter
    wi = p.wm_inset
    if ga > wi + 10:
        cv.paint(26.0, 0, 0, ga - wi, gb - wi, 0, p.wm_harm)  # white matter
    # sulci: thin CSF clefts from the surface
    ang, length = p.sulci
    for i in range(p.n_sulci):
        th = ang[i] + 0.003 * z
        x, y = (ga - length[i] / 2) * np.cos(th), (gb - length[i] / 2) * np.sin(th)
        cv.paint(8.0, x, y, length[i] / 2, 0.9, th)
    # falx and ventricles
    cv.paint(45.0, 0, 0, 1.0, gb - 2)
    pv = _bump(z, 25, 115) * p.vent[0]
    if pv > 0:
        for sgn in (-1, 1):
            cv.paint(5.0, sgn * 6 * p.vent[1], -0.05 * gb, 5 * pv + 1, 0.3 * gb * pv,
                     sgn * 0.15)
        cv.paint(5.0, 0, 0.28 * gb, 2, 5 * pv)
