"""Evaluation on data with known ground truth, in the form of the paper's Table 1.

Cases: held-out generated slices (phantom seeds from ``EVAL_SEED0`` on, never used in
training) plus the real CT slices that ship with pydicom / pydicom-data. For every case the
table reports the *floor* (FBP of the complete, clean sinogram), the uncorrected FBP, the
classical baselines and LSR (with and without the smooth-join correction); errors are mean
± std over cases, and ratios compare excess errors ``(method - floor) / (reference - floor)``.

    napari-lsr evaluate --task truncation --out results/truncation
    napari-lsr evaluate --task metal --out results/metal
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from . import baselines, masks, metrics, simulate
from .baselines import reconstruct_hu
from .data.phantoms import body_mask, generate_slice
from .geometry import FanBeam, ParallelBeam
from .lsr import COLD_STARTS, lsr_correct
from .projector import DEFAULT_FILTER, Projector
from .units import hu_to_mu

EVAL_SEED0 = 10_000_000  # phantom seeds >= this are never used for training
FBP_FILTER = DEFAULT_FILTER
# two steel implants: strong beam hardening and photon starvation (with titanium only, the
# streaks are so mild that LI's own interpolation streaks can exceed them)
METAL_MATERIALS = ("steel",)


def default_geometry(image_size: int = 256, pixel_size_mm: float = 1.5, n_views: int = 360) -> ParallelBeam:
    """The evaluation geometry: parallel beam over 180 deg, detector covering the diagonal."""
    n_det = int(np.ceil(image_size * np.sqrt(2.0))) | 1
    return ParallelBeam(image_size=image_size, pixel_size_mm=pixel_size_mm, n_views=n_views,
                        n_det=n_det, det_spacing_mm=pixel_size_mm)


def clinical_fan_geometry() -> FanBeam:
    """A single-row clinical scanner: 900 x 1 mm arc detector at SDD 950 mm (SID 540 mm,
    a 492 mm scan circle), 720 views over 360 deg, image 256 x 256 at 0.96 mm."""
    return FanBeam(image_size=256, pixel_size_mm=0.96, n_views=720, n_det=900, det_spacing_mm=1.0,
                   sid_mm=540.0, sdd_mm=950.0, arc_deg=360.0)


GEOMETRIES = {"parallel": None, "fan-clinical": clinical_fan_geometry}


class CaseNotApplicable(Exception):
    """The task cannot be simulated on this case (reported and skipped)."""


@dataclass
class Case:
    name: str
    hu: np.ndarray  # clean ground truth slice, HU


def evaluation_cases(n_generated: int, include_real: bool, geom, seed0: int = EVAL_SEED0) -> List[Case]:
    cases = [Case(f"phantom-{seed0 + i}", generate_slice(seed0 + i, geom.image_size, geom.pixel_size_mm))
             for i in range(n_generated)]
    if include_real:
        from .data.readers import real_ct_slices
        cases += [Case(f"real-{name}", hu) for name, hu in real_ct_slices(geom.pixel_size_mm, geom.image_size)]
    return cases


def body_width_mm(hu: np.ndarray, pixel_size_mm: float) -> float:
    """Largest lateral extent of the body (mm)."""
    cols = np.nonzero(body_mask(hu).any(axis=0))[0]
    return float(cols.max() - cols.min() + 1) * pixel_size_mm if cols.size else 0.0


def _lsr_images(P, sino, mask, geom, model, steps, lbfgs_steps, seed, lsr_options=None):
    """LSR with and without the smooth-join correction, from one optimisation."""
    res = lsr_correct(sino, mask, geom, model=model, steps=steps, lbfgs_steps=lbfgs_steps, seed=seed,
                      join=True, fbp_filter=FBP_FILTER, **(lsr_options or {}))
    with torch.no_grad():
        gen_sino = P.forward(hu_to_mu(torch.as_tensor(res.generated_hu))).numpy()
    plain = np.where(mask == 1, sino, gen_sino.astype(sino.dtype))
    out = {"LSR": (reconstruct_hu(plain, geom, FBP_FILTER), plain),
           "LSR + smooth join": (res.image_hu, res.sinogram)}
    if (np.asarray(mask) == 0).any() and _interior_gaps(mask):
        # NMAR's normalised interpolation with the LSR image (no metal streaks) as its prior
        guided = baselines.nmar(sino, mask, geom, image_hu=res.image_hu)
        out["LSR-guided NMAR"] = (reconstruct_hu(guided, geom, FBP_FILTER), guided)
    return out, res


def _interior_gaps(mask) -> bool:
    """True when the missing entries are gaps inside the detector rows (metal traces), not
    runs reaching the detector's ends (truncation)."""
    m = np.asarray(mask) == 0
    return not (m[..., 0].any() or m[..., -1].any())


