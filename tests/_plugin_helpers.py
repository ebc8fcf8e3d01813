"""Shared pieces of the plugin tests (not a test module): a tiny geometry and untrained
prior, a truncated test case, an LSR widget set up for determinism, and pytest fixtures
(import them into a test module by name)."""

import numpy as np
import pytest
import torch
from napari.utils import notifications

from napari_lsr import ParallelBeam, Projector, hu_to_mu, masks
from napari_lsr._widgets import LSRWidget
from napari_lsr._widgets._common import add_layer, mask_layer, sinogram_layer
from napari_lsr._widgets.lsr import MODEL_FILE
from napari_lsr.data import generate_slice
from napari_lsr.model import VAE, VAEConfig, save_checkpoint

PIX = 4.0
GEOM = ParallelBeam(image_size=32, pixel_size_mm=PIX, n_views=24, n_det=47, det_spacing_mm=PIX)
WAIT_MS = 60_000
#: tiny samples on the tiny prior's grid (32 x 32 pixels of 4 mm, 24 views)
TINY_SAMPLE = dict(n_slices=1, size=32, pixel_size_mm=PIX, n_views=24, n_det=47)


def tiny_prior(path):
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                          pixel_size_mm=PIX))
    return save_checkpoint(model, path, {"note": "untrained"})


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    return tiny_prior(tmp_path_factory.mktemp("prior") / "tiny.pt")


@pytest.fixture(scope="module")
def phantom():
    return generate_slice(0, size=32, pixel_size_mm=PIX, region="abdomen", noise_hu=0.0)


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error (instead of showing them); infos and warnings
    are dropped."""
    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    monkeypatch.setattr(notifications, "show_info", lambda msg: None)
    monkeypatch.setattr(notifications, "show_warning", lambda msg: None)
    return seen


@pytest.fixture(autouse=False)
def workers_done(make_napari_viewer, qtbot):
    """Let background workers end before the viewer is torn down (use it as an autouse
    fixture in the module: ``pytestmark = pytest.mark.usefixtures("workers_done")``)."""
    from napari.qt.threading import WorkerBase

    yield
    WorkerBase.await_workers(msecs=30_000)
    qtbot.wait(50)


def truncated_case(viewer, phantom, n_slices=1, fom_mm=80.0):
    hu = np.stack([phantom] * n_slices) if n_slices > 1 else phantom
    sino = Projector(GEOM).forward(hu_to_mu(hu)).numpy()
    mask = np.broadcast_to(masks.truncation_mask(GEOM, fom_mm=fom_mm), sino.shape).copy()
    s = add_layer(viewer, sinogram_layer(sino * mask, "sino", GEOM, 2.0))
    m = add_layer(viewer, mask_layer(mask, "sino mask", GEOM, 2.0))
    return s, m


def lsr_widget(viewer, prior_file, sino=None, mask=None, steps=5, lbfgs=2):
    """An LSR widget on the tiny prior with early stopping off: a run lasts exactly its step
    budget (or until aborted), whatever the loss does."""
    w = LSRWidget(viewer)
    if sino is not None:
        w.sinogram.value = sino
    if mask is not None:
        w.mask.value = mask
    w.model.value = MODEL_FILE
    w.model_path.value = prior_file
    w.device.value = "cpu"
    w.steps.value, w.lbfgs_steps.value, w.warm_steps.value = steps, lbfgs, 3
    w.preview_every.value = 2
    w.early_stop.value = False
    return w
