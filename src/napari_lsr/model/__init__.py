"""The generative prior: VAE (``VAE``, ``VAEConfig``) and checkpoint I/O (``load_model``)."""

from .checkpoint import DEFAULT_PATH, load_model, read_checkpoint, save_checkpoint
from .vae import VAE, VAEConfig

__all__ = ["VAE", "VAEConfig", "load_model", "save_checkpoint", "read_checkpoint",
           "DEFAULT_PATH"]
