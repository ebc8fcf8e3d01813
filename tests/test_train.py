"""Training pipeline on tiny configs: loss falls, files written, resume, CLI, user data, DDP."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_lsr.model import load_model
from napari_lsr.model.vae import VAE
from napari_lsr.train import (TRAIN_SEEDS, BatchSource, TrainConfig, add_train_arguments,
                              evaluate_reconstruction, run_train, train, transfer_weights)

TINY = dict(image_size=32, pixel_size_mm=12.0, latent_dim=8, base_channels=4,
            channel_mults=(1, 2, 4, 8), attn_heads=2, stem_factor=1, spatial_channels=0, batch_size=8, lr=3e-3, warmup_steps=2,
            kl_warmup_steps=10, val_n=4, threads=1, progress=False, calibration_n=16)


def test_tiny_training_loss_falls_and_files(tmp_path):
    out = tmp_path / "p.pt"
    best = train(TrainConfig(out=str(out), steps=30, epoch_steps=10, **TINY))
    assert best == out and out.is_file()
    for suffix in ("_last.pt", "_history.png", "_history.json", "_samples.png"):
        assert (tmp_path / f"p{suffix}").is_file()
    hist = json.loads((tmp_path / "p_history.json").read_text())
    assert len(hist) == 3 and hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    m = load_model(out)
    s = m.training_summary
    assert s["data"]["train_seeds"] == f"0..{TRAIN_SEEDS - 1}" and s["steps"] >= 10
    res = evaluate_reconstruction(m, n=4)
    assert res["seed0"] >= 10_000_000 and np.isfinite([res["mae_hu_body"], res["psnr_db"]]).all()
    assert -1 <= res["ssim"] <= 1
    # the body's error splits into bone (truth > BONE_HU) and the rest, consistently
    from napari_lsr.data.phantoms import body_mask
    from napari_lsr.train import BONE_HU, phantom_batch, reconstruction_metrics
    hu = phantom_batch([10_000_001], 32, 12.0, ("pelvis",))
    one = reconstruction_metrics(m, hu)
    body = body_mask(np.clip(hu[0], -1024, 3071))
    n_body, n_soft = body.sum(), (body & (hu[0] <= BONE_HU)).sum()
    assert 0 <= one["error_share_bone"] <= 1
    assert one["mae_hu_body_without_bone"] * n_soft == pytest.approx(
        (1 - one["error_share_bone"]) * one["mae_hu_body"] * n_body, rel=1e-3)
    # the prior alone on the command line: per-region table, samples figure
    from napari_lsr.cli import main as cli_main
    assert cli_main(["evaluate", "--task", "reconstruction", "--model", str(out), "--no-real",
                     "--n-generated", "2", "--out", str(tmp_path / "rec")]) == 0
    rec = json.loads((tmp_path / "rec" / "results.json").read_text())
    assert set(rec["rows"]) == {"phantoms: thorax", "phantoms: abdomen", "phantoms: pelvis",
                                "phantoms: head", "phantoms: all"}
    assert rec["rows"]["phantoms: all"]["n"] == 8 and rec["units"]["mae_hu_body"] == "HU"
    assert (tmp_path / "rec" / "samples.png").stat().st_size > 0
    assert "| phantoms: head | 2 |" in (tmp_path / "rec" / "table.md").read_text()

    # resume continues the step count and history; --max-minutes counts from the restart,
    # not the hours the run had already trained (here 1 000 000 s)
    last = tmp_path / "p_last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["extra"]["elapsed_s"] = 1e6
    torch.save(ckpt, last)
    train(TrainConfig(out=str(out), steps=50, epoch_steps=10, resume=True, max_minutes=60, **TINY))
    hist = json.loads((tmp_path / "p_history.json").read_text())
    assert [h["step"] for h in hist] == [10, 20, 30, 40, 50]
    assert hist[-1]["elapsed_s"] > 1e6  # the history's clock goes on


def test_phantom_seed_sharding():
    cfg = TrainConfig(**TINY)
    a = BatchSource(cfg, cfg.vae_config(), rank=0, world=2)
    b = BatchSource(cfg, cfg.vae_config(), rank=1, world=2)
    seeds = [set(s.phantom_seeds(k)) for k in range(3) for s in (a, b)]
    assert len(set().union(*seeds)) == 6 * cfg.batch_size
    assert max(max(s) for s in seeds) < TRAIN_SEEDS


def test_cli_user_data_only(tmp_path):
    rng = np.random.default_rng(0)
    vol = np.full((4, 40, 40), -1000.0, np.float32)
    vol[:, 8:32, 6:34] = 40.0 + 10 * rng.standard_normal((4, 24, 28))
    np.save(tmp_path / "vol.npy", vol)
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--out", str(tmp_path / "u.pt"), "--data", str(tmp_path / "vol.npy"), "--no-phantoms",
         "--image-size", "64", "--pixel-size-mm", "1.0", "--latent-dim", "8",
         "--base-channels", "4", "--channel-mults", "1", "2", "4", "8", "--attn-heads", "2",
         "--steps", "4", "--epoch-steps", "2", "--batch-size", "2", "--threads", "1", "--calibration-n", "8",
         "--no-progress"])
    assert run_train(args) == 0
    s = load_model(tmp_path / "u.pt").training_summary
    assert s["data"]["n_user_slices"] == 4 and not s["data"]["phantoms"]


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "d.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "napari_lsr.train", "--out", str(out), "--image-size", "64",
           "--pixel-size-mm", "6.0", "--latent-dim", "8", "--base-channels", "4",
           "--channel-mults", "1", "2", "4", "8", "--attn-heads", "2", "--steps", "2",
           "--epoch-steps", "2", "--batch-size", "2", "--val-n", "2", "--threads", "1", "--calibration-n", "8",
           "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "rank 0 finished" in r.stdout and "rank 1 finished" in r.stdout
    s = load_model(out).training_summary
    assert s["world_size"] == 2 and s["images_seen"] == 2 * 2 * 2


def test_phantom_bank_made_once_and_mixed_with_fresh_phantoms(tmp_path):
    bank = tmp_path / "bank.npy"
    cfg = TrainConfig(bank=str(bank), bank_size=6, bank_fraction=0.5, **TINY)
    src = BatchSource(cfg, cfg.vae_config())
    arr = np.load(bank)
    assert arr.shape == (6, 32, 32) and arr.dtype == np.int16 and arr.min() >= -1100
    x = src.batch(0)
    assert x.shape == (8, 1, 32, 32) and 0 <= x.min() and x.max() <= 1
    fresh = src.phantoms(0, 8)
    assert fresh.shape == (8, 32, 32)
    mtime = bank.stat().st_mtime_ns
    BatchSource(cfg, cfg.vae_config())  # an existing bank is reused, not made again
    assert bank.stat().st_mtime_ns == mtime


def test_spike_guard_skips_exploding_and_non_finite_losses():
    from napari_lsr.train import SpikeGuard
    g = SpikeGuard(factor=4.0, window=10, warmup=5)
    assert not any(g.bad(v) for v in [1.0, 1.1, 0.9, 1.0, 1.2, 1.0])
    assert g.bad(float("nan")) and g.bad(50.0) and not g.bad(1.5)
    g = SpikeGuard(factor=4.0, window=10, warmup=5, max_run=3)
    for v in [1.0] * 6:
        g.bad(v)
    assert [g.bad(10.0) for _ in range(5)] == [True, True, True, False, False]  # a new level


def test_init_from_continues_from_weights(tmp_path):
    a = tmp_path / "a.pt"
    train(TrainConfig(out=str(a), steps=4, epoch_steps=2, **TINY))
    b = tmp_path / "b.pt"
    train(TrainConfig(out=str(b), steps=2, epoch_steps=2, init_from=str(a), **TINY))
    assert load_model(b).training_summary["train_config"]["init_from"] == str(a)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        train(TrainConfig(out=str(tmp_path / "c.pt"), steps=2, epoch_steps=2, init_from=str(a),
                          **{**TINY, "pixel_size_mm": 3.0}))


def test_transfer_weights_copies_what_matches():
    small = VAE(TrainConfig(**TINY).vae_config())
    wider = VAE(TrainConfig(**{**TINY, "latent_dim": 16}).vae_config())
    copied, fresh = transfer_weights(small, wider)
    assert 0 < len(fresh) < copied  # only the layers touching the latent vector start fresh
    sd_small, sd_wider = small.state_dict(), wider.state_dict()
    kept = [k for k in sd_wider if k not in fresh]
    assert len(kept) == copied
    assert all(torch.equal(sd_small[k], sd_wider[k]) for k in kept)


def test_bone_and_edge_weights_act_where_they_say():
    from napari_lsr.train import elbo_loss

    class Fixed(torch.nn.Module):
        """A 'model' that returns a given reconstruction and a posterior equal to the prior."""

        def __init__(self, recon):
            super().__init__()
            self.recon = recon

        def forward(self, x):
            return self.recon, torch.zeros(len(x), 4), torch.zeros(len(x), 4)

    mc = TrainConfig(**TINY).vae_config()
    to_norm = lambda hu: (hu - mc.hu_min) / (mc.hu_max - mc.hu_min)  # noqa: E731
    x = torch.full((1, 1, 16, 16), to_norm(0.0))
    x[..., 6:8, :] = to_norm(1000.0)  # a thin bone line
    bone_error = x.clone()
    bone_error[..., 6:8, :] = to_norm(500.0)  # the line drawn too dark
    offset = x + 0.01  # the same error everywhere: no edge error
    rec = lambda r, **w: elbo_loss(Fixed(r), x, 0.0, mc, **w)[1].item()  # noqa: E731
    assert rec(bone_error, bone_weight=2.0) == pytest.approx(3 * rec(bone_error))
    assert rec(offset, bone_weight=2.0) > rec(offset)  # bone pixels count 3x, the rest 1-2x
    assert rec(offset, edge_weight=1.0) == pytest.approx(rec(offset))
    assert rec(bone_error, edge_weight=1.0) > rec(bone_error)  # the dark line has edges
    assert elbo_loss(Fixed(x), x, 0.1, mc, bone_weight=2.0, edge_weight=1.0)[0].item() == 0.0
