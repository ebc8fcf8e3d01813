"""Classical missing-data corrections: LI-MAR, NMAR and water-cylinder detruncation.

Every function takes a sinogram ``(..., V, D)`` of line integrals and a validity mask
(1 = valid, broadcastable to the sinogram) and returns a NumPy sinogram of the same shape and
dtype in which the measured entries (mask 1) are copied bit for bit; only mask-0 entries are
filled in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import Geometry
from .masks import check_mask, ray_distance_mm
from .projector import DEFAULT_FILTER
from .units import hu_to_mu, mu_to_hu, scan_mu_water

__all__ = ["li_mar", "nmar", "detruncate", "reconstruct_hu", "interpolate_views"]


def _prepare(sino, mask, geom: Geometry | None = None):
    """NumPy copies: sinogram (float) and a bool ``valid`` array of the sinogram's shape."""
    if hasattr(sino, "detach"):
        sino = sino.detach().cpu().numpy()
    sino = np.array(sino, copy=True)
    if not np.issubdtype(sino.dtype, np.floating):
        sino = sino.astype(np.float32)
    if sino.ndim < 2:
        raise ValueError(f"sinogram must be (..., views, detector), got shape {sino.shape}")
    if not np.isfinite(sino).all():
        raise ValueError("sinogram contains NaN or infinite values")
    if geom is not None:
        geom.check_sinogram_shape(sino.shape)
    m = check_mask(mask, sino.shape[-2:], require_valid=True)
    try:
        valid = np.broadcast_to(m > 0.5, sino.shape)
    except ValueError:
        raise ValueError(f"mask of shape {m.shape} does not match the sinogram "
                         f"{sino.shape}") from None
    return sino, valid


