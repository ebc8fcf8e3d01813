import math

import numpy as np
import pytest

import napari_lsr as lsr
from napari_lsr.geometry import geometry_from_dict, geometry_from_json


@pytest.mark.parametrize("geom", [
    lsr.ParallelBeam(image_size=64, pixel_size_mm=2.0, n_views=90, n_det=95, det_spacing_mm=2.0),
    lsr.FanBeam(image_size=64, pixel_size_mm=2.0, n_views=120, n_det=170, det_spacing_mm=2.0,
                sid_mm=500.0, sdd_mm=900.0),
    lsr.ParallelBeam(image_size=32, n_det=47, angles_deg=(0.0, 10.0, 25.0), det_offset_mm=0.5),
])
def test_json_round_trip(geom):
    again = geometry_from_json(geom.to_json())
    assert again == geom
    assert type(again) is type(geom)
    np.testing.assert_array_equal(again.angles_rad(), geom.angles_rad())


def test_angles_arc_and_explicit_list():
    g = lsr.ParallelBeam(image_size=32, n_det=47, n_views=4, arc_deg=180.0)
    np.testing.assert_allclose(np.rad2deg(g.angles_rad()), [0, 45, 90, 135])
    limited = lsr.ParallelBeam(image_size=32, n_det=47, angles_deg=[0, 30, 60])
    assert limited.n_views == 3 and limited.sino_shape == (3, 47)


