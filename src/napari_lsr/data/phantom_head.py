"""Head anatomy for :mod:`napari_lsr.data.phantoms`: random draws (``draw``), the head outline
(``body_axes``) and painting of one axial slice at table position ``z`` (``paint``), in
patient mm and HU.

Anatomy is authored for a reference adult head (150 mm wide, 190 mm long) in *reference mm*
and mapped to the patient by a per-patient scale (``sx`` left-right, ``sy`` anterior-posterior;
heads 118-166 mm wide, 150-200 mm long, children to large adults); thicknesses (scalp, skull
tables, cortex, sulci) are in real mm. Levels are an *anatomical height* ``h`` (mm above a
baseline through the ear canals and the lower orbits). ``Z_RANGE`` maps linearly onto
h = h_lo..h_hi per patient (from the skull base, -36..-22, to just below the vertex,
128..138), and a per-patient tilt (gantry angle / head flexion) shifts anterior structures to
other table positions than posterior ones (``h + tilt * y``). By level:

* skull base (h < 25): face and nose in front of the skull (the outline follows them), ears;
  maxillary sinuses (thin walls, mucosa, sometimes fluid), nasal cavity with septum and
  turbinates, nasopharynx, pterygoid plates, mandible (condyles, rami, coronoids), masseter,
  pterygoid muscles, parotids; orbits (thin walls, fat, globe with sclera and lens, optic
  nerve, recti; the roof cut flat at the top), ethmoid honeycomb, nasal bones, zygomas and
  arches; sphenoid body and sinus, sella with pituitary, clinoids, clivus; petrous bones
  (1500-2050 HU) with internal auditory canal, middle ear and external ear canal, mastoid
  air cells; temporal lobes in the middle fossae, posterior fossa narrowing to the clivus
  with cerebellum (fissures, vermis), pons / medulla, 4th ventricle, cisterna magna;
* mid levels: frontal sinus in the frontal bone, suprasellar cistern, midbrain, tentorium,
  grey / white matter with gyri and sulci, sylvian fissures and insula, lateral ventricles
  (frontal horns, bodies, atria, occipital and temporal horns), third ventricle, caudate,
  lentiform nuclei, thalami, falx, calcifications (pineal, choroid plexus, falx);
* towards the vertex: smaller sections with convexity sulci;
* everywhere: scalp (skin, fat, galea), temporalis muscles, skull with outer table, diploe
  and inner table (thin greater wings at the base, thick occiput).

Everything is a smooth function of ``z`` (profiles, 3D ellipsoids cut at ``h``, small 3D
cells for the ethmoid and mastoid honeycombs), so consecutive slices of a volume change
smoothly. Image rows go anterior (top, negative y) to posterior; columns patient right
(left of the image) to patient left.

HU: skin / muscle 20..55, fat -100, grey / white matter about 40 / 26, CSF 2..8, vitreous 8,
lens 90..130, skull tables 1300..1900 with diploe 350..750, petrous bone 1500..2050, air -1000.
"""

from __future__ import annotations

import math

import numpy as np

from .profiles import bump as _bump, ramp as _ramp

Z_RANGE = (0.0, 180.0)  # mm, table positions of head slices; z grows towards the vertex

# -- reference profiles (adult, reference mm) over the anatomical height h ------------------
_HG = np.arange(-90.0, 200.0, 0.5)


def _profile(knots, sigma=3.0):
    """Piecewise-linear knots (h, value), smoothed with a Gaussian of ``sigma`` mm."""
    h, v = np.asarray(knots, float).T
    y = np.interp(_HG, h, v)
    k = np.arange(-4 * sigma, 4 * sigma + 0.25, 0.5)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    w /= w.sum()
    n = len(k) // 2
    y = np.convolve(np.pad(y, n, mode="edge"), w, mode="valid")
    return y.astype(np.float64)


def _cap(h, h0, hv):
    """Ellipsoid cap: 1 up to h0, falling to 0 at the vertex hv."""
    t = np.clip((h - h0) / (hv - h0), 0.0, 1.0)
    return np.sqrt(1.0 - t * t)


_hc = np.arange(65.0, 160.0, 5.0)
# outer surface of the skull: front (y), back (y), half width (x)
_VF = _profile([(-90, 40), (-60, 25), (-45, 15), (-35, 5), (-25, -5), (-15, -18), (-8, -33),
                (0, -43), (8, -47), (15, -52), (20, -62), (25, -75), (30, -83), (38, -88),
                (50, -89)] + [(h, -89 * _cap(h, 65, 152)) for h in _hc])
_VK = _profile([(-90, 35), (-60, 45), (-45, 55), (-35, 62), (-25, 68), (-15, 73), (-5, 78),
                (5, 82), (15, 86), (25, 88), (40, 89)] + [(h, 89 * _cap(h, 65, 158))
                                                            for h in _hc])
_VA = _profile([(-90, 25), (-60, 35), (-45, 42), (-35, 47), (-25, 52), (-15, 56), (-5, 60),
                (5, 62.5), (15, 64.5), (25, 66), (40, 67)] + [(h, 67 * _cap(h, 65, 152))
                                                               for h in _hc])
# face (skin, below the forehead): front y at the midline, half width; centre y = -45
_FF = _profile([(-90, -60), (-60, -80), (-45, -90), (-35, -93), (-25, -92), (-15, -93),
                (-5, -95), (5, -97), (15, -98), (25, -96), (32, -92), (40, -70), (50, -50)])
_FA = _profile([(-90, 35), (-60, 50), (-45, 56), (-35, 60), (-25, 63), (-15, 67), (-5, 68),
                (5, 66), (15, 64), (25, 62), (32, 58), (40, 40), (50, 20)])
# lower head (mastoids, parotids, neck muscles) centred at y = +5: half width, half length
_LA = _profile([(-90, 45), (-60, 55), (-45, 60), (-30, 65), (-15, 69), (0, 71), (12, 70),
                (22, 55), (30, 20), (200, 20)])
_LB = _profile([(-90, 70), (-60, 80), (-45, 84), (-30, 86), (-15, 86), (0, 84), (12, 80),
                (22, 60), (30, 20), (200, 20)])
# nose: protrusion beyond the face front, half width
_NP = _profile([(-90, 0), (-45, 0), (-40, 6), (-35, 18), (-30, 25), (-26, 27), (-20, 24),
                (-10, 18), (0, 12), (8, 7), (14, 3), (18, 0), (200, 0)], 1.5)
_NW = _profile([(-90, 6), (-45, 8), (-40, 14), (-35, 16), (-30, 15), (-26, 12), (-20, 11),
                (-10, 10), (0, 8), (10, 7), (18, 5), (200, 5)], 1.5)


