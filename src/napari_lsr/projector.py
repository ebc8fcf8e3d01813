"""Differentiable CT projector with an exactly matched adjoint, and FBP.

The forward model is a *separable-footprint* system matrix (Long, Fessler & Balter 2010,
trapezoid variant): every square pixel casts a trapezoidal footprint on the detector (its
four corners projected onto the detector coordinate, height = chord length through the pixel
along the ray), which is integrated exactly over each detector bin. The matrix is stored as a
sparse CSR tensor together with its CSR transpose, so ``forward`` and ``adjoint`` are both one
sparse-dense product and ``adjoint`` is the exact transpose of ``forward``. Gradients flow
through a custom autograd function whose backward *is* the matched adjoint.

Units: images are linear attenuation ``mu`` in 1/mm, sinograms are line integrals
(dimensionless, lengths in mm). Build cost is paid once per (geometry, dtype, device) and
cached in-process (see :func:`clear_cache`).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from .geometry import FanBeam, Geometry, ParallelBeam

__all__ = ["Projector", "SparseOperator", "clear_cache", "FILTERS"]

FILTERS = ("ramp", "shepp-logan", "cosine", "hann")


# ----------------------------------------------------------------------------------------
# geometry helpers: detector coordinate of points, bin edges
# ----------------------------------------------------------------------------------------
def _detector_axis(geom: Geometry):
    """(first bin centre, bin width) on the detector coordinate: mm (parallel) or rad (fan)."""
    if isinstance(geom, FanBeam):
        gam = geom.fan_angles_rad()
        return gam[0], geom.det_spacing_rad
    s = geom.ray_offsets_mm()
    return s[0], geom.det_spacing_mm


def _project_points(geom: Geometry, beta: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Detector coordinate u of points (x, y) [mm] for views ``beta`` [rad].

    Returns u with shape (views, points): s in mm for parallel beam, fan angle gamma in rad
    for fan beam; plus, for fan beam, the source-to-point distance L in mm (else None)."""
    cb, sb = np.cos(beta)[:, None], np.sin(beta)[:, None]
    if isinstance(geom, ParallelBeam):
        return x[None, :] * cb + y[None, :] * sb, None
    R = geom.sid_mm
    vx, vy = x[None, :] - R * cb, y[None, :] - R * sb  # source -> point
    # central ray direction u = -(cb, sb); gamma = angle from u to v, counter-clockwise
    dot = -(cb * vx + sb * vy)
    cross = -cb * vy + sb * vx
    return np.arctan2(cross, dot), np.hypot(vx, vy)


