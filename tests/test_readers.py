import json
import os
import stat

import numpy as np
import pytest

from napari_lsr.data import (CTVolume, read_ct, read_dicom_series, read_npy, read_tiff,
                             real_ct_slices, resample_slices, write_tiff)

pydicom = pytest.importorskip("pydicom")


def _volume(n=3, h=20, w=24):
    rng = np.random.default_rng(0)
    return (rng.uniform(-1000, 1500, (n, h, w))).astype(np.float32)


def test_npy_roundtrip_with_sidecar(tmp_path):
    hu = _volume()
    p = tmp_path / "vol.npy"
    np.save(p, hu)
    vol = read_ct(p)
    assert isinstance(vol, CTVolume) and vol.meta["spacing_assumed"]
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing_mm == (1.0, 1.0, 1.0)
    (tmp_path / "vol.npy.json").write_text(json.dumps({"spacing_mm": [2.5, 0.7, 0.8]}))
    vol = read_npy(p)
    assert vol.spacing_mm == (2.5, 0.7, 0.8) and not vol.meta["spacing_assumed"]
    assert read_npy(p, spacing_mm=0.5).spacing_mm == (0.5, 0.5, 0.5)


def test_npy_shapes_and_bad_data(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 9), np.int16))
    assert read_npy(tmp_path / "a.npy").hu.shape == (1, 8, 9)
    # a .npy says nothing about colour: every 4-D array is refused, naming file and shape
    for name, arr in (("rgb.npy", np.zeros((2, 8, 9, 3), np.uint8)), ("c2.npy", np.ones((2, 8, 9, 2)))):
        with pytest.raises(ValueError, match=rf"{name}: shape \(2, 8, 9, \d\) is not an image"):
            read_npy(_save(tmp_path / name, arr))
    with pytest.raises(ValueError, match="shape"):
        read_npy(_save(tmp_path / "b.npy", np.zeros(5)))
    nan = np.zeros((4, 4))
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"nan\.npy: 1 NaN/inf values.*nan=-1000.0\) \(air is -1000 HU\)"):
        read_npy(_save(tmp_path / "nan.npy", nan))
    with pytest.raises(FileNotFoundError):
        read_ct(tmp_path / "missing.npy")


def _save(p, a):
    np.save(p, a)
    return p


def test_tiff_roundtrip_and_overwrite(tmp_path):
    import tifffile

    hu = _volume()
    p = write_tiff(tmp_path / "v.tif", hu, (3.0, 0.5, 0.75), metadata={"geometry": {"a": 1}})
    vol = read_ct(p)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing_mm == (3.0, 0.5, 0.75) and vol.meta["geometry"] == {"a": 1}
    with tifffile.TiffFile(p) as tf:  # ImageJ sees the calibration
        assert tf.is_imagej and tf.imagej_metadata["unit"] == "mm"
        assert tf.imagej_metadata["spacing"] == pytest.approx(3.0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_tiff(p, hu, 1.0)
    write_tiff(p, hu[:1], (1.0, 1.0, 1.0), overwrite=True)
    assert read_tiff(p).hu.shape == (1, 20, 24)
    assert [q.name for q in tmp_path.iterdir()] == ["v.tif"]  # no temp files left


def test_tiff_imagej_spacing_and_default(tmp_path):
    import tifffile

    hu = _volume()
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, hu, imagej=True, resolution=(1 / 0.4, 1 / 0.6),
                     metadata={"spacing": 2.0, "unit": "mm", "axes": "ZYX"})
    assert read_tiff(p).spacing_mm == pytest.approx((2.0, 0.6, 0.4))
    q = tmp_path / "plain.tiff"
    tifffile.imwrite(q, hu[0])
    vol = read_tiff(q)
    assert vol.spacing_mm == (1.0, 1.0, 1.0) and vol.meta["spacing_assumed"]


def test_garbage_file_is_a_clear_error(tmp_path):
    for name in ("junk.tif", "junk.npy", "junk.dcm"):
        p = tmp_path / name
        p.write_bytes(b"this is not an image" * 10)
        with pytest.raises(ValueError, match=str(p.name)):
            read_ct(p)
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(ValueError, match="unsupported"):
        read_ct(p)
    with pytest.raises(ValueError, match="no DICOM"):
        read_ct(tmp_path)


def test_real_ct_small():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_ct(path)
    assert vol.hu.shape == (1, 128, 128) and vol.hu.dtype == np.float32
    assert vol.spacing_mm[1:] == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert -1050 < vol.hu.min() < -850  # air
    assert ((vol.hu > -100) & (vol.hu < 100)).mean() > 0.2  # soft tissue
    assert vol.meta["modality"] == "CT"


def test_non_ct_rejected():
    from pydicom.data import get_testdata_file

    with pytest.raises(ValueError, match="'MR', not 'CT'"):
        read_dicom_series(get_testdata_file("MR_small.dcm"))


def _write_ct(path, z, instance, pixels, series="1.2.3.4", intercept=-1024.0, slope=1.0):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing, ds.SliceThickness = [0.8, 0.9], 2.5
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_synthetic_series_sorted_by_position(tmp_path):
    # files named and numbered against the position order: sorting must use the positions
    for name, z, inst in (("a.dcm", 10.0, 1), ("b.dcm", 0.0, 3), ("c.dcm", 5.0, 2)):
        _write_ct(tmp_path / name, z, inst, np.full((6, 7), 1024 + int(z) * 10))
    _write_ct(tmp_path / "other.dcm", 99.0, 9, np.zeros((6, 7)), series="9.9")
    (tmp_path / "readme.txt").write_text("not dicom")
    vol = read_ct(tmp_path)
    assert vol.hu.shape == (3, 6, 7)
    np.testing.assert_allclose(vol.hu[:, 0, 0], [0.0, 50.0, 100.0])  # HU after rescale
    assert vol.spacing_mm == pytest.approx((5.0, 0.8, 0.9))
    assert vol.meta["skipped_files"] == 1 and vol.meta["sorted_by"] == "position"


