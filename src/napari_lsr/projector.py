"""Differentiable CT projector with an exactly matched adjoint, and FBP.

The forward model is a *separable-footprint* system matrix (Long, Fessler & Balter 2010,
trapezoid variant): every square pixel casts a trapezoidal footprint on the detector (its
four corners projected onto the detector coordinate, height = chord length through the pixel
along the ray), which is integrated exactly over each detector bin. ``forward`` and
``adjoint`` go through the very same weights, so ``adjoint`` is the exact transpose of
``forward``; gradients flow through a custom autograd function whose backward *is* the
matched adjoint.

Three ways to hold the operator (``Projector(geom, method=...)``, chosen automatically from a
memory estimate made before anything is built, see :func:`estimate_projector_memory`):

* ``"stored"``: the whole matrix as CSR (int32 indices, float32 values) plus its CSR
  transpose.
* ``"symmetric"``: equally spaced views on the square grid repeat every 90 deg (and, with a
  symmetric detector, under reflections): only one view per orbit is stored; the others are
  the same rows applied to a permuted image. 4-8x less memory and set-up, and faster
  products (one sparse product serves several views).
* ``"matrix-free"``: weights recomputed chunk by chunk on every call; a few tens of MB.

Stored matrices go to a disk cache (:mod:`napari_lsr.projector_cache`), so the set-up is paid
once per machine. Units: images are linear attenuation ``mu`` in 1/mm, sinograms are line
integrals (dimensionless, lengths in mm).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from . import projector_cache
from . import projector_ops as ops
from .geometry import FanBeam, Geometry, ParallelBeam
from .units import MU_WATER_PER_MM

__all__ = ["DEFAULT_FILTER", "Projector", "clear_cache", "clear_disk_cache", "estimate_projector_memory",
           "MemoryEstimate", "ProjectorMemoryError", "FILTERS", "METHODS"]

log = logging.getLogger(__name__)

FILTERS = ("ramp", "shepp-logan", "cosine", "hann")
DEFAULT_FILTER = "shepp-logan"  # the FBP filter every function of napari-lsr uses by default
METHODS = ("auto", "stored", "symmetric", "matrix-free")

GB = 1e9
#: working memory of the matrix-free path per call (bytes)
MATRIX_FREE_CHUNK_BYTES = 64 << 20


class ProjectorMemoryError(MemoryError, ValueError):
    """The projector would not fit in memory; the message gives the numbers and advice."""


# ----------------------------------------------------------------------------------------
# memory: what is available, what each method needs
# ----------------------------------------------------------------------------------------
def available_memory_bytes(device=None) -> Optional[int]:
    """Memory free for new allocations on ``device`` (bytes), or None when unknown.

    CPU: ``psutil.virtual_memory().available`` (else ``MemAvailable`` of /proc/meminfo);
    CUDA: free device memory."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except Exception:  # noqa: BLE001
            return None
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _total_memory_bytes() -> Optional[int]:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        return None


def default_memory_budget() -> int:
    """Bytes the projector may use: ``NAPARI_LSR_PROJECTOR_MEMORY_GB`` if set, else a quarter
    of the machine's RAM clamped to [2 GB, 8 GB] (2 GB on an 8 GB laptop)."""
    env = os.environ.get("NAPARI_LSR_PROJECTOR_MEMORY_GB")
    if env:
        try:
            return int(float(env) * GB)
        except ValueError:
            log.warning("ignoring NAPARI_LSR_PROJECTOR_MEMORY_GB=%r (not a number)", env)
    total = _total_memory_bytes()
    if total is None:
        return int(2 * GB)
    return int(min(max(total / 4, 2 * GB), 8 * GB))


