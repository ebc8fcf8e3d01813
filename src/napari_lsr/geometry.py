"""CT scan geometries: frozen, validated, JSON-serialisable dataclasses.

Coordinates (mm): the image is centred on the isocentre; column ``j`` lies at
``x = (j - (W-1)/2) * pixel_size_mm`` and row ``i`` at ``y = ((H-1)/2 - i) * pixel_size_mm``
(row 0 is the top of the displayed image, y points up). Angles are in degrees in the
public fields and radians in :meth:`angles_rad`.

* :class:`ParallelBeam`: a ray at view angle ``theta`` and detector position ``s`` is the line
  ``x cos(theta) + y sin(theta) = s``.
* :class:`FanBeam`: equiangular arc detector (clinical CT). The source sits at
  ``R (cos(beta), sin(beta))``; detector bin ``d`` has fan angle
  ``gamma_d = (d - (D-1)/2) * det_spacing_mm / sdd_mm + det_offset_mm / sdd_mm`` (spacing and
  offset are arc lengths on the detector), measured counter-clockwise from the central ray.

Detector bin ``d`` of a parallel geometry lies at
``s_d = (d - (D-1)/2) * det_spacing_mm + det_offset_mm``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

from .units import MU_WATER_PER_MM

__all__ = ["ParallelBeam", "FanBeam", "Geometry", "geometry_from_dict", "geometry_from_json",
           "extend_detector", "pad_sinogram", "crop_sinogram"]

_EXTEND_HINT = (
    " If the scan really measured a field smaller than this image (a truncated scan, a "
    "clinical grid whose corners lie outside the scan field), use "
    "napari_lsr.geometry.extend_detector(scan, image_size, pixel_size_mm) for a detector "
    "extended by bins marked missing, and pad_sinogram(...) for the sinogram and its mask."
)


def _check_positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class _GeometryBase:
    image_size: int = 256
    pixel_size_mm: float = 1.0
    n_views: int = 360
    n_det: int = 367
    det_spacing_mm: float = 1.0
    det_offset_mm: float = 0.0
    arc_deg: float = 180.0
    start_deg: float = 0.0
    angles_deg: Optional[Tuple[float, ...]] = None
    mu_water_per_mm: float = MU_WATER_PER_MM  # the scan's water attenuation: HU <-> mu

    def __post_init__(self):
        _check_positive_int("image_size", self.image_size)
        _check_positive("pixel_size_mm", self.pixel_size_mm)
        _check_positive("det_spacing_mm", self.det_spacing_mm)
        _check_positive("mu_water_per_mm", self.mu_water_per_mm)
        _check_positive_int("n_det", self.n_det)
        if not math.isfinite(self.det_offset_mm):
            raise ValueError(f"det_offset_mm must be finite, got {self.det_offset_mm!r}")
        if self.angles_deg is not None:
            angles = tuple(float(a) for a in self.angles_deg)
            if len(angles) == 0 or not all(math.isfinite(a) for a in angles):
                raise ValueError("angles_deg must be a non-empty list of finite angles in degrees")
            object.__setattr__(self, "angles_deg", angles)
            object.__setattr__(self, "n_views", len(angles))
        else:
            _check_positive_int("n_views", self.n_views)
            _check_positive("arc_deg", self.arc_deg)
            if self.arc_deg > 360.0 + 1e-9:
                raise ValueError(f"arc_deg must be at most 360, got {self.arc_deg}")
        if not math.isfinite(self.start_deg):
            raise ValueError(f"start_deg must be finite, got {self.start_deg!r}")

    # -- derived quantities -------------------------------------------------------------
    @property
    def image_shape(self) -> Tuple[int, int]:
        """(H, W) of the reconstructed image in pixels."""
        return (self.image_size, self.image_size)

    @property
    def sino_shape(self) -> Tuple[int, int]:
        """(views, detector bins) of the sinogram."""
        return (self.n_views, self.n_det)

    @property
    def fov_mm(self) -> float:
        """Side length of the square image in mm."""
        return self.image_size * self.pixel_size_mm

    def angles_rad(self) -> np.ndarray:
        """View angles in radians, shape (n_views,)."""
        if self.angles_deg is not None:
            return np.deg2rad(np.asarray(self.angles_deg, dtype=np.float64))
        step = self.arc_deg / self.n_views
        return np.deg2rad(self.start_deg + step * np.arange(self.n_views, dtype=np.float64))

    def pixel_centres_mm(self) -> Tuple[np.ndarray, np.ndarray]:
        """x (columns) and y (rows) of pixel centres in mm, each of length image_size."""
        n = self.image_size
        c = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * self.pixel_size_mm
        return c, -c  # x left->right, y top->bottom is decreasing

    def replace(self, **changes) -> "Geometry":
        """A copy with some fields changed (validated again)."""
        if "n_views" in changes or "arc_deg" in changes or "start_deg" in changes:
            changes.setdefault("angles_deg", None)
        return dataclasses.replace(self, **changes)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["type"] = type(self).__name__
        if d["angles_deg"] is not None:
            d["angles_deg"] = list(d["angles_deg"])
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def check_sinogram_shape(self, shape, what: str = "sinogram") -> None:
        """Raise ValueError unless ``shape`` ends with (n_views, n_det)."""
        if tuple(shape[-2:]) != self.sino_shape or len(shape) < 2:
            raise ValueError(
                f"{what} has shape {tuple(shape)}, but the geometry expects (..., {self.n_views}, "
                f"{self.n_det}) (views, detector bins). Check n_views/n_det or the axis order."
            )

    def check_image_shape(self, shape, what: str = "image") -> None:
        """Raise ValueError unless ``shape`` ends with (image_size, image_size)."""
        if tuple(shape[-2:]) != self.image_shape or len(shape) < 2:
            raise ValueError(
                f"{what} has shape {tuple(shape)}, but the geometry expects (..., {self.image_size}, "
                f"{self.image_size}) (H, W)."
            )


@dataclass(frozen=True)
class ParallelBeam(_GeometryBase):
    """Parallel-beam geometry. ``arc_deg`` 180 is a complete scan; fewer degrees (or an
    explicit ``angles_deg`` list) give limited-angle data."""

    def __post_init__(self):
        super().__post_init__()
        half_diag = self.fov_mm / math.sqrt(2.0)
        half_det = self.n_det * self.det_spacing_mm / 2.0
        reach = half_det - abs(self.det_offset_mm)
        if reach < half_diag - 1e-6 * half_diag:
            need = self.min_n_det(self.image_size, self.pixel_size_mm, self.det_spacing_mm, self.det_offset_mm)
            raise ValueError(
                f"the detector ({self.n_det} bins x {self.det_spacing_mm} mm, offset "
                f"{self.det_offset_mm} mm) does not cover the image diagonal of "
                f"{2 * half_diag:.1f} mm; use at least n_det={need} at this spacing. (A truncated "
                "scan is simulated with a truncation mask, not with a short detector.)" + _EXTEND_HINT
            )

    @staticmethod
    def min_n_det(image_size: int, pixel_size_mm: float, det_spacing_mm: float,
                  det_offset_mm: float = 0.0) -> int:
        """Fewest detector bins that cover the image diagonal at this spacing and offset."""
        half_diag = image_size * pixel_size_mm / math.sqrt(2.0)
        return math.ceil(2 * (half_diag + abs(det_offset_mm)) / det_spacing_mm - 1e-9)

    def ray_offsets_mm(self) -> np.ndarray:
        """Detector bin centres s_d in mm, shape (n_det,)."""
        d = np.arange(self.n_det, dtype=np.float64)
        return (d - (self.n_det - 1) / 2.0) * self.det_spacing_mm + self.det_offset_mm


@dataclass(frozen=True)
class FanBeam(_GeometryBase):
    """Fan-beam geometry with an equiangular arc detector (clinical CT).

    ``sid_mm``: source to isocentre; ``sdd_mm``: source to detector. A complete scan has
    ``arc_deg`` 360 (or a short scan of 180 + fan angle)."""

    sid_mm: float = 595.0
    sdd_mm: float = 1085.6
    arc_deg: float = 360.0

    def __post_init__(self):
        super().__post_init__()
        _check_positive("sid_mm", self.sid_mm)
        _check_positive("sdd_mm", self.sdd_mm)
        if self.sdd_mm <= self.sid_mm:
            raise ValueError(
                f"sdd_mm ({self.sdd_mm}) must exceed sid_mm ({self.sid_mm}): the detector lies "
                "beyond the isocentre"
            )
        half_diag = self.fov_mm / math.sqrt(2.0)
        if half_diag >= self.sid_mm:
            raise ValueError(
                f"the image (half diagonal {half_diag:.1f} mm) reaches the source at "
                f"sid_mm={self.sid_mm}; use a smaller image or a larger sid_mm"
            )
        need = math.asin(half_diag / self.sid_mm)  # half fan angle to cover the image
        gam = self.fan_angles_rad()
        if gam[0] > -need + 1e-9 or gam[-1] < need - 1e-9:
            n_need = self.min_n_det(self.image_size, self.pixel_size_mm, self.det_spacing_mm,
                                    self.det_offset_mm, self.sid_mm, self.sdd_mm)
            raise ValueError(
                f"the detector ({self.n_det} bins x {self.det_spacing_mm} mm at sdd "
                f"{self.sdd_mm} mm) does not cover the image (half fan angle "
                f"{math.degrees(need):.2f} deg needed); use at least n_det={n_need}." + _EXTEND_HINT
            )

    @staticmethod
    def min_n_det(image_size: int, pixel_size_mm: float, det_spacing_mm: float,
                  det_offset_mm: float = 0.0, sid_mm: float = 595.0, sdd_mm: float = 1085.6) -> int:
        """Fewest arc-detector bins whose fan covers the image at this spacing and offset."""
        need = math.asin(min(1.0, image_size * pixel_size_mm / math.sqrt(2.0) / sid_mm))
        return math.ceil(2 * (need + abs(det_offset_mm) / sdd_mm) / (det_spacing_mm / sdd_mm) - 1e-9) + 1

    @property
    def det_spacing_rad(self) -> float:
        """Angular bin spacing of the arc detector in radians."""
        return self.det_spacing_mm / self.sdd_mm

    def fan_angles_rad(self) -> np.ndarray:
        """Fan angle gamma_d of every detector bin in radians, shape (n_det,)."""
        d = np.arange(self.n_det, dtype=np.float64)
        return (d - (self.n_det - 1) / 2.0) * self.det_spacing_rad + self.det_offset_mm / self.sdd_mm


Geometry = Union[ParallelBeam, FanBeam]
_TYPES = {"ParallelBeam": ParallelBeam, "FanBeam": FanBeam}


REQUIRED_FIELDS = {"ParallelBeam": ("image_size", "pixel_size_mm", "n_det", "det_spacing_mm"),
                   "FanBeam": ("image_size", "pixel_size_mm", "n_det", "det_spacing_mm", "sid_mm", "sdd_mm")}


def geometry_from_dict(d: dict) -> Geometry:
    """Rebuild a geometry from :meth:`to_dict` output; clear error on unknown content."""
    if not isinstance(d, dict):
        raise ValueError(f"geometry must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in _TYPES:
        raise ValueError(f"unknown geometry type {kind!r}; expected one of {sorted(_TYPES)}")
    cls = _TYPES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown {kind} geometry fields: {sorted(unknown)}")
    need = list(REQUIRED_FIELDS[kind]) + ([] if d.get("angles_deg") is not None else ["n_views", "arc_deg"])
    missing = [k for k in need if d.get(k) is None]
    if missing:
        raise ValueError(f"{kind} geometry is missing the required field(s) {', '.join(missing)} "
                         "(lengths in mm, angles in degrees); nothing is assumed for them")
    if d.get("angles_deg") is not None:
        d["angles_deg"] = tuple(d["angles_deg"])
    return cls(**d)


def geometry_from_json(text: str) -> Geometry:
    """Rebuild a geometry from a JSON string written by :meth:`to_json`."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"geometry JSON is not valid JSON: {e}") from None
    return geometry_from_dict(d)