def test_fan_angles_cover_image():
    g = lsr.FanBeam(image_size=64, pixel_size_mm=2.0, n_views=10, n_det=170, det_spacing_mm=2.0,
                    sid_mm=500.0, sdd_mm=900.0)
    gam = g.fan_angles_rad()
    need = math.asin(64 * 2.0 / math.sqrt(2) / 500.0)
    assert gam[0] <= -need and gam[-1] >= need
    np.testing.assert_allclose(np.diff(gam), 2.0 / 900.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=0), "image_size"),
    (dict(pixel_size_mm=-1.0), "pixel_size_mm"),
    (dict(n_views=0), "n_views"),
    (dict(n_det=10), "does not cover"),
    (dict(det_spacing_mm=float("nan")), "det_spacing_mm"),
    (dict(arc_deg=400.0), "arc_deg"),
    (dict(angles_deg=()), "angles_deg"),
])
def test_parallel_validation(kwargs, match):
    base = dict(image_size=64, pixel_size_mm=1.0, n_views=90, n_det=95, det_spacing_mm=1.0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        lsr.ParallelBeam(**base)


def test_fan_validation():
    with pytest.raises(ValueError, match="sdd_mm"):
        lsr.FanBeam(image_size=64, n_det=200, sid_mm=500.0, sdd_mm=400.0)
    with pytest.raises(ValueError, match="does not cover"):
        lsr.FanBeam(image_size=64, n_det=20, sid_mm=500.0, sdd_mm=900.0)
    with pytest.raises(ValueError, match="reaches the source"):
        lsr.FanBeam(image_size=512, pixel_size_mm=2.0, n_det=2000, sid_mm=300.0, sdd_mm=600.0)


def test_bad_dicts():
    with pytest.raises(ValueError, match="unknown geometry type"):
        geometry_from_dict({"type": "Cone"})
    with pytest.raises(ValueError, match="unknown ParallelBeam geometry fields"):
        geometry_from_dict({"type": "ParallelBeam", "bogus": 1})
    with pytest.raises(ValueError, match="not valid JSON"):
        geometry_from_json("{nope")


def test_frozen_and_replace():
    g = lsr.ParallelBeam(image_size=32, n_det=47)
    with pytest.raises(Exception):
        g.image_size = 64
    g2 = g.replace(n_views=10)
    assert g2.n_views == 10 and g.n_views == 360


@pytest.mark.parametrize("cls, extra", [(lsr.ParallelBeam, {}), (lsr.FanBeam, dict(sid_mm=500.0, sdd_mm=900.0))])
@pytest.mark.parametrize("offset", [0.0, 3.3])
def test_min_n_det_is_the_smallest_covering_detector(cls, extra, offset):
    kw = dict(image_size=64, pixel_size_mm=2.0, det_spacing_mm=1.7, det_offset_mm=offset, **extra)
    n = cls.min_n_det(**kw)
    cls(n_det=n, **kw)  # covers
    with pytest.raises(ValueError, match=f"n_det={n}"):
        cls(n_det=n - 1, **kw)


# -- extended field ------------------------------------------------------------------------
from napari_lsr.geometry import crop_sinogram, extend_detector, pad_sinogram  # noqa: E402

CLINICAL = dict(type="FanBeam", image_size=512, pixel_size_mm=0.9, n_views=1000, n_det=900,
                det_spacing_mm=1.0, sid_mm=540.0, sdd_mm=950.0)


def test_clinical_grid_refused_with_a_pointer_to_extend_detector():
    kw = {k: v for k, v in CLINICAL.items() if k != "type"}
    with pytest.raises(ValueError, match="does not cover") as err:
        lsr.FanBeam(**kw)
    assert "extend_detector" in str(err.value) and "pad_sinogram" in str(err.value)
    with pytest.raises(ValueError, match="extend_detector"):
        lsr.ParallelBeam(image_size=64, n_det=60)


@pytest.mark.parametrize("offset", [0.0, 0.25, 1.0, -3.0])
def test_extend_detector_fan_keeps_measured_bins(offset):
    scan = dict(CLINICAL, det_offset_mm=offset)
    ext, left, right = extend_detector(scan)
    assert isinstance(ext, lsr.FanBeam) and ext.n_det == 900 + left + right
    assert ext.n_det >= lsr.FanBeam.min_n_det(512, 0.9, 1.0, ext.det_offset_mm, 540.0, 950.0) - 1
    # the measured bins keep their fan angles
    d = np.arange(900)
    measured = (d - 899 / 2) * (1.0 / 950.0) + offset / 950.0
    np.testing.assert_allclose(ext.fan_angles_rad()[left:left + 900], measured, atol=1e-12)
    if offset in (0.0, 1.0):  # whole half bins: extended symmetrically (offset 0)
        assert ext.det_offset_mm == 0.0
    # minimal up to keeping the symmetry: one bin fewer on either side no longer covers
    for l2, r2 in ((left - 1, right), (left, right - 1)):
        need = math.asin(512 * 0.9 / math.sqrt(2) / 540.0)
        gam = ((np.arange(900 + l2 + r2) - l2) - 899 / 2) / 950.0 + offset / 950.0
        if ext.det_offset_mm != 0.0:
            assert gam[0] > -need + 1e-9 or gam[-1] < need - 1e-9


def test_extend_detector_parallel_and_noop():
    g = lsr.ParallelBeam(image_size=128, pixel_size_mm=1.0, n_views=90, n_det=183, det_spacing_mm=1.0)
    same, left, right = extend_detector(g)
    assert (left, right) == (0, 0) and same == g
    big, left, right = extend_detector(g, image_size=256)
    assert left == right and big.n_det == 183 + 2 * left and big.image_size == 256
    assert big.n_det >= lsr.ParallelBeam.min_n_det(256, 1.0, 1.0)
    np.testing.assert_allclose(big.ray_offsets_mm()[left:left + 183], g.ray_offsets_mm())
    again = geometry_from_json(big.to_json())
    assert again == big
    with pytest.raises(TypeError):
        extend_detector("fan")


def test_pad_and_crop_sinogram_numpy_and_torch():
    import torch
    sino = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    mask = np.ones_like(sino)
    mask[:, :, 0] = 0
    s, m = pad_sinogram(sino, 3, 2, mask)
    assert s.shape == (2, 5, 12) and m.shape == s.shape
    assert (m[..., :3] == 0).all() and (m[..., -2:] == 0).all() and (s[..., :3] == 0).all()
    np.testing.assert_array_equal(crop_sinogram(s, 3, 2), sino)
    np.testing.assert_array_equal(crop_sinogram(m, 3, 2), mask)
    s2, m2 = pad_sinogram(sino, 1, 1)
    assert m2.sum() == sino.size
    t, tm = pad_sinogram(torch.from_numpy(sino), 3, 2, torch.from_numpy(mask))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), s)
    np.testing.assert_array_equal(tm.numpy(), m)
    with pytest.raises(ValueError, match="mask"):
        pad_sinogram(sino, 1, 1, mask[0])


def test_extended_geometry_runs_in_the_projector():
    """A truncated scan: the measured detector covers less than the grid; the extended
    geometry projects, and the padded bins are marked missing."""
    scan = dict(type="ParallelBeam", image_size=48, pixel_size_mm=2.0, n_views=30, n_det=41, det_spacing_mm=2.0)
    ext, left, right = extend_detector(scan)
    P = lsr.Projector(ext)
    import torch
    sino = P.forward(torch.ones(ext.image_shape))
    measured = crop_sinogram(sino, left, right)
    s, m = pad_sinogram(measured.numpy(), left, right)
    assert s.shape == ext.sino_shape and m[:, :left].sum() == 0 and m[:, left:left + 41].all()


def test_geometry_dict_without_a_required_field_is_refused():
    from napari_lsr.geometry import ParallelBeam, geometry_from_dict
    d = ParallelBeam(image_size=16, pixel_size_mm=2.0, n_views=8, n_det=25,
                     det_spacing_mm=2.0).to_dict()
    del d["pixel_size_mm"]
    with pytest.raises(ValueError, match="missing the required field.*pixel_size_mm"):
        geometry_from_dict(d)
