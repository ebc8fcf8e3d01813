"""Latent Space Reconstruction: search the prior for the image whose projection matches the
valid part of the measured sinogram, inpaint the invalid part with that projection, FBP.

    z* = argmin_z  mean over valid entries of (R(G(z)) - q)^2     Adam, then L-BFGS
    p  = M * q + (1 - M) * R(G(z*))                              measured data kept bit for bit
    f  = FBP(p)

Units: sinograms are line integrals of mu (1/mm) with lengths in mm; images are HU at the
boundary. The prior's image grid (its own size and pixel size) is resampled onto the
geometry's grid inside the optimisation, so any geometry works with any prior; outside the
prior's field of view the image is air.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Geometry
from .projector import Projector
from .units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu

__all__ = ["LSRResult", "VolumeResult", "lsr_correct", "lsr_correct_volume", "smooth_join",
           "check_inputs", "resolve_device"]

AIR_HU = -1000.0


@dataclass
class LSRResult:
    """Result of :func:`lsr_correct` for one slice (NumPy arrays)."""

    image_hu: np.ndarray        # (H, W) FBP of the completed sinogram, HU
    sinogram: np.ndarray        # (V, D) completed sinogram: measured where the mask is 1
    generated_hu: np.ndarray    # (H, W) the prior's image G(z*) on the geometry grid, HU
    z: np.ndarray               # (z_size,) optimised latent vector
    loss_history: List[float]   # masked mean squared sinogram misfit per step
    stopped: bool = False       # True when the callback stopped the run
    seconds: float = 0.0        # wall time of the optimisation


@dataclass
class VolumeResult:
    """Result of :func:`lsr_correct_volume` (stacked over slices)."""

    image_hu: np.ndarray        # (S, H, W)
    sinogram: np.ndarray        # (S, V, D)
    generated_hu: np.ndarray    # (S, H, W)
    z: np.ndarray               # (S, z_size)
    loss_history: List[List[float]] = field(default_factory=list)
    stopped: bool = False
    seconds_per_slice: List[float] = field(default_factory=list)
    slices_done: int = 0


# ----------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------
def resolve_device(device) -> torch.device:
    """None or "cpu" -> CPU; "auto" -> CUDA when available; "cuda" -> CUDA or a clear error."""
    if device is None:
        return torch.device("cpu")
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was chosen but no CUDA GPU is available; use 'cpu' or 'auto'")
    return dev


def check_inputs(sino, mask, geom: Geometry):
    """Validate one sinogram stack and its mask; returns (sino, mask) as NumPy arrays.

    The sinogram must be (..., V, D) for the geometry, the mask the same shape (a single
    (V, D) mask is accepted for a stack), values 0/1 with both present; NaN/inf are allowed
    only where the mask is 0 (missing data)."""
    sino = np.asarray(sino)
    mask = np.asarray(mask)
    if sino.dtype.kind not in "fiu":
        raise ValueError(f"sinogram must be numeric, got dtype {sino.dtype}")
    geom.check_sinogram_shape(sino.shape, "sinogram")
    if mask.shape != sino.shape and not (mask.shape == geom.sino_shape and sino.ndim == 3):
        raise ValueError(
            f"mask has shape {mask.shape} but the sinogram has shape {sino.shape}; they must match "
            f"(views x detector bins = {geom.n_views} x {geom.n_det})"
        )
    if mask.dtype == bool:
        mask = mask.astype(np.float32)
    if not np.isfinite(mask).all() or not np.isin(mask, (0, 1)).all():
        raise ValueError("mask must contain only 0 (missing/corrupt) and 1 (valid)")
    valid = np.broadcast_to(mask, sino.shape) == 1
    if not valid.any():
        raise ValueError("mask has no valid (1) entries: there is no measured data to fit")
    if valid.all():
        raise ValueError("mask marks every entry valid (1): there is nothing to correct; "
                         "mark the missing or corrupt rays with 0")
    if not np.isfinite(sino[valid]).all():
        raise ValueError("sinogram contains NaN or infinite values where the mask says the data "
                         "are valid; set those entries' mask to 0 or repair the data")
    if sino.ndim == 3:
        per_slice = np.broadcast_to(mask, sino.shape).reshape(sino.shape[0], -1)
        if (per_slice.min(axis=1) == 1).any() or (per_slice.max(axis=1) == 0).any():
            bad = np.nonzero((per_slice.min(axis=1) == 1) | (per_slice.max(axis=1) == 0))[0]
            raise ValueError(f"slices {bad.tolist()[:10]} have an all-valid or all-missing mask; "
                             "every slice needs both measured and missing entries")
    return sino, mask


# ----------------------------------------------------------------------------------------
# prior image on the geometry grid
# ----------------------------------------------------------------------------------------
class _PriorOnGrid:
    """G(z) in mu (1/mm) on the geometry's pixel grid (bilinear resampling, air outside)."""

    def __init__(self, model, geom: Geometry, device, mu_water: float):
        self.model, self.mu_water = model, mu_water
        cfg = model.config
        same = cfg.image_size == geom.image_size and math.isclose(cfg.pixel_size_mm, geom.pixel_size_mm)
        self.grid = None
        if not same:
            n = geom.image_size
            t = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) * geom.pixel_size_mm
            t = t / (cfg.image_size * cfg.pixel_size_mm / 2.0)  # normalised, align_corners=False
            gy, gx = torch.meshgrid(t, t, indexing="ij")
            self.grid = torch.stack([gx, gy], dim=-1)[None].to(device)

    def hu(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, H, W) HU on the geometry grid."""
        hu = self.model.decode_hu(z)
        if self.grid is None:
            return hu
        shifted = (hu - AIR_HU)[:, None]  # zero padding == air
        out = F.grid_sample(shifted, self.grid.expand(hu.shape[0], -1, -1, -1), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        return out[:, 0] + AIR_HU

    def mu(self, z: torch.Tensor) -> torch.Tensor:
        return hu_to_mu(self.hu(z), self.mu_water)


# ----------------------------------------------------------------------------------------
# smooth joins between measured and inpainted data
# ----------------------------------------------------------------------------------------
def _invalid_runs(valid_row: np.ndarray):
    """(start, stop) index pairs of contiguous invalid runs in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[1], valid_row.astype(np.int8), [1]]))
    return zip(np.nonzero(edges == -1)[0], np.nonzero(edges == 1)[0])


