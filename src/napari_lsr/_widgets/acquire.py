"""Acquire / simulate widget: image layer (HU) -> sinogram layer with a scan geometry;
optionally a simulated truncation, metal or limited-angle case; the uncorrected FBP for
comparison.

All physics comes from the library (Projector, simulate_truncation, simulate_metal,
masks.limited_angle_mask). The
work runs in a napari thread worker, since building a projector for a new geometry takes
seconds; the layers are added when it returns."""

from __future__ import annotations


import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton, SpinBox
from napari.qt.threading import thread_worker

from .. import FanBeam, ParallelBeam, Projector, hu_to_mu, mu_to_hu
from ._common import (add_layer, connect_layer_events, image_layer, is_hu_layer, layer_choices,
                      layer_spacing, mask_layer, pick, show_error, sinogram_layer, window_combo)
from ._panel import ScrollPanel

CASES = ("none", "truncation", "metal", "limited angle")


def build_geometry(kind: str, image_size: int, pixel_size_mm: float, n_views: int,
                   arc_deg: float, n_det: int = 0, det_spacing_mm: float = 0.0):
    """A ParallelBeam / FanBeam for the image. ``det_spacing_mm`` 0: one pixel at the
    isocentre; ``n_det`` 0: the fewest bins that cover the image (``min_n_det``)."""
    cls = ParallelBeam if kind == "parallel" else FanBeam
    kw = dict(image_size=int(image_size), pixel_size_mm=float(pixel_size_mm),
              n_views=int(n_views), arc_deg=float(arc_deg))
    if det_spacing_mm <= 0:
        magnification = 1.0 if cls is ParallelBeam else FanBeam.sdd_mm / FanBeam.sid_mm
        det_spacing_mm = pixel_size_mm * magnification
    kw["det_spacing_mm"] = float(det_spacing_mm)
    if n_det <= 0:
        n_det = cls.min_n_det(kw["image_size"], kw["pixel_size_mm"], kw["det_spacing_mm"])
    return cls(n_det=int(n_det), **kw)


def simulate_scan(hu, geom, case: str = "none", fom_mm: float = 200.0, n_metal: int = 2,
                  seed: int = 0, fbp: bool = True, missing_deg: float = 60.0,
                  missing_start_deg: float = 0.0) -> dict:
    """Library calls behind the widget. ``hu`` (H, W) or (S, H, W). Returns a dict with
    ``sinogram``, ``mask`` (or None), ``image_hu`` (the scanned image, with metal if any)
    and ``fbp_hu`` (or None). Limited angle: the views in ``[missing_start_deg,
    missing_start_deg + missing_deg]`` (degrees, the geometry's angles) are missing (zero)."""
    hu = np.asarray(hu, np.float32)
    geom.check_image_shape(hu.shape, "image layer")
    out = {"image_hu": None, "mask": None, "fbp_hu": None}
    if case == "truncation":
        from ..simulate import simulate_truncation

        c = simulate_truncation(hu, geom, fom_mm)
        out.update(sinogram=c.sinogram, mask=np.broadcast_to(c.mask, c.sinogram.shape).copy())
    elif case == "metal":
        from ..simulate import simulate_metal

        slices = hu if hu.ndim == 3 else hu[None]
        cases = [simulate_metal(s, geom, n_objects=n_metal, seed=seed, reconstruct=False)
                 for s in slices]
        stack = lambda name: np.stack([getattr(c, name) for c in cases])  # noqa: E731
        pick = (lambda a: a) if hu.ndim == 3 else (lambda a: a[0])
        out.update(sinogram=pick(stack("sinogram")), mask=pick(stack("mask")),
                   image_hu=pick(stack("metal_hu")))
    elif case == "limited angle":
        from ..simulate import simulate_limited_angle

        c = simulate_limited_angle(hu, geom, missing_deg, missing_start_deg)
        out.update(sinogram=c.sinogram, mask=c.mask)
    elif case == "none":
        out["sinogram"] = Projector(geom).forward(hu_to_mu(hu)).numpy()
    else:
        raise ValueError(f"unknown case {case!r}; choose one of {CASES}")
    if fbp:
        out["fbp_hu"] = mu_to_hu(Projector(geom).fbp(out["sinogram"]).numpy()).astype(np.float32)
    return out


