"""Convolutional VAE prior for CT slices.

Images enter and leave the network *normalised*: the fixed linear map
``x01 = (HU - hu_min) / (hu_max - hu_min)`` with ``[hu_min, hu_max] = [-1024, 3071]`` HU
-> ``[0, 1]`` (never per-slice normalisation, which would destroy HU). ``to_hu`` / ``from_hu``
implement it; ``decode_hu`` returns HU directly.

Architecture (``channel_mults`` listed from the stem's resolution down to the bottleneck,
each entry one resolution level, each level halving the size):

    encoder  x (B,1,S,S) -> stem -> [ResBlock, strided conv] x levels -> ResBlock -> attention
             -> flatten -> linear -> (mu, logvar)   (B, latent_dim) each   [global latent]
             (+ at the level of size spatial_size: 1x1 conv -> (mu, logvar) of a spatial
              latent (B, spatial_channels, spatial_size, spatial_size))   [spatial latent]
    decoder  z -> linear -> (C, b, b) -> ResBlock -> attention
             -> [nearest upsample, conv, ResBlock] x levels (the spatial latent is added,
                through a 1x1 conv, at its level) -> head -> sigmoid -> (B,1,S,S)

Stems: ``stem_factor`` 1 is a 3x3 convolution at full resolution (the head is GroupNorm,
SiLU, 3x3 conv to one channel); ``stem_factor`` f > 1 is pixel unshuffle (space to depth,
f x f pixels -> f^2 channels at S/f) and the head is pixel shuffle back to 4 channels at full
resolution followed by a 3x3 convolution to one: no wide convolutions at full resolution,
which is what makes it fast on a CPU.

The latent ``z`` the LSR engine optimises is one flat vector of ``config.z_size`` numbers:
the global part (``latent_dim``) followed by the flattened spatial part (if any); its prior
is N(0, I) throughout.

GroupNorm only (no BatchNorm), so a batch of one decodes exactly like a batch of many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from .mixture import DEFAULT_COMPONENTS, DEFAULT_RANK, fit_lowrank_gmm, sample_gmm


@dataclass
class VAEConfig:
    """Everything needed to rebuild a :class:`VAE`.

    image_size: side in pixels (128, 256 or 512); pixel_size_mm: the pixel size the prior was
    trained at (mm); hu_min/hu_max: HU mapped to 0 and 1; base_channels: width at the stem's
    resolution; channel_mults: width multipliers per level, stem resolution first;
    bottleneck_channels: channels squeezed (1x1 conv) before the latent linear layers;
    full_res_block: add a residual block at the first level (always on for stem_factor > 1);
    stem_factor: 1 (convolution stem) or 2/4 (pixel-unshuffle stem, see module docstring);
    spatial_channels / spatial_size: a spatial latent of that many channels on a
    spatial_size x spatial_size grid beside the global vector (0 channels: none);
    spatial_prior: "standard" (the spatial latent's prior is N(0, I)) or "conditional" (its
    prior is N(mu(g), sigma(g)^2), predicted from the global vector g; z then holds the
    whitened spatial latent, so z ~ N(0, I) still, and random draws are coherent images);
    refine_channels: width of the full-resolution refiner (0: none).
    """

    image_size: int = 256
    latent_dim: int = 128
    base_channels: int = 8
    channel_mults: tuple = (1, 2, 4, 8, 16, 32)
    attn_heads: int = 4
    bottleneck_channels: int = 32
    full_res_block: bool = False
    hu_min: float = -1024.0
    hu_max: float = 3071.0
    pixel_size_mm: float = 1.5
    stem_factor: int = 1
    spatial_channels: int = 0
    spatial_size: int = 16
    spatial_prior: str = "standard"
    refine_channels: int = 0

    def __post_init__(self):
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        n_down = len(self.channel_mults) - 1
        if self.stem_factor not in (1, 2, 4, 8):
            raise ValueError(f"stem_factor must be 1, 2, 4 or 8, got {self.stem_factor}")
        inner = self.image_size // self.stem_factor
        if (self.image_size % self.stem_factor or inner % (2 ** n_down)
                or inner // 2 ** n_down < 2):
            raise ValueError(f"image_size {self.image_size} with stem_factor {self.stem_factor} "
                             f"is not divisible into {n_down} halvings down to >= 2 pixels; "
                             "change image_size, stem_factor or channel_mults")
        odd = [w for w in self.widths if w > 8 and w % 8]
        if odd:
            raise ValueError(f"base_channels {self.base_channels} x channel_mults "
                             f"{self.channel_mults} gives widths {odd} that GroupNorm's 8 groups "
                             "cannot split: use a base width that is a multiple of 8 (or below 8)")
        if self.refine_channels < 0:
            raise ValueError(f"refine_channels must be >= 0, got {self.refine_channels}")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be greater than hu_min")
        if self.spatial_prior not in ("standard", "conditional"):
            raise ValueError(f"spatial_prior must be 'standard' or 'conditional', got "
                             f"{self.spatial_prior!r}")
        if self.spatial_channels and self.spatial_size not in self.level_sizes:
            raise ValueError(f"spatial_size {self.spatial_size} is not one of the network's "
                             f"resolutions {self.level_sizes}")

    @property
    def level_sizes(self) -> list[int]:
        """Feature-map side at each level, stem resolution first."""
        inner = self.image_size // self.stem_factor
        return [inner // 2 ** i for i in range(len(self.channel_mults))]

    @property
    def bottleneck_size(self) -> int:
        return self.level_sizes[-1]

    @property
    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mults]

    @property
    def spatial_level(self) -> int | None:
        """Index of the level that carries the spatial latent (None without one)."""
        return self.level_sizes.index(self.spatial_size) if self.spatial_channels else None

    @property
    def z_size(self) -> int:
        """Length of the flat latent vector z (global + spatial parts)."""
        return self.latent_dim + self.spatial_channels * self.spatial_size ** 2


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) x 2 + identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  _norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of a (small) feature map, residual."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x):
        # Computed explicitly from the nn.MultiheadAttention weights: its inference "fast
        # path" would make frozen and trainable copies of a model differ in the last bits.
        b, c, h, w = x.shape
        a, nh = self.attn, self.attn.num_heads
        t = self.norm(x).flatten(2).transpose(1, 2)          # (B, HW, C)
        q, k, v = (u.reshape(b, h * w, nh, c // nh).transpose(1, 2)
                   for u in F.linear(t, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1))
        t = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + a.out_proj(t).transpose(1, 2).reshape(b, c, h, w)


# log-variance bounds: posteriors at most e^2 times wider than N(0, 1); a conditional prior
# between e^-5 and e^2 (whitening amplifies by at most e^2.5). Wider bounds let a single bad
# batch blow the KL up to ~1e5 nats and wreck training (seen at step ~4 500 in bfloat16).
POSTERIOR_LOGVAR = (-16.0, 2.0)
PRIOR_LOGVAR = (-5.0, 2.0)


class ConditionalPrior(nn.Module):
    """Prior of the spatial latent given the global vector: g (B, latent_dim) -> (mu, logvar),
    each (B, C * s * s). Starts as N(0, I) (last convolution zero)."""

    def __init__(self, latent_dim: int, channels: int, size: int, spatial_size: int, out: int):
        super().__init__()
        self.channels, self.size, self.spatial_size = channels, size, spatial_size
        self.lin = nn.Linear(latent_dim, channels * size * size)
        self.net = nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.SiLU(),
                                 nn.Upsample(size=(spatial_size, spatial_size), mode="nearest"),
                                 nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(64, 2 * out, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, g: torch.Tensor):
        h = self.lin(g).view(g.shape[0], self.channels, self.size, self.size)
        mu, logvar = self.net(h).chunk(2, dim=1)
        return mu.flatten(1), logvar.flatten(1).clamp(*PRIOR_LOGVAR)


class Refiner(nn.Module):
    """Full-resolution refinement: (features (B,c,S,S), logit (B,1,S,S)) -> refined logit,
    the logit plus three 3x3 convolutions of both; the last starts at zero (identity)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels + 1, channels, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(channels, 1, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
        return logit + self.net(torch.cat([features, logit], 1))


class VAE(nn.Module):
    """Encoder/decoder VAE on normalised CT slices; see the module docstring."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.training_summary: dict = {}
        w = cfg.widths
        b = cfg.bottleneck_size
        nb = cfg.bottleneck_channels
        f = cfg.stem_factor
        flat = nb * b * b
        level0 = cfg.full_res_block or f > 1
        block = lambda i: ResBlock(w[i]) if i or level0 else nn.SiLU()  # noqa: E731
        k = cfg.spatial_level

        # encoder; _enc_tap: index of the module whose output feeds the spatial latent
        enc = [nn.PixelUnshuffle(f)] if f > 1 else []
        enc += [nn.Conv2d(f * f, w[0], 3, padding=1)]
        self._enc_tap = len(enc) - 1 if k == 0 else None
        for i in range(len(w) - 1):
            enc += [block(i), nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1)]
            if k == i + 1:
                self._enc_tap = len(enc) - 1
        enc += [ResBlock(w[-1]), SelfAttention(w[-1], cfg.attn_heads), _norm(w[-1]), nn.SiLU(),
                nn.Conv2d(w[-1], nb, 1)]
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Linear(flat, 2 * cfg.latent_dim)

        # decoder; _dec_tap: index of the module after whose output the spatial latent is added
        self.from_latent = nn.Linear(cfg.latent_dim, flat)
        dec = [nn.Conv2d(nb, w[-1], 1), ResBlock(w[-1]), SelfAttention(w[-1], cfg.attn_heads)]
        self._dec_tap = len(dec) - 1 if k == len(w) - 1 else None
        for i in range(len(w) - 1, 0, -1):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(w[i], w[i - 1], 3, padding=1), block(i - 1)]
            if k == i - 1:
                self._dec_tap = len(dec) - 1
        if f > 1:
            dec += [_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], 4 * f * f, 3, padding=1),
                    nn.PixelShuffle(f), nn.Conv2d(4, 1, 3, padding=1)]
        else:
            dec += [_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        if cfg.refine_channels:
            self.refiner = Refiner(dec[-1].in_channels, cfg.refine_channels)
        if k is not None:
            cs = cfg.spatial_channels
            self.to_spatial = nn.Sequential(_norm(w[k]), nn.SiLU(), nn.Conv2d(w[k], 2 * cs, 1))
            self.from_spatial = nn.Conv2d(cs, w[k], 1)
            if cfg.spatial_prior == "conditional":
                self.spatial_prior = ConditionalPrior(cfg.latent_dim, nb, b, cfg.spatial_size,
                                                      cs)
        # latent calibration (identity until calibrate_latent): the public z is
        # u ~ N(0, I) of a Gaussian fitted to the encodings of training slices
        n_s = cfg.z_size - cfg.latent_dim
        self.register_buffer("latent_shift", torch.zeros(cfg.z_size))
        self.register_buffer("global_chol", torch.eye(cfg.latent_dim))
        self.register_buffer("spatial_scale", torch.ones(n_s))
        # sampling mixture over u (none until calibrate_latent; see model/mixture.py)
        self.register_buffer("mixture_weight", torch.zeros(0))
        self.register_buffer("mixture_mean", torch.zeros(0, cfg.z_size))
        self.register_buffer("mixture_std", torch.zeros(0, cfg.z_size))
        self.register_buffer("mixture_factors", torch.zeros(0, 0, cfg.z_size))

    CALIBRATION_BUFFERS = ("latent_shift", "global_chol", "spatial_scale", "mixture_weight",
                           "mixture_mean", "mixture_std", "mixture_factors")

    def set_latent_mixture(self, weight: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                           factors: torch.Tensor | None = None) -> None:
        """Install a sampling mixture over the public latent: weights (K,), means and
        (residual) stds (K, z_size), principal factors (K, R, z_size) or None (diagonal
        components, files from before 2026-11-27); K = 0 removes it (:meth:`sample` then
        draws from N(0, I)). See ``model/mixture.py``."""
        k, z = len(weight), self.config.z_size
        if factors is None:
            factors = torch.zeros(k, 0, z)
        if mean.shape != (k, z) or std.shape != (k, z) or factors.ndim != 3 \
                or factors.shape[::2] != (k, z):
            raise ValueError(f"latent mixture of {k} components needs means and stds of shape "
                             f"({k}, {z}) and factors of shape ({k}, R, {z}), got "
                             f"{tuple(mean.shape)}, {tuple(std.shape)} and "
                             f"{tuple(factors.shape)}")
        p = self.latent_shift
        self.mixture_weight = weight.to(p.device, p.dtype)
        self.mixture_mean = mean.to(p.device, p.dtype)
        self.mixture_std = std.to(p.device, p.dtype)
        self.mixture_factors = factors.to(p.device, p.dtype)

    # -- latent calibration ------------------------------------------------------------------
    def from_public(self, u: torch.Tensor) -> torch.Tensor:
        """Public latent u (LSR's coordinates, N(0, I) over training anatomy) -> the
        network's z."""
        d = self.config.latent_dim
        g = u[:, :d] @ self.global_chol.T
        return self.latent_shift + torch.cat([g, u[:, d:] * self.spatial_scale], 1)

    def to_public(self, z: torch.Tensor) -> torch.Tensor:
        """The network's z -> public latent u (inverse of :meth:`from_public`)."""
        d = self.config.latent_dim
        z = z - self.latent_shift
        g = torch.linalg.solve_triangular(self.global_chol, z[:, :d].T, upper=False).T
        return torch.cat([g, z[:, d:] / self.spatial_scale], 1)

    @torch.no_grad()
    def calibrate_latent(self, x: torch.Tensor, batch: int = 32,
                         mixture_components: int = DEFAULT_COMPONENTS,
                         mixture_rank: int = DEFAULT_RANK) -> dict:
        """Fit the public latent to the encodings (posterior means) of normalised training
        slices ``x`` (N,1,S,S): full-covariance Gaussian for the global vector, per-dimension
        mean and scale for the spatial part, so that LSR starts (u = 0) from the average
        slice; then a mixture of ``mixture_components`` Gaussians (covariance: ``mixture_rank``
        principal directions plus a diagonal) over the public encodings (0: none), which
        :meth:`sample` draws from (see ``model/mixture.py``)."""
        was = self.training
        self.eval()
        self.latent_shift.zero_()  # identity: encode in the network's own coordinates
        self.global_chol.copy_(torch.eye(self.config.latent_dim))
        self.spatial_scale.fill_(1.0)
        mu = torch.cat([self.encode(x[i:i + batch])[0] for i in range(0, len(x), batch)]).double()
        self.train(was)
        d = self.config.latent_dim
        mean = mu.mean(0)
        cov = torch.cov(mu[:, :d].T) + 1e-4 * torch.eye(d, dtype=torch.float64)
        self.latent_shift.copy_(mean.float())
        self.global_chol.copy_(torch.linalg.cholesky(cov).float())
        if mu.shape[1] > d:
            self.spatial_scale.copy_(mu[:, d:].std(0).clamp_min(1e-3).float())
        k = self._fit_mixture(self.to_public(mu.float()), mixture_components, mixture_rank)
        return {"n": len(mu), "mixture_components": k, "mixture_rank": mixture_rank * bool(k),
                "global_mean_norm": float(mean[:d].norm()),
                "global_std_range": [float(cov.diagonal().sqrt().min()),
                                     float(cov.diagonal().sqrt().max())],
                "spatial_scale_mean": float(self.spatial_scale.mean())}

    @torch.no_grad()
    def fit_latent_mixture(self, x: torch.Tensor, batch: int = 32,
                           components: int = DEFAULT_COMPONENTS, rank: int = DEFAULT_RANK) -> dict:
        """Refit only the sampling mixture to the public encodings of normalised slices ``x``
        (N,1,S,S); the latent calibration (what LSR starts from) stays as it is."""
        was = self.training
        self.eval()
        u = torch.cat([self.encode(x[i:i + batch])[0] for i in range(0, len(x), batch)])
        self.train(was)
        k = self._fit_mixture(u, components, rank)
        return {"n": len(u), "mixture_components": k, "mixture_rank": rank * bool(k)}

    def _fit_mixture(self, u: torch.Tensor, components: int, rank: int) -> int:
        k = min(components, len(u) // 2)
        if k:
            self.set_latent_mixture(*fit_lowrank_gmm(u.float().cpu(), k, rank))
        return k

    # -- latent layout -----------------------------------------------------------------------
    def split_z(self, z: torch.Tensor):
        """Flat z (B, z_size) -> (global (B, latent_dim), spatial (B, C, s, s) or None)."""
        c = self.config
        if not c.spatial_channels:
            return z, None
        zs = z[:, c.latent_dim:].reshape(z.shape[0], c.spatial_channels, c.spatial_size,
                                         c.spatial_size)
        return z[:, :c.latent_dim], zs

    # -- network -----------------------------------------------------------------------------
    def _posterior(self, x: torch.Tensor):
        """Normalised image -> (mu, logvar) of the global latent and (if any) of the spatial
        latent itself (before whitening), each (B, n), in float32 (also under autocast)."""
        h = x * 2.0 - 1.0
        tap = None
        for i, m in enumerate(self.encoder):
            h = m(h)
            if i == self._enc_tap:
                tap = h
        with torch.autocast(h.device.type, enabled=False):
            mu, logvar = self.to_latent(h.float().flatten(1)).chunk(2, dim=1)
            if tap is None:
                return (mu, logvar.clamp(*POSTERIOR_LOGVAR)), None
            smu, slogvar = self.to_spatial(tap.float()).chunk(2, dim=1)
        return ((mu, logvar.clamp(*POSTERIOR_LOGVAR)),
                (smu.flatten(1), slogvar.flatten(1).clamp(*POSTERIOR_LOGVAR)))

    def _whiten(self, z_global, spatial):
        """Spatial posterior (mu, logvar) -> the same in the whitened coordinates of the
        conditional prior at ``z_global`` (KL to N(0, I) there equals the KL to the prior)."""
        if spatial is None or not hasattr(self, "spatial_prior"):
            return spatial
        with torch.autocast(z_global.device.type, enabled=False):
            pmu, plogvar = self.spatial_prior(z_global.float())
        smu, slogvar = spatial
        return (smu - pmu) * torch.exp(-0.5 * plogvar), slogvar - plogvar

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image (B,1,S,S) in [0,1] -> (mu, logvar), each (B, z_size): mu in the
        public coordinates (what :meth:`decode` takes), logvar in the network's."""
        (mu, logvar), spatial = self._posterior(x)
        spatial = self._whiten(mu, spatial)
        if spatial is not None:
            mu, logvar = torch.cat([mu, spatial[0]], 1), torch.cat([logvar, spatial[1]], 1)
        return self.to_public(mu), logvar

    def decode_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """Public latent (B, z_size) -> normalised image (B,1,S,S) in [0, 1] (the network's
        own units; :meth:`decode` gives HU)."""
        return self._decode_network(self.from_public(z))

    def _decode_network(self, z: torch.Tensor) -> torch.Tensor:
        """The network's z -> normalised image."""
        c = self.config
        b = c.bottleneck_size
        zg, zs = self.split_z(z)
        if zs is not None and hasattr(self, "spatial_prior"):
            pmu, plogvar = self.spatial_prior(zg)
            zs = (pmu + torch.exp(0.5 * plogvar) * zs.flatten(1)).view_as(zs)
        h = self.from_latent(zg).view(z.shape[0], c.bottleneck_channels, b, b)
        last = len(self.decoder) - 1
        for i, m in enumerate(self.decoder):
            if i == last:
                features = h
            h = m(h)
            if i == self._dec_tap:
                h = h + self.from_spatial(zs)
        if c.refine_channels:
            h = self.refiner(features, h)
        return torch.sigmoid(h)

    def forward(self, x: torch.Tensor):
        """Returns (reconstruction in [0,1], mu, logvar) with mu/logvar in the coordinates of
        z (so the KL to N(0, I) is the ELBO's KL); samples z in training mode only."""
        (mu, logvar), spatial = self._posterior(x)
        sample = lambda m, lv: m + torch.randn_like(m) * torch.exp(0.5 * lv) if self.training else m  # noqa: E731
        zg = sample(mu, logvar)
        spatial = self._whiten(zg, spatial)
        if spatial is not None:
            z = torch.cat([zg, sample(*spatial)], 1)
            mu, logvar = torch.cat([mu, spatial[0]], 1), torch.cat([logvar, spatial[1]], 1)
        else:
            z = zg
        return self._decode_network(z), mu, logvar

    # -- HU mapping --------------------------------------------------------------------------
    def to_hu(self, x01):
        """Normalised [0, 1] -> HU (fixed linear map, see module docstring)."""
        c = self.config
        return x01 * (c.hu_max - c.hu_min) + c.hu_min

    def from_hu(self, hu):
        """HU -> normalised units (not clipped; the encoder expects values in [0, 1])."""
        c = self.config
        return (hu - c.hu_min) / (c.hu_max - c.hu_min)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, z_size) -> image in HU, (B, S, S)."""
        return self.to_hu(self.decode_normalised(z))[:, 0]

    decode_hu = decode  # the name the engine uses: says the unit

    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """n random images in HU, (n, S, S): public z drawn from the latent mixture (each
        component's spread times ``temperature``) if calibration fitted one, else from
        N(0, temperature^2 I)."""
        p = next(self.parameters())
        if len(self.mixture_weight):
            z = sample_gmm(*(t.cpu().float() for t in (self.mixture_weight, self.mixture_mean,
                                                       self.mixture_std)),
                           n, generator, temperature, self.mixture_factors.cpu().float())
        else:
            z = temperature * torch.randn(n, self.config.z_size, generator=generator)
        return self.decode_hu(z.to(p.device, p.dtype))

    def n_parameters(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        extra = sum(count(getattr(self, n)) for n in ("from_spatial", "spatial_prior", "refiner")
                    if hasattr(self, n))
        return {"total": count(self),
                "decoder": count(self.decoder) + count(self.from_latent) + extra}
