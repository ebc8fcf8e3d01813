"""Disk cache of projector matrices: build once per machine, not once per process.

Files live in ``platformdirs.user_cache_dir("napari-lsr")/projector`` (override the folder with
the environment variable ``NAPARI_LSR_CACHE_DIR``; ``NAPARI_LSR_CACHE=0`` disables the cache;
``NAPARI_LSR_CACHE_MAX_GB`` sets the size limit, default 4 GB, least recently used files
are deleted first). One file per entry, named by a SHA-256 of its key (geometry, kind of
matrix, symmetry, builder version, dtype).

File layout: 8-byte magic, 8-byte little-endian header length, a JSON header, then the raw
arrays, each 64-byte aligned; the header lists every array's dtype, shape, offset and CRC-32.
Writers write a temporary file in the same folder and ``os.replace`` it into place, so a
reader sees either no file or a complete one, and concurrent writers of the same entry both
succeed (the last one wins; the files are identical). A file that fails to parse, is too
short, or fails a checksum is deleted with a logged warning and the caller rebuilds.
Arrays are memory-mapped copy-on-write: loading costs no copy and the pages are shared by
every process that uses the same matrix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, Optional

import numpy as np

__all__ = ["cache_dir", "cache_enabled", "make_key", "load", "store", "clear", "entries",
           "max_bytes", "MIN_BYTES"]

log = logging.getLogger(__name__)

MAGIC = b"NLSRMAT1"
ALIGN = 64
FORMAT_VERSION = 1
#: matrices smaller than this are not worth a file (they build in well under a second)
MIN_BYTES = 16 << 20
DEFAULT_MAX_GB = 4.0
_SUFFIX = ".nlsr"


def cache_enabled() -> bool:
    """False when ``NAPARI_LSR_CACHE`` is 0/false/no/off."""
    return os.environ.get("NAPARI_LSR_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Optional[Path]:
    """The cache folder (created on demand), or None when the cache is disabled."""
    if not cache_enabled():
        return None
    root = os.environ.get("NAPARI_LSR_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "projector"
    try:
        import platformdirs
        base = platformdirs.user_cache_dir("napari-lsr")
    except ImportError:  # platformdirs comes with napari; fall back to ~/.cache
        base = os.path.join(os.path.expanduser("~"), ".cache", "napari-lsr")
    return Path(base) / "projector"


def max_bytes() -> int:
    """Size limit of the cache folder in bytes (``NAPARI_LSR_CACHE_MAX_GB``, default 4)."""
    try:
        gb = float(os.environ.get("NAPARI_LSR_CACHE_MAX_GB", DEFAULT_MAX_GB))
    except ValueError:
        gb = DEFAULT_MAX_GB
    return int(gb * 1e9)


def make_key(description: dict) -> str:
    """Hex SHA-256 of a JSON-serialisable description of the matrix."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _path(key: str) -> Optional[Path]:
    d = cache_dir()
    return None if d is None else d / f"{key}{_SUFFIX}"


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B")) & 0xFFFFFFFF


def _discard(path: Path, why: str) -> None:
    log.warning("napari-lsr projector cache: %s is unusable (%s); deleting it and rebuilding",
                path, why)
    try:
        path.unlink()
    except OSError:
        pass


def load(key: str, names=None) -> Optional[Dict[str, np.ndarray]]:
    """Arrays stored under ``key`` (memory-mapped), or None when absent, disabled or corrupt.

    ``names``: load only these arrays (others in the file are not touched)."""
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(8) != MAGIC:
                raise ValueError("bad magic")
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 1 << 20 or 16 + n > size:
                raise ValueError("bad header length")
            header = json.loads(f.read(n).decode())
        if header.get("format") != FORMAT_VERSION or header.get("key") != key:
            raise ValueError("header does not match the key")
        listed = {spec["name"] for spec in header["arrays"]}
        if names is not None and set(names) - listed:
            return None  # the file lacks some arrays (e.g. the transpose): caller builds them
        out = {}
        for spec in header["arrays"]:
            if names is not None and spec["name"] not in names:
                continue
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            off, nbytes = int(spec["offset"]), int(spec["nbytes"])
            if nbytes != dtype.itemsize * int(np.prod(shape)) or off + nbytes > size:
                raise ValueError(f"array {spec['name']} is truncated")
            if nbytes == 0:
                a = np.zeros(shape, dtype)
            else:
                a = np.memmap(path, dtype=dtype, mode="c", offset=off, shape=shape)
            if _crc(a) != int(spec["crc32"]):
                raise ValueError(f"checksum of array {spec['name']} does not match")
            out[spec["name"]] = a
    except Exception as e:  # noqa: BLE001 - any failure to read means: rebuild
        _discard(path, f"{type(e).__name__}: {e}")
        return None
    try:
        os.utime(path)  # least recently *used*: the mtime marks the last load
    except OSError:
        pass
    return out