def _at(prof, h):
    return float(np.interp(h, _HG, prof))


# -- random draws ---------------------------------------------------------------------------
def _cells(rng, n, x, y, h, r):
    """n random 3D cells (x, y, h centre in reference mm, radius in mm) in a box."""
    return np.stack([rng.uniform(*x, n), rng.uniform(*y, n), rng.uniform(*h, n),
                     rng.uniform(*r, n)], 1)


def draw(p) -> None:
    """Random head parameters of patient ``p`` (seeded through ``p.rng``)."""
    rng = p.rng
    u = rng.uniform
    child = u() < 0.2
    age = 0.0 if child else u(0.1, 1.0)  # 0 child .. 1 elderly
    p.age = age
    W = u(118, 142) if child else u(132, 166)  # head width (mm, skin)
    L = float(np.clip(W / u(0.72, 0.88), 150, 200))  # head length
    p.a, p.b = W / 2, L / 2
    p.scalp = u(3.0, 5.0) if child else u(4.0, 7.0)
    p.scalp_fat = u(0.2, 0.45) * p.scalp
    p.temporalis = u(2.0, 4.0) if child else u(3.5, 8.0)
    p.sx = (W / 2 - p.scalp - 0.4 * p.temporalis) / 67.0
    p.sy = (L / 2 - p.scalp) / 89.0
    p.h_lo, p.h_hi = u(-36, -22), u(128, 138)
    p.tilt = u(-0.12, 0.12)
    p.nose = u(0.65, 0.85) if child else u(0.85, 1.2)
    p.hu_cort = u(1300, 1650) if child else u(1350, 1900)
    p.hu_petr = max(p.hu_cort + 100, u(1500, 2050))
    p.hu_canc = u(200, 400)
    p.hu_scalp_fat = p.hu_fat + u(40, 80)
    th = 0.85 if child else 1.0
    p.skull = (th * u(1.4, 2.4), th * u(1.0, 2.5), th * u(2.5, 6.0), th * u(2.0, 5.0),
               th * u(1.0, 1.8))
    # outer table, diploe laterally / frontal / occipital, inner table (mm)
    p.diploe_hu = u(350, 750)
    p.vault_harm = p._harm(6, 0.012)
    # brain
    at = age ** 1.5 * u(0.4, 1.4)  # atrophy
    p.atrophy = at
    p.gm = u(36, 43)
    p.wm = p.gm - (u(12, 17) if child else u(10, 15))
    p.csf_hu = u(2, 8)
    p.csf = u(0.8, 1.6) + 2.5 * at  # subarachnoid rim (mm)
    p.vent = u(0.75, 0.95) if child else u(0.85, 1.1) + 0.8 * at
    p.dv = u(-5, 5)  # height of the ventricular system
    p.cortex = u(2.5, 3.5)
    k = np.arange(3, 19)
    p.wm_amp = 0.06 / np.sqrt(k - 2) * u(0.3, 1.0, k.size)
    p.wm_ph = u(0, 2 * np.pi, k.size)
    p.wm_rate = rng.normal(0, 0.02, k.size)
    n = 130
    p.sulci = dict(th=u(0, 2 * np.pi, n), rate=rng.normal(0, 0.004, n),
                   hc=u(0, 150, n), hh=u(12, 30, n), depth=u(7, 18, n),
                   w=(0.35 + 1.1 * at) * u(0.6, 1.4, n), b1=rng.normal(0, 0.3, n),
                   b2=rng.normal(0, 0.45, n), frac=u(0.35, 0.7, n))
    # calcifications: pineal, choroid plexus, falx (probability grows with age)
    p.calc = dict(pineal=u() < 0.1 + 0.6 * age, choroid=u() < 0.1 + 0.5 * age,
                  falx=u() < 0.3 * age, hu=u(120, 320, 4), r=u(1.5, 3.5, 4),
                  falx_y=u(-50, 30), falx_h=u(60, 110))
    # skull base and face
    p.petr_ang = np.deg2rad(u(36, 46))
    p.dh = u(-4, 4, 6)  # per-structure height offsets (orbits, petrous, ...)
    pn = 0.5 if child else 1.0
    p.frontal_sinus = 0.0 if (child or u() < 0.08) else u(0.5, 1.3)
    p.fs_asym = u(-0.35, 0.35)
    p.sphenoid = pn * u(0.75, 1.1)
    p.sph_sep = u(-5, 5)
    p.maxillary = [pn * u(0.75, 1.1), pn * u(0.75, 1.1)]
    p.mucosa = [max(0.0, u(-2, 4)), max(0.0, u(-2, 4))]
    p.fluid = [u() < 0.08, u() < 0.08]
    p.septum_dev = u(-3, 3)
    p.eye = u(10.5, 11.5) if child else u(11.5, 12.5)
    p.lens_hu = u(90, 130)
    p.mastoid = [pn * u(0.4, 1.0), pn * u(0.4, 1.0)]
    gx, gy, gh = np.meshgrid([6.0, 11.5], np.linspace(-86, -48, 5),
                             [-3, 3.5, 10, 16.5, 23])
    n = gx.size
    p.eth_cells = [np.stack([gx.ravel() + u(-0.8, 0.8, n), gy.ravel() + u(-1.5, 1.5, n),
                             gh.ravel() + u(-1.5, 1.5, n), u(3.4, 4.6, n)], 1)
                   for _ in range(2)]
    p.mast_cells = _cells(rng, 50, (-11, 11), (-12, 12), (-24, 12), (1.8, 4.0))
    p.ear = (u(0.8, 1.15), np.deg2rad(u(45, 65)))
    p._geo = {}


# -- geometry of one level ------------------------------------------------------------------
def _h(p, z):
    lo, hi = Z_RANGE
    return p.h_lo + (z - lo) * (p.h_hi - p.h_lo) / (hi - lo)


def _vault(p, h):
    """Outer skull surface at level h (physical mm): centre y, half axes (x, y)."""
    t = p.tilt
    f = _at(_VF, h + t * _at(_VF, h))
    k = _at(_VK, h + t * _at(_VK, h))
    yc = 0.5 * (f + k)
    return p.sy * yc, p.sx * _at(_VA, h + t * yc), p.sy * 0.5 * (k - f)


def _ray_ellipse(dx, dy, cx, cy, ea, eb, ang=0.0):
    """Distance factor t of the far intersection of rays t * (dx, dy) with an ellipse."""
    if ang:
        c, s = math.cos(ang), math.sin(ang)
        dx, dy = c * dx + s * dy, c * dy - s * dx
        cx, cy = c * cx + s * cy, c * cy - s * cx
    A = (dx / ea) ** 2 + (dy / eb) ** 2
    B = dx * cx / ea ** 2 + dy * cy / eb ** 2
    C = (cx / ea) ** 2 + (cy / eb) ** 2 - 1.0
    disc = B * B - A * C
    return np.maximum((B + np.sqrt(np.maximum(disc, 0.0))) / A, 0.0) * (disc > 0)


