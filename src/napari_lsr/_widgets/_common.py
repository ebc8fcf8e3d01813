"""Shared plugin plumbing: layer conventions, placement, CT windows, layer pickers, names,
error reporting, docking.

Layer conventions (every layer the plugin makes, reads or writes):

* ``scale``: mm per pixel along each axis for images; for sinograms ``(z mm, v, det mm)``
  where the views axis (no length unit) is drawn so the sinogram is as tall as the image.
* ``translate``: images sit at the origin; sinograms and their masks sit to the right of the
  image (a gap of 8 % of its width), so image and sinogram are seen side by side and never
  drawn over each other.
* ``metadata["kind"]``: ``"image"`` (HU), ``"sinogram"`` (line integrals), ``"sinogram_mask"``
  (1 = valid, 0 = missing), ``"metal_labels"``.
* ``metadata["units"]``: ``"HU"``, ``"line integral"`` or ``"1 = valid, 0 = missing"``.
* ``metadata["geometry"]``: ``Geometry.to_dict()`` when the layer belongs to a scan.
* ``metadata["spacing_mm"]``: ``[z, y, x]`` (for sinograms ``[z, 1 per view, det]``).
* HU images open in a CT window (``napari_lsr.windows``); masks are a red tint over the
  missing part of the sinogram (the valid part is transparent).

No maths here: everything numeric comes from the library.
"""

from __future__ import annotations

import re
import weakref

import numpy as np
from napari.utils import notifications
from napari.utils.colormaps import Colormap

from ..geometry import Geometry, geometry_from_dict
from ..windows import DEFAULT_WINDOW, WINDOWS, window_label, window_limits

HU_WINDOW = window_limits(DEFAULT_WINDOW)
SINO_UNITS = "line integral"
MASK_UNITS = "1 = valid, 0 = missing"
SINO_GAP = 0.08  # gap between an image and its sinogram panel, as a fraction of the image width
#: sinogram masks: missing (0) tinted red, valid (1) transparent
MISSING_COLORMAP = Colormap([[1.0, 0.18, 0.12, 1.0], [0.0, 0.0, 0.0, 0.0]],
                            name="napari-lsr missing (red)")


def show_error(message: str) -> None:
    """An error notification with the message only (tests replace this function)."""
    notifications.show_error(str(message))


def show_info(message: str) -> None:
    notifications.show_info(str(message))


def show_warning(message: str) -> None:
    notifications.show_warning(str(message))


# -- layer data -----------------------------------------------------------------------------
def _scale(ndim: int, spacing_zyx) -> tuple:
    return tuple(float(s) for s in tuple(spacing_zyx)[-ndim:])


def image_layer(data, name: str, spacing_mm=(1.0, 1.0, 1.0), geometry: Geometry | None = None,
                window: str | None = None, visible: bool = True, **meta) -> tuple:
    """LayerData tuple of an HU image (2D or a stack), in a CT window (default soft tissue)."""
    spacing = [float(s) for s in spacing_mm]
    md = {"kind": "image", "units": "HU", "spacing_mm": spacing, **meta}
    if geometry is not None:
        md["geometry"] = geometry.to_dict()
    return (np.asarray(data, np.float32), {
        "name": name, "scale": _scale(np.ndim(data), spacing), "metadata": md,
        "colormap": "gray", "contrast_limits": window_limits(window or DEFAULT_WINDOW),
        "visible": bool(visible)}, "image")


def sinogram_spacing(geometry: Geometry, slice_spacing_mm: float = 1.0) -> list:
    return [float(slice_spacing_mm), 1.0, float(geometry.det_spacing_mm)]


def sinogram_placement(geometry: Geometry, ndim: int, slice_spacing_mm: float = 1.0) -> dict:
    """``scale`` and ``translate`` of a sinogram layer: beside its image (to the right, top
    edges aligned), views axis stretched to the image height, detector bins in mm."""
    extent = geometry.image_size * geometry.pixel_size_mm
    view_step = extent / geometry.n_views
    det = float(geometry.det_spacing_mm)
    half_pixel = geometry.pixel_size_mm / 2.0
    x0 = extent - half_pixel + SINO_GAP * extent + det / 2.0
    y0 = -half_pixel + view_step / 2.0
    return {"scale": (float(slice_spacing_mm), view_step, det)[-ndim:],
            "translate": (0.0, y0, x0)[-ndim:]}