def _boundary_offset(q_row, g_row, idx, at):
    """Offset (measured - generated) extrapolated to bin ``at`` by a straight-line fit over
    the valid bins ``idx`` (offset only when there is a single bin)."""
    d = q_row[idx] - g_row[idx]
    if idx.size < 2:
        return np.full_like(np.asarray(at, dtype=np.float64), d.mean() if d.size else 0.0)
    slope, intercept = np.polyfit(idx, d, 1)
    return intercept + slope * np.asarray(at, dtype=np.float64)


def smooth_join(measured: np.ndarray, generated: np.ndarray, mask: np.ndarray,
                feather_bins: int = 16, boundary_bins: int = 4) -> np.ndarray:
    """Inpainted sinogram whose generated segments meet the measured data smoothly.

    Per view and per missing run, the misfit (measured - generated) over ``boundary_bins``
    valid bins next to each boundary is fitted by a line (offset and slope) and that line,
    extrapolated into the gap, is added to the generated segment, fading to zero over
    ``feather_bins`` bins *inside the missing run only*. A run shorter than two feathers gets
    the linear interpolation between its two boundary offsets instead. Measured entries are
    returned unchanged, bit for bit."""
    q = np.asarray(measured)
    g = np.asarray(generated, dtype=np.float64)
    valid = np.asarray(mask) == 1
    out_g = g.copy()
    flat_q, flat_g, flat_v = (a.reshape(-1, a.shape[-1]) for a in (q, out_g, valid))
    taper = 0.5 * (1 + np.cos(np.pi * np.arange(feather_bins) / feather_bins)) if feather_bins else np.zeros(0)
    for q_row, g_row, v_row in zip(flat_q, flat_g, flat_v):
        n = v_row.size
        for a, b in _invalid_runs(v_row):  # bins a..b-1 are missing
            left = np.arange(max(0, a - boundary_bins), a)
            right = np.arange(b, min(n, b + boundary_bins))
            length = b - a
            if left.size and right.size and length < 2 * feather_bins:
                d_left = _boundary_offset(q_row, g_row, left, a - 1)
                d_right = _boundary_offset(q_row, g_row, right, b)
                corr = d_left + (d_right - d_left) * np.arange(1, length + 1) / (length + 1)
            else:
                corr = np.zeros(length)
                m = min(feather_bins, length)
                if left.size:
                    corr[:m] += _boundary_offset(q_row, g_row, left, np.arange(a, a + m)) * taper[:m]
                if right.size:
                    corr[length - m:] += (_boundary_offset(q_row, g_row, right, np.arange(b - m, b))
                                          * taper[:m][::-1])
            g_row[a:b] += corr
    return np.where(valid, q, out_g.astype(q.dtype))


