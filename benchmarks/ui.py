"""UI responsiveness of the napari plugin during an LSR run (real napari window under Xvfb).

Opens napari with the plugin's widgets docked, loads the truncated-sinogram sample (one
256 x 256 phantom slice, 360 views; this also builds the projector, as a user's first
action would), loads the prior (bundled default if present, else an untrained VAE at 256),
then presses Run and measures, while the engine optimises in its worker thread:

* the latency of a 10 ms QTimer in the GUI thread (actual interval - 10 ms): p50/p95/max;
  target p95 <= 100 ms;
* the time from Run to the first loss point in the plot (target <= 1 s, model loaded) and
  to the engine's first step;
* plot redraws per second (steady ~5 Hz, not one per step) and steps per second;
* the plugin's own share of the first-point time (Run -> engine call, engine's first step ->
  plot) and, for comparison, the engine's step times without the GUI (same process, after).

    xvfb-run -a python benchmarks/ui.py [--seconds 20] [--screenshot docs/screenshot.png]

(re-executes itself under ``xvfb-run`` when no display is set). Writes
benchmarks/results/ui.json; ``--screenshot`` saves the whole window mid-run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ui.json"


def _percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to measure the run")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None,
                    help="prior checkpoint (default: the bundled one, else an untrained VAE)")
    ap.add_argument("--screenshot-after", type=int, default=30, help="steps before the screenshot")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *sys.argv]
        sys.exit(subprocess.call(cmd))
    os.environ.pop("QT_QPA_PLATFORM", None)  # the real xcb window, not offscreen

    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_lsr._sample_data import truncated_sinogram
    from napari_lsr._widgets import AcquireWidget, ExportWidget, LSRWidget, MaskWidget
    from napari_lsr._widgets._common import add_layer
    from napari_lsr._widgets.lsr import DEFAULT_MODEL, MODEL_FILE
    from napari_lsr.model import DEFAULT_PATH, VAE, VAEConfig, save_checkpoint

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(title="napari-lsr", show=True)
    viewer.window._qt_window.resize(1366, 768)  # a laptop screen
    acquire, mask_w, export = AcquireWidget(viewer), MaskWidget(viewer), ExportWidget(viewer)
    lsr_w = LSRWidget(viewer)
    viewer.window.add_dock_widget(lsr_w, name="LSR correction", area="right")
    viewer.window.add_dock_widget(export, name="Export", area="left")
    viewer.window.add_dock_widget(mask_w, name="Metal mask", area="left", tabify=True)
    viewer.window.add_dock_widget(acquire, name="Acquire / simulate", area="left", tabify=True)
    app = QApplication.instance()

    t0 = time.perf_counter()
    layers = truncated_sinogram(n_slices=1)
    t_sample = time.perf_counter() - t0
    added = [add_layer(viewer, ld) for ld in layers]  # the sample: image, sinogram, mask, FBP
    sino = next(layer for layer in added if layer.metadata.get("units") == "line integral")
    mask = next(layer for layer in added if "valid" in str(layer.metadata.get("units", "")))
    viewer.reset_view()
    app.processEvents()

    if args.model is not None:
        model_desc = f"prior checkpoint {args.model}"
        lsr_w.model.value = MODEL_FILE
        lsr_w.model_path.value = args.model
    elif DEFAULT_PATH.is_file():
        model_desc = f"bundled default prior ({DEFAULT_PATH.name})"
        lsr_w.model.value = DEFAULT_MODEL
    else:
        torch.manual_seed(0)
        ckpt = Path(tempfile.mkdtemp()) / "untrained_256.pt"
        save_checkpoint(VAE(VAEConfig(image_size=256)), ckpt, {"note": "untrained, benchmark"})
        model_desc = "untrained VAE, VAEConfig(image_size=256) defaults (no default prior yet)"
        lsr_w.model.value = MODEL_FILE
        lsr_w.model_path.value = ckpt
    t0 = time.perf_counter()
    lsr_w.preload_model()
    t_model = time.perf_counter() - t0
    lsr_w.reset_choices()
    lsr_w.sinogram.value, lsr_w.mask.value = sino, mask
    lsr_w.device.value = "cpu"
    lsr_w.steps.value = args.steps
    app.processEvents()

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    shot = {}

    def maybe_screenshot():
        if args.screenshot and "done" not in shot and lsr_w._buf.count >= args.screenshot_after:
            shot["done"] = True
            shot["t0"] = time.perf_counter()
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            viewer.reset_view()
            app.processEvents()
            viewer.screenshot(str(args.screenshot), canvas_only=False)
            shot["t1"] = time.perf_counter()

    timer.timeout.connect(maybe_screenshot)
    load_before = os.getloadavg()
    timer.start()
    t_idle = time.perf_counter()
    while time.perf_counter() - t_idle < 3.0:  # baseline: the same loop, nothing running
        app.processEvents()
        time.sleep(0.001)
    idle_ticks = [t for t in ticks if t >= t_idle]
    t_run = time.perf_counter()
    worker = lsr_w.run()
    assert worker is not None, "LSR did not start"
    while time.perf_counter() - t_run < args.seconds and lsr_w.worker is not None:
        app.processEvents()
        time.sleep(0.001)
    steps_in_window = lsr_w._buf.count
    draws = lsr_w.plot.draw_count
    elapsed = time.perf_counter() - t_run
    if args.screenshot and "done" not in shot:
        viewer.screenshot(str(args.screenshot), canvas_only=False)
    lsr_w.abort()
    t_abort = time.perf_counter()
    while lsr_w.worker is not None and time.perf_counter() - t_abort < 60:
        app.processEvents()
        time.sleep(0.001)
    t_abort = time.perf_counter() - t_abort
    timer.stop()

    # the same engine call without the GUI (main thread, viewer idle), for comparison
    from napari_lsr import lsr_correct
    from napari_lsr._widgets._common import layer_geometry
    geom = layer_geometry(sino)
    t0, engine_steps = time.perf_counter(), []
    lsr_correct(sino.data[0], mask.data[0], geom, model=lsr_w.load_model(lsr_w._model_key()),
                steps=3, lbfgs_steps=0, device="cpu",
                callback=lambda s, l, p: engine_steps.append(time.perf_counter() - t0))

    run_ticks = [t for t in ticks if t_run <= t <= t_run + elapsed]
    # the screenshot (taken from a timer tick) blocks the loop by itself: leave it out
    pairs = [(a, (b - a) * 1000 - 10.0) for a, b in zip(run_ticks, run_ticks[1:])
             if not (shot.get("t0", 0) - 0.02 <= a <= shot.get("t1", 0))]
    lat_ms = [lat for _, lat in pairs]
    worst = sorted(pairs, key=lambda p: -p[1])[:3]
    idle_ms = [(b - a) * 1000 - 10.0 for a, b in zip(idle_ticks, idle_ticks[1:])]
    buf = lsr_w._buf
    res = {
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "napari": napari.__version__, "device": "cpu", "display": "Xvfb",
                    "load_average_1_5_15min_before_run": [round(x, 2) for x in load_before],
                    "note": "2 shared cores; other jobs (prior training, test suites) were running"},
        "model": model_desc,
        "geometry": geom.to_dict(),
        "sample_seconds_incl_projector_build": round(t_sample, 2),
        "model_load_seconds": round(t_model, 2),
        "measured_seconds": round(elapsed, 2),
        "timer_10ms": {"ticks": len(run_ticks),
                       "latency_p50_ms": round(statistics.median(lat_ms), 2),
                       "latency_p95_ms": round(_percentile(lat_ms, 95), 2),
                       "latency_max_ms": round(max(lat_ms), 2),
                       "worst_3_at_s_after_run": [[round(a - t_run, 2), round(lat, 1)] for a, lat in worst],
                       "target_p95_ms": 100.0,
                       "idle_baseline_p50_p95_ms": [round(statistics.median(idle_ms), 2),
                                                    round(_percentile(idle_ms, 95), 2)]},
        "first_engine_step_s": round(buf.first_step_time - t_run, 3) if buf.first_step_time else None,
        "first_loss_point_in_plot_s": round(buf.first_point_time - t_run, 3) if buf.first_point_time else None,
        "target_first_point_s": 1.0,
        "plugin_overhead_s": {
            "run_to_engine_call": round(buf.work_start_time - t_run, 3) if buf.work_start_time else None,
            "engine_first_step_to_plot": round(buf.first_point_time - buf.first_step_time, 3)
            if buf.first_point_time and buf.first_step_time else None},
        "engine_only_step_times_s": [round(t, 3) for t in engine_steps],
        "steps": steps_in_window,
        "steps_per_s": round(steps_in_window / elapsed, 2),
        "plot_redraws": draws,
        "plot_redraws_per_s": round(draws / elapsed, 2),
        "abort_to_worker_end_s": round(t_abort, 3),
        "screenshot": str(args.screenshot) if args.screenshot else None,
        "command": "python benchmarks/ui.py " + " ".join(sys.argv[1:]),
    }
    res["pass"] = bool(res["timer_10ms"]["latency_p95_ms"] <= 100.0 and
                       res["first_loss_point_in_plot_s"] is not None and
                       res["first_loss_point_in_plot_s"] <= 1.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    viewer.close()


if __name__ == "__main__":
    main()
