"""napari writers: an image layer to a TIFF stack or NPY (+ JSON sidecar) with spacing in mm,
units and the scan geometry. Sinogram layers keep their geometry so the reader can open them
again as sinograms. Writes are atomic (library functions). napari's save dialog asks before
replacing a file, so these writers replace existing files; the Export widget asks itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import write_tiff
from .data.sinogram_io import write_npy, write_sinogram
from .geometry import geometry_from_dict

_KEEP = ("kind", "units", "geometry", "source", "lsr")


def _spacing(attributes: dict) -> list:
    md = attributes.get("metadata") or {}
    if "spacing_mm" in md:
        return [float(s) for s in md["spacing_mm"]]
    scale = [float(s) for s in attributes.get("scale", (1.0, 1.0))]
    return ([1.0] * 3 + scale)[-3:]


def _metadata(attributes: dict) -> dict:
    md = attributes.get("metadata") or {}
    out = {k: md[k] for k in _KEEP if k in md}
    out["name"] = attributes.get("name", "")
    return out


def write_tiff_layer(path: str, data, attributes: dict) -> list[str]:
    """Image layer -> ImageJ TIFF stack (float32) with spacing and our JSON metadata."""
    spacing = _spacing(attributes)
    meta = _metadata(attributes)
    meta.setdefault("units", "HU")
    out = write_tiff(path, np.asarray(data), spacing, metadata=meta, overwrite=True)
    return [str(out)]


def write_npy_layer(path: str, data, attributes: dict) -> list[str]:
    """Image layer -> ``.npy`` + ``.npy.json`` sidecar (spacing, units, geometry)."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        path = path.with_name(path.name + ".npy")
    meta = _metadata(attributes)
    if meta.get("kind") in ("sinogram", "sinogram_mask") and "geometry" in meta:
        geom = geometry_from_dict(meta.pop("geometry"))
        kind = meta.pop("kind")
        meta.pop("units", None)
        files = write_sinogram(path, data, geom, slice_spacing_mm=_spacing(attributes)[0],
                               metadata=meta, overwrite=True, kind=kind)
    else:
        meta.setdefault("units", "HU")
        files = write_npy(path, np.asarray(data, np.float32),
                          {"spacing_mm": _spacing(attributes), **meta}, overwrite=True)
    return [str(files[0])]