def sinogram_layer(data, name: str, geometry: Geometry, slice_spacing_mm: float = 1.0,
                   visible: bool = True, **meta) -> tuple:
    """LayerData tuple of a sinogram (V, D) or stack (S, V, D), placed beside the image."""
    data = np.asarray(data, np.float32)
    spacing = sinogram_spacing(geometry, slice_spacing_mm)
    md = {"kind": "sinogram", "units": SINO_UNITS, "geometry": geometry.to_dict(),
          "spacing_mm": spacing, **meta}
    hi = float(np.max(data)) if data.size else 1.0
    return (data, {"name": name, **sinogram_placement(geometry, data.ndim, slice_spacing_mm),
                   "metadata": md, "colormap": "gray", "visible": bool(visible),
                   "contrast_limits": (0.0, hi if hi > 0 else 1.0)}, "image")


def mask_layer(data, name: str, geometry: Geometry, slice_spacing_mm: float = 1.0, **meta) -> tuple:
    """LayerData tuple of a sinogram validity mask: a red tint over the missing part of the
    sinogram (same placement as the sinogram), valid part transparent."""
    data = np.array(data, np.float32)  # a copy: masks may come as read-only broadcast views
    spacing = sinogram_spacing(geometry, slice_spacing_mm)
    md = {"kind": "sinogram_mask", "units": MASK_UNITS, "geometry": geometry.to_dict(),
          "spacing_mm": spacing, **meta}
    return (data, {"name": name, **sinogram_placement(geometry, data.ndim, slice_spacing_mm),
                   "metadata": md, "colormap": MISSING_COLORMAP, "contrast_limits": (0.0, 1.0),
                   "opacity": 0.45, "blending": "translucent"}, "image")


def add_layer(viewer, layer_data: tuple, unique: bool = True):
    """Add a LayerData tuple as a NEW layer (its name made unique); returns the layer. HU
    images get the viewer's current CT window."""
    data, kwargs, kind = layer_data
    kwargs = dict(kwargs)
    if unique:
        kwargs["name"] = unique_name(viewer, kwargs["name"])
    layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
    if is_hu_layer(layer):
        apply_limits(layer, *window_limits(viewer_window(viewer)))
    return layer


def unique_name(viewer, base: str) -> str:
    """``base`` if no layer has that name, else ``base [2]``, ``base [3]``..."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    stem = re.sub(r" \[\d+\]$", "", base)
    k = 2
    while f"{stem} [{k}]" in names:
        k += 1
    return f"{stem} [{k}]"


# -- CT windows -----------------------------------------------------------------------------
class _WindowState:
    """The CT window chosen in one viewer, and the combos showing it."""

    def __init__(self):
        self.name = DEFAULT_WINDOW
        self.combos: list = []  # weak references


_WINDOWS_BY_VIEWER: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _window_state(viewer) -> _WindowState:
    state = _WINDOWS_BY_VIEWER.get(viewer)
    if state is None:
        state = _WINDOWS_BY_VIEWER[viewer] = _WindowState()
    return state


def viewer_window(viewer) -> str:
    """Name of the CT window new HU layers of this viewer open in."""
    return _window_state(viewer).name


def is_hu_layer(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and layer_kind(layer) == "image" and \
        layer.metadata.get("units") == "HU"


def apply_limits(layer, lo: float, hi: float) -> None:
    """Set contrast limits, widening the slider range to hold both the data and the window."""
    r0, r1 = (float(v) for v in layer.contrast_limits_range)
    data = layer.data
    if isinstance(data, np.ndarray) and data.size:
        r0, r1 = min(r0, float(np.nanmin(data))), max(r1, float(np.nanmax(data)))
    layer.contrast_limits_range = (min(r0, lo), max(r1, hi))
    layer.contrast_limits = (lo, hi)


def set_window(viewer, name: str) -> list:
    """Show every HU image layer (and any selected image layer that is not a sinogram or a
    mask) in the named window; later HU layers open in it too. Returns the changed layers."""
    from napari.layers import Image

    lo, hi = window_limits(name)
    state = _window_state(viewer)
    state.name = name
    selected = set(viewer.layers.selection)
    changed = [layer for layer in viewer.layers if is_hu_layer(layer) or (
        layer in selected and isinstance(layer, Image) and layer_kind(layer) == "image")]
    for layer in changed:
        apply_limits(layer, lo, hi)
    alive = []
    for ref in state.combos:
        combo = ref()
        if combo is None:
            continue
        try:
            if combo.value != name:
                with combo.changed.blocked():
                    combo.value = name
        except RuntimeError:  # its Qt widget was deleted
            continue
        alive.append(ref)
    state.combos = alive
    return changed


def window_combo(viewer, label: str = "CT window"):
    """A magicgui ComboBox of the window presets, in sync with the viewer's CT window."""
    from magicgui.widgets import ComboBox

    combo = ComboBox(label=label, choices=[(window_label(n), n) for n in WINDOWS],
                     value=viewer_window(viewer))
    combo.tooltip = "contrast of the HU image layers (and of the selected image layer)"
    combo.changed.connect(lambda name: set_window(viewer, name))
    _window_state(viewer).combos.append(weakref.ref(combo))
    return combo


