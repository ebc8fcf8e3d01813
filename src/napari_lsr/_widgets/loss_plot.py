"""A small live loss plot (matplotlib in Qt): points are buffered and drawn only when
:meth:`LossPlot.redraw` is called (the LSR widget calls it from a steady timer).

A full matplotlib draw (axes, tick labels) takes ~50-150 ms on a slow CPU, which would block
the event loop at every refresh. So the axes limits grow in coarse jumps (x by half again,
y to whole decades), and between jumps only the curve is redrawn onto a cached background
(blitting, a few ms)."""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from qtpy.QtCore import QSize
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

_BG, _FG = "#262930", "#d6d0ce"  # napari's dark theme


class LossPlot(QWidget):
    """Loss against optimisation step, log scale."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.figure = Figure(figsize=(3.2, 2.2), facecolor=_BG)
        self.figure.subplots_adjust(left=0.2, right=0.96, top=0.95, bottom=0.19)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(120)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax = self.figure.add_subplot(111, facecolor=_BG)
        self.ax.set_yscale("log")
        self.ax.set_xlabel("step", color=_FG)
        self.ax.set_ylabel("loss (masked MSE)", color=_FG)
        self.ax.tick_params(colors=_FG, which="both", labelsize=8)
        self.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        self.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        self.ax.yaxis.set_minor_formatter(NullFormatter())
        for spine in self.ax.spines.values():
            spine.set_color(_FG)
        (self.line,) = self.ax.plot([], [], color="#ffb000", lw=1.2, animated=True)
        self._background = None
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self.x: list[float] = []
        self.y: list[float] = []
        self.draw_count = 0       # redraws of the curve
        self.full_draw_count = 0  # full redraws (limits changed, resize)
        self._dirty = False
        self._limits = None
        self._set_limits((0, 50), (0.1, 10.0))

    def sizeHint(self) -> QSize:
        # small: the dock's scroll area sizes word-wrapped content by its size hints, and the
        # plot takes whatever height is left anyway (it stretches)
        return QSize(300, 150)

    def clear(self):
        self.x, self.y = [], []
        self._dirty = True
        self._set_limits((0, 50), (0.1, 10.0))

    def extend(self, losses):
        """Append losses (the step number is their running index)."""
        for loss in losses:
            self.x.append(len(self.x) + 1)
            self.y.append(max(float(loss), 1e-12))  # log scale needs positive values
        self._dirty = self._dirty or bool(losses)

    # -- drawing ------------------------------------------------------------------------------
    def _set_limits(self, xlim, ylim):
        if (xlim, ylim) != self._limits:
            self._limits = (xlim, ylim)
            self.ax.set_xlim(*xlim)
            self.ax.set_ylim(*ylim)
            self._background = None  # needs a full draw

    def _grow_limits(self):
        (x0, x1), (y0, y1) = self._limits
        if self.x and self.x[-1] > x1:
            x1 = max(50, int(self.x[-1] * 1.5))
        if self.y:
            lo, hi = min(self.y), max(self.y)
            if lo < y0 or hi > y1 or (len(self.x) <= 1):
                y0 = 10.0 ** math.floor(math.log10(lo))
                y1 = 10.0 ** math.ceil(math.log10(hi) + 1e-9)
        self._set_limits((x0, x1), (y0, y1))

    def _on_full_draw(self, _event):
        self._background = self.canvas.copy_from_bbox(self.ax.bbox)
        self.full_draw_count += 1
        self._blit()

    def _blit(self):
        self.canvas.restore_region(self._background)
        self.ax.draw_artist(self.line)
        self.canvas.blit(self.ax.bbox)

    def redraw(self):
        """Draw the buffered points (only if something changed since the last draw)."""
        if not self._dirty:
            return
        self._dirty = False
        self.line.set_data(self.x, self.y)
        self._grow_limits()
        if self._background is None:
            self.canvas.draw()  # full draw; the draw_event handler blits the curve
        else:
            self._blit()
        self.draw_count += 1
