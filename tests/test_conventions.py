"""One calling convention across the library (README "Conventions"): corrections take
``(sinogram, mask, geometry, ...)``, accept NumPy or torch and return NumPy; the projector is
the one torch-level (differentiable) object; one default FBP filter; the scan's mu_water
travels with its geometry."""

import inspect

import numpy as np
import pytest
import torch

import napari_lsr as lsr
from napari_lsr import baselines, masks
from napari_lsr.projector import DEFAULT_FILTER

GEOM = lsr.ParallelBeam(image_size=32, pixel_size_mm=4.0, n_views=24, n_det=47, det_spacing_mm=4.0)


@pytest.fixture(scope="module")
def case():
    hu = lsr.data.generate_slice(3, 32, 4.0, noise_hu=0)
    sino = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy()
    mask = masks.truncation_mask(GEOM, fom_mm=70.0)
    return hu, sino, mask


def test_corrections_take_sinogram_mask_geometry_in_that_order():
    for fn in (baselines.li_mar, baselines.nmar, baselines.detruncate, lsr.lsr_correct):
        names = list(inspect.signature(fn).parameters)[:3]
        assert names[:2] == ["sino", "mask"] or names[:2] == ["sino", "valid_mask"], fn
        assert names[2] == "geom", fn


@pytest.mark.parametrize("as_torch", [False, True])
def test_corrections_accept_numpy_or_torch_and_return_numpy(case, as_torch):
    _, sino, mask = case
    s = torch.as_tensor(sino) if as_torch else sino
    m = torch.as_tensor(mask) if as_torch else mask
    for fn in (baselines.li_mar, baselines.nmar, baselines.detruncate):
        out = fn(s, m, GEOM)
        assert isinstance(out, np.ndarray) and out.shape == sino.shape, fn
    assert isinstance(baselines.reconstruct_hu(s, GEOM), np.ndarray)


def test_the_projector_is_the_torch_level_object(case):
    hu, sino, _ = case
    P = lsr.Projector(GEOM)
    out = P.forward(lsr.hu_to_mu(hu))  # NumPy in
    assert isinstance(out, torch.Tensor)  # torch out: differentiable, on the chosen device


def test_one_default_fbp_filter_everywhere(case):
    _, sino, mask = case
    assert DEFAULT_FILTER == "shepp-logan"
    P = lsr.Projector(GEOM)
    for fn in (P.fbp, P.filter_sinogram, baselines.reconstruct_hu, lsr.lsr_correct):
        assert inspect.signature(fn).parameters.get("filter", inspect.signature(fn).parameters.get(
            "fbp_filter")).default == DEFAULT_FILTER, fn
    np.testing.assert_allclose(baselines.reconstruct_hu(sino, GEOM),
                               lsr.mu_to_hu(P.fbp(sino, filter=DEFAULT_FILTER).numpy()), atol=1e-3)


def test_mu_water_travels_with_the_geometry(case):
    hu, _, _ = case
    scanner = GEOM.replace(mu_water_per_mm=0.01926)
    assert lsr.geometry_from_json(scanner.to_json()).mu_water_per_mm == 0.01926
    sino = lsr.Projector(scanner).forward(lsr.hu_to_mu(hu, 0.01926)).numpy()
    # without passing mu_water anywhere, the scan's own value converts back to the same HU
    a = baselines.reconstruct_hu(sino, scanner)
    b = baselines.reconstruct_hu(sino, scanner, mu_water=0.01926)
    np.testing.assert_array_equal(a, b)
    assert abs(np.median(baselines.reconstruct_hu(sino, GEOM)[hu > -500] - a[hu > -500])) > 1.0
    # the matrices depend on the rays only: both scans share one operator
    assert lsr.Projector(scanner).forward(lsr.hu_to_mu(hu)).numpy().tolist() == \
        lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy().tolist()


def test_decode_returns_hu():
    from napari_lsr.model import VAE, VAEConfig
    m = VAE(VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                      pixel_size_mm=4.0)).eval()
    with torch.no_grad():
        img = m.decode(torch.zeros(1, 8))
    assert img.shape == (1, 32, 32) and float(img.min()) < -100  # HU, not [0, 1]
