"""Speech for the codec: espeak-ng reading random sentences in many voices.

Everything is a pure function of a seed: `utterances(seed, n, voices)` lists what to say and
how (voice, speed, pitch, words); `corpus` has model/data/speech.py's Synth say them (cached on
disk by every parameter, so a rerun reads the disk) and strings them together.
The voices are the conversations' training voices and the characters' (model/data/tables.py);
the held-out voice is in neither. The judges' phrases (bench/judges.py) are never drawn as
training sentences (the words are random, the phrases fixed).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from model.data.speech import Synth, speak
from model.data.tables import CHARACTERS, USER_VOICES

TRAIN_VOICES = tuple(sorted(set(USER_VOICES["train"]) | {c.voice for c in CHARACTERS.values()}))
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


def utterances(seed: int, n: int, voices: tuple[str, ...] = TRAIN_VOICES) -> list[Utterance]:
    """n random sentences (4-14 words), each in a random voice, speed and pitch."""
    rng = random.Random(seed)
    return [Utterance(rng.choice(voices), rng.randint(130, 200), rng.randint(25, 75),
                      " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))))
            for _ in range(n)]


def corpus(seed: int, n: int, synth: Synth, rate: int, voices: tuple[str, ...] = TRAIN_VOICES,
           gap_s: float = 0.15, progress=None) -> np.ndarray:
    """n utterances of `utterances(seed, n, voices)` end to end with short silences: one
    float32 array at `rate`, the training stream a sampler cuts crops from."""
    gap = np.zeros(int(gap_s * rate), np.float32)
    parts = []
    for u in (progress(utterances(seed, n, voices)) if progress else utterances(seed, n, voices)):
        parts += [speak(synth, u.text, u.voice, rate, u.speed, u.pitch), gap]
    return np.concatenate(parts)
