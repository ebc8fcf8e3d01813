"""Simulators: truncation, metal insertion, polychromatic metal scan with streaks."""

import numpy as np
import pytest

import napari_lsr as lsr
from napari_lsr import simulate
from napari_lsr.data.phantoms import body_mask, generate_slice

PAR = lsr.ParallelBeam(image_size=64, pixel_size_mm=4.0, n_views=90, n_det=93, det_spacing_mm=4.0)


@pytest.fixture(scope="module")
def slice_hu():
    return generate_slice(5, size=64, pixel_size_mm=4.0, region="abdomen", noise_hu=0.0)


def test_truncation_case(slice_hu):
    case = simulate.simulate_truncation(slice_hu, PAR, fom_mm=120.0)
    assert case.sinogram.shape == PAR.sino_shape and np.isfinite(case.sinogram).all()
    assert np.array_equal(case.mask, lsr.masks.truncation_mask(PAR, 120.0))
    assert np.array_equal(case.sinogram[case.mask == 1], case.full_sinogram[case.mask == 1])
    assert np.all(case.sinogram[case.mask == 0] == 0)
    assert case.full_sinogram[case.mask == 0].max() > 1.0  # the body really is truncated
    assert case.fom_mm == 120.0 and case.geometry == PAR
    with pytest.raises(ValueError, match="not smaller than the body"):
        simulate.simulate_truncation(slice_hu, PAR, fom_mm=400.0)


def test_spectrum_and_tables():
    e, s = simulate.spectrum(120.0)
    assert 8 <= e.size <= 12 and abs(s.sum() - 1) < 1e-12 and np.all(s > 0)
    assert 50 < (e * s).sum() < 70  # mean energy of a filtered 120 kVp beam
    assert abs(simulate.mass_attenuation("water", 70.0) * 0.1 - 0.0192) < 5e-4  # 1/mm at 70 keV
    assert np.all(np.diff(simulate.mass_attenuation("steel", e)) < 0)
    with pytest.raises(ValueError):
        simulate.mass_attenuation("gold", 60.0)


def test_insert_metal(slice_hu):
    hu, frac = simulate.insert_metal(slice_hu, PAR, n_objects=2, seed=3)
    assert set(frac) == {"titanium", "steel"}
    total = sum(frac.values())
    assert total.max() <= 1 and total.sum() > 0
    assert not (total > 0)[~body_mask(slice_hu)].any()  # inside the body
    assert hu[total > 0.99].min() > 5000  # metal at its (extended) HU
    hu2, _ = simulate.insert_metal(slice_hu, PAR, n_objects=2, seed=3)
    assert np.array_equal(hu, hu2)
    with pytest.raises(ValueError, match="unknown metal"):
        simulate.insert_metal(slice_hu, PAR, materials=("gold",))


def test_water_precorrection_gives_correct_hu():
    """Noiseless polychromatic scan of a water disk: precorrected FBP is ~0 HU inside."""
    x, y = PAR.pixel_centres_mm()
    water = np.where(x[None] ** 2 + y[:, None] ** 2 < 90.0**2, 0.0, -1000.0).astype(np.float32)
    case = simulate.simulate_metal(water, PAR, n_objects=0, photons=None)
    inner = x[None] ** 2 + y[:, None] ** 2 < 70.0**2
    assert abs(np.median(case.uncorrected_hu[inner])) < 15
    # beam hardening: the lookup curve grows faster than linearly (cupping is undone)
    e, w = simulate.spectrum(120.0)
    mono = simulate.water_precorrection(np.array([0.5, 2.0, 4.0, 8.0]), e, w)
    assert np.all(np.diff(mono / np.array([0.5, 2.0, 4.0, 8.0])) > 0)


def test_metal_case_has_streaks(slice_hu):
    case = simulate.simulate_metal(slice_hu, PAR, n_objects=2, seed=2, photons=1e5)
    clean = simulate.simulate_metal(slice_hu, PAR, n_objects=0, seed=1, photons=1e5)
    for a in (case.sinogram, case.uncorrected_hu, case.full_sinogram):
        assert np.isfinite(a).all()
    assert case.sinogram.shape == case.mask.shape == PAR.sino_shape
    assert 0 < (case.mask == 0).mean() < 0.5
    assert np.array_equal(case.ground_truth_hu, slice_hu)
    assert case.metal_image_mask.dtype == bool and case.metal_image_mask.any()
    # the trace covers every ray through metal
    lengths = lsr.Projector(PAR).forward(sum(case.fractions.values())).numpy()
    assert not (lengths[case.mask == 1] > 0.05).any()
    region = body_mask(slice_hu) & ~case.metal_image_mask
    err_metal = np.abs(case.uncorrected_hu - slice_hu)[region].mean()
    err_clean = np.abs(clean.uncorrected_hu - slice_hu)[region].mean()
    assert err_metal > 2 * err_clean


def test_metal_stays_in_place_across_slices():
    from napari_lsr.data.phantoms import generate_volume

    vol = generate_volume(3, 2, size=64, pixel_size_mm=4.0, region="pelvis", slice_step=2.0)
    fr = [sum(simulate.insert_metal(s, PAR, n_objects=2, seed=4)[1].values()) for s in vol]
    assert np.abs(fr[0] - fr[1]).sum() < 0.2 * fr[0].sum()


def test_limited_angle_simulation_zeroes_the_missing_wedge():
    geom = lsr.ParallelBeam(image_size=32, pixel_size_mm=4.0, n_views=36, n_det=47,
                            det_spacing_mm=4.0)
    hu = lsr.data.generate_slice(2, 32, 4.0, noise_hu=0)
    c = simulate.simulate_limited_angle(hu, geom, missing_deg=60.0, start_deg=30.0)
    ang = np.rad2deg(geom.angles_rad())
    gone = (ang > 29.99) & (ang < 89.99)
    assert (c.mask[gone] == 0).all() and (c.mask[~gone] == 1).all()
    assert (c.sinogram[gone] == 0).all()
    assert np.array_equal(c.sinogram[~gone], c.full_sinogram[~gone])
    with pytest.raises(ValueError, match="missing arc"):
        simulate.simulate_limited_angle(hu, geom, missing_deg=200.0)