def interpolate_views(sino: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per view (last axis), fill every invalid run by linear interpolation between its
    nearest valid neighbours (constant beyond the outermost valid bin; a view with no valid
    bin becomes 0). Returns a new array; valid entries are copied exactly."""
    out = np.array(sino, copy=True)
    flat, ok = out.reshape(-1, out.shape[-1]), valid.reshape(-1, out.shape[-1])
    bins = np.arange(out.shape[-1])
    for r in np.flatnonzero(~ok.all(axis=1)):
        keep = ok[r]
        flat[r, ~keep] = np.interp(bins[~keep], bins[keep], flat[r, keep]) if keep.any() else 0
    return out


def li_mar(sino, mask, geom: Geometry | None = None) -> np.ndarray:
    """Linear-interpolation MAR: each view is interpolated across its invalid runs.
    ``geom`` (optional, as for :func:`nmar`) checks the sinogram's shape."""
    sino, valid = _prepare(sino, mask, geom)
    return interpolate_views(sino, valid)


def reconstruct_hu(sino, geom: Geometry, filter: str = DEFAULT_FILTER,
                   mu_water: float | None = None) -> np.ndarray:
    """FBP of a sinogram ``(..., V, D)`` to an HU image ``(..., H, W)`` (NumPy);
    ``mu_water`` (1/mm) defaults to the scan's (``geom.mu_water_per_mm``)."""
    from .projector import Projector

    return mu_to_hu(Projector(geom).fbp(np.asarray(sino, dtype=np.float32), filter).numpy(),
                    scan_mu_water(geom, mu_water))


def nmar(sino, mask, geom: Geometry, air_threshold_hu: float = -500.0,
         bone_threshold_hu: float = 350.0, smooth_px: float = 1.0, eps: float = 0.1,
         mu_water: float | None = None, image_hu=None) -> np.ndarray:
    """Normalised MAR (Meyer et al., Med. Phys. 37(10):5482, 2010).

    LI -> FBP -> smooth (Gaussian, ``smooth_px``) -> prior image: air (below
    ``air_threshold_hu``) -1000 HU, soft tissue 0 HU, bone (above ``bone_threshold_hu``)
    kept -> forward projection -> the sinogram is divided by ``prior + eps``, interpolated
    across the trace in that normalised domain and multiplied back. ``eps`` (a line
    integral, ~5 mm of water) keeps rays that graze the body edge from blowing up.
    ``image_hu``: the image the prior is classified from (default: the FBP of the LI
    sinogram), e.g. an LSR result, whose metal streaks are already gone."""
    from .projector import Projector

    mu_water = scan_mu_water(geom, mu_water)
    sino, valid = _prepare(sino, mask, geom)
    li = interpolate_views(sino, valid)
    base = reconstruct_hu(li, geom, mu_water=mu_water) if image_hu is None else np.asarray(image_hu)
    img = ndimage.gaussian_filter(base, sigma=[0] * (li.ndim - 2) + [smooth_px] * 2)
    prior_hu = np.where(img < air_threshold_hu, -1000.0,
                        np.where(img > bone_threshold_hu, img, 0.0))
    prior = Projector(geom).forward(hu_to_mu(prior_hu, mu_water).astype(np.float32)).numpy()
    norm = np.maximum(prior, 0.0) + eps
    filled = interpolate_views(sino / norm, valid) * norm
    out = sino.copy()
    out[~valid] = filled[~valid]
    return out


def _edge_fit(u, p, mu, n_fit):
    """Water cylinder fitted to the ``n_fit`` valid samples nearest the edge.

    ``u``: outward coordinate in mm (0 at the edge bin, negative inwards), ``p``: line
    integrals there. A cylinder of radius R centred at ``c`` has chords ``p = 2 mu
    sqrt(R^2 - (u - c)^2)``, so ``(p / 2mu)^2 + u^2 = R^2 - c^2 + 2 c u`` is linear in ``u``:
    a straight-line fit gives the centre. Returns (distance d > 0 of the edge beyond the
    centre, radius through the measured edge value) or None when degenerate."""
    if len(u) < 2:
        return None
    q = (p[:n_fit] / (2 * mu)) ** 2 + u[:n_fit] ** 2
    d = -np.polyfit(u[:n_fit], q, 1)[0] / 2
    if not np.isfinite(d) or d <= 0:
        return None
    return d, np.hypot(d, p[0] / (2 * mu))


def _extrapolate_side(dist, p_edge, fit, mu):
    """Values at outward distances ``dist`` (mm, > 0) beyond an edge of value ``p_edge``."""
    if fit is not None:
        d, radius = fit
        return 2 * mu * np.sqrt(np.clip(radius**2 - (d + dist) ** 2, 0.0, None))
    width = p_edge / (2 * mu)  # water half-thickness matching the edge value
    return p_edge * np.cos(np.pi / 2 * np.clip(dist / max(width, 1e-6), 0.0, 1.0))


def detruncate(sino, mask, geom: Geometry, mu_water: float | None = None,
               n_fit: int = 5) -> np.ndarray:
    """Truncation extrapolation with water cylinders, in the spirit of Hsieh et al.,
    Med. Phys. 31(9):2385 (2004).

    Per view, beyond the first and last valid bin a water cylinder (attenuation ``mu_water``
    1/mm) is fitted to the edge value and the slope of the last ``n_fit`` valid bins and its
    chord lengths are used; a degenerate fit (flat or outward-rising edge) falls back to a
    cosine roll-off to zero over the matching water half-thickness. The ray coordinate is
    the distance from the isocentre (parallel ``s``; fan ``sid * sin(gamma)``) in mm.
    Invalid runs between valid bins are linearly interpolated. ``mu_water`` defaults to the
    scan's (``geom.mu_water_per_mm``)."""
    mu_water = scan_mu_water(geom, mu_water)
    sino, valid = _prepare(sino, mask, geom)
    out = interpolate_views(sino, valid)  # interior gaps; outer parts are overwritten below
    t = ray_distance_mm(geom)
    bins = np.arange(geom.n_det)
    flat, ok = out.reshape(-1, geom.n_det), valid.reshape(-1, geom.n_det)
    for r in np.flatnonzero(~ok.all(axis=1)):
        idx = np.flatnonzero(ok[r])
        if idx.size == 0:
            continue
        # (edge bin, bins beyond it, valid bins from the edge inwards) for both sides
        for edge, outward, inner in ((idx[0], bins[:idx[0]], idx),
                                     (idx[-1], bins[idx[-1] + 1:], idx[::-1])):
            p_edge = float(flat[r, edge])
            if outward.size == 0 or p_edge <= 0:
                flat[r, outward] = 0.0
                continue
            fit = _edge_fit(-np.abs(t[inner] - t[edge]), flat[r, inner], mu_water, n_fit)
            flat[r, outward] = _extrapolate_side(np.abs(t[outward] - t[edge]), p_edge, fit,
                                                 mu_water)
    return flat.reshape(out.shape)