# ----------------------------------------------------------------------------------------
# optimisation
# ----------------------------------------------------------------------------------------
def _load_default_model(model):
    if model is not None:
        return model
    from .model import load_model
    return load_model()


class _Stop(Exception):
    pass


def _optimise(prior: _PriorOnGrid, P: Projector, q: torch.Tensor, m: torch.Tensor, z0: torch.Tensor,
              steps: int, lbfgs_steps: int, lr: float, tol: float, patience: int,
              report: Optional[Callable[[int, float, torch.Tensor], bool]]):
    """Adam then L-BFGS on z; q, m: (B, V, D); z0: (B, latent). Returns (z, history, stopped).

    The loss is the masked mean squared misfit, summed over the batch (slices independent).
    ``report(step, loss, mu_image)`` is called after every step; returning True stops."""
    n_valid = m.sum(dim=(-2, -1)).clamp_min(1.0)
    z = z0.clone().requires_grad_(True)
    history: List[float] = []

    def loss_fn():
        mu = prior.mu(z)
        r = (P.forward(mu) - q) * m
        return (r.square().sum(dim=(-2, -1)) / n_valid).sum(), mu

    def after_step(loss_value, mu):
        history.append(loss_value)
        if report is not None and report(len(history), loss_value, mu.detach()):
            raise _Stop

    def converged():
        if len(history) <= patience:
            return False
        old = history[-patience - 1]
        return (old - min(history[-patience:])) <= tol * abs(old)

    try:
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss, mu = loss_fn()
            loss.backward()
            opt.step()
            after_step(float(loss.detach()), mu)
            if converged():
                break
        if lbfgs_steps > 0:
            lbfgs = torch.optim.LBFGS([z], lr=1.0, max_iter=1, history_size=20,
                                      line_search_fn="strong_wolfe")
            state = {}

            def closure():
                lbfgs.zero_grad(set_to_none=True)
                loss, mu = loss_fn()
                loss.backward()
                state["loss"], state["mu"] = float(loss.detach()), mu
                return loss

            for _ in range(lbfgs_steps):
                lbfgs.step(closure)
                after_step(state["loss"], state["mu"])
        return z.detach(), history, False
    except _Stop:
        return z.detach(), history, True


def _finish(prior, P, q_np, mask_np, z, join: bool, fbp_filter: str, mu_water: float, feather_bins: int):
    """Completed sinograms, corrected and generated images (NumPy) for a batch of latents."""
    with torch.no_grad():
        gen_hu = prior.hu(z)
        gen_sino = P.forward(hu_to_mu(gen_hu, mu_water)).cpu().numpy()
    gen_sino = gen_sino.reshape(q_np.shape)
    if join:
        completed = smooth_join(q_np, gen_sino, mask_np, feather_bins=feather_bins)
    else:
        completed = np.where(mask_np == 1, q_np, gen_sino.astype(q_np.dtype))
    with torch.no_grad():
        image_mu = P.fbp(torch.as_tensor(completed, dtype=torch.float32, device=P.device), filter=fbp_filter)
    image_hu = mu_to_hu(image_mu, mu_water).cpu().numpy().astype(np.float32)
    return completed, image_hu, gen_hu.cpu().numpy().astype(np.float32).reshape(image_hu.shape)


