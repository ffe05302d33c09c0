"""Speech and the user's microphone: espeak-ng synthesis (a subprocess, cached by its
parameters), band-limited resampling to the model's rate, level, background noise and an Opus
round trip. Every function is a pure function of its arguments and a numpy Generator.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np

ESPEAK = "espeak-ng"
OPUS_DELAY = 156  # samples at 24 kHz that libopus's look-ahead adds (312 at 48 kHz), removed


class SpeechError(RuntimeError):
    """espeak-ng is missing or refused the parameters; the message says which."""


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def _parse_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """espeak-ng's --stdout WAV (16-bit mono; the header's sizes are placeholders, so the data
    runs to the end of the stream): (int16 samples, rate)."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise SpeechError(f"{ESPEAK} wrote no WAV ({len(raw)} bytes)")
    pos, rate = 12, 0
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            fmt, ch, rate = (int.from_bytes(raw[pos + 8:pos + 10], "little"),
                             int.from_bytes(raw[pos + 10:pos + 12], "little"),
                             int.from_bytes(raw[pos + 12:pos + 16], "little"))
            bits = int.from_bytes(raw[pos + 22:pos + 24], "little")
            if (fmt, ch, bits) != (1, 1, 16):
                raise SpeechError(f"{ESPEAK} wrote format {fmt}, {ch} channels, {bits} bits; expected PCM16 mono")
        elif cid == b"data":
            data = raw[pos + 8:]
            return np.frombuffer(data[:len(data) // 2 * 2], dtype="<i2").astype(np.int16), rate
        pos += 8 + size + (size & 1)
    raise SpeechError(f"{ESPEAK} wrote a WAV without data")


class Synth:
    """espeak-ng with a memory cache (the last `memory` utterances) and an optional on-disk
    cache (`cache_dir/<2 hex>/<sha1>.npy`, int16 at espeak's rate), both keyed by every
    parameter of the call, so a cached utterance is the one espeak-ng would make."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, memory: int = 256):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory = memory
        self._mem: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self.calls = 0  # espeak-ng subprocesses run (for tests and timings)

    @staticmethod
    def key(text: str, voice: str, speed: int, pitch: int, word_gap: int) -> str:
        return hashlib.sha1(repr(("espeak-ng", text, voice, speed, pitch, word_gap)).encode()).hexdigest()

    def __call__(self, text: str, voice: str, speed: int, pitch: int, word_gap: int = 0) -> tuple[np.ndarray, int]:
        """(int16 samples, rate) of `text` said by `voice` at `speed` wpm and `pitch` (0-99)."""
        k = self.key(text, voice, speed, pitch, word_gap)
        if k in self._mem:
            self._mem.move_to_end(k)
            return self._mem[k]
        path = self.cache_dir / k[:2] / f"{k}.npy" if self.cache_dir is not None else None
        got = None
        if path is not None and path.is_file():
            try:
                arr = np.load(path)
                got = (arr[1:].astype(np.int16), int(arr[0]) + 32768)  # first sample: the rate - 32768
            except (OSError, ValueError):
                got = None  # a torn file: make it again
        if got is None:
            got = self._run(text, voice, speed, pitch, word_gap)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, np.concatenate([[got[1] - 32768], got[0]]).astype(np.int16))
                os.replace(tmp, path)
        self._mem[k] = got
        while len(self._mem) > self.memory:
            self._mem.popitem(last=False)
        return got

    def _run(self, text: str, voice: str, speed: int, pitch: int, word_gap: int) -> tuple[np.ndarray, int]:
        if not espeak_available():
            raise SpeechError(f"{ESPEAK} is not installed (Debian: apt-get install espeak-ng)")
        self.calls += 1
        cmd = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(word_gap),
               "-a", "100", "--stdout", text]
        res = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        if res.returncode != 0 or len(res.stdout) <= 44:
            raise SpeechError(f"{' '.join(cmd)} failed: {res.stderr.decode(errors='replace').strip()}")
        return _parse_wav(res.stdout)


def speak(synth: Synth, text: str, voice: str, rate: int, speed: int = 160, pitch: int = 50) -> np.ndarray:
    """`text` said by `voice` as float32 in [-1, 1] at `rate`."""
    pcm, r = synth(text, voice, speed, pitch)
    return resample(pcm / 32768.0, r, rate)


def utterance(synth: Synth, text: str, voice: str, rate: int, level_dbfs: float, speed: int = 160,
              pitch: int = 50, word_gap: int = 0) -> np.ndarray:
    """`text` said by `voice` at `rate`, its silences trimmed, at `level_dbfs` (voiced RMS): how
    a user, a character and a test's caller say things."""
    pcm, r = synth(text, voice, speed, pitch, word_gap)
    return set_level(trim(resample(pcm / 32768.0, r, rate), 0.01), level_dbfs)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by the FFT (the signal is padded with silence at both ends, so
    the circular wrap only touches silence): float32."""
    x = np.asarray(x, np.float64)
    if rate_in == rate_out:
        return x.astype(np.float32)
    pad = 256
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    n = xp.size
    m = int(round(n * rate_out / rate_in))
    spec = np.fft.rfft(xp)
    out = np.zeros(m // 2 + 1, np.complex128)
    c = min(spec.size, out.size)
    out[:c] = spec[:c]
    y = np.fft.irfft(out, n=m) * (m / n)
    p = int(round(pad * rate_out / rate_in))
    return y[p:p + int(round(x.size * rate_out / rate_in))].astype(np.float32)


def trim(x: np.ndarray, threshold: float = 0.01, margin: int = 0) -> np.ndarray:
    """Drop the leading and trailing samples quieter than `threshold` (keeping `margin`)."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x[:0]
    return x[max(0, loud[0] - margin):loud[-1] + 1 + margin]


def active_rms(x: np.ndarray, threshold: float = 0.02) -> float:
    """RMS over 10 ms frames louder than `threshold` (the voiced part of an utterance)."""
    n = x.size // 240 * 240
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0
    rms = np.sqrt(np.mean(x[:n].reshape(-1, 240) ** 2, axis=1))
    loud = rms[rms > threshold]
    return float(np.sqrt(np.mean(loud ** 2))) if loud.size else float(np.sqrt(np.mean(rms ** 2)))


def set_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale so the voiced RMS is `dbfs`; clipped to [-1, 1]."""
    r = active_rms(x)
    if r <= 0:
        return x.astype(np.float32)
    return np.clip(x * (10 ** (dbfs / 20) / r), -1, 1).astype(np.float32)


def noise(rng: np.random.Generator, n: int, kind: str, dbfs: float, rate: int) -> np.ndarray:
    """n samples of background noise at `dbfs` RMS: white, pink (1/f), brown (1/f^2) or mains
    hum (50 or 60 Hz and harmonics, with a little white noise)."""
    if kind == "hum":
        t = np.arange(n) / rate
        f0 = rng.choice([50.0, 60.0])
        y = sum(a * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
                for h, a in ((1, 1.0), (2, 0.5), (3, 0.3), (5, 0.1)))
        y = y + 0.1 * rng.standard_normal(n)
    else:
        w = rng.standard_normal(n)
        if kind == "white":
            y = w
        else:
            spec = np.fft.rfft(w)
            f = np.fft.rfftfreq(n, 1 / rate)
            f[0] = f[1] if n > 1 else 1.0
            spec /= f ** (0.5 if kind == "pink" else 1.0)
            y = np.fft.irfft(spec, n=n)
    y = np.asarray(y, np.float64)
    r = np.sqrt(np.mean(y ** 2)) or 1.0
    return (y * (10 ** (dbfs / 20) / r)).astype(np.float32)


def opus_round_trip(x: np.ndarray, rate: int, kbps: int) -> np.ndarray:
    """Encode to Opus at `kbps` in memory (PyAV's libopus) and decode back to `rate`, aligned
    to the input (the encoder's look-ahead removed) and of the same length."""
    try:
        import av
    except ImportError as e:  # the [serve] extra carries it
        raise SpeechError("PyAV is needed for the Opus round trip: pip install av") from e
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = rate, "mono", "flt", kbps * 1000
    enc.open()
    dec = av.CodecContext.create("libopus", "r")
    rs = av.AudioResampler(format="flt", layout="mono", rate=rate)
    fs = enc.frame_size
    delay = OPUS_DELAY * rate // 24_000
    n = x.size
    buf = np.zeros(-(-(n + delay) // fs) * fs + fs, np.float32)
    buf[:n] = x
    out: list[np.ndarray] = []

    def take(packets) -> None:
        for p in packets:
            for fr in dec.decode(p):
                out.extend(g.to_ndarray().reshape(-1) for g in rs.resample(fr))

    for i in range(0, buf.size, fs):
        f = av.AudioFrame.from_ndarray(buf[None, i:i + fs], format="flt", layout="mono")
        f.sample_rate, f.pts = rate, i
        take(enc.encode(f))
    take(enc.encode(None))
    out.extend(g.to_ndarray().reshape(-1) for g in rs.resample(None))
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    y = y[delay:delay + n]
    if y.size < n:
        y = np.concatenate([y, np.zeros(n - y.size, np.float32)])
    return np.clip(y, -1, 1).astype(np.float32)