_NTH = 128
_TH = np.linspace(0, 2 * np.pi, _NTH, endpoint=False)
_KO = 28  # harmonics of the outline
_SIGMA = np.sinc(np.arange(1, _KO + 1) / (_KO + 1))  # Lanczos factors (no ringing)


def _geometry(p, z):
    """Everything about level z shared by the outline and the painting (cached)."""
    g = p._geo.get(z)
    if g is not None:
        return g
    h = _h(p, z)
    t = p.tilt
    sx, sy = p.sx, p.sy
    vy, va, vb = _vault(p, h)
    temp = p.temporalis * _ramp(h, -18, 0) * _ramp(h, 80, 25)
    comps = [(0.0, vy, va + p.scalp + temp, vb + p.scalp, 0.0)]
    # face (skin) below the forehead, centred at y = -45
    hf = h + t * (-70)
    ff, fa = _at(_FF, hf), _at(_FA, hf)
    fb = -45 - ff
    if fb > 1 and fa > 1:
        comps.append((0.0, -45 * sy, fa * sx, fb * sy, 0.0))
    # lower head: mastoids, parotids, neck muscles
    hl = h + t * 10
    lower = (0.0, 5 * sy, _at(_LA, hl) * sx, _at(_LB, hl) * sy, 0.0)
    comps.append(lower)
    skin = [(comps[0], p.hu_scalp_fat), (lower, p.hu_fat + 30)]  # fat layers under the skin
    if len(comps) == 3:
        skin.append((comps[1], p.hu_fat + 10))
    # nose
    hn = h + t * (-100)
    pn = _at(_NP, hn) * p.nose
    nose = None
    if pn > 0.5:
        tip = (ff - pn) * sy
        base = (ff + 12) * sy
        nw = _at(_NW, hn) * p.nose * sx
        nose = (tip, base, nw)
        comps.append((0.0, 0.5 * (tip + base), nw, 0.5 * (base - tip), 0.0))
    a0, b0 = sx * 67 + p.scalp, sy * 89 + p.scalp
    dx, dy = a0 * np.cos(_TH), b0 * np.sin(_TH)
    dn = np.hypot(dx, dy)
    tt = np.stack([_ray_ellipse(dx, dy, *c) for c in comps])
    # ears: a flap posterolateral of the ear canal, from the lateral skin surface
    he = h + t * 5
    e = _bump(he, -30, 24)
    ears = []
    if e > 0.05:
        m0 = tt.max(0)
        lat = (m0[0] * dn[0], m0[_NTH // 2] * dn[_NTH // 2])  # skin x at y=0: left, right
        size, beta = p.ear
        Le = 26 * size * np.sqrt(e)
        for sgn, xs in ((1, lat[0]), (-1, lat[1])):
            root = (sgn * (xs - 3), -2 * sy)
            d = (sgn * math.cos(beta), math.sin(beta))
            cx, cy = root[0] + d[0] * Le / 2, root[1] + d[1] * Le / 2
            ang = math.atan2(d[1], d[0])
            ears.append((cx, cy, Le / 2 + 3, 7.0, ang, root, d, Le))
            tt = np.vstack([tt, _ray_ellipse(dx, dy, cx, cy, Le / 2 + 3, 7.0, ang)[None]])
    tau = 2.0 / dn  # soft union, 2 mm rounding
    mx = tt.max(0)
    R = mx + tau * np.log(np.exp((tt - mx) / tau).sum(0))
    m = R.mean()
    G = np.fft.fft(R / m - 1.0) / _NTH
    harm = 2.0 * G[1:_KO + 1] * _SIGMA
    g = dict(h=h, vault=(vy, va, vb), temp=temp, nose=nose, ears=ears,
             head=(comps[0], lower), skin=skin,
             outline=(a0 * m, b0 * m, harm))
    if len(p._geo) > 64:
        p._geo.clear()
    p._geo[z] = g
    return g


def body_axes(p, z):
    """Half axes (left-right, anterior-posterior) of the head outline at z (mm).

    The outline is a star-ellipse: its radial harmonics (face, nose, ears, neck) depend on
    z and are stored in ``p.harm``, which the caller reads right after this call (for the
    skin outline in ``paint_body`` and for fitting the head into the field in ``outline``).
    """
    a, b, harm = _geometry(p, z)["outline"]
    p.harm = harm
    return a, b


# -- painting -------------------------------------------------------------------------------
class _Painter:
    """Paints shapes given in reference mm (mapped by the patient's scale) on a canvas."""

    def __init__(self, p, cv, h):
        self.p, self.cv, self.h = p, cv, h
        self.sx, self.sy = p.sx, p.sy

    def hh(self, y):
        """Anatomical height at reference y (tilted scan plane)."""
        return self.h + self.p.tilt * y

    def E(self, value, x, y, a, b, ang=0.0, harm=None, within=None):
        """Ellipse centred (x, y), half axes (a, b) rotated by ang, all in reference mm."""
        sx, sy = self.sx, self.sy
        if ang == 0.0:
            return self.cv.paint(value, sx * x, sy * y, sx * a, sy * b, 0.0, harm, within)
        c, s = math.cos(ang), math.sin(ang)
        m00, m01, m10, m11 = sx * c * a, -sx * s * b, sy * s * a, sy * c * b
        e, f = 0.5 * (m00 + m11), 0.5 * (m00 - m11)
        g, k = 0.5 * (m10 + m01), 0.5 * (m10 - m01)
        q, r = math.hypot(e, k), math.hypot(f, g)
        th = 0.5 * (math.atan2(k, e) + math.atan2(g, f))
        return self.cv.paint(value, sx * x, sy * y, q + r, abs(q - r), th, harm, within)

    def cut(self, hc, c, y=0.0):
        """Cross-section factor of an ellipsoid centred at height hc, half height c."""
        d = (self.hh(y) - hc) / c
        return math.sqrt(1.0 - d * d) if d * d < 1.0 else 0.0

    def S(self, value, x, y, hc, a, b, c, ang=0.0, within=None, minr=0.3):
        """Ellipsoid (centre x, y, hc; half axes a, b, c) cut at the current level."""
        f = self.cut(hc, c, y)
        if f * min(a, b) < minr:
            return None
        return self.E(value, x, y, a * f, b * f, ang, within=within)

    def bar(self, value, p0, p1, w, within=None):
        """Stick of half width w (real mm) between two points (reference mm)."""
        x0, y0 = self.sx * p0[0], self.sy * p0[1]
        x1, y1 = self.sx * p1[0], self.sy * p1[1]
        L = 0.5 * math.hypot(x1 - x0, y1 - y0)
        if L <= 0 or w <= 0:
            return None
        return self.cv.paint(value, 0.5 * (x0 + x1), 0.5 * (y0 + y1), L + w, w,
                             math.atan2(y1 - y0, x1 - x0), within=within)


def paint(p, cv, z, a, b) -> None:
    """Paint the head of patient ``p`` at table position ``z`` (mm) on canvas ``cv``.

    The caller has painted the skin outline (``body_axes``, half axes ``a``, ``b``); the
    layers here follow the same level geometry (``_geometry``), back to front: fat under
    the skin, muscles, skull vault, brain, posterior fossa, skull base, face, ears.
    """
    g = _geometry(p, z)
    h = g["h"]
    P = _Painter(p, cv, h)
    E = P.E
    sx = p.sx
    air = -1000.0
    mus, soft = p.hu_muscle, 30.0
    cort = p.hu_cort
    csf, gm, wm = p.csf_hu, p.gm, p.wm
    vy, va, vb = g["vault"]

    # ---- soft tissue: skin is the caller's outline, subcutaneous fat under it ------------
    for c, v in g["skin"]:  # scalp, lower head, face: fat under 1.8 mm of skin
        cv.paint(v, c[0], c[1], c[2] - 1.8, c[3] - 1.8)
    if g["nose"] is not None:  # nose: skin and cartilage, nostrils near the tip
        tip, base, nw = g["nose"]
        cv.paint(soft, 0, 0.5 * (tip + base) + 1.5, nw - 1.5, 0.5 * (base - tip) - 1.5)
        fn = _bump(P.hh(-100), -42, -26)
        if fn > 0:
            for sgn in (-1, 1):
                cv.paint(air, sgn * 0.4 * nw, tip + 0.45 * (base - tip), 0.3 * nw * fn,
                         0.22 * (base - tip) * fn, sgn * 0.3)
    # temporalis muscle (temporal fossa, between skull and scalp)
    if g["temp"] > 0.3:
        cv.paint(mus, 0, vy - 0.1 * vb, 1.01 * (va + g["temp"] + p.scalp - 1.8 - p.scalp_fat),
                 0.8 * vb)
    # neck muscles behind the posterior fossa, masseter and pterygoids at the skull base
    fl = _ramp(P.hh(60), 25, -5)
    if fl > 0:
        for sgn in (-1, 1):
            E(mus, sgn * 24, 70 + 6 * fl, 26 * fl, 20 * fl, sgn * 0.5)
    fm = _bump(P.hh(-25), -60, -5)
    if fm > 0:
        for sgn in (-1, 1):
            E(mus, sgn * 55, -22, 7 * fm, 20 * fm, sgn * 0.15)  # masseter
            E(mus, sgn * 36, -22, 7 * fm, 12 * fm, -sgn * 0.5)  # pterygoids
            E(p.hu_fat + 60, sgn * 50, 8, 9 * fm, 14 * fm)  # parotid
    # the posterior fossa narrows towards the clivus (egg shape, tip anterior)
    vh = p.vault_harm.copy()
    vh[2] -= 0.07j * _ramp(P.hh(40), 5, -20)
    # galea / pericranium around the skull
    gl = p.scalp - 1.8 - p.scalp_fat
    cv.paint(40.0, 0, vy, va + gl, vb + gl, 0, vh)

    # ---- skull vault: outer table, diploe, inner table --------------------------------------
    o, dl, dfr, doc, inn = p.skull
    dfr = 0.4 + (dfr - 0.4) * _ramp(P.hh(-80), 8, 28)  # thin greater wings at the base
    cv.paint(cort, 0, vy, va, vb, 0, vh)
    cv.paint(p.diploe_hu, 0, vy, va - o, vb - o, 0, vh)
    iy = vy + 0.5 * (dfr - doc)
    ia, ib = va - o - dl, vb - o - 0.5 * (dfr + doc)
    cv.paint(cort, 0, iy, ia, ib, 0, vh)
    ca, cb = ia - inn, ib - inn
    vy = iy  # the cavity (and the brain) centre
    res = cv.paint(csf, 0, vy, ca, cb, 0, vh)  # cranial cavity, CSF first
    cav = np.zeros_like(cv.img)
    if res is not None:
        cav[res[0]] = res[1]
    # ---- brain ----------------------------------------------------------------------------
    br = p.csf
    ba, bb = ca - br, cb - br
    if ba > 2 and bb > 2:
        cv.paint(gm, 0, vy, ba, bb, 0, vh)
        wi = 2.0 + p.cortex
        if ba > wi + 4 and bb > wi + 4:
            ph = p.wm_ph + p.wm_rate * h
            wh = np.zeros(18, np.complex128)
            wh[2:] = p.wm_amp * np.exp(1j * ph)
            wh[:vh.size] += vh
            cv.paint(wm, 0, vy, ba - wi, bb - wi, 0, wh)
        _sulci(p, cv, h, vy, ba, bb, csf, gm, cav)
        _deep(p, P, h, csf, gm, wm, cav, (vy, ba, bb))
    _posterior_fossa(p, P, h, csf, gm, wm, cav)

    # frontal sinus in a thickened frontal bone above the orbits
    fs = p.frontal_sinus * _bump(P.hh(-85), 18, 52)
    if fs > 0.05:
        vy0, va0, vb0 = g["vault"]
        w, d = 11 * fs * sx, 3 + 2 * fs
        lobes = []
        for sgn in (-1, 1):  # two lobes following the curve of the frontal bone
            k = 1 + sgn * p.fs_asym
            x = sgn * 0.5 * w * k
            t = min(0.9, abs(x) / va0)
            c = math.sqrt(1 - t * t)
            nx, ny = sgn * t / va0, -c / vb0  # outward normal of the skull there
            nn = math.hypot(nx, ny)
            nx, ny = nx / nn, ny / nn
            y = vy0 - vb0 * c
            lobes.append((x - nx * (d + 1.5), y - ny * (d + 1.5), 0.5 * w * k,
                          math.atan2(ny, nx) + 0.5 * math.pi))
        for x, y, hw, ang in lobes:
            cv.paint(cort, x, y, hw + 2.5, d + 1.5, ang)
        for x, y, hw, ang in lobes:
            cv.paint(air, x, y, hw, d - 0.8, ang)
        cv.paint(cort, 0.5 * (lobes[0][0] + lobes[1][0]) + p.fs_asym * w, 0.5 * (
            lobes[0][1] + lobes[1][1]), 0.7, d - 0.5)  # septum

    # ---- skull base -----------------------------------------------------------------------
    _skull_base(p, P, h, g)
    # ---- face ----------------------------------------------------------------------------
    _face(p, P, h, g)
    # ---- ears -----------------------------------------------------------------------------
    if g["ears"]:  # air around the pinnae (outside the head), then the pinnae
        head = np.zeros_like(cv.img)
        for c in g["head"]:
            r = cv.alpha(*c)
            if r is not None:
                head[r[0]] = np.maximum(head[r[0]], r[1])
        out = 1.0 - head
        for cx, cy, la, lb, ang, root, d, Le in g["ears"]:
            cv.paint(air, cx, cy, la + 1, lb + 1, ang, within=out)
            cv.paint(soft, cx - d[0] * 1.5, cy - d[1] * 1.5, 0.5 * Le + 1.5, 1.9, ang)
            cv.paint(soft, root[0] + d[0] * Le, root[1] + d[1] * Le, 2.8, 2.3, ang)


def _sticks(cv, value, x, y, a, b, ang):
    """Composite ``value`` over many small ellipses at once (centres x, y, half axes a, b,
    angles ang: arrays in patient mm), with the soft edges of ``_Canvas.alpha``; the
    ellipses are computed together on small patches, far cheaper than one paint each."""
    k = cv.k
    px, py = cv.to_px(x, y)
    A, B = a * k, b * k
    amp = (np.minimum(A, 1.0) * np.minimum(B, 1.0)).astype(np.float32)  # sub-pixel: dim
    A, B = np.maximum(A, 1.0), np.maximum(B, 1.0)
    P = int(np.ceil(max(A.max(), B.max()))) + 2
    off = np.arange(-P, P + 1)
    ci, cj = np.floor(py).astype(int), np.floor(px).astype(int)
    dy = (ci[:, None] + off - py[:, None]).astype(np.float32)[:, :, None]
    dx = (cj[:, None] + off - px[:, None]).astype(np.float32)[:, None, :]
    t = ang + cv.rot
    ct = np.cos(t).astype(np.float32)[:, None, None]
    st = np.sin(t).astype(np.float32)[:, None, None]
    A = A.astype(np.float32)[:, None, None]
    B = B.astype(np.float32)[:, None, None]
    u = (dx * ct + dy * st) / A
    v = (dy * ct - dx * st) / B
    rho = np.sqrt(u * u + v * v) + 1e-6
    grad = np.sqrt((u / A) ** 2 + (v / B) ** 2) / rho + 1e-6
    keep = 1.0 - np.clip((1.0 - rho) / grad + 0.5, 0.0, 1.0) * amp[:, None, None]
    n = cv.size
    r0, r1 = max(int(ci.min()) - P, 0), min(int(ci.max()) + P + 1, n)
    c0, c1 = max(int(cj.min()) - P, 0), min(int(cj.max()) + P + 1, n)
    if r0 >= r1 or c0 >= c1:
        return
    acc = np.ones((r1 - r0, c1 - c0), np.float32)
    for i in range(len(ci)):  # product of (1 - alpha): compositing one value is commutative
        i0, j0 = ci[i] - P, cj[i] - P
        a0, a1 = max(i0, r0), min(i0 + 2 * P + 1, r1)
        b0, b1 = max(j0, c0), min(j0 + 2 * P + 1, c1)
        if a0 < a1 and b0 < b1:
            acc[a0 - r0:a1 - r0, b0 - c0:b1 - c0] *= keep[i, a0 - i0:a1 - i0, b0 - j0:b1 - j0]
    im = cv.img[r0:r1, c0:c1]
    im += (1.0 - acc) * (value - im)


def _sulci(p, cv, h, vy, ba, bb, csf, gm, cav):
    """Cortical sulci (CSF clefts lined by grey matter), interhemispheric fissure, falx."""
    s = p.sulci
    pres = 1.0 - ((h - s["hc"]) / s["hh"]) ** 2
    idx = np.flatnonzero(pres > 0.02)
    dmax = 0.38 * min(ba, bb)
    segs = []
    for i in idx:
        f = math.sqrt(pres[i])
        th = s["th"][i] + s["rate"][i] * (h - s["hc"][i])
        c, si = math.cos(th), math.sin(th)
        # near the midline the interhemispheric fissure takes over
        if abs(c) < 0.12:
            continue
        px, py = ba * c, vy + bb * si
        nx, ny = c / ba, si / bb
        nn = math.hypot(nx, ny)
        nx, ny = nx / nn, ny / nn
        dep = min(s["depth"][i] * f, dmax)
        if dep < 1.5:
            continue
        w = s["w"][i] * min(1.0, 2 * f)
        # two segments: from the surface inwards (tilted), then bent
        a1 = math.atan2(-ny, -nx) + s["b1"][i]
        d1 = dep * s["frac"][i]
        e = min(0.8, 0.7 * p.csf)  # starts in the subarachnoid space, not in the bone
        x0, y0 = px + e * nx, py + e * ny
        x1, y1 = px + d1 * math.cos(a1), py + d1 * math.sin(a1)
        a2 = a1 + s["b2"][i]
        d2 = dep - d1
        x2, y2 = x1 + d2 * math.cos(a2), y1 + d2 * math.sin(a2)
        segs.append((x0, y0, x1, y1, w, 0.0))  # outer end stays in the CSF rim
        segs.append((x1, y1, x2, y2, 0.8 * w, 1.0))  # overlaps the first at the bend
    if segs:  # grey matter lining first, then the CSF clefts
        x0, y0, x1, y1, w, inner = np.array(segs).T
        mx, my = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        L, ang = 0.5 * np.hypot(x1 - x0, y1 - y0), np.arctan2(y1 - y0, x1 - x0)
        _sticks(cv, gm, mx, my, L + 0.5 * p.cortex * inner, w + p.cortex, ang)
        _sticks(cv, csf, mx, my, L + 0.3 * w * inner, w, ang)
    # interhemispheric fissure, interrupted by the corpus callosum / deep midline
    lc = max(36 * p.sy * _bump(h, 48 + p.dv, 82 + p.dv), 30 * p.sy * _bump(h, 28, 56))
    w = 0.6 + 0.9 * p.atrophy
    front, back = vy - bb, vy + bb
    for y0, y1 in ((front, -lc if lc > 0 else vy), (lc if lc > 0 else vy, back)):
        if y1 - y0 > 4:
            cv.paint(csf, 0, 0.5 * (y0 + y1), w + 0.4, 0.5 * (y1 - y0), 0, within=cav)
            cv.paint(55.0, 0, 0.5 * (y0 + y1), 0.45, 0.5 * (y1 - y0) - 1, 0, within=cav)
    cl = p.calc
    if cl["falx"]:
        f = _bump(h, cl["falx_h"] - 8, cl["falx_h"] + 8)
        if f > 0:
            cv.paint(cl["hu"][3] + 200, 0, cl["falx_y"] * p.sy, 0.9, 5 * f, within=cav)


def _deep(p, P, h, csf, gm, wm, cav, brain):
    """Ventricles, basal ganglia, thalami, insula / sylvian fissures, calcifications."""
    E, S = P.E, P.S
    v, dv = p.vent, p.dv
    if not (0 < h < 100):
        return
    ba = brain[1]
    # insula and sylvian fissure
    fsy = _bump(h, 12, 62)
    if fsy > 0:
        w = (0.9 + 1.4 * p.atrophy) * min(1.0, 2 * fsy)
        bx = ba / p.sx  # brain half width (reference mm)
        for sgn in (-1, 1):
            E(gm, sgn * 36, -6, 3.5, 19 * fsy, sgn * 0.1)  # insular cortex
            E(csf, sgn * 39.5, -6, w, 18 * fsy, sgn * 0.1, within=cav)
            xm = 0.5 * (39.5 + bx)
            E(gm, sgn * xm, -18, 0.5 * (bx - 39.5) + 2, w + 2.5, -sgn * 0.25, within=cav)
            E(csf, sgn * xm, -18, 0.5 * (bx - 39.5) + 2, w, -sgn * 0.25, within=cav)
    # basal ganglia and thalami (grey matter nuclei in the white matter)
    for sgn in (-1, 1):
        S(gm - 2, sgn * 25, -4, 42 + dv, 6.5, 16, 12, -sgn * 0.2)  # lentiform
        S(gm - 3, sgn * 10.5, 12, 44 + dv, 9, 12, 10, sgn * 0.3)  # thalamus
    # lateral ventricles: frontal horns, bodies, atria with occipital horns, temporal horns
    xs = 1.5 + 4.5 * v
    for sgn in (-1, 1):
        S(csf, sgn * xs, -20, 50 + dv, 4.5 * v, 17, 13, sgn * 0.25)
        S(csf, sgn * (4 + 5 * v), 4, 67 + dv, 5 * v, 26, 14, -sgn * 0.1)
        S(csf, sgn * (19 + 2 * v), 34, 54 + dv, 6 * v + 1, 13, 11, -sgn * 0.45)
        S(csf, sgn * (20 + 2 * v), 54, 52 + dv, 2.5 * v, 10, 6, -sgn * 0.3)
        S(csf, sgn * 33, -8, 24 + dv, 2.0 * v, 11, 6, sgn * 0.3)
        S(gm - 2, sgn * (xs + 4.5 * v + 3), -16, 50 + dv, 4.5, 9, 10, sgn * 0.2)  # caudate
    S(csf, 0, 2, 45 + dv, 1.0 + 1.6 * v, 13, 10)  # third ventricle
    cl = p.calc
    if cl["pineal"]:
        S(cl["hu"][0], 0, 17, 45 + dv, cl["r"][0], cl["r"][0], cl["r"][0])
    if cl["choroid"]:
        for sgn, k in ((-1, 1), (1, 2)):
            S(cl["hu"][k], sgn * (20 + 2 * v), 33, 55 + dv, cl["r"][k], 1.2 * cl["r"][k],
              cl["r"][k])


def _posterior_fossa(p, P, h, csf, gm, wm, cav):
    """Suprasellar / quadrigeminal cisterns, midbrain, pons, medulla, 4th ventricle,
    cerebellum under the tentorium."""
    E, S = P.E, P.S
    if P.hh(40) > 45:
        return
    # cerebellum (clipped to the cavity), tentorium as a thin dense line above its centre
    hc = -5.0
    f = P.cut(hc, 33, 45)
    if f > 0:
        ea, eb = 54.5 * f, 38.5 * f
        if P.hh(45) > hc:  # upper half: narrower towards the tentorial incisura
            ea, eb = 54.5 * f ** 2.2, 38.5 * f ** 1.2
            # cortex of the occipital / temporal lobes on the tentorium
            P.E(gm, 0, 45, ea + 2.5, eb + 2.5, within=cav)
            P.E(44.0, 0, 45, ea + 0.7, eb + 0.7, within=cav)
        P.E(gm - 4, 0, 45, ea, eb, within=cav)
        # vermis slightly denser, cerebellar fissures, cisterna magna
        S(gm - 1, 0, 45, hc, 8, 36, 33, within=cav)
        for sgn in (-1, 1):
            for yy, hk in ((35, 5), (48, -8), (58, -18)):
                S(csf, sgn * 28, yy, hk, 20, 0.5 + 0.7 * p.atrophy, 12, sgn * 0.35,
                  within=cav)
        S(csf, 0, 66, -22, 9 + 4 * p.atrophy, 9, 14, within=cav)
    # brainstem in its cisterns: medulla, pons, midbrain
    m = 1.5 + p.atrophy
    for (y, hc, a, b, c) in ((13, -26, 9, 8, 16), (6, 4, 15, 12.5, 16), (7, 27, 12, 10, 8)):
        S(csf, 0, y - 1.5 - (2 if hc == 4 else 0), hc, a + m, b + m + 1.5, c + 2)
        if hc < 20:
            S(wm + 6, 0, y, hc, a, b, c)
    for sgn in (-1, 1):  # middle cerebellar peduncles
        S(wm + 4, sgn * 13, 17, 2, 7, 10, 10, -sgn * 0.5)
    for sgn in (-1, 1):  # midbrain: cerebral peduncles and tectum
        S(wm + 6, sgn * 6, 4, 27, 6.5, 9, 8, -sgn * 0.5)
    S(wm + 6, 0, 11, 27, 10, 5.5, 8)
    if S(csf, 0, 26, 2, 7.5, 3.2, 9) is None and P.cut(27, 8, 10) > 0:
        S(csf, 0, 13, 27, 1.2, 1.2, 8)  # aqueduct
    # suprasellar (star) and quadrigeminal cisterns
    f = P.cut(24, 7, -12)
    if f > 0:
        star = np.zeros(5, np.complex128)
        star[4] = 0.12
        E(csf, 0, -12, 12 * f, 11 * f, 0, harm=star)
    S(csf, 0, 22, 37, 8, 3.5, 5)


def _skull_base(p, P, h, g):
    """Clivus, sphenoid body and sinus, sella, petrous bones with ear canals, mastoids."""
    E, S, cv = P.E, P.S, P.cv
    cort, canc, air = p.hu_cort, p.hu_canc, -1000.0
    dh = p.dh
    # clivus: from the dorsum sellae (up, front) to the basion (down, back)
    hy = P.hh(-5) - dh[0]
    if -45 < hy < 19:
        f = _bump(hy, -46, 20) ** 0.5
        yc = -19 + 0.33 * (15 - hy)
        wx = (9 + 6 * _ramp(hy, 0, -30)) * f
        if wx > 1:
            cv.bone(0, yc * p.sy, wx * p.sx, 5.5 * f * p.sy, 0, 1.5, cort, canc)
    # sphenoid body with its sinus, sella turcica (bony cup) with the pituitary above
    f = P.cut(0 + dh[0], 17, -28)
    if f > 0:
        cv.bone(0, -28 * p.sy, 15 * f * p.sx, 13 * f * p.sy, 0, 1.2, cort, canc)
        fs = P.cut(0 + dh[0], 14 * p.sphenoid, -29)
        if fs > 0:
            s = p.sphenoid * fs
            E(air, 0, -29, 12.5 * s, 11 * s)
            E(cort, p.sph_sep, -29, 0.6, 10 * s, 0.15)
    f = P.cut(17 + dh[0], 6, -20)
    if f > 0:
        E(0.6 * cort, 0, -20, 9 * f ** 0.5, 8 * f ** 0.5)
        E(45.0, 0, -20.5, 7 * f ** 0.5 - 0.8 * f, 6.2 * f ** 0.5 - 0.8 * f)
        for sgn in (-1, 1):  # anterior clinoid processes
            S(0.7 * cort, sgn * 12, -27, 19 + dh[0], 3, 6, 3, -sgn * 0.5)
    # petrous bones (very dense), inner ear, ear canals, mastoid air cells
    ang = p.petr_ang
    ca, sa = math.cos(ang), math.sin(ang)
    for k, sgn in enumerate((-1, 1)):
        hp = 4 + dh[1]
        f = P.cut(hp, 13, 8)
        if f > 0:
            E(p.hu_petr, sgn * 35, 8, 25 * f ** 0.4, 7.0 * f ** 1.3, sgn * ang)
            fi = P.cut(hp - 1, 3, 6)
            if fi > 0:  # internal auditory canal, vestibule / cochlea
                E(10.0, sgn * (30 + 4 * ca), 6 + 4 * sa, 6 * fi, 2.0 * fi, sgn * 0.1)
                E(15.0, sgn * 38, 8 + 3 * sa, 2.2 * fi, 2.2 * fi)
        # external ear canal from the skin to the middle ear
        fe = P.cut(hp - 3, 4.5, 6)
        if fe > 0:
            x1 = sgn * 46
            x0 = sgn * (g["vault"][1] / p.sx + 14)
            P.bar(air, (x0, 4), (x1, 6), 3.2 * fe)
            E(air, sgn * 45, 7, 3.5 * fe, 4.5 * fe)  # middle ear
        # mastoid: bony block with air cells, tip lower down
        # mastoid: thickened skull behind the ear canal with air cells
        mp = p.mastoid[k]
        mh = -6 + dh[2]
        fm = P.cut(mh, 22, 24)
        if fm > 0:
            vy0, va0, vb0 = g["vault"]
            sphi = min(0.95, max(-0.95, (24 * p.sy - vy0) / vb0))
            cphi = math.sqrt(1 - sphi * sphi)
            mx, my = sgn * (va0 * cphi - 5.0), vy0 + vb0 * sphi
            tang = math.atan2(vb0 * cphi, -sgn * va0 * sphi)
            ms = 0.6 + 0.4 * min(1.0, 2 * mp)  # small in children
            ma, mb = 15 * fm * ms, 8.5 * fm * ms
            cv.paint(cort, mx, my, ma, mb, tang)
            cv.paint(p.hu_canc + 300, mx, my, ma - 1.2, mb - 1.2, tang)
            c = p.mast_cells
            d = (P.hh(24) - mh - c[:, 2]) / c[:, 3]
            r = c[:, 3] * np.sqrt(np.maximum(0.0, 1 - d * d)) * mp
            u, w = c[:, 1] * 1.1, c[:, 0] * 0.65  # along / across the skull
            rr = (u / (ma - 2)) ** 2 + (w / (mb - 2)) ** 2 if mb > 2.5 else u + 9
            ct, st = math.cos(tang), math.sin(tang)
            for i in np.flatnonzero((r > 0.7) & (rr < 1.0)):
                cv.paint(air, mx + u[i] * ct - w[i] * st, my + u[i] * st + w[i] * ct,
                         r[i], 0.85 * r[i], c[i, 3])


def _face(p, P, h, g):
    """Orbits with globes, ethmoid / nasal cavity / maxillary sinuses, zygomas, mandible."""
    E, cv = P.E, P.cv
    cort, canc, air = p.hu_cort, p.hu_canc, -1000.0
    fat = p.hu_fat
    thin = 0.55 * cort  # thin walls (partial volume)
    dh = p.dh
    sx, sy = p.sx, p.sy
    # globe centre from the face contour at the eye level, so the eyes sit under the lids
    he = 8 + dh[3]
    ff, fa = _at(_FF, he), _at(_FA, he)
    fb = -45 - ff
    xg = 32.0
    ys = -45 - fb * math.sqrt(max(0.0, 1 - (xg / fa) ** 2))
    r_eye = p.eye / math.sqrt(sx * sy)
    yg = ys + 3.5 / sy + r_eye
    # ---- nasal cavity (air) with turbinates and septum; nasopharynx behind ------------------
    hm = P.hh(-66)
    fn = _bump(hm, -44, 8)
    if fn > 0:
        wn = 13 * min(1.0, 1.6 * fn)
        E(thin, 0, -62, wn + 2, 29 * fn + 2)
        E(air, 0, -62, wn, 29 * fn)
        ft = _bump(hm, -40, -22)
        if ft > 0:  # inferior turbinates
            for sgn in (-1, 1):
                E(35.0, sgn * (wn - 3.5), -60, 4.5 * ft, 22 * ft)
                E(canc + 150, sgn * (wn - 2.5), -60, 0.8 * ft, 14 * ft)
        ft = _bump(hm, -26, -4)
        if ft > 0:  # middle turbinates
            for sgn in (-1, 1):
                E(35.0, sgn * (wn - 4), -64, 3.5 * ft, 16 * ft)
    # ---- ethmoid labyrinths between the orbits (bony honeycomb), olfactory cleft ----------
    fe = _bump(hm, -8 + dh[3], 27 + dh[3])
    if fe > 0:
        for sgn in (-1, 1):
            E(thin * 0.25, sgn * 9, -66, 6.5 * fe, 25 * fe)
        for sgn, c in zip((-1, 1), p.eth_cells):
            d = (hm - dh[3] - c[:, 2]) / c[:, 3]
            r = c[:, 3] * np.sqrt(np.maximum(0.0, 1 - d * d)) * min(1.0, 1.5 * fe)
            for i in np.flatnonzero(r > 0.8):
                cv.paint(air, sgn * c[i, 0] * sx, c[i, 1] * sy, 0.85 * r[i], r[i], 0)
    if fn > 0:  # septum (cartilage in front, bone behind)
        dev = p.septum_dev
        E(180.0, 0.5 * dev, -72, 1.3, 14 * fn, 0.04 * dev)
        E(300.0, 0.3 * dev, -46, 1.3, 14 * fn, -0.04 * dev)
    # ---- orbits: bony wall (roof cut tangentially at the top), fat, muscles, nerve, globe
    for sgn in (-1, 1):
        oang = math.atan2(-44, sgn * 18)
        ox, oy = sgn * 27, yg + 12
        fw = P.cut(he + 1, 18.5, oy)
        fo = P.cut(he, 18, oy)
        if fw > 0:  # walls; the roof, cut flat at the top, is a plate of partial volume
            E(thin * (0.35 + 0.65 * min(1.0, 2 * fo)), ox, oy, 24 * fw + 1.5, 15.5 * fw + 1.5,
              oang)
        if fo > 0:
            P.bar(cort * 0.7, (sgn * 49, yg - 3), (sgn * 34, yg + 30), 3.0 * fo)  # lat. wall
        if fo > 0:
            E(fat, ox, oy, 24 * fo, 15.5 * fo, oang)
            E(fat, sgn * xg, yg - 0.5 * r_eye, (r_eye + 6) * fo, (r_eye + 1) * fo)
            fr = P.cut(he, 9, oy)
            if fr > 0:  # medial and lateral recti
                P.bar(p.hu_muscle, (sgn * 15, yg - 5), (sgn * 17, yg + 32), 2.2 * fr)
                P.bar(p.hu_muscle, (sgn * 45, yg - 2), (sgn * 25, yg + 30), 2.2 * fr)
            fon = P.cut(he, 4, yg + 15)
            if fon > 0:  # optic nerve towards the apex
                P.bar(35.0, (sgn * xg, yg), (sgn * 15, yg + 38), 2.3 * fon)
        fg = P.cut(he, p.eye, yg)
        if fg > 0:
            E(45.0, sgn * xg, yg, r_eye * fg, r_eye * fg)  # sclera
            E(8.0, sgn * xg, yg, (r_eye - 1.2) * fg, (r_eye - 1.2) * fg)  # vitreous
            fl = P.cut(he, 4.5, yg - r_eye)
            if fl > 0:
                E(p.lens_hu, sgn * xg, yg - r_eye + 3.2, 4.5 * fl, 2.0 * fl)
    fp = _bump(P.hh(-25), -50, -10)
    if fp > 0:
        E(40.0, 0, -14, 16 * fp, 9 * fp)  # prevertebral muscles
        E(air, 0, -24, 12 * fp, 7 * fp)  # nasopharynx
        for sgn in (-1, 1):
            E(p.hu_fat, sgn * 22, -22, 6 * fp, 8 * fp, sgn * 0.3)  # parapharyngeal fat
            E(cort, sgn * 19, -36, 1.2, 8 * fp, sgn * 0.25)  # pterygoid plate
    # ---- maxillary sinuses with thin walls (mucosa, sometimes fluid) ---------------------
    for k, sgn in enumerate((-1, 1)):
        ms = p.maxillary[k]
        top = 8 + dh[3] - 17  # orbital floor
        bot = -40 + dh[4]
        f = P.cut(0.5 * (top + bot), 0.5 * (top - bot), -58)
        if f > 0:
            x, y = sgn * (16 + 14 * ms), -58
            ax, ay = 15 * ms * f, 16 * ms * f
            E(thin, x, y, ax + 1.2, ay + 1.2, sgn * 0.35)
            muc = p.mucosa[k]
            E(35.0, x, y, ax, ay, sgn * 0.35)
            res = E(air, x, y, max(ax - muc, 0.1), max(ay - muc, 0.1), sgn * 0.35)
            if res is not None and p.fluid[k]:
                lvl = cv.to_px(0, y * sy + 0.3 * ay * sy)[1]
                below = res[1] - cv.level(res[0], res[1], lvl)
                im = cv.img[res[0]]
                im += below * (15.0 - im)
    # ---- zygoma, zygomatic arches, lateral orbital rims ----------------------------------
    fz = _bump(P.hh(-55), -28, 5)
    if fz > 0:
        for sgn in (-1, 1):
            cv.bone(sgn * 52 * sx, -64 * sy, 8 * fz * sx, 7 * fz * sy, sgn * 0.5, 1.5, cort,
                    canc)
    fa_ = _bump(P.hh(-35), -16, -3)
    if fa_ > 0:
        for sgn in (-1, 1):
            P.bar(cort * 0.9, (sgn * 54, -58), (sgn * 60, -14), 2.6 * fa_)
    fr = _bump(P.hh(-72), -5, 28)
    if fr > 0:
        for sgn in (-1, 1):
            cv.bone(sgn * 47 * sx, (yg + 4) * sy, 4.5 * fr * sx, 6.5 * fr * sy, sgn * 0.6, 1.5,
                    cort, canc)
    # ---- nasal bones at the bridge of the nose --------------------------------------------
    if g["nose"] is not None:
        tip = g["nose"][0]
        fb = _bump(P.hh(-95), -6, 22)
        if fb > 0:
            for sgn in (-1, 1):
                P.bar(cort * 0.8, (0, tip / sy + 2.5), (sgn * 9, tip / sy + 12), 1.1 * fb)
    # ---- mandible: condyles in the glenoid fossae, rami, coronoid processes ---------------
    fc = P.cut(-9, 9, -8)
    if fc > 0:
        for sgn in (-1, 1):
            cv.bone(sgn * 50 * sx, -8 * sy, 9 * fc * sx, 5 * fc * sy, sgn * 0.25, 1.5, cort,
                    canc)
    fm = _bump(P.hh(-25), -70, -16)
    if fm > 0:
        for sgn in (-1, 1):
            cv.bone(sgn * 47 * sx, -22 * sy, 3.5 * fm * sx, 13 * fm * sy, sgn * 0.2, 1.3, cort,
                    canc)
            fco = _bump(P.hh(-40), -40, -12)
            if fco > 0:
                cv.bone(sgn * 44 * sx, -42 * sy, 3.0 * fco * sx, 8 * fco * sy, sgn * 0.3, 1.2,
                        cort, canc)