def _setup(geom, model, device, mu_water):
    dev = resolve_device(device)
    model = _load_default_model(model).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    P = Projector(geom, device=dev)
    return dev, model, P, _PriorOnGrid(model, geom, dev, mu_water)


def _initial_z(model, init, batch: int, seed: int, dev) -> torch.Tensor:
    latent = model.config.z_size
    if init is not None:
        z0 = torch.as_tensor(np.asarray(init), dtype=torch.float32)
        if z0.shape[-1] != latent or z0.numel() not in (latent, batch * latent):
            raise ValueError(f"init must be a latent vector of length {latent} (this prior's "
                             f"latent size), got shape {tuple(z0.shape)}")
        return z0.reshape(-1, latent).expand(batch, latent).clone().to(dev)
    gen = torch.Generator().manual_seed(int(seed))
    return (0.1 * torch.randn(batch, latent, generator=gen)).to(dev)


def lsr_correct(sino, valid_mask, geom: Geometry, model=None, steps: int = 500, lbfgs_steps: int = 20,
                init=None, callback: Optional[Callable] = None, device=None, seed: int = 0,
                lr: float = 0.05, tol: float = 1e-4, patience: int = 50, join: bool = True,
                feather_bins: int = 16, fbp_filter: str = "shepp-logan",
                mu_water: float = MU_WATER_PER_MM) -> LSRResult:
    """Correct one sinogram (V, D) with LSR.

    ``valid_mask``: same shape, 1 = measured and trustworthy, 0 = missing/corrupt.
    ``model``: a prior from :func:`napari_lsr.load_model` (None: the bundled default).
    ``steps`` Adam steps (stop early when the loss improved by less than ``tol`` relative
    over ``patience`` steps), then ``lbfgs_steps`` L-BFGS steps. ``init``: a latent vector to
    start from (e.g. a neighbouring slice's ``z``). ``callback(step, loss, preview_hu)`` runs
    after every step and stops the run by returning True. ``join``: smooth the joins between
    measured and inpainted data (see :func:`smooth_join`). ``device``: None/"cpu", "cuda" or
    "auto". Seeded and reproducible."""
    sino, mask = check_inputs(sino, valid_mask, geom)
    if sino.ndim != 2:
        raise ValueError(f"lsr_correct takes one sinogram (views, detector); got shape {sino.shape}. "
                         "Use lsr_correct_volume for a stack.")
    if steps < 0 or lbfgs_steps < 0 or steps + lbfgs_steps == 0:
        raise ValueError("steps and lbfgs_steps must be >= 0 and not both 0")
    t0 = time.perf_counter()
    dev, model, P, prior = _setup(geom, model, device, mu_water)
    q = torch.as_tensor(np.where(mask == 1, sino, 0.0), dtype=torch.float32, device=dev)[None]
    m = torch.as_tensor(mask, dtype=torch.float32, device=dev)[None]
    report = None
    if callback is not None:
        def report(step, loss, mu):
            return bool(callback(step, loss, mu_to_hu(mu[0], mu_water).cpu().numpy()))
    z, history, stopped = _optimise(prior, P, q, m, _initial_z(model, init, 1, seed, dev), steps,
                                    lbfgs_steps, lr, tol, patience, report)
    completed, image_hu, gen_hu = _finish(prior, P, sino, mask, z, join, fbp_filter, mu_water, feather_bins)
    return LSRResult(image_hu=image_hu, sinogram=completed, generated_hu=gen_hu, z=z[0].cpu().numpy(),
                     loss_history=history, stopped=stopped, seconds=time.perf_counter() - t0)


