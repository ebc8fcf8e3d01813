"""Headless command line on a tiny prior: demo, correct (simulated volume and sinogram
stack), train, evaluate. Outputs carry spacing and units, are checked before any work and
never overwritten without --overwrite; user errors are one line naming the argument and file,
exit status 2, no traceback."""

import argparse
import json
import os
import stat
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_lsr as lsr
from napari_lsr import cli
from napari_lsr.cli import build_parser, main
from napari_lsr.data import read_tiff, write_tiff
from napari_lsr.model import VAE, VAEConfig, save_checkpoint

GEOM = lsr.ParallelBeam(image_size=32, pixel_size_mm=8.0, n_views=20, n_det=47, det_spacing_mm=8.0)
TINY = ["--steps", "3", "--warm-steps", "1", "--lbfgs-steps", "0"]


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=32, latent_dim=8, base_channels=4, channel_mults=(1, 2, 4),
                          pixel_size_mm=8.0))
    return str(save_checkpoint(model, tmp_path_factory.mktemp("m") / "tiny.pt", {"note": "untrained test prior"}))


@pytest.fixture
def no_lsr(monkeypatch):
    """Any LSR run fails the test: errors must come before the computation."""
    def fail(*a, **k):
        raise AssertionError("LSR ran although the input or output was refused")
    monkeypatch.setattr("napari_lsr.lsr.lsr_correct_volume", fail)


def _sino_files(d: Path, n=2, nan_in_missing=False):
    """sino.npy (n slices, truncated), mask.npy (1, V, D), geom.json in folder d."""
    hu = np.stack([lsr.data.generate_slice(10_000_010 + i, 32, 8.0) for i in range(n)])
    sino = lsr.Projector(GEOM).forward(lsr.hu_to_mu(hu)).numpy().astype(np.float32)
    mask = lsr.masks.truncation_mask(GEOM, fom_mm=150.0)
    sino = sino * mask
    if nan_in_missing:
        sino[:, mask == 0] = np.nan
    np.save(d / "sino.npy", sino)
    np.save(d / "mask.npy", mask[None])
    (d / "geom.json").write_text(GEOM.to_json())
    return d / "sino.npy", d / "mask.npy", d / "geom.json", sino, mask


def _assert_units(report):
    """Every number in the report has a unit: a known key suffix or an entry in "units"."""
    units = report["units"]
    suffixes = tuple(k[1:] for k in units if k.startswith("*"))

    def walk(obj, key):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k != "units":
                    walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            assert key in units or str(key).endswith(suffixes), f"number under {key!r} has no unit"
    walk(report, None)


