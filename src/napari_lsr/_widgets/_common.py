"""Shared plugin plumbing: layer conventions, layer pickers, names, error reporting.

Layer conventions (every layer the plugin makes, reads or writes):

* ``scale``: mm per pixel along each axis; for sinograms ``(z mm, 1 per view, det mm)``.
* ``metadata["kind"]``: ``"image"`` (HU), ``"sinogram"`` (line integrals), ``"sinogram_mask"``
  (1 = valid, 0 = missing), ``"metal_labels"``.
* ``metadata["units"]``: ``"HU"``, ``"line integral"`` or ``"1 = valid, 0 = missing"``.
* ``metadata["geometry"]``: ``Geometry.to_dict()`` when the layer belongs to a scan.
* ``metadata["spacing_mm"]``: ``[z, y, x]``.

No maths here: everything numeric comes from the library.
"""

from __future__ import annotations

import re

import numpy as np
from napari.utils import notifications

from ..geometry import Geometry, geometry_from_dict

HU_WINDOW = (-1000.0, 1000.0)
SINO_UNITS = "line integral"
MASK_UNITS = "1 = valid, 0 = missing"


def show_error(message: str) -> None:
    """An error notification with the message only (tests replace this function)."""
    notifications.show_error(str(message))


def show_info(message: str) -> None:
    notifications.show_info(str(message))


# -- layer data -----------------------------------------------------------------------------
def _scale(ndim: int, spacing_zyx) -> tuple:
    return tuple(float(s) for s in tuple(spacing_zyx)[-ndim:])


def image_layer(data, name: str, spacing_mm=(1.0, 1.0, 1.0), geometry: Geometry | None = None,
                **meta) -> tuple:
    """LayerData tuple of an HU image (2D or a stack)."""
    spacing = [float(s) for s in spacing_mm]
    md = {"kind": "image", "units": "HU", "spacing_mm": spacing, **meta}
    if geometry is not None:
        md["geometry"] = geometry.to_dict()
    return (np.asarray(data, np.float32), {
        "name": name, "scale": _scale(np.ndim(data), spacing), "metadata": md,
        "colormap": "gray", "contrast_limits": HU_WINDOW}, "image")


def sinogram_spacing(geometry: Geometry, slice_spacing_mm: float = 1.0) -> list:
    return [float(slice_spacing_mm), 1.0, float(geometry.det_spacing_mm)]


def sinogram_layer(data, name: str, geometry: Geometry, slice_spacing_mm: float = 1.0,
                   **meta) -> tuple:
    """LayerData tuple of a sinogram (V, D) or stack (S, V, D)."""
    data = np.asarray(data, np.float32)
    spacing = sinogram_spacing(geometry, slice_spacing_mm)
    md = {"kind": "sinogram", "units": SINO_UNITS, "geometry": geometry.to_dict(),
          "spacing_mm": spacing, **meta}
    hi = float(np.max(data)) if data.size else 1.0
    return (data, {"name": name, "scale": _scale(data.ndim, spacing), "metadata": md,
                   "colormap": "gray", "contrast_limits": (0.0, hi if hi > 0 else 1.0)}, "image")


def mask_layer(data, name: str, geometry: Geometry, slice_spacing_mm: float = 1.0, **meta) -> tuple:
    """LayerData tuple of a sinogram validity mask, shown as a translucent overlay."""
    data = np.array(data, np.float32)  # a copy: masks may come as read-only broadcast views
    spacing = sinogram_spacing(geometry, slice_spacing_mm)
    md = {"kind": "sinogram_mask", "units": MASK_UNITS, "geometry": geometry.to_dict(),
          "spacing_mm": spacing, **meta}
    return (data, {"name": name, "scale": _scale(data.ndim, spacing), "metadata": md,
                   "colormap": "magma", "contrast_limits": (0.0, 1.0), "opacity": 0.4,
                   "blending": "additive"}, "image")


def add_layer(viewer, layer_data: tuple, unique: bool = True):
    """Add a LayerData tuple as a NEW layer (its name made unique); returns the layer."""
    data, kwargs, kind = layer_data
    kwargs = dict(kwargs)
    if unique:
        kwargs["name"] = unique_name(viewer, kwargs["name"])
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


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


def connect_layer_events(viewer, container) -> None:
    """Keep a container's layer pickers in sync with the viewer's layer list (names too)."""

    def refresh(*_):
        try:
            container.reset_choices()
        except RuntimeError:  # the widget was closed and deleted
            pass

    events = viewer.layers.events
    for ev in (events.inserted, events.removed, events.moved, events.reordered):
        ev.connect(refresh)
    events.inserted.connect(lambda event: event.value.events.name.connect(refresh))
    for layer in viewer.layers:
        layer.events.name.connect(refresh)
