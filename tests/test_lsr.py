"""LSR engine: exact data consistency, the optimiser lowers the loss, callbacks stop the run,
warm starts, smooth joins and clear errors on bad input (tiny prior, tiny geometry)."""

import numpy as np
import pytest
import torch

import napari_lsr as lsr
from napari_lsr.lsr import smooth_join
from napari_lsr.model import VAE, VAEConfig

GEOM = lsr.ParallelBeam(image_size=32, pixel_size_mm=4.0, n_views=24, n_det=47, det_spacing_mm=4.0)


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                          pixel_size_mm=4.0))
    return model.eval()


@pytest.fixture(scope="module")
def case(tiny_prior):
    """A sinogram the prior can explain exactly (from a known z), truncated to a FOM."""
    z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hu = tiny_prior.decode_hu(z_true)[0]
    sino = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy().astype(np.float32)
    mask = lsr.masks.truncation_mask(GEOM, fom_mm=70.0)
    measured = np.where(mask == 1, sino, 0.0).astype(np.float32)
    return measured, mask, sino, z_true


def test_completed_sinogram_keeps_measured_data_bit_for_bit(tiny_prior, case):
    measured, mask, _, _ = case
    res = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=5, lbfgs_steps=2)
    valid = mask == 1
    assert np.array_equal(res.sinogram[valid], measured[valid])
    assert res.sinogram.dtype == measured.dtype
    assert res.image_hu.shape == GEOM.image_shape and res.generated_hu.shape == GEOM.image_shape
    assert res.z.shape == (8,) and len(res.loss_history) == 7


def test_optimiser_lowers_the_loss_and_fills_the_gap(tiny_prior, case):
    measured, mask, full, _ = case
    res = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=80, lbfgs_steps=10, join=False)
    assert res.loss_history[-1] < 0.2 * res.loss_history[0]
    missing = mask == 0
    err_lsr = np.abs(res.sinogram - full)[missing].mean()
    err_zero = np.abs(measured - full)[missing].mean()
    assert err_lsr < 0.5 * err_zero


def test_adam_uses_the_engines_step_sizes_and_decays(tiny_prior, case, monkeypatch):
    """Adam runs with ADAM_BETAS (not torch's 0.999) and COLD_LR / WARM_LR by default."""
    made = []
    real = torch.optim.Adam

    class Recording(real):
        def __init__(self, params, **kw):
            made.append(kw)
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    measured, mask = case[:2]
    cold = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0)
    lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0, init=cold.z)
    assert made == [{"lr": lsr.lsr.COLD_LR, "betas": lsr.lsr.ADAM_BETAS},
                    {"lr": lsr.lsr.WARM_LR, "betas": lsr.lsr.ADAM_BETAS}]
    assert lsr.lsr.ADAM_BETAS == (0.9, 0.99)


def test_reproducible_with_seed(tiny_prior, case):
    measured, mask, _, _ = case
    a = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=10, lbfgs_steps=0, seed=1)
    b = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=10, lbfgs_steps=0, seed=1)
    np.testing.assert_array_equal(a.z, b.z)
    assert a.loss_history == b.loss_history


def test_callback_receives_progress_and_can_stop(tiny_prior, case):
    measured, mask, _, _ = case
    seen = []

    def cb(step, loss, preview):
        seen.append((step, loss, preview.shape))
        return step >= 3

    res = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=100, lbfgs_steps=5, callback=cb)
    assert res.stopped and len(seen) == 3 and len(res.loss_history) == 3
    assert [s for s, _, _ in seen] == [1, 2, 3]
    assert seen[0][2] == GEOM.image_shape
    assert np.array_equal(res.sinogram[mask == 1], measured[mask == 1])


