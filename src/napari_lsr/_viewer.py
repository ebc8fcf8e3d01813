"""``napari-lsr view [FILE]``: napari with the plugin's four docks (tabified, so they fit a
1366 x 768 screen) and FILE opened through the plugin's reader, or a sample.

The sample is built in a background thread (the projector for 256 x 256 pixels and 360 views
takes 10-30 s on a laptop CPU), so the window is usable at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGIN = "napari-lsr"
WIDGETS = ("Acquire / simulate", "Metal mask", "LSR correction", "Export")
#: ``--sample`` choices -> the manifest's sample keys (None: no sample)
SAMPLES = {"truncation": "truncated_sinogram", "metal": "metal_phantom", "ct": "ct_small",
           "none": None}
NO_QT = ("napari needs a Qt binding and none is installed: pip install 'napari-lsr[qt]' "
         "(PyQt6), or run scripts/view.sh, which sets up .venv with it")
NO_DISPLAY = ("no display: napari needs a screen (DISPLAY is not set). On a server use "
              "'xvfb-run -a napari-lsr view' for a virtual screen, or 'bash scripts/demo.sh' "
              "for the headless demo")


def display_problem() -> str | None:
    """Why napari cannot open a window here (Linux without a display), or None."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return NO_DISPLAY


def qt_problem() -> str | None:
    """Why Qt cannot be used (no binding installed), or None."""
    import importlib

    try:
        importlib.import_module("qtpy.QtCore")
    except Exception:  # qtpy raises its own QtBindingsNotFoundError  # noqa: BLE001
        return NO_QT
    return None


def dock_widgets(viewer, front: str = "LSR correction") -> dict:
    """Dock the plugin's four widgets as tabs of one dock area, in workflow order; ``front``
    is shown. Returns {display name: widget}."""
    from ._widgets._common import ARRANGED_PROPERTY

    docks, widgets = {}, {}
    for name in WIDGETS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        docks[name].setProperty(ARRANGED_PROPERTY, True)  # no automatic tabifying
    first = docks[WIDGETS[0]]
    main = first.parentWidget()
    for name in WIDGETS[1:]:
        if docks[name] not in main.tabifiedDockWidgets(first):
            main.tabifyDockWidget(first, docks[name])
    show_dock(docks[front])
    return widgets


def show_dock(dock) -> None:
    try:
        dock.show()
        dock.raise_()
    except RuntimeError:  # closed meanwhile
        pass


def _sample_layers(key: str, sample_kwargs: dict | None = None) -> list:
    from . import _sample_data

    fn = {"truncated_sinogram": _sample_data.truncated_sinogram,
          "metal_phantom": _sample_data.metal_phantom, "ct_small": _sample_data.ct_small}[key]
    return fn(**(sample_kwargs or {}))


def text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def add_layers(viewer, layer_data: list) -> list:
    """Add the sample's LayerData tuples and show them all."""
    from ._widgets._common import add_layer

    layers = [add_layer(viewer, ld) for ld in layer_data]
    text_overlay(viewer).visible = False
    viewer.reset_view()
    return layers


def _building_failed(viewer, error) -> None:
    from ._widgets._common import show_error

    text_overlay(viewer).visible = False
    show_error(f"the sample could not be made: {error}")


def setup_viewer(viewer, path=None, sample: str = "truncation", background: bool = True,
                 sample_kwargs: dict | None = None) -> dict:
    """Dock the widgets, then open ``path`` through the plugin's reader or add a sample
    (``SAMPLES``; in a background thread unless ``background`` is False). Returns
    {display name: widget} plus "worker" (the sample's worker, or None)."""
    from ._widgets._common import show_error

    if sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose one of {', '.join(SAMPLES)}")
    key = None if path is not None else SAMPLES[sample]
    front = "Acquire / simulate" if (path is None and key in (None, "ct_small")) else "LSR correction"
    widgets = dock_widgets(viewer, front)
    widgets["worker"] = None
    if path is not None:
        try:
            viewer.open(str(path), plugin=PLUGIN)
        except Exception as e:  # noqa: BLE001 - shown to the user, the viewer stays open
            show_error(f"could not open {path}: {e}")
            return widgets
        viewer.reset_view()
        if not any(layer.metadata.get("kind") in ("sinogram", "sinogram_mask")
                   for layer in viewer.layers):
            show_dock(widgets["Acquire / simulate"].parentWidget())
        return widgets
    if key is None:
        return widgets
    if not background:
        add_layers(viewer, _sample_layers(key, sample_kwargs))
        return widgets

    from napari.qt.threading import thread_worker

    worker = thread_worker(_sample_layers, ignore_errors=True, start_thread=False)(key, sample_kwargs)
    alive = [True]  # the viewer may be closed before the sample is ready
    viewer.window._qt_window.destroyed.connect(lambda *_: alive.__setitem__(0, False))
    worker.returned.connect(lambda layer_data: alive[0] and add_layers(viewer, layer_data))
    worker.errored.connect(lambda e: alive[0] and _building_failed(viewer, e))
    widgets["worker"] = worker
    overlay = text_overlay(viewer)  # on the canvas until the sample arrives (not a toast)
    overlay.text = (f"napari-lsr: simulating the '{sample}' sample scan...\n(the first one "
                    "builds the projector: 10-30 s)")
    overlay.position = "top_left"
    overlay.font_size = 12
    overlay.visible = True
    worker.start()
    return widgets


LAPTOP = (1366, 768)  # the smallest screen the docks are laid out for


def fit_to_screen(viewer) -> None:
    """Size the window for the screen: the whole free area of a laptop-sized screen (up to
    1600 x 1000), else at least 1366 x 768; never larger than the screen."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    if screen is None:
        return
    free = screen.availableGeometry()
    left, top, width, height = viewer.window.geometry()
    if free.width() <= 1600 or free.height() <= 1000:
        width, height = free.width(), free.height()
        left, top = free.left(), free.top()
    else:
        width = min(max(width, LAPTOP[0]), free.width())
        height = min(max(height, LAPTOP[1]), free.height())
        left = min(max(left, free.left()), free.right() - width)
        top = min(max(top, free.top()), free.bottom() - height)
    viewer.window.set_geometry(left, top, width, height)


def run_view(path=None, sample: str = "truncation") -> int:
    """The ``view`` command: returns an exit status (2 with a message when napari cannot
    start here)."""
    for problem in (qt_problem(), display_problem()):
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if path is not None and not Path(path).exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    import napari

    viewer = napari.Viewer(title="napari-lsr")
    fit_to_screen(viewer)
    setup_viewer(viewer, path, sample)
    napari.run()
    return 0
