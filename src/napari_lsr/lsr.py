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

from .baselines import detruncate
from .geometry import Geometry
from .projector import DEFAULT_FILTER, Projector
from .units import hu_to_mu, mu_to_hu, scan_mu_water

__all__ = ["LSRResult", "VolumeResult", "FitReport", "lsr_correct", "lsr_correct_volume",
           "smooth_join", "check_inputs", "resolve_device", "noise_rms"]

AIR_HU = -1000.0
DEFAULT_Z_WEIGHT = 1e-2  # weight of the latent prior term; chosen by benchmarks/z_weight.py
WARM_Z_WEIGHT = 1e-3     # ... from a neighbouring slice's z: 0.01 on every warm batch pulled
#                          a 100-slice chain's |z| from 21 to 16, its extended field 13-18 HU
#                          worse than cold fits of the same slices; 0.001: |z| 22-30, 75.4 vs
#                          86.0 HU outside the FOM (README, "Clinical sizes")
POOR_FIT_RELATIVE_RESIDUAL = 0.06  # rms misfit / rms valid data above this (and above 3x the
#                                    noise level) means the prior cannot explain the data
#                                    (evaluation: held-out and real slices 0.6-5 %, wrong units 44 %)
COLD_LR = 0.05                     # Adam step from the average slice (z = 0)
WARM_LR = 0.01                     # Adam step from a neighbouring slice's z: 0.05 took good
#                                    starts uphill (warm-start chain: final misfit 0.0027-0.0030
#                                    at 0.05, 0.0022-0.0025 at 0.01, cold starts 0.0022-0.0026)
ADAM_BETAS = (0.9, 0.99)           # Adam's moment decays; 0.999 (torch's default) kept the
#                                    early, large gradients in its step scale and slowed the
#                                    end of the fit (metal evaluation 64.4 -> 61.5 HU with 0.99)
COARSE_FRACTION = 0.5              # share of a cold start's Adam steps fitted to every k-th
#                                    view only (the first steps only find the coarse shape)
COARSE_VIEWS_PER_PIXEL = 0.25      # k keeps about this many views per 180 deg per pixel of the
#                                    prior's side (64 at 256: 60 of the reduced 180 on the
#                                    clinical fan beam, the projector's fwd + bwd 17 vs 40 ms)
COLD_STARTS = ("random", "encoder")  # where a cold fit starts, see _run_slices
ENCODER_START_CLIP = 3.0           # the encoder start's components are clipped to +-this
#                                    (public z ~ N(0, I)): a real slice encodes to |z| 288
#                                    with components up to 69, and the fit from there failed
DEFAULT_COLD_START = "random"      # the encoder start fits the fan-beam slices better and
#                                    faster, but on the 8-case evaluation it is mixed
#                                    (truncation 28.4 / 122.3 vs 31.1 / 116.9 HU inside /
#                                    outside the FOM, metal 64.4 vs 61.5: README "How LSR runs")
PLATEAU_TOL = 1e-3                 # stop when the best loss improved by less than this
PLATEAU_PATIENCE = 40              # (relative) over this many Adam steps


def _adam_lr(lr: float | None, warm: bool) -> float:
    """Adam's step size: ``lr`` when given, else WARM_LR from a neighbour's z, COLD_LR from z = 0."""
    return lr if lr is not None else (WARM_LR if warm else COLD_LR)


def _z_weight(z_weight: float | None, warm: bool) -> float:
    """The latent prior's weight: ``z_weight`` when given, else WARM_Z_WEIGHT from a
    neighbour's z, DEFAULT_Z_WEIGHT from a cold start."""
    return z_weight if z_weight is not None else (WARM_Z_WEIGHT if warm else DEFAULT_Z_WEIGHT)


@dataclass
class FitReport:
    """How well the prior's image explains the measured (valid) data, and why the run stopped.

    misfit: final mean squared residual over the valid entries (line integrals squared);
    data_rms, noise_rms: rms of the valid data and the estimated noise standard deviation of
    the data (line integrals); relative_residual = sqrt(misfit) / data_rms; stop_reason:
    "converged" (the misfit reached the noise level or stopped improving), "max_steps" or
    "aborted"; warnings: plain-language reasons to distrust the result."""

    steps: int
    stop_reason: str
    misfit: float
    data_rms: float
    noise_rms: float
    relative_residual: float
    warnings: List[str] = field(default_factory=list)
    stop_detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict:
        return {"steps": self.steps, "stop_reason": self.stop_reason,
                "stop_detail": self.stop_detail,
                "misfit_line_integral_sq": self.misfit, "data_rms_line_integral": self.data_rms,
                "noise_rms_line_integral": self.noise_rms,
                "relative_residual": self.relative_residual, "ok": self.ok,
                "warnings": list(self.warnings)}

    def summary(self) -> str:
        return (f"{self.steps} steps ({self.stop_reason}), residual {100 * self.relative_residual:.1f} % "
                f"of the data (noise {100 * self.noise_rms / max(self.data_rms, 1e-12):.1f} %)"
                + ("" if self.ok else "; WARNING: " + " ".join(self.warnings)))