@dataclass(frozen=True)
class MemoryEstimate:
    """What a projector will hold, estimated before it is built (bytes).

    ``method``: "stored", "symmetric" or "matrix-free"; ``transpose_stored``: whether the
    CSR transpose is kept (else the adjoint runs through SciPy on the same matrix, about 3x
    slower); ``bytes``: held once built; ``build_bytes``: extra, transient, while building
    (0 when the disk cache has it); ``peak_bytes``: their sum; ``options``: peak bytes of
    every candidate; ``fits``: peak within the available memory."""

    method: str
    transpose_stored: bool
    bytes: int
    build_bytes: int
    peak_bytes: int
    nnz: int
    n_views: int
    n_stored_views: int
    n_maps: int
    budget_bytes: int
    available_bytes: Optional[int]
    device: str
    kind: str = "footprint"
    cached_on_disk: bool = False
    options: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.peak_bytes <= self.available_bytes

    def summary(self) -> str:
        avail = "unknown" if self.available_bytes is None else f"{self.available_bytes / GB:.2f} GB"
        t = "" if self.method == "matrix-free" else (
            ", with transpose" if self.transpose_stored else ", no stored transpose")
        return (f"{self.method}{t}: {self.bytes / GB:.2f} GB held, peak {self.peak_bytes / GB:.2f} GB"
                f" ({self.n_stored_views} of {self.n_views} views stored, {self.nnz / 1e6:.0f} M"
                f" non-zeros); budget {self.budget_bytes / GB:.2f} GB, available {avail}")

    __str__ = summary


