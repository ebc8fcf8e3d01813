"""LSR warm starts on a volume: cold start vs warm start, side by side in one process.

A held-out phantom volume of smoothly varying slices is truncated (FOM 60 % of the body
width). Slices are corrected in a chain, each warm-started from the previous slice's z; on
every ``--cold-every``-th slice the same slice is also solved from a cold start. The JSON
reports, per compared slice, the cold final loss, the number of warm steps needed to reach
it and their ratio to the cold steps (target <= 1/10; the paper: ~30 vs ~500), plus
per-slice wall times and the time of one LSR step.

    python benchmarks/lsr.py [--slices 16] [--cold-steps 300] [--warm-steps 60] [--model PATH]
                             [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import napari_lsr as lsr
from napari_lsr.data.phantoms import generate_volume
from napari_lsr.evaluate import EVAL_SEED0, body_width_mm, default_geometry


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--cold-steps", type=int, default=300)
    ap.add_argument("--warm-steps", type=int, default=60, help="upper bound for warm-started slices")
    ap.add_argument("--cold-every", type=int, default=4, help="compare against a cold start every k-th slice")
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=EVAL_SEED0 + 777)
    ap.add_argument("--precision", default="auto", choices=lsr.lsr.PRECISIONS)
    ap.add_argument("--out", default="benchmarks/results/lsr.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    model = lsr.load_model(args.model)
    geom = default_geometry(model.config.image_size, model.config.pixel_size_mm)
    vol = generate_volume(args.seed, args.slices, geom.image_size, geom.pixel_size_mm, region="abdomen",
                          slice_step=2.0)
    fom = 0.6 * body_width_mm(vol[args.slices // 2], geom.pixel_size_mm)
    mask = lsr.masks.truncation_mask(geom, fom)
    P = lsr.Projector(geom)
    t0 = time.perf_counter()
    P.warm_up()
    setup_s = time.perf_counter() - t0
    sinos = P.forward(torch.as_tensor(lsr.hu_to_mu(vol), dtype=torch.float32)).numpy() * mask

    rows, z_prev = [], None
    for k in range(args.slices):
        row = {"slice": k}
        if z_prev is None or k % args.cold_every == 0:
            cold = lsr.lsr_correct(sinos[k], mask, geom, model=model, steps=args.cold_steps, lbfgs_steps=0,
                                   early_stop=False, precision=args.precision)
            row.update(cold_final_loss=float(cold.fit.misfit), cold_steps=len(cold.loss_history),
                       cold_seconds=cold.seconds)
        if z_prev is not None:
            warm = lsr.lsr_correct(sinos[k], mask, geom, model=model, steps=args.warm_steps, lbfgs_steps=0,
                                   init=z_prev, early_stop=False, precision=args.precision)
            row.update(warm_seconds=warm.seconds, warm_first_loss=warm.loss_history[0],
                       warm_final_loss=float(warm.fit.misfit))
            if "cold_final_loss" in row:
                reached = [i + 1 for i, v in enumerate(warm.loss_history) if v <= row["cold_final_loss"]]
                row["warm_steps_to_cold_loss"] = reached[0] if reached else None
                row["ratio_to_cold_steps"] = (reached[0] / row["cold_steps"]) if reached else None
            z_prev = warm.z
        else:
            z_prev = cold.z
        rows.append(row)
        print(json.dumps(row))

    compared = [r for r in rows if "warm_steps_to_cold_loss" in r]
    step_s = statistics.median([r["warm_seconds"] / args.warm_steps for r in rows if "warm_seconds" in r])
    summary = {
        "geometry": geom.to_dict(), "fom_mm": fom, "projector_setup_s": setup_s,
        "cold_steps": args.cold_steps, "warm_steps_budget": args.warm_steps,
        "median_seconds_per_step": step_s,
        "median_cold_seconds_per_slice": statistics.median([r["cold_seconds"] for r in rows if "cold_seconds" in r]),
        "median_warm_seconds_per_slice": statistics.median([r["warm_seconds"] for r in rows if "warm_seconds" in r]),
        "warm_reached_cold_loss": f"{sum(r['warm_steps_to_cold_loss'] is not None for r in compared)}/{len(compared)}",
        "max_ratio_to_cold_steps": max((r["ratio_to_cold_steps"] or float("inf")) for r in compared) if compared else None,
        "target_ratio": 0.1, "precision": args.precision,
    }
    summary["target_met"] = summary["max_ratio_to_cold_steps"] is not None and summary["max_ratio_to_cold_steps"] <= 0.1
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                           "threads": torch.get_num_threads()},
                               "model": getattr(model, "training_summary", {}), "summary": summary,
                               "slices": rows}, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
