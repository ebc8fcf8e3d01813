"""How LSR runs end in the plugin (done with steps and final loss, aborted, failed with the
reason), closing the viewer or the dock mid-run, and limited-angle scans from the Acquire
widget through LSR. Tiny geometry and an untrained prior; early stopping off unless a test
is about it, and every wait is on a condition."""

import time

import numpy as np
import pytest
import torch
from _plugin_helpers import (GEOM, PIX, WAIT_MS, errors, lsr_widget, phantom,  # noqa: F401
                             prior_file, truncated_case, workers_done)

from napari_lsr._widgets import AcquireWidget, LSRWidget
from napari_lsr._widgets._common import add_layer, image_layer
from napari_lsr._widgets.lsr import STATUS_COLOURS

pytestmark = pytest.mark.usefixtures("workers_done")


def _finish(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)


# -- how a run ends ---------------------------------------------------------------------------
def test_done_shows_steps_and_final_loss(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask, steps=5, lbfgs=2)
    w.run()
    assert w.state == "running"
    _finish(qtbot, w)
    assert not errors and w.state == "done"
    text = w.status.text()
    assert text.startswith("done: 7 of 7 steps, final loss ")
    assert f"{w.plot.y[-1]:.3g}" in text
    assert w.progress_bar.value() == w.progress_bar.maximum()
    assert STATUS_COLOURS["done"] in w.status.styleSheet()


def test_early_stop_is_reported(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask, steps=50, lbfgs=0)
    w.early_stop.value = True
    w.patience.value = 1
    w.tol_pct.value = 100.0  # a gain below 100 % over one step: stalled at once
    w.run()
    _finish(qtbot, w)
    assert w.state == "done" and w._buf.count < 50
    text = w.status.text()
    assert f"done: {w._buf.count} of 50 steps, final loss" in text
    assert "all steps used" not in text and "max_steps" not in text


def test_cold_start_setting_reaches_the_engine(make_napari_viewer, qtbot, phantom, prior_file,
                                              errors, monkeypatch):
    """"More settings" > cold start picks where the fit starts; the run finishes with it."""
    from napari_lsr import lsr as engine
    seen = []
    real = engine._run_slices
    monkeypatch.setattr(engine, "_run_slices",
                        lambda ctx, q, m, z0, n, opts, *a, **k: seen.append(opts["cold_start"])
                        or real(ctx, q, m, z0, n, opts, *a, **k))
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask, steps=3, lbfgs=0)
    assert w.cold_start.value == engine.DEFAULT_COLD_START
    w.cold_start.value = "encoder"
    w.run()
    _finish(qtbot, w)
    assert not errors and w.state == "done" and seen and set(seen) == {"encoder"}


