"""Head phantom (napari_lsr.data.phantom_head): anatomy by level, size, fit and smoothness."""

import numpy as np
import pytest
from scipy import ndimage

from napari_lsr.data import phantom_head
from napari_lsr.data.phantoms import body_mask, generate_slice, generate_volume

SEEDS = range(6)
LO, HI = phantom_head.Z_RANGE


def _levels(seed, zs, size=128, px=1.5):
    """Noise-free slices of one patient at table positions zs (one volume, shared pose)."""
    zs = np.asarray(zs, float)
    step = np.diff(zs)
    assert np.allclose(step, step[0]) and zs[0] == LO and zs[-1] == HI
    return generate_volume(seed, len(zs), size=size, pixel_size_mm=px, region="head",
                           slice_step=float(step[0]), table=False, noise_hu=0)


def _cranial_cavity(hu):
    """Pixels enclosed by the skull (bone > 300 HU), without the bone itself."""
    bone = hu > 300
    return ndimage.binary_fill_holes(bone) & ~bone


def test_z_range_from_skull_base_to_vertex():
    assert LO == 0.0 and HI >= 170.0


def test_deterministic_per_seed_and_different_between_seeds():
    a = generate_slice(11, size=96, region="head")
    np.testing.assert_array_equal(a, generate_slice(11, size=96, region="head"))
    b = generate_slice(12, size=96, region="head")
    assert np.abs(a - b).mean() > 20.0
    v = generate_volume(3, 3, size=64, region="head", slice_step=5.0)
    np.testing.assert_array_equal(v, generate_volume(3, 3, size=64, region="head",
                                                     slice_step=5.0))


@pytest.mark.parametrize("seed", SEEDS)
def test_skull_everywhere_and_head_inside_the_field(seed):
    size = 128
    vol = _levels(seed, np.linspace(LO, HI, 7), size=size)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    outside = np.hypot(yy, xx) > 0.47 * size
    for hu in vol:
        assert hu.max() > 1000.0  # skull (vault, skull base or a tangential cut near the top)
        assert hu[outside].max() < -990.0  # face, nose and ears stay inside the field
        assert hu.min() > -1050.0


@pytest.mark.parametrize("seed", SEEDS)
def test_skull_base_has_air_spaces_and_dense_petrous_bone(seed):
    # z = 36 mm is at the level of the sphenoid sinus / petrous bones for every patient
    hu = _levels(seed, np.linspace(LO, HI, 6), size=160)[1]
    body = body_mask(hu)
    assert (body & (hu < -500)).sum() > 20  # sinuses, nasal cavity, ear canals, mastoids
    # very dense bone well inside the head (not the vault at its rim): petrous bones
    core = ndimage.binary_erosion(body, iterations=12)
    assert hu[core].max() > 1400.0


@pytest.mark.parametrize("seed", SEEDS)
def test_mid_levels_brain_dominates_with_some_csf_and_no_inner_bone(seed):
    hu = _levels(seed, np.linspace(LO, HI, 5), size=160)[2]  # z = 90 mm: ventricles
    cav = _cranial_cavity(hu)
    assert cav.sum() > 2000
    v = hu[cav]
    brain = np.mean((v > 15) & (v < 50))
    csf = np.mean((v > -10) & (v <= 15))
    assert brain > 0.7
    assert 0.02 < csf < 0.3
    body = body_mask(hu)
    core = ndimage.binary_erosion(body, iterations=25)
    assert hu[core].max() < 700  # no skull base here (calcifications are small)


def test_levels_differ_base_brain_vertex():
    for seed in (0, 1):
        vol = _levels(seed, np.linspace(LO, HI, 7), size=160)
        areas = body_mask(vol).sum((1, 2))
        assert areas[-1] < 0.8 * areas[3]  # the section shrinks towards the vertex
        low_air = [(body_mask(h) & (h < -500)).sum() for h in vol]
        assert max(low_air[:2]) > 20 and low_air[-1] == 0  # air spaces only at the base


def test_head_sizes_vary_between_patients():
    widths, lengths = [], []
    for seed in range(10):
        hu = _levels(seed, np.linspace(LO, HI, 4), size=128, px=3.0)[2]  # z = 120 mm
        m = body_mask(hu)
        widths.append(m.any(0).sum() * 3.0)
        lengths.append(m.any(1).sum() * 3.0)
    widths, lengths = np.array(widths), np.array(lengths)
    assert 100 < widths.min() and widths.max() < 180
    assert widths.max() - widths.min() > 15
    assert np.all(lengths > widths)


def test_volume_varies_smoothly():
    vol = generate_volume(7, 24, size=96, region="head", slice_step=2.0, table=False,
                          noise_hu=0)
    near = np.mean([np.abs(vol[k + 1] - vol[k]).mean() for k in range(23)])
    far = np.abs(vol[-1] - vol[0]).mean()
    assert near < 0.25 * far
    # the head outline changes little from slice to slice
    area = body_mask(vol).sum((1, 2)).astype(float)
    assert np.abs(np.diff(area)).max() < 0.05 * area.mean()
