"""Projector memory, set-up and speed at laptop and clinical sizes (CPU).

Every case runs in fresh child processes so that memory peaks do not mix: a *cold* child
builds the matrix (empty disk cache), a *warm* child loads it from the disk cache, as a
second CLI call or napari session would. Peak memory is the growth of the child's resident
set (VmHWM, reset after the imports through /proc/self/clear_refs) while it sets up the
projector and runs one forward+backward: it counts the matrices, memory-mapped cache pages,
the symmetry tables and every temporary. Times are medians of 3 (1 for matrix-free).

Cases: 256x256/360 views parallel and fan (the reference rows of earlier runs; also with
``method="stored"``, the previous whole-matrix layout), 512x512/720 views parallel and
512x512/1000 views fan with 900 channels, the clinical 0.9 mm grid on a 900-channel scanner
(extended detector, 1232 channels) and a matrix-free row. The projector gets a 2 GB budget
(``memory_budget_bytes``), the laptop setting. Also 512x512/1200 views and the single-row
fan-beam scan of issue 10 (256x256 at 0.96 mm, 720 views, 900 channels). Peers: scikit-image ``radon`` (forward only,
parallel) and torchskradon (forward+backward) where installed.

    taskset -c 1 python benchmarks/projector.py [--quick] [--threads 1]
        [--out benchmarks/results/projector.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET = int(2e9)
TARGET_PEAK_MB = 2000.0
TARGET_DISK_SETUP_S = 5.0


def cases(quick: bool):
    """(name, geometry dict, method, check the targets) of every case."""
    import napari_lsr as lsr
    from napari_lsr.geometry import extend_detector

    out = [
        ("256/360 parallel", lsr.ParallelBeam(image_size=256, pixel_size_mm=1.0, n_views=360, n_det=363,
                                              det_spacing_mm=1.0), "auto", False),
        ("256/360 fan", lsr.FanBeam(image_size=256, pixel_size_mm=1.0, n_views=360, n_det=675, det_spacing_mm=1.0,
                                    sid_mm=595.0, sdd_mm=1085.6), "auto", False),
        ("256/360 parallel", None, "stored", False),
        ("256/360 fan", None, "stored", False),
        # issue 10: a single-row fan-beam scan that took 25 s of set-up in every process
        ("256/720 fan 900ch (issue 10)", lsr.FanBeam(image_size=256, pixel_size_mm=0.96, n_views=720, n_det=900,
                                                     det_spacing_mm=1.0, sid_mm=540.0, sdd_mm=950.0), "auto", False),
    ]
    if not quick:
        clinical, _, _ = extend_detector(dict(type="FanBeam", image_size=512, pixel_size_mm=0.9, n_views=1000,
                                              n_det=900, det_spacing_mm=1.0, sid_mm=540.0, sdd_mm=950.0))
        out += [
            ("512/720 parallel 900ch", lsr.ParallelBeam(image_size=512, pixel_size_mm=0.9, n_views=720, n_det=900,
                                                        det_spacing_mm=0.75), "auto", True),
            ("512/1000 fan 900ch", lsr.FanBeam(image_size=512, pixel_size_mm=0.67, n_views=1000, n_det=900,
                                               det_spacing_mm=1.0, sid_mm=540.0, sdd_mm=950.0), "auto", True),
            ("512/1000 fan 0.9mm extended", clinical, "auto", True),
            ("512/1200 fan 900ch", lsr.FanBeam(image_size=512, pixel_size_mm=0.67, n_views=1200, n_det=900,
                                               det_spacing_mm=1.0, sid_mm=540.0, sdd_mm=950.0), "auto", True),
            ("512/720 parallel 900ch", None, "matrix-free", False),
        ]
    named = {}
    rows = []
    for name, geom, method, check in out:
        geom = named.setdefault(name, geom) if geom is not None else named[name]
        rows.append((name, geom.to_dict(), method, check))
    return rows


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> float:
    """Reset VmHWM to the current RSS (Linux); returns the RSS in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _vm("VmRSS")


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child(geom_dict, method, threads, repeats, do_fbp, queue):
    try:
        import torch
        torch.set_num_threads(threads)
        import napari_lsr as lsr
        from napari_lsr import projector as pj

        geom = lsr.geometry_from_dict(geom_dict)
        x = torch.rand(geom.image_shape)
        warm = torch.rand(8, 8, requires_grad=True)
        (warm @ warm).sum().backward()  # autograd and BLAS initialised before the baseline
        base = _reset_peak()
        t0 = time.perf_counter()
        P = lsr.Projector(geom, method=method, memory_budget_bytes=BUDGET)
        estimate_s = time.perf_counter() - t0
        est = P.memory_estimate
        P.warm_up()
        setup_s = estimate_s + P.setup["seconds"]
        xg = x.clone().requires_grad_(True)
        P.forward(xg).square().sum().backward()
        peak_mb = _vm("VmHWM") - base

        def fwd():
            P.forward(x)

        y = P.forward(x)

        def bwd():
            P.adjoint(y)

        def fwd_bwd():
            xg = x.clone().requires_grad_(True)
            P.forward(xg).square().sum().backward()

        row = {"method": P.method, "transpose_stored": est.transpose_stored,
               "stored_views": est.n_stored_views, "maps": est.n_maps,
               "estimate_mb": est.bytes / 1e6, "estimate_peak_mb": est.peak_bytes / 1e6,
               "estimate_s": estimate_s, "held_mb": P.memory_bytes / 1e6,
               "nnz_m": getattr(P._op("forward", torch.float32), "nnz", 0) / 1e6, "estimate_nnz_m": est.nnz / 1e6,
               "setup_source": P.setup["source"], "setup_s": setup_s, "peak_mb": peak_mb,
               "fwd_s": _median_time(fwd, repeats), "adjoint_s": _median_time(bwd, repeats),
               "fwd_bwd_s": _median_time(fwd_bwd, repeats)}
        if do_fbp:
            sino = P.forward(x)
            P.fbp(sino)
            row["fbp_s"] = _median_time(lambda: P.fbp(sino), 1)
            row["fbp_method"] = P._fbp_plan[0].method
            row["peak_with_fbp_mb"] = _vm("VmHWM") - base
        queue.put(row)
    except BaseException as e:  # noqa: BLE001 - report, do not hang the parent
        import traceback
        queue.put({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def run_child(geom_dict, method, threads, repeats, do_fbp=False) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(geom_dict, method, threads, repeats, do_fbp, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(out["error"] + "\n" + out.get("traceback", ""))
    return out


def peers(geom_dict, threads, repeats) -> dict:
    """scikit-image radon forward (parallel) and torchskradon forward+backward."""
    import torch
    torch.set_num_threads(threads)
    from skimage.transform import radon
    if geom_dict["type"] != "ParallelBeam":
        return {}
    n, views = geom_dict["image_size"], geom_dict["n_views"]
    theta = np.linspace(0.0, geom_dict["arc_deg"], views, endpoint=False)
    img = np.random.default_rng(0).random((n, n))
    out = {"skimage_fwd_s": _median_time(lambda: radon(img, theta, circle=True, preserve_range=True), repeats)}
    try:
        from torchskradon.functional import skradon
        x = torch.tensor(img, dtype=torch.float32)
        th = torch.tensor(theta, dtype=torch.float32)

        def tsr():
            xg = x.clone().requires_grad_(True)
            skradon(xg[None, None], theta=th, circle=True, preserve_range=True).square().sum().backward()
        out["torchskradon_fwd_bwd_s"] = _median_time(tsr, repeats)
    except ImportError:
        out["torchskradon_fwd_bwd_s"] = None
    out["astra_linear_fwd_bwd_s"] = _astra_fwd_bwd(geom_dict, img.astype(np.float32), repeats)
    return out


def _astra_fwd_bwd(geom_dict, img, repeats):
    """ASTRA's CPU 'linear' parallel-beam projector: forward + backprojection (its adjoint),
    same grid, angles and detector (in pixel units), or None when ASTRA is not installed."""
    try:
        import astra
    except ImportError:
        return None
    n = geom_dict["image_size"]
    px = geom_dict["pixel_size_mm"]
    angles = np.deg2rad(geom_dict.get("start_deg", 0.0) + geom_dict["arc_deg"]
                        * np.arange(geom_dict["n_views"]) / geom_dict["n_views"])
    vol = astra.create_vol_geom(n, n)
    proj = astra.create_proj_geom("parallel", geom_dict["det_spacing_mm"] / px, geom_dict["n_det"],
                                  angles)
    pid = astra.create_projector("linear", proj, vol)

    def fwd_bwd():
        sid, sino = astra.create_sino(img, pid)
        bid, _ = astra.create_backprojection(sino, pid)
        astra.data2d.delete([sid, bid])
    try:
        return _median_time(fwd_bwd, repeats)
    finally:
        astra.projector.delete(pid)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256/360 rows only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child (default 1)")
    ap.add_argument("--out", default="benchmarks/results/projector.json")
    args = ap.parse_args(argv)
    cache_root = tempfile.mkdtemp(prefix="napari-lsr-bench-cache-")
    os.environ["NAPARI_LSR_CACHE_DIR"] = cache_root  # children inherit: a private, empty cache
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = []
    peer_cache = {}
    for name, gd, method, check in cases(args.quick):
        big = gd["image_size"] >= 512
        mf = method == "matrix-free"
        repeats = 1 if mf else 3
        t0 = time.perf_counter()
        cold = run_child(gd, method, args.threads, repeats, do_fbp=not mf)
        warm = cold if mf else run_child(gd, method, args.threads, repeats)
        key = (gd["type"], gd["image_size"], gd["n_views"])
        if key not in peer_cache:
            peer_cache[key] = peers(gd, args.threads, 1 if big else 3)
        row = {"case": name, "size": gd["image_size"], "views": gd["n_views"], "n_det": gd["n_det"],
               "geometry": gd["type"], "requested": method, "geometry_dict": gd,
               **{k: v for k, v in cold.items()},
               "build_s": cold["setup_s"], "build_peak_mb": cold["peak_mb"],
               "disk_setup_s": warm["setup_s"], "disk_setup_source": warm["setup_source"],
               "disk_peak_mb": warm["peak_mb"], "disk_fwd_bwd_s": warm["fwd_bwd_s"],
               **peer_cache[key], "wall_s": time.perf_counter() - t0, "targets_apply": check}
        if check:
            row["peak_le_2GB"] = max(row["build_peak_mb"], row["disk_peak_mb"]) <= TARGET_PEAK_MB
            row["disk_setup_le_5s"] = row["disk_setup_s"] <= TARGET_DISK_SETUP_S
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in ("geometry_dict", "traceback")}), flush=True)
    checked = [r for r in rows if r["targets_apply"]]
    verdict = {
        "target_peak_mb": TARGET_PEAK_MB, "target_disk_setup_s": TARGET_DISK_SETUP_S,
        "peak_le_2GB": all(r["peak_le_2GB"] for r in checked) if checked else None,
        "disk_setup_le_5s": all(r["disk_setup_le_5s"] for r in checked) if checked else None,
    }
    print()
    hdr = (f"{'case':30} {'method':12} {'T':>1} {'views':>7} {'est MB':>7} {'held MB':>7} {'build s':>7} "
           f"{'peak MB':>7} {'disk s':>6} {'dpeak MB':>8} {'fwd s':>6} {'adj s':>6} {'f+b s':>6} {'fbp s':>6} {'ski f s':>7} {'astra f+b':>9}")
    print(hdr)
    for r in rows:
        print(f"{r['case']:30} {r['method']:12} {'y' if r['transpose_stored'] else 'n':>1} "
              f"{str(r['stored_views']) + '/' + str(r['views']):>7} {r['estimate_mb']:>7.0f} {r['held_mb']:>7.0f} "
              f"{r['build_s']:>7.1f} {r['build_peak_mb']:>7.0f} {r['disk_setup_s']:>6.2f} {r['disk_peak_mb']:>8.0f} "
              f"{r['fwd_s']:>6.3f} {r['adjoint_s']:>6.3f} {r['fwd_bwd_s']:>6.3f} {r.get('fbp_s', float('nan')):>6.2f} "
              f"{(r.get('skimage_fwd_s') or float('nan')):>7.3f} "
              f"{(r.get('astra_linear_fwd_bwd_s') or float('nan')):>9.3f}")
    print("verdict:", verdict)
    import torch
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"load_average_at_end": os.getloadavg(), "torch_threads": args.threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "affinity": sorted(os.sched_getaffinity(0))},
        "budget_bytes": BUDGET,
        "note": ("peak_mb: growth of the child's VmHWM over its RSS after imports (build: cold disk "
                 "cache; disk: second process loading the cached matrix); times on one CPU thread, "
                 "shared machine (a training job on the other core). skimage radon is forward only "
                 "and parallel only; astra_linear_fwd_bwd_s: ASTRA's CPU 'linear' projector forward + "
                 "backprojection (parallel only, pip install astra-toolbox); torchskradon is not "
                 "installed here (null)."),
        "rows": rows, "verdict": verdict}, indent=2))
    print(f"wrote {out}")
    import shutil
    shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
