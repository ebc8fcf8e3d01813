"""LSR widget: run ``lsr_correct`` / ``lsr_correct_volume`` in a napari thread worker with a
live loss plot, a progress bar, a live preview of the prior's image, and Abort.

Responsiveness: the engine's callback (worker thread) only appends to a locked buffer and
checks the abort flag; a QTimer in the GUI thread drains the buffer at a steady 5 Hz (20 Hz
until the first point, so that one shows at once), redraws the plot, moves the progress bar
and updates the preview layer. So the event loop never receives one signal per step, however
fast the steps are (and the plot redraws only its curve between rare axis changes). Abort
sets the flag (the callback returns True, the engine stops after the current step) and quits
the worker.
Results arrive as NEW layers with unique names; nothing existing is overwritten: the corrected
image on top (in the viewer's CT window), the completed sinogram beside it, the prior's image
hidden below. The status line says how a run ended: done (steps used, final loss, why it
stopped), aborted, or failed (in red, with the reason; the progress bar is not filled).

Closing the dock or the viewer (or quitting napari) during a run aborts it and waits for the
worker thread (at most ``STOP_TIMEOUT_S``), so no worker outlives its widgets."""

from __future__ import annotations

import threading
import time
import warnings
from types import SimpleNamespace

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from napari.qt.threading import thread_worker
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import QApplication, QHBoxLayout, QLabel, QProgressBar, QPushButton
from superqt import QCollapsible

from ._common import (add_layer, connect_layer_events, image_layer, layer_choices,
                      layer_geometry, layer_kind, layer_spacing, pick, show_error, show_info,
                      show_warning, sinogram_layer, window_combo)
from ..lsr import COLD_STARTS, DEFAULT_COLD_START, PLATEAU_PATIENCE, PLATEAU_TOL
from ._panel import ScrollPanel
from .loss_plot import LossPlot

DEFAULT_MODEL = "bundled default"
MODEL_FILE = "file..."
REFRESH_MS = 200  # 5 Hz
FIRST_POINT_MS = 50  # poll faster until the first loss point has been shown
STOP_TIMEOUT_S = 10.0  # closing: wait this long for the worker to stop after the abort flag
STATUS_COLOURS = {"failed": "#ff6b6b", "aborted": "#ffb347", "done": "#8fd18f"}


def engine_accepts(name: str) -> bool:
    """Whether ``lsr_correct`` takes the keyword ``name`` (the engine grows options)."""
    import inspect

    from .. import lsr_correct

    return name in inspect.signature(lsr_correct).parameters


def run_engine(sino, mask, geom, model, opts: dict, warm_steps, callback):
    """The library calls behind Run (worker thread). One sinogram -> ``lsr_correct``; a stack
    with ``warm_steps`` -> ``lsr_correct_volume`` (warm starts); a stack without -> one cold
    ``lsr_correct`` per slice. ``callback(slice, step, loss, preview_hu)`` returns True to stop.
    Returns the engine's result (``.stopped`` True when stopped)."""
    from .. import lsr_correct, lsr_correct_volume

    if sino.ndim == 2:
        return lsr_correct(sino, mask, geom, model=model,
                           callback=lambda s, l, p: callback(0, s, l, p), **opts)
    if warm_steps is not None:
        return lsr_correct_volume(sino, mask, geom, model=model, warm_steps=warm_steps,
                                  callback=callback, **opts)
    results = []
    for k in range(sino.shape[0]):
        r = lsr_correct(sino[k], mask[k] if mask.ndim == 3 else mask, geom, model=model,
                        callback=lambda s, l, p, k=k: callback(k, s, l, p), **opts)
        if r.stopped:
            return SimpleNamespace(stopped=True)
        results.append(r)
    return SimpleNamespace(
        stopped=False, image_hu=np.stack([r.image_hu for r in results]),
        generated_hu=np.stack([r.generated_hu for r in results]),
        sinogram=np.stack([r.sinogram for r in results]),
        loss_history=[r.loss_history for r in results],
        fits=[r.fit for r in results if getattr(r, "fit", None) is not None])


