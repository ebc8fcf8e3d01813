"""The fit report's warning on the bundled prior at full size: quiet on a held-out phantom,
raised for data the prior cannot explain (a sinogram in the wrong units, a non-anatomical
object) — issue 9's acceptance. One 256 x 256 / 360-view case each (~10 s)."""

import numpy as np
import pytest

import napari_lsr as lsr
from napari_lsr.evaluate import EVAL_SEED0, body_width_mm, default_geometry

GEOM = default_geometry()


@pytest.fixture(scope="module")
def prior():
    return lsr.load_model()


def _truncated(hu, fom_mm=None):
    sino = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy()
    fom_mm = fom_mm or 0.6 * body_width_mm(hu, GEOM.pixel_size_mm)
    mask = lsr.masks.truncation_mask(GEOM, fom_mm)
    return (sino * mask).astype(np.float32), mask


def test_no_warning_on_a_held_out_phantom(prior):
    sino, mask = _truncated(lsr.data.generate_slice(EVAL_SEED0 + 7, 256, 1.5, region="abdomen"))
    res = lsr.lsr_correct(sino, mask, GEOM, model=prior, steps=150, lbfgs_steps=10)
    assert res.fit.ok, res.fit.summary()


def test_warning_when_the_data_are_not_anatomy_or_in_the_wrong_units(prior):
    hu = lsr.data.generate_slice(EVAL_SEED0 + 7, 256, 1.5, region="abdomen")
    sino, mask = _truncated(hu)
    res = lsr.lsr_correct(10.0 * sino, mask, GEOM, model=prior, steps=150, lbfgs_steps=10)
    assert not res.fit.ok and "poor fit" in res.fit.warnings[0]  # e.g. lengths in cm for mm
    bars = np.full(GEOM.image_shape, -1000.0, np.float32)
    for k in range(6):  # a grid of dense bars: nothing like a patient
        bars[60:200, 50 + 28 * k:62 + 28 * k] = 1500.0
    sino, mask = _truncated(bars, fom_mm=250.0)
    res = lsr.lsr_correct(sino, mask, GEOM, model=prior, steps=150, lbfgs_steps=10)
    assert not res.fit.ok and "poor fit" in res.fit.warnings[0]


def test_encoder_start_begins_close_to_the_data(prior):
    """The encoder cold start (the prior's encoder applied to the water-cylinder-extrapolated
    FBP) begins far closer to the measured data than the default start near the average slice."""
    sino, mask = _truncated(lsr.data.generate_slice(EVAL_SEED0 + 7, 256, 1.5, region="abdomen"))
    kw = dict(model=prior, steps=1, lbfgs_steps=0)
    encoder = lsr.lsr_correct(sino, mask, GEOM, cold_start="encoder", **kw)
    random = lsr.lsr_correct(sino, mask, GEOM, **kw)
    assert encoder.loss_history[0] < 0.1 * random.loss_history[0]
