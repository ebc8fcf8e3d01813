"""VAE prior: shapes, HU mapping, determinism, checkpoint round trip and bad files."""

import pytest
import torch

from napari_lsr.model import VAE, VAEConfig, load_model, save_checkpoint
from napari_lsr.model.checkpoint import DEFAULT_PATH

TINY = dict(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4, 8),
            attn_heads=2, pixel_size_mm=12.0)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return VAE(VAEConfig(**TINY)).eval()


@pytest.fixture
def ckpt(tiny, tmp_path):
    return save_checkpoint(tiny, tmp_path / "p.pt", {"data": "test"})


def test_shapes_and_range(tiny):
    x = torch.rand(3, 1, 32, 32)
    recon, mu, logvar = tiny(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (3, 8)
    assert 0.0 <= recon.min() and recon.max() <= 1.0
    assert tiny.decode_hu(mu).shape == (3, 32, 32)


def test_decode_gives_hu_and_decode_normalised_the_network_units(tiny):
    z = torch.randn(2, 8)
    hu, x01 = tiny.decode(z), tiny.decode_normalised(z)
    assert hu.shape == (2, 32, 32) and x01.shape == (2, 1, 32, 32)
    assert torch.allclose(hu, tiny.to_hu(x01)[:, 0]) and torch.equal(hu, tiny.decode_hu(z))
    assert 0 <= x01.min() and x01.max() <= 1 and hu.min() >= -1024


def test_hu_mapping_fixed(tiny):
    hu = torch.tensor([-1024.0, 0.0, 3071.0])
    assert torch.allclose(tiny.from_hu(hu), torch.tensor([0.0, 1024 / 4095, 1.0]))
    assert torch.allclose(tiny.to_hu(tiny.from_hu(hu)), hu)


def test_decode_batch_one_equals_batch_many(tiny):
    z = torch.randn(5, 8)
    many = tiny.decode_normalised(z)
    ones = torch.cat([tiny.decode_normalised(z[i:i + 1]) for i in range(5)])
    assert torch.allclose(many, ones, atol=1e-6)
    assert torch.equal(tiny.decode_normalised(z), many)  # deterministic in eval mode


def test_bad_config():
    with pytest.raises(ValueError, match="image_size"):
        VAEConfig(image_size=36, channel_mults=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="multiple of 8"):  # GroupNorm's 8 groups
        VAEConfig(base_channels=44, channel_mults=(1, 2, 4, 8), stem_factor=4)
    VAEConfig(base_channels=40, channel_mults=(1, 2, 4, 8), stem_factor=4)
    VAEConfig(base_channels=4, channel_mults=(1, 2, 4), image_size=32)
    with pytest.raises(ValueError, match="refine_channels"):
        VAEConfig(refine_channels=-1)


def test_checkpoint_round_trip_exact(tiny, ckpt):
    m = load_model(ckpt)
    assert not m.training and m.config == tiny.config
    assert m.training_summary == {"data": "test"}
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    z = torch.randn(4, 8)
    assert torch.equal(m.decode(z), tiny.decode(z))


@pytest.mark.parametrize("stem", [1, 4])
def test_refiner_starts_as_identity_then_learns_and_round_trips(stem, tmp_path):
    """A prior grown with a full-resolution refiner (``--refine-channels`` with
    ``--init-from``) first decodes exactly as the prior it was grown from; training moves it."""
    from napari_lsr.train import transfer_weights

    torch.manual_seed(0)
    cfg = {**TINY, "stem_factor": stem, "channel_mults": (1, 2, 4, 8) if stem == 1 else (1, 2)}
    base = VAE(VAEConfig(**cfg)).eval()
    grown = VAE(VAEConfig(**cfg, refine_channels=4)).eval()
    _, fresh = transfer_weights(base, grown)
    assert fresh and all(k.startswith("refiner.") for k in fresh)
    z = torch.randn(3, 8)
    assert torch.equal(grown.decode(z), base.decode(z))
    assert grown.n_parameters()["decoder"] > base.n_parameters()["decoder"]
    target = torch.rand(3, 1, 32, 32)
    opt = torch.optim.SGD(grown.refiner.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        (grown.decode_normalised(z) - target).abs().mean().backward()
        opt.step()
    with torch.no_grad():
        assert (grown.decode(z) - base.decode(z)).abs().max() > 1.0  # HU
    m = load_model(save_checkpoint(grown, tmp_path / "r.pt", {}))
    assert m.config.refine_channels == 4 and torch.equal(m.decode(z), grown.decode(z))


def test_half_checkpoint_and_gradient_to_z(tiny, tmp_path):
    p = save_checkpoint(tiny, tmp_path / "h.pt", {}, half=True)
    m = load_model(p)
    assert all(v.dtype == torch.float32 for v in m.state_dict().values() if v.is_floating_point())
    z = torch.randn(1, 8, requires_grad=True)
    assert torch.allclose(m.decode_normalised(z), tiny.decode_normalised(z), atol=1e-2)
    m.decode(z).sum().backward()  # weights frozen, z still gets a gradient
    assert z.grad is not None and z.grad.abs().sum() > 0


def _expect_value_error(path, match):
    with pytest.raises(ValueError, match=match) as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_corrupt_and_truncated_files(ckpt, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    _expect_value_error(junk, "corrupt, truncated")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    _expect_value_error(trunc, "corrupt, truncated")


def test_wrong_format_and_mismatch(tiny, ckpt, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(tiny.state_dict(), bare)
    _expect_value_error(bare, "not a napari-lsr prior")
    d = torch.load(ckpt, weights_only=True)
    for name, edit, match in [
        ("nokeys.pt", lambda d: d.pop("state_dict"), "lacks"),
        ("version.pt", lambda d: d.update(version=99), "version"),
        ("mismatch.pt", lambda d: d["config"].update(latent_dim=16), "do not match"),
        ("unknown.pt", lambda d: d["config"].update(colour="red"), "unknown config"),
    ]:
        bad = {**d, "config": dict(d["config"])}
        edit(bad)
        torch.save(bad, tmp_path / name)
        _expect_value_error(tmp_path / name, match)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


@pytest.mark.skipif(not DEFAULT_PATH.is_file(), reason="bundled default prior not present")
def test_bundled_default_loads():
    m = load_model()
    assert m.config.image_size == 256 and m.config.pixel_size_mm == 1.5
    assert m.training_summary["steps"] > 0
    assert DEFAULT_PATH.stat().st_size <= 20 * 2**20
    with torch.no_grad():
        img = m.decode_hu(torch.zeros(1, m.config.z_size))
    assert img.shape == (1, 256, 256) and torch.isfinite(img).all()


def test_conditional_spatial_prior_keeps_z_standard_normal_and_round_trips(tmp_path):
    cfg = VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                    attn_heads=2, pixel_size_mm=12.0, spatial_channels=2, spatial_size=16,
                    spatial_prior="conditional")
    torch.manual_seed(0)
    m = VAE(cfg)
    assert cfg.z_size == 8 + 2 * 16 * 16
    x = torch.rand(3, 1, 32, 32)
    recon, mu, logvar = m(x)  # training mode: sampled
    assert recon.shape == x.shape and mu.shape == logvar.shape == (3, cfg.z_size)
    m.eval()
    recon, mu, logvar = m(x)
    enc_mu, _ = m.encode(x)
    assert torch.allclose(mu, enc_mu) and torch.allclose(m.decode_normalised(enc_mu), recon)
    # the conditional prior shifts the spatial latent: decoding depends on it
    with torch.no_grad():
        m.spatial_prior.net[-1].bias.fill_(0.5)
    z = torch.zeros(1, cfg.z_size)
    assert not torch.allclose(m.decode_normalised(z), VAE(VAEConfig(**{**cfg.__dict__, "spatial_prior": "standard"})).eval().decode_normalised(z))
    p = save_checkpoint(m, tmp_path / "c.pt", {})
    m2 = load_model(p)
    assert m2.config.spatial_prior == "conditional"
    assert torch.allclose(m2.decode_normalised(z), m.decode_normalised(z))
    with pytest.raises(ValueError, match="spatial_prior"):
        VAEConfig(spatial_prior="learned")


def test_latent_calibration_public_coordinates_and_old_files(tmp_path):
    """After calibrate_latent, public u = 0 decodes the average training slice's latent and
    encode/decode round-trip in public coordinates; files without the calibration load with
    identity calibration."""
    cfg = VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                    attn_heads=2, pixel_size_mm=12.0, spatial_channels=2, spatial_size=16,
                    spatial_prior="conditional")
    torch.manual_seed(0)
    m = VAE(cfg).eval()
    x = torch.rand(40, 1, 32, 32)
    raw = m.encode(x)[0]
    info = m.calibrate_latent(x)
    assert info["n"] == 40
    u = m.encode(x)[0]
    assert torch.allclose(u.mean(0), torch.zeros(cfg.z_size), atol=1e-4)
    assert torch.allclose(m.from_public(u), raw, atol=1e-4)
    assert torch.allclose(m.decode_normalised(u), m(x)[0], atol=1e-5)
    p = save_checkpoint(m, tmp_path / "cal.pt", {})
    assert torch.equal(load_model(p).latent_shift, m.latent_shift)
    sd = torch.load(p, weights_only=True)
    for k in VAE.CALIBRATION_BUFFERS:  # a file from before the calibration existed
        del sd["state_dict"][k]
    torch.save(sd, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert torch.equal(old.global_chol, torch.eye(8)) and not old.latent_shift.any()
    assert len(old.mixture_weight) == 0 and old.sample(2).shape == (2, 32, 32)


def test_lowrank_mixture_keeps_correlated_directions():
    """Two clusters spread along one shared direction in 6-D: the low-rank mixture finds the
    direction and its draws stay on the two lines, where a diagonal mixture's draws spread
    into the box around them (what made the prior's random outlines ragged)."""
    from napari_lsr.model.mixture import fit_diagonal_gmm, fit_lowrank_gmm, sample_gmm

    g = torch.Generator().manual_seed(0)
    v = torch.ones(6) / 6 ** 0.5
    centres = torch.tensor([[-8.0, 0, 0, 0, 0, 0], [8.0, 0, 0, 0, 0, 0]])
    pts = torch.cat([c + 2.0 * torch.randn(300, 1, generator=g) * v
                     + 0.05 * torch.randn(300, 6, generator=g) for c in centres])
    w, mean, std, factors = fit_lowrank_gmm(pts, 2, rank=1, var_floor=1e-5)
    assert factors.shape == (2, 1, 6) and torch.allclose(w, torch.full((2,), 0.5))
    for j in range(2):
        assert abs(float(factors[j, 0] @ v)) == pytest.approx(2.0, rel=0.15)  # std along v
        assert float(std[j].max()) < 0.1

    def off_line(draws):  # distance from the nearer of the two lines
        d = draws[:, None, :] - centres[None]
        return (d - (d @ v)[..., None] * v).norm(dim=-1).min(1).values

    low = sample_gmm(w, mean, std, 500, torch.Generator().manual_seed(1), factors=factors)
    diag = sample_gmm(*fit_diagonal_gmm(pts, 2, var_floor=1e-5), 500,
                      torch.Generator().manual_seed(1))
    assert float(off_line(low).median()) < 0.2 < 1.0 < float(off_line(diag).median())
    at_zero = sample_gmm(w, mean, std, 50, torch.Generator().manual_seed(1), 0.0, factors)
    assert float((at_zero[:, None] - mean).norm(dim=-1).min(1).values.max()) < 1e-5  # the means


def test_latent_mixture_fits_clusters_and_round_trips(tmp_path):
    """The sampling mixture finds well-separated clusters, sample() draws from it, and it
    survives a checkpoint round trip (also in float16)."""
    from napari_lsr.model.mixture import fit_diagonal_gmm, sample_gmm

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    pts = torch.cat([c + 0.3 * torch.randn(200, 3, generator=g) for c in centres])
    w, mean, std = fit_diagonal_gmm(pts, 3, var_floor=1e-4)
    order = mean[:, 0].argsort()
    assert torch.allclose(w, torch.full((3,), 1 / 3), atol=0.02)
    assert torch.allclose(mean[order][:, :2], centres[[0, 2, 1]][:, :2], atol=0.1)
    assert torch.allclose(std, torch.full_like(std, 0.3), atol=0.1)
    draws = sample_gmm(w, mean, std, 300, torch.Generator().manual_seed(1))
    nearest = torch.cdist(draws, centres).min(1).values
    assert (nearest < 1.5).all()
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_diagonal_gmm(pts[:5], 3)

    torch.manual_seed(0)
    m = VAE(VAEConfig(**TINY)).eval()
    info = m.calibrate_latent(torch.rand(40, 1, 32, 32), mixture_components=4)
    assert info["mixture_components"] == 4 and m.mixture_mean.shape == (4, 8)
    assert m.mixture_factors.shape == (4, 16, 8)
    a = m.sample(3, torch.Generator().manual_seed(2))
    for half in (False, True):
        back = load_model(save_checkpoint(m, tmp_path / f"mix{half}.pt", {}, half=half))
        assert back.mixture_mean.shape == (4, 8) and back.mixture_factors.shape == (4, 16, 8)
        assert torch.allclose(back.sample(3, torch.Generator().manual_seed(2)), a,
                              atol=1.0 if not half else 60.0)  # HU
    sd = torch.load(tmp_path / "mixFalse.pt", weights_only=True)
    del sd["state_dict"]["mixture_factors"]  # a file from before the low-rank mixture
    torch.save(sd, tmp_path / "diag.pt")
    diag = load_model(tmp_path / "diag.pt")
    assert diag.mixture_factors.shape == (4, 0, 8) and diag.sample(2).shape == (2, 32, 32)
    # refitting only its mixture leaves the latent calibration (LSR's start) as it was
    from napari_lsr.train import calibrate_checkpoint
    info = calibrate_checkpoint(tmp_path / "diag.pt", n=40, mixture_only=True)
    refit = load_model(tmp_path / "diag.pt")
    assert info["mixture_components"] == 20 and refit.mixture_factors.shape == (20, 16, 8)
    assert torch.equal(refit.latent_shift, diag.latent_shift)
    assert torch.equal(refit.global_chol, diag.global_chol)
    with pytest.raises(ValueError, match="shape"):
        m.set_latent_mixture(torch.ones(2), torch.zeros(2, 7), torch.ones(2, 7))
    with pytest.raises(ValueError, match="factors of shape"):
        m.set_latent_mixture(torch.ones(2), torch.zeros(2, 8), torch.ones(2, 8),
                             torch.zeros(2, 3, 7))
    m.set_latent_mixture(torch.zeros(0), torch.zeros(0, 8), torch.zeros(0, 8))
    assert m.sample(2).shape == (2, 32, 32)
