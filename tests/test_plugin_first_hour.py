"""A user's first hour, driven at 1366 x 768 (a laptop screen): open each sample as
``napari-lsr view`` does, run LSR, abort, run again, export, with a screenshot of the whole
window at each stage.

In the suite the data are tiny and the screenshots go to a temporary folder. With
``NAPARI_LSR_SCREENSHOTS=<folder>`` the session uses the full-size samples and the bundled
prior and writes the PNGs there (``first-hour-*.png``; with ``docs`` also the README's
``docs/screenshot.png``, mid-run). To see the canvas in them, run under Xvfb on the xcb
platform, e.g.::

    QT_QPA_PLATFORM=xcb NAPARI_LSR_SCREENSHOTS=docs python -m pytest -q \\
        tests/test_plugin_first_hour.py -o xvfb_width=1366 -o xvfb_height=768 \\
        -o xvfb_colordepth=24
"""

import os
import shutil
from pathlib import Path

import pytest
from _plugin_helpers import TINY_SAMPLE, WAIT_MS, prior_file, workers_done  # noqa: F401
from napari.utils import notifications
from qtpy.QtWidgets import QTabBar

from napari_lsr._viewer import setup_viewer, text_overlay
from napari_lsr._widgets.lsr import DEFAULT_MODEL, MODEL_FILE

pytestmark = pytest.mark.usefixtures("workers_done")
OUT = os.environ.get("NAPARI_LSR_SCREENSHOTS")
FULL = bool(OUT)  # full-size samples and the bundled prior
SIZE = (1366, 768)
SESSION_WAIT_MS = 600_000 if FULL else WAIT_MS


@pytest.fixture
def shots(tmp_path):
    out = Path(OUT) if FULL else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def error_messages(monkeypatch):
    """Errors are collected (infos still show, as toasts in the screenshots)."""
    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen


def _laptop_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True, title="napari-lsr")
    main = viewer.window._qt_window
    main.move(0, 0)
    main.resize(*SIZE)
    qtbot.waitUntil(lambda: (main.width(), main.height()) == SIZE, timeout=5000)
    return viewer, main


def _shot(viewer, qtbot, path):
    qtbot.wait(200 if FULL else 10)  # let vispy draw the latest layer data
    img = viewer.screenshot(str(path), canvas_only=False, flash=False)
    assert path.is_file() and img.shape[0] >= SIZE[1] and img.shape[1] >= SIZE[0]
    return path


def _click_tab(window, title):
    [(bar, index)] = [(bar, i) for bar in window.findChildren(QTabBar)
                      for i in range(bar.count()) if bar.tabText(i).startswith(title)]
    bar.setCurrentIndex(index)


def _sample_kwargs():
    return None if FULL else TINY_SAMPLE


@pytest.mark.parametrize("sample, top", [("ct", "CT_small (pydicom)"),
                                         ("metal", "uncorrected FBP (metal)")])
def test_first_hour_open_sample(make_napari_viewer, qtbot, shots, error_messages, sample, top):
    if sample == "ct":
        pytest.importorskip("pydicom")
    viewer, _ = _laptop_viewer(make_napari_viewer, qtbot)
    kwargs = None if sample == "ct" else _sample_kwargs()
    setup_viewer(viewer, sample=sample, background=False, sample_kwargs=kwargs)
    assert viewer.layers[-1].name == top and viewer.layers[-1].visible
    _shot(viewer, qtbot, shots / f"first-hour-1-sample-{sample}.png")
    assert not error_messages


def test_first_hour_run_abort_export(make_napari_viewer, qtbot, shots, prior_file, tmp_path,
                                     error_messages):
    viewer, main = _laptop_viewer(make_napari_viewer, qtbot)
    widgets = setup_viewer(viewer, sample="truncation", sample_kwargs=_sample_kwargs())
    assert text_overlay(viewer).visible  # "simulating the sample..." while it is built
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=SESSION_WAIT_MS)  # built in the background
    assert not text_overlay(viewer).visible
    _shot(viewer, qtbot, shots / "first-hour-1-sample.png")

    lsr = widgets["LSR correction"]
    assert lsr.sinogram.value is viewer.layers["truncated sinogram"]
    assert lsr.mask.value is viewer.layers["truncation mask"]
    if FULL:
        lsr.model.value = DEFAULT_MODEL
        lsr.steps.value, lsr.preview_every.value = 400, 5
    else:
        lsr.model.value, lsr.model_path.value = MODEL_FILE, prior_file
        lsr.steps.value, lsr.preview_every.value = 100_000, 2
    lsr.device.value = "cpu"
    lsr.slices.value = "current slice"
    lsr.early_stop.value = False  # deterministic: runs until aborted
    assert lsr.run() is not None
    enough = 60 if FULL else 4
    qtbot.waitUntil(lambda: lsr._buf.count >= enough and lsr.preview_layer is not None
                    and lsr.plot.draw_count > 1, timeout=SESSION_WAIT_MS)
    assert viewer.layers[-1].name == "LSR preview"  # the prior's current image on top
    mid_run = _shot(viewer, qtbot, shots / "first-hour-2-run.png")
    if FULL and Path(OUT).resolve() == (Path(__file__).parents[1] / "docs").resolve():
        shutil.copyfile(mid_run, Path(OUT) / "screenshot.png")

    lsr.abort()
    qtbot.waitUntil(lambda: lsr.worker is None, timeout=SESSION_WAIT_MS)
    assert lsr.state == "aborted" and "LSR preview" not in viewer.layers
    _shot(viewer, qtbot, shots / "first-hour-3-abort.png")

    lsr.steps.value, lsr.lbfgs_steps.value = (150, 10) if FULL else (5, 2)
    lsr.run()
    qtbot.waitUntil(lambda: lsr.worker is None, timeout=SESSION_WAIT_MS)
    assert lsr.state == "done", lsr.status.text()
    corrected = viewer.layers[-1]
    k = int(round(viewer.dims.point[0]))  # the current slice (napari starts in the middle)
    assert corrected.name == f"truncated sinogram [slice {k}] LSR corrected" and corrected.visible

    export = widgets["Export"]
    _click_tab(main, "Export")
    assert export.layer.value is corrected
    export.path.value = tmp_path / "corrected"
    written = export.export()
    assert sorted(p.name for p in written) == ["corrected.npy", "corrected.npy.json",
                                               "corrected.report.json", "corrected.tif"]
    qtbot.waitUntil(lambda: export.export_button.native.isVisible(), timeout=5000)
    _shot(viewer, qtbot, shots / "first-hour-4-export.png")
    assert not error_messages
