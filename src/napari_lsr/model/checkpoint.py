"""Self-describing prior checkpoints.

A checkpoint is a ``torch.save`` dict::

    {"format": "napari-lsr-prior", "version": 1,
     "config": asdict(VAEConfig),          # resolution, latent size, HU mapping, pixel size
     "state_dict": {...},                  # float32 or float16 tensors
     "training": {...},                    # summary of training data, steps, metrics
     "extra": {...}}                       # optional: optimiser state etc. (for --resume)

and is read back with ``torch.load(..., weights_only=True)`` (no pickled code is executed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .vae import VAE, VAEConfig

FORMAT = "napari-lsr-prior"
VERSION = 1
DEFAULT_PATH = Path(__file__).with_name("default_prior.pt")


def save_checkpoint(model: VAE, path, training_summary: dict, extra: dict | None = None,
                    half: bool = False) -> Path:
    """Write ``model`` to ``path`` (atomically); ``half=True`` stores float weights as float16
    (half the file size; :func:`load_model` casts them back to float32)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
          for k, v in model.state_dict().items()}
    ckpt = {"format": FORMAT, "version": VERSION, "config": asdict(model.config),
            "state_dict": sd, "training": _plain(training_summary)}
    if extra:
        ckpt["extra"] = extra
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def _plain(d: dict) -> dict:
    """JSON round trip: only plain types survive, so ``weights_only=True`` can load them."""
    return json.loads(json.dumps(d, default=str))


def read_checkpoint(path, device=None) -> dict:
    """Load and validate a checkpoint dict; raises ``ValueError`` naming the file and problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prior checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device or "cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable napari-lsr prior checkpoint (corrupt, "
                         f"truncated or not a torch file): {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a napari-lsr prior checkpoint (expected format "
                         f"{FORMAT!r}; a bare state_dict or another tool's file?)")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r} is not "
                         f"supported (this napari-lsr reads version {VERSION})")
    missing = [k for k in ("config", "state_dict", "training") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks the key(s) {missing}")
    return ckpt


def config_from_dict(d: dict, path="checkpoint") -> VAEConfig:
    known = {f.name for f in fields(VAEConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config field(s) {unknown} (file from a newer "
                         "napari-lsr?)")
    try:
        return VAEConfig(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid model config: {e}") from e


def model_from_checkpoint(ckpt: dict, path="checkpoint") -> VAE:
    """Rebuild a float32 :class:`VAE` (train mode, on CPU) from a validated checkpoint dict."""
    model = VAE(config_from_dict(ckpt["config"], path))
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    try:
        if "mixture_weight" in sd:  # its size (components) is the file's
            model.set_latent_mixture(sd["mixture_weight"], sd["mixture_mean"], sd["mixture_std"],
                                     sd.get("mixture_factors"))
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: weights do not match the model config: {e}") from e
    missing = [k for k in missing if k not in VAE.CALIBRATION_BUFFERS]  # older files: identity
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model config: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.training_summary = dict(ckpt["training"])
    return model


def load_model(path=None, device=None) -> VAE:
    """Load a prior in eval mode with frozen weights (``requires_grad=False``; gradients still
    flow to ``z``). ``path=None`` loads the bundled default ``model/default_prior.pt``.

    The returned model carries ``.config`` (VAEConfig) and ``.training_summary`` (dict).
    Raises ``ValueError`` for a corrupt, truncated or incompatible file.
    """
    if path is None:
        path = DEFAULT_PATH
        if not path.is_file():
            raise FileNotFoundError(
                f"the bundled default prior {path} is missing (a source checkout without the "
                "weights?). Train one with `napari-lsr train --out prior.pt` and pass its "
                "path, or reinstall napari-lsr from a release.")
    ckpt = read_checkpoint(path, device="cpu")
    model = model_from_checkpoint(ckpt, path)
    return model.to(device or "cpu").eval().requires_grad_(False)
