"""Mask widget: an HU threshold on the (uncorrected) reconstruction gives a Labels layer the
user can paint; the sinogram validity mask (1 = valid) is recomputed from the edited labels
on demand or live while painting.

The maths is the library's: ``masks.metal_image_mask`` (threshold + dilation) and
``masks.labels_to_sinogram_mask`` (forward projection of the labels, dilated trace)."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, PushButton, SpinBox
from napari.layers import Labels
from qtpy.QtCore import QTimer

from .. import masks
from ._common import (add_layer, connect_layer_events, is_hu_layer, layer_choices,
                      layer_geometry, layer_spacing, mask_layer, pick, show_error, unique_name)
from ._panel import ScrollPanel


class MaskWidget(ScrollPanel):
    """Threshold -> paintable metal labels -> sinogram mask."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.recon = ComboBox(label="reconstruction (HU)",
                              choices=layer_choices(napari_viewer, "image"))
        self.threshold = FloatSlider(label="metal threshold (HU)", min=0.0, max=10000.0,
                                     step=50.0, value=2500.0)
        self.dilation_px = SpinBox(label="dilation (pixels)", min=0, max=20, value=1)
        self.threshold_button = PushButton(text="Threshold -> labels")
        self.labels_layer = ComboBox(label="metal labels", choices=layer_choices(
            napari_viewer, layer_type=Labels))
        self.dilation_bins = SpinBox(label="trace dilation (bins)", min=0, max=20, value=1)
        self.live = CheckBox(text="update mask while painting", value=True)
        self.mask_button = PushButton(text="Labels -> sinogram mask")
        self.form = Container(widgets=[self.recon, self.threshold, self.dilation_px,
                                       self.threshold_button, self.labels_layer,
                                       self.dilation_bins, self.live, self.mask_button])
        self.add(self.form)
        self.add_stretch()
        self.threshold_button.clicked.connect(self.make_labels)
        self.mask_button.clicked.connect(lambda: self.update_mask())
        self.labels_layer.changed.connect(self._watch_labels)
        self._watched = None
        self._mask_layers = {}  # id(labels layer) -> the mask layer made from it
        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(lambda: self.update_mask(quiet=True))
        connect_layer_events(napari_viewer, self.form, self._layer_inserted)

    def reset_choices(self, *_):
        self.form.reset_choices()

    def _layer_inserted(self, layer):
        """The uncorrected reconstruction of a metal scan becomes the one to threshold."""
        if is_hu_layer(layer) and layer.metadata.get("case") == "metal":
            pick(self.recon, layer)

    # -- threshold -> labels ----------------------------------------------------------------
    def make_labels(self):
        """New Labels layer (1 = metal) from the threshold; also computes its sinogram mask."""
        layer = self.recon.value
        if layer is None:
            show_error("choose the reconstruction (an image layer in HU) to threshold")
            return None
        try:
            geom = layer_geometry(layer)
            geom.check_image_shape(layer.data.shape, f"layer '{layer.name}'")
            metal = masks.metal_image_mask(np.asarray(layer.data), self.threshold.value,
                                           self.dilation_px.value)
        except ValueError as e:
            show_error(str(e))
            return None
        md = {"kind": "metal_labels", "geometry": geom.to_dict(),
              "spacing_mm": layer_spacing(layer), "source": layer.name,
              "threshold_hu": float(self.threshold.value), "dilation_px": self.dilation_px.value}
        labels = self.viewer.add_labels(metal.astype(np.uint8),
                                        name=unique_name(self.viewer, f"{layer.name} metal labels"),
                                        scale=layer.scale, metadata=md, opacity=0.5)
        labels.mode = "paint"
        self.reset_choices()
        self.labels_layer.value = labels
        self.update_mask()
        return labels

    # -- labels -> sinogram mask ------------------------------------------------------------
    def _watch_labels(self, labels):
        if self._watched is not None:
            for ev in (self._watched.events.paint, self._watched.events.data):
                ev.disconnect(self._schedule)
        self._watched = labels
        if labels is not None:
            labels.events.paint.connect(self._schedule)
            labels.events.data.connect(self._schedule)

    def _schedule(self, *_):
        if self.live.value:
            self._debounce.start()

    def update_mask(self, quiet: bool = False):
        """(Re)compute the sinogram mask of the chosen labels; updates the mask layer made
        from these labels before, else adds a new one. Returns the mask layer."""
        labels = self.labels_layer.value
        if labels is None:
            if not quiet:
                show_error("choose (or make) a Labels layer that marks the metal")
            return None
        try:
            geom = layer_geometry(labels) if "geometry" in labels.metadata else \
                layer_geometry(self.recon.value)
            sino_mask = masks.labels_to_sinogram_mask(np.asarray(labels.data), geom,
                                                      self.dilation_bins.value)
        except (ValueError, AttributeError) as e:
            show_error(str(e) if isinstance(e, ValueError) else
                       "the labels carry no geometry: choose the reconstruction they belong to")
            return None
        spacing = layer_spacing(labels)[0]
        layer = self._mask_layers.get(id(labels))
        if layer is not None and layer in self.viewer.layers and layer.data.shape == sino_mask.shape:
            layer.data = sino_mask
            return layer
        layer = add_layer(self.viewer, mask_layer(sino_mask, f"{labels.name} sinogram mask", geom,
                                                  spacing, source=labels.name,
                                                  dilation_bins=self.dilation_bins.value))
        self._mask_layers[id(labels)] = layer
        return layer
