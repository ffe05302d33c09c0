"""The character's face: its image.png (centre-cropped and resized to the preset, as the server
loads it) with a mouth whose opening follows the RMS of its own speech frame by frame, blinks,
and a head that moves by a few pixels. The eyes stay on the user (the camera)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from model.config import FPS
from model.data import draw
from model.data.tables import CharacterSpec

CHARACTERS_DIR = Path(__file__).resolve().parents[2] / "server" / "characters"
MOUTH_FULL_RMS = 0.12  # a frame this loud opens the mouth fully


@lru_cache(maxsize=16)
def portrait(path: str, h: int, w: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The image as (h, w, 3) float32 in [0, 255], and the crop (x0, y0, cw, ch) taken from the
    source before resizing (the same centre crop and AREA resize as the server's loader)."""
    try:
        import av
    except ImportError as e:
        raise RuntimeError("PyAV is needed to read the character's image: pip install av") from e
    with av.open(path) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    sh, sw = rgb.shape[:2]
    if sw * h > sh * w:
        cw, ch = sh * w // h, sh
    else:
        cw, ch = sw, sw * h // w
    x0, y0 = (sw - cw) // 2, (sh - ch) // 2
    crop = np.ascontiguousarray(rgb[y0:y0 + ch, x0:x0 + cw])
    small = av.VideoFrame.from_ndarray(crop, format="rgb24").reformat(
        width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    small = small.astype(np.float32)
    small.flags.writeable = False
    return small, (x0 / sw, y0 / sh, cw / sw, ch / sh)


class FaceRenderer:
    """Frames of one character for one episode; all random choices (blinks, head motion) are
    drawn from `rng` when made."""

    def __init__(self, spec: CharacterSpec, rng: np.random.Generator, h: int, w: int, frames: int,
                 characters_dir: Path | None = None):
        folder = Path(characters_dir) if characters_dir is not None else CHARACTERS_DIR
        self.base, (cx0, cy0, cw, ch) = portrait(str(folder / spec.id / "image.png"), h, w)
        self.h, self.w = h, w
        f = spec.face

        def at(p: tuple[float, float]) -> tuple[float, float]:  # source fractions -> (y, x) pixels
            return (p[1] - cy0) / ch * h, (p[0] - cx0) / cw * w

        self.mouth = at(f.mouth)
        self.mouth_rx, self.mouth_ry = f.mouth_rx / cw * w, f.mouth_ry / ch * h
        self.eyes = [at(e) for e in f.eyes]
        self.eye_rx, self.eye_ry = f.eye_rx / cw * w, f.eye_ry / ch * h
        self.skin, self.lip = np.asarray(f.skin, np.float32), np.asarray(f.lip, np.float32)
        # head motion: a few pixels, a sum of slow sines on each axis
        amp = max(1.0, 0.02 * w)
        t = np.arange(frames) / FPS
        motion = []
        for _ in range(2):
            fr, ph, wt = rng.uniform(0.1, 0.7, 2), rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.3, 0.7)
            m = wt * np.sin(2 * np.pi * fr[0] * t + ph[0]) + (1 - wt) * np.sin(2 * np.pi * fr[1] * t + ph[1])
            motion.append(np.rint(amp * m).astype(int))
        self.dy, self.dx = np.rint(np.array(motion[0]) * 0.6).astype(int), motion[1]
        # blinks: every 2-5 s, 2-3 frames each (closed, then half-open)
        self.lid = np.zeros(frames, np.float32)
        i = int(rng.integers(0, 3 * FPS))
        while i < frames:
            n = int(rng.integers(2, 4))
            self.lid[i:i + n - 1] = 1.0
            self.lid[i + n - 1:i + n] = 0.5
            i += n + int(rng.integers(2 * FPS, 5 * FPS))

    def openings(self, audio: np.ndarray) -> np.ndarray:
        """Mouth opening in [0, 1] of each frame of `audio` (frames x samples a frame)."""
        per = audio.size // self.lid.size
        rms = np.sqrt(np.mean(audio[:per * self.lid.size].reshape(self.lid.size, per).astype(np.float64) ** 2, 1))
        return np.clip(rms / MOUTH_FULL_RMS, 0, 1) ** 0.7

    def frames(self, audio: np.ndarray) -> np.ndarray:
        """(frames, h, w, 3) uint8 with the mouth following `audio` (the whole episode's)."""
        opening = self.openings(audio)
        out = np.empty((self.lid.size, self.h, self.w, 3), np.uint8)
        for i in range(self.lid.size):
            out[i] = self.frame(i, float(opening[i]))
        return out

    def frame(self, i: int, opening: float) -> np.ndarray:
        dy, dx = int(self.dy[i]), int(self.dx[i])
        img = draw.shift(self.base, dy, dx).astype(np.float32)
        my, mx = self.mouth[0] + dy, self.mouth[1] + dx
        if opening > 0.02:
            ry = max(0.5, opening * self.mouth_ry)
            rx = self.mouth_rx * (0.75 + 0.25 * opening)
            draw.paint(img, draw.ellipse((self.h, self.w), my + 0.3 * ry, mx, ry, rx), self.lip)
        if self.lid[i] > 0:
            for ey, ex in self.eyes:
                ey, ex = ey + dy, ex + dx
                ry = self.eye_ry * 1.15 * self.lid[i]
                # the lid comes down from the top of the eye
                cover = draw.box((self.h, self.w), ey - self.eye_ry * 1.15 + ry, ex, ry, self.eye_rx * 1.15)
                cover *= draw.ellipse((self.h, self.w), ey, ex, self.eye_ry * 1.3, self.eye_rx * 1.2)
                draw.paint(img, cover, self.skin)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
