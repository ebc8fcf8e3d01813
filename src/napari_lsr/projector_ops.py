"""The linear operators behind :class:`napari_lsr.Projector`.

* **Weights** (:func:`entries`): for a block of views and pixels, the first detector bin each
  pixel touches and its weights on that bin and the next ``K - 1`` bins. ``"footprint"`` is
  the separable-footprint model of the forward projector (trapezoid: the four pixel corners
  projected onto the detector, height = chord length through the pixel centre [mm],
  integrated exactly over each bin and divided by the bin width); ``"interp"`` is the
  pixel-driven linear-interpolation backprojector of FBP (1/L^2 weighted for fan beam, L in
  mm). Pure PyTorch: the same code runs on CPU and CUDA.
* **View symmetry** (:func:`view_symmetry`): a rotation by 90 deg or a reflection of the
  square pixel grid maps the grid onto itself (a pixel permutation). Equally spaced views
  whose angle set is invariant under such a map only need one view per orbit: the others
  are the same matrix applied to a permuted image, the detector read backwards where the
  map reverses it (only when the detector is symmetric, ``det_offset_mm == 0``).
* **Operators**: :class:`StoredOperator` keeps the representative views as a CSR matrix
  (int32 indices, float32 values) and, when memory allows, its CSR transpose;
  :class:`MatrixFreeOperator` recomputes the weights chunk by chunk on every call. Both
  apply ``forward`` and ``adjoint`` through the same weights, so the adjoint is the exact
  transpose (up to float rounding of the sums).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from .geometry import FanBeam, Geometry, ParallelBeam

#: bump when the weights or the stored layout change (part of the disk-cache key)
BUILDER_VERSION = 2

KINDS = ("footprint", "interp")


# ----------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------
def detector_axis(geom: Geometry) -> Tuple[float, float]:
    """(first bin centre, bin width) on the detector coordinate: mm (parallel) or rad (fan)."""
    if isinstance(geom, FanBeam):
        return float(geom.fan_angles_rad()[0]), float(geom.det_spacing_rad)
    return float(geom.ray_offsets_mm()[0]), float(geom.det_spacing_mm)


def pixel_centres(geom: Geometry, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """x, y [mm] of every pixel centre, row-major (H*W,), float64."""
    xc, yc = geom.pixel_centres_mm()
    X, Y = np.meshgrid(xc, yc)
    return (torch.from_numpy(X.ravel()).to(device), torch.from_numpy(Y.ravel()).to(device))


def _sort4(a, b, c, d):
    a, b = torch.minimum(a, b), torch.maximum(a, b)
    c, d = torch.minimum(c, d), torch.maximum(c, d)
    a, c = torch.minimum(a, c), torch.maximum(a, c)
    b, d = torch.minimum(b, d), torch.maximum(b, d)
    b, c = torch.minimum(b, c), torch.maximum(b, c)
    return a, b, c, d


def entries(geom: Geometry, kind: str, beta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``len(beta)`` views [rad] x pixels at ``(x, y)`` [mm].

    Returns ``first`` (V, P) int64, the first detector bin touched (may lie outside
    ``[0, n_det)``), and ``w`` (V, P, K) in ``dtype``: the weight on bin ``first + k``
    (0 where the bin lies outside the detector). Positions are computed in float64 and
    only the local (sub-bin) geometry in ``dtype``, so float32 weights are accurate to
    float32 rounding wherever the pixel sits on the detector."""
    f64 = torch.float64
    beta = beta.to(f64)
    x, y = x.to(f64), y.to(f64)
    u_first, du = detector_axis(geom)
    cb, sb = torch.cos(beta)[:, None], torch.sin(beta)[:, None]
    fan = isinstance(geom, FanBeam)
    if fan:
        R = geom.sid_mm
        vx, vy = x[None, :] - R * cb, y[None, :] - R * sb  # source -> pixel centre (mm)
        dot = -(cb * vx + sb * vy)
        cross = -cb * vy + sb * vx
        t_c = (torch.atan2(cross, dot) - u_first) / du  # bin coordinate: bin d centred at d
        L2 = vx * vx + vy * vy
    else:
        t_c = (x[None, :] * cb + y[None, :] * sb - u_first) / du

    n_det = geom.n_det
    if kind == "interp":
        d0 = torch.floor(t_c)
        frac = (t_c - d0).to(dtype)
        first = d0.to(torch.int64)
        if fan:
            wt = (1.0 / L2).to(dtype)
            w = torch.stack([(1.0 - frac) * wt, frac * wt], dim=-1)
        else:
            w = torch.stack([1.0 - frac, frac], dim=-1)
    elif kind == "footprint":
        half = geom.pixel_size_mm / 2.0
        if fan:
            # corner angles relative to the centre ray (small numbers: precise in float32)
            vxd, vyd = vx.to(dtype), vy.to(dtype)
            l2d = L2.to(dtype)
            offs = []
            for dx in (-half, half):
                for dy in (-half, half):
                    c = vxd * dy - vyd * dx          # v_c x delta
                    d = l2d + vxd * dx + vyd * dy    # v_c . (v_c + delta)
                    offs.append(torch.atan2(c, d) / du)
            o0, o1, o2, o3 = _sort4(*offs)
            chord = geom.pixel_size_mm * torch.sqrt(l2d) / torch.maximum(vxd.abs(), vyd.abs())
        else:
            ac, as_ = cb.abs(), sb.abs()
            ta = (half * (ac + as_) / du).to(dtype)
            tb = (half * (ac - as_).abs() / du).to(dtype)
            o0, o1, o2, o3 = -ta, -tb, tb, ta
            chord = (geom.pixel_size_mm / torch.maximum(ac, as_)).to(dtype)
        # bin d spans [d - 1/2, d + 1/2] in t; shift so that the first bin spans [0, 1)
        lo = t_c + 0.5 + o0.to(f64)
        first = torch.floor(lo)
        base = (t_c + 0.5 - first).to(dtype)  # centre, relative to the first bin's lower edge
        first = first.to(torch.int64)
        T0, T1, T2, T3 = base + o0, base + o1, base + o2, base + o3
        T0 = torch.clamp(T0, min=0.0)  # rounding: the footprint starts inside the first bin
        n_bins = int(torch.ceil(T3.max()).item()) if T3.numel() else 1
        n_bins = max(n_bins, 1)
        # F(t): trapezoid area (unit height) left of t = R(t; T0, T1) - R(t; T2, T3), where
        # R(t; a, b) = min(max(t - a, 0), b - a)^2 / (2 (b - a)) + max(t - b, 0)
        w01, w23 = T1 - T0, T3 - T2
        i01, i23 = 0.5 / w01.clamp(min=1e-12), 0.5 / w23.clamp(min=1e-12)

        def area_left(t):
            a = torch.minimum((t - T0).clamp_(min=0.0), w01)
            b = torch.minimum((t - T2).clamp_(min=0.0), w23)
            return a * a * i01 + (t - T1).clamp_(min=0.0) - b * b * i23 - (t - T3).clamp_(min=0.0)

        ws = []
        cdf_lo = None
        for k in range(n_bins):
            cdf_hi = area_left(float(k + 1))
            ws.append(chord * (cdf_hi if cdf_lo is None else cdf_hi - cdf_lo))
            cdf_lo = cdf_hi
        w = torch.stack(ws, dim=-1)
    else:
        raise ValueError(f"unknown weight kind {kind!r}; expected one of {KINDS}")
    K = w.shape[-1]
    d = first[..., None] + torch.arange(K, device=first.device)
    # rounding leaves specks (~1e-15 mm) where a corner sits on a bin edge: not worth a slot
    tiny = 1e-6 * geom.pixel_size_mm if kind == "footprint" else 0.0
    w = torch.where((d >= 0) & (d < n_det) & (w > tiny), w, torch.zeros((), dtype=w.dtype, device=w.device))
    return first, w


