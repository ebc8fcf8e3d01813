"""CT readers and writer: NPY, TIFF (ImageJ-compatible) and DICOM, always to HU volumes.

Every reader returns a :class:`CTVolume`: ``hu`` float32 ``(slices, H, W)`` in HU and
``spacing_mm`` ``(z, y, x)`` in mm. Where a file carries no spacing, 1.0 mm is used and
``meta["spacing_assumed"]`` is True. Errors say what is wrong and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".tif", ".tiff")
_UNIT_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "centimeter": 10.0, "m": 1000.0,
            "um": 1e-3, "µm": 1e-3, "\\u00B5m": 1e-3, "micron": 1e-3, "microns": 1e-3}


@dataclass
class CTVolume:
    """A CT volume: ``hu`` float32 (slices, H, W) in HU, ``spacing_mm`` (z, y, x) in mm."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    source: str
    meta: dict = field(default_factory=dict)


# -- helpers --------------------------------------------------------------------------------
def _existing(path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return path


def _spacing3(spacing, what) -> tuple[float, float, float]:
    """A scalar (isotropic), (y, x) (z = 1 mm) or (z, y, x) spacing -> validated 3-tuple."""
    s = np.atleast_1d(np.asarray(spacing, dtype=float)).ravel()
    if s.size == 1:
        s = np.repeat(s, 3)
    elif s.size == 2:
        s = np.r_[1.0, s]
    if s.size != 3 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"{what}: spacing_mm must be positive (z, y, x) in mm, got {spacing!r}")
    return tuple(float(v) for v in s)


KINDS = ("image", "sinogram", "mask")


def kind_from_units(units) -> str:
    """'sinogram' for line integrals, 'mask' for a validity mask, else 'image' (HU)."""
    u = str(units or "").strip().lower()
    if u.startswith("line integral"):
        return "sinogram"
    if u.startswith("1 = valid"):
        return "mask"
    return "image"


def _nonfinite_advice(kind: str) -> str:
    if kind == "sinogram":
        return ("mark those rays missing (0) in the validity mask (napari-lsr correct accepts "
                "NaN/inf where the mask is 0), or replace them, e.g. np.nan_to_num(a, nan=0.0) "
                "(a ray through air has line integral 0)")
    if kind == "mask":
        return "a validity mask holds only 1 (valid) and 0 (missing)"
    return "replace them first, e.g. np.nan_to_num(a, nan=-1000.0) (air is -1000 HU)"


def _as_volume(arr, what: str, kind: str = "image", rgb: bool = False,
               allow_nonfinite: bool = False) -> tuple[np.ndarray, dict]:
    """(H, W) or (N, H, W) numeric array -> float32 (N, H, W).

    A trailing colour axis of 3 or 4 is accepted only when ``rgb`` is True (a TIFF whose
    photometric interpretation says RGB(A)); its first three channels are averaged and the
    choice is recorded in the returned meta. Any other 4-D array is refused. ``kind``
    ("image" in HU, "sinogram" of line integrals or "mask") decides the advice for NaN/inf
    and whether the HU range is checked; ``allow_nonfinite`` lets NaN/inf through (a
    sinogram whose missing part the mask marks).
    """
    arr = np.asarray(arr)
    meta = {}
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    if rgb and arr.ndim in (3, 4) and arr.shape[-1] in (3, 4):
        c = arr.shape[-1]
        arr = arr[..., :3].astype(np.float32).mean(-1)
        meta["channels"] = f"averaged the RGB channels of an RGB{'A' if c == 4 else ''} image"
        log.warning("%s: RGB%s image; its colour channels were averaged", what, "A" if c == 4 else "")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        extra = (" A trailing colour axis (3 or 4) is accepted only from a TIFF that says it is "
                 "RGB(A); save one volume (or one channel, e.g. a[..., 0]) per file."
                 if arr.ndim == 4 else "")
        raise ValueError(f"{what}: shape {arr.shape} is not an image (H, W) or a stack "
                         f"(slices, H, W).{extra}")
    if min(arr.shape) == 0:
        raise ValueError(f"{what}: the array is empty (shape {arr.shape})")
    hu = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(hu)
    if bad.any() and not allow_nonfinite:
        raise ValueError(f"{what}: {int(bad.sum())} NaN/inf values; {_nonfinite_advice(kind)}")
    fin = hu[~bad] if bad.any() else hu
    if kind == "image" and fin.size and float(fin.max() - fin.min()) < 10.0:
        log.warning("%s: values span only [%g, %g]; expected HU (air -1000, water 0) - "
                    "is the image normalised?", what, float(fin.min()), float(fin.max()))
    return hu, meta


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: sidecar JSON is not readable: {e}") from e