_VOLUME_OPTIONS = {"init", "lr", "tol", "patience", "join", "feather_bins", "fbp_filter", "mu_water"}


def lsr_correct_volume(sinos, valid_masks, geom: Geometry, model=None, steps: int = 500,
                       warm_steps: int = 50, lbfgs_steps: int = 20, batch_size: int = 1,
                       callback: Optional[Callable] = None, device=None, seed: int = 0,
                       **kwargs) -> VolumeResult:
    """Correct a sinogram stack (S, V, D) slice by slice with warm starts.

    The first slice (or batch) starts cold with ``steps`` Adam steps; each later batch of
    ``batch_size`` slices starts from the previous slice's z with ``warm_steps`` steps (the
    paper: ~30 instead of ~500). ``valid_masks``: (S, V, D) or one (V, D) mask for all
    slices. ``callback(slice_index, step, loss, preview_hu)`` stops the run by returning
    True; slices finished so far are returned (``slices_done``). Other keyword arguments as
    for :func:`lsr_correct`."""
    sinos, masks = check_inputs(sinos, valid_masks, geom)
    if sinos.ndim != 3:
        raise ValueError(f"lsr_correct_volume takes a stack (slices, views, detector); got {sinos.shape}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    unknown = set(kwargs) - _VOLUME_OPTIONS
    if unknown:
        raise TypeError(f"lsr_correct_volume got unknown options {sorted(unknown)}; "
                        f"accepted: {sorted(_VOLUME_OPTIONS)}")
    masks = np.broadcast_to(masks, sinos.shape)
    mu_water = kwargs.get("mu_water", MU_WATER_PER_MM)
    opt_kw = {k: kwargs[k] for k in ("lr", "tol", "patience") if k in kwargs}
    fin_kw = dict(join=kwargs.get("join", True), fbp_filter=kwargs.get("fbp_filter", "shepp-logan"),
                  mu_water=mu_water, feather_bins=kwargs.get("feather_bins", 16))
    dev, model, P, prior = _setup(geom, model, device, mu_water)
    n = sinos.shape[0]
    out = VolumeResult(image_hu=np.zeros((n, *geom.image_shape), np.float32), sinogram=np.array(sinos, copy=True),
                       generated_hu=np.zeros((n, *geom.image_shape), np.float32),
                       z=np.zeros((n, model.config.z_size), np.float32))
    z_prev = kwargs.get("init")
    for s0 in range(0, n, batch_size):
        idx = slice(s0, min(n, s0 + batch_size))
        t0 = time.perf_counter()
        q_np, m_np = sinos[idx], np.array(masks[idx])
        q = torch.as_tensor(np.where(m_np == 1, q_np, 0.0), dtype=torch.float32, device=dev)
        m = torch.as_tensor(m_np, dtype=torch.float32, device=dev)
        report = None
        if callback is not None:
            def report(step, loss, mu, _s0=s0):
                return bool(callback(_s0, step, loss, mu_to_hu(mu[0], mu_water).cpu().numpy()))
        z0 = _initial_z(model, z_prev, q.shape[0], seed, dev)
        n_steps = steps if z_prev is None else warm_steps
        z, history, stopped = _optimise(prior, P, q, m, z0, n_steps, lbfgs_steps,
                                        opt_kw.get("lr", 0.05), opt_kw.get("tol", 1e-4),
                                        opt_kw.get("patience", 50), report)
        if stopped:
            out.stopped = True
            break
        completed, image_hu, gen_hu = _finish(prior, P, q_np, m_np, z, **fin_kw)
        out.sinogram[idx], out.image_hu[idx], out.generated_hu[idx] = completed, image_hu, gen_hu
        out.z[idx] = z.cpu().numpy()
        out.loss_history.extend([history] * q.shape[0])
        out.seconds_per_slice.extend([(time.perf_counter() - t0) / q.shape[0]] * q.shape[0])
        out.slices_done = idx.stop
        z_prev = z[-1].cpu().numpy()
    return out
