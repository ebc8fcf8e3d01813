"""Command line: ``napari-lsr demo | correct | train | evaluate`` (each with ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .geometry import geometry_from_dict, geometry_from_json


def _unused_dir(path: Path) -> Path:
    """``path`` if it is missing or empty, else the first free ``path-1``, ``path-2``, ..."""
    candidate, i = path, 0
    while candidate.exists() and any(candidate.iterdir()):
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _progress_printer(label: str, total: int, every: int = 25):
    start = time.perf_counter()

    def callback(*args):
        step, loss = args[-3], args[-2]
        if step == 1 or step % every == 0 or step == total:
            prefix = f"slice {args[0]} " if len(args) == 4 else ""
            print(f"  {label} {prefix}step {step:4d}/{total}  loss {loss:.3e}  "
                  f"{time.perf_counter() - start:5.1f} s", flush=True)
        return False
    return callback


def _save_png(path: Path, panels, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (name, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img, cmap="gray", vmin=-1000, vmax=1000)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title + "   (window [-1000, 1000] HU)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------
def run_demo(args) -> int:
    from . import masks, metrics, simulate
    from .baselines import reconstruct_hu
    from .data.phantoms import body_mask, generate_slice
    from .data.readers import write_tiff
    from .evaluate import EVAL_SEED0, METAL_MATERIALS, body_width_mm, default_geometry
    from .lsr import lsr_correct
    from .model import load_model
    from .projector import Projector
    from .units import hu_to_mu

    torch.manual_seed(0)
    out = _unused_dir(Path(args.out))
    t_start = time.perf_counter()
    model = load_model(args.model)
    geom = default_geometry(model.config.image_size, model.config.pixel_size_mm)
    print(f"prior: {args.model or 'bundled default'}; geometry: {geom.n_views} views x {geom.n_det} bins, "
          f"{geom.image_size}^2 pixels of {geom.pixel_size_mm} mm")
    gt = generate_slice(EVAL_SEED0 + 4242, geom.image_size, geom.pixel_size_mm, region="abdomen")
    P = Projector(geom)
    full = P.forward(torch.as_tensor(hu_to_mu(gt), dtype=torch.float32)).numpy()
    body = body_mask(gt)

    report = {"geometry": geom.to_dict(), "steps": args.steps, "lbfgs_steps": args.lbfgs_steps, "tasks": {}}
    spacing = (1.0, geom.pixel_size_mm, geom.pixel_size_mm)
    fom_mm = 0.6 * body_width_mm(gt, geom.pixel_size_mm)
    tmask = masks.truncation_mask(geom, fom_mm)
    mc = simulate.simulate_metal(gt, geom, n_objects=2, seed=0, materials=METAL_MATERIALS)
    tasks = {
        "truncation": (np.where(tmask == 1, full, 0.0).astype(np.float32), tmask,
                       lambda img: metrics.truncation_errors(img, gt, geom, fom_mm, body=body)),
        "metal": (mc.sinogram.astype(np.float32), mc.mask,
                  lambda img: metrics.metal_errors(img, gt, mc.metal_image_mask, body=body)),
    }
    for name, (sino, mask, errors) in tasks.items():
        print(f"{name}: running LSR ({args.steps} Adam + {args.lbfgs_steps} L-BFGS steps)")
        uncorrected = reconstruct_hu(sino, geom, filter="shepp-logan")
        res = lsr_correct(sino, mask, geom, model=model, steps=args.steps, lbfgs_steps=args.lbfgs_steps,
                          callback=_progress_printer(name, args.steps + args.lbfgs_steps), device=args.device,
                          fbp_filter="shepp-logan")
        for label, img in (("ground_truth", gt), ("uncorrected", uncorrected), ("lsr", res.image_hu)):
            write_tiff(out / f"{name}_{label}.tif", img[None], spacing,
                       metadata={"geometry": geom.to_dict(), "task": name, "units": "HU"})
        _save_png(out / f"{name}.png", [("ground truth", gt), ("uncorrected FBP", uncorrected),
                                        ("LSR corrected", res.image_hu), ("prior image G(z*)", res.generated_hu)],
                  f"{name}")
        report["tasks"][name] = {"uncorrected": errors(uncorrected), "lsr": errors(res.image_hu),
                                 "lsr_seconds": res.seconds, "steps_run": len(res.loss_history),
                                 "final_loss": res.loss_history[-1]}
        print(f"  {name}: uncorrected {report['tasks'][name]['uncorrected']}\n  {name}: LSR         "
              f"{report['tasks'][name]['lsr']}")
    report["seconds_total"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote PNGs, TIFFs and report.json to {out} in {report['seconds_total']:.0f} s")
    return 0


# ----------------------------------------------------------------------------------------
# correct
# ----------------------------------------------------------------------------------------
def _read_array(path) -> tuple:
    """(array, metadata dict) from a TIFF or NPY file written by this tool or another."""
    from .data.readers import read_npy, read_tiff

    p = Path(path)
    vol = read_npy(p) if p.suffix.lower() == ".npy" else read_tiff(p)
    return vol.hu, vol.meta


def _square_volume(hu: np.ndarray):
    """Pad (S, H, W) slices with air to square; returns (padded, crop slices)."""
    s, h, w = hu.shape
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    out = np.full((s, n, n), -1000.0, np.float32)
    out[:, top:top + h, left:left + w] = hu
    return out, (slice(top, top + h), slice(left, left + w))


def run_correct(args) -> int:
    from . import masks, simulate
    from .data.readers import read_ct, write_tiff
    from .geometry import FanBeam, ParallelBeam
    from .lsr import lsr_correct_volume
    from .model import load_model
    from .projector import Projector
    from .units import hu_to_mu

    out = Path(args.out)
    report_path = out.with_name(out.name + ".report.json")
    for p in (out, report_path):
        if p.exists() and not args.overwrite:
            raise SystemExit(f"error: {p} exists; choose another --out or pass --overwrite")
    model = load_model(args.model)
    report = {"input": {}, "settings": {k: v for k, v in vars(args).items() if k != "func"}}
    crop = None
    if args.volume:
        vol = read_ct(args.volume)
        if not np.isclose(vol.spacing_mm[1], vol.spacing_mm[2]):
            raise SystemExit(f"error: pixels are not square ({vol.spacing_mm[1:]} mm); resample first")
        hu, crop = _square_volume(vol.hu)
        n, px = hu.shape[-1], float(vol.spacing_mm[2])
        n_det = int(np.ceil(n * np.sqrt(2.0))) | 1
        if args.fan:
            sid = max(595.0, 0.8 * n * px)
            gam = np.arcsin(n * px / np.sqrt(2.0) / sid)
            sdd = 1.8 * sid
            geom = FanBeam(image_size=n, pixel_size_mm=px, n_views=args.views, det_spacing_mm=px * sdd / sid,
                           n_det=int(np.ceil(2 * gam * sid / px)) + 3, sid_mm=sid, sdd_mm=sdd)
        else:
            geom = ParallelBeam(image_size=n, pixel_size_mm=px, n_views=args.views, n_det=n_det,
                                det_spacing_mm=px)
        P = Projector(geom)
        print(f"simulating {args.simulate} on {hu.shape[0]} slices of {args.volume}")
        if args.simulate == "truncation":
            mask = masks.truncation_mask(geom, args.fom_mm)
            sinos = P.forward(torch.as_tensor(hu_to_mu(hu), dtype=torch.float32)).numpy() * mask
        else:
            cases = [simulate.simulate_metal(s, geom, seed=args.seed) for s in hu]
            sinos = np.stack([c.sinogram for c in cases]).astype(np.float32)
            mask = np.stack([c.mask for c in cases])
        spacing = vol.spacing_mm
        report["input"] = {"volume": str(args.volume), "simulate": args.simulate, "spacing_mm": list(spacing)}
    else:
        sinos, meta = _read_array(args.sinogram)
        if args.geometry:
            geom = geometry_from_json(Path(args.geometry).read_text())
        elif "geometry" in meta:
            geom = geometry_from_dict(meta["geometry"])
        else:
            raise SystemExit("error: no geometry: pass --geometry geometry.json (the sinogram file "
                             "carries none)")
        if args.mask:
            mask, _ = _read_array(args.mask)
            mask = mask[0] if mask.shape[0] == 1 and sinos.shape[0] > 1 else mask
        elif args.fom_mm:
            mask = masks.truncation_mask(geom, args.fom_mm)
        else:
            raise SystemExit("error: pass --mask FILE (1 = valid) or --fom-mm for a truncation mask")
        spacing = (float(meta.get("spacing_mm", [1.0])[0]) if isinstance(meta.get("spacing_mm"), list) else 1.0,
                   geom.pixel_size_mm, geom.pixel_size_mm)
        report["input"] = {"sinogram": str(args.sinogram), "mask": str(args.mask), "geometry": geom.to_dict()}
    total = args.steps + args.lbfgs_steps
    res = lsr_correct_volume(sinos, mask, geom, model=model, steps=args.steps, warm_steps=args.warm_steps,
                             lbfgs_steps=args.lbfgs_steps, batch_size=args.batch_size, device=args.device,
                             seed=args.seed, join=not args.no_join,
                             callback=_progress_printer("LSR", total))
    image = res.image_hu if crop is None else res.image_hu[:, crop[0], crop[1]]
    write_tiff(out, image, spacing, metadata={"geometry": geom.to_dict(), "units": "HU",
                                              "method": "LSR"}, overwrite=args.overwrite)
    if args.sinogram_out:
        write_tiff(args.sinogram_out, res.sinogram, (spacing[0], 1.0, 1.0),
                   metadata={"geometry": geom.to_dict(), "units": "line integral"}, overwrite=args.overwrite)
    report.update(geometry=geom.to_dict(), slices=int(res.slices_done), seconds_per_slice=res.seconds_per_slice,
                  final_loss=[h[-1] for h in res.loss_history], steps_run=[len(h) for h in res.loss_history])
    report_path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out} and {report_path}")
    return 0


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .evaluate import add_evaluate_arguments, run_evaluate
    from .train import add_train_arguments, run_train

    parser = argparse.ArgumentParser(prog="napari-lsr", description="Latent Space Reconstruction for CT "
                                     "missing-data artifacts (truncation, metal, limited angle).")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="bundled sample through truncation and metal correction")
    demo.add_argument("--out", default="out/demo", help="output folder (a free sibling is used if not empty)")
    demo.add_argument("--model", default=None, help="prior checkpoint (default: bundled)")
    demo.add_argument("--steps", type=int, default=150, help="Adam steps per task")
    demo.add_argument("--lbfgs-steps", type=int, default=10)
    demo.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    demo.set_defaults(func=run_demo)

    cor = sub.add_parser("correct", help="correct a sinogram stack (or simulate from a CT volume) with LSR")
    src = cor.add_mutually_exclusive_group(required=True)
    src.add_argument("--volume", help="CT volume (TIFF, NPY, DICOM file/folder) to simulate data from")
    src.add_argument("--sinogram", help="sinogram stack (TIFF/NPY), (slices, views, detector)")
    cor.add_argument("--simulate", choices=["truncation", "metal"], default="truncation")
    cor.add_argument("--fom-mm", type=float, default=None, help="field of measurement diameter (mm)")
    cor.add_argument("--views", type=int, default=360, help="views when simulating")
    cor.add_argument("--fan", action="store_true", help="simulate fan-beam instead of parallel-beam data")
    cor.add_argument("--mask", help="validity mask file, 1 = valid (same shape as the sinogram or one slice)")
    cor.add_argument("--geometry", help="geometry JSON (default: from the sinogram file's metadata)")
    cor.add_argument("--out", required=True, help="corrected TIFF stack; a .report.json is written beside it")
    cor.add_argument("--sinogram-out", default=None, help="also write the completed sinogram stack here")
    cor.add_argument("--overwrite", action="store_true", help="allow replacing existing output files")
    cor.add_argument("--model", default=None)
    cor.add_argument("--steps", type=int, default=500, help="Adam steps for the first (cold) slice")
    cor.add_argument("--warm-steps", type=int, default=50, help="Adam steps for warm-started slices")
    cor.add_argument("--lbfgs-steps", type=int, default=20)
    cor.add_argument("--batch-size", type=int, default=1, help="slices optimised together")
    cor.add_argument("--no-join", action="store_true", help="skip the smooth-join correction")
    cor.add_argument("--device", default=None)
    cor.add_argument("--seed", type=int, default=0)
    cor.set_defaults(func=run_correct)

    tr = sub.add_parser("train", help="train a prior on phantoms and/or your own CT data")
    add_train_arguments(tr)
    tr.set_defaults(func=run_train)

    ev = sub.add_parser("evaluate", help="Table-1 style evaluation against baselines on held-out data")
    add_evaluate_arguments(ev)
    ev.set_defaults(func=run_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "correct" and args.volume and args.simulate == "truncation" and not args.fom_mm:
        raise SystemExit("error: --simulate truncation needs --fom-mm (field of measurement diameter in mm)")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
