"""napari sample data: a phantom volume with metal (scan simulated), a truncated phantom
sinogram with its geometry, and the real CT slice ``CT_small.dcm`` from pydicom's test data.

Everything is produced by the library (phantom generator, simulate_metal,
simulate_truncation, reconstruct_hu, DICOM reader); the sizes are parameters so tests can
ask for tiny ones. Each sample opens readable: the sinogram and its mask beside the image,
the uncorrected reconstruction on top, the ground truth (the scanned phantom) hidden below
it, HU images in the soft-tissue window, scales in mm.
"""

from __future__ import annotations

import numpy as np

from .data import generate_volume, read_dicom_series
from .geometry import ParallelBeam
from ._widgets._common import image_layer, mask_layer, sinogram_layer

SLICE_SPACING_MM = 1.0


def sample_geometry(size: int = 256, pixel_size_mm: float = 1.5, n_views: int = 360,
                    n_det: int = 367) -> ParallelBeam:
    """The samples' scan: parallel beam over 180 degrees, detector bins of one pixel."""
    return ParallelBeam(image_size=size, pixel_size_mm=pixel_size_mm, n_views=n_views,
                        n_det=n_det, det_spacing_mm=pixel_size_mm)


def metal_phantom(n_slices: int = 3, size: int = 256, pixel_size_mm: float = 1.5,
                  n_views: int = 360, n_det: int = 367, seed: int = 3) -> list:
    """Phantom slices with metal implants, their polychromatic scan (beam hardening, noise),
    the uncorrected FBP and the true metal trace mask."""
    from .simulate import simulate_metal

    geom = sample_geometry(size, pixel_size_mm, n_views, n_det)
    clean = generate_volume(seed, n_slices, size, pixel_size_mm, region="pelvis",
                            slice_step=SLICE_SPACING_MM)
    cases = [simulate_metal(s, geom, n_objects=2, seed=seed) for s in clean]
    stack = lambda name: np.stack([getattr(c, name) for c in cases])  # noqa: E731
    spacing = (SLICE_SPACING_MM, pixel_size_mm, pixel_size_mm)
    return [
        image_layer(stack("metal_hu"), "phantom with metal", spacing, geom, visible=False),
        sinogram_layer(stack("sinogram"), "metal sinogram", geom, SLICE_SPACING_MM, case="metal"),
        mask_layer(stack("mask"), "metal trace mask (true)", geom, SLICE_SPACING_MM, case="metal"),
        image_layer(stack("uncorrected_hu"), "uncorrected FBP (metal)", spacing, geom,
                    case="metal"),
    ]


def truncated_sinogram(n_slices: int = 3, size: int = 256, pixel_size_mm: float = 1.5,
                       n_views: int = 360, n_det: int = 367, fom_mm: float | None = None,
                       seed: int = 1) -> list:
    """A phantom's sinogram truncated to a field of measurement (default: 60 % of the image
    width), with its validity mask, the phantom as ground truth (hidden) and the uncorrected
    FBP of the truncated data."""
    from .baselines import reconstruct_hu
    from .simulate import simulate_truncation

    geom = sample_geometry(size, pixel_size_mm, n_views, n_det)
    fom = 0.6 * size * pixel_size_mm if fom_mm is None else fom_mm
    hu = generate_volume(seed, n_slices, size, pixel_size_mm, region="abdomen",
                         slice_step=SLICE_SPACING_MM)
    case = simulate_truncation(hu, geom, fom)
    spacing = (SLICE_SPACING_MM, pixel_size_mm, pixel_size_mm)
    fbp = reconstruct_hu(case.sinogram, geom, "shepp-logan").astype(np.float32)
    return [
        image_layer(case.ground_truth_hu, "phantom (ground truth)", spacing, geom, visible=False),
        sinogram_layer(case.sinogram, "truncated sinogram", geom, SLICE_SPACING_MM,
                       fom_mm=float(fom), case="truncation"),
        mask_layer(np.broadcast_to(case.mask, case.sinogram.shape), "truncation mask", geom,
                   SLICE_SPACING_MM, fom_mm=float(fom), case="truncation"),
        image_layer(fbp, "uncorrected FBP (truncated)", spacing, geom, case="truncation",
                    fom_mm=float(fom)),
    ]


def ct_small() -> list:
    """The real 128 x 128 thorax CT slice ``CT_small.dcm`` from pydicom's test data, in HU."""
    from pydicom.data import get_testdata_file

    vol = read_dicom_series(get_testdata_file("CT_small.dcm"))
    return [image_layer(vol.hu[0], "CT_small (pydicom)", vol.spacing_mm,
                        source="pydicom test data CT_small.dcm")]