# ----------------------------------------------------------------------------------------
# extended field: an image grid larger than the measured field
# ----------------------------------------------------------------------------------------
def _bins_needed(kind: str, f: dict) -> Tuple[int, int]:
    """Bins to add before bin 0 and after the last bin so the detector covers the image."""
    D, sp, off = int(f["n_det"]), float(f["det_spacing_mm"]), float(f.get("det_offset_mm", 0.0))
    half_diag = int(f["image_size"]) * float(f["pixel_size_mm"]) / math.sqrt(2.0)
    if kind == "FanBeam":
        sid, sdd = float(f.get("sid_mm", 595.0)), float(f.get("sdd_mm", 1085.6))
        if half_diag >= sid:
            raise ValueError(f"the image (half diagonal {half_diag:.1f} mm) reaches the source at "
                             f"sid_mm={sid}; no detector can cover it")
        need = math.asin(half_diag / sid) / (sp / sdd)          # in bins, from the centre ray
        first = -(D - 1) / 2.0 + off / sp                         # bin centres, in bins
        last = (D - 1) / 2.0 + off / sp
    else:
        need = half_diag / sp
        first, last = -D / 2.0 + off / sp, D / 2.0 + off / sp     # detector edges, in bins
    left = max(0, math.ceil(first + need - 1e-6))
    right = max(0, math.ceil(need - last - 1e-6))
    return left, right


