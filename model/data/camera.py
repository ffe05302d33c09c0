"""The user's camera: a background (noise, gradients, a drawn person, Chromium's fake camera,
stripes; held out: a checkerboard, blobs, a room), optionally a coloured card held up and
moving, and the camera's exposure, tint and sensor noise. `Camera(rng, ...)` draws its whole
plan from `rng` when made; `frame(i)` is then a pure function of the frame index."""
from __future__ import annotations

import numpy as np

from model.config import FPS
from model.data import draw
from model.data.tables import COLOURS


def _colour(rng: np.random.Generator, lo: float = 20, hi: float = 235) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


class Background:
    """kind -> a renderer of (h, w, 3) float frames; every random choice is made here."""

    def __init__(self, kind: str, rng: np.random.Generator, h: int, w: int):
        self.kind, self.h, self.w = kind, h, w
        self.yy, self.xx = draw.grid(h, w)
        self.rng = rng
        getattr(self, f"_init_{kind}")(rng)

    def __call__(self, i: int) -> np.ndarray:
        return getattr(self, f"_draw_{self.kind}")(i / FPS, i)

    # --- train ---
    def _init_noise(self, rng):
        hs = int(rng.integers(3, 9))
        ws = max(2, round(hs * self.w / self.h * rng.uniform(0.7, 1.4)))
        self.a = draw.upsample(rng.uniform(0, 255, (hs, ws, 3)).astype(np.float32), self.h, self.w)
        self.b = draw.upsample(rng.uniform(0, 255, (hs, ws, 3)).astype(np.float32), self.h, self.w)
        self.freq = rng.uniform(0.05, 0.4)
        self.grain = rng.uniform(2, 14)
        self.seed = int(rng.integers(2 ** 31))

    def _draw_noise(self, t, i):
        m = 0.5 + 0.5 * np.sin(2 * np.pi * self.freq * t)
        g = np.random.default_rng([self.seed, i]).standard_normal((self.h, self.w, 3), np.float32)
        return self.a * (1 - m) + self.b * m + self.grain * g

    def _init_gradient(self, rng):
        self.c0, self.c1 = _colour(rng), _colour(rng)
        self.theta, self.omega = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)

    def _draw_gradient(self, t, i):
        th = self.theta + self.omega * t
        p = (np.cos(th) * (self.xx / self.w - 0.5) + np.sin(th) * (self.yy / self.h - 0.5)) / 1.42 + 0.5
        return self.c0 + (self.c1 - self.c0) * p[..., None]

    def _init_person(self, rng):
        self.wall = _colour(rng, 60, 230)
        self.skin = np.array([rng.uniform(90, 240), 0, 0], np.float32)
        self.skin[1:] = self.skin[0] * np.array([0.75, 0.6]) + rng.uniform(-10, 10, 2)
        self.hair, self.shirt = _colour(rng, 10, 120), _colour(rng)
        self.px, self.sway, self.fs = rng.uniform(0.3, 0.7), rng.uniform(0.01, 0.05), rng.uniform(0.1, 0.5)
        self.scale = rng.uniform(0.8, 1.15)

    def _draw_person(self, t, i):
        h, w, hw = self.h, self.w, (self.h, self.w)
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.wall
        s = self.scale * h
        cx = (self.px + self.sway * np.sin(2 * np.pi * self.fs * t)) * w
        hy = h - 0.62 * s  # head centre
        draw.paint(img, draw.box(hw, h, cx, 0.28 * s, 0.42 * s, radius=0.15 * s), self.shirt)
        draw.paint(img, draw.box(hw, hy + 0.2 * s, cx, 0.1 * s, 0.06 * s), self.skin)
        draw.paint(img, draw.ellipse(hw, hy - 0.05 * s, cx, 0.2 * s, 0.16 * s), self.hair)
        draw.paint(img, draw.ellipse(hw, hy, cx, 0.17 * s, 0.13 * s), self.skin)
        for ex in (-0.05, 0.05):
            draw.paint(img, draw.ellipse(hw, hy - 0.02 * s, cx + ex * s, 0.015 * s, 0.015 * s), (20, 20, 20))
        draw.paint(img, draw.ellipse(hw, hy + 0.08 * s, cx, 0.012 * s, 0.04 * s), (120, 40, 40))
        return img

    def _init_chromium(self, rng):
        # like Chromium's --use-fake-device-for-media-stream (PacmanFramePainter): a green
        # frame (0, 127, 0), a bright green pie sweeping at 600 degrees a second, and the
        # elapsed time and frame count written in bright green
        self.green = np.array([0, 127, 0], np.float32) + rng.uniform(-8, 8, 3).clip(0, None).astype(np.float32)
        self.start = int(rng.integers(0, 3600 * FPS))
        self.centre = rng.uniform(-0.05, 0.05, 2)

    def _draw_chromium(self, t, i):
        h, w = self.h, self.w
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.green
        f = self.start + i
        r = min(h, w) / 4
        cy, cx = h / 2 + self.centre[0] * h, w / 2 + self.centre[1] * w
        pie = draw.ellipse((h, w), cy, cx, r, r)
        py, px = pie.coords()
        end = np.deg2rad((600.0 * f / FPS) % 360)
        pie.m *= (np.arctan2(py - cy, px - cx) % (2 * np.pi)) <= end
        draw.paint(img, pie, (0, 255, 0))
        ms = f * 1000 // FPS
        stamp = f"{ms // 3600000}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}:{ms % 1000:03d} {f}"
        draw.text(img, stamp, max(1, h // 24), max(1, w // 24), max(1, h // 80), (0, 255, 0))
        return img

    def _init_stripes(self, rng):
        self.cols = [_colour(rng) for _ in range(int(rng.integers(2, 4)))]
        self.period = rng.uniform(0.08, 0.4) * max(self.h, self.w)
        self.theta, self.v = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) * self.period

    def _draw_stripes(self, t, i):
        p = (np.cos(self.theta) * self.xx + np.sin(self.theta) * self.yy + self.v * t) / self.period
        k = (np.floor(p * len(self.cols)).astype(int)) % len(self.cols)
        return np.stack(self.cols)[k]

    # --- held out ---
    def _init_checker(self, rng):
        self.c0, self.c1 = _colour(rng), _colour(rng)
        self.size = rng.uniform(0.06, 0.25) * max(self.h, self.w)
        self.vel = rng.uniform(-0.2, 0.2, 2) * self.size

    def _draw_checker(self, t, i):
        k = (np.floor((self.yy + self.vel[0] * t) / self.size) + np.floor((self.xx + self.vel[1] * t) / self.size)) % 2
        return np.where(k[..., None] > 0, self.c1, self.c0)

    def _init_blobs(self, rng):
        self.base = _colour(rng)
        n = int(rng.integers(4, 10))
        self.blobs = [(rng.uniform(0, 1, 2), rng.uniform(0.05, 0.3), _colour(rng), rng.uniform(-0.05, 0.05, 2))
                      for _ in range(n)]

    def _draw_blobs(self, t, i):
        img = np.empty((self.h, self.w, 3), np.float32)
        img[:] = self.base
        for (py, px), r, c, (vy, vx) in self.blobs:
            cy, cx = ((py + vy * t) % 1.2 - 0.1) * self.h, ((px + vx * t) % 1.2 - 0.1) * self.w
            rr = r * min(self.h, self.w)
            soft = draw.Mask.around((self.h, self.w), cy, cx, rr)
            sy, sx = soft.coords()
            soft.m = 0.85 * np.sqrt(np.clip(1 - np.hypot(sy - cy, sx - cx) / rr, 0, 1))
            draw.paint(img, soft, c)
        return img

    def _init_room(self, rng):
        self.wall, self.floor = _colour(rng, 120, 240), _colour(rng, 40, 160)
        self.horizon = rng.uniform(0.6, 0.8)
        self.win = (rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.6), rng.uniform(0.15, 0.25), rng.uniform(0.15, 0.3))
        self.sky = np.array([rng.uniform(120, 200), rng.uniform(170, 220), 250], np.float32)
        self.pan = rng.uniform(-0.02, 0.02)

    def _draw_room(self, t, i):
        h, w = self.h, self.w
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.wall
        img[int(self.horizon * h):] = self.floor
        wy, wx, wh, ww = self.win
        ox = self.pan * t * w
        draw.paint(img, draw.box((h, w), (wy + wh / 2) * h, (wx + ww / 2) * w + ox,
                                 wh / 2 * h + 2, ww / 2 * w + 2), (245, 245, 240))
        draw.paint(img, draw.box((h, w), (wy + wh / 2) * h, (wx + ww / 2) * w + ox,
                                 wh / 2 * h, ww / 2 * w), self.sky)
        return img


