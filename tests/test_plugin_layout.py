"""What the user sees: CT window presets, where layers go (sinograms beside the image, the
corrected image on top, in a CT window, scales in mm), docks that fit a 1366 x 768 laptop
screen, and the ``napari-lsr view`` command."""

import numpy as np
import pytest
from _plugin_helpers import (GEOM, PIX, TINY_SAMPLE, WAIT_MS, errors, lsr_widget,  # noqa: F401
                             phantom, prior_file, truncated_case, workers_done)
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QTabBar

from napari_lsr._viewer import (NO_DISPLAY, SAMPLES, WIDGETS, display_problem, dock_widgets,
                                setup_viewer)
from napari_lsr._widgets import AcquireWidget, ExportWidget, LSRWidget, MaskWidget
from napari_lsr._widgets._common import (add_layer, image_layer, mask_layer, set_window,
                                         sinogram_layer, viewer_window)
from napari_lsr.windows import DEFAULT_WINDOW, WINDOWS, window_label, window_limits

pytestmark = pytest.mark.usefixtures("workers_done")
SCREEN = QRect(0, 0, 1366, 768)


# -- CT windows -------------------------------------------------------------------------------
def test_window_table():
    assert window_limits("soft tissue") == (-160.0, 240.0)
    assert window_limits("bone") == (-500.0, 1500.0)
    assert window_limits("lung") == (-1350.0, 150.0)
    assert window_limits("brain") == (0.0, 80.0)
    assert window_limits("wide") == (-1000.0, 1000.0)
    assert window_limits(" Lung ") == window_limits("lung")
    assert window_label("bone") == "bone  W2000 L500"
    assert DEFAULT_WINDOW in WINDOWS
    with pytest.raises(ValueError, match="unknown CT window 'liver'; choose one of soft tissue"):
        window_limits("liver")


def test_window_combo_sets_hu_layers_and_selected_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    hu = add_layer(viewer, image_layer(np.linspace(-1000, 1000, 64).reshape(8, 8), "ct"))
    sino = add_layer(viewer, sinogram_layer(np.ones(GEOM.sino_shape), "sino", GEOM))
    mask = add_layer(viewer, mask_layer(np.ones(GEOM.sino_shape), "mask", GEOM))
    foreign = viewer.add_image(np.zeros((8, 8)), name="foreign", contrast_limits=(0, 1))
    chosen = viewer.add_image(np.zeros((8, 8)), name="chosen", contrast_limits=(0, 1))
    viewer.layers.selection = {chosen}
    assert tuple(hu.contrast_limits) == window_limits(DEFAULT_WINDOW)
    acquire, lsr = AcquireWidget(viewer), LSRWidget(viewer)
    sino_limits = tuple(sino.contrast_limits)

    acquire.ct_window.value = "bone"
    assert tuple(hu.contrast_limits) == (-500.0, 1500.0)
    assert tuple(chosen.contrast_limits) == (-500.0, 1500.0)
    assert tuple(foreign.contrast_limits) == (0.0, 1.0)
    assert tuple(sino.contrast_limits) == sino_limits and tuple(mask.contrast_limits) == (0.0, 1.0)
    assert lsr.ct_window.value == "bone" and viewer_window(viewer) == "bone"  # combos agree
    lo, hi = hu.contrast_limits_range
    assert lo <= -1000 and hi >= 1500  # the slider still spans the data

    lsr.ct_window.value = "brain"
    assert acquire.ct_window.value == "brain" and tuple(hu.contrast_limits) == (0.0, 80.0)
    new = add_layer(viewer, image_layer(np.zeros((8, 8)), "new"))  # opens in the chosen window
    assert tuple(new.contrast_limits) == (0.0, 80.0)
    assert set_window(viewer, "lung") and tuple(new.contrast_limits) == (-1350.0, 150.0)


# -- where layers go --------------------------------------------------------------------------
def _x_range(layer):
    ext = np.asarray(layer.extent.world)
    return ext[0, -1], ext[1, -1]


