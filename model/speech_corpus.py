"""Speech for the codec: espeak-ng reading random sentences in many voices, cached as wavs.

Everything is a pure function of a seed: `utterances(seed, n, voices)` lists what to say and
how (voice, speed, pitch, words); `synthesize` runs espeak-ng once per utterance and caches
the wav under a cache folder (named by a hash of the recipe), so a rerun reads the disk.
The held-out voice never appears in training lists; the judges' phrases (bench/judges.py)
are never drawn as training sentences (the words are random, the phrases fixed).
This module runs a subprocess (espeak-ng); it holds no model and no clock.
"""
from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ESPEAK_RATE = 22_050  # espeak-ng's native rate
# Training voices: accents x variants (espeak-ng's formant voices; mbrola needs a binary).
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                "en-us+f3", "en-gb+f2", "en-us+m3", "en-gb-x-rp+f4", "en-029+m2", "en-us+klatt")
# The codec's eval voice, never trained on: the male1 variant (its own pitch, formants and
# roughness) of the en-us accent. Clean, it scores 40/40 on the judges' distractor grammar and
# WER 0.54 (en-us-nyc: 36/40, 0.68), so a codec that is as good as its input can show it.
HELDOUT_VOICE = "en-us+m1"
WORDS = """the a an and or but if then when where what who how why which this that these those
is are was were be been has have had do did does can could will would should may might must
i you he she it we they me him her us them my your his its our their mine yours
one two three four five six seven eight nine ten hundred first last next other every some
man woman child friend people family mother father sister brother teacher doctor driver
day night morning evening week month year time hour minute moment today tomorrow yesterday
house home room door window wall floor table chair bed kitchen garden street road city town
car bus train boat plane bike ship truck bridge station river lake sea mountain hill forest
red green blue yellow black white brown orange purple pink grey golden silver dark bright
big small long short tall old new young good bad hot cold warm cool fast slow high low happy
sad quiet loud soft hard heavy light early late easy simple strange clever funny busy ready
go come see look watch hear listen speak say tell ask answer call help give take make find
keep leave put bring carry hold open close start stop turn move walk run jump sit stand wait
eat drink cook sleep read write sing play work learn teach think know believe remember forget
water bread milk coffee tea apple orange lemon cheese sugar salt pepper rice soup cake fruit
book paper letter story music song picture card phone camera computer screen radio clock
dog cat horse bird fish cow sheep mouse lion tiger rabbit duck chicken bear snake monkey
rain snow wind sun moon star cloud storm fire ice stone sand grass tree flower leaf seed
very really quite almost always never often sometimes again still already soon here there
in on at by for with from into over under after before behind between around through near
""".split()


@dataclass(frozen=True)
class Utterance:
    voice: str  # espeak-ng voice, with an optional +variant
    speed: int  # words per minute
    pitch: int  # 0-99
    text: str

    def key(self) -> str:
        return hashlib.sha1(f"{self.voice}|{self.speed}|{self.pitch}|{self.text}".encode()).hexdigest()[:16]


def utterances(seed: int, n: int, voices: tuple[str, ...] = TRAIN_VOICES) -> list[Utterance]:
    """n random sentences (4-14 words), each in a random voice, speed and pitch."""
    rng = random.Random(seed)
    return [Utterance(rng.choice(voices), rng.randint(130, 200), rng.randint(25, 75),
                      " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))))
            for _ in range(n)]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Band-limited resampling of a whole clip (FFT: truncate or zero-pad the spectrum)."""
    if rate == to:
        return x.astype(np.float32)
    n = round(len(x) * to / rate)
    spec = np.fft.rfft(x)
    out = np.zeros(n // 2 + 1, complex)
    keep = min(len(spec), len(out))
    out[:keep] = spec[:keep]
    return (np.fft.irfft(out, n) * (n / len(x))).astype(np.float32)


def espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50,
           rate: int = 16_000) -> np.ndarray:
    """espeak-ng's reading of `text` as float32 samples in [-1, 1] at `rate`."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True, timeout=60).stdout
    # espeak-ng streams a wav whose size fields are unset: read the rate from the fmt chunk
    # and take every byte after the "data" tag as PCM.
    if out[:4] != b"RIFF" or b"data" not in out[:200]:
        raise RuntimeError(f"espeak-ng -v {voice}: no wav on stdout ({len(out)} bytes)")
    src = int.from_bytes(out[24:28], "little")
    start = out.index(b"data", 12) + 8
    pcm = np.frombuffer(out[start:start + (len(out) - start) // 2 * 2], "<i2")
    return resample(pcm.astype(np.float32) / 32768, src, rate)


def synthesize(utt: Utterance, cache: Path, rate: int) -> np.ndarray:
    """The utterance at `rate`, from the cache folder or from espeak-ng (then cached)."""
    path = cache / f"{rate}" / f"{utt.key()}.npy"
    if path.exists():
        return np.load(path).astype(np.float32) / 32768
    x = espeak(utt.text, utt.voice, utt.speed, utt.pitch, rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, (np.clip(x, -1, 1) * 32767).astype(np.int16))
    tmp.replace(path)
    return x


def corpus(seed: int, n: int, cache: Path, rate: int, voices: tuple[str, ...] = TRAIN_VOICES,
           gap_s: float = 0.15, progress=None) -> np.ndarray:
    """n utterances of `utterances(seed, n, voices)` end to end with short silences: one
    float32 array at `rate`, the training stream a sampler cuts crops from."""
    gap = np.zeros(int(gap_s * rate), np.float32)
    parts = []
    for utt in (progress(utterances(seed, n, voices)) if progress else utterances(seed, n, voices)):
        parts += [synthesize(utt, cache, rate), gap]
    return np.concatenate(parts)
