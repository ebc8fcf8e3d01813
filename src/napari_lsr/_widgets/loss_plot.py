"""A small live loss plot (matplotlib in Qt): points are buffered and drawn only when
:meth:`LossPlot.redraw` is called (the LSR widget calls it from a steady timer)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

_BG, _FG = "#262930", "#d6d0ce"  # napari's dark theme


class LossPlot(QWidget):
    """Loss against optimisation step, log scale."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.figure = Figure(figsize=(3.2, 2.2), tight_layout=True, facecolor=_BG)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(240)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax = self.figure.add_subplot(111, facecolor=_BG)
        self.ax.set_yscale("log")
        self.ax.set_xlabel("step", color=_FG)
        self.ax.set_ylabel("loss (masked MSE)", color=_FG)
        self.ax.tick_params(colors=_FG, which="both", labelsize=8)
        compact = FuncFormatter(lambda v, _: f"{v:.3g}")
        self.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        self.ax.yaxis.set_major_formatter(compact)
        self.ax.yaxis.set_minor_formatter(NullFormatter())
        for spine in self.ax.spines.values():
            spine.set_color(_FG)
        (self.line,) = self.ax.plot([], [], color="#ffb000", lw=1.2)
        self.x: list[float] = []
        self.y: list[float] = []
        self.draw_count = 0
        self._dirty = False

    def clear(self):
        self.x, self.y = [], []
        self._dirty = True

    def extend(self, losses):
        """Append losses (the step number is their running index)."""
        for loss in losses:
            self.x.append(len(self.x) + 1)
            self.y.append(max(float(loss), 1e-12))  # log scale needs positive values
        self._dirty = self._dirty or bool(losses)

    def redraw(self):
        """Draw the buffered points (only if something changed since the last draw)."""
        if not self._dirty:
            return
        self._dirty = False
        self.line.set_data(self.x, self.y)
        self.ax.relim()
        self.ax.autoscale_view()
        self.canvas.draw_idle()
        self.draw_count += 1
