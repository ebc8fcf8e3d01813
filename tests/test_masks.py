"""Masks: truncation geometry (parallel and fan), metal traces, limited angle, combining,
validation."""

import numpy as np
import pytest

import napari_lsr as lsr
from napari_lsr import masks

PAR = lsr.ParallelBeam(image_size=64, pixel_size_mm=4.0, n_views=90, n_det=93, det_spacing_mm=4.0)
FAN = lsr.FanBeam(image_size=64, pixel_size_mm=4.0, n_views=90, n_det=128, det_spacing_mm=6.0,
                  sid_mm=500.0, sdd_mm=1000.0)


def disk(geom, radius_mm, centre_mm=(0.0, 0.0)):
    x, y = geom.pixel_centres_mm()
    return (x[None, :] - centre_mm[0]) ** 2 + (y[:, None] - centre_mm[1]) ** 2 <= radius_mm**2


def test_truncation_mask_parallel():
    m = masks.truncation_mask(PAR, fom_mm=100.0)
    assert m.shape == PAR.sino_shape and m.dtype == np.float32
    expected = (np.abs(PAR.ray_offsets_mm()) <= 50.0).astype(np.float32)
    assert np.array_equal(m, np.broadcast_to(expected, m.shape))
    assert 0 < m.mean() < 1


@pytest.mark.parametrize("geom", [PAR, FAN], ids=["parallel", "fan"])
def test_truncation_mask_matches_fom_disk(geom):
    """Rays through a disk inside the FOM are all valid; a disk beyond it hits invalid rays."""
    m = masks.truncation_mask(geom, fom_mm=120.0)
    P = lsr.Projector(geom)
    inner = P.forward(disk(geom, 50.0).astype(np.float32)).numpy()
    outer = P.forward(disk(geom, 70.0).astype(np.float32)).numpy()
    assert not (inner[m == 0] > 1e-3).any()
    assert (outer[m == 0] > 1e-3).any()
    fom = masks.fom_image_mask(geom, 120.0)
    assert fom.dtype == bool
    assert abs(fom.sum() * geom.pixel_size_mm**2 / (np.pi * 60.0**2) - 1) < 0.05


def test_fan_truncation_uses_ray_distance():
    m = masks.truncation_mask(FAN, fom_mm=150.0)
    dist = FAN.sid_mm * np.abs(np.sin(FAN.fan_angles_rad()))
    assert np.array_equal(m[7] > 0, dist <= 75.0)


def test_metal_disk_gives_sinusoidal_trace():
    x0, y0, r = 60.0, -40.0, 8.0
    hu = np.where(disk(PAR, r, (x0, y0)), 3000.0, 0.0).astype(np.float32)
    metal, m = masks.metal_masks(hu, PAR, threshold_hu=2500.0, dilation_px=0, dilation_bins=0)
    assert metal.dtype == bool and np.array_equal(metal, hu > 2500)
    assert m.shape == PAR.sino_shape and set(np.unique(m)) == {0.0, 1.0}
    s = PAR.ray_offsets_mm()
    theta = PAR.angles_rad()
    for v in range(PAR.n_views):
        bad = s[m[v] == 0]
        assert bad.size > 0 and np.all(np.diff(np.flatnonzero(m[v] == 0)) == 1)  # one run
        centre = (bad.min() + bad.max()) / 2
        assert abs(centre - (x0 * np.cos(theta[v]) + y0 * np.sin(theta[v]))) <= 0.5 * PAR.det_spacing_mm
        assert bad.max() - bad.min() <= 2 * r + 2 * PAR.pixel_size_mm + PAR.det_spacing_mm
    # dilation widens the trace on both sides
    _, wide = masks.metal_masks(hu, PAR, dilation_px=1, dilation_bins=1)
    assert np.all(wide <= m) and (1 - wide).sum() > (1 - m).sum()


def test_labels_and_batched_trace():
    labels = np.zeros(PAR.image_shape, np.int32)
    labels[10:13, 40:44] = 2
    m = masks.labels_to_sinogram_mask(labels, PAR)
    assert np.array_equal(m, masks.metal_trace_mask(labels > 0, PAR))
    stack = masks.metal_trace_mask(np.stack([labels > 0, np.zeros_like(labels, bool)]), PAR)
    assert stack.shape == (2, *PAR.sino_shape) and stack[1].min() == 1 and stack[0].min() == 0
    with pytest.raises(ValueError, match="label image"):
        masks.labels_to_sinogram_mask(labels[:-1], PAR)


def test_limited_angle_mask():
    m = masks.limited_angle_mask(PAR, keep_deg=(0.0, 120.0))  # views every 2 deg over 180
    keep = np.arange(90) * 2.0 <= 120.0
    assert np.array_equal(m[:, 0] > 0, keep) and np.all(m == m[:, :1])
    geom360 = FAN.replace(n_views=36)  # every 10 deg over 360
    wrap = masks.limited_angle_mask(geom360, keep_deg=(-30.0, 30.0))
    ang = np.arange(36) * 10.0
    assert np.array_equal(wrap[:, 0] > 0, (ang <= 30) | (ang >= 330))
    two = masks.limited_angle_mask(geom360, keep_deg=[(0, 50), (180, 230)])
    assert two[:, 0].sum() == 12
    with pytest.raises(ValueError):
        masks.limited_angle_mask(PAR, keep_deg=(100.0, 50.0))


def test_combine_masks():
    a = masks.truncation_mask(PAR, 150.0)
    b = masks.limited_angle_mask(PAR, (0.0, 90.0))
    c = masks.combine_masks(a, b)
    assert np.array_equal(c, a * b) and c.dtype == np.float32
    stack = masks.combine_masks(np.stack([a, np.ones_like(a)]), b)
    assert stack.shape == (2, *PAR.sino_shape) and np.array_equal(stack[1], b)
    with pytest.raises(ValueError, match="incompatible"):
        masks.combine_masks(a, a[:, :10])
    with pytest.raises(ValueError):
        masks.combine_masks()


def test_check_mask_errors():
    good = masks.truncation_mask(PAR, 150.0)
    assert masks.check_mask(good > 0, PAR).dtype == np.float32
    with pytest.raises(ValueError, match=r"\(\.\.\., 90, 93\)"):
        masks.check_mask(good.T, PAR)
    with pytest.raises(ValueError, match="only 0"):
        masks.check_mask(good * 0.5, PAR)
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        masks.check_mask(bad, PAR)
    with pytest.raises(ValueError, match="no valid"):
        masks.check_mask(np.zeros_like(good), PAR, require_valid=True)
    with pytest.raises(ValueError, match="no missing"):
        masks.check_mask(np.ones_like(good), PAR, require_missing=True)
    with pytest.raises(ValueError, match="fom_mm"):
        masks.truncation_mask(PAR, fom_mm=-1.0)
