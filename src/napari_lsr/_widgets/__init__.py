"""napari widgets of napari-lsr (Qt side only; all maths lives in the library)."""

from .acquire import AcquireWidget
from .export import ExportWidget
from .lsr import LSRWidget
from .mask import MaskWidget

__all__ = ["AcquireWidget", "MaskWidget", "LSRWidget", "ExportWidget"]
