"""Plugin I/O: manifest, reader/writer round trips (HU, spacing, geometry), sinogram files,
sample data. Tiny arrays and geometries only."""

from pathlib import Path

import numpy as np
import pytest

import napari_lsr
from napari_lsr import ParallelBeam, geometry_from_dict
from napari_lsr._reader import napari_get_reader
from napari_lsr._writer import write_npy_layer, write_tiff_layer
from napari_lsr.data.sinogram_io import (is_sinogram_file, read_sinogram, write_npy,
                                         write_sinogram)

GEOM = ParallelBeam(image_size=16, pixel_size_mm=2.0, n_views=12, n_det=25, det_spacing_mm=2.0)
ROOT = Path(__file__).resolve().parents[1]


def test_manifest_valid_and_symlinked():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-lsr")
    assert {w.display_name for w in manifest.contributions.widgets} >= {
        "Acquire / simulate", "Metal mask", "LSR correction", "Export"}
    assert {s.key for s in manifest.contributions.sample_data} == {
        "metal_phantom", "truncated_sinogram", "ct_small"}
    top = ROOT / "napari.yaml"
    assert top.is_symlink() and top.resolve() == (ROOT / "src/napari_lsr/napari.yaml").resolve()


def _attrs(spacing, md):
    return {"name": "x", "scale": spacing[-2:], "metadata": {"spacing_mm": list(spacing), **md}}


@pytest.mark.parametrize("ext", [".tif", ".npy"])
def test_image_roundtrip_hu_spacing_geometry(tmp_path, ext):
    hu = np.random.default_rng(0).uniform(-1000, 2000, (3, 16, 16)).astype(np.float32)
    attrs = _attrs((2.5, 0.7, 0.7), {"kind": "image", "units": "HU", "geometry": GEOM.to_dict()})
    writer = write_tiff_layer if ext == ".tif" else write_npy_layer
    [path] = writer(str(tmp_path / f"vol{ext}"), hu, attrs)
    reader = napari_get_reader(path)
    assert reader is not None
    [(data, kwargs, kind)] = reader(path)
    assert kind == "image"
    np.testing.assert_array_equal(data, hu)
    assert kwargs["scale"] == (2.5, 0.7, 0.7)
    md = kwargs["metadata"]
    assert md["units"] == "HU" and md["spacing_mm"] == [2.5, 0.7, 0.7]
    assert geometry_from_dict(md["geometry"]) == GEOM


@pytest.mark.parametrize("ext", [".tif", ".npy"])
def test_sinogram_layer_roundtrip(tmp_path, ext):
    sino = np.random.default_rng(1).uniform(0, 5, (2, *GEOM.sino_shape)).astype(np.float32)
    attrs = _attrs((3.0, 1.0, 2.0), {"kind": "sinogram", "units": "line integral",
                                     "geometry": GEOM.to_dict()})
    writer = write_tiff_layer if ext == ".tif" else write_npy_layer
    [path] = writer(str(tmp_path / f"s{ext}"), sino, attrs)
    [(data, kwargs, _)] = napari_get_reader(path)(path)
    np.testing.assert_array_equal(data, sino)
    md = kwargs["metadata"]
    assert md["kind"] == "sinogram" and md["units"] == "line integral"
    assert geometry_from_dict(md["geometry"]) == GEOM
    assert kwargs["scale"][0] == 3.0


def test_sinogram_file_with_mask(tmp_path):
    sino = np.ones(GEOM.sino_shape, np.float32)
    mask = np.zeros(GEOM.sino_shape, np.float32)
    mask[:, 5:20] = 1
    files = write_sinogram(tmp_path / "scan.npy", sino, GEOM, mask=mask, slice_spacing_mm=2.0)
    assert [f.name for f in files] == ["scan.npy", "scan.npy.json", "scan.mask.npy",
                                       "scan.mask.npy.json"]
    assert is_sinogram_file(files[0]) and is_sinogram_file(files[2])
    s = read_sinogram(files[0])
    assert s.geometry == GEOM and s.slice_spacing_mm == 2.0
    np.testing.assert_array_equal(s.mask, mask)
    layers = napari_get_reader(str(files[0]))(str(files[0]))
    assert [k["metadata"]["kind"] for _, k, _ in layers] == ["sinogram", "sinogram_mask"]
    with pytest.raises(FileExistsError):
        write_sinogram(tmp_path / "scan.npy", sino, GEOM)
    with pytest.raises(ValueError, match="geometry expects"):
        write_sinogram(tmp_path / "bad.npy", np.ones((3, 4)), GEOM)
    assert not (tmp_path / "bad.npy").exists()


