import json

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
    rgb = np.zeros((2, 8, 9, 3), np.uint8)
    rgb[..., 0] = 30
    vol = read_npy(_save(tmp_path / "rgb.npy", rgb))
    assert vol.hu.shape == (2, 8, 9) and np.allclose(vol.hu, 10.0)
    assert read_npy(_save(tmp_path / "c2.npy", np.ones((2, 8, 9, 2)))).hu.shape == (2, 8, 9)
    with pytest.raises(ValueError, match="shape"):
        read_npy(_save(tmp_path / "b.npy", np.zeros(5)))
    nan = np.zeros((4, 4))
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
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
