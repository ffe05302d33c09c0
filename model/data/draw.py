"""Drawing with numpy: soft-edged (anti-aliased) shapes as coverage masks in [0, 1], composited
onto float RGB images in [0, 255], and a tiny bitmap font for the fake camera's counter."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (h, w) float32."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return y + 0.5, x + 0.5


@dataclass
class Mask:
    """Coverage in [0, 1] inside a window [y0, y1) x [x0, x1) of an image; zero outside."""
    y0: int
    y1: int
    x0: int
    x1: int
    m: np.ndarray  # (y1 - y0, x1 - x0) float32

    @classmethod
    def around(cls, shape: tuple[int, int], cy: float, cx: float, r: float) -> "Mask":
        """An empty mask over the window of radius r (plus a pixel) around (cy, cx)."""
        h, w = shape
        y0, y1 = int(np.clip(np.floor(cy - r - 1), 0, h)), int(np.clip(np.ceil(cy + r + 1), 0, h))
        x0, x1 = int(np.clip(np.floor(cx - r - 1), 0, w)), int(np.clip(np.ceil(cx + r + 1), 0, w))
        return cls(y0, y1, x0, x1, np.zeros((y1 - y0, x1 - x0), np.float32))

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates of the window, (n, 1) and (1, m)."""
        return (np.arange(self.y0, self.y1, dtype=np.float32)[:, None] + 0.5,
                np.arange(self.x0, self.x1, dtype=np.float32)[None, :] + 0.5)

    def __mul__(self, other: "Mask | float") -> "Mask":
        if not isinstance(other, Mask):
            return Mask(self.y0, self.y1, self.x0, self.x1, self.m * np.float32(other))
        y0, y1 = max(self.y0, other.y0), max(min(self.y1, other.y1), max(self.y0, other.y0))
        x0, x1 = max(self.x0, other.x0), max(min(self.x1, other.x1), max(self.x0, other.x0))
        a = self.m[y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]
        b = other.m[y0 - other.y0:y1 - other.y0, x0 - other.x0:x1 - other.x0]
        return Mask(y0, y1, x0, x1, a * b)

    __rmul__ = __mul__

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[self.y0:self.y1, self.x0:self.x1] = self.m
        return out


def _local(out: Mask, cy: float, cx: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The mask's pixel offsets (dy, dx) from (cy, cx), in the shape's frame rotated by `angle`."""
    yy, xx = out.coords()
    dy, dx = yy - cy, xx - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return dy, dx


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float,
            angle: float = 0.0) -> Mask:
    """Coverage of an ellipse (one-pixel soft edge) in an image of `shape` (h, w)."""
    ry, rx = max(ry, 1e-3), max(rx, 1e-3)
    out = Mask.around(shape, cy, cx, max(ry, rx))
    if out.m.size == 0:
        return out
    dy, dx = _local(out, cy, cx, angle)
    r = np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)
    # distance to the edge in pixels, approximately: (r - 1) * the local radius
    d = (r - 1) * np.sqrt((dy ** 2 + dx ** 2) / np.maximum(r ** 2, 1e-6) + 1e-6)
    out.m = np.clip(0.5 - d, 0, 1).astype(np.float32)
    return out


def box(shape: tuple[int, int], cy: float, cx: float, hh: float, hw: float,
        angle: float = 0.0, radius: float = 0.0) -> Mask:
    """Coverage of a (rotated, rounded) rectangle of half-sizes hh x hw centred at (cy, cx)."""
    out = Mask.around(shape, cy, cx, float(np.hypot(hh, hw)))
    if out.m.size == 0:
        return out
    dy, dx = _local(out, cy, cx, angle)
    qy, qx = np.abs(dy) - hh + radius, np.abs(dx) - hw + radius
    outside = np.sqrt(np.maximum(qy, 0) ** 2 + np.maximum(qx, 0) ** 2)
    d = outside + np.minimum(np.maximum(qy, qx), 0) - radius
    out.m = np.clip(0.5 - d, 0, 1).astype(np.float32)
    return out


def paint(img: np.ndarray, mask: Mask, colour) -> None:
    """img (h, w, 3) float <- colour over mask, in place."""
    if mask.m.size == 0:
        return
    view = img[mask.y0:mask.y1, mask.x0:mask.x1]
    m = mask.m[..., None]
    view *= 1 - m
    view += m * np.asarray(colour, np.float32)


# 3 x 5 digits and a colon, rows top to bottom
_FONT = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ":": ("000", "010", "000", "010", "000"), ".": ("000", "000", "000", "000", "010"),
    " ": ("000", "000", "000", "000", "000"),
}


def text(img: np.ndarray, s: str, y: int, x: int, scale: int, colour) -> None:
    """Draw digits (and ': .') with the 3 x 5 font, `scale` pixels a dot, clipped to the image."""
    h, w = img.shape[:2]
    for i, ch in enumerate(s):
        rows = _FONT.get(ch, _FONT[" "])
        for r, row in enumerate(rows):
            for c, bit in enumerate(row):
                if bit == "1":
                    y0, x0 = y + r * scale, x + (i * 4 + c) * scale
                    if y0 < h and x0 < w:
                        img[max(y0, 0):min(y0 + scale, h), max(x0, 0):min(x0 + scale, w)] = colour


def upsample(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of (hs, ws, c) to (h, w, c)."""
    hs, ws = small.shape[:2]
    ys = np.clip((np.arange(h) + 0.5) * hs / h - 0.5, 0, hs - 1)
    xs = np.clip((np.arange(w) + 0.5) * ws / w - 0.5, 0, ws - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, hs - 1), np.minimum(x0 + 1, ws - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = small[y0][:, x0] * (1 - fx) + small[y0][:, x1] * fx
    bot = small[y1][:, x0] * (1 - fx) + small[y1][:, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by whole pixels, repeating the edge."""
    h, w = img.shape[:2]
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    return img[ys][:, xs]