def has(key: str, name: str) -> bool:
    """Whether the entry ``key`` exists and lists array ``name`` (header only, no checks)."""
    path = _path(key)
    if path is None or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            if f.read(8) != MAGIC:
                return False
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode())
        return any(s["name"] == name for s in header["arrays"])
    except Exception:  # noqa: BLE001
        return False


def store(key: str, arrays: Dict[str, np.ndarray], meta: Optional[dict] = None) -> Optional[Path]:
    """Write ``arrays`` under ``key`` atomically; evict old entries beyond the size limit.

    Returns the file, or None when the cache is disabled, the entry exceeds the limit, or
    writing failed (a logged warning, never an exception)."""
    path = _path(key)
    if path is None:
        return None
    total = sum(a.nbytes for a in arrays.values())
    if total > max_bytes():
        log.info("napari-lsr projector cache: %.2f GB exceeds the cache limit; not stored", total / 1e9)
        return None
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        specs, off = [], 0
        for name, a in arrays.items():
            specs.append({"name": name, "dtype": np.dtype(a.dtype).str, "shape": list(a.shape),
                          "nbytes": int(a.nbytes), "crc32": _crc(a)})
        header_len = 4096
        while True:
            off = -(-(16 + header_len) // ALIGN) * ALIGN
            for s in specs:
                s["offset"] = off
                off = -(-(off + s["nbytes"]) // ALIGN) * ALIGN
            header = json.dumps({"format": FORMAT_VERSION, "key": key, "arrays": specs,
                                 "meta": meta or {}, "written": time.time()}).encode()
            if len(header) <= header_len:
                break
            header_len = len(header) + 1024
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache folder needs readers
        except OSError:
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            for s, a in zip(specs, arrays.values()):
                f.seek(s["offset"])
                f.write(memoryview(np.ascontiguousarray(a)).cast("B"))
            f.truncate(max(off, f.tell()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        log.warning("napari-lsr projector cache: could not write %s (%s)", path, e)
        return None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    evict(keep=path)
    return path


def entries() -> list:
    """(path, size in bytes, mtime) of every cache file, oldest use first."""
    d = cache_dir()
    if d is None or not d.is_dir():
        return []
    out = []
    for p in d.glob(f"*{_SUFFIX}"):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p, st.st_size, st.st_mtime))
    return sorted(out, key=lambda e: e[2])


def evict(keep: Optional[Path] = None, limit: Optional[int] = None) -> None:
    """Delete least recently used files until the folder fits ``limit`` bytes (default
    :func:`max_bytes`); stale temporary files (older than a day) go too."""
    d = cache_dir()
    if d is None or not d.is_dir():
        return
    now = time.time()
    for p in d.glob(".*.tmp"):
        try:
            if now - p.stat().st_mtime > 86400:
                p.unlink()
        except OSError:
            pass
    limit = max_bytes() if limit is None else limit
    files = entries()
    total = sum(s for _, s, _ in files)
    for p, s, _ in files:
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        try:
            p.unlink()
            total -= s
            log.info("napari-lsr projector cache: evicted %s (%.1f MB)", p.name, s / 1e6)
        except OSError:
            pass


def clear() -> None:
    """Delete every cache file."""
    for p, _, _ in entries():
        try:
            p.unlink()
        except OSError:
            pass
