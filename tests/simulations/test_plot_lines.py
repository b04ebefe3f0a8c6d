"""The fraction plot draws a zero rate at 0 and every line where it is, even where several lie on one
another (every policy at 0 wrong answers is the usual case): looked for in the rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from simulations.plots import fraction_figure

pytestmark = pytest.mark.timeout(60)


def rows_with_zeros() -> list[dict]:
    """Four lines; three of them 0 at every fraction, the fourth 0 at the first."""
    out = []
    for policy in ("full", "plain"):
        for r in (3, 5):
            for f in (0.0, 0.1, 0.2, 0.3):
                rate = f / 100 if (policy, r) == ("plain", 3) else 0.0
                out.append({"policy": policy, "redundancy": r, "fraction": f, "wrong_accepted_rate": rate,
                            "replicas_per_step": r})
    return out


def seen_near(pixels: np.ndarray, x: float, y: float, color: tuple[float, float, float], reach: int = 9) -> bool:
    """Whether `color` is drawn within `reach` pixels of display point (x, y)."""
    row, col = pixels.shape[0] - int(round(y)), int(round(x))
    window = pixels[max(0, row - reach):row + reach + 1, max(0, col - reach):col + reach + 1]
    return bool((np.abs(window - np.array(color)).max(axis=2) < 0.1).any())


def test_every_line_at_zero_is_drawn_at_zero_and_stays_visible():
    fig, ax = fraction_figure(rows_with_zeros())
    fig.tight_layout()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 4
    bottom = ax.transAxes.transform((0, 0))[1]
    for line in lines:
        color = to_rgb(line.get_color())
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
            if y != 0:
                continue
            px, py = ax.transData.transform((x, 0.0))
            assert py > bottom, "a zero is drawn on the frame's edge, half cut"
            assert py < ax.transData.transform((x, 1e-6))[1], "a zero is drawn at the floor rate, not below it"
            assert seen_near(pixels, px, py, color), f"{line.get_label()} is hidden at fraction {x}"