def describe_stop(res, steps_used: int, total: int, opts: dict) -> tuple[str, list]:
    """Why a finished run stopped, in words, and the engine's warnings about the fit. Uses
    the engine's fit reports (``res.fit`` / ``res.fits``) when it gives them, else the step
    count against the budget."""
    fits = list(getattr(res, "fits", None) or [])
    if not fits and getattr(res, "fit", None) is not None:
        fits = [res.fit]
    warnings_ = []
    for f in fits:
        warnings_ += [w for w in getattr(f, "warnings", []) if w not in warnings_]
    if len(fits) == 1:
        f = fits[0]
        return (getattr(f, "stop_detail", "") or str(f.stop_reason)), warnings_
    if fits:
        counts = {}
        for f in fits:
            counts[f.stop_reason] = counts.get(f.stop_reason, 0) + 1
        parts = ", ".join(f"{reason} on {n}" for reason, n in counts.items())
        return f"{parts} of {len(fits)} slices", warnings_
    if steps_used < total and opts.get("early_stop", True) and "tol" in opts:
        return (f"stopped early: loss gain below {opts['tol'] * 100:g} % over "
                f"{opts['patience']} steps"), warnings_
    return "all steps used" if steps_used >= total else "stopped early", warnings_


class _Progress:
    """Thread-safe buffer between the engine callback and the GUI timer."""

    def __init__(self, preview_every: int):
        self.lock = threading.Lock()
        self.losses: list[float] = []
        self.preview = None
        self.count = 0           # steps reported so far (all slices)
        self.slice = 0
        self.work_start_time = None   # perf_counter when the worker thread began
        self.first_step_time = None   # perf_counter of the engine's first callback
        self.first_point_time = None  # perf_counter when the GUI first drew a loss point
        self.preview_every = max(1, int(preview_every))

    def add(self, slice_index: int, loss: float, preview_hu):
        with self.lock:
            self.count += 1
            if self.count == 1:
                self.first_step_time = time.perf_counter()
            self.slice = slice_index
            self.losses.append(loss)
            if self.count == 1 or self.count % self.preview_every == 0:
                self.preview = preview_hu

    def take(self):
        with self.lock:
            losses, preview = self.losses, self.preview
            self.losses, self.preview = [], None
            return losses, preview, self.count, self.slice