class Card:
    """A card of one of the colours, held up by a hand: 10-40 % of the frame high, anywhere,
    drifting and wobbling, slightly turned; sometimes with a white or black edge."""

    def __init__(self, colour: str, rng: np.random.Generator, h: int, w: int):
        self.colour = colour
        self.rgb = np.asarray(COLOURS[colour], np.float32) * rng.uniform(0.85, 1.1)
        self.hh = rng.uniform(0.10, 0.40) * h / 2
        self.hw = self.hh * (rng.uniform(0.6, 0.8) if rng.random() < 0.75 else rng.uniform(1.2, 1.5))
        self.edge = [None, None, (250, 250, 250), (15, 15, 15)][int(rng.integers(4))]
        self.theta0, self.wob = rng.uniform(-0.25, 0.25), rng.uniform(0, 0.12)
        self.h, self.w = h, w
        ext_y, ext_x = self._extent(0.4)
        self.p0 = np.array([rng.uniform(ext_y, h - ext_y), rng.uniform(ext_x, w - ext_x)])
        self.amp = rng.uniform(0, 0.15, 2) * np.array([h, w])
        self.freq = rng.uniform(0.05, 0.6, 2)
        self.phase = rng.uniform(0, 2 * np.pi, 3)
        self.skin = np.array([rng.uniform(90, 240), 0, 0], np.float32)
        self.skin[1:] = self.skin[0] * np.array([0.75, 0.6])

    def _extent(self, theta: float) -> tuple[float, float]:
        c, s = abs(np.cos(theta)), abs(np.sin(theta))
        return c * self.hh + s * self.hw, s * self.hh + c * self.hw

    def pose(self, t: float) -> tuple[float, float, float]:
        """(cy, cx, angle) at time t, the card kept inside the frame."""
        th = self.theta0 + self.wob * np.sin(2 * np.pi * 0.3 * t + self.phase[2])
        ey, ex = self._extent(th)
        cy = self.p0[0] + self.amp[0] * np.sin(2 * np.pi * self.freq[0] * t + self.phase[0])
        cx = self.p0[1] + self.amp[1] * np.sin(2 * np.pi * self.freq[1] * t + self.phase[1])
        cy = float(np.clip(cy, min(ey, self.h / 2), max(self.h - ey, self.h / 2)))
        cx = float(np.clip(cx, min(ex, self.w / 2), max(self.w - ex, self.w / 2)))
        return cy, cx, float(th)

    def paint(self, img: np.ndarray, t: float) -> tuple[int, int, int, int]:
        """Draw the card (and the thumb holding it) at time t; its box (y0, x0, y1, x1)."""
        cy, cx, th = self.pose(t)
        hw = (self.h, self.w)
        if self.edge is not None:
            e = max(1.0, 0.06 * self.hh)
            draw.paint(img, draw.box(hw, cy, cx, self.hh + e, self.hw + e, th, radius=e), self.edge)
        draw.paint(img, draw.box(hw, cy, cx, self.hh, self.hw, th), self.rgb)
        # a thumb over the bottom edge, in the card's frame
        c, s = np.cos(th), np.sin(th)
        ty, tx = cy + c * self.hh, cx - s * self.hh
        draw.paint(img, draw.ellipse(hw, ty, tx, 0.18 * self.hh, 0.1 * self.hh + 0.5, -th), self.skin)
        ey, ex = self._extent(th)
        return (int(max(0, cy - ey)), int(max(0, cx - ex)),
                int(min(self.h, np.ceil(cy + ey))), int(min(self.w, np.ceil(cx + ex))))


class Camera:
    """The user's camera for one episode: background, card (or None) and the sensor."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, background: str, card: str | None):
        self.h, self.w = h, w
        self.background = Background(background, np.random.default_rng(rng.integers(2 ** 63)), h, w)
        card_rng = np.random.default_rng(rng.integers(2 ** 63))
        self.card = Card(card, card_rng, h, w) if card else None
        self.gain = rng.uniform(0.85, 1.15) * rng.uniform(0.96, 1.04, 3)
        self.sigma = rng.uniform(0, 4)
        self.seed = int(rng.integers(2 ** 31))

    def frame(self, i: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Frame i: (h, w, 3) uint8 and the card's box (-1s with no card)."""
        img = np.ascontiguousarray(self.background(i), dtype=np.float32)
        bbox = (-1, -1, -1, -1)
        if self.card is not None:
            bbox = self.card.paint(img, i / FPS)
        img *= self.gain.astype(np.float32)
        if self.sigma > 0:
            img += self.sigma * np.random.default_rng([self.seed, i]).standard_normal(img.shape, np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), bbox
