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

__all__ = ["ParallelBeam", "FanBeam", "Geometry", "geometry_from_dict", "geometry_from_json"]


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

    def __post_init__(self):
        _check_positive_int("image_size", self.image_size)
        _check_positive("pixel_size_mm", self.pixel_size_mm)
        _check_positive("det_spacing_mm", self.det_spacing_mm)
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
                "scan is simulated with a truncation mask, not with a short detector.)"
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
                f"{math.degrees(need):.2f} deg needed); use at least n_det={n_need}"
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