def test_warm_start_volume(tiny_prior):
    zs = torch.randn(1, 8, generator=torch.Generator().manual_seed(5)) + 0.05 * torch.arange(4.0)[:, None]
    with torch.no_grad():
        hu = tiny_prior.decode_hu(zs)
    full = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy()
    mask = lsr.masks.truncation_mask(GEOM, fom_mm=70.0)
    stack = np.where(mask == 1, full, 0.0)
    res = lsr.lsr_correct_volume(stack, mask, GEOM, model=tiny_prior, steps=60, warm_steps=6,
                                 lbfgs_steps=2, batch_size=2, early_stop=False)
    assert res.slices_done == 4 and not res.stopped and len(res.fits) == 4
    assert len(res.loss_history[0]) == 62 and len(res.loss_history[2]) == 8
    assert np.array_equal(res.sinogram[:, mask == 1], stack[:, mask == 1])
    stop = lsr.lsr_correct_volume(stack, mask, GEOM, model=tiny_prior, steps=20, warm_steps=5,
                                  callback=lambda i, step, loss, p: i == 1 and step == 2)
    assert stop.stopped and stop.slices_done == 1


def test_latent_prior_weight_is_lighter_on_warm_starts(tiny_prior, case, monkeypatch):
    """z_weight=None: DEFAULT_Z_WEIGHT for a cold fit, WARM_Z_WEIGHT for a warm one (a volume's
    later batches, ``init``); a given z_weight holds for every batch."""
    seen = []
    real = lsr.lsr._optimise

    def recording(*args, **kw):
        seen.append(args[11])  # _optimise's z_weight, as _run_slices passes it
        return real(*args, **kw)

    monkeypatch.setattr(lsr.lsr, "_optimise", recording)
    measured, mask = case[:2]
    stack = np.stack([measured] * 3)
    kw = dict(model=tiny_prior, steps=2, warm_steps=1, lbfgs_steps=0, batch_size=1)
    lsr.lsr_correct_volume(stack, mask, GEOM, **kw)
    assert seen == [lsr.lsr.DEFAULT_Z_WEIGHT] + [lsr.lsr.WARM_Z_WEIGHT] * 2
    assert lsr.lsr.WARM_Z_WEIGHT < lsr.lsr.DEFAULT_Z_WEIGHT
    seen.clear()
    lsr.lsr_correct_volume(stack, mask, GEOM, z_weight=0.5, **kw)
    assert seen == [0.5] * 3
    seen.clear()
    cold = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0)
    lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0, init=cold.z)
    assert seen == [lsr.lsr.DEFAULT_Z_WEIGHT, lsr.lsr.WARM_Z_WEIGHT]


def test_smooth_join_is_continuous_and_leaves_measured_data():
    measured = np.ones((1, 20))
    mask = np.ones((1, 20))
    mask[0, 8:12] = 0
    generated = np.zeros((1, 20))
    out = smooth_join(measured, generated, mask, feather_bins=4)
    np.testing.assert_allclose(out[0, 8:12], 1.0)  # offset matched at both boundaries
    assert np.array_equal(out[mask == 1], measured[mask == 1])
    edge = np.zeros((1, 20))
    edge_mask = np.ones((1, 20))
    edge_mask[0, :6] = 0
    out = smooth_join(np.full((1, 20), 2.0), edge, edge_mask, feather_bins=3)
    np.testing.assert_allclose(out[0, 5], 2.0)  # offset applied at the boundary ...
    np.testing.assert_allclose(out[0, :3], 0.0)  # ... and faded out inside the gap


@pytest.mark.parametrize("mutate, match", [
    (lambda s, m: (s[:, :-1], m), "sinogram has shape"),
    (lambda s, m: (s, m[:-1]), "mask has shape"),
    (lambda s, m: (s, np.zeros_like(m)), "no valid"),
    (lambda s, m: (s, np.ones_like(m)), "nothing to correct"),
    (lambda s, m: (s, m * 0.5), "only 0"),
    (lambda s, m: (np.where(m == 1, np.nan, s), m), "NaN"),
])
def test_bad_input(tiny_prior, case, mutate, match):
    measured, mask, _, _ = case
    s, m = mutate(measured.copy(), mask.copy())
    with pytest.raises(ValueError, match=match):
        lsr.lsr_correct(s, m, GEOM, model=tiny_prior, steps=1)


def test_nan_in_missing_part_is_accepted(tiny_prior, case):
    measured, mask, _, _ = case
    s = np.where(mask == 0, np.nan, measured).astype(np.float32)
    res = lsr.lsr_correct(s, mask, GEOM, model=tiny_prior, steps=3, lbfgs_steps=0)
    assert np.isfinite(res.sinogram).all() and np.isfinite(res.image_hu).all()


