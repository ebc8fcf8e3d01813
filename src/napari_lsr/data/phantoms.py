"""Anatomical CT phantoms in HU: thorax, abdomen, pelvis and head slices and volumes.

A seeded *patient* (body habitus, organ sizes and positions, vessels, bowel loops, ribs) is
drawn once; every structure is a smooth function of the table position ``z`` (mm), so a
volume varies smoothly from slice to slice and a single slice is that patient at a random z.
Shapes are soft ellipses, optionally with random radial harmonics, composited in order
(``img += alpha * (value - img)``); the alpha is the signed distance to the edge in pixels
plus 0.5, clipped to [0, 1], which anti-aliases edges without supersampling.

Speed (256 x 256, one core, plain numpy): median 12-23 ms per slice depending on the region
(thorax slowest, lung vessels), 5-13 ms best case, measured on a busy 2-core dev machine;
fast enough for training to draw slices on the fly.

Image axes ``(H, W)``: rows go anterior (top) to posterior (bottom), columns patient right
(left of the image) to patient left. HU values: air -1000, lung about -850 with vessels, fat
about -100, muscle +50, liver +60, spleen +50, kidney cortex +50 / medulla +30, blood +40,
cortical bone +1200..+1800, cancellous bone +200..+400, grey / white matter +40 / +25,
CSF +5, optional patient table (+200..+400) under the body.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from . import phantom_head
from .profiles import bump as _bump, ramp as _ramp

REGIONS = ("thorax", "abdomen", "pelvis", "head")
_REGION_P = (0.3, 0.3, 0.2, 0.2)
_Z_RANGE = {"thorax": (0.0, 250.0), "abdomen": (0.0, 200.0), "pelvis": (0.0, 200.0),
            "head": phantom_head.Z_RANGE}  # mm; z grows towards the head
_FIT = 0.45  # everything (body and table) stays inside this fraction of the field width


@lru_cache(maxsize=16)
def _interp_weights(size, n):
    """Indices and weights of bilinear upsampling from an n-point to a size-point grid."""
    p = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    i0 = np.minimum(p.astype(int), n - 2)
    return i0, (p - i0).astype(np.float32)[:, None]


def _upsample(g, size):
    """Bilinear upsampling of a square (n, n) grid to (size, size); no BLAS involved."""
    i0, w = _interp_weights(size, g.shape[0])
    g = g[i0] * (1 - w) + g[i0 + 1] * w
    return g[:, i0] * (1 - w.T) + g[:, i0 + 1] * w.T


def ct_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Unit-std noise with CT-like correlation: band-pass (fine grain, suppressed lowest
    frequencies), as filtered backprojection shapes quantum noise."""
    w = rng.standard_normal(shape, np.float32)
    n = ndimage.gaussian_filter(w, 0.8) - 0.5 * ndimage.gaussian_filter(w, 2.5)
    return n / max(float(n.std()), 1e-6)


class _Canvas:
    """One slice being painted; shape parameters in patient mm, output in HU."""

    def __init__(self, size, pixel_mm, scale, rot_rad, shift_mm):
        self.size = size
        self.img = np.full((size, size), -1000.0, np.float32)
        self.grid = np.arange(size, dtype=np.float32)
        self.k = scale / pixel_mm  # patient mm -> pixels
        self.rot = rot_rad
        self.cr, self.sr = np.cos(rot_rad), np.sin(rot_rad)
        c = (size - 1) / 2.0
        self.c0 = (c + shift_mm[0] / pixel_mm, c + shift_mm[1] / pixel_mm)

    def to_px(self, x, y):
        return (self.c0[0] + self.k * (self.cr * x - self.sr * y),
                self.c0[1] + self.k * (self.sr * x + self.cr * y))

    def alpha(self, x, y, a, b, ang=0.0, harm=None):
        """Soft coverage of a (star-)ellipse: returns (slices, alpha) or None if off-image.

        ``harm`` is a complex array c_k (k = 1..K): radius(theta) = 1 + Re(sum c_k e^{ik theta}).
        """
        if a <= 0 or b <= 0:
            return None
        px, py = (float(v) for v in self.to_px(x, y))  # python floats keep arrays float32
        a, b = float(a * self.k), float(b * self.k)
        amp = 1.0
        if min(a, b) < 1.0:  # sub-pixel: draw at 1 px and dim by area (partial volume)
            amp = a * b / (max(a, 1.0) * max(b, 1.0))
            a, b = max(a, 1.0), max(b, 1.0)
        grow = 1.0 + (np.abs(harm).sum() if harm is not None else 0.0)
        r = max(a, b) * grow + 1.5
        i0, i1 = max(int(py - r), 0), min(int(py + r) + 2, self.size)
        j0, j1 = max(int(px - r), 0), min(int(px + r) + 2, self.size)
        if i0 >= i1 or j0 >= j1:
            return None
        t = ang + self.rot
        ct, st = float(np.cos(t)), float(np.sin(t))
        dx = self.grid[j0:j1][None, :] - px
        dy = self.grid[i0:i1][:, None] - py
        u = (dx * ct + dy * st) / a
        v = (dy * ct - dx * st) / b
        rho = np.sqrt(u * u + v * v) + 1e-6
        grad = np.sqrt((u / a) ** 2 + (v / b) ** 2) / rho + 1e-6  # |grad rho| in 1/px
        if harm is None:
            f = 1.0 - rho
        else:
            e = (u + 1j * v).astype(np.complex64) / rho
            s = np.complex64(harm[-1]) * e
            for ck in harm[-2::-1]:
                s = (s + np.complex64(ck)) * e
            f = 1.0 + s.real - rho
        al = np.clip(f / grad + 0.5, 0.0, 1.0)
        if amp != 1.0:
            al *= amp
        return (slice(i0, i1), slice(j0, j1)), al

    def paint(self, value, x, y, a, b, ang=0.0, harm=None, within=None):
        """Composite ``value`` over the shape; ``within`` (full-size alpha) restricts it."""
        r = self.alpha(x, y, a, b, ang, harm)
        if r is None:
            return None
        sl, al = r
        if within is not None:
            al = al * within[sl]
        im = self.img[sl]
        im += al * (value - im)
        return sl, al

    def bone(self, x, y, a, b, ang=0.0, shell=1.5, cortical=1400.0, cancellous=300.0):
        """Bone: cortical shell of thickness ``shell`` mm around cancellous bone."""
        self.bones([(x, y, a, b, ang)], shell, cortical, cancellous)

    def bones(self, parts, shell, cortical, cancellous):
        """One bone made of overlapping ellipses (x, y, a, b, ang): one shell around all."""
        for x, y, a, b, ang in parts:
            self.paint(cortical, x, y, a, b, ang)
        for x, y, a, b, ang in parts:
            if a > shell + 0.5 and b > shell + 0.5:
                self.paint(cancellous, x, y, a - shell, b - shell, ang)

    def level(self, sl, al, y_level_px):
        """Restrict an alpha to the part above a horizontal image row (air-fluid level)."""
        rows = self.grid[sl[0]][:, None]
        return al * np.clip(y_level_px - rows + 0.5, 0.0, 1.0)


