"""Projector speed and memory, side by side in one process (CPU).

Ours (sparse separable-footprint matrix + stored transpose) forward+backward against
torchskradon forward+backward (pure PyTorch, rotation based) and scikit-image's ``radon``
forward alone, at 256x256/360 views and 512x512/720 views, parallel and fan beam, plus a
16-slice batch. Peak memory of our projector is measured in a fresh child process
(ru_maxrss growth over the imported baseline). Prints a table and writes JSON.

    python benchmarks/projector.py [--quick] [--out benchmarks/results/projector.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import napari_lsr as lsr
from napari_lsr.projector import clear_cache

TARGET_SPEEDUP_VS_TORCHSKRADON = 3.0


def geometries(n: int, views: int):
    """Parallel (180 deg) and clinical-like fan (360 deg, equiangular) at 1 mm pixels,
    detectors just covering the image diagonal."""
    half_diag = n / np.sqrt(2.0)
    par = lsr.ParallelBeam(image_size=n, pixel_size_mm=1.0, n_views=views,
                           n_det=int(np.ceil(2 * half_diag)) | 1, det_spacing_mm=1.0)
    sid, sdd, spacing = 595.0, 1085.6, 1.0
    n_fan = int(np.ceil(2 * np.arcsin(half_diag / sid) * sdd / spacing)) + 3
    fan = lsr.FanBeam(image_size=n, pixel_size_mm=1.0, n_views=views, arc_deg=360.0, n_det=n_fan,
                      det_spacing_mm=spacing, sid_mm=sid, sdd_mm=sdd)
    return {"parallel": par, "fan": fan}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (and one-time set-up)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours_fwd_bwd(P: lsr.Projector, x: torch.Tensor):
    def run():
        xg = x.clone().requires_grad_(True)
        P.forward(xg).square().sum().backward()
    return run


def torchskradon_fwd_bwd(x: torch.Tensor, theta: torch.Tensor):
    from torchskradon.functional import skradon

    def run():
        xg = x.clone().requires_grad_(True)
        skradon(xg[None, None], theta=theta, circle=True, preserve_range=True).square().sum().backward()
    return run


def skimage_fwd(x: np.ndarray, theta: np.ndarray):
    from skimage.transform import radon

    def run():
        radon(x, theta, circle=True, preserve_range=True)
    return run


def _high_water_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM; ru_maxrss survives exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child_peak(geom_dict, queue):
    torch.set_num_threads(2)
    geom = lsr.geometry_from_dict(geom_dict)
    x = torch.rand(geom.image_shape)
    base = _high_water_mb()
    P = lsr.Projector(geom)
    ours_fwd_bwd(P, x)()
    op = P._op("forward", torch.float32)
    queue.put({"peak_mb": _high_water_mb() - base, "matrix_mb": op.nbytes / 1e6,
               "nnz": int(op.matrix.values().numel())})


def peak_memory(geom) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_peak, args=(geom.to_dict(), q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256/360 only, fewer repeats")
    ap.add_argument("--out", default="benchmarks/results/projector.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    sizes = [(256, 360)] if args.quick else [(256, 360), (512, 720)]
    rows = []
    for n, views in sizes:
        repeats = 5 if n <= 256 else 3
        theta_deg = np.linspace(0.0, 180.0, views, endpoint=False)
        x = torch.rand(n, n)
        peers = {
            "torchskradon_fwd_bwd_s": median_time(torchskradon_fwd_bwd(x, torch.tensor(theta_deg, dtype=torch.float32)), repeats),
            "skimage_fwd_s": median_time(skimage_fwd(x.numpy().astype(np.float64), theta_deg), repeats),
        }
        for kind, geom in geometries(n, views).items():
            clear_cache()
            P = lsr.Projector(geom)
            t0 = time.perf_counter()
            P.warm_up()
            setup = time.perf_counter() - t0
            ours = median_time(ours_fwd_bwd(P, x), repeats)
            row = {"size": n, "views": views, "geometry": kind, "n_det": geom.n_det,
                   "setup_s": setup, "ours_fwd_bwd_s": ours, **peers,
                   "speedup_vs_torchskradon": peers["torchskradon_fwd_bwd_s"] / ours,
                   "ratio_vs_skimage_fwd": peers["skimage_fwd_s"] / ours}
            if n <= 256:
                xb = torch.rand(16, n, n)
                row["ours_batch16_fwd_bwd_s"] = median_time(ours_fwd_bwd(P, xb), 3)
            clear_cache()
            del P
            row.update(peak_memory(geom))
            rows.append(row)
            print(json.dumps(row))
    main_row = next(r for r in rows if r["size"] == 256 and r["geometry"] == "parallel")
    verdict = {
        "target_speedup_vs_torchskradon": TARGET_SPEEDUP_VS_TORCHSKRADON,
        "speedup_met": all(r["speedup_vs_torchskradon"] >= TARGET_SPEEDUP_VS_TORCHSKRADON for r in rows if r["size"] == 256),
        "not_slower_than_skimage_fwd": all(r["ratio_vs_skimage_fwd"] >= 1.0 for r in rows if r["size"] == 256),
        "peak_memory_le_2GB": all(r["peak_mb"] <= 2048 for r in rows if r["size"] == 256),
    }
    print()
    hdr = f"{'size':>5} {'views':>5} {'geom':>8} {'setup s':>8} {'ours f+b s':>10} {'tsr f+b s':>9} {'skimage f s':>11} {'x tsr':>6} {'x ski':>6} {'peak MB':>8} {'batch16 s':>9}"
    print(hdr)
    for r in rows:
        print(f"{r['size']:>5} {r['views']:>5} {r['geometry']:>8} {r['setup_s']:>8.2f} {r['ours_fwd_bwd_s']:>10.3f} "
              f"{r['torchskradon_fwd_bwd_s']:>9.3f} {r['skimage_fwd_s']:>11.3f} {r['speedup_vs_torchskradon']:>6.1f} "
              f"{r['ratio_vs_skimage_fwd']:>6.1f} {r['peak_mb']:>8.0f} {r.get('ours_batch16_fwd_bwd_s', float('nan')):>9.3f}")
    print("verdict:", verdict)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                                           "torch": torch.__version__},
                               "note": "peers are parallel-beam only (torchskradon, skimage.radon, circle=True); "
                                       "the fan rows compare against the same parallel peers",
                               "rows": rows, "verdict": verdict, "reference_row": main_row}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