def noise_rms(sino, mask) -> float:
    """Robust estimate of the noise standard deviation of the valid data (line integrals):
    median absolute second difference along the detector, over triples of valid bins
    (for white noise of std s, the second difference has std s * sqrt(6))."""
    q = np.asarray(sino, dtype=np.float64).reshape(-1, np.shape(sino)[-1])
    v = np.broadcast_to(np.asarray(mask) == 1, np.shape(sino)).reshape(q.shape)
    d2 = q[:, :-2] - 2 * q[:, 1:-1] + q[:, 2:]
    ok = v[:, :-2] & v[:, 1:-1] & v[:, 2:] & np.isfinite(d2)
    if not ok.any():
        return 0.0
    d = d2[ok]
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(6.0))


def _object_extent_mm(sino, mask, geom: Geometry, threshold: float = 0.5) -> tuple[float, bool]:
    """Largest extent of the patient across the detector (mm at the isocentre) seen in the
    valid data, and whether it reaches the edge of the valid data (a lower bound then).
    Rays with a line integral above ``threshold`` (0.5: about 25 mm of water) count: the
    body, not the table, pads or cushions, which the prior's training slices have too."""
    q = np.asarray(sino, dtype=np.float64)
    v = np.asarray(mask) == 1
    if q.ndim == 3:
        q, v = q.reshape(-1, q.shape[-1]), np.broadcast_to(v, np.shape(sino)).reshape(-1, q.shape[-1])
    spacing = geom.det_spacing_mm if not hasattr(geom, "sid_mm") else geom.det_spacing_mm * geom.sid_mm / geom.sdd_mm
    extent, cut = 0.0, False
    for row, vrow in zip(q, v):
        inside = vrow & (np.nan_to_num(row) > threshold)
        if not inside.any():
            continue
        idx = np.nonzero(inside)[0]
        w = (idx[-1] - idx[0] + 1) * spacing
        if w > extent:
            valid_idx = np.nonzero(vrow)[0]
            extent, cut = w, idx[0] <= valid_idx[0] or idx[-1] >= valid_idx[-1]
    return extent, cut


def prior_warnings(model, geom: Geometry, sino=None, mask=None) -> List[str]:
    """Reasons why the data may lie outside what the prior knows: pixel size far from the
    prior's, an image grid larger than the prior's field, an object larger or much smaller
    than the prior's field and training anatomy."""
    c = model.config
    out = []
    field_mm = c.image_size * c.pixel_size_mm
    ratio = geom.pixel_size_mm / c.pixel_size_mm
    if ratio < 0.25 or ratio > 2.0:
        out.append(f"the image pixels ({geom.pixel_size_mm:g} mm) are far from the prior's "
                   f"({c.pixel_size_mm:g} mm): its detail does not match this grid")
    if geom.fov_mm > field_mm * 1.01:
        out.append(f"the image grid ({geom.fov_mm:.0f} mm) is larger than the prior's field "
                   f"({field_mm:.0f} mm): outside it the prior can only put air")
    if sino is not None:
        extent, cut = _object_extent_mm(sino, mask, geom)
        if extent > field_mm:
            out.append(f"the object ({extent:.0f} mm{' or more' if cut else ''}) is larger than "
                       f"the prior's field ({field_mm:.0f} mm)")
        elif 0 < extent < 0.15 * field_mm and not cut:
            out.append(f"the object ({extent:.0f} mm) is much smaller than anything the prior "
                       f"was trained on")
    return out