def test_geometry_mismatch_and_bad_init(tiny_prior, case):
    measured, mask, _, _ = case
    other = GEOM.replace(n_views=30)
    with pytest.raises(ValueError, match="geometry expects"):
        lsr.lsr_correct(measured, mask, other, model=tiny_prior, steps=1)
    with pytest.raises(ValueError, match="latent"):
        lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=1, init=np.zeros(5))


def test_prior_resampled_onto_a_different_grid(tiny_prior, case):
    geom = lsr.ParallelBeam(image_size=40, pixel_size_mm=4.0, n_views=24, n_det=59, det_spacing_mm=4.0)
    mask = lsr.masks.truncation_mask(geom, fom_mm=70.0)
    sino = np.where(mask == 1, 1.0, 0.0)
    res = lsr.lsr_correct(sino, mask, geom, model=tiny_prior, steps=2, lbfgs_steps=0)
    assert res.generated_hu.shape == (40, 40)
    assert np.allclose(res.generated_hu[0, 0], -1000.0)  # outside the prior's field: air


def test_volume_rejects_unknown_options(tiny_prior, case):
    measured, mask, _, _ = case
    with pytest.raises(TypeError, match="fbp_fliter"):
        lsr.lsr_correct_volume(measured[None], mask, GEOM, model=tiny_prior, steps=1, fbp_fliter="ramp")


def test_fit_report_good_fit_and_noise_level_stop(tiny_prior, case):
    measured, mask, _, _ = case
    rng = np.random.default_rng(0)
    noisy = (measured + 0.2 * rng.standard_normal(measured.shape)).astype(np.float32)
    res = lsr.lsr_correct(noisy, mask, GEOM, model=tiny_prior, steps=400, lbfgs_steps=0)
    fit = res.fit
    assert fit.stop_reason == "converged" and fit.steps < 400 and "noise level" in fit.stop_detail
    assert fit.ok and fit.relative_residual < 0.05 and fit.misfit <= 1.3 * fit.noise_rms ** 2
    d = fit.to_dict()
    assert d["ok"] and d["stop_reason"] == "converged" and "relative_residual" in d


@pytest.mark.parametrize("lbfgs_steps", [0, 6])
def test_fit_report_is_the_misfit_of_the_returned_z(tiny_prior, case, lbfgs_steps):
    """The reported misfit (and the last loss) belong to the z returned, not to a trial point
    of L-BFGS's line search that it rejected."""
    from napari_lsr.lsr import scan_mu_water
    measured, mask, _, _ = case
    res = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=30, lbfgs_steps=lbfgs_steps,
                          precision="float32", join=False)
    with torch.no_grad():
        hu = tiny_prior.decode_hu(torch.as_tensor(res.z)[None])[0]
        proj = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu, scan_mu_water(GEOM, None))).numpy()
    valid = mask == 1
    misfit = float(np.square(proj - measured)[valid].mean())
    assert res.fit.misfit == pytest.approx(misfit, rel=1e-3)
    assert res.loss_history[-1] == pytest.approx(misfit, rel=1e-3)
    assert len(res.loss_history) == 30 + lbfgs_steps


def test_noise_estimate_on_a_realistic_sinogram():
    from napari_lsr.data.phantoms import generate_slice
    geom = lsr.ParallelBeam(image_size=128, pixel_size_mm=3.0, n_views=90, n_det=183,
                            det_spacing_mm=3.0)
    sino = lsr.Projector(geom).forward(lsr.hu_to_mu(generate_slice(1, 128, 3.0, noise_hu=0))).numpy()
    mask = np.ones_like(sino)
    assert lsr.noise_rms(sino, mask) < 0.003  # clean data: (almost) no noise found
    noisy = sino + 0.02 * np.random.default_rng(1).standard_normal(sino.shape)
    assert 0.016 < lsr.noise_rms(noisy, mask) < 0.026