def extend_detector(scan, image_size: Optional[int] = None,
                    pixel_size_mm: Optional[float] = None) -> Tuple["Geometry", int, int]:
    """Geometry for reconstructing an image grid larger than the measured field.

    ``scan``: the scan's geometry, as a :class:`ParallelBeam`/:class:`FanBeam` or as a dict
    of its fields (``to_dict()`` output; a dict may describe a detector that does not cover
    the wanted grid, which the classes refuse). ``image_size`` [pixels] and
    ``pixel_size_mm`` [mm] give the wanted grid (default: the scan's).

    Returns ``(extended, n_left, n_right)``: the same scan with ``n_left`` bins added before
    bin 0 and ``n_right`` after the last bin, at the same spacing, the measured bins keeping
    their positions (``det_offset_mm`` adjusted), just enough to cover the image. With a
    centred detector the extension is symmetric, so the projector keeps its 8-fold view
    symmetry. Pad the measured sinogram and its mask with :func:`pad_sinogram` (added bins
    marked missing, mask 0): LSR then fills them in (extended-field reconstruction)."""
    if isinstance(scan, _GeometryBase):
        kind, fields = type(scan).__name__, scan.to_dict()
    elif isinstance(scan, dict):
        fields = dict(scan)
        kind = fields.get("type", "FanBeam" if "sid_mm" in fields else "ParallelBeam")
    else:
        raise TypeError(f"scan must be a ParallelBeam, FanBeam or dict, got {type(scan).__name__}")
    if kind not in _TYPES:
        raise ValueError(f"unknown geometry type {kind!r}; expected one of {sorted(_TYPES)}")
    fields.pop("type", None)
    if image_size is not None:
        fields["image_size"] = image_size
    if pixel_size_mm is not None:
        fields["pixel_size_mm"] = pixel_size_mm
    for name in ("image_size", "pixel_size_mm", "n_det", "det_spacing_mm"):
        if name not in fields:
            raise ValueError(f"extend_detector needs the scan's {name}")
    left, right = _bins_needed(kind, fields)
    sp, off = float(fields["det_spacing_mm"]), float(fields.get("det_offset_mm", 0.0))
    # keep (or make) the detector symmetric when the offset is a whole number of half bins
    # and that costs at most a few bins: the projector then keeps all 8 view symmetries
    m = 2.0 * off / sp
    if (left or right) and abs(m - round(m)) < 1e-9:
        m = int(round(m))             # left - right == m gives a zero offset
        r_sym = max(right, left - m)
        l_sym = r_sym + m
        if l_sym + r_sym - (left + right) <= max(2, int(0.02 * int(fields["n_det"]))):
            left, right = l_sym, r_sym
    new_off = off - (left - right) * sp / 2.0
    if abs(new_off) < 1e-9 * sp:
        new_off = 0.0
    fields.update(n_det=int(fields["n_det"]) + left + right, det_offset_mm=new_off)
    if fields.get("angles_deg") is not None:
        fields["angles_deg"] = tuple(fields["angles_deg"])
    return _TYPES[kind](**fields), left, right