class AcquireWidget(ScrollPanel):
    """Image layer -> sinogram (+ mask, + uncorrected FBP) with a chosen scan geometry."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.image = ComboBox(label="image (HU)", choices=layer_choices(napari_viewer, "image"))
        self.beam = ComboBox(label="geometry", choices=["parallel", "fan"], value="parallel")
        self.n_views = SpinBox(label="views", min=1, max=10000, value=360)
        self.arc_deg = FloatSpinBox(label="arc (deg)", min=1.0, max=360.0, value=180.0)
        self.n_det = SpinBox(label="bins (0 = auto)", min=0, max=16384, value=0)
        self.det_spacing = FloatSpinBox(label="bin mm (0 = pixel)", min=0.0, max=100.0,
                                        step=0.1, value=0.0)
        self.case = ComboBox(label="simulate", choices=list(CASES), value="none")
        self.fom_mm = FloatSpinBox(label="FOM diameter (mm)", min=1.0, max=2000.0, value=200.0)
        self.n_metal = SpinBox(label="metal objects", min=1, max=10, value=2)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.missing_deg = FloatSpinBox(label="missing arc (deg)", min=0.5, max=360.0, step=1.0,
                                        value=60.0)
        self.missing_start = FloatSpinBox(label="missing from (deg)", min=-360.0, max=360.0,
                                          step=1.0, value=0.0)
        self.show_fbp = CheckBox(text="show uncorrected FBP", value=True)
        self.run_button = PushButton(text="Simulate scan")
        self.ct_window = window_combo(napari_viewer)
        self.form = Container(widgets=[
            self.image, self.beam, self.n_views, self.arc_deg, self.n_det, self.det_spacing,
            self.case, self.fom_mm, self.n_metal, self.seed, self.missing_deg,
            self.missing_start, self.show_fbp, self.run_button, self.ct_window])
        self.add(self.form)
        self.add_stretch()
        self.beam.changed.connect(self._geometry_changed)
        self.case.changed.connect(self._case_changed)
        self.run_button.clicked.connect(self.run)
        self._case_changed()
        self.worker = None
        connect_layer_events(napari_viewer, self.form, self._layer_inserted)

    def reset_choices(self, *_):
        self.form.reset_choices()

    def _layer_inserted(self, layer):
        """A new HU image that is not a result of this plugin becomes the image to scan."""
        if is_hu_layer(layer) and not {"lsr", "case", "preview"} & set(layer.metadata) \
                and "geometry" not in layer.metadata:
            pick(self.image, layer)

    def _geometry_changed(self, kind):
        self.arc_deg.value = 180.0 if kind == "parallel" else 360.0

    def _case_changed(self, *_):
        self.fom_mm.visible = self.case.value == "truncation"
        self.n_metal.visible = self.seed.visible = self.case.value == "metal"
        self.missing_deg.visible = self.missing_start.visible = self.case.value == "limited angle"

    def make_geometry(self, layer):
        shape = layer.data.shape[-2:]
        if shape[0] != shape[1]:
            raise ValueError(f"layer '{layer.name}' is {shape[0]} x {shape[1]} pixels; the scan "
                             "needs a square image (crop or pad it first)")
        spacing = layer_spacing(layer)
        if abs(spacing[1] - spacing[2]) > 1e-6 * spacing[2]:
            raise ValueError(f"layer '{layer.name}' has non-square pixels {spacing[1:]} mm")
        return build_geometry(self.beam.value, shape[0], spacing[2], self.n_views.value,
                              self.arc_deg.value, self.n_det.value, self.det_spacing.value)

    def run(self):
        """Start the simulation in a worker; returns the worker (None on a bad choice)."""
        layer = self.image.value
        if layer is None:
            show_error("choose an image layer (HU) to scan")
            return None
        try:
            geom = self.make_geometry(layer)
            if layer.data.ndim not in (2, 3):
                raise ValueError(f"layer '{layer.name}' must be 2D or a stack of slices")
        except ValueError as e:
            show_error(str(e))
            return None
        hu = np.asarray(layer.data, np.float32)
        args = dict(case=self.case.value, fom_mm=self.fom_mm.value, n_metal=self.n_metal.value,
                    seed=self.seed.value, fbp=self.show_fbp.value,
                    missing_deg=self.missing_deg.value,
                    missing_start_deg=self.missing_start.value)
        worker = thread_worker(simulate_scan, ignore_errors=True, start_thread=False)(hu, geom, **args)
        alive = self.alive  # the viewer may be closed before the simulation returns
        worker.returned.connect(lambda out: alive[0] and self._add_layers(layer, geom, args, out))
        worker.errored.connect(lambda e: alive[0] and show_error(f"simulation failed: {e}"))
        worker.finished.connect(lambda: alive[0] and setattr(self.run_button, "enabled", True))
        self.run_button.enabled = False
        self.worker = worker
        worker.start()
        return worker

    def _add_layers(self, layer, geom, args, out):
        """New layers, bottom to top: the scanned image with metal (if any), the sinogram and
        its mask beside the image, the uncorrected FBP on top of the image."""
        spacing = layer_spacing(layer)
        name = layer.name
        case = args["case"]
        tag = "" if case == "none" else f" ({case})"
        extra = {}
        if case == "truncation":
            extra["fom_mm"] = float(args["fom_mm"])
        elif case == "limited angle":
            extra.update(missing_deg=float(args["missing_deg"]),
                         missing_start_deg=float(args["missing_start_deg"]))
        if out["image_hu"] is not None:
            add_layer(self.viewer, image_layer(out["image_hu"], f"{name} with metal", spacing, geom))
        add_layer(self.viewer, sinogram_layer(out["sinogram"], f"{name} sinogram{tag}", geom,
                                              spacing[0], source=name, case=case, **extra))
        if out["mask"] is not None:
            add_layer(self.viewer, mask_layer(out["mask"], f"{name} {case} mask", geom, spacing[0],
                                              source=name, case=case, **extra))
        if out["fbp_hu"] is not None:
            add_layer(self.viewer, image_layer(out["fbp_hu"], f"{name} uncorrected FBP{tag}",
                                               spacing, geom, source=name, case=case))