def test_fit_report_warns_when_the_prior_cannot_explain_the_data(tiny_prior, case):
    _, mask, _, _ = case
    hu = np.full(GEOM.image_shape, -1000.0, np.float32)
    hu[4:28, 14:18] = 1500.0  # a bar of bone: nothing like the prior's images
    sino = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy()
    res = lsr.lsr_correct(np.where(mask == 1, sino, 0).astype(np.float32), mask, GEOM,
                          model=tiny_prior, steps=40, lbfgs_steps=0)
    assert not res.fit.ok and "poor fit" in res.fit.warnings[0]
    assert "WARNING" in res.fit.summary()


def test_stop_reasons_and_aborted_run(tiny_prior, case):
    measured, mask, _, _ = case
    full = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=5, lbfgs_steps=0,
                           early_stop=False)
    assert full.fit.stop_reason == "max_steps" and full.fit.steps == 5
    ab = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=50,
                         callback=lambda step, loss, p: step == 2)
    assert ab.stopped and ab.fit.stop_reason == "aborted"


def test_plateau_stops_adam_early(tiny_prior, case):
    measured, mask, _, _ = case
    res = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=3000, lbfgs_steps=0,
                          tol=0.05, patience=10)
    assert res.fit.stop_reason == "converged" and res.fit.steps < 3000


def test_model_given_as_a_path(tiny_prior, case, tmp_path):
    from napari_lsr.model import save_checkpoint
    measured, mask, _, _ = case
    path = save_checkpoint(tiny_prior, tmp_path / "tiny.pt", {"data": "test"})
    a = lsr.lsr_correct(measured, mask, GEOM, model=str(path), steps=3, lbfgs_steps=0)
    b = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=3, lbfgs_steps=0)
    np.testing.assert_allclose(a.image_hu, b.image_hu, atol=1e-3)
    with pytest.raises(TypeError, match="checkpoint path"):
        lsr.lsr_correct(measured, mask, GEOM, model=42, steps=1)


def test_latent_prior_term_keeps_z_smaller(tiny_prior, case):
    measured, mask, _, _ = case
    free = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=60, lbfgs_steps=0,
                           early_stop=False, seed=2)
    held = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=60, lbfgs_steps=0,
                           early_stop=False, seed=2, z_weight=1.0)
    assert np.square(held.z).mean() < np.square(free.z).mean()
    with pytest.raises(ValueError, match="z_weight"):
        lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=1, z_weight=-1)


def test_warm_start_takes_smaller_steps(tiny_prior, case):
    """From a good z (a neighbouring slice's), Adam's default step is WARM_LR: a start at the
    answer stays close to it, where the cold step size walks away."""
    from napari_lsr.lsr import COLD_LR, WARM_LR
    measured, mask, _, z_true = case
    kw = dict(model=tiny_prior, steps=20, lbfgs_steps=0, init=z_true[0].numpy(), z_weight=0.0,
              early_stop=False, precision="float32")
    warm = lsr.lsr_correct(measured, mask, GEOM, **kw)
    cold_step = lsr.lsr_correct(measured, mask, GEOM, lr=COLD_LR, **kw)
    assert WARM_LR < COLD_LR
    assert warm.fit.misfit < cold_step.fit.misfit
    assert np.abs(warm.z - z_true[0].numpy()).max() < np.abs(cold_step.z - z_true[0].numpy()).max()


