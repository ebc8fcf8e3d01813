"""Validity masks for missing-data CT: truncation, metal, limited angle.

Sinogram masks are float32 arrays of shape ``(..., views, detector)`` with values in {0, 1}:
**1 = valid** (measured and trustworthy), 0 = missing or corrupt. Image masks are boolean
``(..., H, W)`` arrays named for what they mark (``metal_image_mask`` is True on metal,
``fom_image_mask`` is True inside the field of measurement). Lengths are in mm, angles in
degrees, images in HU.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

from .geometry import FanBeam, Geometry

__all__ = [
    "ray_distance_mm", "truncation_mask", "fom_image_mask", "metal_image_mask",
    "metal_trace_mask", "metal_masks", "labels_to_sinogram_mask", "limited_angle_mask",
    "missing_wedge_mask",
    "combine_masks", "check_mask",
]


def ray_distance_mm(geom: Geometry) -> np.ndarray:
    """Signed distance [mm] of each detector bin's ray from the isocentre, shape (n_det,).

    Parallel beam: the bin offset ``s``; fan beam: ``sid_mm * sin(gamma)``. The same for every
    view of a circular scan."""
    if isinstance(geom, FanBeam):
        return geom.sid_mm * np.sin(geom.fan_angles_rad())
    return geom.ray_offsets_mm()


def _check_fom(fom_mm) -> float:
    if not (np.isscalar(fom_mm) and np.isfinite(fom_mm) and fom_mm > 0):
        raise ValueError(f"fom_mm must be a positive diameter in mm, got {fom_mm!r}")
    return float(fom_mm)


def truncation_mask(geom: Geometry, fom_mm: float = 150.0) -> np.ndarray:
    """(V, D) float32 mask: 1 where the ray passes within the field-of-measurement circle of
    diameter ``fom_mm`` (centred on the isocentre), 0 for the truncated rays outside it."""
    half = _check_fom(fom_mm) / 2.0
    inside = np.abs(ray_distance_mm(geom)) <= half * (1 + 1e-9)
    return np.broadcast_to(inside.astype(np.float32), geom.sino_shape).copy()


def fom_image_mask(geom: Geometry, fom_mm: float = 150.0) -> np.ndarray:
    """(H, W) bool: pixel centres inside the field-of-measurement circle of diameter fom_mm."""
    half = _check_fom(fom_mm) / 2.0
    x, y = geom.pixel_centres_mm()
    return (x[None, :] ** 2 + y[:, None] ** 2) <= half * half


def _disk(radius_px: int) -> np.ndarray:
    r = int(radius_px)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r


def _dilate_last_axes(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Binary dilation acting only on the last ``structure.ndim`` axes of ``mask``."""
    mask = np.asarray(mask, bool)
    if structure.size <= 1 or not mask.any():
        return mask.copy()
    s = structure.reshape((1,) * (mask.ndim - structure.ndim) + structure.shape)
    return ndimage.binary_dilation(mask, structure=s)


def metal_image_mask(image_hu, threshold_hu: float = 2500.0, dilation_px: int = 1) -> np.ndarray:
    """Bool (..., H, W): pixels above ``threshold_hu`` dilated by a disk of ``dilation_px``
    pixels (per slice)."""
    img = np.asarray(image_hu, dtype=np.float32)
    if img.ndim < 2:
        raise ValueError(f"image must be (..., H, W), got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or infinite values")
    if dilation_px < 0:
        raise ValueError(f"dilation_px must be >= 0, got {dilation_px}")
    return _dilate_last_axes(img > threshold_hu, _disk(dilation_px))


def metal_trace_mask(metal_mask_image, geom: Geometry, dilation_bins: int = 1,
                     eps_mm: float | None = None) -> np.ndarray:
    """Sinogram mask (..., V, D) float32: 0 on every ray that crosses the metal.

    The bool image mask is forward projected (path length through metal in mm); rays with a
    length above ``eps_mm`` (default 1 % of a pixel) are invalid, and the invalid trace is
    widened by ``dilation_bins`` detector bins on each side."""
    from .projector import Projector  # torch import only when needed

    m = np.asarray(metal_mask_image)
    geom.check_image_shape(m.shape, "metal image mask")
    if dilation_bins < 0:
        raise ValueError(f"dilation_bins must be >= 0, got {dilation_bins}")
    eps = 0.01 * geom.pixel_size_mm if eps_mm is None else float(eps_mm)
    length = Projector(geom).forward(np.ascontiguousarray(m != 0, dtype=np.float32)).numpy()
    hit = _dilate_last_axes(length > eps, np.ones(2 * int(dilation_bins) + 1, bool))
    return (~hit).astype(np.float32)


