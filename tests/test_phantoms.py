import numpy as np
import pytest
from scipy import ndimage

from napari_lsr.data.phantoms import REGIONS, body_mask, generate_slice, generate_volume


def test_shape_dtype_and_determinism():
    a = generate_slice(3, size=128)
    assert a.shape == (128, 128) and a.dtype == np.float32
    np.testing.assert_array_equal(a, generate_slice(3, size=128))
    assert np.abs(a - generate_slice(4, size=128)).mean() > 20.0


@pytest.mark.parametrize("region", REGIONS)
def test_body_inside_inscribed_circle_with_air_margin(region):
    for seed in range(4):
        size, px = 128, 1.5
        hu = generate_slice(seed, size=size, pixel_size_mm=px, region=region, noise_hu=0)
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        outside = np.hypot(yy, xx) > 0.47 * size
        assert hu[outside].max() < -990.0
        assert body_mask(hu).sum() > 0.1 * size * size * (0.25 if region == "head" else 1)


def test_small_field_shrinks_patient():
    hu = generate_slice(1, size=128, pixel_size_mm=1.0, region="abdomen", noise_hu=0)
    yy, xx = np.mgrid[:128, :128] - 63.5
    assert hu[np.hypot(yy, xx) > 0.47 * 128].max() < -990.0


def test_tissue_hu_plausible():
    thorax = generate_slice(0, region="thorax", noise_hu=0, table=False)
    body = body_mask(thorax)
    lung = ~(thorax > -500) & body  # air inside the body: lungs
    assert lung.sum() > 2000 and thorax[lung].mean() < -700
    soft = thorax[body & (thorax > -200) & (thorax < 200)]
    assert soft.size > 2000 and -120 < np.median(soft) < 80
    assert thorax.max() > 700  # bone
    assert thorax.min() > -1100
    head = generate_slice(0, region="head", noise_hu=0)
    brain = head[(head > 0) & (head < 60)]
    assert brain.size > 2000 and head.max() > 1000  # brain and skull
    for region in ("abdomen", "pelvis"):
        hu = generate_slice(2, region=region, noise_hu=0)
        fat = hu[(hu > -160) & (hu < -40)]
        assert fat.size > 1000 and hu.max() > 700


def test_noise_and_table_options():
    a = generate_slice(5, region="abdomen", noise_hu=0, table=False)
    b = generate_slice(5, region="abdomen", noise_hu=20, table=False)
    assert 15 < np.std(b - a) < 25
    c = generate_slice(5, region="abdomen", noise_hu=0, table=True)
    assert (np.abs(c - a) > 100).sum() > 50  # the table adds a plate outside the body
    np.testing.assert_array_equal(body_mask(a), body_mask(c))


def test_region_validation():
    with pytest.raises(ValueError, match="region"):
        generate_slice(0, region="knee")
    regions = {generate_slice(s, size=64).shape for s in range(5)}
    assert regions == {(64, 64)}


def test_volume_varies_smoothly():
    vol = generate_volume(7, 24, size=128, region="thorax", slice_step=2.0, noise_hu=0)
    assert vol.shape == (24, 128, 128) and vol.dtype == np.float32
    near = np.mean([np.abs(vol[k + 1] - vol[k]).mean() for k in range(23)])
    far = np.abs(vol[-1] - vol[0]).mean()
    assert near < 0.25 * far
    np.testing.assert_array_equal(vol, generate_volume(7, 24, size=128, region="thorax",
                                                       slice_step=2.0, noise_hu=0))


def test_body_mask():
    hu = np.full((40, 40), -1000.0, np.float32)
    hu[5:35, 5:35] = 40.0
    hu[15:25, 15:25] = -900.0  # lung-like hole: inside the body
    hu[0:2, 0:2] = 300.0  # small separate object
    m = body_mask(hu)
    assert m[20, 20] and m[6, 6] and not m[0, 0] and m.sum() == 900
    assert body_mask(np.stack([hu, hu])).shape == (2, 40, 40)
    assert not body_mask(np.full((8, 8), -1000.0)).any()


def _width_mm(hu, px=1.5):
    cols = np.nonzero(body_mask(hu).any(axis=0))[0]
    return (cols.max() - cols.min() + 1) * px


def test_body_sizes_range_from_child_to_large_adult():
    widths = [_width_mm(generate_slice(s, region="abdomen", noise_hu=0, table=False))
              for s in range(40)]
    assert min(widths) < 230 and max(widths) > 300  # children and adults in 40 patients


def test_fit_false_lets_large_trunks_leave_the_field():
    size = 128
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    edge = np.hypot(yy, xx) > 0.49 * size
    left = [generate_slice(s, size=size, region="thorax", noise_hu=0, fit=False)[edge].max() > 0
            for s in range(6)]
    assert any(left)
    for s in range(6):  # the default keeps every body inside
        assert generate_slice(s, size=size, region="thorax", noise_hu=0)[edge].max() < -990


def test_contrast_and_arms_appear_in_some_patients():
    bright_vessels, arms = 0, 0
    for s in range(30):
        hu = generate_slice(s, region="abdomen", noise_hu=0, table=False)
        _, n = ndimage.label(hu > -500)
        arms += n >= 3  # trunk plus two separate arms
        body = body_mask(hu)
        bright_vessels += ((hu > 150) & (hu < 400) & body).sum() > 100
    assert 3 <= arms <= 20 and bright_vessels >= 5


def test_correlated_noise_has_the_requested_std_and_grain():
    a = generate_slice(5, region="abdomen", noise_hu=0, table=False)
    b = generate_slice(5, region="abdomen", noise_hu=15, table=False)
    n = b - a
    assert 13 < n.std() < 17
    lag1 = np.corrcoef(n[:, :-1].ravel(), n[:, 1:].ravel())[0, 1]
    assert 0.2 < lag1 < 0.9  # correlated between neighbours, not white
