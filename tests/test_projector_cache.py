"""Disk cache of projector matrices: hit, miss, corrupt files, concurrent writers, eviction."""

import logging
import threading

import numpy as np
import pytest
import torch

import napari_lsr as lsr
from napari_lsr import projector as pj
from napari_lsr import projector_cache as cache
from napari_lsr import projector_ops as ops

GEOM = lsr.FanBeam(image_size=40, pixel_size_mm=2.0, n_views=48, n_det=120, det_spacing_mm=2.0,
                   sid_mm=300.0, sdd_mm=600.0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NAPARI_LSR_CACHE", raising=False)
    monkeypatch.delenv("NAPARI_LSR_CACHE_MAX_GB", raising=False)
    monkeypatch.setattr(cache, "MIN_BYTES", 0)  # small test matrices are cached too
    pj.clear_cache()
    yield tmp_path / "cache" / "projector"
    pj.clear_cache()


def _files(folder):
    return sorted(folder.glob("*.nlsr")) if folder.is_dir() else []


def _reference():
    x = torch.rand(GEOM.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return x


def _no_build(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("rebuilt although the disk cache holds the matrix")
    monkeypatch.setattr(ops, "build_rows", fail)


def test_miss_then_hit(_cache_dir, monkeypatch):
    x = _reference()
    P = lsr.Projector(GEOM).warm_up()
    assert P.setup["source"] == "built"
    y = P.forward(x)
    files = _files(_cache_dir)
    assert len(files) == 1
    pj.clear_cache()  # a new process: only the disk cache is left
    _no_build(monkeypatch)
    P2 = lsr.Projector(GEOM)
    assert P2.memory_estimate.cached_on_disk and P2.memory_estimate.build_bytes == 0
    P2.warm_up()
    assert P2.setup["source"] == "disk"
    torch.testing.assert_close(P2.forward(x), y, rtol=0, atol=0)
    P2.warm_up()
    assert P2.setup["source"] == "memory"


def test_disabled_and_size_threshold(_cache_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_LSR_CACHE", "0")
    lsr.Projector(GEOM).warm_up()
    assert _files(_cache_dir) == [] and cache.cache_dir() is None
    monkeypatch.setenv("NAPARI_LSR_CACHE", "1")
    monkeypatch.setattr(cache, "MIN_BYTES", 1 << 40)
    pj.clear_cache()
    lsr.Projector(GEOM).warm_up()
    assert _files(_cache_dir) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bitflip", "empty"])
def test_corrupt_file_is_rebuilt_with_a_warning(_cache_dir, damage, caplog):
    x = _reference()
    y = lsr.Projector(GEOM).forward(x)
    (path,) = _files(_cache_dir)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    elif damage == "bitflip":
        b = bytearray(raw)
        b[-100] ^= 0x10
        path.write_bytes(bytes(b))
    else:
        path.write_bytes(b"")
    pj.clear_cache()
    with caplog.at_level(logging.WARNING, logger="napari_lsr.projector_cache"):
        P = lsr.Projector(GEOM).warm_up()
    assert P.setup["source"] == "built"
    assert any("unusable" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(P.forward(x), y, rtol=0, atol=0)
    (again,) = _files(_cache_dir)  # rewritten, now valid
    assert cache.load(again.stem) is not None


def test_concurrent_writers(_cache_dir):
    """Several threads build and store the same matrix at once (no in-process lock
    between them): all succeed, one valid file, no temporary files left."""
    est, sym = pj._plan(GEOM, "footprint", "auto", "cpu", int(1e9))
    barrier = threading.Barrier(3)
    results, errors = [], []

    def work():
        try:
            barrier.wait()
            rows, t, _ = pj._load_or_build(GEOM, "footprint", sym, True, None)
            results.append(np.asarray(rows[2]).copy())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert all(np.array_equal(r, results[0]) for r in results)
    files = _files(_cache_dir)
    assert len(files) == 1 and cache.load(files[0].stem) is not None
    assert list(_cache_dir.glob("*.tmp")) == []


def test_concurrent_store_and_load(_cache_dir):
    """Readers never see a partial file while writers replace it."""
    key = cache.make_key({"test": "race"})
    arrays = {"a": np.arange(2_000_000, dtype=np.float32), "b": np.arange(10, dtype=np.int64)}
    stop = threading.Event()
    seen, errors = [], []

    def writer():
        for _ in range(5):
            cache.store(key, arrays)
        stop.set()

    def reader():
        while True:
            done = stop.is_set()
            got = cache.load(key)
            if got is not None:
                seen.append(bool(np.array_equal(got["a"], arrays["a"])))
            if done:
                break

    threads = [threading.Thread(target=writer), threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen and all(seen)
    assert cache.load(key) is not None


def test_size_limit_evicts_least_recently_used(_cache_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_LSR_CACHE_MAX_GB", str(2.5e6 / 1e9))  # 2.5 MB
    a = {"x": np.zeros(1_000_000 // 4, dtype=np.float32)}  # 1 MB each
    k1, k2, k3 = (cache.make_key({"n": i}) for i in range(3))
    import os
    import time
    cache.store(k1, a)
    cache.store(k2, a)
    past = time.time() - 100
    os.utime(cache._path(k2), (past, past))      # k2 unused for a while
    os.utime(cache._path(k1), (past + 50, past + 50))
    assert cache.load(k1) is not None            # a load marks k1 as used now
    cache.store(k3, a)                           # 3 MB > 2.5 MB: evict the LRU (k2)
    assert cache._path(k2).exists() is False
    assert cache._path(k1).exists() and cache._path(k3).exists()
    too_big = {"x": np.zeros(1_000_000, dtype=np.float32)}  # 4 MB > limit: not stored
    assert cache.store(cache.make_key({"n": 9}), too_big) is None


def test_transpose_added_to_a_rows_only_file(_cache_dir, monkeypatch):
    """A file written without the transpose serves a later projector that wants it."""
    full = pj.estimate_projector_memory(GEOM)
    lsr.Projector(GEOM, memory_budget_bytes=full.options["symmetric (no transpose)"] + 1).warm_up()
    pj.clear_cache()
    _no_build(monkeypatch)
    P = lsr.Projector(GEOM, memory_budget_bytes=int(1e9)).warm_up()
    assert P.memory_estimate.transpose_stored and P.setup["source"] == "disk"
    (path,) = _files(_cache_dir)
    assert cache.has(path.stem, "t_data")
