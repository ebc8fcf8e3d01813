"""Export widget: a corrected image layer -> TIFF stack and/or NPY (+ sidecar) with spacing in
mm, plus a JSON report (geometry, LSR settings, provenance). Existing files are replaced only
after the user confirms; every file is written atomically by the library."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from qtpy.QtWidgets import QMessageBox

from .. import __version__
from ..data import write_tiff
from ..data.sinogram_io import sidecar_path, write_json, write_npy
from ._common import (connect_layer_events, is_hu_layer, layer_choices, layer_spacing, pick,
                      show_error, show_info)
from ._panel import ScrollPanel


def export_paths(base, tiff: bool = True, npy: bool = True) -> list[Path]:
    """The files an export to ``base`` (extension ignored) writes."""
    base = Path(base).expanduser()
    if base.suffix.lower() in (".tif", ".tiff", ".npy", ".json"):
        base = base.with_suffix("")
    out = []
    if tiff:
        out.append(base.with_name(base.name + ".tif"))
    if npy:
        npy_path = base.with_name(base.name + ".npy")
        out += [npy_path, sidecar_path(npy_path)]
    out.append(base.with_name(base.name + ".report.json"))
    return out


def export_layer(layer, base, tiff: bool = True, npy: bool = True,
                 overwrite: bool = False) -> list[Path]:
    """Write an HU image layer (2D or stack) with its spacing and metadata; returns the paths."""
    paths = export_paths(base, tiff, npy)
    if not overwrite:
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist(s)")
    spacing = layer_spacing(layer)
    md = layer.metadata
    meta = {k: md[k] for k in ("geometry", "lsr", "source") if k in md}
    meta["name"] = layer.name
    data = np.asarray(layer.data, np.float32)
    written = []
    if tiff:
        written.append(write_tiff(paths[0], data, spacing, metadata=meta, overwrite=True))
    if npy:
        npy_path = paths[1 if tiff else 0]
        written += write_npy(npy_path, data, {"spacing_mm": spacing, "units": "HU", **meta},
                             overwrite=True)
    report = {
        "layer": layer.name, "units": md.get("units", "HU"), "shape": list(data.shape),
        "spacing_mm": spacing, "geometry": md.get("geometry"), "lsr": md.get("lsr"),
        "hu_min": float(data.min()), "hu_max": float(data.max()),
        "files": [p.name for p in written],
        "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "napari_lsr_version": __version__,
    }
    written.append(write_json(paths[-1], report, overwrite=True))
    return written


class ExportWidget(ScrollPanel):
    """Export the corrected stack (TIFF and NPY) with a JSON report."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.layer = ComboBox(label="image (HU)", choices=layer_choices(napari_viewer, "image"))
        self.path = FileEdit(label="file name", mode="w", value=Path.home() / "lsr_corrected")
        self.tiff = CheckBox(text="TIFF stack (.tif)", value=True)
        self.npy = CheckBox(text="NumPy (.npy + .json)", value=True)
        self.export_button = PushButton(text="Export")
        self.form = Container(widgets=[self.layer, self.path, self.tiff, self.npy,
                                       self.export_button])
        self.add(self.form)
        self.add_stretch()
        self.export_button.clicked.connect(self.export)
        connect_layer_events(napari_viewer, self.form, self._layer_inserted)

    def reset_choices(self, *_):
        self.form.reset_choices()

    def _layer_inserted(self, layer):
        """A new LSR-corrected image becomes the one to export (the latest one wins)."""
        if is_hu_layer(layer) and "lsr" in layer.metadata and not layer.metadata.get("preview"):
            pick(self.layer, layer)

    def confirm_overwrite(self, existing: list[str]) -> bool:
        """Ask before replacing files (tests replace this method)."""
        answer = QMessageBox.question(
            self, "Replace files?",
            "These files exist already:\n" + "\n".join(existing) + "\n\nReplace them?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def export(self):
        """Export; returns the written paths ([] when nothing was written)."""
        layer = self.layer.value
        if layer is None:
            show_error("choose the image layer to export")
            return []
        if not (self.tiff.value or self.npy.value):
            show_error("choose at least one format (TIFF or NPY)")
            return []
        paths = export_paths(self.path.value, self.tiff.value, self.npy.value)
        existing = [str(p) for p in paths if p.exists()]
        if existing and not self.confirm_overwrite(existing):
            show_info("export cancelled; nothing was written")
            return []
        try:
            written = export_layer(layer, self.path.value, self.tiff.value, self.npy.value,
                                   overwrite=True)
        except (OSError, ValueError, TypeError) as e:
            show_error(f"export failed: {e}")
            return []
        show_info(f"exported {', '.join(p.name for p in written)}")
        return written