def _y_edges(layer):
    """Top and bottom edges (world) of the layer's first and last rows."""
    ext, step = np.asarray(layer.extent.world), float(layer.scale[-2])
    return ext[0, -2] - step / 2, ext[1, -2] + step / 2


def _beside(image, sino):
    """The sinogram's panel starts right of the image and shares its height."""
    assert _x_range(sino)[0] > _x_range(image)[1]
    np.testing.assert_allclose(_y_edges(sino), _y_edges(image), atol=1e-3)


@pytest.mark.parametrize("key, names", [
    ("truncated_sinogram", ["phantom (ground truth)", "truncated sinogram", "truncation mask",
                            "uncorrected FBP (truncated)"]),
    ("metal_phantom", ["phantom with metal", "metal sinogram", "metal trace mask (true)",
                       "uncorrected FBP (metal)"]),
])
def test_samples_open_readable(make_napari_viewer, key, names):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lsr", key, **TINY_SAMPLE)
    assert [layer.name for layer in viewer.layers] == names
    truth, sino, mask, fbp = (viewer.layers[n] for n in names)
    assert fbp is viewer.layers[-1] and fbp.visible  # the reconstruction on top
    assert not truth.visible  # the ground truth hidden below it
    for image in (truth, fbp):
        assert tuple(image.contrast_limits) == window_limits(DEFAULT_WINDOW)
        assert tuple(image.scale[-2:]) == (PIX, PIX) and image.metadata["units"] == "HU"
    _beside(fbp, sino)
    np.testing.assert_array_equal(mask.translate, sino.translate)
    np.testing.assert_array_equal(mask.scale, sino.scale)
    assert sino.scale[-1] == GEOM.det_spacing_mm and sino.metadata["spacing_mm"][1] == 1.0
    assert mask.blending == "translucent" and mask.colormap.map(np.array([1.0]))[0, 3] == 0.0


def test_ct_sample_opens_in_a_window(make_napari_viewer):
    pytest.importorskip("pydicom")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lsr", "ct_small")
    [layer] = viewer.layers
    assert layer.visible and tuple(layer.contrast_limits) == window_limits(DEFAULT_WINDOW)


def test_results_on_top_and_beside(make_napari_viewer, qtbot, phantom, prior_file, errors):
    viewer = make_napari_viewer()
    add_layer(viewer, image_layer(phantom, "truth", (2.0, PIX, PIX), GEOM))
    sino, mask = truncated_case(viewer, phantom)
    set_window(viewer, "lung")
    export = ExportWidget(viewer)
    w = lsr_widget(viewer, prior_file, sino, mask)
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert w.state == "done" and not errors
    corrected = viewer.layers["sino LSR corrected"]
    prior = viewer.layers["sino LSR prior"]
    completed = viewer.layers["sino LSR completed sinogram"]
    assert viewer.layers[-1] is corrected and corrected.visible
    assert viewer.layers.index(prior) < viewer.layers.index(completed) < viewer.layers.index(corrected)
    assert not prior.visible and completed.visible
    assert tuple(corrected.contrast_limits) == window_limits("lung")
    assert tuple(corrected.scale) == (PIX, PIX)
    np.testing.assert_array_equal(completed.translate, sino.translate)
    _beside(corrected, completed)
    assert viewer.layers.selection.active is corrected
    assert export.layer.value is corrected  # Export offers the new result


def test_new_inputs_are_picked(make_napari_viewer, phantom):
    viewer = make_napari_viewer()
    w, mask_w = LSRWidget(viewer), MaskWidget(viewer)
    sino, mask = truncated_case(viewer, phantom)
    assert w.sinogram.value is sino and w.mask.value is mask
    fbp = add_layer(viewer, image_layer(phantom, "fbp", geometry=GEOM, case="metal"))
    assert mask_w.recon.value is fbp


