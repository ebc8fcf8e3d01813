"""Projector methods (stored, symmetric, matrix-free): exact adjoints, gradients, agreement
with the stored matrix, automatic choice, memory estimate and refusal."""

import numpy as np
import pytest
import torch

import napari_lsr as lsr
from napari_lsr import projector as pj
from napari_lsr import projector_ops as ops


@pytest.fixture(autouse=True)
def _private_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LSR_CACHE_DIR", str(tmp_path / "cache"))
    pj.clear_cache()
    yield
    pj.clear_cache()


CASES = {
    "parallel-even": lsr.ParallelBeam(image_size=32, pixel_size_mm=2.0, n_views=40, n_det=49, det_spacing_mm=2.0),
    "parallel-odd-offset": lsr.ParallelBeam(image_size=33, pixel_size_mm=2.0, n_views=36, n_det=51,
                                            det_spacing_mm=2.0, det_offset_mm=0.5),
    "parallel-360": lsr.ParallelBeam(image_size=32, pixel_size_mm=2.0, n_views=48, n_det=51, det_spacing_mm=2.0,
                                     arc_deg=360.0),
    "fan-even-offset": lsr.FanBeam(image_size=32, pixel_size_mm=2.0, n_views=60, n_det=80, det_spacing_mm=2.5,
                                   sid_mm=300.0, sdd_mm=600.0, det_offset_mm=0.6),
    "fan-odd": lsr.FanBeam(image_size=33, pixel_size_mm=2.0, n_views=64, n_det=131, det_spacing_mm=1.5,
                           sid_mm=200.0, sdd_mm=400.0),
    "fan-short-250": lsr.FanBeam(image_size=32, pixel_size_mm=2.0, n_views=50, n_det=131, det_spacing_mm=1.5,
                                 sid_mm=200.0, sdd_mm=400.0, arc_deg=250.0),
}
# a short scan whose views have no symmetric partner: auto must fall back to "stored"
NO_SYMMETRY = lsr.FanBeam(image_size=32, pixel_size_mm=2.0, n_views=50, n_det=131, det_spacing_mm=1.5,
                          sid_mm=200.0, sdd_mm=400.0, arc_deg=217.0, det_offset_mm=0.3)


def _rand(shape, seed, dtype=torch.float64):
    return torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["symmetric", "matrix-free"])
@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_stored_and_adjoint_is_exact(name, method):
    geom = CASES[name]
    ref = lsr.Projector(geom, method="stored")
    P = lsr.Projector(geom, method=method)
    assert P.method == method
    x = _rand((2, *geom.image_shape), 1)
    y = _rand((2, *geom.sino_shape), 2)
    fx, ay = P.forward(x), P.adjoint(y)
    # float64 products of float32-rounded weights: matrix-free weights are not rounded
    tol = 1e-12 if method == "symmetric" else 1e-6
    assert float((fx - ref.forward(x)).abs().max()) <= tol * float(fx.abs().max())
    assert float((ay - ref.adjoint(y)).abs().max()) <= tol * float(ay.abs().max())
    lhs, rhs = (fx * y).sum(), (x * ay).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-10
    # float32 path: exact transpose to float32 rounding
    f32 = P.forward(x.float())
    torch.testing.assert_close(f32.double(), fx, rtol=1e-5, atol=1e-5 * float(fx.abs().max()))
    lhs32 = (f32.double() * y).sum()
    rhs32 = (x * P.adjoint(y.float()).double()).sum()
    assert abs(lhs32 - rhs32) / abs(lhs32) < 1e-5


@pytest.mark.parametrize("name", ["parallel-even", "fan-odd", "fan-short-250"])
def test_symmetry_stores_fewer_views(name):
    geom = CASES[name]
    est = lsr.Projector.estimate_memory(geom)
    assert est.method == "symmetric"
    assert est.n_stored_views <= geom.n_views // 4 + 2 or name == "fan-short-250"
    assert est.n_stored_views < geom.n_views


