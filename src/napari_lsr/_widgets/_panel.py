"""The frame every napari-lsr dock uses: its content scrolls when the dock is short, so the
main window's minimum height stays small (four stacked docks used to need ~1400 px), and its
dock joins the other napari-lsr docks as a tab once napari has docked it."""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ._common import tabify_when_docked


class ScrollPanel(QWidget):
    """A QWidget whose parts (magicgui or Qt widgets, layouts) sit in a scroll area."""

    def __init__(self):
        super().__init__()
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        self.content_layout.setContentsMargins(6, 4, 6, 4)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area)
        tabify_when_docked(self)
        alive = self.alive = [True]  # False once deleted: late worker results are dropped
        self.destroyed.connect(lambda *_: alive.__setitem__(0, False))

    def minimumSizeHint(self) -> QSize:
        """As wide as the content needs (it only scrolls vertically), 120 px high."""
        width = self.content.minimumSizeHint().width()
        width += self.scroll_area.verticalScrollBar().sizeHint().width() + 2
        return QSize(width, 120)

    def add(self, part, stretch: int = 0):
        """Append a magicgui widget, a QWidget or a QLayout; returns it."""
        from qtpy.QtWidgets import QLayout

        if isinstance(part, QLayout):
            self.content_layout.addLayout(part, stretch)
        else:
            self.content_layout.addWidget(getattr(part, "native", part), stretch)
        return part

    def add_stretch(self):
        self.content_layout.addStretch(1)
