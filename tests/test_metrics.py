"""Metrics on known inputs."""

import numpy as np
import pytest

import napari_lsr as lsr
from napari_lsr import metrics
from napari_lsr.masks import fom_image_mask

PAR = lsr.ParallelBeam(image_size=64, pixel_size_mm=4.0, n_views=90, n_det=93, det_spacing_mm=4.0)


def test_mae_and_region():
    gt = np.zeros((4, 4))
    pred = gt.copy()
    pred[0, :] = 40.0
    assert metrics.mae_hu(pred, gt) == pytest.approx(10.0)
    region = np.zeros((4, 4), bool)
    region[0, :2] = True
    region[1, :2] = True
    assert metrics.mae_hu(pred, gt, region) == pytest.approx(20.0)
    stack = np.stack([pred, gt])
    assert metrics.mae_hu(stack, np.zeros_like(stack), region) == pytest.approx(10.0)


def test_sinogram_mae_on_missing_part():
    gt = np.zeros((3, 5))
    pred = np.ones((3, 5))
    pred[:, 0] = 7.0
    mask = np.ones((3, 5))
    mask[:, 0] = 0
    assert metrics.sinogram_mae(pred, gt, mask) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="empty"):
        metrics.sinogram_mae(pred, gt, np.ones((3, 5)))


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1000, 1000, (32, 32))
    pred = gt + 10.0
    assert metrics.psnr(pred, gt, data_range=2000.0) == pytest.approx(20 * np.log10(200.0))
    assert metrics.psnr(gt, gt, 2000.0) == float("inf")
    assert metrics.ssim(gt, gt, 2000.0) == pytest.approx(1.0)
    noisy = gt + rng.normal(0, 300, gt.shape)
    assert metrics.ssim(noisy, gt, 2000.0) < metrics.ssim(pred, gt, 2000.0) < 1.0
    stack = np.stack([gt, noisy])
    assert metrics.ssim(stack, np.stack([gt, gt]), 2000.0) == pytest.approx(
        (1.0 + metrics.ssim(noisy, gt, 2000.0)) / 2)


def test_truncation_and_metal_errors():
    gt = np.full(PAR.image_shape, -1000.0)
    gt[8:56, 4:60] = 0.0  # a body wider than the FOM
    pred = gt.copy()
    fom = fom_image_mask(PAR, 100.0)
    pred[fom] += 5.0
    pred[~fom] += 100.0
    e = metrics.truncation_errors(pred, gt, PAR, fom_mm=100.0)
    assert e["inside_fom"] == pytest.approx(5.0) and e["outside_fom"] == pytest.approx(100.0)
    assert 5.0 < e["body"] < 100.0
    metal = np.zeros(PAR.image_shape, bool)
    metal[30:34, 30:34] = True
    pred2 = gt.copy()
    pred2[metal] = 3000.0
    pred2[gt == 0] += 1.0
    m = metrics.metal_errors(pred2, gt, metal)
    assert m["outside_metal"] == pytest.approx(1.0) and m["body"] > 1.0


def test_bad_input():
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="shape"):
        metrics.mae_hu(a, np.zeros((8, 9)))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.psnr(bad, a, 1.0)
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(a, a + 1, 0.0)
    with pytest.raises(ValueError, match="empty"):
        metrics.mae_hu(a, a, np.zeros((8, 8), bool))