def _error(capsys, code, *needles):
    """rc 2, one 'error:' line holding every needle, no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    for n in needles:
        assert str(n) in line, f"{n!r} not in {line!r}"
    return line


# -- parser --------------------------------------------------------------------------------
def test_help_for_every_command(capsys):
    for cmd in ("demo", "correct", "train", "evaluate"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: napari-lsr " + cmd in capsys.readouterr().out


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-lsr {version('napari-lsr')}"


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_flag_has_help_with_its_default():
    parser = build_parser()
    subs = _subparsers(parser)
    assert {"demo", "correct", "train", "evaluate"} <= set(subs)
    for name, sub in [("", parser), *subs.items()]:
        fmt = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = f"{name} {'/'.join(action.option_strings)}"
            assert action.help and action.help.strip(), f"{flag} has no help"
            shown = fmt._get_help_string(action)
            if action.option_strings and action.nargs != 0 and not action.required \
                    and not isinstance(action, argparse._VersionAction):
                assert "default" in shown.lower(), f"{flag}: help does not state the default"
    help_text = subs["correct"].format_help()
    assert "(default: 500)" in help_text and "limited-angle" in help_text


# -- demo ----------------------------------------------------------------------------------
def test_demo_writes_images_and_report(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", tiny_model_path, "--steps", "3", "--lbfgs-steps", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]) == {"truncation", "metal"}
    assert report["tasks"]["truncation"]["steps_run"] == 4
    assert set(report["tasks"]["metal"]["lsr"]) == {"mae_outside_metal_hu", "mae_body_hu"}
    _assert_units(report)
    for name in ("truncation.png", "metal.png", "truncation_lsr.tif", "metal_uncorrected.tif"):
        assert (out / name).is_file()
    vol = read_tiff(out / "truncation_lsr.tif")
    assert vol.spacing_mm[1] == pytest.approx(8.0)
    # a second run never overwrites the first
    assert main(["demo", "--out", str(out), "--model", tiny_model_path, "--steps", "1", "--lbfgs-steps", "0"]) == 0
    assert (tmp_path / "demo-1" / "report.json").is_file()


# -- correct: working runs -----------------------------------------------------------------
def test_correct_simulated_volume(tmp_path, tiny_model_path, capsys):
    vol = np.stack([lsr.data.generate_slice(10_000_000 + i, 32, 8.0, region="head") for i in range(3)])
    src = write_tiff(tmp_path / "ct.tif", vol, (2.0, 8.0, 8.0))
    out = tmp_path / "corrected.tif"
    args = ["correct", "--volume", str(src), "--simulate", "truncation", "--fom-mm", "120", "--views", "30",
            "--out", str(out), "--model", tiny_model_path, "--steps", "4", "--warm-steps", "2", "--lbfgs-steps", "1"]
    assert main(args) == 0
    printed = capsys.readouterr()
    res = read_tiff(out)
    assert res.hu.shape == (3, 32, 32)
    assert res.spacing_mm == pytest.approx((2.0, 8.0, 8.0))
    # the uncorrected reference beside it: same grid, spacing and geometry
    unc = read_tiff(tmp_path / "corrected.uncorrected.tif")
    assert unc.hu.shape == (3, 32, 32) and unc.spacing_mm == pytest.approx((2.0, 8.0, 8.0))
    assert unc.meta["geometry"] == res.meta["geometry"] and "uncorrected" in unc.meta["method"]
    assert not np.allclose(unc.hu, res.hu)
    report = json.loads((tmp_path / "corrected.tif.report.json").read_text())
    assert report["steps_run"] == [5, 3, 3]
    assert report["settings"]["cold_start"] == "random"  # recorded with the other settings
    assert (report["z_weight_cold"], report["z_weight_warm"]) == (0.01, 0.001)  # the defaults used
    assert report["outputs"]["uncorrected"] == str(tmp_path / "corrected.uncorrected.tif")
    assert "corrected.uncorrected.tif" in printed.out
    _assert_units(report)
    if hasattr(lsr.projector, "estimate_projector_memory"):  # printed before the projector is built
        assert printed.out.index("projector memory estimate") < printed.out.index("simulating")
        assert report["projector_memory_estimate_mb"] > 0
    # the fit reports: one per slice, in the report, a line each, warnings on stderr
    assert len(report["fits"]) == 3
    assert {"steps", "stop_reason", "relative_residual"} <= set(report["fits"][0])
    assert printed.out.count("fit slice") == 3
    n_warn = sum(len(f["warnings"]) for f in report["fits"])
    assert (n_warn > 0) == ("warning: slice" in printed.err)
    assert all(ln.startswith("warning: ") for ln in printed.err.splitlines() if "warning" in ln.lower())
    # never replaced without --overwrite; nothing else is touched
    before = out.read_bytes()
    _error(capsys, main(args), "will not replace", str(out), "--overwrite")
    assert out.read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_correct_sinogram_with_nan_in_the_missing_part(tmp_path, tiny_model_path, capsys):
    """The CLI accepts what the API accepts: NaN/inf where the mask is 0. Outputs follow the
    umask; a missing output folder is created."""
    sino_p, mask_p, geom_p, sino, mask = _sino_files(tmp_path, nan_in_missing=True)
    out = tmp_path / "new" / "sub" / "c.tif"
    old = os.umask(0o027)
    try:
        code = main(["correct", "--sinogram", str(sino_p), "--mask", str(mask_p), "--geometry", str(geom_p),
                     "--out", str(out), "--sinogram-out", str(tmp_path / "completed.tif"),
                     "--model", tiny_model_path, *TINY])
    finally:
        os.umask(old)
    assert code == 0, capsys.readouterr().err
    assert "created folder" in capsys.readouterr().out
    completed = tifffile.imread(tmp_path / "completed.tif")
    assert np.array_equal(completed[:, mask == 1], sino[:, mask == 1])
    assert np.isfinite(completed).all()
    assert read_tiff(out).hu.shape == (2, 32, 32)
    unc = out.with_name("c.uncorrected.tif")
    assert np.isfinite(read_tiff(unc).hu).all()
    report_p = out.with_name("c.tif.report.json")
    assert json.loads(report_p.read_text())["input"]["nonfinite_values_in_missing_part"] == int(np.isnan(sino).sum())
    for p in (out, unc, report_p, tmp_path / "completed.tif"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p  # 0666 & ~umask, not mkstemp's 0600
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_correct_sinogram_on_a_grid_larger_than_the_measured_field(tmp_path, tiny_model_path, capsys):
    """A real truncated scan: 25 measured bins, the wanted grid needs 47. The detector is
    extended virtually (added bins missing) and LSR fills them in; the run says so."""
    _, _, _, sino, _ = _sino_files(tmp_path, n=1)
    measured = sino[:, :, 11:36]  # the 25 central bins of the 47
    np.save(tmp_path / "short.npy", measured)
    scan = GEOM.to_dict()
    scan["n_det"] = 25
    (tmp_path / "scan.json").write_text(json.dumps(scan))
    out = tmp_path / "ext.tif"
    code = main(["correct", "--sinogram", str(tmp_path / "short.npy"), "--geometry",
                 str(tmp_path / "scan.json"), "--fom-mm", "1000", "--out", str(out),
                 "--sinogram-out", str(tmp_path / "ext_sino.tif"), "--model", tiny_model_path, *TINY])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "extended virtually by 11 + 11 bins" in cap.out
    completed = tifffile.imread(tmp_path / "ext_sino.tif").reshape(1, 20, 47)
    assert np.array_equal(completed[:, :, 11:36], measured)  # measured data kept bit for bit
    assert np.abs(completed[:, :, :11]).sum() > 0  # the added bins were filled in
    report = json.loads((tmp_path / "ext.tif.report.json").read_text())
    assert report["detector_extension_bins"] == [11, 11]


def test_correct_limited_angle_simulation(tmp_path, tiny_model_path, capsys):
    vol = np.stack([lsr.data.generate_slice(10_000_020 + i, 32, 8.0) for i in range(2)])
    src = write_tiff(tmp_path / "ct.tif", vol, (2.0, 8.0, 8.0))
    out = tmp_path / "la.tif"
    assert main(["correct", "--volume", str(src), "--simulate", "limited-angle", "--missing-deg", "60",
                 "--views", "30", "--out", str(out), "--sinogram-out", str(tmp_path / "la_sino.tif"),
                 "--model", tiny_model_path, *TINY]) == 0
    report = json.loads((tmp_path / "la.tif.report.json").read_text())
    assert report["input"]["simulate"] == "limited-angle" and report["input"]["missing_deg"] == 60
    assert report["input"]["start_deg"] == 0.0
    _assert_units(report)
    assert read_tiff(out).hu.shape == (2, 32, 32) and np.isfinite(read_tiff(out).hu).all()
    # views 0, 6, ..., 54 degrees (10 of 30 over 180) were missing and are now inpainted
    sino = read_tiff(tmp_path / "la_sino.tif")
    assert sino.hu.shape == (2, 30, 47) and sino.spacing_mm == pytest.approx((2.0, 1.0, 8.0))
    assert np.abs(sino.hu[:, :10]).max() > 0


def test_limited_angle_mask_options():
    geom = GEOM.replace(n_views=20)  # 9 degrees per view over 180
    m = cli._limited_angle(geom, 45.0, None)
    assert m.shape == geom.sino_shape
    assert np.flatnonzero(m[:, 0] == 0).tolist() == [0, 1, 2, 3, 4]
    m = cli._limited_angle(geom, 30.0, 90.0)  # 90..119 degrees missing: views 10..13
    assert np.flatnonzero(m[:, 0] == 0).tolist() == [10, 11, 12, 13]
    with pytest.raises(cli.CLIError, match=r"--missing-deg 180.*must lie between 0 and the scan arc \(180"):
        cli._limited_angle(geom, 180.0, None)


# -- correct: refused inputs and outputs -----------------------------------------------------
def _bad_cases(d: Path, model):
    """(argv, expected message parts) for bad inputs; d holds good files from _sino_files."""
    sino, mask, geom = d / "sino.npy", d / "mask.npy", d / "geom.json"
    out = d / "out" / "c.tif"
    base = ["correct", "--out", str(out), "--model", model, *TINY]
    np.save(d / "mask21.npy", np.ones((1, 21, 47), np.float32))
    np.save(d / "mask3.npy", np.ones((3, 20, 47), np.float32))
    np.save(d / "mask1s.npy", np.ones((1, 20, 47), np.float32))
    np.save(d / "mask255.npy", np.load(mask) * 255)
    g = json.loads(geom.read_text())
    del g["pixel_size_mm"]
    (d / "geom_nopx.json").write_text(json.dumps(g))
    (d / "geom_bad.json").write_text("{not json")
    (d / "geom_type.json").write_text(json.dumps({**json.loads(geom.read_text()), "n_det": "47"}))
    s = np.load(sino)
    s_nan = s.copy()
    s_nan[0, 0, 23] = np.nan  # the centre bin: valid
    np.save(d / "sino_nan.npy", s_nan)
    np.save(d / "sino4d.npy", np.stack([s, s], -1))
    np.save(d / "sino_t.npy", np.swapaxes(s, 1, 2))
    (d / "bad.pt").write_bytes(b"not a checkpoint")
    write_tiff(d / "image.tif", np.zeros((1, 32, 32), np.float32) - 1000, 8.0)
    return {
        "mask shape": ([*base, "--sinogram", str(sino), "--mask", str(d / "mask21.npy"), "--geometry", str(geom)],
                       [f"--mask {d / 'mask21.npy'}: shape (1, 21, 47) does not match --sinogram {sino} (2, 20, 47)"]),
        "mask slices": ([*base, "--sinogram", str(sino), "--mask", str(d / "mask3.npy"), "--geometry", str(geom)],
                        [f"--mask {d / 'mask3.npy'}: shape (3, 20, 47) does not match --sinogram {sino} (2, 20, 47)"]),
        "mask values": ([*base, "--sinogram", str(sino), "--mask", str(d / "mask255.npy"), "--geometry", str(geom)],
                        [f"--mask {d / 'mask255.npy'}", "1 (valid) or 0 (missing)", "255"]),
        "geometry field": ([*base, "--sinogram", str(sino), "--fom-mm", "150", "--geometry", str(d / "geom_nopx.json")],
                           [f"--geometry {d / 'geom_nopx.json'}: ", "missing the required field(s) pixel_size_mm"]),
        "geometry json": ([*base, "--sinogram", str(sino), "--fom-mm", "150", "--geometry", str(d / "geom_bad.json")],
                          [f"--geometry {d / 'geom_bad.json'}: not valid JSON"]),
        "geometry value": ([*base, "--sinogram", str(sino), "--fom-mm", "150", "--geometry", str(d / "geom_type.json")],
                           [f"--geometry {d / 'geom_type.json'}: n_det must be a positive integer"]),
        "geometry file": ([*base, "--sinogram", str(sino), "--fom-mm", "150", "--geometry", str(d / "nope.json")],
                          [f"--geometry {d / 'nope.json'}", "No such file"]),
        "no geometry": ([*base, "--sinogram", str(sino), "--fom-mm", "150"],
                        [f"--sinogram {sino}: the file carries no scan geometry", "--geometry"]),
        "sinogram file": ([*base, "--sinogram", str(d / "nope.npy"), "--fom-mm", "150", "--geometry", str(geom)],
                          [f"--sinogram {d / 'nope.npy'}: no such file"]),
        "geometry shape": ([*base, "--sinogram", str(d / "sino_t.npy"), "--fom-mm", "150", "--geometry", str(geom)],
                           [f"--sinogram {d / 'sino_t.npy'}: shape (2, 47, 20) does not match --geometry {geom}",
                            "axes look swapped"]),
        "image as sinogram": ([*base, "--sinogram", str(d / "image.tif"), "--fom-mm", "150", "--geometry", str(geom)],
                              ["does not match", "image in HU", "--volume"]),
        "4-D sinogram": ([*base, "--sinogram", str(d / "sino4d.npy"), "--fom-mm", "150", "--geometry", str(geom)],
                         [f"--sinogram {d / 'sino4d.npy'}: shape (2, 20, 47, 2) is not an image"]),
        "NaN where valid": ([*base, "--sinogram", str(d / "sino_nan.npy"), "--mask", str(mask), "--geometry", str(geom)],
                            [f"--sinogram {d / 'sino_nan.npy'}: 1 NaN/inf values where --mask {mask} says the data are valid"]),
        "no mask": ([*base, "--sinogram", str(sino), "--geometry", str(geom)], ["no validity mask", "--fom-mm"]),
        "bad model": (["correct", "--out", str(out), "--model", str(d / "bad.pt"), "--sinogram", str(sino),
                       "--fom-mm", "150", "--geometry", str(geom)], [f"--model {d / 'bad.pt'}", "checkpoint"]),
        "simulate without volume": ([*base, "--sinogram", str(sino), "--simulate", "metal", "--geometry", str(geom)],
                                    ["--simulate metal needs --volume"]),
        "truncation without fom": ([*base, "--volume", str(d / "image.tif")], ["--simulate truncation needs --fom-mm"]),
        "limited angle without range": ([*base, "--volume", str(d / "image.tif"), "--simulate", "limited-angle"],
                                        ["--simulate limited-angle needs --missing-deg"]),
        "missing range too large": ([*base, "--volume", str(d / "image.tif"), "--simulate", "limited-angle",
                                     "--missing-deg", "200", "--views", "10"],
                                    ["--missing-deg 200: the missing arc (200 deg) must lie between 0 and the scan arc (180 deg)"]),
        "bad fom": ([*base, "--sinogram", str(sino), "--fom-mm", "-5", "--geometry", str(geom)],
                    ["--fom-mm -5: must be a positive diameter in mm"]),
        "all valid": ([*base, "--sinogram", str(sino), "--mask", str(d / "mask1s.npy"),
                       "--geometry", str(geom)],
                      [f"--mask {d / 'mask1s.npy'}: slices 0-1 of --sinogram {sino} have no missing (0) entries"]),
        "start without range": ([*base, "--sinogram", str(sino), "--fom-mm", "150", "--start-deg", "30",
                                 "--geometry", str(geom)], ["--start-deg needs --missing-deg"]),
        "mask with volume": ([*base, "--volume", str(d / "image.tif"), "--fom-mm", "100", "--mask", str(mask)],
                             [f"--mask {mask}: applies to --sinogram input"]),
        "fan with sinogram": ([*base, "--sinogram", str(sino), "--fom-mm", "150", "--fan", "--geometry", str(geom)],
                              ["--fan applies to --volume simulation"]),
        "volume file": ([*base, "--volume", str(d / "nope.tif"), "--fom-mm", "100"],
                        [f"--volume {d / 'nope.tif'}: no such file"]),
    }


def test_bad_inputs_are_clear_errors(tmp_path, tiny_model_path, capsys, no_lsr):
    _sino_files(tmp_path)
    for name, (argv, needles) in _bad_cases(tmp_path, tiny_model_path).items():
        _error(capsys, main(argv), *needles)
        assert not (tmp_path / "out").exists(), f"{name}: something was written"


def test_outputs_are_checked_before_computing(tmp_path, tiny_model_path, capsys, no_lsr):
    sino, mask, geom, _, _ = _sino_files(tmp_path)
    inp = ["--sinogram", str(sino), "--mask", str(mask), "--geometry", str(geom), "--model", tiny_model_path]
    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--out", str(tmp_path / "folder.tif")], [f"--out {tmp_path / 'folder.tif'}: is a folder"]),
        (["--out", str(tmp_path)], [f"--out {tmp_path}: is a folder"]),
        (["--out", str(tmp_path / "c.npy")], ["--out", "c.npy: written as a TIFF stack", ".tif"]),
        (["--out", str(tmp_path / "c.tif"), "--sinogram-out", str(tmp_path / "c.tif")],
         ["--sinogram-out", "--out", "are the same file"]),
        (["--out", str(tmp_path / "c.tif"), "--sinogram-out", str(tmp_path / "c.uncorrected.tif")],
         ["--sinogram-out", "uncorrected reference", "are the same file"]),
        (["--out", str(tmp_path / "afile" / "c.tif")], [f"{tmp_path / 'afile'} is not a folder"]),
    ]
    for extra, needles in cases:
        _error(capsys, main(["correct", *inp, *extra]), *needles)
    # an output on an input
    tif_sino = write_tiff(tmp_path / "sino.tif", np.load(sino), 1.0, metadata={"units": "line integral"})
    _error(capsys, main(["correct", "--sinogram", str(tif_sino), "--mask", str(mask), "--geometry", str(geom),
                         "--out", str(tif_sino), "--overwrite"]), "is the input --sinogram")
    # any existing output (here only a leftover report) is refused without --overwrite
    (tmp_path / "c.tif.report.json").write_text("{}")
    _error(capsys, main(["correct", *inp, "--out", str(tmp_path / "c.tif")]),
           "will not replace existing file", "c.tif.report.json", "--overwrite")
    assert (tmp_path / "c.tif.report.json").read_text() == "{}"
    assert not (tmp_path / "c.tif").exists()


def _run_as_nobody(argv):
    """main(argv) in a forked child running as user 'nobody' (root ignores permission bits);
    returns (rc, stderr). Modules the run needs are imported before the fork."""
    import io

    import napari_lsr.baselines, napari_lsr.data.sinogram_io, napari_lsr.lsr, napari_lsr.model  # noqa: F401,E401

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        rc, err = 99, ""
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = buf = io.StringIO()
            rc = main(argv)
            err = buf.getvalue()
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            err = f"child failed: {e!r}"
        finally:
            os.write(w, json.dumps([rc, err]).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        rc, err = json.loads(fh.read())
    os.waitpid(pid, 0)
    return rc, err


def test_read_only_folder_refused_before_computing(tmp_path, tiny_model_path, capsys, no_lsr):
    """A folder the user cannot write to is refused before anything is read or computed
    (no_lsr: LSR would fail the test). As root the check runs as user 'nobody'."""
    import shutil
    import tempfile

    sino, mask, geom, _, _ = _sino_files(tmp_path)
    base = Path(tempfile.mkdtemp(prefix="napari-lsr-test-"))  # in /tmp, reachable by 'nobody'
    base.chmod(0o755)
    ro = base / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    argv = ["correct", "--sinogram", str(sino), "--mask", str(mask), "--geometry", str(geom),
            "--out", str(ro / "c.tif"), "--model", tiny_model_path, "--steps", "500"]
    needles = [f"--out {ro / 'c.tif'}: cannot write in the folder {ro}", "Permission denied"]
    try:
        if os.geteuid() != 0:
            _error(capsys, main(argv), *needles)
        else:
            if not hasattr(os, "fork"):
                pytest.skip("needs fork to drop root privileges")
            rc, err = _run_as_nobody(argv)
            assert rc == 2, err
            assert "Traceback" not in err and all(n in err for n in needles), err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_projector_that_cannot_fit_is_refused_first(tmp_path, tiny_model_path, capsys, no_lsr, monkeypatch):
    est = types.SimpleNamespace(fits=False, peak_bytes=123e9, method="stored", summary=lambda: "stored: 123 GB")
    monkeypatch.setattr("napari_lsr.projector.estimate_projector_memory", lambda geom, **k: est, raising=False)
    sino, mask, geom, _, _ = _sino_files(tmp_path)
    _error(capsys, main(["correct", "--sinogram", str(sino), "--mask", str(mask), "--geometry", str(geom),
                         "--out", str(tmp_path / "c.tif"), "--model", tiny_model_path]),
           "needs about 123.00 GB", "--views")
    assert not (tmp_path / "c.tif").exists()


def test_library_errors_during_the_run_are_one_line(tmp_path, tiny_model_path, capsys, monkeypatch):
    sino, mask, geom, _, _ = _sino_files(tmp_path)
    argv = ["correct", "--sinogram", str(sino), "--mask", str(mask), "--geometry", str(geom),
            "--out", str(tmp_path / "c.tif"), "--model", tiny_model_path]
    for exc, needles in ((MemoryError(), ["out of memory", "--batch-size"]),
                         (PermissionError(13, "Permission denied", "/x/y.tif"), ["/x/y.tif: Permission denied"]),
                         (ValueError("the library says no"), ["the library says no"])):
        def boom(*a, _e=exc, **k):
            raise _e
        monkeypatch.setattr("napari_lsr.lsr.lsr_correct_volume", boom)
        _error(capsys, main(argv), *needles)
    assert not (tmp_path / "c.tif").exists()

    def bug(*a, **k):
        raise TypeError("a genuine bug")
    monkeypatch.setattr("napari_lsr.lsr.lsr_correct_volume", bug)
    with pytest.raises(TypeError):  # bugs keep their traceback
        main(argv)


def test_library_log_warnings_are_printed_as_warnings(tmp_path, tiny_model_path, capsys, no_lsr):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((1, 32, 32, 3), np.uint8), photometric="rgb")
    code = main(["correct", "--volume", str(tmp_path / "rgb.tif"), "--simulate", "limited-angle",
                 "--missing-deg", "400", "--out", str(tmp_path / "c.tif"), "--model", tiny_model_path])
    err = capsys.readouterr().err
    assert code == 2 and "error: --missing-deg 400" in err
    assert any(ln.startswith("warning: ") and "RGB image; its colour channels were averaged" in ln
               for ln in err.splitlines()), err


def test_fit_report_printing(capsys):
    def fit(i, warn=()):
        return types.SimpleNamespace(steps=10 + i, stop_reason="converged" if i % 2 else "max_steps",
                                     misfit=1e-3, data_rms=2.0, noise_rms=0.01, relative_residual=0.01 * i,
                                     warnings=list(warn), ok=not warn)
    fits = [fit(i, [f"poor fit: misses the data by {10 + i} % rms"] if i in (3, 4, 5, 9) else []) for i in range(30)]
    fits[7].warnings.append("the object is larger than the prior's field")
    cli.print_fit_reports(fits)
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "30 slices" in out and "15 converged" in out and "(slice 29)" in out
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: ") for ln in lines)
    assert lines[0].startswith("warning: slices 3-5, 9: poor fit: misses the data by 13 %")
    assert lines[1] == "warning: slice 7: the object is larger than the prior's field"
    cli.print_fit_reports(fits[:2])
    out, err = capsys.readouterr()
    assert out.count("fit slice") == 2 and "11 steps (converged)" in out and err == ""


# -- train and evaluate: --overwrite --------------------------------------------------------
def test_train_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("napari_lsr.train.train", lambda cfg: calls.append(cfg) or Path(cfg.out))
    prior = tmp_path / "p.pt"
    prior.write_bytes(b"old prior")
    _error(capsys, main(["train", "--out", str(prior), "--steps", "1"]),
           "will not replace existing file", str(prior), "--overwrite")
    last = tmp_path / "p_last.pt"
    last.write_bytes(b"old last")
    _error(capsys, main(["train", "--out", str(prior)]), "p_last.pt", "--resume to continue from")
    assert calls == [] and prior.read_bytes() == b"old prior"
    assert main(["train", "--out", str(prior), "--resume"]) == 0  # continues its own _last.pt
    assert main(["train", "--out", str(prior), "--overwrite"]) == 0
    last.unlink()
    _error(capsys, main(["train", "--out", str(prior), "--resume"]), "will not replace")  # nothing to resume
    assert main(["train", "--out", str(tmp_path / "new" / "q.pt")]) == 0
    assert len(calls) == 3 and (tmp_path / "new").is_dir()
    _error(capsys, main(["train", "--out", str(tmp_path)]), "is a folder")


def test_evaluate_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("napari_lsr.evaluate.evaluate", lambda task, out, **k: calls.append(Path(out)))
    monkeypatch.setattr("napari_lsr.model.load_model", lambda path=None: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "truncation").mkdir(parents=True)
    (tmp_path / "results" / "truncation" / "table.md").write_text("committed")
    # the default --out is results/<task>: the committed results are not replaced
    _error(capsys, main(["evaluate", "--task", "truncation"]),
           "--out results/truncation: the folder already holds table.md", "--overwrite")
    assert main(["evaluate", "--task", "truncation", "--overwrite"]) == 0
    assert main(["evaluate", "--task", "metal"]) == 0  # a new folder
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--task", "metal", "--out", "empty"]) == 0
    _error(capsys, main(["evaluate", "--task", "metal", "--out", "results/truncation/table.md"]), "is a file")
    assert calls == [Path("results/truncation"), Path("results/metal"), Path("empty")]
    assert (tmp_path / "results" / "truncation" / "table.md").read_text() == "committed"


def test_evaluate_passes_lsr_options(tmp_path, monkeypatch):
    """--lr, --z-weight, --cold-start and --full-fit reach lsr_correct through ``lsr_options``."""
    seen = []
    monkeypatch.setattr("napari_lsr.evaluate.evaluate", lambda task, out, **k: seen.append(k["lsr_options"]))
    monkeypatch.setattr("napari_lsr.model.load_model", lambda path=None: None)
    assert main(["evaluate", "--task", "metal", "--out", str(tmp_path / "a")]) == 0
    assert main(["evaluate", "--task", "metal", "--out", str(tmp_path / "b"), "--lr", "0.1",
                 "--z-weight", "0.001", "--full-fit", "--cold-start", "encoder"]) == 0
    assert seen == [{}, {"reduce": False, "z_weight": 0.001, "lr": 0.1, "cold_start": "encoder"}]


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


def test_evaluate_lsr_seed_offset_moves_only_the_fit(tmp_path, tiny_model_path, monkeypatch):
    """--lsr-seed-offset N starts case i's LSR fit from seed i + N; the simulated data (the
    metal's noise: seeded by the case) and the baselines stay the same."""
    import napari_lsr.evaluate as ev
    seeds = []
    real = ev._lsr_images
    monkeypatch.setattr(ev, "_lsr_images", lambda *a: seeds.append(a[7]) or real(*a))
    rows = {}
    for offset in (0, 5):
        out = tmp_path / str(offset)
        assert main(["evaluate", "--task", "metal", "--out", str(out), "--n-generated", "2",
                     "--no-real", "--model", tiny_model_path, "--steps", "3", "--lbfgs-steps",
                     "0", "--lsr-seed-offset", str(offset)]) == 0
        rows[offset] = json.loads((out / "results.json").read_text())
    assert seeds == [0, 1, 5, 6]
    assert rows[5]["lsr_seed_offset"] == 5
    assert rows[0]["table"]["NMAR"] == rows[5]["table"]["NMAR"]
    assert rows[0]["table"]["LSR"] != rows[5]["table"]["LSR"]