def test_corrupt_prior_shows_failed(make_napari_viewer, qtbot, phantom, tmp_path, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    w = lsr_widget(viewer, bad, sino, mask)
    w.run()
    _finish(qtbot, w)
    assert w.state == "failed"
    assert w.status.text().startswith("failed: ") and "done" not in w.status.text()
    assert STATUS_COLOURS["failed"] in w.status.styleSheet()
    assert w.progress_bar.value() < w.progress_bar.maximum()
    assert w.progress_bar.format().startswith("failed")
    assert len(errors) == 1 and errors[0].startswith("LSR failed:")
    assert w.run_button.isEnabled() and not w.abort_button.isEnabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_shows_failed(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask)
    w.device.value = "cuda"
    names = [layer.name for layer in viewer.layers]
    w.run()
    _finish(qtbot, w)
    assert w.state == "failed" and "CUDA" in w.status.text()
    assert errors and "CUDA" in errors[0]
    assert w.progress_bar.value() < w.progress_bar.maximum()
    assert [layer.name for layer in viewer.layers] == names


def test_abort_shows_aborted(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask, steps=100_000)
    w.run()
    qtbot.waitUntil(lambda: w._buf.count >= 2, timeout=WAIT_MS)
    w.abort()
    _finish(qtbot, w)
    assert w.state == "aborted" and w.status.text().startswith("aborted after ")
    assert STATUS_COLOURS["aborted"] in w.status.styleSheet()
    assert w.progress_bar.value() < w.progress_bar.maximum()
    assert not errors


# -- closing mid-run --------------------------------------------------------------------------
def test_closing_the_viewer_mid_run_stops_the_worker(make_napari_viewer, qtbot, phantom,
                                                     prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask, steps=100_000)
    viewer.window.add_dock_widget(w, name="LSR correction")
    assert w.run() is not None
    run, buf = w._run, w._buf
    qtbot.waitUntil(lambda: buf.count >= 2, timeout=WAIT_MS)
    t0 = time.perf_counter()
    viewer.close()
    assert run.finished.is_set()  # joined while closing
    assert time.perf_counter() - t0 < 5.0
    steps = buf.count
    qtbot.wait(300)
    assert buf.count == steps  # nothing runs any more
    assert not errors


def test_closing_the_dock_mid_run_stops_the_worker(make_napari_viewer, qtbot, phantom,
                                                   prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = truncated_case(viewer, phantom)
    w = lsr_widget(viewer, prior_file, sino, mask, steps=100_000)
    viewer.window.add_dock_widget(w, name="LSR correction")
    w.run()
    run, buf = w._run, w._buf
    qtbot.waitUntil(lambda: buf.count >= 2, timeout=WAIT_MS)
    viewer.window.remove_dock_widget(w)
    qtbot.waitUntil(run.finished.is_set, timeout=5000)
    assert run.abort.is_set()
    viewer.add_image(np.zeros((4, 4)))  # the viewer goes on
    assert not errors


def test_shutdown_without_a_run_returns_at_once(make_napari_viewer):
    w = LSRWidget(make_napari_viewer())
    assert w._run.shutdown(timeout_s=0.1) is True


# -- limited angle ----------------------------------------------------------------------------
def _limited_angle_acquire(viewer, phantom, missing_deg, start_deg=0.0):
    add_layer(viewer, image_layer(phantom, "phantom", (1.0, PIX, PIX)))
    w = AcquireWidget(viewer)
    w.image.value = viewer.layers["phantom"]
    w.n_views.value = 24  # over 180 degrees: a view every 7.5 degrees
    w.case.value = "limited angle"
    w.missing_deg.value = missing_deg
    w.missing_start.value = start_deg
    return w


def test_acquire_limited_angle_then_lsr(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    w = _limited_angle_acquire(viewer, phantom, 60.0, 0.0)
    assert not w.missing_deg.native.isHidden() and w.fom_mm.native.isHidden()
    assert w.run() is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=WAIT_MS)
    assert not errors
    sino = viewer.layers["phantom sinogram (limited angle)"]
    mask = viewer.layers["phantom limited angle mask"]
    angles = np.rad2deg(GEOM.angles_rad())
    missing = angles < 60.0 - 1e-6  # the wedge [0, 60) deg: views at 0, 7.5, ..., 52.5
    assert missing.sum() == 8
    assert mask.data.shape == sino.data.shape and mask.data.shape[0] == 24
    np.testing.assert_array_equal(mask.data, np.repeat((~missing)[:, None], mask.data.shape[1], 1))
    assert np.all(sino.data[missing] == 0) and np.all(sino.data[~missing].max(axis=1) > 0)
    assert sino.metadata["missing_deg"] == 60.0 and mask.metadata["units"] == "1 = valid, 0 = missing"
    assert "phantom uncorrected FBP (limited angle)" in viewer.layers

    lsr = lsr_widget(viewer, prior_file)
    lsr.reset_choices()
    lsr.sinogram.value, lsr.mask.value = sino, mask
    assert lsr.run() is not None
    _finish(qtbot, lsr)
    assert lsr.state == "done" and not errors
    corrected = viewer.layers["phantom sinogram (limited angle) LSR corrected"]
    assert corrected.data.shape == (32, 32) and corrected.metadata["units"] == "HU"
    completed = viewer.layers["phantom sinogram (limited angle) LSR completed sinogram"]
    np.testing.assert_array_equal(completed.data[~missing], sino.data[~missing])


@pytest.mark.parametrize("missing, start, message", [
    (180.0, 0.0, "must lie between 0 and the scan arc"),
    (10.0, 200.0, "no view lies in the missing arc"),
])
def test_acquire_limited_angle_bad_arcs(make_napari_viewer, qtbot, phantom, errors,
                                        missing, start, message):
    viewer = make_napari_viewer()
    w = _limited_angle_acquire(viewer, phantom, missing, start)
    assert w.run() is not None
    qtbot.waitUntil(lambda: bool(errors), timeout=WAIT_MS)
    assert errors[0].startswith("simulation failed:") and message in errors[0]
    assert len(viewer.layers) == 1


def test_closing_the_viewer_while_acquire_simulates(make_napari_viewer, qtbot, phantom, errors):
    from napari.qt.threading import WorkerBase

    viewer = make_napari_viewer()
    w = _limited_angle_acquire(viewer, phantom, 60.0)
    viewer.window.add_dock_widget(w, name="Acquire")
    worker = w.run()
    viewer.close()  # before the simulation returns: its result is dropped, nothing raises
    WorkerBase.await_workers(msecs=WAIT_MS)
    qtbot.wait(50)  # deliver the worker's queued signals
    assert not worker.is_running and not errors


def test_closing_the_viewer_while_the_sample_builds(make_napari_viewer, qtbot, errors):
    from _plugin_helpers import TINY_SAMPLE
    from napari.qt.threading import WorkerBase

    from napari_lsr._viewer import setup_viewer

    viewer = make_napari_viewer()
    worker = setup_viewer(viewer, sample="truncation", sample_kwargs=TINY_SAMPLE)["worker"]
    viewer.close()
    WorkerBase.await_workers(msecs=WAIT_MS)
    qtbot.wait(50)
    assert not worker.is_running and not errors
