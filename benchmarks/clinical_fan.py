"""LSR on a clinical single-row fan-beam scan: the reduced fit against the full-resolution fit,
side by side in one process.

Scanner: 900 x 1 mm arc detector at SDD 950 mm (SID 540 mm), 720 views over 360 deg, image
256 x 256 at 0.96 mm. A held-out phantom volume (abdomen, 2 mm slices) is truncated to a
field of measurement of 60 % of the body width. Per slice: a cold start (at most
``--steps`` Adam + ``--lbfgs-steps`` L-BFGS, early stopping on) and a warm start from the
previous slice's z (at most ``--warm-steps``), in three modes: ``reduced`` (the library's
default: the fit on the data binned to the prior's sampling, a cold start's first half of Adam
steps on every k-th view), ``reduced_all_views`` (the same without that coarse first stage,
``COARSE_FRACTION = 0``) and ``full`` (``reduce=False``: the fit on the full data); seconds per
slice (the projectors are built before timing) and HU errors inside / outside the FOM.
``--cold-starts`` runs each mode with each cold start (``lsr_correct``'s ``cold_start``);
``--compare-models`` runs other priors beside ``--model``, interleaved slice by slice (the
machine's speed drifts by up to ~20 % within minutes: only interleaved runs compare times).

    python benchmarks/clinical_fan.py [--slices 3] [--threads 1] [--precision auto]
                                      [--modes reduced reduced_all_views full]
                                      [--cold-starts random encoder]
                                      [--model A.pt] [--compare-models B.pt ...]

Writes benchmarks/results/clinical_fan.json. Targets (issue 10): cold <= 15 s, warm <= 3 s
per slice, reduced no worse in HU than full.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import napari_lsr as lsr
from napari_lsr.data.phantoms import generate_volume
from napari_lsr.evaluate import EVAL_SEED0, body_width_mm, clinical_fan_geometry
from napari_lsr import lsr as engine
from napari_lsr.lsr import (COLD_STARTS, DEFAULT_COLD_START, PRECISIONS, coarse_geometry,
                            coarse_view_step, reduction_for, use_bfloat16)

MODES = {"reduced": (True, engine.COARSE_FRACTION), "reduced_all_views": (True, 0.0),
         "full": (False, engine.COARSE_FRACTION)}  # name: (reduce, COARSE_FRACTION)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warm-steps", type=int, default=50)
    ap.add_argument("--lbfgs-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="prior (default: the bundled one)")
    ap.add_argument("--compare-models", nargs="+", default=[],
                    help="other priors run beside --model, interleaved per slice (summary keys "
                    "'MODE@FILE-STEM')")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--cold-starts", nargs="+", default=[DEFAULT_COLD_START], choices=COLD_STARTS,
                    help="cold starts to compare (each mode runs with each; summary keys "
                    "'MODE' for the default start, 'MODE+START' for the others)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "clinical_fan.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"": lsr.load_model(args.model),
              **{f"@{Path(p).stem if Path(p).stem != 'prior' else Path(p).parent.name}":
                 lsr.load_model(p) for p in args.compare_models}}
    model = models[""]
    geom = clinical_fan_geometry()
    vol = generate_volume(EVAL_SEED0 + 555, args.slices, geom.image_size, geom.pixel_size_mm,
                          region="abdomen", slice_step=2.0)
    fom = 0.6 * body_width_mm(vol[0], geom.pixel_size_mm)
    mask = lsr.masks.truncation_mask(geom, fom)
    P = lsr.Projector(geom)
    sinos = P.forward(lsr.hu_to_mu(vol)).numpy() * mask
    red = reduction_for(geom, model)
    for m in models.values():
        r = reduction_for(geom, m)
        fits = [r.geom] * any(MODES[k][0] for k in args.modes) + [geom] * ("full" in args.modes)
        for g in fits + [coarse_geometry(g, coarse_view_step(g, m.config.image_size)) for g in fits]:
            lsr.Projector(g).warm_up()  # every projector a mode uses is built before timing
    fom_img = lsr.masks.fom_image_mask(geom, fom)
    body = lsr.data.body_mask(vol)

    def errors(img, k):
        d = np.abs(img - vol[k])
        return float(d[fom_img].mean()), float(d[body[k] & ~fom_img].mean())

    rows = []
    runs = [(label, mode, cs) for label in models for mode in args.modes
            for cs in args.cold_starts]
    z_prev = {}
    for k in range(args.slices):
        # interleaved, every run's slice k before any slice k + 1, in turn forwards / backwards
        for label, mode, cs in (runs if k % 2 == 0 else runs[::-1]):
            reduce, engine.COARSE_FRACTION = MODES[mode]
            name = (mode if cs == DEFAULT_COLD_START else f"{mode}+{cs}") + label
            kw = dict(model=models[label], lbfgs_steps=args.lbfgs_steps, reduce=reduce,
                      precision=args.precision)
            cold = lsr.lsr_correct(sinos[k], mask, geom, steps=args.steps, cold_start=cs, **kw)
            row = {"mode": name, "slice": k, "cold_s": cold.seconds, "cold_steps": cold.fit.steps,
                   "cold_mae_in_fom_hu": errors(cold.image_hu, k)[0],
                   "cold_mae_out_fom_hu": errors(cold.image_hu, k)[1]}
            if name in z_prev:
                warm = lsr.lsr_correct(sinos[k], mask, geom, steps=args.warm_steps,
                                       init=z_prev[name], **kw)
                row.update(warm_s=warm.seconds, warm_steps=warm.fit.steps,
                           warm_mae_in_fom_hu=errors(warm.image_hu, k)[0],
                           warm_mae_out_fom_hu=errors(warm.image_hu, k)[1])
            z_prev[name] = cold.z
            rows.append(row)
            print(json.dumps(row), flush=True)

    def med(key, mode):
        v = [r[key] for r in rows if r["mode"] == mode and key in r]
        return statistics.median(v) if v else None

    summary = {mode: {k: med(k, mode) for k in ("cold_s", "warm_s", "cold_steps", "warm_steps",
                                               "cold_mae_in_fom_hu", "cold_mae_out_fom_hu",
                                               "warm_mae_in_fom_hu", "warm_mae_out_fom_hu")}
               for mode in {r["mode"]: None for r in rows}}
    if "full" in summary and "reduced" in summary:
        summary["speed_up_cold"] = summary["full"]["cold_s"] / summary["reduced"]["cold_s"]
    for label in list(models)[1:]:  # time per slice of each compared prior / --model's
        summary[f"time_ratio{label}"] = {
            mode: {k: summary[mode + label][k] / summary[mode][k] for k in ("cold_s", "warm_s")
                   if summary[mode][k] and summary[mode + label][k]}
            for mode in summary if not mode.endswith(tuple(models)[1:]) and mode + label in summary}
    summary["reduced_geometry"] = {"n_views": red.geom.n_views, "n_det": red.geom.n_det,
                                   "kv": red.kv, "kd": red.kd, "pad": red.pad}
    summary.update(fom_mm=fom, threads=args.threads, precision=args.precision,
                   model=args.model or "bundled", compare_models=args.compare_models,
                   bf16_used=use_bfloat16(args.precision, torch.device("cpu")),
                   loadavg_1min=os.getloadavg()[0],
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   targets={"cold_s": 15.0, "warm_s": 3.0})
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows,
                                          "geometry": geom.to_dict()}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