def pad_sinogram(sino, n_left: int, n_right: int, mask=None, fill: float = 0.0):
    """Sinogram and mask for an extended detector (see :func:`extend_detector`).

    ``sino``: (..., views, bins) line integrals (NumPy array or torch tensor); ``mask``: same
    shape, 1 = valid, 0 = missing (None: all measured bins valid). Returns
    ``(sino_ext, mask_ext)`` with ``n_left`` bins added before and ``n_right`` after along
    the last axis: values ``fill``, mask 0. Same array type as ``sino``."""
    n_left, n_right = int(n_left), int(n_right)
    if n_left < 0 or n_right < 0:
        raise ValueError("n_left and n_right must be >= 0")
    try:
        import torch
        is_torch = isinstance(sino, torch.Tensor)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_torch = False
    if is_torch:
        import torch.nn.functional as F
        if mask is None:
            mask = torch.ones_like(sino)
        mask = torch.as_tensor(mask, device=sino.device)
        if tuple(mask.shape) != tuple(sino.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, sinogram {tuple(sino.shape)}")
        s = F.pad(sino, (n_left, n_right), value=float(fill))
        m = F.pad(mask.to(sino.dtype if mask.dtype == torch.bool else mask.dtype), (n_left, n_right), value=0)
        return s, m.to(mask.dtype)
    sino = np.asarray(sino)
    mask = np.ones(sino.shape, dtype=np.float32) if mask is None else np.asarray(mask)
    if mask.shape != sino.shape:
        raise ValueError(f"mask has shape {mask.shape}, sinogram {sino.shape}")
    widths = [(0, 0)] * (sino.ndim - 1) + [(n_left, n_right)]
    return (np.pad(sino, widths, constant_values=fill), np.pad(mask, widths, constant_values=0))


def crop_sinogram(sino, n_left: int, n_right: int):
    """Undo :func:`pad_sinogram`: the measured bins of an extended sinogram (..., views, bins)."""
    n = sino.shape[-1]
    return sino[..., int(n_left): n - int(n_right)]
