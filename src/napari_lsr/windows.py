"""CT display windows (width / level in HU): the one table the plugin, the demo and the
evaluation figures share. Pure Python, no Qt.

>>> window_limits("soft tissue")
(-160.0, 240.0)
"""

from __future__ import annotations

#: name -> (width, level) in HU. Display range = level -/+ width / 2.
WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "bone": (2000.0, 500.0),
    "lung": (1500.0, -600.0),
    "brain": (80.0, 40.0),
    "wide": (2000.0, 0.0),
}

#: The window new HU layers open in.
DEFAULT_WINDOW = "soft tissue"


def window_limits(name: str) -> tuple[float, float]:
    """``(lo, hi)`` in HU of a named window (case and surrounding spaces ignored)."""
    key = str(name).strip().lower()
    if key not in WINDOWS:
        raise ValueError(f"unknown CT window {name!r}; choose one of {', '.join(WINDOWS)}")
    width, level = WINDOWS[key]
    return (level - width / 2.0, level + width / 2.0)


def window_label(name: str) -> str:
    """``"soft tissue  W400 L40"``: the name with its width and level, for menus and titles."""
    width, level = WINDOWS[str(name).strip().lower()]
    return f"{name}  W{width:g} L{level:g}"
