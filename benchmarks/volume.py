"""A whole clinical-size volume through LSR: total time and peak memory.

A 100-slice phantom volume at 512 x 512 (0.9 mm pixels, a 460 mm grid, slices 2 mm apart)
is scanned by a single-row clinical fan-beam geometry (900 x 1 mm arc detector, SDD 950 mm,
SID 540 mm: a 492 mm scan circle, 720 views over 360 deg; the detector is extended
virtually to cover the grid's corners, those bins missing) and truncated to a 250 mm field
of measurement. LSR corrects it with warm starts (cold first slice, then ``--warm-steps``
per slice), batched slices and the reduced fit on the prior's grid.

    python benchmarks/volume.py [--slices 100] [--batch 4] [--threads 2] [--model PATH]
                                [--z-weight W] [--region abdomen] [--seed 20000000]

``--z-weight`` sets LSR's latent prior weight for every batch (default: the library's, 0.01
for the cold batch and ``WARM_Z_WEIGHT`` for the warm ones; ``--z-weight 0.01`` is the
behaviour before 2026-11-26).

Prints progress and a summary; writes benchmarks/results/volume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

import napari_lsr as lsr
from napari_lsr.data.phantoms import generate_volume


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--pixel-mm", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps, cold first batch (max)")
    ap.add_argument("--warm-steps", type=int, default=30, help="Adam steps per warm batch (max)")
    ap.add_argument("--lbfgs-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=None,
                    help="Adam step for every batch (default: the library's, COLD_LR cold, WARM_LR warm)")
    ap.add_argument("--z-weight", type=float, default=None)
    ap.add_argument("--region", default="abdomen", help="phantom region of the volume")
    ap.add_argument("--seed", type=int, default=20_000_000, help="phantom seed (held out)")
    ap.add_argument("--fom-mm", type=float, default=250.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="prior checkpoint (default: the bundled prior)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "volume.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    scan = dict(type="FanBeam", image_size=args.size, pixel_size_mm=args.pixel_mm, n_views=720,
                n_det=900, det_spacing_mm=1.0, sid_mm=540.0, sdd_mm=950.0, arc_deg=360.0)
    geom, n_left, n_right = lsr.extend_detector(scan)
    hu = generate_volume(args.seed, args.slices, args.size, args.pixel_mm, region=args.region,
                         slice_step=2.0, noise_hu=10.0)
    P = lsr.Projector(geom)
    est = P.memory_estimate
    t_setup0 = time.perf_counter()
    P.warm_up()
    t_setup = time.perf_counter() - t_setup0
    mask = lsr.masks.truncation_mask(geom, args.fom_mm)
    mask[:, :n_left] = 0
    mask[:, geom.n_det - n_right:] = 0
    sinos = np.empty((args.slices, *geom.sino_shape), np.float32)
    for i in range(0, args.slices, 8):
        with torch.no_grad():
            sinos[i:i + 8] = P.forward(lsr.hu_to_mu(hu[i:i + 8])).numpy() * mask
    t_sim = time.perf_counter() - t0
    print(f"geometry {geom.n_views} views x {geom.n_det} bins ({n_left}+{n_right} virtual), "
          f"projector {est.method} ({est.summary()}), set-up {t_setup:.1f} s ({P.setup}); "
          f"volume simulated in {t_sim:.0f} s", flush=True)

    state = {"s0": -1}

    def progress(s0, step, loss, preview):
        if s0 != state["s0"]:
            state["s0"] = s0
            print(f"slices {s0}-{min(args.slices, s0 + args.batch) - 1} started at "
                  f"{time.perf_counter() - t1:.0f} s", flush=True)
        return False

    t1 = time.perf_counter()
    res = lsr.lsr_correct_volume(sinos, mask, geom, model=lsr.load_model(args.model),
                                 steps=args.steps, warm_steps=args.warm_steps,
                                 lbfgs_steps=args.lbfgs_steps, batch_size=args.batch,
                                 callback=progress, lr=args.lr, z_weight=args.z_weight)
    t_lsr = time.perf_counter() - t1
    fom = lsr.masks.fom_image_mask(geom, args.fom_mm)
    body = lsr.data.body_mask(hu)
    err_in = float(np.abs(res.image_hu - hu)[:, fom].mean())
    err_out = float(np.abs(res.image_hu - hu)[body & ~fom[None]].mean())
    err_out_per_slice = [round(float(np.abs(res.image_hu[k] - hu[k])[body[k] & ~fom].mean()), 1)
                         for k in range(args.slices)]
    unc = lsr.baselines.reconstruct_hu(sinos[:4], geom)
    err_unc = float(np.abs(unc - hu[:4])[:, fom].mean())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = [f.steps for f in res.fits]
    result = {
        "slices": args.slices, "image": f"{args.size}^2 at {args.pixel_mm} mm",
        "geometry": geom.to_dict(), "virtual_bins": [n_left, n_right], "fom_mm": args.fom_mm,
        "batch_size": args.batch, "threads": args.threads, "steps_cold_max": args.steps,
        "warm_steps_max": args.warm_steps, "lbfgs_steps": args.lbfgs_steps, "lr": args.lr,
        "z_weight": args.z_weight, "model": args.model or "bundled", "region": args.region,
        "seed": args.seed,
        "projector_method": est.method, "projector_setup_s": t_setup,
        "lsr_total_s": t_lsr, "lsr_s_per_slice": t_lsr / args.slices,
        "steps_per_slice_median": float(np.median(steps)), "peak_rss_mb": peak_mb,
        "mae_inside_fom_hu": err_in, "mae_outside_fom_body_hu": err_out,
        "mae_inside_fom_uncorrected_first4_hu": err_unc,
        "relative_residual_median": float(np.median([f.relative_residual for f in res.fits])),
        "relative_residual_max": float(max(f.relative_residual for f in res.fits)),
        "mae_outside_fom_body_hu_per_slice": err_out_per_slice,
        "latent_norm_per_slice": [round(float(v), 1) for v in np.linalg.norm(res.z, axis=1)],
        "relative_residual_per_slice": [round(f.relative_residual, 4) for f in res.fits],
        "steps_per_slice": steps,
        "fit_warnings": sorted({w for f in res.fits for w in f.warnings}),
        "loadavg_1min": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "geometry"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