# -- reading layers back --------------------------------------------------------------------
def layer_kind(layer) -> str:
    return layer.metadata.get("kind", "image")


def layer_geometry(layer) -> Geometry:
    """The scan geometry stored on a layer, or a ValueError saying what to do."""
    d = layer.metadata.get("geometry")
    if d is None:
        raise ValueError(f"layer '{layer.name}' carries no scan geometry; make it with the "
                         "Acquire widget or open a sinogram file with its .json sidecar")
    return geometry_from_dict(d)


def layer_spacing(layer) -> list:
    """[z, y, x] in mm: from metadata, else from the layer scale (z = 1 mm for 2D)."""
    if "spacing_mm" in layer.metadata:
        return [float(s) for s in layer.metadata["spacing_mm"]]
    scale = [float(s) for s in layer.scale]
    return ([1.0] * 3 + scale)[-3:]


def slice_spacing(layer) -> float:
    return layer_spacing(layer)[0]


# -- layer pickers for magicgui containers --------------------------------------------------
def layer_choices(viewer, *kinds, layer_type=None):
    """A magicgui ``choices`` callable: (name, layer) of the viewer's layers of these kinds."""
    from napari.layers import Image

    layer_type = layer_type or Image

    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers
                if isinstance(layer, layer_type) and (not kinds or layer_kind(layer) in kinds)]

    return choices


def connect_layer_events(viewer, container, on_inserted=None) -> None:
    """Keep a container's layer pickers in sync with the viewer's layer list (names too).
    ``on_inserted(layer)`` runs after the pickers were refreshed for a new layer."""

    def refresh(*_):
        try:
            container.reset_choices()
        except RuntimeError:  # the widget was closed and deleted
            pass

    def inserted(event):
        event.value.events.name.connect(refresh)
        if on_inserted is not None:
            try:
                on_inserted(event.value)
            except RuntimeError:  # the widget was closed and deleted
                pass

    events = viewer.layers.events
    for ev in (events.inserted, events.removed, events.moved, events.reordered):
        ev.connect(refresh)
    events.inserted.connect(inserted)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)


def pick(combo, layer) -> None:
    """Choose ``layer`` in a layer picker if it is one of its choices."""
    if any(value is layer or value == layer for value in combo.choices):
        combo.value = layer


# -- docking --------------------------------------------------------------------------------
DOCK_PROPERTY = "napari_lsr_widget"
ARRANGED_PROPERTY = "napari_lsr_arranged"  # on a dock: placed by the caller, leave it alone


def tabify_when_docked(native) -> None:
    """Mark a widget as ours and, once napari has docked it, tabify its dock with the other
    napari-lsr docks in the same area: four stacked docks need ~1400 px of height, tabs fit a
    1366 x 768 laptop screen."""
    from qtpy.QtCore import QTimer

    native.setProperty(DOCK_PROPERTY, True)
    QTimer.singleShot(0, lambda: tabify_with_siblings(native))


def _is_ours(dock) -> bool:
    from qtpy.QtWidgets import QWidget

    inner = dock.widget()
    if inner is None:
        return False
    return bool(inner.property(DOCK_PROPERTY)) or any(
        w.property(DOCK_PROPERTY) for w in inner.findChildren(QWidget))


def tabify_with_siblings(native) -> bool:
    """Tabify the dock holding ``native`` with the first visible napari-lsr dock of the same
    area (if any). Returns True when it did."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    try:
        dock = native.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is None or dock.isFloating() or dock.property(ARRANGED_PROPERTY):
            return False
        main = dock.parentWidget()
        if not isinstance(main, QMainWindow):
            return False
        area = main.dockWidgetArea(dock)
        siblings = [d for d in main.findChildren(QDockWidget)
                    if d is not dock and not d.isFloating() and not d.isHidden()
                    and main.dockWidgetArea(d) == area and _is_ours(d)]
        if not siblings or dock in main.tabifiedDockWidgets(siblings[0]):
            return False
        main.tabifyDockWidget(siblings[0], dock)
        dock.show()
        dock.raise_()
        return True
    except RuntimeError:  # deleted before the timer fired
        return False
