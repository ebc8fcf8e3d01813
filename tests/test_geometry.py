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