class _RunState:
    """What the closing hooks need, kept off the widget (they may run while it is deleted):
    the abort flag, the worker and an event set in the worker thread when it has finished."""

    def __init__(self):
        self.abort = threading.Event()
        self.finished = threading.Event()
        self.finished.set()
        self.worker = None
        self.closing = False  # the widget is being deleted: GUI slots must not touch it

    def start(self, worker):
        self.abort.clear()
        self.finished.clear()
        self.worker = worker
        self.closing = False
        # direct: set in the worker thread, so a blocked GUI thread can wait for it
        worker.finished.connect(self.finished.set, Qt.ConnectionType.DirectConnection)

    def stop(self) -> bool:
        """True when the run should stop (abort pressed, or the worker asked to quit, e.g.
        by ``WorkerBase.await_workers``)."""
        worker = self.worker
        return self.abort.is_set() or (worker is not None and worker.abort_requested)

    def shutdown(self, *_, final: bool = True, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Abort the run and wait for its worker thread: the dock was closed (``final``
        False: the widget lives on, its slots still run) or the widget, the viewer's window
        or the application is going away (``final``). True when no worker is left running."""
        if final:
            self.closing = True
        worker = self.worker
        if worker is None or self.finished.is_set():
            return True
        self.abort.set()
        try:
            worker.quit()
        except RuntimeError:
            pass
        if self.finished.wait(timeout_s):
            return True
        warnings.warn(f"napari-lsr: the LSR worker did not stop within {timeout_s:g} s of "
                      "closing (the current step is still running)", RuntimeWarning, stacklevel=2)
        return False


class LSRWidget(ScrollPanel):
    """Sinogram + mask layers -> LSR-corrected image, prior image and completed sinogram."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        v = napari_viewer
        self.sinogram = ComboBox(label="sinogram", choices=layer_choices(v, "sinogram"))
        self.mask = ComboBox(label="mask (1 = valid)", choices=layer_choices(v, "sinogram_mask"))
        self.model = ComboBox(label="prior", choices=[DEFAULT_MODEL, MODEL_FILE], value=DEFAULT_MODEL)
        self.model_path = FileEdit(label="prior file", mode="r", filter="*.pt", visible=False)
        self.steps = SpinBox(label="Adam steps (max)", min=0, max=100000, value=500,
                             tooltip="at most this many; Adam stops early when the fit reaches "
                                     "the noise level of the data or stalls")
        self.lbfgs_steps = SpinBox(label="L-BFGS steps", min=0, max=10000, value=20)
        self.slices = ComboBox(label="slices", choices=["current slice", "all slices"],
                               value="all slices")
        self.warm_start = CheckBox(text="warm start across slices", value=True)
        self.warm_steps = SpinBox(label="Adam steps (warm, max)", min=0, max=100000, value=50)
        self.params = Container(widgets=[
            self.sinogram, self.mask, self.model, self.model_path, self.steps,
            self.lbfgs_steps, self.slices, self.warm_start, self.warm_steps])
        # less used settings, collapsed by default
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.early_stop = CheckBox(text="stop early when the loss stalls", value=True)
        self.tol_pct = FloatSpinBox(label="stalled: gain below (%)", min=0.0, max=100.0,
                                    step=0.001, value=100.0 * PLATEAU_TOL)
        self.patience = SpinBox(label="stalled: over (steps)", min=1, max=100000,
                                value=PLATEAU_PATIENCE)
        self.preview_every = SpinBox(label="preview every (steps)", min=1, max=1000, value=10)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.cold_start = ComboBox(
            label="cold start", choices=list(COLD_STARTS), value=DEFAULT_COLD_START,
            tooltip="where a slice without a neighbour's z starts: random (near the average "
                    "slice) or encoder (the prior's encoding of the classical correction)")
        self.more = Container(widgets=[self.device, self.early_stop, self.tol_pct,
                                       self.patience, self.preview_every, self.seed,
                                       self.cold_start])
        self.more_section = QCollapsible("More settings")
        self.more_section.addWidget(self.more.native)
        self.model.changed.connect(lambda val: setattr(self.model_path, "visible", val == MODEL_FILE))
        self.warm_start.changed.connect(lambda val: setattr(self.warm_steps, "enabled", val))
        self.early_stop.changed.connect(self._early_stop_changed)

        self.run_button = QPushButton("Run")
        self.abort_button = QPushButton("Abort")
        self.abort_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.abort_button.clicked.connect(self.abort)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.state = "ready"  # ready | running | done | aborted | failed
        # A plain Qt bar, not napari.utils.progress: napari's activity indicator is an
        # animated GIF whose frames repaint the whole (OpenGL-composited) window ~40 times a
        # second; with software OpenGL that took half the GUI thread (benchmarks/ui.py).
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.view_options = Container(widgets=[window_combo(v)])
        self.ct_window = self.view_options[0]
        self.plot = LossPlot(self)

        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.abort_button)
        self.add(self.params)
        self.add(self.more_section)
        self.add(buttons)
        self.add(self.progress_bar)
        self.add(self.status)
        self.add(self.plot, stretch=1)
        self.add(self.view_options)

        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self._drain)
        self.worker = None
        self.preview_layer = None
        self._preview_for = None
        self._pending_preview = None
        self._error = None
        self._plan = None
        self.run_started = None
        self._run = _RunState()
        self._abort = self._run.abort
        self._buf = _Progress(10)
        self._models = {}
        connect_layer_events(v, self.params, self._layer_inserted)
        self._install_close_hooks()

    def reset_choices(self, *_):
        self.params.reset_choices()

    def _early_stop_changed(self, on):
        self.tol_pct.enabled = self.patience.enabled = bool(on)

    def _layer_inserted(self, layer):
        """A new sinogram (not an LSR result) or mask becomes the input."""
        if self.worker is not None or "lsr" in layer.metadata:
            return
        if layer_kind(layer) == "sinogram":
            pick(self.sinogram, layer)
        elif layer_kind(layer) == "sinogram_mask":
            pick(self.mask, layer)

    def _install_close_hooks(self):
        """Abort and join a running worker when this widget goes away: deleted (the viewer's
        window deletes its docks when it closes), taken out of its dock (napari's dock close
        button un-parents the widget), or the application quits. The hooks hold the run
        state only, never the widget."""
        shutdown = self._run.shutdown
        self.destroyed.connect(lambda *_: shutdown())
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(lambda: shutdown())

    def event(self, ev):
        if ev.type() == QEvent.Type.ParentChange and self.parentWidget() is None:
            self._run.shutdown(final=False)  # un-docked: stop the run, keep the widget
        return super().event(ev)

    # -- model --------------------------------------------------------------------------------
    def _model_key(self):
        if self.model.value == DEFAULT_MODEL:
            return None
        path = str(self.model_path.value)
        if not path or path == "." or not self.model_path.value.is_file():
            raise ValueError(f"choose a prior checkpoint file (.pt); {path!r} is not a file")
        return path

    def load_model(self, key=None):
        """Load (once, then cached) the chosen prior; usable from any thread."""
        if key not in self._models:
            from ..model import load_model

            self._models[key] = load_model(key)
        return self._models[key]

    def preload_model(self):
        """Load the chosen prior now and warm PyTorch up (one decoder pass; one optimiser
        step, whose first call imports ~800 modules, about 2 s), so Run starts at once."""
        import torch

        model = self.load_model(self._model_key())
        z = torch.zeros(1, model.config.z_size, requires_grad=True)
        model.decode_hu(z).sum().backward()
        torch.optim.Adam([z]).step()
        return model

    # -- inputs -------------------------------------------------------------------------------
    def _inputs(self):
        """Validated (sinogram, mask, geometry, slice index or None) or ValueError."""
        from ..lsr import check_inputs

        sino_layer, mask_layer_ = self.sinogram.value, self.mask.value
        if sino_layer is None:
            raise ValueError("choose a sinogram layer (made by Acquire or opened from a "
                             "sinogram file)")
        if mask_layer_ is None:
            raise ValueError("choose a sinogram mask layer (1 = valid, 0 = missing)")
        geom = layer_geometry(sino_layer)
        sino = np.asarray(sino_layer.data, np.float32)
        mask = np.asarray(mask_layer_.data, np.float32)
        if mask.shape != sino.shape and not (mask.ndim == 2 and mask.shape == sino.shape[-2:]):
            raise ValueError(f"mask '{mask_layer_.name}' has shape {mask.shape} but sinogram "
                             f"'{sino_layer.name}' has shape {sino.shape}; pick a mask made "
                             "for this sinogram")
        index = None
        if sino.ndim == 3 and self.slices.value == "current slice":
            pos = sino_layer.world_to_data(self.viewer.dims.point)
            index = int(np.clip(round(float(pos[0])), 0, sino.shape[0] - 1))
            sino = sino[index]
            mask = mask[index] if mask.ndim == 3 else mask
        check_inputs(sino, mask, geom)
        return sino, mask, geom, index

    def _options(self) -> dict:
        """Engine options from the widget: steps, device, seed, cold start and early stopping."""
        opts = dict(steps=self.steps.value, lbfgs_steps=self.lbfgs_steps.value,
                    device=self.device.value, seed=self.seed.value,
                    cold_start=self.cold_start.value)
        if self.early_stop.value:
            opts.update(tol=self.tol_pct.value / 100.0, patience=self.patience.value)
        elif engine_accepts("early_stop"):
            opts["early_stop"] = False
        else:  # the stall test needs more than `patience` steps: never reached
            opts.update(tol=0.0, patience=max(self.steps.value, self.warm_steps.value) + 1)
        return opts

    # -- run ----------------------------------------------------------------------------------
    def run(self):
        """Start a run; returns the worker, or None (with an error notification) when the
        inputs are not usable. Nothing in the viewer changes on a bad choice."""
        if self.worker is not None:
            show_error("an LSR run is in progress; abort it first")
            return None
        try:
            sino, mask, geom, index = self._inputs()
            key = self._model_key()
        except ValueError as e:
            show_error(str(e))
            return None
        sino_layer = self.sinogram.value
        opts = self._options()
        n_slices = sino.shape[0] if sino.ndim == 3 else 1
        warm_steps = self.warm_steps.value if self.warm_start.value else None
        per_slice = opts["steps"] + opts["lbfgs_steps"]
        later = per_slice if warm_steps is None else warm_steps + opts["lbfgs_steps"]
        total = per_slice + (n_slices - 1) * later

        self._buf = _Progress(self.preview_every.value)
        self._preview_for = (geom, sino_layer)
        self._pending_preview = None
        self._error = None
        self._plan = {"total": total, "opts": opts, "result": None, "slice0": index or 0,
                      "active_before": self.viewer.layers.selection.active}
        buf, run_state = self._buf, self._run

        def step_callback(slice_index, step, loss, preview_hu):
            buf.add(slice_index, loss, preview_hu)
            return run_state.stop()

        def work():
            buf.work_start_time = time.perf_counter()
            return run_engine(sino, mask, geom, self.load_model(key), opts, warm_steps, step_callback)

        worker = thread_worker(work, ignore_errors=True, start_thread=False)()
        settings = {**opts, "warm_steps": warm_steps, "model": key or DEFAULT_MODEL,
                    "sinogram": sino_layer.name, "slice": index}
        worker.returned.connect(lambda res: self._on_result(res, sino_layer, geom, index, settings))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._run.start(worker)
        self.run_started = time.perf_counter()
        worker.start()  # first, so the GUI work below overlaps with the engine's start
        self.run_button.setEnabled(False)
        self.abort_button.setEnabled(True)
        self._set_status("loading the prior..." if key not in self._models else "running...",
                         "running")
        self.plot.clear()  # drawn with the first point
        self.progress_bar.setFormat("%p%")
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.timer.start(FIRST_POINT_MS)
        return worker

    def abort(self):
        """Stop the run after the current step; no result layers are added."""
        if self.worker is None:
            return
        self._abort.set()
        self.worker.quit()
        self._set_status("aborting...", "running")

    # -- GUI-thread updates -----------------------------------------------------------------
    def _set_status(self, text: str, state: str):
        self.state = state
        colour = STATUS_COLOURS.get(state)
        self.status.setStyleSheet(f"color: {colour};" if colour else "")
        self.status.setText(text)

    def _show_preview(self, image_hu, geom, sino_layer):
        layer = self.preview_layer
        if layer is not None and layer in self.viewer.layers and layer.data.shape == image_hu.shape:
            layer.data = image_hu
            return
        spacing = layer_spacing(sino_layer)
        spacing = [spacing[0], geom.pixel_size_mm, geom.pixel_size_mm]
        self.preview_layer = add_layer(self.viewer, image_layer(image_hu, "LSR preview", spacing,
                                                                geom, preview=True))

    def _drain(self):
        if self._run.closing:
            return
        losses, preview, count, slice_index = self._buf.take()
        first = False
        if losses:
            self.plot.extend(losses)
            self.plot.redraw()
            self.progress_bar.setValue(min(count, self.progress_bar.maximum()))
            if not self._abort.is_set():
                k = slice_index + (self._plan or {}).get("slice0", 0)  # as napari counts slices
                self._set_status(f"slice {k}, step {count}, loss {losses[-1]:.3g}", "running")
            if self._buf.first_point_time is None:
                self._buf.first_point_time = time.perf_counter()
                self.timer.setInterval(REFRESH_MS)
                first = True
        if preview is not None:
            self._pending_preview = preview
        # not in the same tick as the first point: making the preview layer the first time
        # blocks the GUI for a moment (vispy), and the first loss point should show at once
        if self._pending_preview is not None and self._preview_for is not None and not first:
            self._show_preview(np.asarray(self._pending_preview, np.float32), *self._preview_for)
            self._pending_preview = None

    def _on_result(self, res, sino_layer, geom, index, settings):
        if self._run.closing or res.stopped:
            return
        self._plan["result"] = res
        z = layer_spacing(sino_layer)[0]
        spacing = [z, geom.pixel_size_mm, geom.pixel_size_mm]
        history = res.loss_history
        final = history[-1][-1] if history and isinstance(history[0], list) else \
            (history[-1] if history else None)
        info = {"lsr": {**settings, "final_loss": final, "steps_used": self._buf.count}}
        base = sino_layer.name + ("" if index is None else f" [slice {index}]")
        try:
            # bottom to top: the prior's image (hidden), the completed sinogram (beside the
            # image), the corrected image on top
            add_layer(self.viewer, image_layer(res.generated_hu, f"{base} LSR prior", spacing,
                                               geom, visible=False, **info))
            add_layer(self.viewer, sinogram_layer(res.sinogram, f"{base} LSR completed sinogram",
                                                  geom, z, **info))
            self._plan["corrected"] = add_layer(
                self.viewer, image_layer(res.image_hu, f"{base} LSR corrected", spacing, geom, **info))
        except Exception as e:  # noqa: BLE001 - reported, not raised into Qt
            self._on_error(RuntimeError(f"the result layers could not be added: {e}"))

    def _on_error(self, exc):
        if self._run.closing:
            return
        msg = str(exc) if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError)) and \
            str(exc) else f"{type(exc).__name__}: {exc}"
        self._error = msg
        show_error(f"LSR failed: {msg}")

    def _on_finished(self):
        if self._run.closing:
            return
        self._drain()
        self.timer.stop()
        n = self._buf.count
        plan = self._plan or {"total": n, "result": None}
        final = f"{self.plot.y[-1]:.3g}" if self.plot.y else "-"
        if self._error is not None:
            self.progress_bar.setFormat(f"failed at step {n}")
            self._set_status(f"failed: {self._error}", "failed")
        elif self._abort.is_set():
            self.progress_bar.setFormat(f"aborted at step {n}")
            self._set_status(f"aborted after {n} steps (no layers added); last loss {final}",
                             "aborted")
            show_info(f"LSR aborted after {n} steps")
        elif plan["result"] is None:  # finished without a result nor an error
            self.progress_bar.setFormat("no result")
            self._set_status("failed: the run ended without a result", "failed")
            show_error("LSR failed: the run ended without a result")
        else:
            self.progress_bar.setValue(self.progress_bar.maximum())
            self.progress_bar.setFormat(f"done: {n} steps")
            why, warned = describe_stop(plan["result"], n, plan["total"], plan["opts"])
            text = f"done: {n} of {plan['total']} steps, final loss {final} ({why})"
            if warned:
                text += "; WARNING: " + " ".join(warned)
                show_warning("LSR: " + " ".join(warned))
            self._set_status(text, "done")
        if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            self.viewer.layers.remove(self.preview_layer)
        corrected, before = plan.get("corrected"), plan.get("active_before")
        if corrected is not None and corrected in self.viewer.layers:
            self.viewer.layers.selection.active = corrected  # its controls show, Export offers it
        elif not self.viewer.layers.selection and before is not None \
                and before in self.viewer.layers:
            self.viewer.layers.selection.active = before  # the preview was selected: undo that
        self.preview_layer = None
        self._preview_for = None
        self.worker = None
        self._run.worker = None
        self.run_button.setEnabled(True)
        self.abort_button.setEnabled(False)