def test_resample_slices():
    hu = np.full((2, 100, 60), 40.0, np.float32)
    out = resample_slices(hu, (1.0, 1.0), 2.0, 64)
    assert out.shape == (2, 64, 64) and out.dtype == np.float32
    assert out[0, 32, 32] == pytest.approx(40.0)
    assert out[0, 32, 2] == -1000.0  # padded with air (60 px * 1 mm -> 30 px wide)
    assert resample_slices(hu[0], (0.5, 0.5), 0.5, 50).shape == (50, 50)  # crop only
    assert np.all(resample_slices(hu[0], (0.5, 0.5), 0.5, 50) == 40.0)


def test_real_ct_slices():
    slices = real_ct_slices(target_pixel_mm=1.5, target_size=128)
    names = [n for n, _ in slices]
    assert "CT_small" in names and len(names) == len(set(names))
    for _, hu in slices:
        assert hu.shape == (128, 128) and hu.dtype == np.float32
        assert hu.min() >= -1000.0 and hu.max() > 300  # air floor, bone present


def test_tiff_colour_axis_only_when_the_file_says_rgb(tmp_path, caplog):
    import tifffile

    rgb = np.zeros((2, 8, 9, 3), np.uint8)
    rgb[..., 0] = 30
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    vol = read_tiff(tmp_path / "rgb.tif")
    assert vol.hu.shape == (2, 8, 9) and np.allclose(vol.hu, 10.0) and "RGB" in vol.meta["channels"]
    rgba = np.zeros((8, 9, 4), np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert read_tiff(tmp_path / "rgba.tif").hu.shape == (1, 8, 9)
    # the same numbers in a greyscale TIFF: 4-D, refused with file, shape and axes
    tifffile.imwrite(tmp_path / "grey4d.tif", rgb, photometric="minisblack")
    with pytest.raises(ValueError, match=r"grey4d\.tif \(TIFF axes \w+\): shape \(2, 8, 9, 3\)"):
        read_tiff(tmp_path / "grey4d.tif")
    tifffile.imwrite(tmp_path / "zcyx.tif", np.zeros((2, 3, 8, 9), np.float32), imagej=True,
                     metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match=r"zcyx\.tif .*shape \(2, 3, 8, 9\)"):
        read_ct(tmp_path / "zcyx.tif")
    # tifffile stores a plain (3, H, W) float stack as planar "RGB": still three slices
    stack = np.stack([np.full((8, 9), v, np.float32) for v in (-1000.0, 0.0, 1000.0)])
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(tmp_path / "three.tif", stack)
    np.testing.assert_array_equal(read_tiff(tmp_path / "three.tif").hu, stack)


def test_nan_advice_depends_on_what_the_file_holds(tmp_path, caplog):
    sino = np.full((2, 6, 7), 1.5, np.float32)
    sino[0, 1, 1] = np.nan
    p = write_tiff(tmp_path / "sino.tif", np.nan_to_num(sino), 1.0,
                   metadata={"units": "line integral"})
    assert not [r for r in caplog.records if "normalised" in r.message]  # no HU range warning
    np.save(tmp_path / "sino.npy", sino)
    with pytest.raises(ValueError, match=r"sino\.npy: 1 NaN/inf.*mask.*nan=0\.0\) \(a ray through air"):
        read_npy(tmp_path / "sino.npy", kind="sinogram")
    (tmp_path / "sino.npy.json").write_text(json.dumps({"kind": "sinogram"}))
    with pytest.raises(ValueError, match="a ray through air has line integral 0"):
        read_npy(tmp_path / "sino.npy")  # the sidecar says sinogram
    vol = read_npy(tmp_path / "sino.npy", allow_nonfinite=True)
    assert np.isnan(vol.hu[0, 1, 1]) and vol.hu[0, 1, 2] == 1.5
    assert read_tiff(p).meta["units"] == "line integral"
    with pytest.raises(ValueError, match="-1000"):
        read_npy(_save(tmp_path / "img.npy", np.where(np.isnan(sino), np.nan, -1000.0)), kind="image")
    with pytest.raises(ValueError, match="kind must be one of"):
        read_npy(tmp_path / "img.npy", kind="volume")


def test_written_files_follow_the_umask(tmp_path):
    from napari_lsr.data.sinogram_io import write_json, write_npy

    old = os.umask(0o027)
    try:
        t = write_tiff(tmp_path / "a.tif", _volume(), 1.0)
        j = write_json(tmp_path / "a.json", {"x": 1})
        n, side = write_npy(tmp_path / "a.npy", np.zeros(3), sidecar={"units": "HU"})
    finally:
        os.umask(old)
    for p in (t, j, n, side):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640, p
    t2 = write_tiff(tmp_path / "b.tif", _volume(), 1.0)
    assert stat.S_IMODE(os.stat(t2).st_mode) == 0o666 & ~old


def test_write_tiff_refuses_a_folder(tmp_path):
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_tiff(tmp_path / "d.tif", _volume(), 1.0, overwrite=True)
