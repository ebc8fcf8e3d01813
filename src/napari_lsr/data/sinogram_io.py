"""Sinogram files: a NumPy ``.npy`` array plus a JSON sidecar that carries the geometry.

A sinogram file ``scan.npy`` (float32, ``(views, detector)`` or ``(slices, views, detector)``,
line integrals of mu with lengths in mm) has the sidecar ``scan.npy.json``::

    {"kind": "sinogram", "units": "line integral", "geometry": {...},
     "spacing_mm": [z, 1.0, det_spacing_mm], "mask_file": "scan.mask.npy", ...}

``kind`` is ``"sinogram"`` or ``"sinogram_mask"`` (1 = valid, 0 = missing/corrupt). The
optional mask is stored beside the sinogram as ``<stem>.mask.npy`` with its own sidecar, so
either file can be read alone. ``spacing_mm`` follows :func:`napari_lsr.data.read_npy`'s
sidecar convention (the view axis has no length; it is given as 1.0).

Volumes in HU can be written as ``.npy`` with the same sidecar convention by
:func:`write_npy`. Every write is atomic (temporary file in the same folder, then
``os.replace``), gives the file the mode the user's umask allows (not mkstemp's 0600) and
refuses to replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import Geometry, geometry_from_dict
from .readers import apply_umask

__all__ = ["Sinogram", "write_npy", "write_json", "write_sinogram", "read_sinogram",
           "sidecar_path", "read_sidecar", "is_sinogram_file", "SINOGRAM_UNITS"]

SINOGRAM_UNITS = "line integral"
_KINDS = ("sinogram", "sinogram_mask")


@dataclass
class Sinogram:
    """A sinogram stack read from disk: ``data`` float32 (S, V, D) or (V, D), its geometry,
    the slice distance in mm, the validity mask (or None) and the sidecar content."""

    data: np.ndarray
    geometry: Geometry
    kind: str = "sinogram"
    slice_spacing_mm: float = 1.0
    mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def sidecar_path(path) -> Path:
    """``scan.npy`` -> ``scan.npy.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path) -> dict | None:
    """The JSON sidecar of ``path`` as a dict, or None when there is none (or it is unreadable)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_sinogram_file(path) -> bool:
    """True for a ``.npy`` file whose sidecar says it is a sinogram (or sinogram mask)."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        return False
    info = read_sidecar(path)
    return bool(info) and info.get("kind") in _KINDS and "geometry" in info


def _atomic(path: Path, write, overwrite: bool, suffix: str) -> Path:
    """Call ``write(tmp_path)`` then move it to ``path`` in one step."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: folder does not exist")
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path, obj: dict, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    try:
        text = json.dumps(obj, indent=2)
    except TypeError as e:
        raise TypeError(f"{path}: content must be JSON-serialisable ({e})") from e

    def write(tmp):
        Path(tmp).write_text(text + "\n")

    return _atomic(Path(path), write, overwrite, ".json")


def write_npy(path, array, sidecar: dict | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``array`` as ``.npy`` (plus ``<file>.json`` when ``sidecar`` is given), atomically.

    Both targets are checked before anything is written, so a refused overwrite leaves no
    partial result. Returns the written paths."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: a NumPy file must end with .npy")
    targets = [path] + ([sidecar_path(path)] if sidecar is not None else [])
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); choose another name or "
                              "allow overwriting")
    if sidecar is not None:
        json.dumps(sidecar)  # fail before writing anything
    arr = np.ascontiguousarray(array)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)

    out = [_atomic(path, write, True, ".npy")]
    if sidecar is not None:
        out.append(write_json(sidecar_path(path), sidecar, overwrite=True))
    return out


def _mask_path(path: Path) -> Path:
    name = path.name[:-4] if path.name.lower().endswith(".npy") else path.name
    return path.with_name(name + ".mask.npy")


def _sidecar(kind: str, geometry: Geometry, slice_spacing_mm: float, metadata: dict | None):
    return {**(metadata or {}), "kind": kind,
            "units": SINOGRAM_UNITS if kind == "sinogram" else "1 = valid, 0 = missing",
            "geometry": geometry.to_dict(),
            "spacing_mm": [float(slice_spacing_mm), 1.0, float(geometry.det_spacing_mm)]}


def write_sinogram(path, sinogram, geometry: Geometry, mask=None, slice_spacing_mm: float = 1.0,
                   metadata: dict | None = None, overwrite: bool = False,
                   kind: str = "sinogram") -> list[Path]:
    """Write a sinogram (V, D) or stack (S, V, D) with its geometry sidecar; with ``mask``
    also ``<stem>.mask.npy`` (+ sidecar). ``kind="sinogram_mask"`` writes a mask alone.
    Returns the written paths (data files first)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    path = Path(path).expanduser()
    data = np.asarray(sinogram, dtype=np.float32)
    geometry.check_sinogram_shape(data.shape, kind)
    if data.ndim > 3:
        raise ValueError(f"{kind} must be (views, detector) or (slices, views, detector), "
                         f"got shape {data.shape}")
    files = [(path, data, kind)]
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        geometry.check_sinogram_shape(m.shape, "mask")
        files.append((_mask_path(path), m, "sinogram_mask"))
    targets = [p for f, _, _ in files for p in (f, sidecar_path(f))]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); choose another name or "
                              "allow overwriting")
    out = []
    for f, arr, k in files:
        side = _sidecar(k, geometry, slice_spacing_mm, metadata)
        if k == "sinogram" and mask is not None:
            side["mask_file"] = _mask_path(path).name
        out += write_npy(f, arr, side, overwrite=True)
    return out


def read_sinogram(path) -> Sinogram:
    """Read a sinogram (or sinogram mask) file written by :func:`write_sinogram`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    info = read_sidecar(path)
    if not info or info.get("kind") not in _KINDS or "geometry" not in info:
        raise ValueError(f"{path}: no sinogram sidecar {sidecar_path(path).name} with 'kind' "
                         "and 'geometry'; is this a CT image rather than a sinogram?")
    geom = geometry_from_dict(info["geometry"])
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds
        raise ValueError(f"{path}: not a readable NumPy .npy array ({e})") from e
    geom.check_sinogram_shape(data.shape, f"{path.name}")
    spacing = info.get("spacing_mm") or [1.0]
    mask = None
    if info.get("mask_file"):
        mpath = path.with_name(info["mask_file"])
        if mpath.is_file():
            mask = np.load(mpath, allow_pickle=False).astype(np.float32)
            geom.check_sinogram_shape(mask.shape, mpath.name)
    return Sinogram(data.astype(np.float32, copy=False), geom, info["kind"], float(spacing[0]),
                    mask, info)