def test_cold_start_begins_on_every_other_view(tiny_prior, case, monkeypatch):
    """A cold start's first COARSE_FRACTION of Adam steps fit every k-th view (a fraction of
    the projector's work), then all views with the same Adam state; warm starts and fits with
    too few views do not; the fit ends as well as without the coarse stage."""
    from napari_lsr import lsr as engine
    ctx = engine._setup(GEOM, tiny_prior, None, engine.scan_mu_water(GEOM, None))
    P_c, k, n = ctx.coarse_stage(40)  # 24 views, a 32-pixel prior: every 3rd view (8 views)
    assert (k, n) == (3, int(engine.COARSE_FRACTION * 40))
    np.testing.assert_allclose(P_c.geometry.angles_rad(), GEOM.angles_rad()[::3])
    few = engine._setup(GEOM.replace(n_views=10), tiny_prior, None, 0.02)
    assert few.coarse_stage(40) is None and ctx.coarse_stage(1) is None
    measured, mask, _, z_true = case
    kw = dict(model=tiny_prior, steps=60, lbfgs_steps=5, early_stop=False, precision="float32")
    coarse = lsr.lsr_correct(measured, mask, GEOM, **kw)
    warm = lsr.lsr_correct(measured, mask, GEOM, init=z_true[0].numpy(), **kw)
    monkeypatch.setattr(engine, "COARSE_FRACTION", 0.0)
    all_views = lsr.lsr_correct(measured, mask, GEOM, **kw)
    assert len(coarse.loss_history) == len(all_views.loss_history) == 65
    assert coarse.loss_history[:30] != all_views.loss_history[:30]  # the misfit on other rays
    assert coarse.fit.misfit < 1.5 * all_views.fit.misfit + 1e-6
    warm_all_views = lsr.lsr_correct(measured, mask, GEOM, init=z_true[0].numpy(), **kw)
    assert warm.loss_history == warm_all_views.loss_history  # a warm start has no coarse stage