# -- NPY ------------------------------------------------------------------------------------
def _kind_of(info: dict, kind) -> str:
    """The caller's ``kind``, else what a file's metadata says, else 'image'."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return kind
    if info.get("kind") == "sinogram_mask":
        return "mask"
    if info.get("kind") == "sinogram":
        return "sinogram"
    return kind_from_units(info.get("units"))


def read_npy(path, spacing_mm=None, kind=None, allow_nonfinite: bool = False) -> CTVolume:
    """Read a ``.npy`` array: (H, W) or (N, H, W) (see ``_as_volume``; 4-D is refused).

    Spacing: ``spacing_mm`` if given, else a sidecar ``<file>.json`` (``vol.npy.json`` or
    ``vol.json``) with ``{"spacing_mm": [z, y, x]}``, else 1.0 mm (``spacing_assumed``).
    ``kind`` ("image" in HU, "sinogram", "mask"; default: from the sidecar, else "image")
    chooses the checks and advice; ``allow_nonfinite`` accepts NaN/inf (a sinogram's
    missing part).
    """
    path = _existing(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds
        raise ValueError(f"{path}: not a readable NumPy .npy array ({e})") from e
    meta, side_spacing = {}, None
    for side in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if side.is_file():
            info = _read_json(side)
            meta.update({k: v for k, v in info.items() if k != "spacing_mm"})
            side_spacing = info.get("spacing_mm")
            meta["sidecar"] = str(side)
            break
    hu, vmeta = _as_volume(arr, str(path), _kind_of(meta, kind), allow_nonfinite=allow_nonfinite)
    meta.update(vmeta)
    if spacing_mm is None:
        spacing_mm = side_spacing
    meta["spacing_assumed"] = spacing_mm is None
    spacing = _spacing3(1.0 if spacing_mm is None else spacing_mm, str(path))
    return CTVolume(hu, spacing, str(path), meta)


# -- TIFF -----------------------------------------------------------------------------------
def _tiff_spacing(tf, info: dict):
    """Spacing (z, y, x) mm from our JSON, else ImageJ spacing + resolution; None if absent."""
    if "spacing_mm" in info:
        return info["spacing_mm"]
    ij = tf.imagej_metadata or {}
    scale = _UNIT_MM.get(str(ij.get("unit", "")).strip().lower())
    if scale is None:
        return None
    tags = tf.pages[0].tags
    yx = []
    for name in ("YResolution", "XResolution"):
        tag = tags.get(name)
        if tag is None:
            return None
        num, den = tag.value
        if num == 0:
            return None
        yx.append(den / num * scale)
    return [float(ij.get("spacing", 1.0)) * scale, *yx]


def read_tiff(path, kind=None, allow_nonfinite: bool = False) -> CTVolume:
    """Read a TIFF stack (tifffile): (H, W) or (slices, H, W); an RGB(A) TIFF (photometric
    RGB, colour samples last) is averaged over its colour channels, any other 4-D data is
    refused. Spacing from our JSON (written by ``write_tiff``, in the ImageJ ``Info``
    property or the image description), else from ImageJ metadata (``spacing`` +
    resolution, unit mm/cm/um), else 1.0 mm (``spacing_assumed``). ``kind`` and
    ``allow_nonfinite`` as for :func:`read_npy` (default kind: from the stored units)."""
    import tifffile

    path = _existing(path)
    try:
        with tifffile.TiffFile(path) as tf:
            arr = tf.asarray()
            axes = tf.series[0].axes
            page = tf.pages[0]
            rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and axes.endswith("S")
            info = {}
            ij = tf.imagej_metadata or {}
            for text in (ij.get("Info"), page.description):
                try:
                    cand = json.loads(text) if text else None
                except ValueError:
                    cand = None
                if isinstance(cand, dict) and "spacing_mm" in cand:
                    info = cand
                    break
            spacing = _tiff_spacing(tf, info)
    except (tifffile.TiffFileError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable TIFF file ({e})") from e
    kind = _kind_of(info, kind)
    what = str(path) if arr.ndim != 4 else f"{path} (TIFF axes {axes})"
    hu, meta = _as_volume(arr, what, kind, rgb=rgb, allow_nonfinite=allow_nonfinite)
    meta.update({k: v for k, v in info.items() if k != "spacing_mm"})
    meta["spacing_assumed"] = spacing is None
    if kind == "image" and info.get("units", "HU") != "HU":
        log.warning("%s: stored units are %r, not HU", path, info["units"])
    return CTVolume(hu, _spacing3(1.0 if spacing is None else spacing, str(path)),
                    str(path), meta)


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask(path) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open`` would
    have given it: 0666 minus the user's umask."""
    os.chmod(path, 0o666 & ~_umask())