def test_auto_falls_back_without_symmetry():
    P = lsr.Projector(NO_SYMMETRY)
    assert P.method == "stored"
    assert lsr.Projector(NO_SYMMETRY, method="symmetric").method == "stored"
    x = _rand(NO_SYMMETRY.image_shape, 3)
    y = _rand(NO_SYMMETRY.sino_shape, 4)
    lhs, rhs = (P.forward(x) * y).sum(), (x * P.adjoint(y)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-10


TINY = {
    "parallel": lsr.ParallelBeam(image_size=6, pixel_size_mm=1.0, n_views=8, n_det=11, det_spacing_mm=1.0),
    "fan": lsr.FanBeam(image_size=6, pixel_size_mm=1.0, n_views=8, n_det=20, det_spacing_mm=1.0,
                       sid_mm=20.0, sdd_mm=40.0),
}


@pytest.mark.parametrize("method", ["symmetric", "matrix-free"])
@pytest.mark.parametrize("kind", list(TINY))
def test_gradcheck(kind, method):
    geom = TINY[kind]
    P = lsr.Projector(geom, method=method)
    assert P.method == method
    x = torch.rand(2, *geom.image_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(P.forward, (x,))
    y = torch.rand(*geom.sino_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(P.adjoint, (y,))
    assert torch.autograd.gradcheck(P.fbp, (y,))


def test_no_stored_transpose_path():
    """A budget that only fits the rows: adjoint through SciPy on the same matrix."""
    geom = CASES["fan-odd"]
    full = pj.estimate_projector_memory(geom)
    rows_only = full.options["symmetric (no transpose)"]
    P = lsr.Projector(geom, memory_budget_bytes=rows_only + 1)
    assert P.method == "symmetric" and not P.memory_estimate.transpose_stored
    x, y = _rand(geom.image_shape, 5), _rand(geom.sino_shape, 6)
    ref = lsr.Projector(geom, method="stored")
    torch.testing.assert_close(P.adjoint(y), ref.adjoint(y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P.adjoint(y.float()), ref.adjoint(y.float()), rtol=1e-5, atol=1e-6)
    assert not P._op("forward", torch.float32).transpose_stored
    xg = x.clone().requires_grad_(True)
    (P.forward(xg) * y).sum().backward()
    torch.testing.assert_close(xg.grad, ref.adjoint(y), rtol=1e-10, atol=1e-12)


def test_fbp_matrix_free_matches_stored():
    geom = lsr.FanBeam(image_size=48, pixel_size_mm=2.0, n_views=72, n_det=112, det_spacing_mm=2.5,
                       sid_mm=400.0, sdd_mm=800.0)
    sino = lsr.Projector(geom).forward(_rand(geom.image_shape, 7, torch.float32))
    a = lsr.Projector(geom, method="stored").fbp(sino)
    b = lsr.Projector(geom, method="matrix-free").fbp(sino)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


@pytest.mark.parametrize("name", ["parallel-even", "fan-even-offset", "fan-odd"])
@pytest.mark.parametrize("method", ["stored", "symmetric"])
def test_memory_estimate_close_to_built(name, method):
    geom = CASES[name]
    P = lsr.Projector(geom, method=method)
    est = P.memory_estimate
    op = P._op("forward", torch.float32)
    assert abs(est.nnz - op.nnz) <= 0.3 * op.nnz
    assert abs(est.bytes - P.memory_bytes) <= 0.3 * P.memory_bytes
    assert P.memory_bytes >= op.nbytes


def test_estimate_before_building_and_auto_budget(monkeypatch):
    geom = CASES["fan-odd"]
    calls = []
    monkeypatch.setattr(ops, "build_rows", lambda *a, **k: calls.append(1))
    est = pj.estimate_projector_memory(geom)
    assert est.method == "symmetric" and est.bytes > 0 and not calls
    assert set(est.options) == {"symmetric + transpose", "symmetric (no transpose)", "matrix-free"}
    tiny = pj.estimate_projector_memory(geom, memory_budget_bytes=1)
    assert tiny.method == "matrix-free"
    P = lsr.Projector(geom, memory_budget_bytes=1)
    assert P.method == "matrix-free" and not calls
    assert "matrix-free" in str(est) or "symmetric" in str(est)


def test_refuses_when_memory_is_short(monkeypatch):
    geom = CASES["parallel-even"]
    monkeypatch.setattr(pj, "available_memory_bytes", lambda device=None: 10_000)
    with pytest.raises(pj.ProjectorMemoryError) as err:
        lsr.Projector(geom, method="stored")
    msg = str(err.value)
    assert "GB" in msg and "n_views" in msg and "GPU" in msg and "available" in msg
    assert isinstance(err.value, MemoryError) and isinstance(err.value, ValueError)
    # auto also refuses when not even the matrix-free working memory fits
    with pytest.raises(ValueError, match="fewer"):
        lsr.Projector(geom)


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        lsr.Projector(CASES["parallel-even"], method="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["stored", "symmetric", "matrix-free"])
@pytest.mark.parametrize("name", ["parallel-even", "fan-odd"])
def test_cuda_matches_cpu(name, method):
    geom = CASES[name]
    x, y = _rand((2, *geom.image_shape), 8, torch.float32), _rand(geom.sino_shape, 9, torch.float32)
    cpu = lsr.Projector(geom, method=method)
    gpu = lsr.Projector(geom, method=method, device="cuda")
    fx = gpu.forward(x.cuda())
    assert fx.device.type == "cuda"
    torch.testing.assert_close(fx.cpu(), cpu.forward(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.adjoint(y.cuda()).cpu(), cpu.adjoint(y), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.fbp(y.cuda()).cpu(), cpu.fbp(y), rtol=1e-3, atol=1e-4)
    xg = x.cuda().requires_grad_(True)
    gpu.forward(xg).square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_clinical_estimates_fit_a_laptop_without_building(monkeypatch):
    """512^2 with 720-1200 views and 900 channels: the plan (made in well under a second,
    nothing built) stores a symmetric subset within 2 GB."""
    monkeypatch.setattr(ops, "build_rows", lambda *a, **k: pytest.fail("built"))
    monkeypatch.setattr(pj, "available_memory_bytes", lambda device=None: int(8e9))
    for geom in (
        lsr.ParallelBeam(image_size=512, pixel_size_mm=0.9, n_views=720, n_det=900, det_spacing_mm=0.75),
        lsr.FanBeam(image_size=512, pixel_size_mm=0.67, n_views=1000, n_det=900, det_spacing_mm=1.0,
                    sid_mm=540.0, sdd_mm=950.0),
        lsr.FanBeam(image_size=512, pixel_size_mm=0.67, n_views=1200, n_det=900, det_spacing_mm=1.0,
                    sid_mm=540.0, sdd_mm=950.0, det_offset_mm=0.25),
    ):
        est = pj.estimate_projector_memory(geom, memory_budget_bytes=int(2e9))
        assert est.method == "symmetric" and est.peak_bytes <= 2e9, est
        assert est.n_stored_views <= geom.n_views // 4 + 1
        stored = pj.estimate_projector_memory(geom, method="stored", memory_budget_bytes=int(2e9))
        assert stored.peak_bytes > 3e9  # the whole matrix would not fit


def test_memory_budget_from_environment(monkeypatch):
    monkeypatch.setenv("NAPARI_LSR_PROJECTOR_MEMORY_GB", "1.5")
    assert pj.default_memory_budget() == int(1.5e9)
    monkeypatch.delenv("NAPARI_LSR_PROJECTOR_MEMORY_GB")
    assert 2e9 <= pj.default_memory_budget() <= 8e9
    assert pj.available_memory_bytes() is None or pj.available_memory_bytes() > 0
