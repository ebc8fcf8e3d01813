"""Plugin widgets in a headless napari viewer (pytest-qt + make_napari_viewer, Xvfb via
pytest-xvfb): acquire, mask painting, LSR run / abort / errors, export. Tiny geometry
(32 x 32 image, 24 views) and a tiny untrained prior, so each test takes seconds.

Deterministic: LSR runs here never stop early (early stopping off, so a run lasts exactly its
step budget or until the test aborts it), and tests wait on conditions (qtbot.waitUntil),
never on sleeps."""

import json

import numpy as np
import pytest
import torch
from napari.utils import notifications

from napari_lsr import ParallelBeam, Projector, hu_to_mu, masks
from napari_lsr._widgets import AcquireWidget, ExportWidget, LSRWidget, MaskWidget
from napari_lsr._widgets._common import add_layer, image_layer, mask_layer, sinogram_layer
from napari_lsr._widgets.lsr import MODEL_FILE
from napari_lsr.data import generate_slice, read_npy, read_tiff
from napari_lsr.model import VAE, VAEConfig, save_checkpoint

PIX = 4.0
GEOM = ParallelBeam(image_size=32, pixel_size_mm=PIX, n_views=24, n_det=47, det_spacing_mm=PIX)
WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def _workers_finish_before_viewer_closes(make_napari_viewer, qtbot):
    """Let background workers end and their signals land before the viewer is torn down
    (set up after make_napari_viewer, so torn down before it); on a loaded machine a worker
    finishing during teardown otherwise races napari's layer clean-up."""
    from napari.qt.threading import WorkerBase

    yield
    WorkerBase.await_workers(msecs=30_000)
    qtbot.wait(50)


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error (instead of showing them)."""
    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    monkeypatch.setattr(notifications, "show_info", lambda msg: None)
    monkeypatch.setattr(notifications, "show_warning", lambda msg: None)
    return seen


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                          pixel_size_mm=PIX))
    return save_checkpoint(model, tmp_path_factory.mktemp("prior") / "tiny.pt", {"note": "untrained"})


@pytest.fixture(scope="module")
def phantom():
    return generate_slice(0, size=32, pixel_size_mm=PIX, region="abdomen", noise_hu=0.0)


def _truncated_case(viewer, phantom, n_slices=1):
    hu = np.stack([phantom] * n_slices) if n_slices > 1 else phantom
    sino = Projector(GEOM).forward(hu_to_mu(hu)).numpy()
    mask = np.broadcast_to(masks.truncation_mask(GEOM, fom_mm=80.0), sino.shape).copy()
    s = add_layer(viewer, sinogram_layer(sino * mask, "sino", GEOM, 2.0))
    m = add_layer(viewer, mask_layer(mask, "sino mask", GEOM, 2.0))
    return s, m


def _truncation_acquire(viewer, phantom, fom_mm):
    """An Acquire widget set to simulate truncation of the phantom (24 views)."""
    add_layer(viewer, image_layer(phantom, "phantom", (1.0, PIX, PIX)))
    w = AcquireWidget(viewer)
    w.image.value = viewer.layers["phantom"]
    w.n_views.value = 24
    w.case.value = "truncation"
    w.fom_mm.value = fom_mm
    return w


def test_acquire_truncation(make_napari_viewer, qtbot, phantom, errors):
    viewer = make_napari_viewer()
    w = _truncation_acquire(viewer, phantom, 80.0)
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=WAIT_MS)
    assert not errors
    sino = viewer.layers["phantom sinogram (truncation)"]
    geom = ParallelBeam(**{k: v for k, v in sino.metadata["geometry"].items() if k != "type"})
    assert geom.n_views == 24 and geom.n_det >= 46 and geom.pixel_size_mm == PIX
    assert sino.metadata["units"] == "line integral"
    mask = viewer.layers["phantom truncation mask"].data
    np.testing.assert_array_equal(mask, masks.truncation_mask(geom, 80.0))
    assert np.all(sino.data[mask == 0] == 0)
    fbp = viewer.layers["phantom uncorrected FBP (truncation)"]
    assert fbp.metadata["units"] == "HU" and tuple(fbp.scale) == (PIX, PIX)


def test_acquire_rejects_non_square(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    add_layer(viewer, image_layer(np.zeros((20, 30), np.float32), "rect"))
    w = AcquireWidget(viewer)
    w.image.value = viewer.layers["rect"]
    assert w.run() is None
    assert errors and "square" in errors[0] and len(viewer.layers) == 1


def test_acquire_library_error_is_a_notification(make_napari_viewer, qtbot, phantom, errors):
    viewer = make_napari_viewer()
    w = _truncation_acquire(viewer, phantom, 1000.0)  # wider than the body: nothing to truncate
    assert w.run() is not None
    qtbot.waitUntil(lambda: bool(errors), timeout=WAIT_MS)
    assert errors[0].startswith("simulation failed:") and "FOM" in errors[0]
    assert len(viewer.layers) == 1


def _disk(cy, cx, r):
    yy, xx = np.mgrid[:32, :32]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def test_mask_threshold_and_painted_disk(make_napari_viewer, qtbot, phantom, errors):
    viewer = make_napari_viewer()
    recon = phantom.copy()
    recon[_disk(10, 12, 2) == 1] = 6000.0  # "metal"
    add_layer(viewer, image_layer(recon, "fbp", (1.0, PIX, PIX), GEOM))
    w = MaskWidget(viewer)
    w.recon.value = viewer.layers["fbp"]
    w.threshold.value = 3000.0
    w.dilation_px.value = 0
    labels = w.make_labels()
    assert labels is not None and not errors
    np.testing.assert_array_equal(labels.data, recon > 3000)
    mask_layer_ = viewer.layers["fbp metal labels sinogram mask"]
    np.testing.assert_array_equal(
        mask_layer_.data, masks.labels_to_sinogram_mask(labels.data, GEOM, w.dilation_bins.value))

    # paint a disk instead (on demand): the mask is the disk's trace
    disk = _disk(20, 18, 3)
    labels.data = disk
    w.live.value = False
    w.dilation_bins.value = 0
    w.update_mask()
    got = mask_layer_.data
    assert viewer.layers["fbp metal labels sinogram mask"] is mask_layer_  # updated in place
    np.testing.assert_array_equal(got, masks.labels_to_sinogram_mask(disk, GEOM, 0))
    # independent check: rays through the disk centre are invalid, rays far from it valid
    x, y = GEOM.pixel_centres_mm()
    cx, cy, r = x[18], y[20], 3 * PIX
    s_centre = cx * np.cos(GEOM.angles_rad()) + cy * np.sin(GEOM.angles_rad())
    dist = np.abs(GEOM.ray_offsets_mm()[None, :] - s_centre[:, None])
    assert np.all(got[dist < r - PIX] == 0)
    assert np.all(got[dist > r + 2 * PIX] == 1)

    # live: painting updates the mask after a short debounce
    w.live.value = True
    before = got.copy()
    labels.paint((5, 5), 1)
    qtbot.waitUntil(lambda: not np.array_equal(mask_layer_.data, before), timeout=5000)


def _lsr_widget(viewer, prior_file, sino, mask, steps=5, lbfgs=2):
    w = LSRWidget(viewer)
    w.sinogram.value, w.mask.value = sino, mask
    w.model.value = MODEL_FILE
    w.model_path.value = prior_file
    w.device.value = "cpu"
    w.steps.value, w.lbfgs_steps.value, w.warm_steps.value = steps, lbfgs, 3
    w.preview_every.value = 2
    w.early_stop.value = False  # deterministic: exactly the step budget, or until aborted
    return w


def test_lsr_run_adds_result_layers(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = _truncated_case(viewer, phantom, n_slices=2)
    add_layer(viewer, image_layer(phantom, "sino LSR corrected"))  # must not be overwritten
    existing = viewer.layers["sino LSR corrected"]
    w = _lsr_widget(viewer, prior_file, sino, mask)
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert not errors
    assert viewer.layers["sino LSR corrected"] is existing
    corrected = viewer.layers["sino LSR corrected [2]"]
    prior = viewer.layers["sino LSR prior"]
    completed = viewer.layers["sino LSR completed sinogram"]
    assert corrected.data.shape == prior.data.shape == (2, 32, 32)
    assert completed.data.shape == sino.data.shape
    assert corrected.metadata["units"] == "HU" and completed.metadata["units"] == "line integral"
    assert corrected.metadata["lsr"]["steps"] == 5 and tuple(corrected.scale) == (2.0, PIX, PIX)
    np.testing.assert_array_equal(completed.data[mask.data == 1], sino.data[mask.data == 1])
    assert w.preview_layer is None and "LSR preview" not in viewer.layers
    assert len(w.plot.x) == w._buf.count == 7 + 5  # cold slice 5+2, warm slice 3+2
    assert w.plot.draw_count >= 1


def test_lsr_volume_without_warm_start(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = _truncated_case(viewer, phantom, n_slices=2)
    w = _lsr_widget(viewer, prior_file, sino, mask, steps=2, lbfgs=0)
    w.warm_start.value = False
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert not errors and w._buf.count == 4  # two cold slices of two steps
    corrected = viewer.layers["sino LSR corrected"]
    assert corrected.data.shape == (2, 32, 32) and corrected.metadata["lsr"]["warm_steps"] is None


def test_lsr_abort_within_one_step(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, mask = _truncated_case(viewer, phantom)
    w = _lsr_widget(viewer, prior_file, sino, mask, steps=100_000)
    names = [layer.name for layer in viewer.layers]
    w.run()
    qtbot.waitUntil(lambda: w._buf.count >= 3 and w.preview_layer is not None, timeout=WAIT_MS)
    assert "LSR preview" in viewer.layers  # the live preview of the prior's image
    w.abort()
    at_abort = w._buf.count
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert w._buf.count - at_abort <= 1
    assert [layer.name for layer in viewer.layers] == names  # no results, preview removed
    assert not errors and w.run_button.isEnabled()
    viewer.add_image(np.zeros((4, 4)))  # viewer still usable


def test_lsr_bad_choices_change_nothing(make_napari_viewer, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    sino, _ = _truncated_case(viewer, phantom)
    other = ParallelBeam(image_size=32, pixel_size_mm=PIX, n_views=10, n_det=47, det_spacing_mm=PIX)
    wrong = add_layer(viewer, mask_layer(np.ones(other.sino_shape), "other mask", other))
    names = [layer.name for layer in viewer.layers]
    w = _lsr_widget(viewer, prior_file, sino, wrong)
    assert w.run() is None and w.worker is None
    assert errors and "shape" in errors[-1]
    assert [layer.name for layer in viewer.layers] == names


def test_lsr_current_slice_choice(make_napari_viewer, phantom, prior_file):
    viewer = make_napari_viewer()
    sino, mask = _truncated_case(viewer, phantom, n_slices=3)
    sino.data = sino.data * np.arange(1, 4, dtype=np.float32)[:, None, None]
    w = _lsr_widget(viewer, prior_file, sino, mask)
    w.slices.value = "current slice"
    viewer.dims.set_current_step(0, 2)
    data, m, geom, index = w._inputs()
    assert index == 2 and data.shape == m.shape == GEOM.sino_shape
    np.testing.assert_array_equal(data, sino.data[2])


def test_lsr_engine_error_is_a_notification(make_napari_viewer, qtbot, phantom, tmp_path, errors):
    viewer = make_napari_viewer()
    sino, mask = _truncated_case(viewer, phantom)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    names = [layer.name for layer in viewer.layers]
    w = _lsr_widget(viewer, bad, sino, mask)
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert len(errors) == 1 and errors[0].startswith("LSR failed:") and "Traceback" not in errors[0]
    assert [layer.name for layer in viewer.layers] == names


def test_export_tiff_npy_report_and_overwrite(make_napari_viewer, tmp_path, phantom, errors):
    viewer = make_napari_viewer()
    vol = np.stack([phantom, phantom + 10])
    layer = add_layer(viewer, image_layer(vol, "corrected", (2.0, PIX, PIX), GEOM,
                                          lsr={"steps": 5}))
    w = ExportWidget(viewer)
    w.layer.value = layer
    w.path.value = tmp_path / "out"
    written = w.export()
    assert sorted(p.name for p in written) == ["out.npy", "out.npy.json", "out.report.json", "out.tif"]
    for vol_read in (read_tiff(tmp_path / "out.tif"), read_npy(tmp_path / "out.npy")):
        np.testing.assert_array_equal(vol_read.hu, vol)
        assert vol_read.spacing_mm == (2.0, PIX, PIX)
        assert vol_read.meta["geometry"] == GEOM.to_dict()
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["lsr"] == {"steps": 5} and report["spacing_mm"] == [2.0, PIX, PIX]

    layer.data = vol + 100
    asked = []
    w.confirm_overwrite = lambda paths: asked.append(paths) or False
    assert w.export() == [] and len(asked) == 1
    np.testing.assert_array_equal(read_tiff(tmp_path / "out.tif").hu, vol)  # untouched
    w.confirm_overwrite = lambda paths: True
    assert len(w.export()) == 4
    np.testing.assert_array_equal(read_npy(tmp_path / "out.npy").hu, vol + 100)
    assert not errors


def test_widgets_open_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    for name, cls in [("Acquire / simulate", AcquireWidget), ("Metal mask", MaskWidget),
                      ("LSR correction", LSRWidget), ("Export", ExportWidget)]:
        _, widget = viewer.window.add_plugin_dock_widget("napari-lsr", name)
        assert isinstance(widget, cls)


def test_metal_workflow_end_to_end(make_napari_viewer, qtbot, prior_file, tmp_path, errors):
    """Acquire (metal) -> threshold mask on the uncorrected FBP -> LSR -> export."""
    viewer = make_napari_viewer()
    hu = generate_slice(0, size=32, pixel_size_mm=8.0, region="abdomen", noise_hu=0.0)
    add_layer(viewer, image_layer(hu, "clean", (1.0, 8.0, 8.0)))
    acquire = AcquireWidget(viewer)
    acquire.image.value = viewer.layers["clean"]
    acquire.n_views.value = 24
    acquire.case.value = "metal"
    acquire.n_metal.value = 1
    acquire.run()
    qtbot.waitUntil(lambda: "clean uncorrected FBP (metal)" in viewer.layers, timeout=WAIT_MS)

    mask_w = MaskWidget(viewer)
    mask_w.reset_choices()
    mask_w.recon.value = viewer.layers["clean uncorrected FBP (metal)"]
    mask_w.threshold.value = 2000.0
    labels = mask_w.make_labels()
    assert labels is not None and labels.data.any()
    sino_mask = viewer.layers[f"{labels.name} sinogram mask"]
    true_mask = viewer.layers["clean metal mask"].data
    assert sino_mask.data.shape == true_mask.shape and 0 < sino_mask.data.mean() < 1
    assert (sino_mask.data[true_mask == 0] == 0).mean() > 0.8  # covers the true metal trace

    w = LSRWidget(viewer)
    w.reset_choices()
    w.sinogram.value = viewer.layers["clean sinogram (metal)"]
    w.mask.value = sino_mask
    w.model.value, w.model_path.value = MODEL_FILE, prior_file
    w.steps.value, w.lbfgs_steps.value = 3, 1
    w.early_stop.value = False
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    corrected = viewer.layers["clean sinogram (metal) LSR corrected"]
    assert corrected.data.shape == (32, 32) and not errors

    export = ExportWidget(viewer)
    export.reset_choices()
    export.layer.value = corrected
    export.path.value = tmp_path / "corrected"
    assert len(export.export()) == 4
    assert read_tiff(tmp_path / "corrected.tif").meta["lsr"]["steps"] == 3
