"""Baselines: LI-MAR, NMAR and water-cylinder detruncation beat the uncorrected data and keep
the measured data bit for bit."""

import numpy as np
import pytest

import napari_lsr as lsr
from napari_lsr import baselines, simulate
from napari_lsr.data.phantoms import body_mask, generate_slice
from napari_lsr.masks import fom_image_mask, truncation_mask

PAR = lsr.ParallelBeam(image_size=64, pixel_size_mm=4.0, n_views=90, n_det=93, det_spacing_mm=4.0)
FAN = lsr.FanBeam(image_size=64, pixel_size_mm=4.0, n_views=90, n_det=128, det_spacing_mm=6.0,
                  sid_mm=500.0, sdd_mm=1000.0)


@pytest.fixture(scope="module")
def slice_hu():
    return generate_slice(5, size=64, pixel_size_mm=4.0, region="abdomen", noise_hu=0.0)


@pytest.fixture(scope="module")
def metal_case(slice_hu):
    return simulate.simulate_metal(slice_hu, PAR, n_objects=2, seed=2, photons=1e5)  # steel hip


def assert_measured_kept(out, sino, mask):
    valid = np.broadcast_to(np.asarray(mask) == 1, out.shape)
    assert out.shape == sino.shape and out.dtype == sino.dtype
    assert np.array_equal(out[valid], np.asarray(sino)[valid])
    assert np.isfinite(out).all()


def test_li_interpolates_linearly_and_batches():
    sino = np.tile(np.arange(10, dtype=np.float32) * 2.0, (3, 4, 1))  # (3, 4, 10) ramps
    sino[..., 3:6] = 99.0  # corrupt
    mask = np.ones((4, 10), np.float32)
    mask[:, 3:6] = 0
    mask[1, 0:2] = 0  # a run at the edge: constant extension
    out = baselines.li_mar(sino, mask)
    assert_measured_kept(out, sino, mask)
    assert np.allclose(out[:, 0], np.arange(10) * 2.0)
    assert np.allclose(out[:, 1, :2], 4.0)


def test_metal_baselines_beat_uncorrected(metal_case, slice_hu):
    c = metal_case
    region = body_mask(slice_hu) & ~c.metal_image_mask
    li = baselines.li_mar(c.sinogram, c.mask)
    nm = baselines.nmar(c.sinogram, c.mask, PAR)
    for out in (li, nm):
        assert_measured_kept(out, c.sinogram, c.mask)
    err = {name: np.abs(img - slice_hu)[region].mean() for name, img in [
        ("unc", c.uncorrected_hu), ("li", baselines.reconstruct_hu(li, PAR)),
        ("nmar", baselines.reconstruct_hu(nm, PAR))]}
    assert err["li"] < 0.9 * err["unc"] and err["nmar"] < 0.7 * err["unc"], err


def test_nmar_batched(metal_case):
    c = metal_case
    stack = np.stack([c.sinogram, c.sinogram])
    out = baselines.nmar(stack, c.mask, PAR)
    assert_measured_kept(out, stack, c.mask)
    assert np.allclose(out[0], baselines.nmar(c.sinogram, c.mask, PAR), atol=1e-5)


@pytest.mark.parametrize("geom", [PAR, FAN], ids=["parallel", "fan"])
def test_detruncate_beats_zero_filling(geom, slice_hu):
    case = simulate.simulate_truncation(slice_hu, geom, fom_mm=140.0)
    out = baselines.detruncate(case.sinogram, case.mask, geom)
    assert_measured_kept(out, case.sinogram, case.mask)
    fom = fom_image_mask(geom, 140.0)
    err_unc = np.abs(baselines.reconstruct_hu(case.sinogram, geom) - slice_hu)[fom].mean()
    err_ext = np.abs(baselines.reconstruct_hu(out, geom) - slice_hu)[fom].mean()
    assert err_ext < 0.5 * err_unc, (err_ext, err_unc)
    missing = case.mask == 0
    assert (np.abs(out - case.full_sinogram)[missing].mean()
            < np.abs(case.sinogram - case.full_sinogram)[missing].mean())


def test_detruncate_recovers_a_water_cylinder():
    x, y = PAR.pixel_centres_mm()
    r = np.hypot(x[None] - 10.0, y[:, None])
    cyl = np.clip(90.0 - r + 2.0, 0.0, 4.0) / 4.0  # water cylinder (radius 90 mm), soft edge
    full = lsr.Projector(PAR).forward(lsr.hu_to_mu(cyl * 1000.0 - 1000.0).astype(np.float32)).numpy()
    mask = truncation_mask(PAR, 120.0)
    out = baselines.detruncate(full * mask, mask, PAR)
    missing = mask == 0
    assert np.abs(out - full)[missing].mean() < 0.1 * full[missing].mean()


def test_bad_input():
    mask = np.ones(PAR.sino_shape, np.float32)
    mask[:, :5] = 0
    sino = np.zeros(PAR.sino_shape, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        baselines.li_mar(np.full_like(sino, np.nan), mask)
    with pytest.raises(ValueError, match="mask"):
        baselines.li_mar(sino, mask[:, :-1])
    with pytest.raises(ValueError, match="geometry expects"):
        baselines.detruncate(sino[:, :-1], mask[:, :-1], PAR)
    with pytest.raises(ValueError, match="only 0"):
        baselines.nmar(sino, mask * 0.5, PAR)
    with pytest.raises(ValueError, match="no valid"):
        baselines.li_mar(sino, np.zeros_like(mask))
    assert np.array_equal(baselines.detruncate(sino + 1, np.ones_like(mask), PAR), sino + 1)


def test_nmar_prior_from_a_given_image(metal_case, slice_hu):
    """nmar(image_hu=...) classifies its prior from that image: the clean slice gives a
    better correction than the LI image's streaky one."""
    c = metal_case
    region = body_mask(slice_hu) & ~c.metal_image_mask
    own = baselines.reconstruct_hu(baselines.nmar(c.sinogram, c.mask, PAR), PAR)
    oracle = baselines.nmar(c.sinogram, c.mask, PAR, image_hu=slice_hu)
    assert_measured_kept(oracle, c.sinogram, c.mask)
    err = lambda img: np.abs(img - slice_hu)[region].mean()  # noqa: E731
    assert err(baselines.reconstruct_hu(oracle, PAR)) < err(own)