def max_bins(geom: Geometry, kind: str) -> int:
    """Upper bound on the bins one pixel touches in one view (K of :func:`entries`)."""
    if kind == "interp":
        return 2
    _, du = detector_axis(geom)
    diag = geom.pixel_size_mm * math.sqrt(2.0)
    if isinstance(geom, FanBeam):
        near = geom.sid_mm - geom.fov_mm / math.sqrt(2.0)
        width = 2.0 * math.asin(min(1.0, diag / 2.0 / max(near, 1e-9))) / du
    else:
        width = diag / du
    return int(math.ceil(width)) + 1


# ----------------------------------------------------------------------------------------
# view symmetry
# ----------------------------------------------------------------------------------------
# the eight maps of the dihedral group D4 as 2x2 integer matrices acting on (x, y) [mm]
_D4 = [np.array(m, dtype=np.int64) for m in (
    [[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],   # rotations
    [[1, 0], [0, -1]], [[-1, 0], [0, 1]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]],   # reflections
)]


@dataclass
class ViewSymmetry:
    """Which stored ("representative") view and which grid map give each view.

    ``reps``: (R,) view indices that are stored. For view ``v``: ``rep_of[v]`` (position in
    ``reps``), ``map_of[v]`` (position in ``maps``), ``flip[v]`` (detector read backwards).
    ``maps``: the grid maps in use, as 2x2 integer matrices (identity first). View ``v`` of
    image ``f`` equals rep view ``rep_of[v]`` of the image ``f o T`` (``T = maps[map_of[v]]``)."""

    reps: np.ndarray
    rep_of: np.ndarray
    map_of: np.ndarray
    flip: np.ndarray
    maps: List[np.ndarray]

    @property
    def n_reps(self) -> int:
        return int(self.reps.size)

    @property
    def trivial(self) -> bool:
        return self.n_reps == self.rep_of.size and len(self.maps) == 1


