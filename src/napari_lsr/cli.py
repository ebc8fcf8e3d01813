"""Command line: ``napari-lsr demo | correct | train | evaluate`` (each with ``--help``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .lsr import (COLD_STARTS, DEFAULT_COLD_START, DEFAULT_Z_WEIGHT, PRECISIONS,
                  WARM_Z_WEIGHT, _z_weight)
from .projector import DEFAULT_FILTER


class CLIError(ValueError):
    """A user error: printed as ``error: <message>`` with exit status 2, no traceback."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-lsr")
    except Exception:  # noqa: BLE001 - not installed (e.g. run from a source tree)
        from . import __version__

        return __version__


def _error_text(err: BaseException) -> str:
    """A one-line message for a user error (OSError as 'file: reason')."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"  # not "[Errno 13] Permission denied: 'x'"
    return str(err) or type(err).__name__


# units of every number in report.json: by key, or by the key's suffix
REPORT_UNITS = {
    "images": "HU", "sinograms": "line integrals of mu (dimensionless; mu in 1/mm, lengths in mm)",
    "masks": "1 = valid, 0 = missing/corrupt",
    "*_hu": "HU", "*_mm": "mm", "*_deg": "degrees", "*_s": "seconds", "*_mb": "megabytes (1e6 bytes)",
    "*_line_integral": "line integral of mu (dimensionless)",
    "*_line_integral_sq": "squared line integral (dimensionless)",
    "final_loss": "mean squared line-integral misfit over the valid rays (dimensionless)",
    "relative_residual": "fraction: rms misfit / rms of the valid data",
    "steps": "optimiser steps (count)", "warm_steps": "optimiser steps (count)",
    "lbfgs_steps": "optimiser steps (count)", "steps_run": "optimiser steps (count)",
    "slices": "count", "batch_size": "slices (count)", "views": "count", "n_views": "count",
    "n_det": "detector bins (count)", "image_size": "pixels", "seed": "random seed (integer)",
    "nonfinite_values_in_missing_part": "count", "n_generated": "count",
    "z_weight": "weight of the latent prior term (dimensionless, per mean squared z)",
    "z_weight_cold": "the latent prior's weight used on the cold first slice / batch",
    "z_weight_warm": "the latent prior's weight used on the warm-started slices",
}


def _jsonable(obj):
    """``obj`` with NumPy values, paths and other objects made JSON-serialisable; NaN and
    infinities become null (strict JSON)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    def strict(o):
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: strict(v) for k, v in o.items()}
        if isinstance(o, list):
            return [strict(v) for v in o]
        return o
    return strict(json.loads(json.dumps(obj, default=default)))


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: ...)`` to every option that takes a value, is not required and
    does not state its default already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "default" in text.lower() or action.required
                or action.default is argparse.SUPPRESS or action.nargs == 0
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _unused_dir(path: Path) -> Path:
    """``path`` if it is missing or empty, else the first free ``path-1``, ``path-2``, ..."""
    candidate, i = path, 0
    while candidate.exists() and any(candidate.iterdir()):
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _progress_printer(label: str, total: int, every: int = 25, abort=None):
    """LSR callback printing progress every ``every`` steps; it stops the run (returns True)
    once ``abort`` (a threading.Event, e.g. set by Ctrl-C) is set."""
    start = time.perf_counter()

    def callback(*args):
        step, loss = args[-3], args[-2]
        if step == 1 or step % every == 0 or step == total:
            prefix = f"slice {args[0]} " if len(args) == 4 else ""
            print(f"  {label} {prefix}step {step:4d}/{total}  loss {loss:.3e}  "
                  f"{time.perf_counter() - start:5.1f} s", flush=True)
        return abort is not None and abort.is_set()
    return callback


