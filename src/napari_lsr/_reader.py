"""napari reader: CT volumes (TIFF, NPY, DICOM file or folder) in HU, and sinogram files
(``.npy`` + ``.npy.json`` geometry sidecar, or TIFFs written by this plugin's writer).

All reading is done by :mod:`napari_lsr.data`; this module only turns the results into
napari layer data with ``scale`` in mm and ``metadata`` (units, spacing, geometry)."""

from __future__ import annotations

from pathlib import Path

from .data import read_ct, read_tiff
from .data.sinogram_io import is_sinogram_file, read_sinogram
from .geometry import geometry_from_dict
from ._widgets._common import image_layer, mask_layer, sinogram_layer

_SUFFIXES = (".npy", ".tif", ".tiff", ".dcm", ".dicom")


def _looks_like_dicom_folder(path: Path) -> bool:
    for f in sorted(path.iterdir())[:50]:
        if not f.is_file():
            continue
        if f.suffix.lower() in (".dcm", ".dicom"):
            return True
        try:
            with open(f, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def napari_get_reader(path):
    """Return :func:`read_layers` if we can read ``path`` (or every path of a list), else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    for p in map(Path, paths):
        if p.is_dir():
            if not _looks_like_dicom_folder(p):
                return None
        elif p.suffix.lower() not in _SUFFIXES:
            return None
    return read_layers


def _squeeze(arr):
    return arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr


def read_path(path) -> list:
    """Layer data for one file or folder."""
    path = Path(path)
    if is_sinogram_file(path):
        s = read_sinogram(path)
        layers = []
        maker = sinogram_layer if s.kind == "sinogram" else mask_layer
        layers.append(maker(s.data, path.name.removesuffix(".npy"), s.geometry,
                            s.slice_spacing_mm, source=str(path)))
        if s.mask is not None:
            layers.append(mask_layer(s.mask, path.name.removesuffix(".npy") + " mask",
                                     s.geometry, s.slice_spacing_mm, source=str(path)))
        return layers
    vol = read_tiff(path) if path.suffix.lower() in (".tif", ".tiff") else read_ct(path)
    kind = vol.meta.get("kind")
    name = path.stem if path.is_file() else path.name
    if kind in ("sinogram", "sinogram_mask") and "geometry" in vol.meta:
        geom = geometry_from_dict(vol.meta["geometry"])
        maker = sinogram_layer if kind == "sinogram" else mask_layer
        return [maker(_squeeze(vol.hu), name, geom, vol.spacing_mm[0], source=str(path))]
    geom = geometry_from_dict(vol.meta["geometry"]) if "geometry" in vol.meta else None
    extra = {k: v for k, v in vol.meta.items() if k not in ("geometry", "kind", "units", "name", "spacing_mm")}
    return [image_layer(_squeeze(vol.hu), name, vol.spacing_mm, geom, source=str(path), **extra)]


def read_layers(path) -> list:
    """napari reader function: a list of (data, kwargs, layer_type) tuples."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [layer for p in paths for layer in read_path(p)]
