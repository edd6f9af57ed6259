"""One colour per storage tier, shared by every picture hometier draws.

The dashboard's stylesheet (``service/dashboard/static/dashboard.css``) and the HTML
report of ``hometier plan`` use these values; a test checks that the stylesheet holds
them. Each colour has a light and a dark variant (``prefers-color-scheme``), both chosen
to reach WCAG AA contrast (4.5:1) as text on the page's background.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Colour:
    name: str
    light: str
    dark: str


POSIX = Colour("POSIX volume (hot)", "#b4450f", "#fb923c")
OBJECT = Colour("object storage (cold)", "#1d5bd8", "#7cb0ff")
COST = Colour("cost per month", "#7e3fb8", "#d0a6ff")
NEUTRAL = Colour("before hometier", "#5c6670", "#a7b0ba")

TIERS = {"posix": POSIX, "object": OBJECT}
BACKGROUND = {"light": "#ffffff", "dark": "#212529"}
"""The page backgrounds the colours are checked against (JupyterHub's, Bootstrap's)."""


def css_variables() -> str:
    """``:root`` custom properties for both colour schemes (for a standalone page)."""
    names = {"posix": POSIX, "object": OBJECT, "cost": COST, "neutral": NEUTRAL}
    light = ";".join(f"--tier-{k}:{c.light}" for k, c in names.items())
    dark = ";".join(f"--tier-{k}:{c.dark}" for k, c in names.items())
    return f":root{{{light}}}@media (prefers-color-scheme: dark){{:root{{{dark}}}}}"


def _channel(c: int) -> float:
    s = c / 255
    return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4


def luminance(hex_colour: str) -> float:
    """Relative luminance (WCAG 2.x) of ``#rrggbb``."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


__all__ = ["COST", "NEUTRAL", "OBJECT", "POSIX", "TIERS", "Colour", "contrast", "css_variables"]