def _chord_length(geom: Geometry, beta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Length [mm] of the ray through each pixel centre inside its pixel: p / max(|dx|,|dy|)."""
    p = geom.pixel_size_mm
    cb, sb = np.cos(beta)[:, None], np.sin(beta)[:, None]
    if isinstance(geom, ParallelBeam):
        dx, dy = np.broadcast_arrays(-sb, cb)
        return p / np.maximum(np.abs(dx), np.abs(dy)) * np.ones((1, x.size))
    R = geom.sid_mm
    vx, vy = x[None, :] - R * cb, y[None, :] - R * sb
    return p * np.hypot(vx, vy) / np.maximum(np.abs(vx), np.abs(vy))


def _ramp_integral(t, a, b):
    """Integral from -inf to t of the unit ramp rising linearly from 0 at a to 1 at b."""
    u = np.minimum(np.maximum(t, a), b)
    return (u - a) ** 2 / (2.0 * np.maximum(b - a, 1e-12)) + np.maximum(t - b, 0.0)


def _trapezoid_cdf(t, g0, g1, g2, g3, h):
    """Integral from -inf to t of the trapezoid with vertices g0<=g1<=g2<=g3 and height h."""
    return h * (_ramp_integral(t, g0, g1) - _ramp_integral(t, g2, g3))


# ----------------------------------------------------------------------------------------
# system matrices
# ----------------------------------------------------------------------------------------
def _pixel_grid(geom: Geometry):
    xc, yc = geom.pixel_centres_mm()
    X, Y = np.meshgrid(xc, yc)  # (H, W): row i has y = yc[i]
    return X.ravel(), Y.ravel()


def _sort4(a, b, c, d):
    """Element-wise sort of four arrays (a sorting network: cheaper than np.sort)."""
    a, b = np.minimum(a, b), np.maximum(a, b)
    c, d = np.minimum(c, d), np.maximum(c, d)
    a, c = np.minimum(a, c), np.maximum(a, c)
    b, d = np.minimum(b, d), np.maximum(b, d)
    b, c = np.minimum(b, c), np.maximum(b, c)
    return a, b, c, d


_PIXEL_BLOCK = 4096  # pixels per vectorised step (memory ~ block * views * 8 floats)


def _pixel_major_csr(geom: Geometry, entries) -> sp.csr_matrix:
    """CSR matrix of shape (H*W, V*D) built one block of pixels at a time.

    ``entries(beta, x, y)`` returns a list of ``(d, w)`` pairs, each (views, pixels): detector
    bin index and weight. For one pixel, columns ``v*D + d`` then come out already sorted."""
    x, y = _pixel_grid(geom)
    beta = geom.angles_rad()
    n_views, n_det = beta.size, geom.n_det
    view_offset = (np.arange(n_views, dtype=np.int64) * n_det)[:, None, None]
    data, indices, counts = [], [], []
    for p0 in range(0, x.size, _PIXEL_BLOCK):
        terms = entries(beta, x[p0:p0 + _PIXEL_BLOCK], y[p0:p0 + _PIXEL_BLOCK])
        d = np.stack([t[0] for t in terms], axis=-1)  # (V, P, K)
        w = np.stack([t[1] for t in terms], axis=-1)
        keep = (w > 0) & (d >= 0) & (d < n_det)
        col = view_offset + d
        keep, col, w = (a.transpose(1, 0, 2) for a in (keep, col, w))  # pixel-major
        data.append(w[keep].astype(np.float32))
        indices.append(col[keep].astype(np.int32))
        counts.append(keep.sum(axis=(1, 2)))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    indptr = indptr.astype(np.int32 if indptr[-1] < 2**31 - 1 else np.int64)
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr),
                         shape=(x.size, n_views * n_det))


def _footprint_entries(geom: Geometry):
    """Separable-footprint weights: trapezoid (corners on the detector, height = chord
    length through the pixel) integrated over each bin, divided by the bin width."""
    half = geom.pixel_size_mm / 2.0
    u_first, du = _detector_axis(geom)

    def entries(beta, x, y):
        g0, g1, g2, g3 = _sort4(*[_project_points(geom, beta, x + dx, y + dy)[0]
                                  for dx in (-half, half) for dy in (-half, half)])
        h = _chord_length(geom, beta, x, y) / du
        first = np.floor((g0 - u_first) / du + 0.5).astype(np.int64)
        n_bins = int((np.floor((g3 - u_first) / du + 0.5) - first).max()) + 1
        edge = u_first + (first - 0.5) * du
        cdf_lo = _trapezoid_cdf(edge, g0, g1, g2, g3, h)
        out = []
        for k in range(n_bins):
            cdf_hi = _trapezoid_cdf(edge + (k + 1) * du, g0, g1, g2, g3, h)
            out.append((first + k, cdf_hi - cdf_lo))
            cdf_lo = cdf_hi
        return out

    return entries


def _interpolation_entries(geom: Geometry):
    """Pixel-driven linear interpolation at the pixel centre's detector position, weighted
    by 1/L^2 (L: source-to-pixel distance in mm) for fan beam."""
    u_first, du = _detector_axis(geom)

    def entries(beta, x, y):
        u, L = _project_points(geom, beta, x, y)
        t = (u - u_first) / du
        d0 = np.floor(t).astype(np.int64)
        frac = t - d0
        wt = 1.0 if L is None else 1.0 / L**2
        return [(d0, (1.0 - frac) * wt), (d0 + 1, frac * wt)]

    return entries


def build_system_matrix(geom: Geometry) -> sp.csr_matrix:
    """Transpose of the separable-footprint projection matrix: shape (H*W, V*D), float32."""
    return _pixel_major_csr(geom, _footprint_entries(geom))


def _view_weights(geom: Geometry) -> np.ndarray:
    """Angular integration weight of each view [rad] (half the gap to each neighbour)."""
    beta = geom.angles_rad()
    if beta.size == 1:
        return np.array([math.pi])
    if geom.angles_deg is None:
        return np.full(beta.size, math.radians(geom.arc_deg) / beta.size)
    order = np.argsort(beta)
    b = beta[order]
    gaps = np.diff(b)
    w_sorted = np.empty_like(b)
    w_sorted[1:-1] = (gaps[:-1] + gaps[1:]) / 2.0
    w_sorted[0], w_sorted[-1] = gaps[0], gaps[-1]
    w = np.empty_like(w_sorted)
    w[order] = w_sorted
    return w


def redundancy_weights(geom: Geometry) -> np.ndarray:
    """Per-ray FBP weights (V, D) combining angular step and data redundancy.

    Parallel: a 180 deg scan weighs each view by its step, a 360 deg scan by half of it;
    fan: 360 deg uniform, a short scan (>= 180 deg + fan) gets Parker weights. Views that
    were never measured (limited angle) are simply absent: no re-normalisation is made."""
    dbeta = _view_weights(geom)
    covered = float(dbeta.sum())
    if isinstance(geom, ParallelBeam):
        factor = min(1.0, math.pi / covered)
        return np.repeat((dbeta * factor)[:, None], geom.n_det, axis=1)
    gam = geom.fan_angles_rad()
    w = np.ones((geom.n_views, geom.n_det))
    gamma_max = float(np.abs(gam).max())
    if covered < 2 * math.pi * (1 - 1e-6) and covered >= math.pi + 2 * gamma_max:
        delta = (covered - math.pi) / 2.0
        b = geom.angles_rad() - geom.angles_rad().min()
        B, G = np.meshgrid(b, gam, indexing="ij")
        w = np.ones_like(B)
        r1 = B < 2 * (delta - G)
        w[r1] = np.sin(math.pi / 4 * B[r1] / (delta - G[r1])) ** 2
        r3 = B > math.pi - 2 * G
        w[r3] = np.sin(math.pi / 4 * (math.pi + 2 * delta - B[r3]) / (delta + G[r3])) ** 2
        w *= 2.0  # the fan filter below carries the factor 1/2 of a full scan
    return w * dbeta[:, None]


def build_backprojection_matrix(geom: Geometry) -> sp.csr_matrix:
    """Pixel-driven FBP backprojector (linear interpolation, 1/L^2 fan weights), (H*W, V*D)."""
    return _pixel_major_csr(geom, _interpolation_entries(geom))


# ----------------------------------------------------------------------------------------
# sparse operator with autograd
# ----------------------------------------------------------------------------------------
def _to_torch_csr(m: sp.csr_matrix, dtype, device) -> torch.Tensor:
    m.sort_indices()
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is noise for users
        warnings.simplefilter("ignore", UserWarning)
        t = torch.sparse_csr_tensor(  # int32 indices: about 4x faster products than int64
            torch.from_numpy(m.indptr.astype(np.int32, copy=False)),
            torch.from_numpy(m.indices.astype(np.int32, copy=False)),
            torch.from_numpy(m.data).to(dtype),
            size=m.shape,
            check_invariants=False,
        )
    return t.to(device)


class SparseOperator:
    """A linear map ``M`` stored as CSR together with its CSR transpose (torch tensors).

    Built from ``M^T`` (pixel-major, the cheap order to assemble)."""

    def __init__(self, matrix_t: sp.csr_matrix, dtype, device):
        self.shape = matrix_t.shape[::-1]
        self.matrix_t = _to_torch_csr(matrix_t, dtype, device)
        self.matrix = _to_torch_csr(matrix_t.T.tocsr(), dtype, device)

    @property
    def nbytes(self) -> int:
        return sum(t.values().nbytes + t.col_indices().nbytes + t.crow_indices().nbytes
                   for t in (self.matrix, self.matrix_t))


def _apply(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mat @ each row of x: x (N, n_in) -> (N, n_out). A single row takes the (faster)
    sparse matrix-vector path."""
    if x.shape[0] == 1:
        return (mat @ x[0]).unsqueeze(0)
    return torch.sparse.mm(mat, x.T).T


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op: SparseOperator, transpose: bool):
        ctx.op, ctx.transpose = op, transpose
        return _apply(op.matrix_t if transpose else op.matrix, x)

    @staticmethod
    def backward(ctx, grad):
        op = ctx.op
        g = _apply(op.matrix if ctx.transpose else op.matrix_t, grad.contiguous())
        return g, None, None


