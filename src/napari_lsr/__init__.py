"""napari-lsr: Latent Space Reconstruction for CT missing-data artifacts.

Public API (see README): geometries, the differentiable projector, HU/mu conversion, the
prior (``load_model``) and the LSR engine (``lsr_correct``). Heavy submodules are imported
lazily so ``import napari_lsr`` stays fast and never touches Qt.
"""

from importlib import import_module

from .geometry import (FanBeam, ParallelBeam, crop_sinogram, extend_detector, geometry_from_dict,
                       geometry_from_json, pad_sinogram)
from .projector import Projector, ProjectorMemoryError, estimate_projector_memory
from .units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu

__version__ = "0.1.0"

_LAZY_ATTRS = {
    "load_model": ("napari_lsr.model", "load_model"),
    "lsr_correct": ("napari_lsr.lsr", "lsr_correct"),
    "lsr_correct_volume": ("napari_lsr.lsr", "lsr_correct_volume"),
    "LSRResult": ("napari_lsr.lsr", "LSRResult"),
    "VolumeResult": ("napari_lsr.lsr", "VolumeResult"),
    "FitReport": ("napari_lsr.lsr", "FitReport"),
    "noise_rms": ("napari_lsr.lsr", "noise_rms"),
}
_LAZY_MODULES = {"masks", "simulate", "baselines", "metrics", "model", "data", "lsr", "evaluate", "train"}

__all__ = [
    "ParallelBeam", "FanBeam", "geometry_from_dict", "geometry_from_json", "extend_detector",
    "pad_sinogram", "crop_sinogram", "Projector", "estimate_projector_memory",
    "ProjectorMemoryError",
    "hu_to_mu", "mu_to_hu", "MU_WATER_PER_MM", *_LAZY_ATTRS, *sorted(_LAZY_MODULES),
]


def __getattr__(name):
    if name in _LAZY_ATTRS:
        module, attr = _LAZY_ATTRS[name]
        return getattr(import_module(module), attr)
    if name in _LAZY_MODULES:
        return import_module(f"napari_lsr.{name}")
    raise AttributeError(f"module 'napari_lsr' has no attribute {name!r}")