def detector_symmetric(geom: Geometry) -> bool:
    """True when bin ``D-1-d`` sits at minus the position of bin ``d`` (no detector offset)."""
    return geom.det_offset_mm == 0.0


def no_symmetry(n_views: int) -> ViewSymmetry:
    v = np.arange(n_views)
    return ViewSymmetry(v, v.copy(), np.zeros(n_views, np.int64), np.zeros(n_views, bool), [_D4[0]])


def view_symmetry(geom: Geometry, tol_rad: float = 1e-7) -> ViewSymmetry:
    """Group the views into orbits of the grid's symmetry maps (see :class:`ViewSymmetry`).

    Parallel beam: a map ``T`` takes the rays of view ``theta`` (normal ``n``) to rays with
    normal ``T n``; equal to ``+n(theta')`` -> view ``theta'`` as is, ``-n(theta')`` -> view
    ``theta'`` read backwards. Fan beam: ``T`` moves the source to ``T n(beta) R``; a
    reflection reverses the fan angles. Reading backwards needs a symmetric detector."""
    beta = geom.angles_rad()
    n = beta.size
    period = 2 * math.pi
    ang = np.mod(beta, period)
    order = np.argsort(ang, kind="stable")
    sorted_ang = ang[order]
    sym_det = detector_symmetric(geom)
    parallel = isinstance(geom, ParallelBeam)

    def find(phi):
        """Index of an unassigned view at angle phi (mod 2 pi), or -1."""
        phi = phi % period
        i = int(np.searchsorted(sorted_ang, phi - tol_rad))
        for j in range(i - 1, i + 3):
            j = j % n
            dif = abs((sorted_ang[j] - phi + math.pi) % period - math.pi)
            if dif < tol_rad and rep_of[order[j]] < 0:
                return int(order[j])
        return -1

    rep_of = np.full(n, -1, np.int64)
    map_of = np.zeros(n, np.int64)
    flip = np.zeros(n, bool)
    reps: List[int] = []
    used_maps: List[int] = [0]
    for v in range(n):
        if rep_of[v] >= 0:
            continue
        r = len(reps)
        reps.append(v)
        rep_of[v] = r
        nv = np.array([math.cos(beta[v]), math.sin(beta[v])])
        for mi, T in enumerate(_D4):
            m = T @ nv
            phi = math.atan2(m[1], m[0])
            reflect = round(np.linalg.det(T)) < 0
            candidates = []
            if parallel:
                candidates = [(phi, False), (phi + math.pi, True)]
            else:
                candidates = [(phi, reflect)]
            for ph, fl in candidates:
                if fl and not sym_det:
                    continue
                w = find(ph)
                if w < 0:
                    continue
                if mi not in used_maps:
                    used_maps.append(mi)
                rep_of[w], map_of[w], flip[w] = r, used_maps.index(mi), fl
    return ViewSymmetry(np.asarray(reps, np.int64), rep_of, map_of, flip, [_D4[i] for i in used_maps])