def run_case(task: str, case: Case, geom, P: Projector, model, steps: int, lbfgs_steps: int,
             fom_fraction: float, seed: int, lsr_options: Dict | None = None,
             lsr_seed: int | None = None) -> Dict:
    """All methods on one case; returns per-method metrics and images for the figure.
    ``seed`` seeds the simulated metal and, unless ``lsr_seed`` is given, LSR's random start."""
    gt = case.hu
    body = body_mask(gt)
    full = P.forward(torch.as_tensor(hu_to_mu(gt), dtype=torch.float32)).numpy()
    if task == "truncation":
        fom_mm = fom_fraction * body_width_mm(gt, geom.pixel_size_mm)
        mask = masks.truncation_mask(geom, fom_mm)
        sino = np.where(mask == 1, full, 0.0).astype(np.float32)
        sinos = {"uncorrected": sino, "water-cylinder extrapolation": baselines.detruncate(sino, mask, geom)}
        region = {"fom_mm": fom_mm}
    else:
        try:
            mc = simulate.simulate_metal(gt, geom, n_objects=2, seed=seed, materials=METAL_MATERIALS)
        except ValueError as e:  # e.g. a small real slice with no room for the implants
            raise CaseNotApplicable(str(e)) from None
        sino, mask = mc.sinogram.astype(np.float32), mc.mask
        sinos = {"uncorrected": sino, "LI": baselines.li_mar(sino, mask),
                 "NMAR": baselines.nmar(sino, mask, geom)}
        region = {"metal": mc.metal_image_mask}
    images = {"ground truth": (gt, full), "floor (FBP of complete data)": (reconstruct_hu(full, geom, FBP_FILTER), full)}
    images.update({k: (reconstruct_hu(s, geom, FBP_FILTER), s) for k, s in sinos.items()})
    t0 = time.perf_counter()
    lsr_imgs, res = _lsr_images(P, sino, mask, geom, model, steps, lbfgs_steps,
                                seed if lsr_seed is None else lsr_seed, lsr_options)
    images.update(lsr_imgs)
    out = {"name": case.name, "lsr_seconds": time.perf_counter() - t0, "lsr_steps": len(res.loss_history),
           "lsr_final_loss": float(res.loss_history[-1]), "fit": res.fit.to_dict(),
           **({"fom_mm": region["fom_mm"]} if task == "truncation" else {}),
           "metrics": {}, "images": {k: v[0] for k, v in images.items()}}
    for method, (img, s) in images.items():
        if method == "ground truth":
            continue
        m = {"psnr": metrics.psnr(img, gt, data_range=2000.0), "ssim": metrics.ssim(img, gt, data_range=2000.0)}
        if task == "truncation":
            m.update(metrics.truncation_errors(img, gt, geom, region["fom_mm"], body=body))
            m["sinogram_mae"] = metrics.sinogram_mae(s, full, mask)
        else:
            m.update(metrics.metal_errors(img, gt, region["metal"], body=body))
        out["metrics"][method] = m
    return out


def _mean_std(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std():.1f}" if v.size else "n/a"


def summarise(task: str, results: List[Dict]) -> Dict:
    methods = list(results[0]["metrics"])
    keys = (["inside_fom", "outside_fom", "sinogram_mae", "psnr", "ssim"] if task == "truncation"
            else ["outside_metal", "psnr", "ssim"])
    table = {m: {k: [r["metrics"][m][k] for r in results] for k in keys} for m in methods}
    floor = "floor (FBP of complete data)"
    main_key = "inside_fom" if task == "truncation" else "outside_metal"
    refs = ["uncorrected", "water-cylinder extrapolation"] if task == "truncation" else ["uncorrected", "LI", "NMAR"]
    ratios = {}
    for m in methods:
        for ref in refs:
            if m == ref or m == floor:
                continue
            for key in [main_key] + (["outside_fom", "sinogram_mae"] if task == "truncation" else []):
                excess = np.mean(table[m][key]) - (np.mean(table[floor][key]) if key != "sinogram_mae" else 0.0)
                ref_excess = np.mean(table[ref][key]) - (np.mean(table[floor][key]) if key != "sinogram_mae" else 0.0)
                ratios[f"{m} vs {ref} ({key})"] = float(excess / ref_excess) if ref_excess > 0 else float("nan")
    return {"task": task, "n_cases": len(results), "keys": keys, "table": table, "ratios": ratios}