class _CtrlC:
    """While active, the first Ctrl-C sets ``event`` (the run stops after its current step and
    the finished slices are kept); a second one interrupts at once."""

    def __init__(self):
        import threading
        self.event = threading.Event()

    def _handler(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        print("\nCtrl-C: stopping after the current step; the finished slices will be written "
              "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        import signal
        import threading
        self._old = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):  # nohup/& ignore it
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ----------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------
def run_demo(args) -> int:
    from . import masks, metrics, simulate
    from .baselines import reconstruct_hu
    from .data.phantoms import body_mask, generate_slice
    from .data.readers import write_tiff
    from .data.sinogram_io import write_json
    from .evaluate import EVAL_SEED0, METAL_MATERIALS, body_width_mm, default_geometry, save_figure
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
    # a held-out adult abdomen (no arms beside it, 328 mm wide)
    gt = generate_slice(EVAL_SEED0 + 4247, geom.image_size, geom.pixel_size_mm, region="abdomen")
    P = Projector(geom)
    full = P.forward(torch.as_tensor(hu_to_mu(gt), dtype=torch.float32)).numpy()
    body = body_mask(gt)

    report = {"command": "demo", "napari_lsr_version": _version(), "units": dict(REPORT_UNITS),
              "geometry": geom.to_dict(), "steps": args.steps, "lbfgs_steps": args.lbfgs_steps, "tasks": {}}
    spacing = (1.0, geom.pixel_size_mm, geom.pixel_size_mm)
    fom_mm = 0.6 * body_width_mm(gt, geom.pixel_size_mm)
    report["truncation_fom_mm"] = fom_mm
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
        uncorrected = reconstruct_hu(sino, geom, filter=FBP_FILTER)
        res = lsr_correct(sino, mask, geom, model=model, steps=args.steps, lbfgs_steps=args.lbfgs_steps,
                          callback=_progress_printer(name, args.steps + args.lbfgs_steps), device=args.device,
                          fbp_filter=FBP_FILTER)
        for label, img in (("ground_truth", gt), ("uncorrected", uncorrected), ("lsr", res.image_hu)):
            write_tiff(out / f"{name}_{label}.tif", img[None], spacing,
                       metadata={"geometry": geom.to_dict(), "task": name, "units": "HU"})
        fit = getattr(res, "fit", None)
        save_figure(name, [{"name": f"demo {name}", "fom_mm": fom_mm,
                            "images": {"ground truth": gt, "uncorrected FBP": uncorrected,
                                       "LSR corrected": res.image_hu,
                                       "prior image G(z*)": res.generated_hu},
                            "metrics": {"uncorrected FBP": errors(uncorrected),
                                        "LSR corrected": errors(res.image_hu)}}],
                    out / f"{name}.png", n_cases=1, geom=geom)
        mae = {"uncorrected": {f"mae_{k}_hu": v for k, v in errors(uncorrected).items()},
               "lsr": {f"mae_{k}_hu": v for k, v in errors(res.image_hu).items()}}
        report["tasks"][name] = {**mae, "lsr_s": res.seconds, "steps_run": len(res.loss_history),
                                 "final_loss": res.loss_history[-1],
                                 "fit": fit.to_dict() if fit is not None else None}
        for label in ("uncorrected", "lsr"):
            print(f"  {name}: {label:<11s} MAE " + ", ".join(
                f"{k[4:-3]} {v:.1f} HU" for k, v in mae[label].items()))
        print_fit_reports([fit], names=[name])
    report["seconds_total_s"] = time.perf_counter() - t_start
    write_json(out / "report.json", _jsonable(report))
    print(f"wrote PNGs, TIFFs and report.json to {out} in {report['seconds_total_s']:.0f} s")
    return 0


# ----------------------------------------------------------------------------------------
# correct
# ----------------------------------------------------------------------------------------
FBP_FILTER = DEFAULT_FILTER  # the one default FBP filter of napari-lsr (LSR, baselines, projector)
_TIFF = (".tif", ".tiff")


def _flagged(flag: str, path, err: Exception) -> str:
    """An error message that starts with the argument and the file it is about."""
    text = _error_text(err)
    return f"{flag} {text}" if text.startswith(str(path)) else f"{flag} {path}: {text}"


def _read_input(flag: str, path, kind: str, allow_nonfinite: bool = False):
    """CTVolume of a TIFF/NPY input; errors name the argument and the file."""
    from .data.readers import read_npy, read_tiff

    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise ValueError(f"{p} is a folder; give a .tif/.tiff or .npy file")
        reader = read_npy if p.suffix.lower() == ".npy" else read_tiff
        return reader(p, kind=kind, allow_nonfinite=allow_nonfinite)
    except (ValueError, OSError) as e:
        raise CLIError(_flagged(flag, p, e)) from None


def _square_volume(hu: np.ndarray):
    """Pad (S, H, W) slices with air to square; returns (padded, crop slices)."""
    s, h, w = hu.shape
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    out = np.full((s, n, n), -1000.0, np.float32)
    out[:, top:top + h, left:left + w] = hu
    return out, (slice(top, top + h), slice(left, left + w))


def _probe_writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder``, else the reason."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".napari-lsr-probe-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(tmp)
    return None


def check_outputs(outputs: dict, overwrite: bool, inputs: dict | None = None,
                  hint: str = "choose another --out or pass --overwrite to replace") -> list:
    """Check every output before any work: ``outputs`` maps a label (the argument, e.g.
    "--out") to a path. Refuses (:class:`CLIError`) a folder given as a file, two outputs on
    one path, an output that is an input, existing files without ``overwrite`` (``hint``
    says what to do) and folders that cannot be written or created. Nothing is created here:
    returns the missing folders, for :func:`make_folders` just before writing."""
    seen = {}
    ins = {Path(p).expanduser().resolve(): label for label, p in (inputs or {}).items() if p}
    for label, p in outputs.items():
        if p.is_dir():
            raise CLIError(f"{label} {p}: is a folder; give a file name (e.g. inside it)")
        r = p.resolve()
        if r in seen:
            raise CLIError(f"{label} {p} and {seen[r][0]} {seen[r][1]} are the same file; "
                           "give them different names")
        if r in ins:
            raise CLIError(f"{label} {p} is the input {ins[r]}; write the result to another file")
        seen[r] = (label, p)
    existing = [f"{p} ({label})" for label, p in outputs.items() if p.exists()]
    if existing and not overwrite:
        raise CLIError(f"will not replace existing file{'s' if len(existing) > 1 else ''} "
                       f"{', '.join(existing)}; {hint}")
    missing = []
    for label, p in outputs.items():
        parent = p.parent
        if not parent.exists():
            ancestor = next(a for a in parent.parents if a.exists())
            if not ancestor.is_dir():
                raise CLIError(f"{label} {p}: {ancestor} is not a folder")
            why = _probe_writable(ancestor)
            if why:
                raise CLIError(f"{label} {p}: the folder {parent} is missing and cannot be created "
                               f"in {ancestor} ({why})")
            if parent not in missing:
                missing.append(parent)
            continue
        if not parent.is_dir():
            raise CLIError(f"{label} {p}: {parent} is not a folder")
        why = _probe_writable(parent)
        if why:
            raise CLIError(f"{label} {p}: cannot write in the folder {parent} ({why}); "
                           "choose a writable place for the output")
    return missing


def make_folders(folders) -> None:
    """Create the missing output folders found by :func:`check_outputs`, saying so."""
    for f in folders:
        if not f.is_dir():
            f.mkdir(parents=True, exist_ok=True)
            print(f"created folder {f}")


def _correct_outputs(args) -> dict:
    """Labelled output paths of ``correct``, checked before any computation."""
    out = Path(args.out).expanduser()
    for flag, p in (("--out", out), ("--sinogram-out", args.sinogram_out)):
        if p is None:
            continue
        if Path(p).expanduser().is_dir():
            raise CLIError(f"{flag} {p}: is a folder; give a file name such as {Path(p) / 'corrected.tif'}")
        if Path(p).suffix.lower() not in _TIFF:
            raise CLIError(f"{flag} {p}: written as a TIFF stack; give a name ending in .tif or .tiff")
    outputs = {"--out": out,
               "--out's uncorrected reference": out.with_name(f"{out.stem}.uncorrected{out.suffix}"),
               "--out's report": out.with_name(out.name + ".report.json")}
    if args.sinogram_out:
        outputs["--sinogram-out"] = Path(args.sinogram_out).expanduser()
    missing = check_outputs(outputs, args.overwrite, {
        "--volume": args.volume, "--sinogram": args.sinogram, "--mask": args.mask,
        "--geometry": args.geometry, "--model": args.model})
    return outputs, missing


def _load_geometry(args, meta: dict):
    """The scan geometry from --geometry or the sinogram file's metadata; every required field
    must be present (nothing is silently defaulted)."""
    from .geometry import geometry_from_dict

    if args.geometry:
        path = Path(args.geometry).expanduser()
        where = f"--geometry {path}"
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise CLIError(_flagged("--geometry", path, e)) from None
        except ValueError as e:
            raise CLIError(f"{where}: not valid JSON ({e})") from None
    elif "geometry" in meta:
        where, d = f"--sinogram {args.sinogram} (the geometry in its metadata)", meta["geometry"]
    else:
        raise CLIError(f"--sinogram {args.sinogram}: the file carries no scan geometry; pass "
                       "--geometry geometry.json (e.g. from napari_lsr.ParallelBeam(...).to_json())")
    if not isinstance(d, dict):
        raise CLIError(f"{where}: a geometry is a JSON object, got {type(d).__name__}")
    try:
        return geometry_from_dict(d), where, (0, 0)
    except (ValueError, TypeError) as e:
        if "does not cover" not in str(e):
            raise CLIError(f"{where}: {e}") from None
    # the image grid is larger than the measured field: extend the detector virtually, the
    # added bins are missing data (mask 0) that LSR fills in (extended-field reconstruction)
    from .geometry import extend_detector
    try:
        geom, n_left, n_right = extend_detector(d)
    except (ValueError, TypeError) as e:
        raise CLIError(f"{where}: {e}") from None
    return geom, where, (n_left, n_right)


def _limited_angle(geom, missing_deg: float, start_deg):
    """Mask with the views in the wedge [start, start + missing) (degrees, mod 360) missing."""
    from .masks import missing_wedge_mask

    try:
        return missing_wedge_mask(geom, missing_deg, start_deg)
    except ValueError as e:
        start = "" if start_deg is None else f" --start-deg {start_deg:g}"
        raise CLIError(f"--missing-deg {missing_deg:g}{start}: {e}") from None


def _option_masks(geom, args) -> list:
    """Sinogram masks asked for by --fom-mm (truncation) and --missing-deg (limited angle)."""
    from .masks import truncation_mask

    out = []
    if args.start_deg is not None and args.missing_deg is None:
        raise CLIError("--start-deg needs --missing-deg (the missing angular range in degrees)")
    if args.fom_mm is not None:
        if not (np.isfinite(args.fom_mm) and args.fom_mm > 0):
            raise CLIError(f"--fom-mm {args.fom_mm:g}: must be a positive diameter in mm")
        out.append(truncation_mask(geom, args.fom_mm))
    if args.missing_deg is not None:
        out.append(_limited_angle(geom, args.missing_deg, args.start_deg))
    return out


def _simulate_volume(args, report):
    """(sinograms, masks, geometry, spacing, crop) simulated from a CT volume."""
    from . import simulate
    from .geometry import FanBeam, ParallelBeam
    from .masks import combine_masks
    from .projector import Projector
    from .units import hu_to_mu

    kind = args.simulate or "truncation"
    if kind == "truncation" and args.fom_mm is None:
        raise CLIError("--simulate truncation needs --fom-mm (field of measurement diameter in mm)")
    if kind == "limited-angle" and args.missing_deg is None:
        raise CLIError("--simulate limited-angle needs --missing-deg (the missing angular range "
                       "in degrees)")
    if args.views < 1:
        raise CLIError(f"--views {args.views}: must be at least 1")
    for flag, value in (("--mask", args.mask), ("--geometry", args.geometry)):
        if value:
            raise CLIError(f"{flag} {value}: applies to --sinogram input; with --volume the scan "
                           "and its mask are simulated (--simulate, --views, --fan, --fom-mm, "
                           "--missing-deg)")
    vol = _read_input_ct("--volume", args.volume)
    if not np.isclose(vol.spacing_mm[1], vol.spacing_mm[2]):
        raise CLIError(f"--volume {args.volume}: pixels are not square ({vol.spacing_mm[1:]} mm); "
                       "resample first")
    hu, crop = _square_volume(vol.hu)
    n, px = hu.shape[-1], float(vol.spacing_mm[2])
    if args.fan:
        sid = max(595.0, 0.8 * n * px)
        gam = np.arcsin(n * px / np.sqrt(2.0) / sid)
        sdd = 1.8 * sid
        geom = FanBeam(image_size=n, pixel_size_mm=px, n_views=args.views, det_spacing_mm=px * sdd / sid,
                       n_det=int(np.ceil(2 * gam * sid / px)) + 3, sid_mm=sid, sdd_mm=sdd)
    else:
        geom = ParallelBeam(image_size=n, pixel_size_mm=px, n_views=args.views,
                            n_det=int(np.ceil(n * np.sqrt(2.0))) | 1, det_spacing_mm=px)
    extra = _option_masks(geom, args)  # option errors before the projector is built
    _print_memory_estimate(geom, report, args.device)
    print(f"simulating {kind} on {hu.shape[0]} slices of {args.volume}")
    if kind == "metal":
        cases = [simulate.simulate_metal(s, geom, seed=args.seed, reconstruct=False) for s in hu]
        sinos = np.stack([c.sinogram for c in cases]).astype(np.float32)
        mask = np.stack([c.mask for c in cases])
        if extra:
            keep = combine_masks(*extra)
            sinos, mask = sinos * keep, mask * keep
    else:
        mask = combine_masks(*extra)
        sinos = Projector(geom).forward(torch.as_tensor(hu_to_mu(hu), dtype=torch.float32)).numpy() * mask
    report["input"] = {"volume": str(args.volume), "simulate": kind, "spacing_mm": list(vol.spacing_mm),
                       "fom_mm": args.fom_mm, "missing_deg": args.missing_deg,
                       "start_deg": None if args.missing_deg is None else
                       float(geom.start_deg if args.start_deg is None else args.start_deg)}
    return sinos, mask, geom, tuple(vol.spacing_mm), crop


def _read_input_ct(flag, path):
    from .data.readers import read_ct

    try:
        return read_ct(path)
    except (ValueError, OSError, ImportError) as e:
        raise CLIError(_flagged(flag, Path(path).expanduser(), e)) from None


def _measured_input(args, report):
    """(sinograms, masks, geometry, spacing) of a measured sinogram stack and its mask."""
    from .masks import combine_masks

    if args.simulate:
        raise CLIError(f"--simulate {args.simulate} needs --volume (a CT volume to simulate from); "
                       "a --sinogram is corrected as it is")
    if args.fan:
        raise CLIError("--fan applies to --volume simulation; a --sinogram's geometry comes from "
                       "--geometry or its metadata")
    sflag = f"--sinogram {args.sinogram}"
    vol = _read_input("--sinogram", args.sinogram, "sinogram", allow_nonfinite=True)
    sinos = vol.hu
    geom, gwhere, (n_left, n_right) = _load_geometry(args, vol.meta)
    measured_shape = (geom.n_views, geom.n_det - n_left - n_right)
    if sinos.shape[-2:] != measured_shape:
        hint = ""
        if sinos.shape[-2:] == geom.sino_shape[::-1]:
            hint = "; the axes look swapped: a sinogram is (slices, views, detector)"
        elif vol.meta.get("units") == "HU":
            hint = "; the file holds an image in HU: pass it as --volume to simulate data from it"
        raise CLIError(f"{sflag}: shape {sinos.shape} does not match {gwhere}, which expects "
                       f"(slices, {measured_shape[0]}, {measured_shape[1]}) (views, detector "
                       f"bins){hint}")
    extended = bool(n_left or n_right)
    if extended:
        from .geometry import pad_sinogram
        sinos, ext_mask = pad_sinogram(sinos, n_left, n_right)
        print(f"the image grid ({geom.image_size} x {geom.pixel_size_mm:g} mm) is larger than the "
              f"field the detector measures: the detector is extended virtually by {n_left} + "
              f"{n_right} bins marked missing, which LSR fills in (extended-field reconstruction)")
        report["detector_extension_bins"] = [n_left, n_right]
    parts = _option_masks(geom, args)
    if extended:
        parts.append(ext_mask)
    mask_label = None
    mask_file = args.mask
    if mask_file is None and vol.meta.get("mask_file") and not parts:
        mask_file = str(Path(args.sinogram).expanduser().with_name(vol.meta["mask_file"]))
        print(f"using the mask {mask_file} named in the sinogram's sidecar")
    if mask_file:
        mask_label = f"--mask {mask_file}" if args.mask else f"mask {mask_file} (from the sidecar)"
        m = _read_input("--mask" if args.mask else "sidecar mask", mask_file, "mask").hu
        if m.shape[1:] != measured_shape or m.shape[0] not in (1, sinos.shape[0]):
            raise CLIError(f"{mask_label}: shape {m.shape} does not match {sflag} "
                           f"{(sinos.shape[0], *measured_shape)}")
        if extended:
            m = np.pad(m, [(0, 0), (0, 0), (n_left, n_right)], constant_values=0)
        if m.shape[0] == 1 and sinos.shape[0] > 1:
            m = m[0]  # one mask for every slice
        if not np.isin(m, (0.0, 1.0)).all():
            raise CLIError(f"{mask_label}: values must be 1 (valid) or 0 (missing); found values in "
                           f"[{m.min():g}, {m.max():g}] (e.g. save (m > 0).astype('float32'))")
        parts.insert(0, m)
    if not parts:
        raise CLIError("no validity mask: pass --mask FILE (1 = valid, 0 = missing), --fom-mm for "
                       "a truncation mask or --missing-deg for a limited-angle mask")
    mask = combine_masks(*parts)
    valid = np.broadcast_to(mask, sinos.shape) == 1
    bad = valid & ~np.isfinite(sinos)
    if bad.any():
        where = mask_label or "the mask"
        raise CLIError(f"{sflag}: {int(bad.sum())} NaN/inf values where {where} says the data "
                       "are valid (1); mark them 0 in the mask (NaN is accepted in the missing "
                       "part) or repair the data")
    per_slice = valid.reshape(len(sinos), -1)
    for test, what in ((~per_slice.any(1), "no valid (1) entries: no measured data to fit"),
                       (per_slice.all(1), "no missing (0) entries: nothing to correct")):
        if test.any():
            idx = np.flatnonzero(test).tolist()
            raise CLIError(f"{mask_label or 'the mask'}: slice{'s' if len(idx) > 1 else ''} "
                           f"{_slice_ranges(idx)} of {sflag} {'have' if len(idx) > 1 else 'has'} {what}")
    report["input"] = {"sinogram": str(args.sinogram), "mask": mask_file, "geometry_from": gwhere,
                       "fom_mm": args.fom_mm, "missing_deg": args.missing_deg,
                       "nonfinite_values_in_missing_part": int((~np.isfinite(sinos)).sum())}
    spacing = (float(vol.spacing_mm[0]), geom.pixel_size_mm, geom.pixel_size_mm)
    _print_memory_estimate(geom, report, args.device)
    return sinos, mask, geom, spacing, None


def _print_memory_estimate(geom, report: dict, device=None) -> None:
    """Print (and report) the projector's memory estimate, made before anything is built;
    a projector that cannot fit is refused here, before any data are simulated or fitted."""
    from . import projector
    from .lsr import resolve_device

    estimate = getattr(projector, "estimate_projector_memory", None)
    dev = resolve_device(device)  # a missing GPU is an error now, not after the set-up
    if estimate is None:
        return
    try:
        est = estimate(geom, device=dev)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run by itself
        print(f"projector memory estimate unavailable ({e})")
        return
    print(f"projector memory estimate: {est.summary() if hasattr(est, 'summary') else est}", flush=True)
    peak = getattr(est, "peak_bytes", None)
    if peak is not None:
        report["projector_memory_estimate_mb"] = peak / 1e6
        report["projector_method"] = getattr(est, "method", None)
    if getattr(est, "fits", True) is False:
        raise CLIError(f"the projector for {geom.n_views} views x {geom.n_det} bins on a "
                       f"{geom.image_size}^2 grid needs about {peak / 1e9:.2f} GB, more than the "
                       "memory available; use fewer --views, a coarser grid or --device cuda")


def _slice_ranges(idx) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    idx, parts = sorted(idx), []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(parts)


def _fit_line(fit) -> str:
    rel = getattr(fit, "relative_residual", float("nan"))
    data_rms = getattr(fit, "data_rms", 0.0) or 0.0
    noise = getattr(fit, "noise_rms", float("nan"))
    noise_txt = f", noise {100 * noise / data_rms:.1f} %" if data_rms else ""
    return (f"{getattr(fit, 'steps', '?')} steps ({getattr(fit, 'stop_reason', '?')}), residual "
            f"{100 * rel:.1f} % of the data{noise_txt}, misfit {getattr(fit, 'misfit', float('nan')):.3g}")


def print_fit_reports(fits, names=None, many: int = 12) -> None:
    """One line per slice (a compact summary for more than ``many``) on stdout, then every
    distinct warning once, with the slices it concerns, on stderr prefixed 'warning:'.
    ``names`` labels the fits (default: "slice <i>")."""
    fits = [f for f in fits if f is not None]
    if not fits:
        return
    if names is None and len(fits) > many:
        reasons = {}
        for f in fits:
            r = getattr(f, "stop_reason", "?")
            reasons[r] = reasons.get(r, 0) + 1
        rel = np.array([getattr(f, "relative_residual", np.nan) for f in fits], float)
        worst = int(np.nanargmax(rel)) if np.isfinite(rel).any() else 0
        print(f"  fit: {len(fits)} slices, " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
              + f"; residual median {100 * np.nanmedian(rel):.1f} %, worst {100 * rel[worst]:.1f} % "
              f"(slice {worst}); per-slice numbers in the report")
    else:
        for i, f in enumerate(fits):
            print(f"  fit {names[i] if names else f'slice {i}'}: {_fit_line(f)}")
    by_kind = {}  # the same warning with other numbers is one kind
    for i, f in enumerate(fits):
        for w in getattr(f, "warnings", None) or []:
            by_kind.setdefault(re.sub(r"\d+(\.\d+)?", "#", w), []).append((i, w))
    for items in by_kind.values():
        idx = [i for i, _ in items]
        if names:
            where = ", ".join(names[i] for i in idx)
        else:
            where = ("slice " if len(idx) == 1 else "slices ") + _slice_ranges(idx)
        text = items[0][1]
        if len({w for _, w in items}) > 1:
            text += f" (numbers for {names[idx[0]] if names else f'slice {idx[0]}'}; each slice's in the report)"
        print(f"warning: {where}: {text}", file=sys.stderr, flush=True)


def _fit_dicts(fits) -> list:
    return [f.to_dict() if hasattr(f, "to_dict") else dict(vars(f)) for f in fits]


def run_correct(args) -> int:
    from .baselines import reconstruct_hu
    from .data.readers import write_tiff
    from .data.sinogram_io import write_json
    from .lsr import lsr_correct_volume
    from .model import load_model

    t_start = time.perf_counter()
    outputs, missing_folders = _correct_outputs(args)  # every output is checked before any work
    try:
        model = load_model(args.model)
    except (ValueError, OSError) as e:
        raise CLIError(_flagged("--model", args.model, e) if args.model else f"bundled prior: {e}") from None
    report = {"command": "correct", "napari_lsr_version": _version(), "units": dict(REPORT_UNITS),
              "input": {}, "settings": {k: v for k, v in vars(args).items() if k != "func"},
              "z_weight_cold": _z_weight(args.z_weight, warm=False),
              "z_weight_warm": _z_weight(args.z_weight, warm=True)}
    if args.volume:
        sinos, mask, geom, spacing, crop = _simulate_volume(args, report)
    else:
        sinos, mask, geom, spacing, crop = _measured_input(args, report)
    total = args.steps + args.lbfgs_steps
    with _CtrlC() as ctrl_c:
        res = lsr_correct_volume(sinos, mask, geom, model=model, steps=args.steps,
                                 warm_steps=args.warm_steps, lbfgs_steps=args.lbfgs_steps,
                                 batch_size=args.batch_size, device=args.device, seed=args.seed,
                                 join=not args.no_join, fbp_filter=FBP_FILTER,
                                 z_weight=args.z_weight, precision=args.precision,
                                 cold_start=args.cold_start,
                                 callback=_progress_printer("LSR", total, abort=ctrl_c.event))
    done = int(res.slices_done)
    if res.stopped:
        if done == 0:
            print("aborted before the first slice was finished; nothing written", file=sys.stderr)
            return 130
        print(f"aborted: writing the {done} finished slice(s) of {len(sinos)}", file=sys.stderr)
        sinos = sinos[:done]
        report["aborted_after_slices"] = done
    uncorrected = reconstruct_hu(np.where(np.isfinite(sinos), sinos, 0.0).astype(np.float32), geom,
                                 filter=FBP_FILTER)
    image = res.image_hu[:done]
    if crop is not None:
        image, uncorrected = image[:, crop[0], crop[1]], uncorrected[:, crop[0], crop[1]]
    meta = {"geometry": geom.to_dict(), "units": "HU", "fbp_filter": FBP_FILTER}
    make_folders(missing_folders)
    write_tiff(outputs["--out"], image, spacing, metadata={**meta, "method": "LSR"}, overwrite=args.overwrite)
    unc_path = outputs["--out's uncorrected reference"]
    write_tiff(unc_path, uncorrected, spacing, overwrite=args.overwrite,
               metadata={**meta, "method": "uncorrected FBP (missing data as measured, NaN as 0)"})
    if args.sinogram_out:
        write_tiff(outputs["--sinogram-out"], res.sinogram[:done], (spacing[0], 1.0, geom.det_spacing_mm),
                   metadata={"geometry": geom.to_dict(), "units": "line integral"}, overwrite=args.overwrite)
    fits = list(getattr(res, "fits", None) or [])
    report.update(geometry=geom.to_dict(), slices=int(res.slices_done), fbp_filter=FBP_FILTER,
                  outputs={"corrected": str(outputs["--out"]), "uncorrected": str(unc_path),
                           "sinogram": str(outputs["--sinogram-out"]) if args.sinogram_out else None},
                  seconds_per_slice_s=res.seconds_per_slice,
                  final_loss=[h[-1] for h in res.loss_history], steps_run=[len(h) for h in res.loss_history],
                  fits=_fit_dicts(fits), fit_ok=all(getattr(f, "ok", True) for f in fits),
                  seconds_total_s=time.perf_counter() - t_start)
    report_path = outputs["--out's report"]
    write_json(report_path, _jsonable(report), overwrite=args.overwrite)
    print_fit_reports(fits)
    print(f"wrote {outputs['--out']} (LSR), {unc_path} (uncorrected, for comparison)"
          + (f", {outputs['--sinogram-out']}" if args.sinogram_out else "") + f" and {report_path}")
    return 0


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .evaluate import add_evaluate_arguments, run_evaluate
    from .train import add_train_arguments, run_train

    parser = _Parser(prog="napari-lsr", description="Latent Space Reconstruction for CT "
                     "missing-data artifacts (truncation, metal, limited angle).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="bundled sample through truncation and metal correction")
    demo.add_argument("--out", default="out/demo", help="output folder; when it is not empty a free "
                      "sibling (out/demo-1, ...) is used, nothing is overwritten (default: %(default)s)")
    demo.add_argument("--model", default=None, help="prior checkpoint (default: the bundled prior)")
    demo.add_argument("--steps", type=int, default=150, help="Adam steps per task")
    demo.add_argument("--lbfgs-steps", type=int, default=10, help="L-BFGS steps after Adam")
    demo.add_argument("--device", default=None, help="cpu, cuda or auto (default: cpu)")
    demo.set_defaults(func=run_demo)

    cor = sub.add_parser("correct", help="correct a sinogram stack (or simulate from a CT volume) with LSR")
    src = cor.add_mutually_exclusive_group(required=True)
    src.add_argument("--volume", help="CT volume (TIFF, NPY, DICOM file/folder) to simulate data from; "
                     "this or --sinogram is required (no default)")
    src.add_argument("--sinogram", help="sinogram stack (TIFF/NPY), (slices, views, detector), line "
                     "integrals; NaN/inf are accepted where the mask is 0; this or --volume is "
                     "required (no default)")
    cor.add_argument("--simulate", choices=["truncation", "metal", "limited-angle"], default=None,
                     help="with --volume: what to simulate (default: truncation)")
    cor.add_argument("--fom-mm", type=float, default=None, help="field of measurement diameter in mm: "
                     "simulates truncation / makes a truncation mask (default: none)")
    cor.add_argument("--missing-deg", type=float, default=None, help="limited angle: the missing "
                     "angular range in degrees, from --start-deg on (default: none)")
    cor.add_argument("--start-deg", type=float, default=None, help="limited angle: where the missing "
                     "range starts, degrees (default: the first view's angle)")
    cor.add_argument("--views", type=int, default=360, help="views when simulating")
    cor.add_argument("--fan", action="store_true", help="simulate fan-beam instead of parallel-beam data")
    cor.add_argument("--mask", help="validity mask file, 1 = valid, 0 = missing (same shape as the "
                     "sinogram or one slice; default: the mask named in a sinogram sidecar, else "
                     "from --fom-mm / --missing-deg)")
    cor.add_argument("--geometry", help="geometry JSON with every field given (default: from the "
                     "sinogram file's metadata)")
    cor.add_argument("--out", required=True, help="corrected TIFF stack (.tif); <stem>.uncorrected.tif "
                     "(plain FBP, to compare) and <out>.report.json are written beside it; missing "
                     "folders are created")
    cor.add_argument("--sinogram-out", default=None, help="also write the completed sinogram stack "
                     "here (.tif; default: not written)")
    cor.add_argument("--overwrite", action="store_true", help="allow replacing existing output files")
    cor.add_argument("--model", default=None, help="prior checkpoint (default: the bundled prior)")
    cor.add_argument("--steps", type=int, default=500, help="Adam steps for the first (cold) slice")
    cor.add_argument("--warm-steps", type=int, default=50, help="Adam steps for warm-started slices")
    cor.add_argument("--lbfgs-steps", type=int, default=20, help="L-BFGS steps after Adam, per slice")
    cor.add_argument("--batch-size", type=int, default=1, help="slices optimised together")
    cor.add_argument("--z-weight", type=float, default=None,
                     help="weight of LSR's latent prior term z_weight * mean(z^2); 0 = none "
                     f"(default: {DEFAULT_Z_WEIGHT:g} for a cold start, {WARM_Z_WEIGHT:g} for the "
                     "warm-started slices of a volume)")
    cor.add_argument("--precision", default="auto", choices=PRECISIONS,
                     help="decoder arithmetic in the Adam steps: bfloat16 is ~1.2x faster where "
                     "the hardware has it (auto: then); L-BFGS and the images stay float32")
    cor.add_argument("--cold-start", default=DEFAULT_COLD_START, choices=COLD_STARTS,
                     help="where the first slice's fit starts: random (near the average slice) "
                     "or encoder (the prior's encoder applied to the classical correction) "
                     "(default: %(default)s)")
    cor.add_argument("--no-join", action="store_true", help="skip the smooth-join correction")
    cor.add_argument("--device", default=None, help="cpu, cuda or auto (default: cpu)")
    cor.add_argument("--seed", type=int, default=0, help="random seed (start latent, simulated noise)")
    cor.set_defaults(func=run_correct)

    tr = sub.add_parser("train", help="train a prior on phantoms and/or your own CT data")
    add_train_arguments(tr)
    tr.set_defaults(func=run_train)

    ev = sub.add_parser("evaluate", help="Table-1 style evaluation against baselines on held-out data")
    add_evaluate_arguments(ev)
    ev.set_defaults(func=run_evaluate)

    vw = sub.add_parser("view", help="open napari with the plugin's docks and a sample (or FILE)")
    vw.add_argument("path", nargs="?", default=None,
                    help="CT volume (TIFF, NPY, DICOM file/folder) or sinogram file to open")
    vw.add_argument("--sample", choices=["truncation", "metal", "ct", "none"], default="truncation",
                    help="sample to open when no FILE is given (default: truncation)")
    vw.set_defaults(func=run_view)
    return parser


def run_view(args) -> int:
    from ._viewer import run_view as view

    return view(args.path, sample=args.sample)


def _oom_text(err: BaseException) -> str:
    if isinstance(err, ValueError) and str(err):  # a refusal that explains itself (the projector's)
        return str(err)
    return (f"out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}); use "
            "fewer slices, a smaller --batch-size, fewer --views or a smaller image grid, or a "
            "machine with more memory")


class _StderrWarnings(logging.Handler):
    """The library's log warnings on the current stderr as ``warning: ...``."""

    def emit(self, record):
        try:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


def _show_library_warnings() -> None:
    log = logging.getLogger("napari_lsr")
    if not any(isinstance(h, _StderrWarnings) for h in log.handlers):
        log.addHandler(_StderrWarnings(logging.WARNING))


def main(argv=None) -> int:
    """Entry point of ``napari-lsr``. User errors (bad input, files, memory) print
    ``error: ...`` and return 2; warnings (``warning: ...`` on stderr) do not change the exit
    status."""
    args = build_parser().parse_args(argv)
    _show_library_warnings()
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        message = str(e)
    except (MemoryError, torch.OutOfMemoryError) as e:
        message = _oom_text(e)
    except (ValueError, OSError) as e:  # the library's errors about the user's data and files
        message = _error_text(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
