"""Headless command line on a tiny prior: demo, correct (simulated volume and sinogram
stack), evaluate; outputs carry spacing and never overwrite without --overwrite."""

import json

import numpy as np
import pytest
import tifffile
import torch

import napari_lsr as lsr
from napari_lsr.cli import main
from napari_lsr.data import read_tiff, write_tiff
from napari_lsr.model import VAE, VAEConfig, save_checkpoint


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                          pixel_size_mm=8.0))
    return str(save_checkpoint(model, tmp_path_factory.mktemp("m") / "tiny.pt", {"note": "untrained test prior"}))


def test_help_for_every_command(capsys):
    for cmd in ("demo", "correct", "train", "evaluate"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: napari-lsr " + cmd in capsys.readouterr().out


def test_demo_writes_images_and_report(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", tiny_model_path, "--steps", "3", "--lbfgs-steps", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]) == {"truncation", "metal"}
    assert report["tasks"]["truncation"]["steps_run"] == 4
    for name in ("truncation.png", "metal.png", "truncation_lsr.tif", "metal_uncorrected.tif"):
        assert (out / name).is_file()
    vol = read_tiff(out / "truncation_lsr.tif")
    assert vol.spacing_mm[1] == pytest.approx(8.0)
    # a second run never overwrites the first
    assert main(["demo", "--out", str(out), "--model", tiny_model_path, "--steps", "1", "--lbfgs-steps", "0"]) == 0
    assert (tmp_path / "demo-1" / "report.json").is_file()


def test_correct_simulated_volume(tmp_path, tiny_model_path):
    vol = np.stack([lsr.data.generate_slice(10_000_000 + i, 32, 8.0, region="head") for i in range(3)])
    src = write_tiff(tmp_path / "ct.tif", vol, (2.0, 8.0, 8.0))
    out = tmp_path / "corrected.tif"
    args = ["correct", "--volume", str(src), "--simulate", "truncation", "--fom-mm", "120", "--views", "30",
            "--out", str(out), "--model", tiny_model_path, "--steps", "4", "--warm-steps", "2", "--lbfgs-steps", "1"]
    assert main(args) == 0
    res = read_tiff(out)
    assert res.hu.shape == (3, 32, 32)
    assert res.spacing_mm == pytest.approx((2.0, 8.0, 8.0))
    report = json.loads((tmp_path / "corrected.tif.report.json").read_text())
    assert report["steps_run"] == [5, 3, 3]
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        main(args)
    assert out.read_bytes() == before


def test_correct_sinogram_stack_with_mask_and_geometry(tmp_path, tiny_model_path):
    geom = lsr.ParallelBeam(image_size=32, pixel_size_mm=8.0, n_views=20, n_det=47, det_spacing_mm=8.0)
    hu = np.stack([lsr.data.generate_slice(10_000_010 + i, 32, 8.0) for i in range(2)])
    sino = lsr.Projector(geom).forward(lsr.hu_to_mu(hu)).numpy().astype(np.float32)
    mask = lsr.masks.truncation_mask(geom, fom_mm=150.0)
    np.save(tmp_path / "sino.npy", sino * mask)
    np.save(tmp_path / "mask.npy", mask[None])
    (tmp_path / "geom.json").write_text(geom.to_json())
    out = tmp_path / "c.tif"
    assert main(["correct", "--sinogram", str(tmp_path / "sino.npy"), "--mask", str(tmp_path / "mask.npy"),
                 "--geometry", str(tmp_path / "geom.json"), "--out", str(out), "--sinogram-out",
                 str(tmp_path / "completed.tif"), "--model", tiny_model_path, "--steps", "3",
                 "--warm-steps", "1", "--lbfgs-steps", "0"]) == 0
    completed = tifffile.imread(tmp_path / "completed.tif")
    assert np.array_equal(completed[:, mask == 1], (sino * mask)[:, mask == 1])
    assert read_tiff(out).hu.shape == (2, 32, 32)


def test_correct_bad_input_is_a_clear_error(tmp_path, tiny_model_path, capsys):
    geom = lsr.ParallelBeam(image_size=32, pixel_size_mm=8.0, n_views=20, n_det=47, det_spacing_mm=8.0)
    np.save(tmp_path / "sino.npy", np.zeros((1, 20, 47), np.float32))
    np.save(tmp_path / "mask.npy", np.ones((1, 21, 47), np.float32))
    (tmp_path / "geom.json").write_text(geom.to_json())
    code = main(["correct", "--sinogram", str(tmp_path / "sino.npy"), "--mask", str(tmp_path / "mask.npy"),
                 "--geometry", str(tmp_path / "geom.json"), "--out", str(tmp_path / "c.tif"),
                 "--model", tiny_model_path, "--steps", "1"])
    assert code == 2
    assert "mask has shape" in capsys.readouterr().err
    assert not (tmp_path / "c.tif").exists()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["correct", "--sinogram", str(tmp_path / "sino.npy"), "--fom-mm", "100", "--geometry",
                 str(tmp_path / "geom.json"), "--out", str(tmp_path / "c.tif"), "--model",
                 str(tmp_path / "bad.pt")]) == 2


@pytest.mark.parametrize("task", ["truncation", "metal"])
def test_evaluate_writes_table_and_figure(tmp_path, tiny_model_path, task):
    out = tmp_path / task
    assert main(["evaluate", "--task", task, "--out", str(out), "--n-generated", "2", "--no-real",
                 "--model", tiny_model_path, "--steps", "2", "--lbfgs-steps", "0"]) == 0
    table = (out / "table.md").read_text()
    assert "LSR" in table and "floor" in table and "±" in table
    assert (out / "figure.png").stat().st_size > 1000
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_cases"] == 2