class _Patient:
    """All random draws of one patient; ``render`` paints slices at table positions z."""

    def __init__(self, rng: np.random.Generator, region: str):
        self.rng = rng
        self.region = region
        self.seed = int(rng.integers(2**31))
        u = rng.uniform
        self.hu_fat = -100.0 + 10.0 * rng.standard_normal()
        self.hu_muscle = 50.0 + 6.0 * rng.standard_normal()
        self.hu_cort = u(1200, 1800)
        self.hu_canc = u(200, 400)
        self.hu_blood = 40.0 + 5.0 * rng.standard_normal()
        if region == "head":
            self.a = u(70, 95)
            self.b = self.a * u(1.12, 1.3)
        else:
            self.a = u(125, 170)
            self.b = self.a * {"thorax": u(0.62, 0.78), "abdomen": u(0.64, 0.84),
                               "pelvis": u(0.58, 0.72)}[region]
        self.harm = self._harm(6, 0.015 if region == "head" else 0.035)
        self.fat = {"thorax": u(5, 25), "abdomen": u(10, 40), "pelvis": u(15, 45),
                    "head": u(0.5, 1.5)}[region]
        self.muscle = {"thorax": u(10, 20), "abdomen": u(6, 14), "pelvis": u(8, 16),
                       "head": u(2, 4)}[region]
        self.back = u(12, 25)  # extra muscle thickness behind the cavity (mm)
        self.n_ribs = int(u(7, 10))  # per side
        self.rib_phase = u(0, 1)
        self.rib_tilt = u(0.004, 0.008)  # revolutions of the rib pattern per mm of z
        self.drift = [self._drift() for _ in range(24)]
        self._draw_habitus(np.random.default_rng([self.seed, 2]))
        getattr(self, "_draw_" + region)()

    def _draw_habitus(self, v: np.random.Generator):
        """Body size (child to large adult), IV contrast, arms, fat strands, table type."""
        trunk = self.region != "head"
        kind = v.choice(3, p=(0.15, 0.75, 0.10))
        self.size = (v.uniform(0.55, 0.85), v.uniform(0.88, 1.12), v.uniform(1.12, 1.35))[kind]
        if not trunk:
            self.size = 1.0  # head sizes are drawn by phantom_head
        self.contrast = trunk and v.uniform() < 0.4
        enh = v.uniform(0.4, 1.0) if self.contrast else 0.0
        if self.contrast:
            self.hu_blood = v.uniform(140, 320)
        self.hu_liver = 60.0 + 55.0 * enh
        self.hu_spleen = 50.0 + 70.0 * enh
        self.hu_kcortex = 50.0 + 160.0 * enh
        self.hu_kmedulla = 30.0 + 90.0 * enh
        self.arms = (trunk and self.region != "pelvis" and v.uniform() < 0.3)
        self.arm = dict(r=v.uniform(32, 48), fat=v.uniform(3, 18), gap=v.uniform(-8, 8),
                        y=v.uniform(-0.2, 0.3), bone=v.uniform(9, 13),
                        hu_fat=self.hu_fat + v.uniform(-5, 5))
        n = int(v.uniform(6, 30))
        self.strands = dict(t=v.uniform(0, 2 * np.pi, n), u=v.uniform(0.15, 0.85, n),
                            L=v.uniform(4, 18, n), ang=v.normal(0, 0.6, n),
                            hu=v.uniform(-40, 20, n), w=v.uniform(0.3, 0.8, n))
        nv = int(v.uniform(10, 40))
        self.mesentery = dict(x=v.uniform(-0.8, 0.8, nv), y=v.uniform(-0.8, 0.6, nv),
                              r=v.uniform(0.8, 3.0, nv), L=v.uniform(0, 25, nv),
                              ang=v.uniform(0, np.pi, nv))
        self.table_kind = str(v.choice(["solid", "sandwich"], p=(0.5, 0.5)))
        self.foam_hu, self.shell_hu = v.uniform(-900, -650), v.uniform(300, 900)
        self.pad, self.pad_hu = bool(v.uniform() < 0.4), v.uniform(-950, -750)
        self.big = v.uniform(1.05, 1.45)  # body size when it may leave the field

    # -- random helpers -------------------------------------------------------------------
    def _harm(self, k, amp, k0=2):
        """Random radial harmonics c_1..c_k (c_1 = 0: no shift), amplitude ~ amp / k^0.5."""
        c = np.zeros(k, np.complex128)
        n = np.arange(k0, k + 1)
        c[k0 - 1:] = (amp / np.sqrt(n - k0 + 1) * self.rng.uniform(0, 1, n.size)
                      * np.exp(2j * np.pi * self.rng.uniform(0, 1, n.size)))
        return c

    def _drift(self):
        """A slow random sinusoid of z (period 150-500 mm), amplitude 1 at most."""
        L, ph = self.rng.uniform(150, 500), self.rng.uniform(0, 2 * np.pi)
        return lambda z: np.sin(2 * np.pi * z / L + ph)

    def _tubes(self, n, r_lo, r_hi, spread, slope, h_lo, h_hi):
        """n tubes (vessels, bowel): centre (x, y) in the unit disc at height z0, drift
        (vx, vy) in mm per mm of z, radius r (mm), half length h (mm), a random kind."""
        rng = self.rng
        ang = rng.uniform(0, 2 * np.pi, n)
        rad = spread * np.sqrt(rng.uniform(0, 1, n))
        lo, hi = _Z_RANGE[self.region]
        return dict(x=rad * np.cos(ang), y=rad * np.sin(ang),
                    vx=rng.normal(0, slope, n), vy=rng.normal(0, slope, n),
                    r=rng.uniform(r_lo, r_hi, n), kind=rng.uniform(0, 1, n),
                    z0=rng.uniform(lo - 30, hi + 30, n), h=rng.uniform(h_lo, h_hi, n))

    @staticmethod
    def _tube_cut(tubes, z):
        """Indices of tubes crossing z, their in-plane centres (unit-disc units, before
        drift in mm) and radius factor (ellipsoid-like ends, so they appear smoothly)."""
        t = (z - tubes["z0"]) / tubes["h"]
        idx = np.flatnonzero(np.abs(t) < 0.999)
        return idx, np.sqrt(1.0 - t[idx] ** 2), z - tubes["z0"][idx]

    # -- per-region draws -----------------------------------------------------------------
    def _draw_thorax(self):
        rng, u = self.rng, self.rng.uniform
        self.lung_hu = u(-880, -820)
        self.lung_harm = [self._harm(5, 0.05), self._harm(5, 0.05)]
        self.heart = (u(0.08, 0.2), u(-0.25, -0.1), u(0.3, 0.4), u(-45, -20))  # x, y, size, deg
        n = int(u(120, 220))
        self.vessels = [self._tubes(n, 0.5, 2.5, 0.95, 0.5, 15, 60) for _ in range(2)]
        self.vert_r = u(13, 17)
        self.scap = u(0.5, 1.0)

    def _draw_abdomen(self):
        u = self.rng.uniform
        self.visc = u(-0.15, 0.25)  # visceral fat amount (relative)
        self.liver_harm = self._harm(5, 0.06)
        self.spleen = u(0.7, 1.2)
        self.bowel = self._tubes(int(u(25, 45)), 9, 22, 0.75, 0.3, 30, 90)
        self.vert_r = u(16, 21)
        self.kid = (u(0.85, 1.15), u(0.85, 1.15), u(-10, 10))

    def _draw_pelvis(self):
        u = self.rng.uniform
        self.visc = u(-0.1, 0.25)
        self.bowel = self._tubes(int(u(12, 25)), 8, 18, 0.6, 0.3, 30, 90)
        self.bladder = u(0.6, 1.2)
        self.vert_r = u(17, 22)
        self.ilium = (u(0.9, 1.1), u(35, 50))
        self.femur_r = u(20, 26)

    def _draw_head(self):
        phantom_head.draw(self)

    # -- geometry -------------------------------------------------------------------------
    def body_axes(self, z):
        """Half axes of the body outline at z (mm)."""
        d = self.drift
        if self.region == "head":
            return phantom_head.body_axes(self, z)
        return self.a * (1 + 0.04 * d[0](z)), self.b * (1 + 0.04 * d[1](z))

    def outline(self, z, n=96):
        """Body outline points (x, y) in patient mm at z (arms included), for fitting the
        patient into the field."""
        a, b = self.body_axes(z)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        e = np.exp(1j * t)
        r = 1.0 + np.real(np.polyval(np.r_[self.harm[::-1], 0], e))
        x, y = a * r * np.cos(t), b * r * np.sin(t)
        for ax, ay, ra, rb in self.arm_ellipses(z):
            x = np.r_[x, ax + ra * np.cos(t)]
            y = np.r_[y, ay + rb * np.sin(t)]
        return x, y

    def arm_ellipses(self, z):
        """(x, y, half width, half depth) in mm of the arms beside the trunk (none if the
        arms are raised)."""
        if not self.arms:
            return []
        a, b = self.body_axes(z)
        arm = self.arm
        fore = self.region == "abdomen"  # forearms beside the abdomen
        ra = arm["r"] * (0.8 if fore else 1.0)
        rb = ra * 1.1
        return [(sgn * (a * (1 + 0.035) + arm["gap"] + ra), arm["y"] * b, ra, rb)
                for sgn in (-1, 1)]

    def pose(self, zs, size, pixel_mm, rng, table_on=None, fit=True):
        """Scale, rotation, shift and table: fixed for the whole volume.

        The patient is scaled by its body size (child to large adult) and shrunk further if
        needed so that it fits the field; with ``fit=False`` an oversized patient keeps its
        size and may leave the field. The table is a curved plate (solid, or a carbon-fibre
        sandwich with a foam core, optionally under a pad) under a trunk, a U-shaped holder
        around a head; room for it is kept whether it is drawn or not, so ``table`` changes
        nothing else.
        """
        head = self.region == "head"
        rot = np.deg2rad(rng.uniform(-5, 5))
        shift = rng.uniform(-25, 25, 2)
        if not head:
            shift *= 1.6
        table = dict(on=rng.uniform() < (0.5 if head else 0.7), head=head,
                     t=rng.uniform(3, 6) if head else rng.uniform(5, 10),
                     hu=rng.uniform(200, 400), gap=rng.uniform(3, 10), R=rng.uniform(350, 900))
        if table_on is not None:
            table["on"] = bool(table_on)
        pts = np.concatenate([np.stack(self.outline(z), 0) for z in zs], 1)
        cr, sr = np.cos(rot), np.sin(rot)
        x, y = cr * pts[0] - sr * pts[1], sr * pts[0] + cr * pts[1]
        rmax = _FIT * size * pixel_mm

        def extent(x, y, sx=0.0, sy=0.0):
            if head:
                return np.hypot(x, y).max() + room + np.hypot(sx, sy)
            return max(np.hypot(x + sx, y + sy).max(),
                       np.hypot(0.5 * np.abs(x).max(), y.max() + sy + room))

        if not head and self.table_kind == "sandwich":
            table["t"] *= 3.0
        room = table["t"] + table["gap"] + 2.0  # mm around (head) or below (trunk) the body
        scale = min(self.size, 0.97 * rmax / extent(x, y))  # shrink if the field is small
        if not fit and not head:
            scale = self.big
        x, y = x * scale, y * scale
        for _ in range(30):  # keep the shifted body and its table inside the circle rmax
            if extent(x, y, *shift) <= rmax or (not fit and not head):
                break
            shift *= 0.8
        if head:  # holder: ring around the head centre, open at the top
            table["R"] = np.hypot(x, y).max() + table["gap"]
            table["y"] = shift[1]
        else:  # top of the curved plate at x = 0, so that it clears the body everywhere
            xs, R = x + shift[0], table["R"]
            sag = R - np.sqrt(np.maximum(R * R - xs * xs, 0.0))
            table["y"] = (y + shift[1] + sag).max() + table["gap"]
        table["x"] = shift[0]
        table.update(kind="holder" if head else self.table_kind, pad=self.pad and not head,
                     foam_hu=self.foam_hu, shell_hu=self.shell_hu, pad_hu=self.pad_hu)
        return scale, rot, shift, table

    # -- rendering ------------------------------------------------------------------------
    def render(self, zs, size=256, pixel_mm=1.5, table=None, noise_hu=None, rng=None,
               fit=True):
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        scale, rot, shift, tab = self.pose(zs, size, pixel_mm, rng, table, fit)
        noise = rng.uniform(0, 10) if noise_hu is None else float(noise_hu)
        noise_rng = np.random.default_rng([self.seed, 3])
        if noise_hu is None:  # head scans are made at higher dose (grey/white contrast)
            noise = noise_rng.uniform(2, 8) if self.region == "head" else noise_rng.uniform(2, 20)
        out = np.empty((len(zs), size, size), np.float32)
        for i, z in enumerate(zs):
            cv = _Canvas(size, pixel_mm, scale, rot, shift)
            inside = self.paint_body(cv, z)
            inside = np.maximum(inside, self.paint_arms(cv, z))
            inside[cv.img < -600] *= 3.0  # stronger texture in the lungs
            cv.img += inside * self.texture(z, size)
            if tab["on"]:
                self.paint_table(cv, tab, pixel_mm)
            if noise > 0:
                cv.img += np.float32(noise) * ct_noise(rng, cv.img.shape)
            out[i] = cv.img
        return out

    def texture(self, z, size):
        """Smooth correlated texture (~6 HU rms), continuous in z (lattice every 12 mm)."""
        zk = z / 12.0
        k = int(np.floor(zk))
        t = zk - k
        out = np.zeros((size, size), np.float32)
        for n, amp in ((max(size // 16, 4), 5.0), (max(size // 6, 4), 2.5)):
            g0, g1 = (np.random.default_rng([self.seed, kk + 10_000, n]).standard_normal(
                (n, n), np.float32) for kk in (k, k + 1))
            out += amp * _upsample((1 - t) * g0 + t * g1, size)
        return out

    def paint_table(self, cv, tab, pixel_mm):
        """Curved table plate under a trunk or U-shaped holder under a head (image frame,
        not rotated with the patient), clipped to the inscribed circle."""
        c = (cv.size - 1) / 2.0
        R, t = tab["R"] / pixel_mm, tab["t"] / pixel_mm
        rows = cv.grid[:, None] - c
        cols = cv.grid[None, :] - c
        if tab["head"]:
            cx, cy = tab["x"] / pixel_mm, tab["y"] / pixel_mm
            dist = np.sqrt((cols - cx) ** 2 + (rows - cy) ** 2)
            d = dist - R
            al = np.clip(np.minimum(d, t - d) + 0.5, 0, 1)
            al *= np.clip((rows - cy) - 0.3 * dist + 0.5, 0, 1)  # lower part only
            al *= np.clip(_FIT * cv.size - np.sqrt(cols ** 2 + rows ** 2) + 0.5, 0, 1)
            cv.img += al * (tab["hu"] - cv.img)
            return
        y0 = tab["y"] / pixel_mm  # top of the plate at the centre column
        d = np.sqrt(cols ** 2 + (rows - (y0 - R)) ** 2) - R  # > 0 below the top surface
        keep = (np.clip(0.9 * _FIT * cv.size - np.abs(cols) + 0.5, 0, 1)
                * np.clip(_FIT * cv.size - np.sqrt(cols ** 2 + rows ** 2) + 0.5, 0, 1))
        if tab["pad"]:  # mattress between table and patient, only where there is air
            g = tab["gap"] / pixel_mm
            al = np.clip(np.minimum(-d, g + d) + 0.5, 0, 1) * keep * (cv.img < -900)
            cv.img += al * (tab["pad_hu"] - cv.img)
        al = np.clip(np.minimum(d, t - d) + 0.5, 0, 1) * keep
        if tab["kind"] == "sandwich":  # carbon-fibre shells around a foam core
            cv.img += al * (tab["shell_hu"] - cv.img)
            sh = max(1.5 / pixel_mm, 0.7)
            al = np.clip(np.minimum(d - sh, t - sh - d) + 0.5, 0, 1) * keep
            cv.img += al * (tab["foam_hu"] - cv.img)
        else:
            cv.img += al * (tab["hu"] - cv.img)

    def paint_body(self, cv, z):
        a, b = self.body_axes(z)
        sl, al = cv.paint(self.hu_fat if self.region != "head" else 20.0, 0, 0, a, b, 0,
                          self.harm)
        getattr(self, "_paint_" + self.region)(cv, z, a, b)
        inside = np.zeros_like(cv.img)
        inside[sl] = al
        cv.img += (1.0 - inside) * (-1000.0 - cv.img)  # nothing pokes out of the skin
        return inside

    def paint_arms(self, cv, z):
        """Arms beside the trunk (skin and fat, muscle, humerus or radius and ulna); returns
        their alpha (for the texture)."""
        inside = np.zeros_like(cv.img)
        arm = self.arm
        for x, y, ra, rb in self.arm_ellipses(z):
            res = cv.paint(arm["hu_fat"], x, y, ra, rb)
            if res is None:
                continue
            inside[res[0]] = np.maximum(inside[res[0]], res[1])
            f = min(arm["fat"], 0.5 * ra)
            cv.paint(self.hu_muscle, x, y, ra - f, rb - f)
            if self.region == "abdomen":  # forearm: radius and ulna
                for dx in (-0.3, 0.3):
                    cv.bone(x + dx * ra, y, 0.55 * arm["bone"], 0.5 * arm["bone"], 0, 1.2,
                            self.hu_cort, self.hu_canc)
            else:
                cv.bone(x, y, arm["bone"], arm["bone"], 0, 2.5, self.hu_cort, self.hu_canc)
        return inside

    # -- shared anatomy -------------------------------------------------------------------
    def _trunk(self, cv, z, a, b):
        """Fat layer, muscle wall, cavity; returns the cavity (cx, cy, ca, cb)."""
        d = self.drift
        f = self.fat * (1 + 0.15 * d[2](z))
        m = self.muscle * (1 + 0.15 * d[3](z))
        st = self.strands  # fibrous septa in the subcutaneous fat
        for t, u, L, ang, hu, w in zip(st["t"], st["u"], st["L"], st["ang"], st["hu"], st["w"]):
            r = 1.0 - u * f / max(a, 1.0)
            cv.paint(hu, a * r * np.cos(t), b * r * np.sin(t), 0.5 * L, w, t + np.pi / 2 + ang)
        cv.paint(self.hu_muscle, 0, 0, a - f, b - f, 0, self.harm)
        ca, cb = a - f - m, b - f - m - self.back / 2
        # deepest allowed spinous-process tip: muscle boundary behind the spine, minus 5 mm
        self._spine_lim = (b - f) * (1 + np.real(np.sum(self.harm * 1j ** np.arange(
            1, self.harm.size + 1)))) - 5
        return 0.0, -self.back / 2, ca, cb

    def _vertebra(self, cv, x, y, r, arch=True):
        """Vertebral body (cortical shell, cancellous core) with canal and posterior arch;
        moved forward if the arch would not fit in the back muscle."""
        c, s = self.hu_cort, self.hu_canc
        y = min(y, self._spine_lim - 3.85 * r)
        post = 0.5 * (c + s)
        if arch:
            yc = y + r + 0.55 * r
            cv.paint(post, x, yc + 1.4 * r, 0.22 * r, 0.9 * r)  # spinous process
            for sgn in (-1, 1):
                cv.paint(post, x + sgn * 1.25 * r, yc, 0.8 * r, 0.22 * r, sgn * 0.35)
            cv.paint(post, x, yc, 0.75 * r, 0.68 * r)  # arch around the canal
            cv.paint(20.0, x, yc, 0.5 * r, 0.45 * r)  # canal (cord + CSF)
        cv.bone(x, y, 1.15 * r, r, 0, 1.5, c, s)

    def _ribs(self, cv, z, cx, cy, ca, cb, lo_deg, hi_deg, presence=1.0):
        """Ribs just outside the cavity between lo_deg and hi_deg (0 = lateral, 90 =
        posterior) on both sides; the pattern turns with z, ribs taper at the arc ends."""
        n = self.n_ribs
        for i in range(n):
            t = (i + self.rib_phase + z * self.rib_tilt * n) % n / n
            f = presence * np.sqrt(np.sin(np.pi * t))
            if f < 0.1:
                continue
            ang = np.deg2rad(lo_deg + (hi_deg - lo_deg) * t)
            for sgn in (-1, 1):
                x, y = sgn * (ca + 3) * np.cos(ang), (cb + 3) * np.sin(ang)
                cv.bone(cx + x, cy + y, 7.0 * f, 4.0 * f, np.arctan2(y, x) + np.pi / 2, 1.2,
                        self.hu_cort, self.hu_canc)

    def _bowel(self, cv, z, tubes, cx, cy, ca, cb):
        """Bowel loops: wall, then fluid, stool or gas (with air-fluid level)."""
        k = cv.k
        idx, prof, dz = self._tube_cut(tubes, z)
        for i, pres, dzi in zip(idx, prof, dz):
            x = cx + ca * tubes["x"][i] + tubes["vx"][i] * dzi
            y = cy + cb * tubes["y"][i] + tubes["vy"][i] * dzi
            rr = (x - cx) ** 2 / ca ** 2 + (y - cy) ** 2 / cb ** 2
            r = tubes["r"][i] * min(1.0, 1.5 * pres) * np.clip((0.8 - rr) / 0.2, 0.0, 1.0)
            if r < 0.5:
                continue
            cv.paint(self.hu_blood, x, y, r, 0.85 * r, tubes["vx"][i])
            kind = tubes["kind"][i]
            content = 15.0 if kind < 0.4 else (-150.0 if kind < 0.6 else 10.0)
            res = cv.paint(content, x, y, r - 2.5, 0.85 * r - 2.5, tubes["vx"][i])
            if res is not None and kind >= 0.6:  # gas above a fluid level
                py = cv.to_px(x, y)[1]
                lvl = py + (kind - 0.8) * 2.5 * r * k
                al = cv.level(res[0], res[1], lvl)
                im = cv.img[res[0]]
                im += al * (-1000.0 - im)

    # -- regions --------------------------------------------------------------------------
    def _paint_thorax(self, cv, z, a, b):
        d = self.drift
        cx, cy, ca, cb = self._trunk(cv, z, a, b)
        # scapulae in the back muscle (upper thorax)
        psc = _ramp(z, 100, 170)
        for sgn in (-1, 1):
            cv.bone(sgn * 0.55 * a, b * 0.55, 50 * self.scap * psc, 5 * min(1.0, 4 * psc),
                    sgn * 0.5, 1.5, self.hu_cort, self.hu_canc)
        # cavity: mediastinal fat, ribs around it (from anterior -70 deg to posterior 85 deg)
        cv.paint(self.hu_fat + 10, cx, cy, ca, cb, 0, self.harm)
        self._ribs(cv, z, cx, cy, ca, cb, -70, 85)
        # lungs, each with its own alpha for vessels
        size_l = 0.55 + 0.45 * _ramp(z, 260, 180)
        lung = np.zeros_like(cv.img)
        lungs = []
        for i, sgn in enumerate((-1, 1)):
            la = ca * 0.47 * (1 + 0.05 * d[4 + i](z)) * (0.5 + 0.5 * size_l)
            lb = cb * 0.9 * size_l
            lx = cx + sgn * (ca - la - 2)
            ly = cy + 0.6 * (cb - lb) - 4
            res = cv.paint(self.lung_hu, lx, ly, la, lb, sgn * 0.1, self.lung_harm[i])
            if res is not None:
                lung[res[0]] = np.maximum(lung[res[0]], res[1])
            lungs.append((lx, ly, la, lb))
        # liver dome under the right lung at the bottom of the thorax
        s = _ramp(z, 50, 0)
        if s > 0:
            lx, ly, la, lb = lungs[0]
            res = cv.paint(60.0, lx + 0.1 * la, ly + 0.2 * lb, la * s * 1.1, lb * s * 0.9)
            if res is not None:
                lung[res[0]] *= 1 - res[1]
        # heart with epicardial fat
        hx, hy, hs, hang = self.heart
        ph = _bump(z, -40, 140)
        if ph > 0:
            r = hs * ca * ph * (1 + 0.05 * d[6](z))
            x, y = cx + hx * ca, cy + hy * cb
            f = 4.0 * min(1.0, 5 * ph)  # epicardial fat
            cv.paint(self.hu_fat + 20, x, y, 1.15 * r + f, 0.85 * r + f, np.deg2rad(hang))
            res = cv.paint(self.hu_blood, x, y, 1.15 * r, 0.85 * r, np.deg2rad(hang))
            if res is not None:
                lung[res[0]] *= 1 - res[1]
        # great vessels, trachea, oesophagus
        vy = cy + cb - 2.2 * self.vert_r - 4
        res = cv.paint(self.hu_blood, 0.3 * self.vert_r + 14, vy, 12, 12)  # descending aorta
        if res is not None:
            lung[res[0]] *= 1 - res[1]
        pt = _ramp(z, 115, 140)  # trachea above the carina, main bronchi around it
        cv.paint(self.hu_blood + 10, 0, vy - 18, 11 * pt, 10 * pt)
        cv.paint(-1000.0, 0, vy - 18, 8.5 * pt, 7.5 * pt)
        pb = _bump(z, 70, 135)
        for sgn in (-1, 1):
            cv.paint(-950.0, sgn * 14 * (1.5 - pb), vy - 14, 6 * pb, 5 * pb)
        cv.paint(self.hu_blood, -8, cy - 0.25 * cb, 14 * pb, 14 * pb)  # ascending aorta
        pa = _bump(z, 125, 180)  # aortic arch, from anterior right to posterior left
        for v, (x, y, ra, rb, ang) in ((pa, (6, cy - 0.05 * cb, 40, 12, 0.9)),
                                      (_bump(z, 85, 185), (-25, cy - 0.2 * cb, 10, 9, 0))):
            res = cv.paint(self.hu_blood, x, y, ra * v, rb * v, ang)  # arch, SVC
            if res is not None:
                lung[res[0]] *= 1 - res[1]
        pg = _ramp(z, 165, 185)  # supra-aortic arteries
        for x, y, r in ((-12, -0.35, 6), (2, -0.3, 4.5), (16, -0.2, 5)):
            cv.paint(self.hu_blood, x, cy + y * cb, r * pg, r * pg)
        # lung vessels: tubes through each lung, restricted to the lung alpha
        for (lx, ly, la, lb), tub in zip(lungs, self.vessels):
            idx, prof, dz = self._tube_cut(tub, z)
            x = tub["x"][idx] + tub["vx"][idx] * dz / la
            y = tub["y"][idx] + tub["vy"][idx] * dz / lb
            dist = np.hypot(x + np.sign(lx) * 0.6, y)  # bigger towards the hilum
            r = tub["r"][idx] * np.clip(1.6 - 0.8 * dist, 0.3, 1.6) * prof
            for j in np.flatnonzero(x * x + y * y < 1.1):
                i = idx[j]
                el = min(np.hypot(tub["vx"][i], tub["vy"][i]) + 1, 4.0)
                cv.paint(self.hu_blood, lx + la * x[j], ly + lb * y[j], r[j] * el, r[j],
                         np.arctan2(tub["vy"][i], tub["vx"][i]), within=lung)
        # sternum and spine
        cv.bone(0, cy - cb - 0.6 * self.muscle, 13, 6, 0, 1.5, self.hu_cort, self.hu_canc)
        self._vertebra(cv, 0, cy + cb - self.vert_r + 4, self.vert_r)

    def _paint_abdomen(self, cv, z, a, b):
        d = self.drift
        cx, cy, ca, cb = self._trunk(cv, z, a, b)
        cv.paint(self.hu_fat + 10, cx, cy, ca, cb, 0, self.harm)
        # organs sit in an inner cavity; more visceral fat -> smaller organ region
        s = 1.0 - 0.5 * max(self.visc, 0.0)
        vr = self.vert_r
        vy = cy + cb - vr + 2
        # lower ribs in the upper abdomen
        pr = _ramp(z, 90, 170)
        if pr > 0:
            self._ribs(cv, z, cx, cy, ca, cb, -40, 85, pr)
        me = self.mesentery  # mesenteric vessels in the visceral fat
        for x, y, r, L, ang in zip(me["x"], me["y"], me["r"], me["L"], me["ang"]):
            cv.paint(self.hu_blood, cx + x * ca * s, cy + y * cb * s, r + 0.5 * L * abs(
                np.sin(0.02 * z + ang)), r, ang)
        self._bowel(cv, z, self.bowel, cx, cy - 0.1 * cb, ca * s, cb * s)
        # liver (patient right = image left), spleen, stomach
        pl = _ramp(z, 30, 150)
        if pl > 0:
            la, lb = 0.55 * ca * pl, 0.7 * cb * (0.4 + 0.6 * pl)
            cv.paint(self.hu_liver + 5 * d[8](z), cx - ca + la + 3, cy - 0.1 * cb, la, lb,
                     -0.3, self.liver_harm)
            # portal vein / hepatic vessels
            cv.paint(self.hu_blood - 10, cx - ca + 1.2 * la, cy, 7 * pl, 6 * pl)
        ps = _bump(z, 100, 230) * self.spleen
        if ps > 0:
            cv.paint(self.hu_spleen, cx + 0.72 * ca, cy + 0.45 * cb, 0.2 * ca * ps,
                     0.3 * cb * ps, 0.6)
        pst = _bump(z, 110, 230)
        if pst > 0:
            x, y = cx + 0.35 * ca, cy - 0.35 * cb
            r = 0.25 * ca * pst
            cv.paint(self.hu_blood, x, y, r, 0.7 * r, 0.3)
            res = cv.paint(15.0, x, y, r - 3, 0.7 * r - 3, 0.3)
            if res is not None:
                al = cv.level(res[0], res[1], cv.to_px(x, y)[1] - 0.2 * r * cv.k)
                cv.img[res[0]] += al * (-1000.0 - cv.img[res[0]])
        # kidneys: cortex, medulla, sinus fat
        pk = _bump(z, 20, 150)
        if pk > 0:
            for sgn, sz in ((-1, self.kid[0]), (1, self.kid[1])):
                x, y = sgn * (vr + 45), vy - 5 + self.kid[2]
                ka, kb, ang = 22 * pk * sz, 29 * pk * sz, sgn * 0.5
                cv.paint(self.hu_fat + 20, x, y, ka + 6, kb + 6, ang)  # perirenal fat
                cv.paint(self.hu_kcortex, x, y, ka, kb, ang)
                cv.paint(self.hu_kmedulla, x, y, ka - 6, kb - 6, ang)
                cv.paint(-50.0, x - sgn * 0.5 * ka, y - 0.2 * kb, 0.3 * ka, 0.35 * kb, ang)
        # psoas, aorta, IVC, spine
        pp = 0.4 + 0.6 * _ramp(z, 150, 0)
        for sgn in (-1, 1):
            cv.paint(self.hu_muscle, sgn * (vr + 12), vy - 2, 13 * pp + 4, 16 * pp + 4)
        cv.paint(self.hu_blood, 12, vy - 1.7 * vr - 8, 11, 11)
        cv.paint(self.hu_blood - 5, -22, vy - 1.6 * vr - 8, 13, 9)
        self._vertebra(cv, 0, vy, vr)

    def _paint_pelvis(self, cv, z, a, b):
        d = self.drift
        cx, cy, ca, cb = self._trunk(cv, z, a, b)
        cv.paint(self.hu_fat + 10, cx, cy, ca, cb, 0, self.harm)
        # gluteal muscles posterolaterally
        for sgn in (-1, 1):
            cv.paint(self.hu_muscle, sgn * 0.45 * ca, cy + 0.75 * cb, 0.45 * ca, 0.4 * cb,
                     sgn * 0.35)
        self._bowel(cv, z, self.bowel, cx, cy - 0.25 * cb, 0.7 * ca, 0.6 * cb)
        c, s = self.hu_cort, self.hu_canc
        vr = self.vert_r
        ys = cy + cb - 0.6 * vr  # sacrum
        il_s, il_ang = self.ilium
        pi = _ramp(z, 70, 130)
        pelvis = []
        if pi > 0:  # iliac wings from the sacroiliac joint to anterolateral, iliacus inside
            for sgn in (-1, 1):
                L = 0.3 * ca * il_s * np.sqrt(pi)
                ang = np.deg2rad(il_ang + 8 * d[9](z))
                x = sgn * (2.0 * vr + L * np.cos(ang))
                y = ys - L * np.sin(ang)
                cv.paint(self.hu_muscle, x - sgn * 10 * np.sin(ang), y - 10 * np.cos(ang),
                         L, 10, -sgn * ang)
                pelvis.append((x, y, L * 1.15, 5 + 5 * (1 - pi), -sgn * ang))
        pf = _ramp(z, 110, 50)
        if pf > 0:  # acetabulum / femoral heads, pubis at the bottom
            pp = _ramp(z, 35, 15)
            for sgn in (-1, 1):
                r = self.femur_r * np.sqrt(pf)
                x, y = sgn * 0.62 * ca, cy + 0.1 * cb
                cv.bone(x, y, 1.3 * r, 1.2 * r, 0, 2.0, c, s)  # acetabular rim
                cv.paint(-50.0, x, y, 1.05 * r, 1.05 * r)  # joint space / cartilage
                cv.bone(x, y, r, r, 0, 1.5, c, s)
                cv.bone(sgn * 0.25 * ca, cy - 0.75 * cb, 22 * pp, 8 * pp, sgn * 0.3, 1.5, c, s)
        pb = _bump(z, -30, 110) * self.bladder
        if pb > 0:
            cv.paint(10.0, 0, cy - 0.35 * cb, 0.35 * ca * pb, 0.35 * cb * pb)
        # rectum, then sacrum with its alae (or L5 higher up)
        cv.paint(30.0, 0, ys - 1.8 * vr, 15, 13)
        gas = float(np.clip(0.5 + 2.0 * d[10](z), 0.0, 1.0))  # gas <-> stool, smooth in z
        cv.paint(10.0 - 610.0 * gas, 0, ys - 1.8 * vr, 11, 9)
        if z > 150:
            self._vertebra(cv, 0, cy + cb - vr + 2, vr)
        elif z > 40:
            w = 0.4 + 0.6 * _ramp(z, 40, 130)
            pelvis += [(sgn * 1.2 * vr, ys + 0.1 * vr, vr * w, 0.55 * vr, sgn * 0.25)
                       for sgn in (-1, 1)]
            pelvis.append((0, ys, 1.1 * vr * (0.6 + 0.4 * w), 0.7 * vr, 0))
        cv.bones(pelvis, 1.5, c, s)
        if 40 < z <= 150:
            cv.paint(20.0, 0, ys + 0.75 * vr, 0.45 * vr, 0.2 * vr)  # sacral canal

    def _paint_head(self, cv, z, a, b):
        phantom_head.paint(self, cv, z, a, b)

def _pick_region(rng, region):
    if region is None:
        return REGIONS[int(rng.choice(len(REGIONS), p=_REGION_P))]
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {REGIONS} or None")
    return region


def generate_slice(seed: int, size: int = 256, pixel_size_mm: float = 1.5,
                   region: str | None = None, table: bool | None = None,
                   noise_hu: float | None = None, fit: bool | None = True) -> np.ndarray:
    """One anatomical CT slice in HU, float32 ``(size, size)``, deterministic per seed.

    ``region`` in REGIONS or None (random from the seed: thorax .3, abdomen .3, pelvis .2,
    head .2). ``table`` None = random (70 % of trunk slices). ``noise_hu``: std of the
    CT-like correlated noise in HU (None = random 2..20). Bodies range from child to large
    adult (trunk about 140-460 mm wide, arms beside the body in some thorax and abdomen
    slices). The field of view is ``size * pixel_size_mm`` mm; with ``fit=True`` the body is
    shrunk if needed so that it stays inside the inscribed circle with an air margin;
    ``fit=False`` lets a large trunk leave the field (truncated by the image edge);
    ``fit=None`` draws that from the seed (10 % of trunk slices), as the training data do.
    """
    rng = np.random.default_rng(seed)
    region = _pick_region(rng, region)
    pat = _Patient(rng, region)
    z = rng.uniform(*_Z_RANGE[region])
    if fit is None:
        fit = bool(np.random.default_rng([seed, 4]).uniform() >= 0.1)
    return pat.render([z], size, pixel_size_mm, table, noise_hu, rng, fit)[0]


def generate_volume(seed: int, n_slices: int, size: int = 256, pixel_size_mm: float = 1.5,
                    region: str | None = None, slice_step: float = 1.0,
                    table: bool | None = None, noise_hu: float | None = None) -> np.ndarray:
    """``n_slices`` contiguous slices of one patient, float32 ``(n_slices, size, size)`` HU.

    Slices are ``slice_step`` mm apart (along z, towards the head); anatomy changes smoothly
    from slice to slice; pose and table are shared by all slices. Other arguments as in
    ``generate_slice``.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    rng = np.random.default_rng(seed)
    region = _pick_region(rng, region)
    pat = _Patient(rng, region)
    lo, hi = _Z_RANGE[region]
    span = (n_slices - 1) * slice_step
    z0 = rng.uniform(lo, max(lo, hi - span))
    zs = [z0 + k * slice_step for k in range(n_slices)]
    return pat.render(zs, size, pixel_size_mm, table, noise_hu, rng)


def body_mask(hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Boolean mask of the body: largest connected component above ``threshold_hu``, holes
    filled (lungs and bowel gas count as inside). Works on ``(H, W)`` or ``(slices, H, W)``
    (per slice)."""
    hu = np.asarray(hu)
    if hu.ndim == 3:
        return np.stack([body_mask(s, threshold_hu) for s in hu])
    if hu.ndim != 2:
        raise ValueError(f"body_mask expects (H, W) or (slices, H, W), got shape {hu.shape}")
    lab, n = ndimage.label(hu > threshold_hu)
    if n == 0:
        return np.zeros(hu.shape, bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return ndimage.binary_fill_holes(lab == counts.argmax())