def _fit_report(misfit, steps, stop_reason, stop_detail, q_np, m_np, extra_warnings) -> FitReport:
    """Fit report of one slice from its final misfit and its measured data."""
    valid = (np.asarray(m_np) == 1) & np.isfinite(q_np)
    data_rms = float(np.sqrt(np.mean(np.square(np.asarray(q_np, np.float64)[valid])))) if valid.any() else 0.0
    noise = noise_rms(np.where(valid, q_np, 0.0), valid)
    misfit = float(misfit)
    rel = math.sqrt(max(misfit, 0.0)) / max(data_rms, 1e-12) if np.isfinite(misfit) else float("nan")
    warnings_ = list(extra_warnings)
    if np.isfinite(misfit) and rel > POOR_FIT_RELATIVE_RESIDUAL and math.sqrt(misfit) > 3 * noise:
        warnings_.insert(0, f"poor fit: the prior's projection misses the measured data by "
                            f"{100 * rel:.0f} % rms (noise about {100 * noise / max(data_rms, 1e-12):.1f} %); "
                            "the inpainted data are unreliable. Check the geometry and units, or "
                            "use a prior trained on this kind of scan")
    return FitReport(steps=steps, stop_reason=stop_reason, misfit=misfit, data_rms=data_rms,
                     noise_rms=noise, relative_residual=rel, warnings=warnings_,
                     stop_detail=stop_detail)


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
    fit: Optional[FitReport] = None  # fit quality, steps, stop reason and warnings


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
    fits: List[FitReport] = field(default_factory=list)  # one per finished slice


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
def _sampling_grid(out_size: int, out_pixel_mm: float, in_size: int, in_pixel_mm: float):
    """``grid_sample`` grid (1, out, out, 2) that samples a centred square image of ``in_size``
    pixels of ``in_pixel_mm`` at the pixel centres of one of ``out_size`` x ``out_pixel_mm``."""
    t = (torch.arange(out_size, dtype=torch.float32) - (out_size - 1) / 2.0) * out_pixel_mm
    t = t / (in_size * in_pixel_mm / 2.0)  # normalised, align_corners=False
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def _resample_hu(hu: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(B, H, W) HU sampled bilinearly at ``grid``; air outside the image."""
    out = F.grid_sample((hu - AIR_HU)[:, None], grid.expand(hu.shape[0], -1, -1, -1),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0] + AIR_HU  # zero padding == air


class _PriorOnGrid:
    """G(z) in mu (1/mm) on the geometry's pixel grid (bilinear resampling, air outside)."""

    def __init__(self, model, geom: Geometry, device, mu_water: float):
        self.model, self.mu_water = model, mu_water
        cfg = model.config
        same = cfg.image_size == geom.image_size and math.isclose(cfg.pixel_size_mm, geom.pixel_size_mm)
        self.grid = self.inverse_grid = None
        if not same:
            sizes = (geom.image_size, geom.pixel_size_mm, cfg.image_size, cfg.pixel_size_mm)
            self.grid = _sampling_grid(*sizes).to(device)  # the prior's image -> geometry grid
            self.inverse_grid = _sampling_grid(*sizes[2:], *sizes[:2]).to(device)

    def hu(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, H, W) HU on the geometry grid."""
        hu = self.model.decode_hu(z)
        return hu if self.grid is None else _resample_hu(hu, self.grid)

    def mu(self, z: torch.Tensor) -> torch.Tensor:
        return hu_to_mu(self.hu(z), self.mu_water)

    def to_prior_grid(self, hu: torch.Tensor) -> torch.Tensor:
        """(B, H, W) HU on the geometry grid -> (B, S, S) HU on the prior's grid (bilinear,
        air outside the geometry's grid): the inverse of :meth:`hu`'s resampling."""
        return hu if self.inverse_grid is None else _resample_hu(hu, self.inverse_grid)


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
class _Stop(Exception):
    pass


def _optimise(prior: _PriorOnGrid, P: Projector, q: torch.Tensor, m: torch.Tensor, z0: torch.Tensor,
              steps: int, lbfgs_steps: int, lr: float, tol: float, patience: int,
              report: Optional[Callable[[int, float, torch.Tensor], bool]],
              z_weight: float = 0.0, noise_var: Optional[torch.Tensor] = None,
              early_stop: bool = True, bf16: bool = False, coarse: Optional[tuple] = None):
    """Adam then L-BFGS on z; q, m: (B, V, D); z0: (B, z_size).

    The loss is the masked mean squared misfit, summed over the batch (slices independent),
    plus ``z_weight * mean(z^2)`` per slice (a Gaussian prior on z; 0 = none). Adam stops
    early when every slice's misfit is at its noise level ``noise_var`` (B,) or when the best
    loss improved by less than ``tol`` (relative) over ``patience`` steps. ``report(step,
    loss, mu_image)`` is called after every step; returning True aborts. ``bf16``: the
    prior's decoder runs under bfloat16 autocast in the Adam steps (L-BFGS stays float32).
    ``coarse = (P_coarse, k, n)``: the first ``n`` Adam steps fit every ``k``-th view only
    (``P_coarse`` projects those views), the rest all views, with the same Adam state.
    Returns (z, history of the summed data misfit, per-slice final misfit (B,), stop_reason,
    stop_detail) with stop_reason "converged", "max_steps" or "aborted"."""
    z = z0.clone().requires_grad_(True)
    history: List[float] = []
    state = {}
    full = (P, q, m, m.sum(dim=(-2, -1)).clamp_min(1.0))
    stages = [(full, steps)]
    if coarse is not None and 0 < coarse[2] < steps:
        P_c, k, n_c = coarse
        m_c = m[:, ::k].contiguous()
        stages = [((P_c, q[:, ::k].contiguous(), m_c, m_c.sum(dim=(-2, -1)).clamp_min(1.0)), n_c),
                  (full, steps - n_c)]

    def loss_fn(data_term=full, low_precision=False):
        P_, q_, m_, n_valid = data_term
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=low_precision):
            mu = prior.mu(z)
        mu = mu.float()
        r = (P_.forward(mu) - q_) * m_
        data = r.square().sum(dim=(-2, -1)) / n_valid
        state["per_slice"] = data.detach()
        total = data.sum()
        if z_weight:
            total = total + z_weight * z.square().mean(dim=1).sum()
        return total, float(data.detach().sum()), mu

    def after_step(loss_value, mu):
        history.append(loss_value)
        if report is not None and report(len(history), loss_value, mu.detach()):
            raise _Stop

    def converged(stage_start):
        if not early_stop:
            return None
        if noise_var is not None and bool((state["per_slice"] <= 1.2 * noise_var).all()):
            return f"misfit at the noise level after {len(history)} steps"
        recent = history[stage_start:]
        if len(recent) > patience:
            old = recent[-patience - 1]
            if (old - min(recent[-patience:])) <= tol * abs(old):
                return (f"loss improved by less than {tol:g} (relative) over {patience} steps, "
                        f"after {len(history)} steps")
        return None

    reason, detail = "max_steps", f"all {steps} Adam steps used"
    try:
        opt = torch.optim.Adam([z], lr=lr, betas=ADAM_BETAS)
        why = None
        for data_term, n_steps in stages:
            stage_start = len(history)
            for _ in range(n_steps):
                opt.zero_grad(set_to_none=True)
                loss, data, mu = loss_fn(data_term, bf16)
                loss.backward()
                opt.step()
                after_step(data, mu)
                why = converged(stage_start)
                if why:
                    break
        if why and data_term is full:
            reason, detail = "converged", why
        if lbfgs_steps > 0:
            lbfgs = torch.optim.LBFGS([z], lr=1.0, max_iter=1, history_size=20,
                                      line_search_fn="strong_wolfe")

            trials = []

            def closure():
                lbfgs.zero_grad(set_to_none=True)
                loss, data, mu = loss_fn()
                loss.backward()
                trials.append((float(loss.detach()), data, mu.detach()))
                return loss

            for _ in range(lbfgs_steps):
                trials.clear()
                lbfgs.step(closure)
                # the line search's last trial may be one it rejected: report the point it
                # kept, the lowest loss of the step (the misfit of a rejected trial was once
                # reported as the fit's: 40-60 % instead of 7 %)
                _, data, mu = min(trials, key=lambda t: t[0])
                after_step(data, mu)
        with torch.no_grad():  # the fit report's misfit is that of the z returned
            loss_fn()
        if history:
            history[-1] = float(state["per_slice"].sum())
        return z.detach(), history, state["per_slice"].cpu().numpy(), reason, detail
    except _Stop:
        per = state.get("per_slice")
        per = per.cpu().numpy() if per is not None else np.full(q.shape[0], np.nan)
        return z.detach(), history, per, "aborted", f"stopped by the caller after {len(history)} steps"


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


# ----------------------------------------------------------------------------------------
# the reduced problem: the measured data binned to the prior's sampling
# ----------------------------------------------------------------------------------------
REDUCED_VIEWS_PER_PIXEL = 0.7  # views per 180 deg kept for the fit, per pixel of the prior's
#                                image side (180 for 256 pixels; the prior's images are smooth).
#                                A full fan scan counts twice: 720 views over 360 deg -> 180 views.


@dataclass
class Reduction:
    """How the measured data are binned for the fit on the prior's grid: ``kv`` consecutive
    views and ``kd`` neighbouring detector bins per reduced ray (trailing partial groups are
    left out), ``pad`` missing bins added on each side so that the reduced detector covers
    the prior's field; ``geom`` is the reduced geometry (prior's image grid)."""

    geom: Geometry
    kv: int
    kd: int
    n_view_groups: int
    n_det_groups: int
    pad: int

    def reduce(self, sino: np.ndarray, mask: np.ndarray):
        """(…, V, D) data and mask -> binned (…, V', D'): mean of the group, valid only if
        every ray of the group is valid."""
        valid = np.asarray(mask) == 1
        q = np.where(valid, sino, 0.0).astype(np.float64)
        lead = q.shape[:-2]
        nv, nd = self.n_view_groups * self.kv, self.n_det_groups * self.kd
        shape = (*lead, self.n_view_groups, self.kv, self.n_det_groups, self.kd)
        qr = q[..., :nv, :nd].reshape(shape).mean(axis=(-3, -1))
        vr = valid[..., :nv, :nd].reshape(shape).all(axis=(-3, -1))
        pad = [(0, 0)] * len(lead) + [(0, 0), (self.pad, self.pad)]
        return (np.pad(qr, pad).astype(np.float32), np.pad(vr, pad).astype(np.float32))


def _detector_spacing_at_isocentre_mm(geom: Geometry) -> float:
    if hasattr(geom, "sid_mm"):
        return geom.det_spacing_mm * geom.sid_mm / geom.sdd_mm
    return geom.det_spacing_mm


def _views_per_180(geom: Geometry) -> float:
    """Distinct view directions per 180 degrees (explicit angle lists: all of them)."""
    v180 = geom.n_views * 180.0 / (geom.arc_deg if geom.angles_deg is None else 180.0)
    if hasattr(geom, "sid_mm") and geom.angles_deg is None and geom.arc_deg >= 360.0:
        v180 *= 2  # a full fan scan sees every line twice, the complementary rays interleaved
    return v180


def reduction_for(geom: Geometry, model) -> Optional[Reduction]:
    """The reduced problem for fitting ``model`` to data of geometry ``geom``, or None when
    the data are not finer than the prior's sampling and the grids agree (then the fit runs
    on the data as they are)."""
    c = model.config
    kd = max(1, int(round(c.pixel_size_mm / _detector_spacing_at_isocentre_mm(geom))))
    v180 = _views_per_180(geom)
    target = REDUCED_VIEWS_PER_PIXEL * c.image_size
    kv = max(1, int(v180 // target)) if geom.angles_deg is None else 1
    same_grid = c.image_size == geom.image_size and math.isclose(c.pixel_size_mm, geom.pixel_size_mm)
    if kd == 1 and kv == 1 and same_grid:
        return None
    n_vg, n_g = geom.n_views // kv, geom.n_det // kd
    ang = np.rad2deg(geom.angles_rad()[:n_vg * kv].reshape(n_vg, kv).mean(axis=1))
    spacing = geom.det_spacing_mm * kd
    if hasattr(geom, "fan_angles_rad"):
        centres = geom.fan_angles_rad()[:n_g * kd].reshape(n_g, kd).mean(axis=1) * geom.sdd_mm
    else:
        centres = geom.ray_offsets_mm()[:n_g * kd].reshape(n_g, kd).mean(axis=1)
    offset = float(centres.mean())
    base = dict(image_size=c.image_size, pixel_size_mm=c.pixel_size_mm, det_spacing_mm=spacing,
                det_offset_mm=offset, angles_deg=tuple(float(a) for a in ang))
    extra = {k: getattr(geom, k) for k in ("sid_mm", "sdd_mm") if hasattr(geom, k)}
    need = type(geom).min_n_det(c.image_size, c.pixel_size_mm, spacing, offset, **extra)
    pad = max(0, math.ceil((need - n_g) / 2))
    reduced = type(geom)(n_det=n_g + 2 * pad, **base, **extra)
    return Reduction(reduced, kv, kd, n_vg, n_g, pad)


@dataclass
class _Context:
    """Everything one LSR run needs: device, prior, the user's projector and prior-on-grid
    (inpainting and FBP) and those of the fit (the reduced problem, or the same)."""

    dev: torch.device
    model: object
    P: Projector
    prior: _PriorOnGrid
    reduction: Optional[Reduction]
    P_fit: Projector
    prior_fit: _PriorOnGrid
    P_coarse: Optional[Projector] = None

    def coarse_stage(self, steps: int) -> Optional[tuple]:
        """``(P_coarse, k, n)`` for :func:`_optimise`: a cold start's first ``COARSE_FRACTION``
        of ``steps`` on every k-th view of the fit (k keeps about ``COARSE_VIEWS_PER_PIXEL``
        views per 180 degrees per pixel of the prior's side), or None when k < 2."""
        g = self.P_fit.geometry
        k = coarse_view_step(g, self.model.config.image_size)
        n_coarse = int(COARSE_FRACTION * steps)
        if n_coarse < 1 or k < 2:
            return None
        if self.P_coarse is None:
            self.P_coarse = Projector(coarse_geometry(g, k), device=self.dev)
        return self.P_coarse, k, n_coarse


def coarse_view_step(geom: Geometry, prior_image_size: int) -> int:
    """Every how many views the coarse first stage of a cold start keeps (1: no coarse stage)."""
    return int(round(_views_per_180(geom) / (COARSE_VIEWS_PER_PIXEL * prior_image_size)))


def coarse_geometry(geom: Geometry, k: int) -> Geometry:
    """``geom`` with every ``k``-th view (the first stage of a cold start's fit)."""
    return geom.replace(angles_deg=tuple(float(a) for a in np.rad2deg(geom.angles_rad()[::k])))


PRECISIONS = ("auto", "float32", "bfloat16")


def use_bfloat16(precision: str, dev: torch.device) -> bool:
    """Whether the Adam steps run the decoder in bfloat16: "auto" does where the hardware has
    fast bfloat16 (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX, where it makes an LSR
    step ~1.2x faster at ~2 HU mean difference in the decoded image)."""
    if precision != "auto":
        return precision == "bfloat16"
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _setup(geom, model, device, mu_water, reduce: bool = True) -> _Context:
    dev = resolve_device(device)
    # channels-last: the decoder's forward+backward is ~25 % faster on a CPU (float32)
    model = _load_model_arg(model).to(dev, memory_format=torch.channels_last).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    P = Projector(geom, device=dev)
    prior = _PriorOnGrid(model, geom, dev, mu_water)
    red = reduction_for(geom, model) if reduce else None
    if red is None:
        return _Context(dev, model, P, prior, None, P, prior)
    return _Context(dev, model, P, prior, red, Projector(red.geom, device=dev),
                    _PriorOnGrid(model, red.geom, dev, mu_water))


def _initial_z(model, init, batch: int, seed: int, dev) -> torch.Tensor:
    """``init`` (a latent, e.g. a neighbour's z) when given, else a seeded draw near the
    latent's centre (the "random" cold start)."""
    latent = model.config.z_size
    if init is not None:
        z0 = torch.as_tensor(np.asarray(init), dtype=torch.float32)
        if z0.shape[-1] != latent or z0.numel() not in (latent, batch * latent):
            raise ValueError(f"init must be a latent vector of length {latent} (this prior's "
                             f"latent size), got shape {tuple(z0.shape)}")
        return z0.reshape(-1, latent).expand(batch, latent).clone().to(dev)
    gen = torch.Generator().manual_seed(int(seed))
    return (0.1 * torch.randn(batch, latent, generator=gen)).to(dev)


def _cold_start_z(ctx: _Context, q_np: np.ndarray, m_np: np.ndarray, opts: dict) -> torch.Tensor:
    """(B, z_size) public latents where a cold fit starts: the prior's encoder applied to the
    classical correction of the fitted data (:func:`~napari_lsr.baselines.detruncate`:
    water-cylinder extrapolation beyond the outermost valid bins, linear interpolation across
    gaps between them; then FBP), resampled to the prior's grid, each component clipped to
    +-``ENCODER_START_CLIP`` (atypical encodings are poor starts)."""
    P, prior, mu_water = ctx.P_fit, ctx.prior_fit, opts["mu_water"]
    completed = detruncate(q_np, m_np, P.geometry, mu_water)
    with torch.no_grad():
        mu = P.fbp(torch.as_tensor(completed, dtype=torch.float32, device=ctx.dev),
                   filter=opts["fbp_filter"])
        hu = prior.to_prior_grid(mu_to_hu(mu.reshape(-1, *mu.shape[-2:]), mu_water))
        model, cfg = ctx.model, ctx.model.config
        x = model.from_hu(hu.clamp(cfg.hu_min, cfg.hu_max))[:, None]
        z = model.encode(x.contiguous(memory_format=torch.channels_last))[0]
        return z.clamp(-ENCODER_START_CLIP, ENCODER_START_CLIP)


def _load_model_arg(model):
    """None -> the bundled prior; a str/Path -> that checkpoint; a model -> itself."""
    if model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .model import load_model
        return load_model(model)
    if not hasattr(model, "decode_hu"):
        raise TypeError(f"model must be a prior from napari_lsr.load_model(), a checkpoint path "
                        f"or None, got {type(model).__name__}")
    return model


def _run_slices(ctx: _Context, q_np, m_np, z0, n_steps, opts, report, warnings_, cold: bool):
    """Optimise one batch of slices on the reduced problem when there is one, then inpaint
    and reconstruct at full resolution. A warm start begins at ``z0``; a ``cold`` one at the
    start ``opts["cold_start"]`` names, "random" (``z0``) or "encoder" (:func:`_cold_start_z`),
    and fits its first steps on every k-th view (:meth:`_Context.coarse_stage`).
    Returns (z, history, fits, completed, image_hu, gen_hu, aborted)."""
    fq, fm = (q_np, m_np) if ctx.reduction is None else ctx.reduction.reduce(q_np, m_np)
    dev = ctx.dev
    q = torch.as_tensor(np.where(fm == 1, fq, 0.0), dtype=torch.float32, device=dev)
    m = torch.as_tensor(fm, dtype=torch.float32, device=dev)
    noise_var = torch.tensor([noise_rms(qi, mi) ** 2 for qi, mi in zip(fq, fm)],
                             dtype=torch.float32, device=dev)
    if cold and opts["cold_start"] == "encoder":
        z0 = _cold_start_z(ctx, fq, fm, opts)
    z, history, per, reason, detail = _optimise(
        ctx.prior_fit, ctx.P_fit, q, m, z0, n_steps, opts["lbfgs_steps"], opts["lr"], opts["tol"],
        opts["patience"], report, opts["z_weight"], noise_var, opts["early_stop"],
        use_bfloat16(opts["precision"], dev), ctx.coarse_stage(n_steps) if cold else None)
    fits = [_fit_report(per[i], len(history), reason, detail, fq[i], fm[i],
                        warnings_ + _data_warnings(ctx.model, ctx.P.geometry, q_np[i], m_np[i]))
            for i in range(q_np.shape[0])]
    if reason == "aborted":
        return z, history, fits, None, None, None, True
    completed, image_hu, gen_hu = _finish(ctx.prior, ctx.P, q_np, m_np, z, opts["join"],
                                          opts["fbp_filter"], opts["mu_water"], opts["feather_bins"])
    return z, history, fits, completed, image_hu, gen_hu, False


def _data_warnings(model, geom, sino, mask):
    """The data-dependent part of :func:`prior_warnings` (object size)."""
    return [w for w in prior_warnings(model, geom, sino, mask) if w.startswith("the object")]


def _options(steps, lbfgs_steps, lr, tol, patience, z_weight, early_stop, join, feather_bins,
             fbp_filter, mu_water, precision="auto", cold_start=DEFAULT_COLD_START) -> dict:
    if steps < 0 or lbfgs_steps < 0 or steps + lbfgs_steps == 0:
        raise ValueError("steps and lbfgs_steps must be >= 0 and not both 0")
    if z_weight < 0 or not math.isfinite(z_weight):
        raise ValueError(f"z_weight must be a finite number >= 0, got {z_weight}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if cold_start not in COLD_STARTS:
        raise ValueError(f"cold_start must be one of {COLD_STARTS}, got {cold_start!r}")
    return dict(lbfgs_steps=lbfgs_steps, lr=lr, tol=tol, patience=patience, z_weight=z_weight,
                early_stop=early_stop, join=join, feather_bins=feather_bins, fbp_filter=fbp_filter,
                mu_water=mu_water, precision=precision, cold_start=cold_start)


def lsr_correct(sino, valid_mask, geom: Geometry, model=None, steps: int = 500, lbfgs_steps: int = 20,
                init=None, callback: Optional[Callable] = None, device=None, seed: int = 0,
                lr: float | None = None, tol: float = PLATEAU_TOL, patience: int = PLATEAU_PATIENCE,
                z_weight: float | None = None, early_stop: bool = True, reduce: bool = True,
                join: bool = True, feather_bins: int = 16,
                fbp_filter: str = DEFAULT_FILTER, mu_water: float | None = None,
                precision: str = "auto", cold_start: str = DEFAULT_COLD_START) -> LSRResult:
    """Correct one sinogram (V, D) with LSR.

    ``valid_mask``: same shape, 1 = measured and trustworthy, 0 = missing/corrupt.
    ``model``: a prior from :func:`napari_lsr.load_model`, a checkpoint path, or None (the
    bundled default). ``steps``: at most this many Adam steps; Adam stops early when the
    misfit reaches the noise level of the data or the loss improved by less than ``tol``
    (relative) over ``patience`` steps; then ``lbfgs_steps`` L-BFGS steps. ``z_weight``:
    weight of a Gaussian prior term ``z_weight * mean(z^2)`` that keeps z typical (0 = none;
    None = ``DEFAULT_Z_WEIGHT`` (0.01) from a cold start, ``WARM_Z_WEIGHT`` (0.001) from ``init``).
    ``early_stop=False`` always runs all ``steps``. ``reduce``: fit the prior to the data
    binned to the prior's sampling (see :func:`reduction_for`; much faster for fine detectors
    and many views), then inpaint and reconstruct at full resolution.
    ``init``: a latent vector to start from (e.g. a neighbouring slice's ``z``); without it
    the fit starts cold, from ``cold_start``: "encoder" (the prior's encoder applied to the
    classical correction: water-cylinder extrapolation and linear interpolation of the
    missing data, FBP) or "random" (a seeded draw near the average slice, the default). ``lr``: Adam's
    step size; None = ``COLD_LR`` (0.05) from a cold start, ``WARM_LR`` (0.01) from ``init``.
    ``callback(step, loss, preview_hu)`` runs after every step and aborts the run by
    returning True. ``join``: smooth the joins between measured and inpainted data (see
    :func:`smooth_join`). ``precision``: "float32", "bfloat16" (the decoder under bfloat16
    autocast during the Adam steps; L-BFGS and the output images stay float32) or "auto"
    (bfloat16 where the hardware has it). ``device``: None/"cpu", "cuda" or "auto". The result carries a
    :class:`FitReport` (``res.fit``). Seeded and reproducible."""
    sino, mask = check_inputs(sino, valid_mask, geom)
    mu_water = scan_mu_water(geom, mu_water)
    if sino.ndim != 2:
        raise ValueError(f"lsr_correct takes one sinogram (views, detector); got shape {sino.shape}. "
                         "Use lsr_correct_volume for a stack.")
    warm = init is not None
    opts = _options(steps, lbfgs_steps, _adam_lr(lr, warm), tol, patience,
                    _z_weight(z_weight, warm), early_stop, join,
                    feather_bins, fbp_filter, mu_water, precision, cold_start)
    t0 = time.perf_counter()
    ctx = _setup(geom, model, device, mu_water, reduce)
    report = None
    if callback is not None:
        def report(step, loss, mu):
            return bool(callback(step, loss, mu_to_hu(mu[0], mu_water).cpu().numpy()))
    z0 = _initial_z(ctx.model, init, 1, seed, ctx.dev)
    z, history, fits, completed, image_hu, gen_hu, aborted = _run_slices(
        ctx, sino[None], mask[None], z0, steps, opts, report, prior_warnings(ctx.model, geom),
        cold=init is None)
    if aborted:
        completed, image_hu, gen_hu = _finish(ctx.prior, ctx.P, sino[None], mask[None], z, join,
                                              fbp_filter, mu_water, feather_bins)
    return LSRResult(image_hu=image_hu[0], sinogram=completed[0], generated_hu=gen_hu[0],
                     z=z[0].cpu().numpy(), loss_history=history, stopped=aborted,
                     seconds=time.perf_counter() - t0, fit=fits[0])


_VOLUME_OPTIONS = {"init", "lr", "tol", "patience", "z_weight", "early_stop", "reduce", "join",
                   "feather_bins", "fbp_filter", "mu_water", "precision", "cold_start"}


def lsr_correct_volume(sinos, valid_masks, geom: Geometry, model=None, steps: int = 500,
                       warm_steps: int = 50, lbfgs_steps: int = 20, batch_size: int = 1,
                       callback: Optional[Callable] = None, device=None, seed: int = 0,
                       **kwargs) -> VolumeResult:
    """Correct a sinogram stack (S, V, D) slice by slice with warm starts.

    The first slice (or batch) starts cold with at most ``steps`` Adam steps; each later
    batch of ``batch_size`` slices starts from the previous slice's z with at most
    ``warm_steps`` steps (the paper: ~30 instead of ~500) at Adam step ``WARM_LR`` and latent
    prior weight ``WARM_Z_WEIGHT`` (unless ``lr`` / ``z_weight`` are given: then for all).
    ``valid_masks``: (S, V, D) or one
    (V, D) mask for all slices. ``callback(slice_index, step, loss, preview_hu)`` aborts the
    run by returning True; slices finished so far are returned (``slices_done``). Other
    keyword arguments as for :func:`lsr_correct`; ``fits`` holds one :class:`FitReport` per
    finished slice."""
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
    mu_water = scan_mu_water(geom, kwargs.get("mu_water"))
    lr = kwargs.get("lr")
    opts = _options(steps, lbfgs_steps, _adam_lr(lr, warm=False), kwargs.get("tol", PLATEAU_TOL),
                    kwargs.get("patience", PLATEAU_PATIENCE),
                    _z_weight(kwargs.get("z_weight"), warm=False),
                    kwargs.get("early_stop", True), kwargs.get("join", True), kwargs.get("feather_bins", 16),
                    kwargs.get("fbp_filter", DEFAULT_FILTER), mu_water,
                    kwargs.get("precision", "auto"), kwargs.get("cold_start", DEFAULT_COLD_START))
    ctx = _setup(geom, model, device, mu_water, kwargs.get("reduce", True))
    model, dev = ctx.model, ctx.dev
    grid_warnings = prior_warnings(model, geom)
    n = sinos.shape[0]
    out = VolumeResult(image_hu=np.zeros((n, *geom.image_shape), np.float32), sinogram=np.array(sinos, copy=True),
                       generated_hu=np.zeros((n, *geom.image_shape), np.float32),
                       z=np.zeros((n, model.config.z_size), np.float32))
    z_prev = kwargs.get("init")
    for s0 in range(0, n, batch_size):
        idx = slice(s0, min(n, s0 + batch_size))
        t0 = time.perf_counter()
        q_np, m_np = sinos[idx], np.array(masks[idx])
        report = None
        if callback is not None:
            def report(step, loss, mu, _s0=s0):
                return bool(callback(_s0, step, loss, mu_to_hu(mu[0], mu_water).cpu().numpy()))
        z0 = _initial_z(model, z_prev, q_np.shape[0], seed, dev)
        n_steps = steps if z_prev is None else warm_steps
        warm = z_prev is not None
        batch_opts = {**opts, "lr": _adam_lr(lr, warm),
                      "z_weight": _z_weight(kwargs.get("z_weight"), warm)}
        z, history, fits, completed, image_hu, gen_hu, aborted = _run_slices(
            ctx, q_np, m_np, z0, n_steps, batch_opts, report, grid_warnings, cold=z_prev is None)
        if aborted:
            out.stopped = True
            break
        out.sinogram[idx], out.image_hu[idx], out.generated_hu[idx] = completed, image_hu, gen_hu
        out.z[idx] = z.cpu().numpy()
        out.loss_history.extend([history] * q_np.shape[0])
        out.fits.extend(fits)
        out.seconds_per_slice.extend([(time.perf_counter() - t0) / q_np.shape[0]] * q_np.shape[0])
        out.slices_done = idx.stop
        z_prev = z[-1].cpu().numpy()
    return out