def test_cold_start_encodes_the_classical_correction(tiny_prior, case, monkeypatch):
    """cold_start="encoder" starts at the encoder's latent (clipped to the typical range) of
    the FBP of the classically completed data (water cylinders outside, linear interpolation
    inside), for single slices and a volume's first batch; later batches start from their
    neighbour; "random" (the default) is the seeded draw; an unknown start is refused."""
    from napari_lsr import lsr as engine
    measured, mask, _, _ = case
    guess = lsr.baselines.reconstruct_hu(lsr.baselines.detruncate(measured, mask, GEOM), GEOM)
    c = tiny_prior.config
    x = tiny_prior.from_hu(torch.from_numpy(np.clip(guess, c.hu_min, c.hu_max)))[None, None]
    clip = engine.ENCODER_START_CLIP
    expected = tiny_prior.encode(x.float())[0][0].clamp(-clip, clip)  # atypical parts clipped
    starts = []
    real = engine._optimise

    def recording(prior, P, q, m, z0, *a, **k):
        starts.append(z0.clone())
        return real(prior, P, q, m, z0, *a, **k)

    monkeypatch.setattr(engine, "_optimise", recording)
    assert engine.DEFAULT_COLD_START == "random"
    lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0,
                    cold_start="encoder")
    torch.testing.assert_close(starts[0][0], expected, atol=1e-4, rtol=1e-4)
    a = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0, seed=4)
    assert not torch.allclose(starts[1][0], expected)
    b = lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=2, lbfgs_steps=0,
                        cold_start="random", seed=4)
    np.testing.assert_array_equal(a.z, b.z)
    starts.clear()
    vol = lsr.lsr_correct_volume(np.stack([measured] * 3), mask, GEOM, model=tiny_prior, steps=2,
                                 warm_steps=1, lbfgs_steps=0, batch_size=2, cold_start="encoder")
    torch.testing.assert_close(starts[0], expected.expand(2, -1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(starts[1][0], torch.from_numpy(vol.z[1]))
    with pytest.raises(ValueError, match="cold_start must be one of"):
        lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=1, cold_start="mean")


def test_encoder_start_on_a_grid_other_than_the_priors(tiny_prior):
    """The classical correction is resampled onto the prior's grid (air outside the data's
    grid) before it is encoded: a 40-pixel grid of the same pixel size, centred."""
    from napari_lsr import lsr as engine
    geom = lsr.ParallelBeam(image_size=40, pixel_size_mm=4.0, n_views=24, n_det=59, det_spacing_mm=4.0)
    ctx = engine._setup(geom, tiny_prior, None, 0.0192, reduce=False)
    hu = torch.full((1, 40, 40), -1000.0)
    hu[0, 4:36, 4:36] = torch.arange(32.0)[None, :] * 10
    np.testing.assert_allclose(ctx.prior.to_prior_grid(hu)[0].numpy(), hu[0, 4:36, 4:36].numpy(), atol=1e-3)
    small = lsr.ParallelBeam(image_size=24, pixel_size_mm=4.0, n_views=24, n_det=35, det_spacing_mm=4.0)
    ctx = engine._setup(small, tiny_prior, None, 0.0192, reduce=False)
    out = ctx.prior.to_prior_grid(torch.zeros(1, 24, 24))[0]
    assert torch.allclose(out[4:28, 4:28], torch.zeros(24, 24), atol=1e-3)
    assert torch.allclose(out[:4], torch.full((4, 32), -1000.0), atol=1e-3)  # air outside
    mask = lsr.masks.truncation_mask(geom, fom_mm=70.0)
    res = lsr.lsr_correct(np.where(mask == 1, 1.0, 0.0), mask, geom, model=tiny_prior, steps=2,
                          lbfgs_steps=0, reduce=False, cold_start="encoder")
    assert np.isfinite(res.loss_history).all()


def test_bfloat16_adam_steps_fit_as_well_as_float32(tiny_prior, case):
    measured, mask, _, _ = case
    kw = dict(model=tiny_prior, steps=60, lbfgs_steps=3, early_stop=False, seed=2)
    f32 = lsr.lsr_correct(measured, mask, GEOM, precision="float32", **kw)
    b16 = lsr.lsr_correct(measured, mask, GEOM, precision="bfloat16", **kw)
    assert b16.loss_history[:60] != f32.loss_history[:60]  # the Adam steps did run in bfloat16
    assert b16.loss_history[-1] < 0.2 * b16.loss_history[0]
    assert b16.fit.misfit < 2.0 * f32.fit.misfit + 1e-6
    assert b16.image_hu.dtype == np.float32 and b16.generated_hu.dtype == np.float32
    with pytest.raises(ValueError, match="precision"):
        lsr.lsr_correct(measured, mask, GEOM, model=tiny_prior, steps=1, precision="fp8")
    from napari_lsr.lsr import use_bfloat16
    cpu = torch.device("cpu")
    assert use_bfloat16("bfloat16", cpu) and not use_bfloat16("float32", cpu)
    assert isinstance(use_bfloat16("auto", cpu), bool)


def test_reduction_bins_data_to_the_priors_sampling(tiny_prior):
    from napari_lsr.lsr import reduction_for
    assert reduction_for(GEOM, tiny_prior) is None  # data already at the prior's sampling
    fine = lsr.ParallelBeam(image_size=64, pixel_size_mm=2.0, n_views=96, n_det=93,
                            det_spacing_mm=2.0)
    red = reduction_for(fine, tiny_prior)
    assert (red.kd, red.kv) == (2, 4) and red.geom.image_size == 32  # 96 views -> 24 (0.7 x 32)
    assert red.geom.pixel_size_mm == 4.0 and red.geom.n_views == 24
    # a full fan scan samples every line twice (complementary rays): half as many views kept
    fan = dict(image_size=64, pixel_size_mm=2.0, n_det=189, det_spacing_mm=2.0, sid_mm=200.0,
               sdd_mm=400.0)
    assert reduction_for(lsr.FanBeam(n_views=192, arc_deg=360.0, **fan), tiny_prior).kv == 8
    assert reduction_for(lsr.FanBeam(n_views=120, arc_deg=225.0, **fan), tiny_prior).kv == 4
    sino = np.arange(96 * 93, dtype=np.float32).reshape(96, 93)
    mask = np.ones_like(sino)
    mask[:, :10] = 0
    q, m = red.reduce(sino, mask)
    assert q.shape == m.shape == red.geom.sino_shape
    p = red.pad
    assert q[0, p + 5] == sino[:4, 10:12].mean() and m[0, p] == 0  # bins 0..1 invalid
    assert m[0, p + 5] == 1 and m[0, :p].sum() == 0  # padded bins are missing
    # binning keeps the geometry: a reduced projection equals the binned fine projection
    img = np.zeros(fine.image_shape, np.float32)
    img[20:44, 24:40] = 0.02
    qf = lsr.Projector(fine).forward(img).numpy()
    coarse = img.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    qr = lsr.Projector(red.geom).forward(coarse).numpy()
    qb, _ = red.reduce(qf, np.ones_like(qf))
    inner = slice(p, p + red.n_det_groups)
    assert np.abs(qr[:, inner] - qb[:, inner]).max() < 0.05 * qb.max()


def test_reduced_and_full_resolution_paths_agree(tiny_prior):
    fine = lsr.ParallelBeam(image_size=64, pixel_size_mm=2.0, n_views=48, n_det=93,
                            det_spacing_mm=2.0)
    with torch.no_grad():
        hu = tiny_prior.decode_hu(torch.randn(1, 8, generator=torch.Generator().manual_seed(3)))
    hu = torch.nn.functional.interpolate(hu[None], size=64, mode="bilinear")[0, 0]
    full = lsr.Projector(fine).forward(lsr.hu_to_mu(hu)).numpy()
    mask = lsr.masks.truncation_mask(fine, fom_mm=70.0)
    meas = np.where(mask == 1, full, 0).astype(np.float32)
    kw = dict(model=tiny_prior, steps=60, lbfgs_steps=5, join=False)
    red = lsr.lsr_correct(meas, mask, fine, reduce=True, **kw)
    ful = lsr.lsr_correct(meas, mask, fine, reduce=False, **kw)
    assert red.image_hu.shape == ful.image_hu.shape == fine.image_shape
    assert np.array_equal(red.sinogram[mask == 1], meas[mask == 1])
    missing = mask == 0
    err = lambda r: np.abs(r.sinogram - full)[missing].mean()  # noqa: E731
    assert err(red) < 1.5 * err(ful) + 0.02


@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_reduced_geometry_projector_is_adjoint_matched_and_differentiable(tiny_prior, kind):
    """The reduced problem's projector (averaged view angles, binned and padded detector) is
    a Projector like any other: <Ax, y> = <x, A^T y> and gradcheck."""
    from napari_lsr.lsr import reduction_for
    if kind == "parallel":
        fine = lsr.ParallelBeam(image_size=64, pixel_size_mm=2.0, n_views=96, n_det=93,
                                det_spacing_mm=2.0)
    else:
        fine = lsr.FanBeam(image_size=64, pixel_size_mm=2.0, n_views=96, n_det=200,
                           det_spacing_mm=2.0, sid_mm=300.0, sdd_mm=600.0)
    red = reduction_for(fine, tiny_prior)
    assert red.kd >= 2 and red.geom.angles_deg is not None
    P = lsr.Projector(red.geom)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(red.geom.image_shape, dtype=torch.float64, generator=g)
    y = torch.rand(red.geom.sino_shape, dtype=torch.float64, generator=g)
    lhs, rhs = float((P.forward(x) * y).sum()), float((x * P.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-9 * abs(lhs)
    small = torch.rand(red.geom.image_shape, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(P.forward, (small,), eps=1e-6, atol=1e-6)


def test_object_size_warnings_see_the_patient_not_the_table():
    """A 300 mm body on a 380 mm table in a 384 mm prior: no warning; a 440 mm body: larger
    than the prior's field; an 80 mm object: smaller than anything the prior knows."""
    from types import SimpleNamespace

    from napari_lsr.lsr import prior_warnings

    prior = SimpleNamespace(config=SimpleNamespace(image_size=64, pixel_size_mm=6.0))
    geom = lsr.ParallelBeam(image_size=96, pixel_size_mm=6.0, n_views=60, n_det=140,
                            det_spacing_mm=6.0)
    yy, xx = (np.mgrid[:96, :96] - 47.5) * 6.0
    P = lsr.Projector(geom)

    def warnings_for(diameter_mm, table=False):
        hu = np.where(xx ** 2 + yy ** 2 < (diameter_mm / 2) ** 2, 0.0, -1000.0).astype(np.float32)
        if table:  # a 6 mm plate of +200 HU, 380 mm wide, under the body
            hu[(np.abs(xx) < 190) & (np.abs(yy - diameter_mm / 2 - 6) < 3)] = 200.0
        sino = P.forward(lsr.hu_to_mu(hu)).numpy()
        return [w for w in prior_warnings(prior, geom, sino, np.ones_like(sino))
                if "object" in w]

    assert warnings_for(300, table=True) == []
    assert "larger than the prior's field" in warnings_for(440)[0]
    assert "much smaller" in warnings_for(40)[0]