def pixel_permutation(image_size: int, T: np.ndarray) -> np.ndarray:
    """Index array ``perm`` with ``(f o T)[q] = f[perm[q]]`` on the row-major pixel grid.

    Pixel ``(i, j)`` sits at ``2x = 2j - (N-1)``, ``2y = (N-1) - 2i`` (integers)."""
    N = image_size
    i, j = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    X2, Y2 = 2 * j - (N - 1), (N - 1) - 2 * i
    tx = T[0, 0] * X2 + T[0, 1] * Y2
    ty = T[1, 0] * X2 + T[1, 1] * Y2
    jj, ii = (tx + (N - 1)) // 2, ((N - 1) - ty) // 2
    return (ii * N + jj).ravel().astype(np.int64)


# ----------------------------------------------------------------------------------------
# building the stored matrix (CPU, float64 weights rounded to float32)
# ----------------------------------------------------------------------------------------
_BUILD_ELEMENTS = 1 << 18  # view x pixel pairs per weight evaluation (~ this x K x 8 B x 8 of temporaries)
_CHUNK_NNZ = 4_000_000     # non-zeros per view chunk (transient ~ 6 x this x 4 B)


def _chunk_pixel_major(geom, kind, beta, x, y, dtype=np.float32):
    """Entries of views ``beta`` (ray-major CSR rows ``v*D + d``) for all pixels, as the three
    CSR arrays of the (P x V*D) pixel-major matrix."""
    n_det = geom.n_det
    P = x.numel()
    nv = beta.numel()
    block = max(1, _BUILD_ELEMENTS // max(nv, 1))
    data, cols, counts = [], [], []
    off = (torch.arange(nv, dtype=torch.int64) * n_det)[None, :, None]
    for p0 in range(0, P, block):
        first, w = entries(geom, kind, beta, x[p0:p0 + block], y[p0:p0 + block])
        K = w.shape[-1]
        w = w.to(torch.float32).permute(1, 0, 2).contiguous()  # pixel-major (Pb, V, K)
        col = (off + first.t()[..., None] + torch.arange(K)).to(torch.int32)
        wn, keep = w.numpy(), (w > 0).numpy()  # NumPy's boolean indexing is ~3x faster
        data.append(wn[keep])
        cols.append(col.numpy()[keep])
        counts.append(np.count_nonzero(keep.reshape(keep.shape[0], -1), axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return np.concatenate(data), np.concatenate(cols), indptr


def build_rows(geom: Geometry, kind: str, views: np.ndarray, nnz_per_view: Optional[float] = None,
               progress=None):
    """Ray-major CSR arrays (indptr int64, indices int32 pixel, data float32) of the given
    views (rows ``i*D + d`` for the i-th listed view), built view chunk by view chunk."""
    x, y = pixel_centres(geom)
    beta_all = torch.from_numpy(geom.angles_rad()[views])
    P, D = x.numel(), geom.n_det
    per_view = max(1, int(nnz_per_view or P * (max_bins(geom, kind) + 1) * 0.6))
    vchunk = int(max(1, min(len(views), _CHUNK_NNZ // per_view)))
    parts_ptr, parts_idx, parts_val = [], [], []
    total = 0
    for v0 in range(0, len(views), vchunk):
        beta = beta_all[v0:v0 + vchunk]
        data, cols, indptr = _chunk_pixel_major(geom, kind, beta, x, y)
        m = sp.csr_matrix((data, cols, indptr), shape=(P, beta.numel() * D))
        del data, cols, indptr
        m = m.tocsc()  # counting sort: ray-major rows with ascending pixel index
        parts_ptr.append(m.indptr[1:].astype(np.int64) + total)
        total += int(m.indptr[-1])
        parts_idx.append(m.indices.astype(np.int32, copy=False))
        parts_val.append(m.data.astype(np.float32, copy=False))
        del m
        release_free_memory()
        if progress is not None:
            progress(min(v0 + vchunk, len(views)), len(views))
    indptr = np.concatenate([np.zeros(1, np.int64)] + parts_ptr)
    indices = _concat_freeing(parts_idx, np.int32, total)
    data = _concat_freeing(parts_val, np.float32, total)
    release_free_memory()
    return indptr, indices, data


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Building leaves many freed blocks of a few MB inside the heap; without this the process
    keeps them resident and the peak grows by about the size of the matrix."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes
            import ctypes.util
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _concat_freeing(parts: list, dtype, total: int) -> np.ndarray:
    """Concatenate while releasing the pieces (the output's pages are touched as we go)."""
    out = np.empty(total, dtype=dtype)
    pos = 0
    while parts:
        a = parts.pop(0)
        out[pos:pos + a.size] = a
        pos += a.size
        del a
        release_free_memory()
    return out


def transpose_csr(indptr, indices, data, shape) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays of the transpose (counting sort, linear time)."""
    m = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    t = m.tocsc()
    return t.indptr.astype(np.int64, copy=False), t.indices.astype(np.int32, copy=False), \
        t.data.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------
# operators
# ----------------------------------------------------------------------------------------
def _torch_csr(indptr, indices, data, shape, dtype, device) -> torch.Tensor:
    big = indptr[-1] >= 2**31 - 1 or max(shape) >= 2**31 - 1
    itype = np.int64 if big else np.int32
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is noise for users
        warnings.simplefilter("ignore", UserWarning)
        t = torch.sparse_csr_tensor(  # int32 indices: about 4x faster products than int64
            torch.from_numpy(np.asarray(indptr).astype(itype, copy=False)),
            torch.from_numpy(np.asarray(indices).astype(itype, copy=False)),
            torch.from_numpy(np.asarray(data)).to(dtype),
            size=shape, check_invariants=False)
    return t.to(device) if torch.device(device).type != "cpu" else t


class _SymmetryTables:
    """Gather/scatter indices between the full sinogram and the rep-view products."""

    def __init__(self, geom: Geometry, sym: ViewSymmetry, device):
        self.sym = sym
        D = geom.n_det
        self.G = len(sym.maps)
        self.identity = sym.trivial and np.array_equal(sym.reps, np.arange(sym.rep_of.size))
        d = np.arange(D)
        rows = sym.rep_of[:, None] * D + np.where(sym.flip[:, None], D - 1 - d[None, :], d[None, :])
        self.src = torch.from_numpy((rows * self.G + sym.map_of[:, None]).ravel()).to(device)
        perms = [pixel_permutation(geom.image_size, T) for T in sym.maps]
        self.perm = torch.from_numpy(np.stack(perms)).to(device)                      # (G, P)
        self.inv_perm = torch.from_numpy(np.stack([np.argsort(p) for p in perms])).to(device)

    def images_to_columns(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, P) -> (P, G*N): column g*N + n holds image n permuted by map g."""
        if self.G == 1:
            return x.t()
        N = x.shape[0]
        cols = x[:, self.perm]                  # (N, G, P)
        return cols.permute(2, 1, 0).reshape(-1, self.G * N)

    def columns_to_images(self, c: torch.Tensor, N: int) -> torch.Tensor:
        """Adjoint of :meth:`images_to_columns`: (P, G*N) -> (N, P)."""
        if self.G == 1:
            return c.t()
        c = c.reshape(-1, self.G, N)            # (P, G, N)
        out = c[self.inv_perm[0], 0, :]
        for g in range(1, self.G):
            out = out + c[self.inv_perm[g], g, :]
        return out.t()

    def rows_to_sinogram(self, yr: torch.Tensor, N: int) -> torch.Tensor:
        """(R*D, G*N) rep rows -> (N, V*D) sinogram rows."""
        if self.identity:
            return yr.t()
        flat = yr.reshape(-1, N)                # ((R*D)*G, N)
        return flat.index_select(0, self.src).t()

    def sinogram_to_rows(self, y: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Adjoint of :meth:`rows_to_sinogram`: (N, V*D) -> (R*D, G*N)."""
        N = y.shape[0]
        if self.identity:
            return y.t()
        out = torch.zeros(n_rows * self.G, N, dtype=y.dtype, device=y.device)
        out.index_add_(0, self.src, y.t())
        return out.reshape(n_rows, self.G * N)


class Operator:
    """Linear map image (H*W) -> sinogram (V*D) with its exact transpose.

    ``apply(x)``: x (N, H*W) -> (N, V*D); ``apply_t(y)``: (N, V*D) -> (N, H*W)."""

    method = "?"
    kind = "footprint"

    @property
    def nbytes(self) -> int:
        raise NotImplementedError


class StoredOperator(Operator):
    """CSR matrix of the representative views (rows ``r*D + d``), optionally with its CSR
    transpose; other views through :class:`ViewSymmetry`. ``method`` is "stored" for the
    trivial symmetry and "symmetric" otherwise."""

    def __init__(self, geom: Geometry, kind: str, sym: ViewSymmetry, arrays, dtype, device,
                 store_transpose: bool = True, transpose_arrays=None):
        self.geometry, self.kind, self.sym = geom, kind, sym
        self.device = torch.device(device)
        self.dtype = dtype
        self.method = "stored" if sym.trivial else "symmetric"
        P = geom.image_size ** 2
        self.n_rows = sym.n_reps * geom.n_det
        shape = (self.n_rows, P)
        indptr, indices, data = arrays
        self.nnz = int(indptr[-1])
        self.matrix = _torch_csr(indptr, indices, data, shape, dtype, self.device)
        self.matrix_t = None
        self._scipy = None
        cuda = self.device.type != "cpu"
        if store_transpose or cuda:  # no fast transposed product on the device without it
            if transpose_arrays is None:
                transpose_arrays = transpose_csr(indptr, indices, data, shape)
            self.matrix_t = _torch_csr(*transpose_arrays, shape[::-1], dtype, self.device)
        else:
            # transposed products through SciPy on the same memory (no copy)
            vals = self.matrix.values().numpy()
            self._scipy = sp.csr_matrix((vals, self.matrix.col_indices().numpy(),
                                         self.matrix.crow_indices().numpy()), shape=shape, copy=False)
        self.tables = _SymmetryTables(geom, sym, self.device)
        self.transpose_stored = self.matrix_t is not None

    @property
    def nbytes(self) -> int:
        n = 0
        for t in (self.matrix, self.matrix_t):
            if t is not None:
                n += t.values().nbytes + t.col_indices().nbytes + t.crow_indices().nbytes
        return n

    @staticmethod
    def _mm(mat, cols):
        if cols.shape[1] == 1:
            return (mat @ cols[:, 0].contiguous()).unsqueeze(1)
        return torch.sparse.mm(mat, cols.contiguous())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        cols = self.tables.images_to_columns(x)
        yr = self._mm(self.matrix, cols)
        return self.tables.rows_to_sinogram(yr, N)

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        N = y.shape[0]
        yr = self.tables.sinogram_to_rows(y, self.n_rows)
        if self.matrix_t is not None:
            cols = self._mm(self.matrix_t, yr)
        else:
            yn = yr.contiguous().numpy()
            cols = torch.from_numpy(np.ascontiguousarray(self._scipy.T @ yn))
            if cols.ndim == 1:
                cols = cols[:, None]
        return self.tables.columns_to_images(cols, N)


class MatrixFreeOperator(Operator):
    """Weights recomputed on every call, a chunk of representative views at a time; the
    forward scatters and the adjoint gathers through the very same weights."""

    method = "matrix-free"

    def __init__(self, geom: Geometry, kind: str, sym: ViewSymmetry, dtype, device,
                 chunk_bytes: int = 64 << 20):
        self.geometry, self.kind, self.sym = geom, kind, sym
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_rows = sym.n_reps * geom.n_det
        self.tables = _SymmetryTables(geom, sym, self.device)
        x, y = pixel_centres(geom, self.device)
        self.x, self.y = x, y
        self.beta = torch.from_numpy(geom.angles_rad()[sym.reps]).to(self.device)
        self.max_bins = max_bins(geom, kind)
        self.chunk_bytes = int(chunk_bytes)
        self.transpose_stored = False

    def view_chunk(self, n_cols: int) -> int:
        """Views per chunk so that the temporaries stay near ``chunk_bytes``."""
        item = torch.finfo(self.dtype).bits // 8
        per_view = self.x.numel() * ((self.max_bins + 1) * item * (12 + n_cols) + 80)
        return int(max(1, min(self.sym.n_reps, self.chunk_bytes // per_view)))

    @property
    def nbytes(self) -> int:
        return int(self.tables.perm.nbytes * 2 + self.x.nbytes * 2 + self.tables.src.nbytes)

    def _chunks(self, n_cols: int):
        """(first view, views, rows (P, nv*K) int64, weights (P, nv*K)) per chunk; rows index
        the chunk's ``nv * D`` rays (out-of-detector bins carry weight 0 and a valid row)."""
        D = self.geometry.n_det
        step = self.view_chunk(n_cols)
        for v0 in range(0, self.sym.n_reps, step):
            beta = self.beta[v0:v0 + step]
            first, w = entries(self.geometry, self.kind, beta, self.x, self.y, dtype=self.dtype)
            K = w.shape[-1]
            nv = beta.numel()
            rows = (torch.arange(nv, device=self.device) * D)[None, :, None] + first.t()[..., None] \
                + torch.arange(K, device=self.device)
            rows = rows.clamp_(0, nv * D - 1).reshape(rows.shape[0], -1)  # pixel-major
            yield v0, nv, rows, w.permute(1, 0, 2).reshape(rows.shape[0], -1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        cols = self.tables.images_to_columns(x.to(self.dtype)).t().contiguous()  # (G*N, P)
        GN, D = cols.shape[0], self.geometry.n_det
        out = torch.empty(GN, self.n_rows, dtype=self.dtype, device=self.device)
        for v0, nv, rows, w in self._chunks(GN):
            part = torch.zeros(GN, nv * D, dtype=self.dtype, device=self.device)
            part.index_add_(1, rows.reshape(-1), (cols[:, :, None] * w).reshape(GN, -1))
            out[:, v0 * D:(v0 + nv) * D] = part
        return self.tables.rows_to_sinogram(out.t(), N)

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        N = y.shape[0]
        yr = self.tables.sinogram_to_rows(y.to(self.dtype), self.n_rows).t().contiguous()  # (G*N, R*D)
        GN, D, P = yr.shape[0], self.geometry.n_det, self.x.numel()
        acc = torch.zeros(GN, P, dtype=self.dtype, device=self.device)
        for v0, nv, rows, w in self._chunks(GN):
            part = yr[:, v0 * D:(v0 + nv) * D]
            g = part.index_select(1, rows.reshape(-1)).reshape(GN, P, -1)
            g.mul_(w)
            for k in range(g.shape[-1]):  # a loop beats sum(dim=-1) over a handful of terms
                acc += g[:, :, k]
        return self.tables.columns_to_images(acc.t(), N)
