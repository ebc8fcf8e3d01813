"""Train a VAE prior: Python (:func:`train`) and CLI (``napari-lsr train``).

Objective (per batch, images normalised with the fixed HU map of :class:`VAEConfig`)::

    loss = mean_pixels(w * |x_hat - x|) + edge_weight * mean_pixels(|grad x_hat - grad x|)
           + beta(t) * KL(q(z|x) || N(0, I)) / n_pixels
    w    = 1 + soft_tissue_weight inside [-200, 300] HU, + bone_weight above 300 HU, else 1
    grad = forward differences along rows and columns (penalises blurred edges and thin bone)
    beta(t) ramps linearly from 0 to ``beta`` over ``kl_warmup_steps``

Adam, linear warm-up then cosine learning-rate decay, gradient-norm clipping. One "epoch" is
``epoch_steps`` steps (phantom data are unlimited); after each, validation on fixed slices
(MAE in HU inside the body, PSNR, SSIM from scikit-image), best and last checkpoints, history
JSON and plot (and, at the end, a samples figure) next to ``out``, early stopping after ``patience`` epochs without improvement.

Data seeds (documented so evaluation never sees training data):
  training phantoms   seeds 0 .. 999_999          (TRAIN_SEEDS)
  validation phantoms seeds 5_000_000 + k          (VAL_SEED0)
  held-out evaluation seeds >= 10_000_000          (EVAL_SEED0, :func:`evaluate_reconstruction`)

User data (``data``: files/folders readable by ``napari_lsr.data.readers.read_ct``) and the
bundled real slices (``real_slices=True``) are resampled to the model's pixel size and size and
mixed in with probability ``data_fraction``, augmented by random left-right flips and small
rotations. Multi-GPU / multi-node: launch with ``torchrun``; with WORLD_SIZE > 1 a process
group is created (nccl on CUDA, gloo on CPU), each rank draws its own disjoint phantom seeds,
gradients are averaged by DDP and rank 0 alone validates and writes files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from .model.vae import VAE, VAEConfig

TRAIN_SEEDS = 1_000_000
VAL_SEED0 = 5_000_000
EVAL_SEED0 = 10_000_000
SOFT_TISSUE_HU = (-200.0, 300.0)


@dataclass
class TrainConfig:
    """Training settings; lengths in steps, times in minutes, pixel size in mm."""

    out: str = "prior.pt"                 # best checkpoint; also <stem>_last.pt, _history.*
    image_size: int = 256
    pixel_size_mm: float = 1.5
    latent_dim: int = 128
    # defaults: the bundled prior's design (model card): pixel-unshuffle stem, widths 32..256
    # from 64^2 to 8^2, a 16x16x4 spatial latent with a conditional prior beside the vector
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 4, 8)
    attn_heads: int = 4
    stem_factor: int = 4                  # 1: conv stem; 4: pixel-unshuffle stem (see vae.py)
    full_res_block: bool = False
    spatial_channels: int = 4             # > 0: spatial latent beside the global vector
    spatial_size: int = 16
    spatial_prior: str = "conditional"    # or "standard": N(0, I) for the spatial latent
    refine_channels: int = 8              # > 0: full-resolution refiner of that width (the
    #                                       bundled prior's since v11; 0: none, ~10-15 % faster LSR)
    steps: int = 30_000                   # total optimiser steps (sets the cosine schedule)
    epoch_steps: int = 500
    batch_size: int = 8
    lr: float = 1.2e-3
    min_lr_fraction: float = 0.05
    warmup_steps: int = 500
    beta: float = 0.02
    kl_warmup_steps: int = 3_000
    soft_tissue_weight: float = 1.0
    bone_weight: float = 0.0              # extra L1 weight above BONE_HU (thin bone fades without)
    edge_weight: float = 0.0              # weight of the L1 between image gradients
    grad_clip: float = 1.0
    val_n: int = 32
    patience: int = 8                     # epochs without val-MAE improvement before stopping
    max_minutes: float | None = None      # wall-time budget of this invocation (a resumed run
    #                                       counts from its restart); stops after the epoch that hits it
    phantoms: bool = True
    regions: list = field(default_factory=list)  # phantom regions to draw (empty: all)
    bank: str | None = None               # .npy of pre-generated phantoms (made if missing)
    bank_size: int = 20_000
    bank_fraction: float = 1.0            # share of phantoms drawn from the bank (rest fresh)
    crop_fraction: float = 0.1            # share of phantoms cut to a small display field
    data: list = field(default_factory=list)
    real_slices: bool = False
    data_fraction: float = 0.25
    augment: bool = True
    resume: bool = False
    init_from: str | None = None          # start from these weights (fresh optimiser)
    calibration_n: int = 2048             # training slices the public latent is fitted to
    device: str = "auto"
    threads: int | None = 2
    bf16: bool = True                     # bfloat16 autocast (CPU and CUDA)
    channels_last: bool = True            # channels-last memory format (fastest with bf16 and
    #                                       the pixel-unshuffle stem: benchmarks/train_speed.py)
    seed: int = 0
    half: bool = False                    # store float16 weights (half the file size)
    progress: bool = True

    def vae_config(self) -> VAEConfig:
        return VAEConfig(image_size=self.image_size, latent_dim=self.latent_dim,
                         base_channels=self.base_channels, channel_mults=tuple(self.channel_mults),
                         attn_heads=self.attn_heads, pixel_size_mm=self.pixel_size_mm,
                         stem_factor=self.stem_factor, full_res_block=self.full_res_block,
                         spatial_channels=self.spatial_channels, spatial_size=self.spatial_size,
                         spatial_prior=self.spatial_prior, refine_channels=self.refine_channels)


def transfer_weights(src: VAE, dst: VAE, name="checkpoint") -> tuple[int, list[str]]:
    """Copy into ``dst`` every tensor of ``src`` with the same name and shape; returns the
    number copied and the names left at their fresh initialisation. The two models must
    agree on what an image is (size, pixel size, HU range); the architecture may differ, e.g.
    a new spatial-latent size or prior, so a longer run can start from a study arm."""
    a, b = src.config, dst.config
    for f in ("image_size", "pixel_size_mm", "hu_min", "hu_max"):
        if getattr(a, f) != getattr(b, f):
            raise ValueError(f"--init-from {name}: its {f} ({getattr(a, f)}) differs from this "
                             f"run's ({getattr(b, f)}); start from scratch instead")
    theirs, ours = src.state_dict(), dst.state_dict()
    same = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    if len(same) < len(ours) // 2:
        raise ValueError(f"--init-from {name}: only {len(same)} of {len(ours)} tensors match "
                         "this run's architecture; start from scratch instead")
    dst.load_state_dict(same, strict=False)
    return len(same), sorted(set(ours) - set(same))


def _paths(out) -> dict:
    out = Path(out)
    stem = out.with_suffix("")
    return {"best": out, "last": Path(f"{stem}_last.pt"),
            "plot": Path(f"{stem}_history.png"), "json": Path(f"{stem}_history.json")}


# -- data -----------------------------------------------------------------------------------
def region_for_seed(seed: int, regions) -> str | None:
    """The phantom region of a training seed when only ``regions`` are wanted (None: any)."""
    if not regions:
        return None
    return regions[int(np.random.default_rng([int(seed), 17]).integers(len(regions)))]


def phantom_batch(seeds, size: int, pixel_size_mm: float, regions=(),
                  fit: bool | None = True) -> np.ndarray:
    """Generated slices in HU, float32 (len(seeds), size, size); ``fit`` as in
    :func:`~napari_lsr.data.phantoms.generate_slice` (training draws use None: some large
    bodies leave the field; validation and evaluation keep every body inside)."""
    from .data.phantoms import generate_slice

    return np.stack([generate_slice(int(s), size, pixel_size_mm, region_for_seed(s, regions),
                                    fit=fit) for s in seeds])


def make_phantom_bank(path, n: int, size: int, pixel_size_mm: float, regions=(),
                      seed0: int = 0, chunk: int = 256, log=print) -> Path:
    """Write ``n`` training phantoms (seeds ``seed0 ..``) as int16 HU (n, size, size) to the
    .npy ``path`` (written to a temporary file, then renamed; about 0.13 MB per 256² slice).
    Generating costs ~15 ms per 256² slice; training from a bank saves that every step."""
    from numpy.lib.format import open_memmap

    path = Path(path)
    if seed0 + n > TRAIN_SEEDS:
        raise ValueError(f"a bank of {n} phantoms from seed {seed0} leaves the training seeds "
                         f"(0..{TRAIN_SEEDS - 1})")
    tmp = path.with_name(path.name + ".part.npy")
    arr = open_memmap(tmp, mode="w+", dtype=np.int16, shape=(n, size, size))
    t0 = time.time()
    for i in range(0, n, chunk):
        seeds = range(seed0 + i, seed0 + min(n, i + chunk))
        hu = phantom_batch(seeds, size, pixel_size_mm, regions, fit=None)
        arr[i:i + len(seeds)] = np.clip(np.rint(hu), -32768, 32767)
        log(f"phantom bank {path.name}: {i + len(seeds)}/{n} ({time.time() - t0:.0f} s)")
    arr.flush()
    del arr
    tmp.replace(path)
    return path


def open_phantom_bank(path, size: int) -> np.ndarray:
    """Memory-map a phantom bank; checks dtype and slice size."""
    bank = np.load(path, mmap_mode="r")
    if bank.ndim != 3 or bank.shape[1:] != (size, size) or bank.dtype != np.int16:
        raise ValueError(f"{path}: a phantom bank must be int16 (N, {size}, {size}); got "
                         f"{bank.dtype} {bank.shape}. Delete it to have it made again.")
    return bank


def load_slice_pool(cfg: TrainConfig) -> tuple[np.ndarray, dict]:
    """User files/folders and (optionally) bundled real slices as HU (N, S, S)."""
    from .data import readers

    slices, info = [], {"user_data": [str(p) for p in cfg.data], "n_user_slices": 0,
                        "real_slices": []}
    for p in cfg.data:
        vol = readers.read_ct(p)
        hu = readers.resample_slices(vol.hu, vol.spacing_mm[1:], cfg.pixel_size_mm,
                                     cfg.image_size)
        slices.extend(hu)
        info["n_user_slices"] += len(hu)
    if cfg.real_slices:
        for name, hu in readers.real_ct_slices(cfg.pixel_size_mm, cfg.image_size):
            slices.append(hu)
            info["real_slices"].append(name)
    pool = np.stack(slices).astype(np.float32) if slices else np.zeros((0,) * 3, np.float32)
    return pool, info


def augment(x: torch.Tensor, rng: np.random.Generator, fill: float, max_deg: float = 10.0):
    """Random left-right flip and rotation (+-max_deg) of (B,1,S,S), padding with ``fill``."""
    b = x.shape[0]
    flip = torch.from_numpy(rng.random(b) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    ang = torch.from_numpy(np.deg2rad(rng.uniform(-max_deg, max_deg, b))).float()
    c, s = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([c, -s, torch.zeros(b)], 1),
                         torch.stack([s, c, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x - fill, grid, align_corners=False) + fill


def crop_display_field(x: torch.Tensor, rng: np.random.Generator, fill: float,
                       min_frac: float = 0.2, max_frac: float = 0.7) -> torch.Tensor:
    """Cut each image of (B,1,S,S) to a random square or circle (side/diameter ``min_frac``-
    ``max_frac`` of S, off-centre), air outside: what a DICOM series reconstructed on a small
    display field looks like once placed in a larger field."""
    b, _, s, _ = x.shape
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32),
                            torch.arange(s, dtype=torch.float32), indexing="ij")
    out = x.clone()
    for i in range(b):
        half = 0.5 * s * rng.uniform(min_frac, max_frac)
        cy, cx = (s - 1) / 2 + rng.uniform(-0.15, 0.15, 2) * s
        if rng.random() < 0.5:
            keep = ((yy - cy).abs() <= half) & ((xx - cx).abs() <= half)
        else:
            keep = (yy - cy) ** 2 + (xx - cx) ** 2 <= half ** 2
        out[i, 0] = torch.where(keep, x[i, 0], torch.tensor(fill))
    return out


class BatchSource:
    """Draws training batches (normalised, (B,1,S,S)) for one rank."""

    def __init__(self, cfg: TrainConfig, model_cfg: VAEConfig, rank: int = 0, world: int = 1):
        self.cfg, self.mc, self.rank, self.world = cfg, model_cfg, rank, world
        self.pool, self.info = load_slice_pool(cfg)
        if not cfg.phantoms and len(self.pool) == 0:
            raise ValueError("no training data: phantoms disabled and no data/real slices given")
        self.rng = np.random.default_rng([cfg.seed, rank])
        self.bank = None
        if cfg.phantoms and cfg.bank:
            if not Path(cfg.bank).is_file():
                if rank == 0:
                    make_phantom_bank(cfg.bank, cfg.bank_size, model_cfg.image_size,
                                      model_cfg.pixel_size_mm, cfg.regions)
                if world > 1:
                    import torch.distributed as dist
                    dist.barrier()
            self.bank = open_phantom_bank(cfg.bank, model_cfg.image_size)
            self.info["phantom_bank"] = {"path": str(cfg.bank), "n": len(self.bank)}

    def phantoms(self, step: int, n: int) -> np.ndarray:
        """n phantom slices in HU for this step: random bank entries (a ``bank_fraction``
        share, with a random left-right flip) and freshly generated ones (seeds beyond the
        bank's)."""
        n_bank = 0 if self.bank is None else int(round(n * self.cfg.bank_fraction))
        parts = []
        if n_bank:
            idx = np.sort(self.rng.integers(0, len(self.bank), n_bank))
            hu = self.bank[idx].astype(np.float32)
            flip = self.rng.random(n_bank) < 0.5
            hu[flip] = hu[flip, :, ::-1]
            parts.append(hu)
        if n > n_bank:
            offset = 0 if self.bank is None else len(self.bank)
            seeds = (self.phantom_seeds(step)[:n - n_bank] + offset) % TRAIN_SEEDS
            parts.append(phantom_batch(seeds, self.mc.image_size, self.mc.pixel_size_mm,
                                       self.cfg.regions, fit=None))
        return np.concatenate(parts)

    def phantom_seeds(self, step: int) -> np.ndarray:
        """Disjoint across ranks and steps (until wrap-around), always in [0, TRAIN_SEEDS)."""
        b = self.cfg.batch_size
        start = self.cfg.seed * 7_919 + (step * self.world + self.rank) * b
        return (start + np.arange(b)) % TRAIN_SEEDS

    def batch(self, step: int) -> torch.Tensor:
        cfg, mc = self.cfg, self.mc
        norm = lambda hu: (torch.from_numpy(hu) - mc.hu_min) / (mc.hu_max - mc.hu_min)  # noqa: E731
        use_pool = np.zeros(cfg.batch_size, bool)
        if len(self.pool):
            use_pool = self.rng.random(cfg.batch_size) < (cfg.data_fraction if cfg.phantoms else 1)
        x = torch.empty(cfg.batch_size, 1, mc.image_size, mc.image_size)
        if (~use_pool).any():
            xp = norm(self.phantoms(step, int((~use_pool).sum())))[:, None]
            crop = self.rng.random(len(xp)) < cfg.crop_fraction
            if crop.any():
                air = (-1000.0 - mc.hu_min) / (mc.hu_max - mc.hu_min)
                xp[torch.from_numpy(crop)] = crop_display_field(xp[torch.from_numpy(crop)],
                                                                self.rng, air)
            x[torch.from_numpy(~use_pool)] = xp
        if use_pool.any():
            idx = self.rng.integers(0, len(self.pool), int(use_pool.sum()))
            xp = norm(self.pool[idx])[:, None]
            if cfg.augment:
                xp = augment(xp, self.rng, fill=(-1000.0 - mc.hu_min) / (mc.hu_max - mc.hu_min))
            x[torch.from_numpy(use_pool)] = xp
        return x.clamp(0.0, 1.0)


# -- metrics --------------------------------------------------------------------------------
BONE_HU = 300.0  # ground truth above this counts as bone in reconstruction_metrics


@torch.no_grad()
def reconstruction_metrics(model: VAE, hu: np.ndarray, batch: int = 16) -> dict:
    """Encode (posterior mean) and decode ``hu`` (N,S,S); MAE in HU inside the body (the
    phantom ``body_mask`` of the ground truth), also without the bone (ground truth above
    ``BONE_HU``) and the share of the body's error that lies in bone; PSNR (dB) and SSIM over
    the whole slice, both with ``data_range = hu_max - hu_min`` of the model's HU mapping."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from .data.phantoms import body_mask

    was_training = model.training
    model.eval()
    p = next(model.parameters())
    c = model.config
    rng_hu = c.hu_max - c.hu_min
    gt = np.clip(hu, c.hu_min, c.hu_max).astype(np.float32)
    rec = []
    for i in range(0, len(gt), batch):
        x = model.from_hu(torch.from_numpy(gt[i:i + batch])[:, None]).to(p.device, p.dtype)
        rec.append(model.to_hu(model(x)[0])[:, 0].float().cpu().numpy())
    rec = np.concatenate(rec)
    model.train(was_training)
    mae, soft, bone_share, psnr, ssim = [], [], [], [], []
    for g, r in zip(gt, rec):
        err = np.abs(g - r)
        m = body_mask(g)
        if not m.any():
            m = np.ones_like(m)
        bone = m & (g > BONE_HU)
        mae.append(float(err[m].mean()))
        soft.append(float(err[m & ~bone].mean()) if (m & ~bone).any() else float("nan"))
        bone_share.append(float(err[bone].sum() / max(err[m].sum(), 1e-6)))
        psnr.append(peak_signal_noise_ratio(g, r, data_range=rng_hu))
        ssim.append(structural_similarity(g, r, data_range=rng_hu))
    return {"mae_hu_body": float(np.mean(mae)), "mae_hu_body_without_bone": float(np.nanmean(soft)),
            "error_share_bone": float(np.mean(bone_share)), "psnr_db": float(np.mean(psnr)),
            "ssim": float(np.mean(ssim)), "n": len(gt)}


def evaluate_reconstruction(model: VAE, n: int = 64, seed0: int = EVAL_SEED0) -> dict:
    """Reconstruction metrics on ``n`` held-out phantoms, seeds ``seed0 .. seed0 + n - 1``
    (never used in training), generated at the model's size and pixel size."""
    c = model.config
    res = reconstruction_metrics(model, phantom_batch(range(seed0, seed0 + n), c.image_size,
                                                      c.pixel_size_mm))
    return {**res, "seed0": seed0}


# -- training loop --------------------------------------------------------------------------
def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _lr_lambda(cfg: TrainConfig):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))
    return f