def write_tiff(path, hu, spacing_mm, metadata: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write HU (H, W) or (slices, H, W) as a float32 ImageJ-compatible TIFF stack.

    ImageJ sees the calibration (resolution = 1/spacing per mm, unit 'mm', 'spacing' = z);
    our JSON ``{"spacing_mm": [z, y, x], "units": "HU", **metadata}`` goes into the ImageJ
    ``Info`` property and is what ``read_tiff`` prefers (``metadata["units"]`` may say
    "line integral" for a sinogram). Written atomically (temp file in the same folder, then
    ``os.replace``) with the mode the user's umask gives; an existing file is kept unless
    ``overwrite=True``.
    """
    import tifffile

    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'out.tif'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) "
                              "to replace it, or choose another name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: folder does not exist")
    kind = kind_from_units((metadata or {}).get("units", "HU"))
    vol, _ = _as_volume(hu, f"write_tiff {path.name}", kind)
    z, y, x = _spacing3(spacing_mm, "write_tiff")
    desc = {"spacing_mm": [z, y, x], "units": "HU", **(metadata or {})}
    try:
        info = json.dumps(desc)
    except TypeError as e:
        raise TypeError(f"write_tiff: metadata must be JSON-serialisable ({e})") from e
    fd, tmp = tempfile.mkstemp(suffix=".tif", prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, vol, imagej=True, resolution=(1.0 / x, 1.0 / y),
                         metadata={"spacing": z, "unit": "mm", "axes": "ZYX", "Info": info})
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- DICOM ----------------------------------------------------------------------------------
def _pydicom():
    try:
        import pydicom
    except ImportError as e:
        raise ImportError("reading DICOM needs pydicom; install the extra: "
                          "pip install 'napari-lsr[dicom]'") from e
    return pydicom


def _dcm_header(pydicom, f: Path):
    """Header of a DICOM file, or None if it is not one."""
    try:
        return pydicom.dcmread(f, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - InvalidDicomError, OSError, struct errors ...
        if f.suffix.lower() != ".dcm":
            return None
    try:  # a .dcm file without preamble
        return pydicom.dcmread(f, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001
        return None


def _group_item(ds, seq: str):
    """First item of a functional-group sequence (shared, then per-frame 0) or ds itself."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(groups) or []:
            if seq in item:
                return item[seq].value[0]
    return ds


def _frames(ds, f: Path):
    """Decoded HU frames (F, H, W) of one dataset, with positions or None."""
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing decoders raise RuntimeError etc.
        raise ValueError(f"{f}: cannot decode pixel data ({ds.file_meta.TransferSyntaxUID.name}"
                         f"): {e}. Compressed DICOM needs pip install 'napari-lsr[dicom]' "
                         "(pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg)") from e
    tr = _group_item(ds, "PixelValueTransformationSequence")
    slope = float(tr.get("RescaleSlope", 1.0) or 1.0)
    inter = float(tr.get("RescaleIntercept", 0.0) or 0.0)
    hu = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    hu = hu.reshape(nf, *hu.shape[-2:]) if hu.ndim == 3 or nf > 1 else hu[None]
    pos = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for k in range(nf):
        item = per_frame[k] if k < len(per_frame) else None
        p = None
        if item is not None and "PlanePositionSequence" in item:
            p = item.PlanePositionSequence[0].get("ImagePositionPatient")
        elif nf == 1:
            p = ds.get("ImagePositionPatient")
        pos.append(None if p is None else np.asarray(p, float))
    return hu, pos, str(tr.get("RescaleType", "") or "")


def read_dicom_series(path) -> CTVolume:
    """Read one DICOM CT file or a folder holding a series (files of the majority
    SeriesInstanceUID). Slices are sorted along the slice normal by ImagePositionPatient
    (fallback InstanceNumber), rescaled to HU (RescaleSlope/Intercept, also from enhanced-CT
    functional groups); spacing: PixelSpacing (row, col) and the slice distance from the
    positions (fallback SpacingBetweenSlices, SliceThickness, 1 mm). Pixel values are kept
    as stored (padding such as -3024 outside the scan field is not altered)."""
    pydicom = _pydicom()
    path = _existing(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if path.is_dir() else [path]
    headers = [(f, h) for f in files if (h := _dcm_header(pydicom, f)) is not None]
    headers = [(f, h) for f, h in headers if "PixelData" in h or "Rows" in h]
    if not headers:
        what = "folder contains no DICOM image files" if path.is_dir() else \
            "is not a DICOM image file"
        raise ValueError(f"{path}: {what}; expected CT DICOM (.dcm) files of one series")
    series = Counter(str(h.get("SeriesInstanceUID", "")) for _, h in headers)
    uid, _ = series.most_common(1)[0]
    skipped = len(headers) - series[uid]
    if skipped:
        log.warning("%s: %d file(s) of other series ignored", path, skipped)
    headers = [(f, h) for f, h in headers if str(h.get("SeriesInstanceUID", "")) == uid]
    modality = str(headers[0][1].get("Modality", ""))
    if modality != "CT":
        raise ValueError(f"{path}: DICOM Modality is {modality or 'missing'!r}, not 'CT'; "
                         "LSR needs CT images in Hounsfield units")

    first = pydicom.dcmread(headers[0][0])
    orient = _group_item(first, "PlaneOrientationSequence").get("ImageOrientationPatient")
    normal = np.cross(*np.asarray(orient, float).reshape(2, 3)) if orient else None
    slices, keys, rtypes = [], [], set()
    for i, (f, _) in enumerate(headers):
        ds = first if i == 0 else pydicom.dcmread(f)
        hu, pos, rtype = _frames(ds, f)
        rtypes.add(rtype)
        inst = float(ds.get("InstanceNumber", i) or i)
        for k, frame in enumerate(hu):
            p = pos[k]
            keys.append((float(p @ normal) if p is not None and normal is not None else None,
                         inst + k / len(hu), i))
            slices.append(frame)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ValueError(f"{path}: slices have different sizes {sorted(shapes)}; "
                         "put one series per folder")
    by_pos = all(k[0] is not None for k in keys)
    order = sorted(range(len(keys)), key=lambda j: keys[j][0] if by_pos else keys[j][1:])
    hu = np.stack([slices[j] for j in order])

    meas = _group_item(first, "PixelMeasuresSequence")
    pix = meas.get("PixelSpacing") or first.get("PixelSpacing")
    meta = {"modality": modality, "n_files": len(headers), "series_uid": uid,
            "skipped_files": skipped, "sorted_by": "position" if by_pos else "instance",
            "series_description": str(first.get("SeriesDescription", "")),
            "body_part": str(first.get("BodyPartExamined", "")),
            "orientation": [float(v) for v in orient] if orient else None,
            "rescale_type": "/".join(sorted(r for r in rtypes if r)) or None}
    dz = None
    if by_pos and len(keys) > 1:
        d = np.diff(sorted(k[0] for k in keys))
        dz = float(np.median(d))
        if dz > 0 and np.ptp(d) > 0.1 * dz:
            meta["non_uniform_spacing"] = True
            log.warning("%s: slice distances vary (%g..%g mm); using the median %g mm",
                        path, d.min(), d.max(), dz)
    if not dz:
        dz = first.get("SpacingBetweenSlices") or meas.get("SliceThickness") \
            or first.get("SliceThickness")
    meta["spacing_assumed"] = pix is None or not dz
    spacing = _spacing3([float(dz or 1.0), *(pix if pix else (1.0, 1.0))], str(path))
    return CTVolume(hu, spacing, str(path), meta)


# -- dispatch -------------------------------------------------------------------------------
def read_ct(path) -> CTVolume:
    """Read a CT volume in HU from ``.npy``, ``.tif``/``.tiff``, a DICOM file or a folder of
    DICOM files."""
    path = _existing(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if suffix == ".npy":
        return read_npy(path)
    if suffix in _TIFF_SUFFIXES:
        return read_tiff(path)
    with open(path, "rb") as fh:
        head = fh.read(132)
    if suffix in (".dcm", ".dicom", "") or head[128:132] == b"DICM":
        return read_dicom_series(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; napari-lsr reads .npy, "
                     ".tif/.tiff, DICOM files (.dcm) and folders of DICOM files")


# -- resampling and bundled real CT ---------------------------------------------------------
def resample_slices(hu, spacing_yx_mm, target_pixel_mm: float, target_size: int) -> np.ndarray:
    """Resample (H, W) or (slices, H, W) in-plane to ``target_pixel_mm`` (bilinear, Gaussian
    anti-aliasing when shrinking), then centre-crop or pad with -1000 HU (air) to
    ``target_size`` x ``target_size``. Returns float32."""
    from skimage.transform import rescale

    hu = np.asarray(hu, np.float32)
    if hu.ndim not in (2, 3):
        raise ValueError(f"resample_slices expects (H, W) or (slices, H, W), got {hu.shape}")
    sy, sx = (float(s) for s in np.broadcast_to(np.asarray(spacing_yx_mm, float), (2,)))
    if min(sy, sx, target_pixel_mm) <= 0 or target_size < 1:
        raise ValueError("spacing, target_pixel_mm and target_size must be positive")
    f = (sy / target_pixel_mm, sx / target_pixel_mm)
    vol = hu if hu.ndim == 3 else hu[None]
    if not np.allclose(f, 1.0):
        vol = rescale(vol, (1.0, *f), order=1, anti_aliasing=min(f) < 1.0, mode="edge",
                      preserve_range=True).astype(np.float32)
    out = np.full((vol.shape[0], target_size, target_size), -1000.0, np.float32)
    src, dst = [], []
    for n in vol.shape[1:]:
        c = min(n, target_size)
        s0, d0 = (n - c) // 2, (target_size - c) // 2
        src.append(slice(s0, s0 + c))
        dst.append(slice(d0, d0 + c))
    out[:, dst[0], dst[1]] = vol[:, src[0], src[1]]
    return out if hu.ndim == 3 else out[0]


def _display_orientation(hu, orient):
    """Flip slices so rows run anterior -> posterior and columns patient right -> left."""
    if orient is None:
        return hu
    row, col = np.asarray(orient, float).reshape(2, 3)
    if row[0] < 0:
        hu = hu[..., ::-1]
    if col[1] < 0:
        hu = hu[..., ::-1, :]
    return hu


def real_ct_slices(target_pixel_mm: float = 1.5, target_size: int = 256):
    """Real CT slices available offline, as ``[(name, hu float32 (size, size)), ...]``.

    Sources: pydicom's ``CT_small.dcm`` and the CT files of the ``pydicom-data`` package
    (``data_store/data``), decoded with pylibjpeg where compressed. Skipped (logged): files
    that cannot be decoded, non-CT files, non-HU rescale types, lossy-compressed copies
    (LossyImageCompression = 01) and duplicates (same image within 1 HU).
    Slices are flipped to display orientation (anterior up), values below -1000 HU (padding
    outside the scan field) set to -1000, and resampled with :func:`resample_slices`.
    """
    pydicom = _pydicom()
    files = []
    try:
        from pydicom.data import get_testdata_file

        files.append(Path(get_testdata_file("CT_small.dcm")))
    except Exception as e:  # noqa: BLE001
        log.warning("pydicom test file CT_small.dcm not available: %s", e)
    try:
        import data_store

        files += sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))
    except ImportError:
        log.warning("pydicom-data is not installed; pip install 'napari-lsr[dicom]'")
    out = []
    for f in files:
        with warnings.catch_warnings():  # some test files have invalid UIDs etc.
            warnings.simplefilter("ignore", UserWarning)
            head = _dcm_header(pydicom, f)
            if head is None or str(head.get("Modality", "")) != "CT":
                continue
            if str(head.get("LossyImageCompression", "")) == "01":
                log.info("skipping %s: lossy-compressed copy", f.name)
                continue
            try:
                vol = read_dicom_series(f)
            except (ValueError, OSError) as e:
                log.warning("skipping %s: %s", f.name, e)
                continue
        if vol.meta["rescale_type"] not in (None, "HU"):
            log.warning("skipping %s: rescale type %s is not HU", f.name, vol.meta["rescale_type"])
            continue
        hu = _display_orientation(np.maximum(vol.hu, -1000.0), vol.meta["orientation"])
        hu = resample_slices(hu, vol.spacing_mm[1:], target_pixel_mm, target_size)
        for k, sl in enumerate(hu):
            if any(np.abs(sl - other).mean() < 1.0 for _, other in out):
                continue
            out.append((f.stem if len(hu) == 1 else f"{f.stem}[{k}]", sl))
    return out
