"""Choosing the default of LSR's latent prior term ``z_weight`` (``z_weight * mean(z^2)``):
both evaluation tasks on a short fixed case list for each weight, side by side.

    python benchmarks/z_weight.py [--weights 0 1e-4 1e-3 1e-2] [--model PATH] [--n-generated 3]

Prints one line per weight and task (mean LSR + join error beside the classical reference,
how many fits passed the fit report) and writes benchmarks/results/z_weight.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_lsr.evaluate import evaluate
from napari_lsr.model import load_model

KEY = {"truncation": "inside_fom", "metal": "outside_metal"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-generated", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "z_weight.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = []
    for w in args.weights:
        for task in ("truncation", "metal"):
            with tempfile.TemporaryDirectory() as tmp:
                s = evaluate(task, tmp, n_generated=args.n_generated, model=model, steps=args.steps,
                             lbfgs_steps=10, log=lambda *a: None, lsr_options={"z_weight": w})
            t = s["table"]
            row = {"z_weight": w, "task": task,
                   "lsr_join_hu": float(np.mean(t["LSR + smooth join"][KEY[task]])),
                   "lsr_join_per_case_hu": t["LSR + smooth join"][KEY[task]],
                   "reference_hu": float(np.mean(t["water-cylinder extrapolation" if task == "truncation"
                                                   else "NMAR"][KEY[task]])),
                   "fit_ok": sum(c["fit"]["ok"] for c in s["cases"]), "cases": len(s["cases"])}
            if task == "truncation":
                row["lsr_join_outside_fom_hu"] = float(np.mean(t["LSR + smooth join"]["outside_fom"]))
            rows.append(row)
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) and k != "z_weight" else v)
                              for k, v in row.items() if k != "lsr_join_per_case_hu"}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": str(args.model or "bundled default"),
                                          "steps": args.steps, "rows": rows,
                                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                         indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