_CACHE: "OrderedDict[tuple, SparseOperator]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _cached_operator(kind: str, geom: Geometry, dtype, device) -> SparseOperator:
    key = (kind, geom, dtype, str(device))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    builder = build_system_matrix if kind == "forward" else build_backprojection_matrix
    op = SparseOperator(builder(geom), dtype, device)
    with _CACHE_LOCK:
        _CACHE[key] = op
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return op


def clear_cache() -> None:
    """Free all cached system matrices."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------
def _filter_kernel(geom: Geometry, n_pad: int) -> np.ndarray:
    """Spatial-domain discrete ramp (parallel, Kak & Slaney 3.61) or equiangular fan
    kernel (Kak & Slaney 3.124, includes the factor 1/2), times the sample step."""
    n = np.fft.fftfreq(n_pad, 1.0 / n_pad).astype(np.int64)  # 0,1,..,-1 circular offsets
    h = np.zeros(n_pad)
    odd = (n % 2) == 1
    if isinstance(geom, FanBeam):
        a = geom.det_spacing_rad
        h[n == 0] = 1.0 / (8.0 * a * a)
        h[odd] = -1.0 / (2.0 * math.pi**2 * np.sin(n[odd] * a) ** 2)
        return h * a
    tau = geom.det_spacing_mm
    h[n == 0] = 1.0 / (4.0 * tau * tau)
    h[odd] = -1.0 / (math.pi * n[odd] * tau) ** 2
    return h * tau


def _window(name: str, n_pad: int) -> np.ndarray:
    f = np.fft.rfftfreq(n_pad)  # cycles / sample in [0, 0.5]
    if name == "ramp":
        return np.ones_like(f)
    if name == "shepp-logan":
        return np.sinc(f)
    if name == "cosine":
        return np.cos(math.pi * f)
    if name == "hann":
        return 0.5 * (1.0 + np.cos(2.0 * math.pi * f))
    raise ValueError(f"unknown FBP filter {name!r}; choose one of {FILTERS}")


# ----------------------------------------------------------------------------------------
# public class
# ----------------------------------------------------------------------------------------
class Projector:
    """Forward projection, matched adjoint and FBP for one geometry.

    ``forward(mu)``: (..., H, W) in 1/mm -> (..., V, D) line integrals.
    ``adjoint(sino)``: (..., V, D) -> (..., H, W), the exact transpose of ``forward``.
    ``fbp(sino, filter="ramp")``: (..., V, D) -> (..., H, W) mu in 1/mm.
    All three accept float32 or float64 tensors (or NumPy arrays) and are autograd-ready.
    """

    def __init__(self, geometry: Geometry, device: Optional[torch.device | str] = None):
        if not isinstance(geometry, (ParallelBeam, FanBeam)):
            raise TypeError(f"geometry must be ParallelBeam or FanBeam, got {type(geometry).__name__}")
        self.geometry = geometry
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __repr__(self):
        return f"Projector({self.geometry!r}, device={self.device})"

    # -- helpers --------------------------------------------------------------------------
    def _prepare(self, x, expected, what):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if x.ndim < 2 or tuple(x.shape[-2:]) != expected:
            raise ValueError(
                f"{what} has shape {tuple(x.shape)}; this geometry expects (..., {expected[0]}, "
                f"{expected[1]})"
            )
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        if not torch.isfinite(x.detach()).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        return x.to(self.device)

    def _op(self, kind, dtype) -> SparseOperator:
        return _cached_operator(kind, self.geometry, dtype, self.device)

    def warm_up(self, dtype=torch.float32) -> "Projector":
        """Build (or fetch from cache) the system matrix now rather than on first use."""
        self._op("forward", dtype)
        return self

    @staticmethod
    def _linear(x, op, transpose, out_shape):
        lead = x.shape[:-2]
        flat = x.reshape(-1, x.shape[-2] * x.shape[-1])
        y = _LinearFunction.apply(flat, op, transpose)
        return y.reshape(*lead, *out_shape)

    # -- operators ------------------------------------------------------------------------
    def forward(self, mu) -> torch.Tensor:
        """Line integrals of ``mu`` (1/mm) along every ray: (..., H, W) -> (..., V, D)."""
        g = self.geometry
        mu = self._prepare(mu, g.image_shape, "image")
        return self._linear(mu, self._op("forward", mu.dtype), False, g.sino_shape)

    __call__ = forward

    def adjoint(self, sino) -> torch.Tensor:
        """Exact transpose of :meth:`forward`: (..., V, D) -> (..., H, W)."""
        g = self.geometry
        sino = self._prepare(sino, g.sino_shape, "sinogram")
        return self._linear(sino, self._op("forward", sino.dtype), True, g.image_shape)

    def filter_sinogram(self, sino, filter: str = "ramp") -> torch.Tensor:
        """Weighted, ramp-filtered sinogram (before backprojection), same shape."""
        g = self.geometry
        sino = self._prepare(sino, g.sino_shape, "sinogram")
        # redundancy (Parker) weights depend on the fan angle: apply them before filtering
        w = torch.as_tensor(redundancy_weights(g), dtype=sino.dtype, device=sino.device)
        if isinstance(g, FanBeam):
            w = w * torch.as_tensor(np.cos(g.fan_angles_rad()) * g.sid_mm, dtype=sino.dtype, device=sino.device)
        n_pad = 1 << int(math.ceil(math.log2(2 * g.n_det)))
        H = np.fft.rfft(_filter_kernel(g, n_pad)).real * _window(filter, n_pad)
        H = torch.as_tensor(H, dtype=sino.dtype, device=sino.device)
        spec = torch.fft.rfft(sino * w, n=n_pad, dim=-1)
        return torch.fft.irfft(spec * H, n=n_pad, dim=-1)[..., : g.n_det]

    def backproject(self, filtered) -> torch.Tensor:
        """Pixel-driven FBP backprojection (not the adjoint): (..., V, D) -> (..., H, W)."""
        g = self.geometry
        filtered = self._prepare(filtered, g.sino_shape, "sinogram")
        # the "fbp" operator holds B^T (sinogram <- image) as its matrix; B is its transpose
        return self._linear(filtered, self._op("fbp", filtered.dtype), True, g.image_shape)

    def fbp(self, sino, filter: str = "ramp") -> torch.Tensor:
        """Filtered backprojection: sinogram (..., V, D) -> mu image (..., H, W) in 1/mm.

        ``filter``: "ramp", "shepp-logan", "cosine" or "hann" (window on the ramp)."""
        if filter not in FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; choose one of {FILTERS}")
        return self.backproject(self.filter_sinogram(sino, filter))