def test_write_npy_refuses_overwrite_atomically(tmp_path):
    p = tmp_path / "a.npy"
    write_npy(p, np.zeros(3), {"spacing_mm": [1, 1, 1]})
    with pytest.raises(FileExistsError):
        write_npy(p, np.ones(3), {"spacing_mm": [1, 1, 1]})
    assert np.load(p).sum() == 0
    write_npy(p, np.ones(3), {"spacing_mm": [1, 1, 1]}, overwrite=True)
    assert np.load(p).sum() == 3
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.npy", "a.npy.json"]


def test_reader_declines_unknown(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder without DICOM files


def test_reader_dicom_file_and_folder(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    src = Path(pydicom_data.get_testdata_file("CT_small.dcm"))
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM0001").write_bytes(src.read_bytes())
    for path in (str(src), str(tmp_path / "series")):
        [(data, kwargs, kind)] = napari_get_reader(path)(path)
        assert kind == "image" and data.shape == (128, 128)
        assert kwargs["metadata"]["units"] == "HU"
        assert kwargs["scale"][-1] == pytest.approx(0.661468, rel=1e-4)


def test_sample_functions_tiny():
    from napari_lsr._sample_data import metal_phantom, truncated_sinogram

    geom_kw = dict(n_slices=2, size=32, pixel_size_mm=8.0, n_views=16, n_det=47)
    layers = truncated_sinogram(fom_mm=120.0, **geom_kw)
    kinds = [k["metadata"]["kind"] for _, k, _ in layers]
    assert kinds == ["image", "sinogram", "sinogram_mask", "image"]
    assert [k["name"] for _, k, _ in layers][-1] == "uncorrected FBP (truncated)"
    sino, mask = layers[1][0], layers[2][0]
    assert sino.shape == mask.shape == (2, 16, 47)
    assert 0 < mask.mean() < 1
    geom = geometry_from_dict(layers[1][1]["metadata"]["geometry"])
    assert geom.sino_shape == (16, 47)
    layers = metal_phantom(**geom_kw)
    assert [k["name"] for _, k, _ in layers] == [
        "phantom with metal", "metal sinogram", "metal trace mask (true)", "uncorrected FBP (metal)"]
    assert layers[0][0].max() > 5000  # metal in HU
    assert napari_lsr.masks.check_mask(layers[2][0], geom).min() == 0


def test_sample_data_loads_in_viewer(make_napari_viewer):
    pytest.importorskip("pydicom")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lsr", "ct_small")
    [layer] = viewer.layers
    assert layer.data.shape == (128, 128)
    assert layer.metadata["units"] == "HU"
    assert layer.scale[-1] == pytest.approx(0.661468, rel=1e-4)
    assert layer.data.min() < -500 and layer.data.max() > 500
    tiny = dict(n_slices=1, size=32, pixel_size_mm=8.0, n_views=16, n_det=47)
    viewer.open_sample("napari-lsr", "truncated_sinogram", fom_mm=120.0, **tiny)
    viewer.open_sample("napari-lsr", "metal_phantom", **tiny)
    assert len(viewer.layers) == 1 + 4 + 4
    sino = viewer.layers["truncated sinogram"]
    assert sino.metadata["units"] == "line integral" and "geometry" in sino.metadata


def test_save_through_napari_uses_our_writers(make_napari_viewer, tmp_path):
    from napari_lsr._widgets._common import add_layer, image_layer

    viewer = make_napari_viewer()
    hu = np.full((2, 16, 16), 40.0, np.float32)
    layer = add_layer(viewer, image_layer(hu, "vol", (3.0, 2.0, 2.0), GEOM))
    for ext in (".tif", ".npy"):
        viewer.layers.selection = {layer}
        viewer.layers.save(str(tmp_path / f"vol{ext}"), selected=True, plugin="napari-lsr")
        [(data, kwargs, _)] = napari_get_reader(str(tmp_path / f"vol{ext}"))(str(tmp_path / f"vol{ext}"))
        np.testing.assert_array_equal(data, hu)
        assert kwargs["scale"] == (3.0, 2.0, 2.0)
        assert geometry_from_dict(kwargs["metadata"]["geometry"]) == GEOM
