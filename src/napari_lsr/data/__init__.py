"""CT data: readers/writer (NPY, TIFF, DICOM -> HU volumes), real CT slices available
offline, and the anatomical phantom generator."""

from .phantoms import REGIONS, body_mask, generate_slice, generate_volume
from .readers import (CTVolume, read_ct, read_dicom_series, read_npy, read_tiff,
                      real_ct_slices, resample_slices, write_tiff)

__all__ = ["CTVolume", "read_ct", "read_npy", "read_tiff", "read_dicom_series", "write_tiff",
           "resample_slices", "real_ct_slices", "generate_slice", "generate_volume",
           "body_mask", "REGIONS"]