def test_ctrl_c_keeps_the_finished_slices(tmp_path, tiny_model_path, capsys, monkeypatch):
    """The first Ctrl-C stops after the current step and writes the slices finished so far."""
    import signal

    import napari_lsr.lsr as engine
    sino_p, mask_p, geom_p, sino, _ = _sino_files(tmp_path, n=3)
    real = engine.lsr_correct_volume

    def interrupted(*a, callback=None, **k):
        def cb(s0, step, loss, preview):
            if s0 == 1 and step == 1:
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C on slice 1
            return callback(s0, step, loss, preview)
        return real(*a, callback=cb, **k)
    monkeypatch.setattr(engine, "lsr_correct_volume", interrupted)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_IGN in a background job
    try:
        out = tmp_path / "part.tif"
        code = main(["correct", "--sinogram", str(sino_p), "--mask", str(mask_p), "--geometry",
                     str(geom_p), "--out", str(out), "--model", tiny_model_path, *TINY])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, before)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "aborted: writing the 1 finished slice(s) of 3" in cap.err
    assert read_tiff(out).hu.shape == (1, 32, 32)
    assert json.loads(out.with_name("part.tif.report.json").read_text())["aborted_after_slices"] == 1


def test_ctrl_c_handler_leaves_an_ignored_sigint_alone():
    """A job started with nohup or & ignores SIGINT: correct must not take it over."""
    import signal

    from napari_lsr.cli import _CtrlC

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _CtrlC():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_evaluation_figure_shows_a_phantom_and_the_widest_real_slice():
    from napari_lsr.evaluate import figure_cases

    def case(name, width_px):
        gt = np.full((64, 64), -1000.0, np.float32)
        gt[20:40, 10:10 + width_px] = 0.0
        return {"name": name, "images": {"ground truth": gt}}

    results = [case("phantom-1", 30), case("phantom-2", 30), case("real-small", 10),
               case("real-wide", 40), case("real-mid", 20)]
    assert [r["name"] for r in figure_cases(results, 2)] == ["phantom-1", "real-wide"]
    assert [r["name"] for r in figure_cases(results[:2], 2)] == ["phantom-1", "phantom-2"]