def markdown_table(summary: Dict) -> str:
    keys = summary["keys"]
    units = {"inside_fom": "MAE inside FOM (HU)", "outside_fom": "MAE outside FOM, body (HU)",
             "sinogram_mae": "sinogram MAE, missing part", "outside_metal": "MAE outside metal, body (HU)",
             "psnr": "PSNR (dB)", "ssim": "SSIM"}
    lines = ["| method | " + " | ".join(units[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for m, row in summary["table"].items():
        cells = []
        for k in keys:
            v = np.asarray(row[k], float)
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if k in ("sinogram_mae", "ssim")
                         else f"{v.mean():.1f} ± {v.std():.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Excess-error ratios, (method - floor) / (reference - floor) (sinogram: plain ratio):", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in summary["ratios"].items()]
    return "\n".join(lines)


def figure_cases(results: List[Dict], n_cases: int) -> List[Dict]:
    """The cases a figure shows: the first phantoms and, if any, the widest real slice."""
    real = [r for r in results if r["name"].startswith("real-")]
    shown = [r for r in results if r not in real][:n_cases - 1 if real else n_cases]
    if real:
        shown.append(max(real, key=lambda r: body_width_mm(r["images"]["ground truth"], 1.0)))
    return shown


def save_figure(task: str, results: List[Dict], path: Path, n_cases: int = 2, geom=None,
                window: str = "soft tissue") -> None:
    """Rows: methods; columns: image (CT window ``window``, the field of measurement dashed)
    and difference to the ground truth for ``n_cases`` cases: the first phantoms and the
    largest real slice (if any); titles carry the errors (HU)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    from .windows import window_limits

    lo, hi = window_limits(window)
    shown = figure_cases(results, n_cases)
    methods = list(shown[0]["images"])
    fig = Figure(figsize=(3.0 * 2 * len(shown), 3.1 * len(methods)))
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(methods), 2 * len(shown)))
    for c, r in enumerate(shown):
        gt = r["images"]["ground truth"]
        for row, m in enumerate(methods):
            img = r["images"][m]
            ax, axd = axes[row, 2 * c], axes[row, 2 * c + 1]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            axd.imshow(img - gt, cmap="RdBu_r", vmin=-200, vmax=200)
            numbers = ""
            if m in r["metrics"]:
                mm = r["metrics"][m]
                numbers = (f"MAE in FOM {mm['inside_fom']:.0f}, outside {mm['outside_fom']:.0f} HU"
                           if task == "truncation" else f"MAE outside metal {mm['outside_metal']:.0f} HU")
            ax.set_title(f"{m}\n{r['name']} ({window} W{hi - lo:.0f}/L{(hi + lo) / 2:.0f})", fontsize=7)
            axd.set_title(f"difference to GT, -200..200 HU\n{numbers}", fontsize=7)
            if task == "truncation" and geom is not None and "fom_mm" in r:
                ctr = (gt.shape[-1] - 1) / 2.0
                for a in (ax, axd):
                    a.add_patch(Circle((ctr, ctr), r["fom_mm"] / 2.0 / geom.pixel_size_mm, fill=False,
                                       ls="--", lw=0.8, color="gold"))
            ax.axis("off")
            axd.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def evaluate(task: str, out_dir, n_generated: int = 6, include_real: bool = True, model=None,
             steps: int = 500, lbfgs_steps: int = 20, fom_fraction: float = 0.6, seed0: int = EVAL_SEED0,
             geom=None, log=print, lsr_options: Dict | None = None,
             lsr_seed_offset: int = 0) -> Dict:
    """Run the evaluation; writes ``table.md``, ``results.json`` and ``figure.png`` to out_dir.

    Case ``i``'s LSR fit starts from seed ``i + lsr_seed_offset`` (the data stay the same: the
    evaluation's spread over LSR's random starts).

    ``geom``: a geometry, a name in ``GEOMETRIES`` or None (parallel beam on the prior's
    grid); ``lsr_options``: extra keyword arguments of :func:`lsr_correct` (e.g.
    ``{"reduce": False}`` for the full-resolution fit, ``{"z_weight": 1e-3}``)."""
    if task not in ("truncation", "metal"):
        raise ValueError(f"task must be 'truncation' or 'metal', got {task!r}")
    from .model import load_model
    model = load_model() if model is None else model
    if isinstance(geom, str):
        if geom not in GEOMETRIES:
            raise ValueError(f"unknown evaluation geometry {geom!r}; choose one of {sorted(GEOMETRIES)}")
        geom = GEOMETRIES[geom]() if GEOMETRIES[geom] else None
    geom = geom or default_geometry(model.config.image_size, model.config.pixel_size_mm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    P = Projector(geom)
    results, skipped = [], []
    for i, case in enumerate(evaluation_cases(n_generated, include_real, geom, seed0)):
        try:
            r = run_case(task, case, geom, P, model, steps, lbfgs_steps, fom_fraction, seed=i,
                         lsr_options=lsr_options, lsr_seed=i + lsr_seed_offset)
        except CaseNotApplicable as e:
            skipped.append({"name": case.name, "reason": str(e)})
            log(f"[{i + 1}] {case.name}: skipped ({e})")
            continue
        results.append(r)
        key = "inside_fom" if task == "truncation" else "outside_metal"
        log(f"[{i + 1}] {case.name}: " + ", ".join(f"{m} {v[key]:.1f}" for m, v in r["metrics"].items())
            + f" HU ({r['lsr_seconds']:.0f} s LSR)")
    if not results:
        raise ValueError(f"no evaluation case could be run: {skipped}")
    summary = summarise(task, results)
    summary.update(skipped=skipped, geometry=geom.to_dict(), steps=steps, lbfgs_steps=lbfgs_steps, fom_fraction=fom_fraction,
                   seed0=seed0, lsr_options=lsr_options or {}, lsr_seed_offset=lsr_seed_offset,
                   cases=[{k: v for k, v in r.items() if k != "images"} for r in results],
                   model=getattr(model, "training_summary", {}))
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    table = markdown_table(summary)
    notes = "".join(f"\n- skipped {s['name']}: {s['reason']}" for s in skipped)
    (out / "table.md").write_text(f"# LSR evaluation: {task}\n\n{len(results)} cases ({', '.join(r['name'] for r in results)}), "
                                  f"{steps} Adam + {lbfgs_steps} L-BFGS steps\n\n{table}\n{notes}\n")
    save_figure(task, results, out / "figure.png", geom=geom)
    log(table)
    return summary


def evaluate_prior(out_dir, n_per_region: int = 16, include_real: bool = True, model=None,
                   seed0: int = EVAL_SEED0, log=print) -> Dict:
    """The prior on its own: encode and decode held-out phantoms (``n_per_region`` of each
    region, seeds from ``seed0``, bodies inside the field) and the real slices; MAE in the
    body (HU), PSNR (dB) and SSIM per region. Writes ``results.json``, ``table.md`` and
    ``samples.png`` (held-out phantoms, their reconstructions, random draws of the prior)."""
    from .data.phantoms import REGIONS
    from .model import load_model
    from .train import BONE_HU, phantom_batch, reconstruction_metrics, save_samples_figure

    model = load_model() if model is None else model
    c = model.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(seed0, seed0 + n_per_region * len(REGIONS))
    rows = {}
    for k, region in enumerate(REGIONS):
        hu = phantom_batch(seeds[k * n_per_region:(k + 1) * n_per_region], c.image_size,
                           c.pixel_size_mm, (region,))
        rows[f"phantoms: {region}"] = reconstruction_metrics(model, hu)
    phantom_rows = list(rows.values())
    rows["phantoms: all"] = {key: float(np.mean([r[key] for r in phantom_rows]))
                             for key in ("mae_hu_body", "mae_hu_body_without_bone",
                                         "error_share_bone", "psnr_db", "ssim")}
    rows["phantoms: all"]["n"] = sum(r["n"] for r in phantom_rows)
    if include_real:
        geom = default_geometry(c.image_size, c.pixel_size_mm)
        for case in evaluation_cases(0, True, geom):
            rows[case.name] = reconstruction_metrics(model, case.hu[None])
    lines = ["| slices | n | MAE in the body (HU) | without bone (HU) | share of the error in "
             "bone | PSNR (dB) | SSIM |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['n']} | {r['mae_hu_body']:.1f} | {r['mae_hu_body_without_bone']:.1f}"
              f" | {r['error_share_bone']:.0%} | {r['psnr_db']:.1f} | {r['ssim']:.3f} |"
              for name, r in rows.items()]
    table = "\n".join(lines)
    summary = {"task": "reconstruction", "seed0": seed0, "n_per_region": n_per_region,
               "units": {"mae_hu_body": "HU", "mae_hu_body_without_bone": "HU",
                         "error_share_bone": f"fraction (bone: ground truth > {BONE_HU:g} HU)",
                         "psnr_db": "dB", "ssim": "1"}, "rows": rows,
               "model": getattr(model, "training_summary", {})}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "table.md").write_text("# The prior on held-out slices (encode, decode)\n\n"
                                  f"{n_per_region} held-out phantoms per region (seeds from "
                                  f"{seed0}) and the real slices\n\n{table}\n")
    save_samples_figure(model, out / "samples.png", n=6, seed0=seed0)
    log(table)
    return summary


def add_evaluate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--task", choices=["truncation", "metal", "reconstruction"], required=True,
                   help="which missing-data problem to evaluate; reconstruction: the prior "
                   "alone (encode and decode held-out slices, random samples)")
    p.add_argument("--out", default=None, help="output folder for table.md, results.json and "
                   "figure.png; an existing non-empty folder needs --overwrite (default: "
                   "results/<task>)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing the results in an existing --out folder")
    p.add_argument("--n-generated", type=int, default=6,
                   help="held-out phantom slices (reconstruction: per region) (default: "
                   "%(default)s)")
    p.add_argument("--no-real", action="store_true", help="skip the real CT slices of pydicom(-data)")
    p.add_argument("--model", default=None, help="prior checkpoint (default: the bundled prior)")
    p.add_argument("--steps", type=int, default=500,
                   help="Adam steps at most, as lsr_correct (default: %(default)s)")
    p.add_argument("--lbfgs-steps", type=int, default=20,
                   help="L-BFGS steps after Adam (default: %(default)s)")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="parallel",
                   help="parallel: 360 views over 180 deg on the prior's 256 x 1.5 mm grid; "
                   "fan-clinical: 900 x 1 mm channels, 720 views, 256 x 0.96 mm (default: "
                   "%(default)s)")
    p.add_argument("--full-fit", action="store_true",
                   help="fit on the full data instead of the data binned to the prior's sampling")
    p.add_argument("--z-weight", type=float, default=None,
                   help="LSR's latent prior weight (default: lsr_correct's)")
    p.add_argument("--lr", type=float, default=None,
                   help="LSR's Adam step from scratch (default: lsr_correct's, COLD_LR)")
    p.add_argument("--cold-start", choices=COLD_STARTS, default=None,
                   help="where LSR's fit starts: random (near the average slice) or encoder (the "
                   "prior's encoder applied to the classical correction) (default: "
                   "lsr_correct's)")
    p.add_argument("--fom-fraction", type=float, default=0.6,
                   help="FOM diameter / body width, truncation (default: %(default)s)")
    p.add_argument("--seed0", type=int, default=EVAL_SEED0,
                   help="first held-out phantom seed (default: %(default)s)")
    p.add_argument("--lsr-seed-offset", type=int, default=0,
                   help="case i's LSR fit starts from seed i + this; the data stay the same "
                   "(default: %(default)s)")
    return p


def run_evaluate(args) -> int:
    """Entry point of ``napari-lsr evaluate``: refuses, before any work, an --out that is a
    file, a non-empty folder without ``--overwrite`` (the default ``results/<task>`` holds
    the committed results) and a folder that cannot be written."""
    from .cli import CLIError, check_outputs
    from .model import load_model

    out = Path(args.out or f"results/{args.task}").expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: is a file; evaluate writes a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not getattr(args, "overwrite", False):
        more = f" and {len(held) - 4} more" if len(held) > 4 else ""
        raise CLIError(f"--out {out}: the folder already holds {', '.join(held[:4])}{more}; pass "
                       "--overwrite to replace its results or choose another --out")
    check_outputs({"--out": out / "results.json"}, overwrite=True)  # writable or creatable
    if args.task == "reconstruction":
        evaluate_prior(out, n_per_region=args.n_generated, include_real=not args.no_real,
                       model=load_model(args.model), seed0=args.seed0)
        return 0
    options = {"reduce": False} if args.full_fit else {}
    if args.z_weight is not None:
        options["z_weight"] = args.z_weight
    if args.lr is not None:
        options["lr"] = args.lr
    if args.cold_start is not None:
        options["cold_start"] = args.cold_start
    evaluate(args.task, out, n_generated=args.n_generated,
             include_real=not args.no_real, model=load_model(args.model), steps=args.steps,
             lbfgs_steps=args.lbfgs_steps, fom_fraction=args.fom_fraction, seed0=args.seed0,
             geom=args.geometry, lsr_options=options, lsr_seed_offset=args.lsr_seed_offset)
    return 0
