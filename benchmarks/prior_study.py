"""Design study of the prior at equal CPU time, judged by LSR (issue "Prior v2").

Arms (each trained for the same wall time on one pinned core, same data, same optimiser):

  v1          conv stem at full resolution, 128-vector latent (the first bundled prior)
  unshuffle   pixel-unshuffle stem (4x4 -> 16 ch at 64²), widths 32..256 down to 8², 128-vector
  hybrid      the unshuffle network plus a 16x16x4 spatial latent beside the 128-vector
  split       the hybrid network as two priors, head and trunk, half the time each; LSR runs
              both and keeps the one whose projection fits the measured data better
  hybrid32    the unshuffle network plus a 32x32x4 spatial latent (finer) beside the vector

Scores: held-out phantom reconstruction MAE in the body (seeds from 10 000 000), and LSR
(+ smooth join) on a fixed short case list of both evaluation tasks (3 held-out phantoms and
the 4 real slices), next to the baselines of ``napari-lsr evaluate``.

    taskset -c 0 python benchmarks/prior_study.py train --arm hybrid --minutes 20 --bank B.npy
    taskset -c 0 python benchmarks/prior_study.py score --arms v1 unshuffle hybrid split

Checkpoints go to ``runs/study/`` (not committed); scores to
``benchmarks/results/prior_study.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_lsr import evaluate as ev
from napari_lsr.model import load_model
from napari_lsr.projector import Projector
from napari_lsr.train import TrainConfig, evaluate_reconstruction, train

RUNS = Path("runs/study")
RESULTS = Path(__file__).parent / "results" / "prior_study.json"
UNSHUFFLE = dict(stem_factor=4, base_channels=32, channel_mults=(1, 2, 4, 8), spatial_channels=0)
HYBRID = {**UNSHUFFLE, "spatial_channels": 4, "spatial_size": 16, "spatial_prior": "standard"}
ARMS = {
    "v1": dict(stem_factor=1, base_channels=8, channel_mults=(1, 2, 4, 8, 16, 32),
               spatial_channels=0),
    "unshuffle": UNSHUFFLE,
    "hybrid": HYBRID,
    "split": HYBRID,
    "hybrid32": {**HYBRID, "spatial_size": 32},
}
SPLIT = {"head": ["head"], "trunk": ["thorax", "abdomen", "pelvis"]}
COMMON = dict(batch_size=8, lr=1.5e-3, warmup_steps=100, beta=0.02, kl_warmup_steps=1000,
              epoch_steps=250, threads=1, bf16=True, channels_last=True, patience=100,
              crop_fraction=0.05, progress=False)


def arm_checkpoints(arm: str) -> dict:
    if arm == "split":
        return {part: RUNS / f"split-{part}.pt" for part in SPLIT}
    return {"all": RUNS / f"{arm}.pt"}


def train_arm(arm: str, minutes: float, bank: str | None, steps_per_minute: float) -> None:
    parts = arm_checkpoints(arm)
    share = minutes / len(parts)
    for part, out in parts.items():
        regions = SPLIT.get(part, [])
        part_bank = None
        if bank:
            part_bank = bank if not regions else str(Path(bank).with_suffix("")) + f"-{part}.npy"
        cfg = TrainConfig(out=str(out), steps=int(share * steps_per_minute),
                          max_minutes=share, regions=regions, bank=part_bank,
                          bank_size=12_000 // len(parts),
                          **ARMS[arm], **COMMON)
        t0 = time.time()
        train(cfg)
        print(f"{arm}/{part}: {(time.time() - t0) / 60:.1f} min", flush=True)


def score_arm(arm: str, n_phantoms: int, steps: int, lbfgs_steps: int) -> dict:
    models = {part: load_model(p) for part, p in arm_checkpoints(arm).items()}
    first = next(iter(models.values()))
    recon = {}
    for part, m in models.items():
        regions = SPLIT.get(part)
        if regions:  # each part on the held-out phantoms of its regions
            from napari_lsr.train import phantom_batch, reconstruction_metrics
            hu = phantom_batch(range(ev.EVAL_SEED0, ev.EVAL_SEED0 + 64), 256, 1.5, regions)
            recon[part] = reconstruction_metrics(m, hu)
        else:
            recon[part] = evaluate_reconstruction(m, n=64)
    geom = ev.default_geometry(first.config.image_size, first.config.pixel_size_mm)
    P = Projector(geom)
    cases = ev.evaluation_cases(n_phantoms, True, geom)
    out = {"arm": arm, "reconstruction": recon, "training": {
        part: {k: m.training_summary.get(k) for k in ("steps", "wall_time_s")}
        for part, m in models.items()}, "tasks": {}}
    for task in ("truncation", "metal"):
        rows = []
        for i, case in enumerate(cases):
            best = None
            for part, m in models.items():
                try:
                    r = ev.run_case(task, case, geom, P, m, steps, lbfgs_steps, 0.6, seed=i)
                except ev.CaseNotApplicable:
                    break
                r["prior"] = part
                if best is None or r["lsr_final_loss"] < best["lsr_final_loss"]:
                    best = r
            if best is not None:
                best.pop("images")
                rows.append(best)
                key = "inside_fom" if task == "truncation" else "outside_metal"
                print(f"{arm} {task} {case.name} [{best['prior']}]: " + ", ".join(
                    f"{k} {v[key]:.1f}" for k, v in best["metrics"].items()), flush=True)
        out["tasks"][task] = {"cases": rows, "summary": ev.summarise(task, rows)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--arm", choices=list(ARMS), required=True)
    t.add_argument("--minutes", type=float, default=20.0)
    t.add_argument("--bank", default=None, help="phantom bank .npy (made if missing)")
    t.add_argument("--steps-per-minute", type=float, default=170.0,
                   help="sets the cosine schedule length (measured, 1 thread, bf16)")
    s = sub.add_parser("score")
    s.add_argument("--arms", nargs="+", default=list(ARMS))
    s.add_argument("--n-phantoms", type=int, default=3)
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--lbfgs-steps", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "train":
        train_arm(args.arm, args.minutes, args.bank, args.steps_per_minute)
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for arm in args.arms:
        results[arm] = score_arm(arm, args.n_phantoms, args.steps, args.lbfgs_steps)
        RESULTS.write_text(json.dumps(results, indent=1, default=float))
    print(study_table(results))
    return 0


def study_table(results: dict) -> str:
    """Markdown table: reconstruction MAE and LSR + join vs the baselines per task."""
    lines = ["| arm | steps | recon MAE (HU) | trunc. inside FOM: LSR+join / water-cyl. | "
             "trunc. outside FOM: LSR+join / water-cyl. | metal: LSR+join / NMAR / LI |",
             "|---|---:|---:|---|---|---|"]
    for arm, r in results.items():
        steps = "+".join(str(v["steps"]) for v in r["training"].values())
        mae = " / ".join(f"{v['mae_hu_body']:.1f}" for v in r["reconstruction"].values())
        t = r["tasks"]["truncation"]["summary"]["table"]
        m = r["tasks"]["metal"]["summary"]["table"]
        mean = lambda d, meth, k: float(np.mean(d[meth][k]))  # noqa: E731
        lines.append(
            f"| {arm} | {steps} | {mae} | "
            f"{mean(t, 'LSR + smooth join', 'inside_fom'):.1f} / "
            f"{mean(t, 'water-cylinder extrapolation', 'inside_fom'):.1f} | "
            f"{mean(t, 'LSR + smooth join', 'outside_fom'):.1f} / "
            f"{mean(t, 'water-cylinder extrapolation', 'outside_fom'):.1f} | "
            f"{mean(m, 'LSR + smooth join', 'outside_metal'):.1f} / "
            f"{mean(m, 'NMAR', 'outside_metal'):.1f} / {mean(m, 'LI', 'outside_metal'):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
