"""Convolutional VAE prior for CT slices.

Images enter and leave the network *normalised*: the fixed linear map
``x01 = (HU - hu_min) / (hu_max - hu_min)`` with ``[hu_min, hu_max] = [-1024, 3071]`` HU
-> ``[0, 1]`` (never per-slice normalisation, which would destroy HU). ``to_hu`` / ``from_hu``
implement it; ``decode_hu`` returns HU directly.

Architecture (``channel_mults`` listed from full resolution down to the bottleneck, each
entry one resolution level, each level halving the size):

    encoder  x (B,1,S,S) -> conv -> [ResBlock, strided conv] x levels -> ResBlock -> attention
             -> flatten -> linear -> (mu, logvar)   (B, latent_dim) each
    decoder  z -> linear -> (C, S/2^L, S/2^L) -> ResBlock -> attention
             -> [nearest upsample, conv, ResBlock] x levels -> conv -> sigmoid -> (B,1,S,S)

GroupNorm only (no BatchNorm), so a batch of one decodes exactly like a batch of many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    """Everything needed to rebuild a :class:`VAE`.

    image_size: side in pixels (128, 256 or 512); pixel_size_mm: the pixel size the prior was
    trained at (mm); hu_min/hu_max: HU mapped to 0 and 1; base_channels: width at full
    resolution; channel_mults: width multipliers per level, full resolution first;
    bottleneck_channels: channels squeezed (1x1 conv) before the latent linear layers;
    full_res_block: add a residual block at full resolution (better detail, ~2x slower).
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

    def __post_init__(self):
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        n_down = len(self.channel_mults) - 1
        if self.image_size % (2 ** n_down) or self.image_size // 2 ** n_down < 2:
            raise ValueError(f"image_size {self.image_size} is not divisible into {n_down} "
                             "halvings down to >= 2 pixels; change image_size or channel_mults")
        if self.hu_max <= self.hu_min:
            raise ValueError("hu_max must be greater than hu_min")

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // 2 ** (len(self.channel_mults) - 1)

    @property
    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mults]


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


class VAE(nn.Module):
    """Encoder/decoder VAE on normalised CT slices; see the module docstring."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.training_summary: dict = {}
        w = cfg.widths
        b = cfg.bottleneck_size
        nb = cfg.bottleneck_channels
        flat = nb * b * b
        block = lambda i: ResBlock(w[i]) if i or cfg.full_res_block else nn.SiLU()  # noqa: E731

        enc = [nn.Conv2d(1, w[0], 3, padding=1)]
        for i in range(len(w) - 1):
            enc += [block(i), nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1)]
        enc += [ResBlock(w[-1]), SelfAttention(w[-1], cfg.attn_heads), _norm(w[-1]), nn.SiLU(),
                nn.Conv2d(w[-1], nb, 1)]
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Linear(flat, 2 * cfg.latent_dim)

        self.from_latent = nn.Linear(cfg.latent_dim, flat)
        dec = [nn.Conv2d(nb, w[-1], 1), ResBlock(w[-1]), SelfAttention(w[-1], cfg.attn_heads)]
        for i in range(len(w) - 1, 0, -1):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(w[i], w[i - 1], 3, padding=1), block(i - 1)]
        dec += [_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # -- network -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image (B,1,S,S) in [0,1] -> (mu, logvar), each (B, latent_dim)."""
        h = self.encoder(x * 2.0 - 1.0).flatten(1)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_dim) -> normalised image (B,1,S,S) in [0, 1]."""
        c = self.config
        b = c.bottleneck_size
        h = self.from_latent(z).view(z.shape[0], c.bottleneck_channels, b, b)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor):
        """Returns (reconstruction in [0,1], mu, logvar); samples z in training mode only."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar

    # -- HU mapping --------------------------------------------------------------------------
    def to_hu(self, x01):
        """Normalised [0, 1] -> HU (fixed linear map, see module docstring)."""
        c = self.config
        return x01 * (c.hu_max - c.hu_min) + c.hu_min

    def from_hu(self, hu):
        """HU -> normalised units (not clipped; the encoder expects values in [0, 1])."""
        c = self.config
        return (hu - c.hu_min) / (c.hu_max - c.hu_min)

    def decode_hu(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_dim) -> image in HU, (B, S, S)."""
        return self.to_hu(self.decode(z))[:, 0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n random images in HU, (n, S, S), from z ~ N(0, I)."""
        p = next(self.parameters())
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(p.device, p.dtype)
        return self.decode_hu(z)

    def n_parameters(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"total": count(self), "decoder": count(self.decoder) + count(self.from_latent)}