def _sample_nnz_per_view(geom: Geometry, kind: str, views: np.ndarray) -> float:
    """Non-zeros per view, averaged over up to 8 of ``views`` on a pixel subsample."""
    x, y = ops.pixel_centres(geom)
    P, N = x.numel(), geom.image_size
    step = max(1, P // 20000)
    while math.gcd(step, N) != 1:  # walk through all columns, not one
        step += 1
    idx = torch.arange(0, P, step)
    pick = np.unique(np.linspace(0, len(views) - 1, min(8, len(views))).round().astype(int))
    beta = torch.from_numpy(geom.angles_rad()[np.asarray(views)[pick]])
    _, w = ops.entries(geom, kind, beta, x[idx], y[idx])
    per_pixel_view = float((w.to(torch.float32) > 0).sum()) / (beta.numel() * idx.numel())
    return per_pixel_view * P


def _rays_only(geom: Geometry) -> Geometry:
    """The geometry with the scan's mu_water set to the default: the matrices depend on the
    rays only, so scans that differ in mu_water share them."""
    return geom.replace(mu_water_per_mm=MU_WATER_PER_MM)


def _cache_key(geom: Geometry, kind: str, sym: ops.ViewSymmetry) -> str:
    reps = np.ascontiguousarray(sym.reps, dtype=np.int64)
    import hashlib
    return projector_cache.make_key({
        "builder": ops.BUILDER_VERSION, "kind": kind, "geometry": _rays_only(geom).to_dict(),
        "dtype": "float32", "views": "all" if sym.trivial else hashlib.sha256(reps.tobytes()).hexdigest(),
    })


@functools.lru_cache(maxsize=32)
def _symmetry_and_density(geom: Geometry, kind: str, use_symmetry: bool):
    """(ViewSymmetry, non-zeros per stored view) of a geometry (memoised: ~0.1 s at 512^2)."""
    full = ops.no_symmetry(geom.n_views)
    sym = ops.view_symmetry(geom) if use_symmetry else full
    if sym.n_reps == geom.n_views and len(sym.maps) == 1:
        sym = full  # no symmetry to exploit (e.g. a short scan): same as stored
    return sym, _sample_nnz_per_view(geom, kind, sym.reps)


def _plan(geom: Geometry, kind: str, method: str, device, budget: int, reserved: int = 0):
    """(MemoryEstimate, ViewSymmetry) for ``method`` ("auto" picks the fastest that fits)."""
    if method not in METHODS:
        raise ValueError(f"unknown projector method {method!r}; choose one of {METHODS}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = dev.type != "cpu"
    available = available_memory_bytes(dev)
    budget_eff = budget - reserved
    if available is not None:
        budget_eff = min(budget_eff, int(0.8 * available))
    sym, npv = _symmetry_and_density(geom, kind, method != "stored")
    P, D = geom.image_size ** 2, geom.n_det
    vb = 4  # float32 values (a float64 operator, built on demand, holds 8)

    def tables(s):
        return len(s.maps) * P * 8 * 2 + geom.n_views * D * 8

    def stored(s, transpose):
        nnz = int(npv * s.n_reps)
        ib = 8 if nnz >= 2**31 - 1 else 4
        rows = nnz * (ib + vb) + (s.n_reps * D + 1) * ib
        held = rows + (nnz * (ib + vb) + (P + 1) * ib if transpose else 0) + tables(s)
        cached = projector_cache.cache_dir() is not None and projector_cache.has(
            _cache_key(geom, kind, s), "t_data" if transpose else "data")
        chunk = min(nnz, ops._CHUNK_NNZ) * 4 * 8  # a view chunk, pixel- and ray-major
        work = ops._BUILD_ELEMENTS * (ops.max_bins(geom, kind) + 1) * 8 * 8  # weight temporaries
        build = 0 if cached else chunk + work
        if cuda:  # built on the CPU, then copied: host memory is the concern while building
            build = 0
        return nnz, held, build, cached

    def matrix_free(s):
        # chunks of views: at least one view's temporaries for one image (float32)
        one_view = P * ((ops.max_bins(geom, kind) + 1) * 4 * (12 + len(s.maps)) + 80)
        return tables(s) + P * 8 * 2 + max(MATRIX_FREE_CHUNK_BYTES, one_view)

    label = "stored" if sym.trivial else "symmetric"
    cands = []  # (method, transpose, nnz, held, build, cached)
    if method in ("auto", "stored", "symmetric"):
        for transpose in ((True,) if cuda else (True, False)):
            nnz, held, build, cached = stored(sym, transpose)
            cands.append((label, transpose, nnz, held, build, cached))
    mf = (("matrix-free", False, 0, matrix_free(sym), 0, False))
    if method in ("auto", "matrix-free"):
        cands.append(mf)
    options = {(f"{c[0]}" + ("" if c[0] == "matrix-free" else (" + transpose" if c[1] else " (no transpose)"))):
               int(c[3] + c[4]) for c in cands}
    if method == "auto":
        choice = next((c for c in cands if c[3] + c[4] <= budget_eff), mf)
    elif method == "matrix-free":
        choice = mf
    else:
        choice = next((c for c in cands if c[3] + c[4] <= budget_eff), cands[-1])
    name, transpose, nnz, held, build, cached = choice
    s = sym
    est = MemoryEstimate(method=name, transpose_stored=transpose, bytes=int(held), build_bytes=int(build),
                         peak_bytes=int(held + build), nnz=int(nnz), n_views=geom.n_views,
                         n_stored_views=s.n_reps, n_maps=len(s.maps), budget_bytes=int(budget),
                         available_bytes=available, device=str(dev), kind=kind, cached_on_disk=cached,
                         options=options)
    return est, s


def estimate_projector_memory(geometry: Geometry, method: str = "auto", device=None,
                              memory_budget_bytes: Optional[int] = None) -> MemoryEstimate:
    """Memory the projector for ``geometry`` will need, and the method ``"auto"`` picks,
    estimated in milliseconds before anything is built (non-zeros sampled on a few views
    and a pixel subsample; typically within 5 % of the built matrix).

    ``memory_budget_bytes``: the most the projector may use (default
    :func:`default_memory_budget`); the fastest method whose peak fits is chosen."""
    budget = default_memory_budget() if memory_budget_bytes is None else int(memory_budget_bytes)
    return _plan(geometry, "footprint", method, device, budget)[0]


def _refusal(geom: Geometry, est: MemoryEstimate) -> str:
    mf = est.options.get("matrix-free")
    alt = f" method='matrix-free' needs about {mf / GB:.2f} GB but is slower;" if mf and est.method != "matrix-free" else ""
    return (f"the projector for {type(geom).__name__}(image_size={geom.image_size}, n_views={geom.n_views}, "
            f"n_det={geom.n_det}) needs about {est.peak_bytes / GB:.2f} GB ({est.summary()}), but only "
            f"{(est.available_bytes or 0) / GB:.2f} GB of memory are available on {est.device}. Use fewer "
            f"views (n_views), a coarser grid (smaller image_size, larger pixel_size_mm) or fewer "
            f"detector bins;{alt} or run on a GPU (device='cuda'); or free memory.")


# ----------------------------------------------------------------------------------------
# building operators, in-process cache
# ----------------------------------------------------------------------------------------
def _valid_csr(a: dict, prefix: str, n_rows: int, n_cols: int) -> bool:
    ip, ix, d = a[prefix + "indptr"], a[prefix + "indices"], a[prefix + "data"]
    if ip.ndim != 1 or ip.size != n_rows + 1 or ix.size != d.size or ip[0] != 0 or ip[-1] != ix.size:
        return False
    if ix.size and (int(ix.min()) < 0 or int(ix.max()) >= n_cols):
        return False
    return bool(np.all(np.diff(ip) >= 0))


def _load_or_build(geom: Geometry, kind: str, sym: ops.ViewSymmetry, transpose: bool, npv=None):
    """(rows arrays, transpose arrays or None) of the stored matrix, via the disk cache."""
    P, R, D = geom.image_size ** 2, sym.n_reps, geom.n_det
    nbytes_guess = (npv or 0) * R * 8
    use_disk = projector_cache.cache_dir() is not None
    key = _cache_key(geom, kind, sym)
    names = ["indptr", "indices", "data"] + (["t_indptr", "t_indices", "t_data"] if transpose else [])
    if use_disk:
        a = projector_cache.load(key, names)
        if a is not None:
            ok = _valid_csr(a, "", R * D, P) and (not transpose or _valid_csr(a, "t_", P, R * D))
            if ok:
                log.info("projector matrix loaded from the disk cache (%s)", key[:12])
                rows = (a["indptr"], a["indices"], a["data"])
                t = (a["t_indptr"], a["t_indices"], a["t_data"]) if transpose else None
                return rows, t, "disk"
            projector_cache._discard(projector_cache._path(key), "CSR structure check failed")
        if transpose:  # the file may hold the rows without the transpose
            a = projector_cache.load(key, names[:3])
            if a is not None and _valid_csr(a, "", R * D, P):
                rows = (a["indptr"], a["indices"], a["data"])
                t = ops.transpose_csr(*rows, (R * D, P))
                _store(key, geom, kind, sym, rows, t)
                return rows, t, "disk"
    t0 = time.perf_counter()
    log.info("building the %s matrix: %d of %d views, %d x %d pixels, %d bins", kind, R, geom.n_views,
             geom.image_size, geom.image_size, D)
    rows = ops.build_rows(geom, kind, sym.reps, nnz_per_view=npv)
    t = ops.transpose_csr(*rows, (R * D, P)) if transpose else None
    log.info("built in %.1f s (%.0f M non-zeros)", time.perf_counter() - t0, rows[0][-1] / 1e6)
    if use_disk and rows[2].nbytes * 2 >= projector_cache.MIN_BYTES:
        _store(key, geom, kind, sym, rows, t)
    return rows, t, "built"


def _store(key, geom, kind, sym, rows, t):
    arrays = {"indptr": rows[0], "indices": rows[1], "data": rows[2]}
    if t is not None:
        arrays.update({"t_indptr": t[0], "t_indices": t[1], "t_data": t[2]})
    projector_cache.store(key, arrays, meta={"geometry": geom.to_dict(), "kind": kind,
                                             "n_stored_views": sym.n_reps})


_CACHE: "OrderedDict[tuple, ops.Operator]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_BUILD_LOCKS: dict = {}
_CACHE_SIZE = 4
#: how the last operator was obtained: "memory", "disk" or "built" (tests, benchmarks)
last_source: Optional[str] = None


def _cached_operator(geom: Geometry, est: MemoryEstimate, sym, dtype, device) -> ops.Operator:
    global last_source
    key = (est.kind, _rays_only(geom), est.method, est.transpose_stored, dtype, str(device))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            last_source = "memory"
            return _CACHE[key]
        lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one thread builds, the others wait and reuse it
        with _CACHE_LOCK:
            if key in _CACHE:
                last_source = "memory"
                return _CACHE[key]
        if est.method == "matrix-free":
            op = ops.MatrixFreeOperator(geom, est.kind, sym, dtype, device, MATRIX_FREE_CHUNK_BYTES)
            source = "built"
        else:
            twin = (est.kind, geom, est.method, est.transpose_stored, torch.float32, "cpu")
            with _CACHE_LOCK:
                base = _CACHE.get(twin)
            if base is not None and (dtype != torch.float32 or str(device) != "cpu"):
                # a float64 or device copy of the float32 CPU operator: reuse its arrays
                rows = (base.matrix.crow_indices().numpy(), base.matrix.col_indices().numpy(),
                        base.matrix.values().numpy())
                t = None if base.matrix_t is None else (base.matrix_t.crow_indices().numpy(),
                                                       base.matrix_t.col_indices().numpy(),
                                                       base.matrix_t.values().numpy())
                source = "memory"
            else:
                npv = est.nnz / max(sym.n_reps, 1)
                rows, t, source = _load_or_build(geom, est.kind, sym, est.transpose_stored, npv)
            op = ops.StoredOperator(geom, est.kind, sym, rows, dtype, device,
                                    store_transpose=est.transpose_stored, transpose_arrays=t)
        last_source = source
        op.source = source
        with _CACHE_LOCK:
            _CACHE[key] = op
            # at most a few operators, and (beyond the newest) within the memory budget
            limit = max(default_memory_budget(), est.budget_bytes)
            while len(_CACHE) > _CACHE_SIZE or (
                    len(_CACHE) > 1 and sum(o.nbytes for o in _CACHE.values()) > limit):
                _CACHE.popitem(last=False)
            _BUILD_LOCKS.pop(key, None)
        return op


def clear_cache() -> None:
    """Free all system matrices held in this process (the disk cache stays)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def clear_disk_cache() -> None:
    """Delete every projector matrix from the disk cache."""
    projector_cache.clear()


def build_system_matrix(geom: Geometry) -> sp.csr_matrix:
    """Transpose of the separable-footprint projection matrix: shape (H*W, V*D), float32."""
    rows = ops.build_rows(geom, "footprint", np.arange(geom.n_views))
    shape = (geom.n_views * geom.n_det, geom.image_size ** 2)
    return sp.csr_matrix((rows[2], rows[1], rows[0]), shape=shape).T.tocsr()


# ----------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------
class _LinearFunction(torch.autograd.Function):
    """y = A x (``transpose`` False) or A^T x; backward is the other one, exactly."""

    @staticmethod
    def forward(ctx, x, op: ops.Operator, transpose: bool):
        ctx.op, ctx.transpose = op, transpose
        return op.apply_t(x) if transpose else op.apply(x)

    @staticmethod
    def backward(ctx, grad):
        return _LinearFunction.apply(grad.contiguous(), ctx.op, not ctx.transpose), None, None


# ----------------------------------------------------------------------------------------
# FBP weights and filters
# ----------------------------------------------------------------------------------------
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
    ``fbp(sino, filter=DEFAULT_FILTER)``: (..., V, D) -> (..., H, W) mu in 1/mm.
    All three accept float32 or float64 tensors (or NumPy arrays) and are autograd-ready.

    ``method``: "auto" (default: the fastest that fits ``memory_budget_bytes``), "stored",
    "symmetric" or "matrix-free" (see the module docstring). The memory is estimated here,
    before anything is built (:attr:`memory_estimate`); a projector that would not fit in
    the available memory raises :class:`ProjectorMemoryError` (a MemoryError and a
    ValueError) with the numbers and advice. The matrix itself is built, or loaded from the
    disk cache, on first use (or :meth:`warm_up`).
    """

    estimate_memory = staticmethod(estimate_projector_memory)

    def __init__(self, geometry: Geometry, device: Optional[torch.device | str] = None,
                 method: str = "auto", memory_budget_bytes: Optional[int] = None):
        if not isinstance(geometry, (ParallelBeam, FanBeam)):
            raise TypeError(f"geometry must be ParallelBeam or FanBeam, got {type(geometry).__name__}")
        self.geometry = geometry
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.memory_budget_bytes = (default_memory_budget() if memory_budget_bytes is None
                                    else int(memory_budget_bytes))
        self._requested = method
        est, sym = _plan(geometry, "footprint", method, self.device, self.memory_budget_bytes)
        if not est.fits:
            raise ProjectorMemoryError(_refusal(geometry, est))
        self.memory_estimate: MemoryEstimate = est
        self._sym = sym
        self._fbp_plan = None

    def __repr__(self):
        return f"Projector({self.geometry!r}, device={self.device}, method={self.method!r})"

    @property
    def method(self) -> str:
        """"stored", "symmetric" or "matrix-free": how the forward operator is held."""
        return self.memory_estimate.method

    @property
    def memory_bytes(self) -> int:
        """Bytes held by this projector's operators once built (the estimate until then)."""
        plans = [self.memory_estimate] + ([self._fbp_plan[0]] if self._fbp_plan else [])
        mine = {(e.kind, self.geometry, e.method, e.transpose_stored) for e in plans}
        with _CACHE_LOCK:
            held = sum(op.nbytes for k, op in _CACHE.items()
                       if k[:4] in mine and k[5] == str(self.device))
        return held or self.memory_estimate.bytes

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

    def _op(self, kind, dtype) -> ops.Operator:
        if kind == "forward":
            return _cached_operator(self.geometry, self.memory_estimate, self._sym, dtype, self.device)
        if self._fbp_plan is None:  # the FBP backprojector gets what the forward one left
            self._fbp_plan = _plan(self.geometry, "interp", "auto" if self._requested != "matrix-free"
                                   else "matrix-free", self.device, self.memory_budget_bytes,
                                   reserved=self.memory_estimate.bytes)
        est, sym = self._fbp_plan
        return _cached_operator(self.geometry, est, sym, dtype, self.device)

    def warm_up(self, dtype=torch.float32) -> "Projector":
        """Build (or fetch from the caches) the system matrix now rather than on first use.

        Afterwards :attr:`setup` says how: ``{"source": "built" | "disk" | "memory",
        "seconds": ...}``."""
        t0 = time.perf_counter()
        op = self._op("forward", dtype)
        self.setup = {"source": last_source or getattr(op, "source", "built"),
                      "seconds": time.perf_counter() - t0}
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

    def filter_sinogram(self, sino, filter: str = DEFAULT_FILTER) -> torch.Tensor:
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
        # the "interp" operator maps image -> sinogram by interpolation; B is its transpose
        return self._linear(filtered, self._op("fbp", filtered.dtype), True, g.image_shape)

    def fbp(self, sino, filter: str = DEFAULT_FILTER) -> torch.Tensor:
        """Filtered backprojection: sinogram (..., V, D) -> mu image (..., H, W) in 1/mm.

        ``filter``: "ramp", "shepp-logan", "cosine" or "hann" (window on the ramp)."""
        if filter not in FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; choose one of {FILTERS}")
        return self.backproject(self.filter_sinogram(sino, filter))
