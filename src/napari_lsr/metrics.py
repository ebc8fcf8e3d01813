"""Image and sinogram error metrics for missing-data CT (images in HU).

All functions take NumPy arrays (or CPU tensors) of identical shape, ``(H, W)`` or with
leading batch dims, and raise ValueError on a shape mismatch or non-finite values.
"""

from __future__ import annotations

import numpy as np

from .geometry import Geometry

__all__ = ["mae_hu", "sinogram_mae", "psnr", "ssim", "truncation_errors", "metal_errors"]


def _pair(pred, gt):
    pred = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred, dtype=np.float64)
    gt = np.asarray(gt.detach().cpu() if hasattr(gt, "detach") else gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has shape {pred.shape} but ground truth {gt.shape}")
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return pred, gt


def _region(region, shape, what="region", nonempty=True):
    r = np.asarray(region, dtype=bool)
    if r.ndim < 2:
        raise ValueError(f"{what} must be an image mask (..., H, W), got shape {r.shape}")
    try:
        r = np.broadcast_to(r, shape)
    except ValueError:
        raise ValueError(f"{what} of shape {r.shape} does not match the images {shape}") from None
    if nonempty and not r.any():
        raise ValueError(f"{what} is empty")
    return r


def mae_hu(pred, gt, region=None) -> float:
    """Mean absolute error (HU) over all pixels, or over the bool ``region`` (broadcast)."""
    pred, gt = _pair(pred, gt)
    err = np.abs(pred - gt)
    return float(err.mean() if region is None else err[_region(region, err.shape)].mean())


def sinogram_mae(pred, gt, mask) -> float:
    """Mean absolute error of line integrals on the missing part (``mask == 0``)."""
    pred, gt = _pair(pred, gt)
    return float(np.abs(pred - gt)[_region(np.asarray(mask) == 0, pred.shape, "missing part "
                                                                              "(mask == 0)")].mean())


def psnr(pred, gt, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` (inf if equal)."""
    pred, gt = _pair(pred, gt)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = float(np.mean((pred - gt) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(pred, gt, data_range: float) -> float:
    """Structural similarity (scikit-image, Gaussian 11x11 window as Wang et al. 2004) of 2D
    images, averaged over leading dims."""
    from skimage.metrics import structural_similarity

    pred, gt = _pair(pred, gt)
    if pred.ndim < 2 or min(pred.shape[-2:]) < 11:
        raise ValueError(f"ssim needs images of at least 11x11 pixels, got {pred.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    p2, g2 = pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])
    return float(np.mean([
        structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for a, b in zip(p2, g2)]))


def _body(gt, body):
    from .data.phantoms import body_mask

    return body_mask(gt) if body is None else np.asarray(body, bool)


def truncation_errors(pred_hu, gt_hu, geom: Geometry, fom_mm: float, body=None) -> dict:
    """MAE (HU) ``inside_fom`` (the field-of-measurement disk), ``outside_fom`` (body pixels
    outside it) and over the whole ``body``; ``body`` defaults to the body of ``gt_hu``."""
    from .masks import fom_image_mask

    pred, gt = _pair(pred_hu, gt_hu)
    geom.check_image_shape(gt.shape)
    fom = np.broadcast_to(fom_image_mask(geom, fom_mm), gt.shape)
    body = _region(_body(gt, body), gt.shape, "body mask")
    return {"inside_fom": mae_hu(pred, gt, fom),
            "outside_fom": mae_hu(pred, gt, _region(body & ~fom, gt.shape,
                                                    "body outside the FOM")),
            "body": mae_hu(pred, gt, body)}


def metal_errors(pred_hu, gt_hu, metal_mask, body=None) -> dict:
    """MAE (HU) ``outside_metal`` (body pixels not marked by the bool ``metal_mask``) and
    ``body`` (all body pixels); ``body`` defaults to the body of ``gt_hu``."""
    pred, gt = _pair(pred_hu, gt_hu)
    body = _region(_body(gt, body), gt.shape, "body mask")
    metal = _region(metal_mask, gt.shape, "metal mask", nonempty=False)
    return {"outside_metal": mae_hu(pred, gt, _region(body & ~metal, gt.shape,
                                                      "body outside the metal")),
            "body": mae_hu(pred, gt, body)}