class SpikeGuard:
    """Flags a training loss that is not finite or above ``factor`` times the median of the
    last ``window`` accepted losses (after ``warmup`` of them). After ``max_run`` flagged
    losses in a row the level has really changed: the window restarts from there."""

    def __init__(self, factor: float = 4.0, window: int = 200, warmup: int = 50,
                 max_run: int = 20):
        from collections import deque
        self.factor, self.warmup, self.max_run = factor, warmup, max_run
        self.recent = deque(maxlen=window)
        self.skipped = 0
        self.run = 0

    def bad(self, value: float) -> bool:
        """True (and counted in ``skipped``) when this loss's step should be skipped."""
        if not math.isfinite(value):
            self.skipped += 1
            return True
        if (len(self.recent) >= self.warmup and value > self.factor * float(np.median(self.recent))
                and self.run < self.max_run):
            self.run += 1
            self.skipped += 1
            return True
        if self.run >= self.max_run:
            self.recent.clear()
        self.run = 0
        self.recent.append(value)
        return False


def elbo_loss(model, x: torch.Tensor, beta: float, mc: VAEConfig, soft_tissue_weight: float = 1.0,
              bone_weight: float = 0.0, edge_weight: float = 0.0):
    """Returns (loss, reconstruction term (weighted L1 + edge term) in normalised units, KL per
    image in nats). The weights are those of :class:`TrainConfig` (see the module docstring)."""
    recon, mu, logvar = model(x)
    recon, mu, logvar = recon.float(), mu.float(), logvar.float()
    lo, hi = ((np.array(SOFT_TISSUE_HU) - mc.hu_min) / (mc.hu_max - mc.hu_min)).tolist()
    bone = (BONE_HU - mc.hu_min) / (mc.hu_max - mc.hu_min)
    w = 1.0 + soft_tissue_weight * ((x > lo) & (x < hi)).float() + bone_weight * (x > bone).float()
    rec = (w * (recon - x).abs()).mean()
    if edge_weight:
        d = recon - x
        rec = rec + edge_weight * 0.5 * ((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
                                         + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
    return rec + beta * kl / x[0].numel(), rec, kl


def plot_history(history: list, path) -> None:
    """Training loss and validation MAE per epoch, as a PNG (no global matplotlib state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    a.plot(steps, [h["train_loss"] for h in history], label="loss")
    a.plot(steps, [h["train_l1"] for h in history], label="weighted L1")
    a.set(xlabel="step", ylabel="loss (normalised units)", yscale="log", title="training")
    a.legend()
    b.plot(steps, [h["val_mae_hu_body"] for h in history], "o-")
    b.set(xlabel="step", ylabel="MAE inside body (HU)", title="validation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@torch.no_grad()
def save_samples_figure(model: VAE, path, n: int = 4, seed0: int = EVAL_SEED0, seed: int = 0,
                        window=(-1000.0, 1000.0), temperatures=(1.0, 0.7)) -> None:
    """PNG: ``n`` held-out phantoms (seeds from ``seed0``), their reconstructions, then a row
    of ``n`` random draws (:meth:`VAE.sample`) per temperature t; grey window in HU."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = model.config
    was_training = model.training
    model.eval()
    gt = phantom_batch(range(seed0, seed0 + n), c.image_size, c.pixel_size_mm)
    p = next(model.parameters())
    x = model.from_hu(torch.from_numpy(gt)[:, None].clamp(c.hu_min, c.hu_max)).to(p.device)
    rec = model.to_hu(model(x)[0])[:, 0].cpu().numpy()
    rows = [("held-out phantom", gt), ("reconstruction", rec)]
    source = "latent mixture" if len(model.mixture_weight) else "N(0, I)"
    rows += [(f"random draw, t = {t:g}\n({source})",
              model.sample(n, torch.Generator().manual_seed(seed), temperature=t).cpu().numpy())
             for t in temperatures]
    model.train(was_training)
    fig = Figure(figsize=(2.4 * n, 2.5 * len(rows) + 0.1))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for row, (name, imgs) in enumerate(rows):
        for k in range(n):
            ax = axes[row, k]
            ax.imshow(imgs[k], cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(name)
    fig.suptitle(f"window [{window[0]:.0f}, {window[1]:.0f}] HU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def train(config: TrainConfig) -> Path:
    """Train (or resume) a prior; returns the path of the best checkpoint."""
    cfg = config
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(cfg.device, local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = None
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        best = _train(cfg, rank, world, device, dist)
        if dist is not None:  # leave together: a rank that tears gloo down while rank 0
            dist.barrier()    # still calibrates can abort at exit (SIGABRT)
        return best
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, rank, world, device, dist) -> Path:
    paths = _paths(cfg.out)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    mc = cfg.vae_config()
    model = VAE(mc).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    step, history, best, bad_epochs, elapsed0 = 0, [], float("inf"), 0, 0.0
    spike_guard = SpikeGuard()

    if cfg.init_from and not (cfg.resume and paths["last"].is_file()):
        src = model_from_checkpoint(read_checkpoint(cfg.init_from), cfg.init_from)
        copied, fresh = transfer_weights(src, model, cfg.init_from)
        if main:
            print(f"initialised from {cfg.init_from} (step {src.training_summary.get('steps')}): "
                  f"{copied} tensors copied" + (f", {len(fresh)} new (architecture differs: "
                                                f"{', '.join(fresh[:4])}...)" if fresh else ""),
                  flush=True)

    if cfg.resume and paths["last"].is_file():
        ckpt = read_checkpoint(paths["last"])
        model.load_state_dict(model_from_checkpoint(ckpt, paths["last"]).state_dict())
        ex = ckpt.get("extra", {})
        opt.load_state_dict(ex["optimizer"])
        sched.load_state_dict(ex["scheduler"])
        step, best, bad_epochs = ex["step"], ex["best"], ex["bad_epochs"]
        elapsed0 = ex["elapsed_s"]
        history = json.loads(ex["history"])
        if main:
            print(f"resumed {paths['last']} at step {step}", flush=True)

    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None)
    source = BatchSource(cfg, mc, rank, world)
    val_hu = None
    if main:
        if cfg.phantoms:
            val_hu = phantom_batch(range(VAL_SEED0, VAL_SEED0 + cfg.val_n), mc.image_size,
                                   mc.pixel_size_mm, cfg.regions)
        else:
            val_hu = source.pool[-max(1, len(source.pool) // 10):]
    data_summary = {"phantoms": cfg.phantoms, "train_seeds": f"0..{TRAIN_SEEDS - 1}",
                    "val_seeds": f"{VAL_SEED0}..{VAL_SEED0 + cfg.val_n - 1}",
                    "eval_seeds": f">= {EVAL_SEED0}", **source.info,
                    "augment": "flip + rotation for user/real slices" if cfg.augment else "none"}
    bar = None
    t0 = time.time() - elapsed0  # the history's clock counts every segment of a resumed run
    started = time.time()  # --max-minutes counts this invocation only
    model.train()
    while step < cfg.steps:
        sums = np.zeros(3)
        n_ep = min(cfg.epoch_steps, cfg.steps - step)
        if main and cfg.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_ep, desc=f"steps {step}-{step + n_ep}", leave=False)
            except ImportError:
                bar = None
        t_ep = time.perf_counter()
        skipped0 = spike_guard.skipped
        for _ in range(n_ep):
            x = source.batch(step).to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            beta = cfg.beta * min(1.0, (step + 1) / max(1, cfg.kl_warmup_steps))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, l1, kl = elbo_loss(net, x, beta, mc, cfg.soft_tissue_weight,
                                         cfg.bone_weight, cfg.edge_weight)
            value = loss.item()
            if spike_guard.bad(value):
                # a non-finite or exploding loss: skip this batch rather than let one step
                # wreck Adam's moments (seen once per few thousand steps in bfloat16)
                opt.zero_grad(set_to_none=True)
                sched.step()
                step += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            sums += [value, l1.item(), kl.item()]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.0f}")
            elif main and cfg.progress and step % 50 == 0:
                print(f"step {step}: loss {loss.item():.4f} kl {kl.item():.0f}", flush=True)
        if bar is not None:
            bar.close()
        s_per_step = (time.perf_counter() - t_ep) / n_ep
        n_used = max(1, n_ep - (spike_guard.skipped - skipped0))
        stop = torch.zeros(1)
        if main:
            val = reconstruction_metrics(model, val_hu)
            rec = {"step": step, "epoch": len(history) + 1, "elapsed_s": time.time() - t0,
                   "lr": sched.get_last_lr()[0], "s_per_step": s_per_step,
                   "train_loss": sums[0] / n_used,
                   "train_l1": sums[1] / n_used, "train_kl": sums[2] / n_used,
                   "skipped_steps": spike_guard.skipped - skipped0,
                   **{f"val_{k}": v for k, v in val.items() if k != "n"}}
            history.append(rec)
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                              for k, v in rec.items()}), flush=True)
            summary = {"data": data_summary, "steps": step, "batch_size": cfg.batch_size,
                       "world_size": world, "images_seen": step * cfg.batch_size * world,
                       "wall_time_s": rec["elapsed_s"], "device": str(device),
                       "torch": torch.__version__, "last_val": val,
                       "train_config": {**asdict(cfg), "data": [str(p) for p in cfg.data]}}
            if rec["val_mae_hu_body"] < best:
                best, bad_epochs = rec["val_mae_hu_body"], 0
                save_checkpoint(model, paths["best"], {**summary, "best_val": val},
                                half=cfg.half)
            else:
                bad_epochs += 1
            extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "best": best, "bad_epochs": bad_epochs,
                     "elapsed_s": rec["elapsed_s"], "history": json.dumps(history)}
            save_checkpoint(model, paths["last"], summary, extra=extra)
            paths["json"].write_text(json.dumps(history, indent=1))
            plot_history(history, paths["plot"])
            over_time = cfg.max_minutes is not None and time.time() - started > 60 * cfg.max_minutes
            if bad_epochs >= cfg.patience or over_time:
                print("early stop: " + ("time budget reached" if over_time else
                                        f"no improvement for {bad_epochs} epochs"), flush=True)
                stop[0] = 1
        if dist is not None:
            dist.broadcast(stop, 0)
        if stop.item():
            break
    if main:
        calibrate_checkpoint(paths["best"], cfg.calibration_n, source=source, half=cfg.half)
        if cfg.phantoms:
            save_samples_figure(load_model(paths["best"]),
                                Path(f"{paths['best'].with_suffix('')}_samples.png"))
    return paths["best"]


