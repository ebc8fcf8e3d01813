"""Simulated missing-data cases with known ground truth: truncation and metal.

* :func:`simulate_truncation`: the monochromatic sinogram of an HU image with every ray outside
  a field of measurement (FOM) zeroed.
* :func:`insert_metal` / :func:`simulate_metal`: titanium / steel objects inserted into a clean
  slice and projected *polychromatically* (tungsten-like spectrum; water, cortical bone and
  metal attenuation), with Poisson noise and the water beam-hardening precorrection of a
  clinical scanner, so FBP shows beam-hardening and photon-starvation streaks. The ground
  truth is the clean slice.

Mass attenuation coefficients (cm^2/g, total with coherent scattering) are the NIST tables
of J. H. Hubbell & S. M. Seltzer, "Tables of X-Ray Mass Attenuation Coefficients and Mass
Energy-Absorption Coefficients", NIST Standard Reference Database 126 (1996, XCOM data),
at 20-150 keV, interpolated log-log (no absorption edges lie in that range for these
materials). Units: lengths mm, energies keV, images HU, mu 1/mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage

from .data.phantoms import body_mask
from .geometry import Geometry
from .masks import _dilate_last_axes, _disk, metal_trace_mask, truncation_mask
from .projector import Projector
from .units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu, scan_mu_water

__all__ = ["TruncationCase", "MetalCase", "simulate_truncation", "insert_metal",
           "simulate_metal", "spectrum", "mass_attenuation", "MATERIALS"]

# ---------------------------------------------------------------------------------------
# physics tables
# ---------------------------------------------------------------------------------------
_E_TABLE_KEV = np.array([20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0])
_MU_RHO = {  # cm^2/g, NIST SRD 126
    "water": [0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505],
    "bone": [4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480],  # cortical, ICRU-44
    "titanium": [15.85, 4.972, 2.214, 1.213, 0.7661, 0.4052, 0.2721, 0.1649],
    "steel": [25.68, 8.176, 3.629, 1.958, 1.205, 0.5952, 0.3717, 0.1964],  # iron
    "aluminium": [3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378],
}
_DENSITY = {"water": 1.0, "bone": 1.92, "titanium": 4.54, "steel": 7.87, "aluminium": 2.699}
MATERIALS = ("titanium", "steel")
E_REF_KEV = 70.0  # energy at which HU are defined (mu_water ~ 0.0192 /mm)
_BONE_HU = (100.0, 1600.0)  # linear water->cortical-bone blend between these HU


def mass_attenuation(material: str, energy_kev) -> np.ndarray:
    """Mass attenuation coefficient [cm^2/g] of ``material`` at ``energy_kev`` (log-log)."""
    if material not in _MU_RHO:
        raise ValueError(f"unknown material {material!r}; choose one of {sorted(_MU_RHO)}")
    e = np.log(np.clip(np.asarray(energy_kev, dtype=np.float64), 20.0, 150.0))
    return np.exp(np.interp(e, np.log(_E_TABLE_KEV), np.log(_MU_RHO[material])))


def _mu_per_mm(material: str, energy_kev) -> np.ndarray:
    return mass_attenuation(material, energy_kev) * _DENSITY[material] / 10.0


def spectrum(kvp: float = 120.0, n_bins: int = 10, filter_al_mm: float = 8.0):
    """Tungsten-like photon spectrum: (bin centres [keV], photon fractions summing to 1).

    Kramers' bremsstrahlung (kvp - E) / E, aluminium filtration, and the tungsten K lines
    (58-59 and 67 keV) when ``kvp`` exceeds the K edge (69.5 keV). Bins span 20 keV..kvp."""
    if not 40.0 <= kvp <= 150.0:
        raise ValueError(f"spectrum_kvp must lie in 40..150 kV, got {kvp}")
    edges = np.linspace(20.0, kvp, n_bins + 1)
    e = (edges[:-1] + edges[1:]) / 2.0
    s = (kvp - e) / e * np.exp(-_mu_per_mm("aluminium", e) * filter_al_mm)
    s /= s.sum()
    if kvp > 69.5:
        k = 0.08 * min(1.0, (kvp - 69.5) / 50.0)  # share of K-line photons
        for line, share in ((58.8, 0.75), (67.2, 0.25)):
            i = min(np.searchsorted(edges, line) - 1, n_bins - 1)
            s[i] += k * share * np.exp(-_mu_per_mm("aluminium", line) * filter_al_mm)
        s /= s.sum()
    return e, s


# ---------------------------------------------------------------------------------------
# truncation
# ---------------------------------------------------------------------------------------
@dataclass
class TruncationCase:
    """A truncated scan. ``sinogram`` is zero outside the FOM (the "uncorrected" data);
    ``full_sinogram`` is the complete sinogram (ground truth in the sinogram domain)."""

    sinogram: np.ndarray
    mask: np.ndarray
    full_sinogram: np.ndarray
    ground_truth_hu: np.ndarray
    fom_mm: float
    geometry: Geometry


def _check_image(hu, geom: Geometry) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float32)
    geom.check_image_shape(hu.shape)
    if not np.isfinite(hu).all():
        raise ValueError("image contains NaN or infinite values")
    return hu


@dataclass
class LimitedAngleCase:
    """A limited-angle scan: ``sinogram`` is zero in the missing views (mask 0)."""

    sinogram: np.ndarray
    mask: np.ndarray
    full_sinogram: np.ndarray
    ground_truth_hu: np.ndarray
    missing_deg: float
    start_deg: float
    geometry: Geometry


def simulate_limited_angle(hu, geom: Geometry, missing_deg: float, start_deg: float | None = None,
                           mu_water: float | None = None) -> LimitedAngleCase:
    """Monochromatic sinogram of an HU image (``(H, W)`` or ``(slices, H, W)``) with the views
    in the wedge ``[start_deg, start_deg + missing_deg)`` (degrees; None = the scan's first
    angle) missing: zero in the sinogram, 0 in the mask (see :func:`masks.missing_wedge_mask`)."""
    from .masks import missing_wedge_mask

    hu = _check_image(hu, geom)
    mask = missing_wedge_mask(geom, missing_deg, start_deg)
    full = Projector(geom).forward(hu_to_mu(hu, scan_mu_water(geom, mu_water))).numpy()
    mask = np.broadcast_to(mask, full.shape).copy()
    return LimitedAngleCase(sinogram=(full * mask).astype(np.float32), mask=mask,
                            full_sinogram=full, ground_truth_hu=hu, missing_deg=float(missing_deg),
                            start_deg=float(geom.start_deg if start_deg is None else start_deg),
                            geometry=geom)


def simulate_truncation(hu, geom: Geometry, fom_mm: float = 150.0,
                        mu_water: float | None = None) -> TruncationCase:
    """Monochromatic sinogram of an HU image (``(H, W)`` or ``(slices, H, W)``) truncated to
    a field of measurement of diameter ``fom_mm``; raises if the FOM covers the body."""
    hu = _check_image(hu, geom)
    mu_water = scan_mu_water(geom, mu_water)
    body = body_mask(hu)
    x, y = geom.pixel_centres_mm()
    r = np.hypot(x[None, :], y[:, None]) + geom.pixel_size_mm / np.sqrt(2.0)
    body_diam = 2.0 * float(np.broadcast_to(r, body.shape)[body].max()) if body.any() else 0.0
    if fom_mm >= body_diam:
        raise ValueError(f"the FOM ({fom_mm:.0f} mm) is not smaller than the body (it spans "
                         f"{body_diam:.0f} mm around the isocentre): nothing would be truncated")
    mask = truncation_mask(geom, fom_mm)
    full = Projector(geom).forward(hu_to_mu(hu, mu_water)).numpy()
    return TruncationCase(sinogram=full * mask, mask=mask, full_sinogram=full,
                          ground_truth_hu=hu, fom_mm=float(fom_mm), geometry=geom)


# ---------------------------------------------------------------------------------------
# metal
# ---------------------------------------------------------------------------------------
# object kinds: semi-axes ranges (mm) of an ellipse; rods are long thin ellipses
_OBJECTS = {
    "hip": ((10.0, 14.0), (13.0, 18.0)),    # femoral-head-like implant
    "dental": ((3.0, 5.0), (3.0, 5.0)),     # filling / small disk
    "screw": ((2.5, 3.5), (12.0, 20.0)),    # pedicle screw in plane
}


def _ellipse_fraction(geom: Geometry, cx, cy, a, b, ang, supersample: int = 4) -> np.ndarray:
    """Area fraction (H, W) of each pixel covered by an ellipse (mm, radians)."""
    n, p = geom.image_size, geom.pixel_size_mm
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    x, y = geom.pixel_centres_mm()
    xs = (x[:, None] + sub[None, :] * p).ravel()  # (W * k)
    ys = (y[:, None] - sub[None, :] * p).ravel()
    dx, dy = xs[None, :] - cx, ys[:, None] - cy
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / a
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / b
    inside = (u * u + v * v <= 1.0).astype(np.float32)
    return inside.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def insert_metal(hu, geom: Geometry, n_objects: int = 2, seed: int = 0,
                 materials: Sequence[str] = MATERIALS, mu_water: float | None = None):
    """Draw ``n_objects`` metal objects inside the body of a clean HU slice ``(H, W)``.

    Objects are hip-implant-like ellipses, dental-like disks or in-plane screws (sizes in mm),
    placed at random (seeded) inside the body, apart from each other; object k is made of
    ``materials[k % len(materials)]``. Returns ``(hu_with_metal, fractions)``: the slice with
    metal at its 70 keV HU (about 12000 titanium, 33000 steel; for display) and a dict
    material -> (H, W) float32 area fraction of metal per pixel."""
    hu = _check_image(hu, geom)
    mu_water = scan_mu_water(geom, mu_water)
    if hu.ndim != 2:
        raise ValueError(f"insert_metal expects one slice (H, W), got shape {hu.shape}")
    if n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    for m in materials:
        if m not in MATERIALS:
            raise ValueError(f"unknown metal {m!r}; choose from {MATERIALS}")
    body = body_mask(hu)
    if not body.any():
        raise ValueError("no body found in the slice (nothing above -500 HU)")
    rng = np.random.default_rng(seed)
    depth = ndimage.distance_transform_edt(body) * geom.pixel_size_mm  # mm to the body edge
    x, y = geom.pixel_centres_mm()
    X, Y = np.meshgrid(x, y)
    # targets are drawn in the central part of the body's bounding box and snapped to the
    # nearest allowed pixel, so neighbouring slices of one volume get their metal in the
    # same places
    centre = np.array([X[body].mean(), Y[body].mean()])
    half = 0.3 * np.array([np.ptp(X[body]), np.ptp(Y[body])])
    fractions = {m: np.zeros(hu.shape, np.float32) for m in dict.fromkeys(materials)}
    placed = []  # (cx, cy, radius)
    for k in range(n_objects):
        kind = rng.choice(list(_OBJECTS))
        (a0, a1), (b0, b1) = _OBJECTS[kind]
        a, b, ang = rng.uniform(a0, a1), rng.uniform(b0, b1), rng.uniform(0, np.pi)
        tx, ty = centre + rng.uniform(-1, 1, 2) * half
        for _ in range(8):  # shrink until it fits
            rad = max(a, b)
            ok = depth > rad + 3.0
            for cx, cy, r in placed:
                ok &= np.hypot(X - cx, Y - cy) > rad + r + 5.0
            if ok.any():
                break
            a, b = a * 0.75, b * 0.75
        else:
            raise ValueError(f"no room for {n_objects} metal objects inside the body")
        k_best = np.argmin(np.where(ok, np.hypot(X - tx, Y - ty), np.inf))
        cx, cy = X.flat[k_best], Y.flat[k_best]
        placed.append((cx, cy, max(a, b)))
        fractions[materials[k % len(materials)]] += _ellipse_fraction(geom, cx, cy, a, b, ang)
    out = hu.copy()
    for m, f in fractions.items():
        np.clip(f, 0, 1, out=f)
        metal_hu = mu_to_hu(float(_mu_per_mm(m, E_REF_KEV)), mu_water)
        out += f * (metal_hu - out)
    return out.astype(np.float32), fractions


@dataclass
class MetalCase:
    """A polychromatic scan with metal. ``sinogram``: water-precorrected line integrals;
    ``mask``: 0 on the (dilated) metal trace; ``ground_truth_hu``: the clean slice;
    ``full_sinogram``: monochromatic sinogram of the clean slice; ``metal_hu``: the slice with
    metal (display); ``uncorrected_hu``: FBP of ``sinogram``."""

    sinogram: np.ndarray
    mask: np.ndarray
    metal_image_mask: np.ndarray
    ground_truth_hu: np.ndarray
    full_sinogram: np.ndarray
    metal_hu: np.ndarray
    uncorrected_hu: Optional[np.ndarray]
    geometry: Geometry
    fractions: Dict[str, np.ndarray] = field(default_factory=dict)
    photons: Optional[float] = None
    spectrum_kvp: float = 120.0


def water_precorrection(p_poly, energies_kev, weights, mu_water: float | None = None):
    """Map polychromatic line integrals to monochromatic water line integrals at 70 keV
    (lookup curve of water, linear extrapolation beyond 3 m of water)."""
    ratio = _mu_per_mm("water", energies_kev) / _mu_per_mm("water", E_REF_KEV)
    mu_water = MU_WATER_PER_MM if mu_water is None else mu_water
    a = np.linspace(0.0, 3000.0 * mu_water, 2001)  # mono line integrals (0..3 m water)
    f = -np.log(np.exp(-np.outer(a, ratio)) @ weights)
    out = np.interp(p_poly, f, a)
    slope = (a[-1] - a[-2]) / (f[-1] - f[-2])
    return np.where(p_poly > f[-1], a[-1] + (p_poly - f[-1]) * slope, out)


def simulate_metal(hu_clean, geom: Geometry, n_objects: int = 2, seed: int = 0,
                   photons: Optional[float] = 1e5, spectrum_kvp: float = 120.0,
                   materials: Sequence[str] = MATERIALS, mu_water: float | None = None,
                   dilation_px: int = 1, dilation_bins: int = 1,
                   reconstruct: bool = True) -> MetalCase:
    """Insert metal into a clean HU slice and simulate a polychromatic scan.

    The slice is split into water-like and cortical-bone-like parts (linear blend between
    100 and 1600 HU) that match its HU at 70 keV; each part and each metal is projected
    once, then ``I = sum_E S(E) exp(-sum_m mu_m(E) L_m)``, Poisson counts with ``photons``
    per unattenuated ray (``None``: noiseless; at least one count is kept), ``p = -ln(I)``
    and the water precorrection. The mask marks the trace of the metal dilated by
    ``dilation_px`` pixels and ``dilation_bins`` bins."""
    hu = _check_image(hu_clean, geom)
    mu_water = scan_mu_water(geom, mu_water)
    metal_hu, fractions = insert_metal(hu, geom, n_objects, seed, materials, mu_water)
    metal = sum(fractions.values())
    mu = np.clip(hu_to_mu(hu, mu_water), 0.0, None) * (1.0 - metal)
    t = np.clip((hu - _BONE_HU[0]) / (_BONE_HU[1] - _BONE_HU[0]), 0.0, 1.0)
    names = ["water", "bone", *fractions]
    images = [mu * (1 - t), mu * t] + [f * _mu_per_mm(m, E_REF_KEV) for m, f in fractions.items()]
    images.append(hu_to_mu(hu, mu_water))  # the clean monochromatic reference
    P = Projector(geom)
    lines = P.forward(np.stack(images).astype(np.float32)).numpy().astype(np.float64)
    mono, full = lines[:-1], lines[-1]

    energies, weights = spectrum(spectrum_kvp)
    ratio = np.stack([_mu_per_mm(n, energies) / _mu_per_mm(n, E_REF_KEV) for n in names])
    expo = np.einsum("me,mvd->evd", ratio, mono)  # (E, V, D)
    intensity = np.einsum("e,evd->vd", weights, np.exp(-expo))
    if photons is not None:
        rng = np.random.default_rng(seed + 7919)
        intensity = np.maximum(rng.poisson(photons * intensity), 1.0) / photons
    p_poly = -np.log(np.maximum(intensity, 1e-300))
    sino = water_precorrection(p_poly, energies, weights, mu_water).astype(np.float32)

    metal_img = _dilate_last_axes(metal > 0, _disk(dilation_px))
    mask = metal_trace_mask(metal_img, geom, dilation_bins)
    unc = mu_to_hu(P.fbp(sino).numpy(), mu_water) if reconstruct else None
    return MetalCase(sinogram=sino, mask=mask, metal_image_mask=metal_img, ground_truth_hu=hu,
                     full_sinogram=full.astype(np.float32), metal_hu=metal_hu,
                     uncorrected_hu=unc, geometry=geom, fractions=fractions,
                     photons=photons, spectrum_kvp=spectrum_kvp)