def metal_masks(image_hu, geom: Geometry, threshold_hu: float = 2500.0, dilation_px: int = 1,
                dilation_bins: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(metal image mask (bool, True on metal), sinogram mask (float32, 1 = valid)) from a
    threshold on the *uncorrected* FBP image in HU."""
    geom.check_image_shape(np.shape(image_hu))
    metal = metal_image_mask(image_hu, threshold_hu, dilation_px)
    return metal, metal_trace_mask(metal, geom, dilation_bins)


def labels_to_sinogram_mask(labels, geom: Geometry, dilation_bins: int = 1) -> np.ndarray:
    """Sinogram mask from a user label image (..., H, W): nonzero labels mark metal."""
    labels = np.asarray(labels)
    geom.check_image_shape(labels.shape, "label image")
    return metal_trace_mask(labels != 0, geom, dilation_bins)


def _view_angles_deg(geom: Geometry) -> np.ndarray:
    if geom.angles_deg is not None:
        return np.asarray(geom.angles_deg, dtype=np.float64)
    return geom.start_deg + geom.arc_deg / geom.n_views * np.arange(geom.n_views)


def limited_angle_mask(geom: Geometry, keep_deg=(0.0, 120.0)) -> np.ndarray:
    """(V, D) float32: views whose angle (degrees, mod 360) lies in a kept range are valid.

    ``keep_deg`` is one ``(start, stop)`` range or a list of them; a range may wrap through
    0 (e.g. ``(-30, 30)`` or ``(330, 390)``); ends are inclusive."""
    ranges = [keep_deg] if np.ndim(keep_deg) == 1 else list(keep_deg)
    ang = _view_angles_deg(geom)
    keep = np.zeros(ang.shape, bool)
    for r in ranges:
        if len(r) != 2 or not all(np.isfinite(v) for v in r):
            raise ValueError(f"each kept range must be (start_deg, stop_deg), got {r!r}")
        lo, hi = float(r[0]), float(r[1])
        if not 0.0 <= hi - lo <= 360.0:
            raise ValueError(f"kept range {r!r} must satisfy start <= stop <= start + 360")
        keep |= np.mod(ang - lo + 1e-9, 360.0) <= hi - lo + 2e-9
    return np.repeat(keep.astype(np.float32)[:, None], geom.n_det, axis=1)


def missing_wedge_mask(geom: Geometry, missing_deg: float, start_deg: float | None = None) -> np.ndarray:
    """(V, D) float32 limited-angle mask: the views whose angle lies in the wedge
    ``[start_deg, start_deg + missing_deg)`` (degrees, mod 360; ``start_deg`` None = the scan's
    first angle) are missing (0), the others valid. Raises when the wedge misses every view or
    covers them all."""
    arc = geom.arc_deg if geom.angles_deg is None else 360.0
    if not (np.isfinite(missing_deg) and 0.0 < missing_deg < arc):
        raise ValueError(f"the missing arc ({missing_deg:g} deg) must lie between 0 and the scan "
                         f"arc ({arc:g} deg)")
    start = float(geom.start_deg if start_deg is None else start_deg)
    if not np.isfinite(start):
        raise ValueError(f"the start of the missing arc must be a finite angle, got {start_deg}")
    mask = limited_angle_mask(geom, keep_deg=(start + missing_deg, start + 360.0 - 1e-6))
    if mask.all():
        raise ValueError(f"no view lies in the missing arc {start:g} to {start + missing_deg:g} "
                         f"deg of this scan ({arc:g} deg from {geom.start_deg:g} deg)")
    if not mask.any():
        raise ValueError(f"the missing arc of {missing_deg:g} deg covers every view of this "
                         f"scan; nothing would be measured")
    return mask


def _as_mask_array(mask, what: str = "mask") -> np.ndarray:
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.dtype == bool:
        return m.astype(np.float32)
    if not np.issubdtype(m.dtype, np.number):
        raise ValueError(f"{what} must be numeric or bool, got dtype {m.dtype}")
    m = m.astype(np.float32)
    if np.isnan(m).any():
        raise ValueError(f"{what} contains NaN")
    if not np.isin(m, (0.0, 1.0)).all():
        raise ValueError(f"{what} must contain only 0 (missing) and 1 (valid); "
                         f"found values in [{m.min()}, {m.max()}]")
    return m


def check_mask(mask, geom, require_valid: bool = False,
               require_missing: bool = False) -> np.ndarray:
    """Validate a sinogram mask and return it as float32 (..., V, D).

    ``geom`` is a geometry or the expected ``(views, detector)`` shape. Raises ValueError on
    a wrong shape, values other than 0/1 or NaN; with ``require_valid`` when nothing is valid,
    with ``require_missing`` when nothing is missing."""
    m = _as_mask_array(mask)
    expected = tuple(geom) if isinstance(geom, (tuple, list)) else geom.sino_shape
    if m.ndim < 2 or m.shape[-2:] != expected:
        raise ValueError(f"mask has shape {m.shape}, but (..., {expected[0]}, {expected[1]}) "
                         "(views, detector bins) is expected")
    if require_valid and not m.any():
        raise ValueError("mask has no valid entries (all 0): there is no measured data to use")
    if require_missing and m.all():
        raise ValueError("mask has no missing entries (all 1): there is nothing to correct")
    return m


def combine_masks(*masks) -> np.ndarray:
    """Valid only where every mask is valid (product); shapes must broadcast, e.g. a (V, D)
    mask with a (slices, V, D) stack."""
    if not masks:
        raise ValueError("combine_masks needs at least one mask")
    arrays = [_as_mask_array(m, f"mask {i}") for i, m in enumerate(masks)]
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise ValueError("masks have incompatible shapes "
                         f"{[a.shape for a in arrays]}; they must match or broadcast") from None
    out = np.ones(shape, np.float32)
    for a in arrays:
        out *= a
    return out