def calibrate_checkpoint(path, n: int = 2048, source: "BatchSource | None" = None,
                         half: bool | None = None, seed0: int = 900_000,
                         mixture_only: bool = False) -> dict:
    """Fit the public latent of the prior in ``path`` and its sampling mixture (see
    ``VAE.calibrate_latent``) to ``n`` training slices and write it back (atomically).
    ``source``: the run's BatchSource (its phantoms and user data); default: phantoms with
    training seeds from ``seed0``. ``mixture_only``: refit only the sampling mixture
    (``VAE.fit_latent_mixture``), e.g. for a prior calibrated before the low-rank mixture."""
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    mc = model.config
    if half is None:
        half = any(v.dtype == torch.float16 for v in ckpt["state_dict"].values())
    if source is not None:
        x = torch.cat([source.batch(10**7 + k) for k in range(max(1, n // source.cfg.batch_size))])
    else:
        hu = phantom_batch(range(seed0, seed0 + n), mc.image_size, mc.pixel_size_mm, fit=None)
        x = model.from_hu(torch.from_numpy(hu)).clamp(0, 1)[:, None]
    if mixture_only:
        info = {**model.training_summary.get("latent_calibration", {}),
                **model.fit_latent_mixture(x)}
    else:
        info = model.calibrate_latent(x)
    summary = {**model.training_summary, "latent_calibration": info}
    save_checkpoint(model, path, summary, extra=ckpt.get("extra"), half=half)
    return info


# -- command line ---------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``napari-lsr train`` options (one per :class:`TrainConfig` field)."""
    d = TrainConfig()
    a = parser.add_argument
    a("--out", default=d.out, help="best checkpoint path; also writes <stem>_last.pt and "
      "<stem>_history.png/.json (default: %(default)s)")
    a("--data", nargs="*", default=[], help="CT files/folders (NPY, TIFF, DICOM) to mix in")
    a("--no-phantoms", dest="phantoms", action="store_false",
      help="train on --data / --real-slices only")
    a("--regions", nargs="*", default=[], help="phantom regions to draw (thorax abdomen pelvis "
      "head; default: all)")
    a("--bank", default=None, help="pre-generated phantom bank (.npy, int16 HU); made with "
      "--bank-size phantoms if missing. Saves ~15 ms per slice per step (default: generate "
      "every batch afresh)")
    a("--bank-size", type=int, default=d.bank_size, help="phantoms in a new bank "
      "(default: %(default)s)")
    a("--bank-fraction", type=float, default=d.bank_fraction, help="share of phantoms drawn "
      "from --bank; the rest are generated afresh (default: %(default)s)")
    a("--crop-fraction", type=float, default=d.crop_fraction, help="share of phantoms cut to "
      "a small display field, as small-field DICOM series look (default: %(default)s)")
    a("--real-slices", action="store_true", help="mix in the real CT slices from pydicom-data "
      "(they are also evaluation cases: leave off to keep the evaluation honest)")
    a("--data-fraction", type=float, default=d.data_fraction,
      help="share of each batch drawn from --data/--real-slices when phantoms are on "
      "(default: %(default)s)")
    a("--no-augment", dest="augment", action="store_false",
      help="no flips/rotations of user slices")
    a("--image-size", type=int, default=d.image_size, choices=(32, 64, 128, 256, 512),
      help="model image side in pixels (default: %(default)s)")
    a("--pixel-size-mm", type=float, default=d.pixel_size_mm,
      help="model pixel size in mm (default: %(default)s)")
    a("--latent-dim", type=int, default=d.latent_dim,
      help="global latent vector length (default: %(default)s)")
    a("--base-channels", type=int, default=d.base_channels,
      help="width at the stem's resolution (default: %(default)s)")
    a("--channel-mults", type=int, nargs="+", default=list(d.channel_mults),
      help="width multipliers per level (default: %(default)s)")
    a("--attn-heads", type=int, default=d.attn_heads,
      help="attention heads at the bottleneck (default: %(default)s)")
    a("--stem-factor", type=int, default=d.stem_factor, choices=(1, 2, 4, 8),
      help="1: convolution stem; 4: pixel-unshuffle stem, no convolutions at full resolution "
      "(default: %(default)s)")
    a("--full-res-block", action="store_true", help="residual block at the first level")
    a("--spatial-channels", type=int, default=d.spatial_channels,
      help="channels of a spatial latent beside the global vector; 0 = none "
      "(default: %(default)s)")
    a("--spatial-size", type=int, default=d.spatial_size,
      help="side of the spatial latent grid (default: %(default)s)")
    a("--spatial-prior", default=d.spatial_prior, choices=("standard", "conditional"),
      help="prior of the spatial latent: N(0, I), or conditional on the global vector "
      "(coherent random draws) (default: %(default)s)")
    a("--refine-channels", type=int, default=d.refine_channels,
      help="width of a full-resolution refiner after the decoder's head, for thin bone; it "
      "starts as the identity, so it can be added to a trained prior with --init-from; "
      "0 = none (default: %(default)s)")
    a("--steps", type=int, default=d.steps, help="total optimiser steps; sets the cosine "
      "schedule (default: %(default)s)")
    a("--epoch-steps", type=int, default=d.epoch_steps,
      help="steps between validations/checkpoints (default: %(default)s)")
    a("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    a("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    a("--warmup-steps", type=int, default=d.warmup_steps,
      help="linear learning-rate warm-up before the cosine decay (default: %(default)s)")
    a("--min-lr-fraction", type=float, default=d.min_lr_fraction,
      help="final learning rate as a fraction of the peak (default: %(default)s)")
    a("--beta", type=float, default=d.beta, help="KL weight, KL per pixel "
      "(default: %(default)s)")
    a("--kl-warmup-steps", type=int, default=d.kl_warmup_steps, help="(default: %(default)s)")
    a("--soft-tissue-weight", type=float, default=d.soft_tissue_weight,
      help="extra L1 weight on -200..300 HU (default: %(default)s)")
    a("--bone-weight", type=float, default=d.bone_weight,
      help="extra L1 weight above 300 HU (default: %(default)s)")
    a("--edge-weight", type=float, default=d.edge_weight,
      help="weight of the L1 between image gradients: keeps edges and thin bone sharp "
      "(default: %(default)s)")
    a("--grad-clip", type=float, default=d.grad_clip, help="(default: %(default)s)")
    a("--val-n", type=int, default=d.val_n, help="validation phantoms (default: %(default)s)")
    a("--patience", type=int, default=d.patience,
      help="epochs without improvement before stopping (default: %(default)s)")
    a("--max-minutes", type=float, default=None,
      help="wall-time budget of this invocation; with --resume it counts from the restart (default: none)")
    a("--resume", action="store_true", help="continue from <stem>_last.pt")
    a("--init-from", default=None, help="start from the weights of this checkpoint (fresh "
      "optimiser and schedule; where the architecture differs, tensors of the same name and "
      "shape are copied and the rest start fresh) (default: none)")
    a("--overwrite", action="store_true", help="allow replacing an existing --out checkpoint "
      "and its _last.pt / _history files")
    a("--device", default=d.device, choices=("auto", "cpu", "cuda"),
      help="(default: %(default)s)")
    a("--threads", type=int, default=d.threads, help="torch CPU threads (default: "
      "%(default)s; 1 when training beside other work on a 2-core machine)")
    a("--no-bf16", dest="bf16", action="store_false",
      help="train in float32 instead of bfloat16 autocast")
    a("--no-channels-last", dest="channels_last", action="store_false",
      help="contiguous instead of channels-last memory format")
    a("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    a("--calibration-n", type=int, default=d.calibration_n, help="training slices the public "
      "latent (N(0, I) over the training anatomy) is fitted to at the end (default: %(default)s)")
    a("--half", action="store_true", help="store float16 weights (half the file size)")
    a("--no-progress", dest="progress", action="store_false",
      help="no progress bar (one line per 50 steps instead)")
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Entry point for ``napari-lsr train``. Refuses, before any training, to replace an
    existing ``--out`` checkpoint or its ``_last.pt`` / ``_history`` files unless
    ``--overwrite`` (``--resume`` continues its own ``_last.pt`` and may replace them), and
    checks that the output folder can be written."""
    from .cli import check_outputs, make_folders

    names = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    cfg.channel_mults = tuple(cfg.channel_mults)
    paths = _paths(Path(cfg.out).expanduser())
    resuming = cfg.resume and paths["last"].is_file()
    hint = (f"pass --overwrite to replace, --resume to continue from {paths['last']}, or choose "
            "another --out") if paths["last"].is_file() else "pass --overwrite to replace or choose another --out"
    check_outputs({"--out": paths["best"], "--out's _last.pt": paths["last"],
                   "--out's history": paths["json"], "--out's history plot": paths["plot"]},
                  overwrite=getattr(args, "overwrite", False) or resuming, hint=hint)
    make_folders([paths["best"].parent])
    path = train(cfg)
    rank = int(os.environ.get("RANK", "0"))
    print(f"rank {rank} finished" + (f"; best checkpoint: {path}" if rank == 0 else ""),
          flush=True)
    return 0


def main(argv=None) -> int:
    """``python -m napari_lsr.train`` (handy with ``torchrun``): same options as the CLI."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="napari-lsr train",
                                                         description=__doc__.split("\n")[0]))
    try:
        return run_train(parser.parse_args(argv))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