# -- docks on a laptop screen -----------------------------------------------------------------
def _hidden_why(widget, window) -> str:
    """'' when the widget is shown, not clipped by any parent (scroll areas, docks) and
    inside the screen; else what hides it."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return "not shown"
    rect = QRect(QPoint(0, 0), widget.size())
    parent, child = widget.parentWidget(), widget
    while parent is not None:
        rect = rect.translated(child.pos())
        if not parent.rect().contains(rect):
            return f"clipped by a {type(parent).__name__} ({parent.rect()} vs {rect})"
        if parent is window:
            break
        parent, child = parent.parentWidget(), parent
    on_screen = QRect(window.mapToGlobal(rect.topLeft()), rect.size())
    return "" if SCREEN.contains(on_screen) else f"off the screen: {on_screen}"


def _click_tab(window, dock):
    """Bring a tabified dock to the front as a user does: click its tab."""
    [(bar, index)] = [(bar, i) for bar in window.findChildren(QTabBar)
                      for i in range(bar.count()) if bar.tabText(i) == dock.windowTitle()]
    bar.setCurrentIndex(index)


KEY_CONTROLS = {
    "Acquire / simulate": lambda w: [w.image.native, w.case.native, w.run_button.native],
    "Metal mask": lambda w: [w.threshold_button.native, w.mask_button.native],
    "LSR correction": lambda w: [w.sinogram.native, w.mask.native, w.run_button, w.abort_button,
                                 w.progress_bar, w.status, w.plot, w.ct_window.native],
    "Export": lambda w: [w.layer.native, w.path.native, w.export_button.native]}


@pytest.mark.parametrize("how", ["plugins menu", "view command"])
def test_docks_fit_a_laptop_screen(make_napari_viewer, qtbot, how):
    viewer = make_napari_viewer(show=True)
    main = viewer.window._qt_window
    main.move(0, 0)
    main.resize(SCREEN.width(), SCREEN.height())
    if how == "plugins menu":  # one after the other, as a user opens them: they tabify
        docks, widgets = {}, {}
        for name in WIDGETS:
            docks[name], widgets[name] = viewer.window.add_plugin_dock_widget("napari-lsr", name)
        first = docks[WIDGETS[0]]
        qtbot.waitUntil(lambda: len(main.tabifiedDockWidgets(first)) == 3, timeout=5000)
    else:
        widgets = dock_widgets(viewer)
        docks = {name: widgets[name].parentWidget() for name in WIDGETS}
        run_button = widgets["LSR correction"].run_button  # LSR is the tab in front
        qtbot.waitUntil(lambda: not _hidden_why(run_button, main), timeout=5000)
    qtbot.waitUntil(lambda: main.size() == SCREEN.size(), timeout=5000)
    qtbot.waitUntil(lambda: any(bar.count() == 4 for bar in main.findChildren(QTabBar)),
                    timeout=5000)  # one group of four tabs
    hint = main.minimumSizeHint()
    assert hint.width() <= SCREEN.width() and hint.height() <= SCREEN.height()
    assert main.minimumSize().height() <= SCREEN.height()
    for name in WIDGETS:
        _click_tab(main, docks[name])
        controls = KEY_CONTROLS[name](widgets[name])
        try:
            qtbot.waitUntil(lambda: not any(_hidden_why(c, main) for c in controls), timeout=5000)
        except qtbot.TimeoutError:
            pytest.fail(f"{name}: " + "; ".join(
                f"{type(c).__name__} {_hidden_why(c, main)}" for c in controls))
    plot = widgets["LSR correction"].plot
    assert plot.height() >= 150  # the loss plot is a plot, not a sliver


# -- napari-lsr view --------------------------------------------------------------------------
def test_view_opens_a_file_through_the_reader(make_napari_viewer, tmp_path):
    from napari_lsr.data.sinogram_io import write_sinogram

    viewer = make_napari_viewer()
    files = write_sinogram(tmp_path / "scan.npy", np.ones((2, *GEOM.sino_shape), np.float32),
                           GEOM, mask=np.ones(GEOM.sino_shape, np.float32), slice_spacing_mm=2.0)
    widgets = setup_viewer(viewer, files[0])
    assert [layer.metadata["kind"] for layer in viewer.layers] == ["sinogram", "sinogram_mask"]
    assert isinstance(widgets["LSR correction"], LSRWidget)
    assert widgets["LSR correction"].sinogram.value is viewer.layers["scan"]
    assert widgets["worker"] is None


def test_view_bad_file_is_a_message(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    setup_viewer(viewer, bad)
    assert len(errors) == 1 and errors[0].startswith(f"could not open {bad}")
    assert len(viewer.layers) == 0


def test_view_samples(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    widgets = setup_viewer(viewer, sample="truncation", sample_kwargs=TINY_SAMPLE)  # background
    assert widgets["worker"] is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=WAIT_MS)
    lsr = widgets["LSR correction"]
    assert lsr.sinogram.value is viewer.layers["truncated sinogram"]
    assert lsr.mask.value is viewer.layers["truncation mask"]
    viewer2 = make_napari_viewer()
    setup_viewer(viewer2, sample="none", background=False)
    assert len(viewer2.layers) == 0 and not errors
    with pytest.raises(ValueError, match="unknown sample 'x'"):
        setup_viewer(viewer2, sample="x")
    assert set(SAMPLES) == {"truncation", "metal", "ct", "none"}


def test_view_command_line(monkeypatch, capsys):
    from napari_lsr import cli

    args = cli.build_parser().parse_args(["view", "scan.npy", "--sample", "metal"])
    assert args.func is cli.run_view and args.path == "scan.npy" and args.sample == "metal"
    assert cli.build_parser().parse_args(["view"]).sample == "truncation"
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert display_problem() == NO_DISPLAY
    assert cli.main(["view"]) == 2
    assert "no display" in capsys.readouterr().err
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert display_problem() is None
    assert cli.main(["view", "missing.tif"]) == 2
    assert "missing.tif does not exist" in capsys.readouterr().err


def test_view_without_qt_is_a_message(monkeypatch, capsys):
    import importlib

    from napari_lsr import cli
    from napari_lsr._viewer import NO_QT, qt_problem

    real = importlib.import_module

    def no_qt(name, *args):
        if name.startswith("qtpy"):
            raise ImportError("No Qt bindings could be found")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_qt)
    assert qt_problem() == NO_QT
    assert cli.main(["view"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'napari-lsr[qt]'" in err and "scripts/view.sh" in err


def test_fit_to_screen(make_napari_viewer):
    from qtpy.QtWidgets import QApplication

    from napari_lsr._viewer import fit_to_screen

    viewer = make_napari_viewer()
    viewer.window.resize(5000, 5000)
    fit_to_screen(viewer)
    free = QApplication.primaryScreen().availableGeometry()
    left, top, width, height = viewer.window.geometry()
    assert free.contains(QRect(left, top, width, height))


def test_view_script_passes_arguments(tmp_path):
    """scripts/view.sh sets up with the Qt and DICOM extras and hands napari-lsr view the
    arguments, paths made absolute (setup.sh changes to the repository root)."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(root / "scripts" / "view.sh", repo / "scripts" / "view.sh")
    (repo / "bin").mkdir()
    (repo / "scripts" / "setup.sh").write_text(  # a stand-in: no venv, a fake napari-lsr
        'cd "$(dirname "${BASH_SOURCE[0]}")/.."\necho "extras=$1"\n'
        'export PATH="$PWD/bin:$PATH"\n')
    fake = repo / "bin" / "napari-lsr"
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "scan.npy").write_bytes(b"")
    out = subprocess.run(["bash", str(repo / "scripts" / "view.sh"), "data/scan.npy", "--sample",
                          "metal"], cwd=work, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["extras=qt,dicom", "arg=view", f"arg={work / 'data' / 'scan.npy'}",
                                "arg=--sample", "arg=metal"]
    out = subprocess.run(["bash", str(repo / "scripts" / "view.sh")], cwd=work,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["extras=qt,dicom", "arg=view"]
