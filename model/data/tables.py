"""The tables of the procedural conversations: colours, voices, phrasings, backgrounds, the
characters' voices, faces and answers. Pure data; everything that varies by split is here, so
a reader sees at a glance that the held-out set shares nothing with training.

Held out (split="heldout"): user voices, user phrasings (the core phrase and its opener) and
camera backgrounds. The characters, their voices and their answers are the same in both: the
model is judged on hearing and seeing new things, not on saying new ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")

# --- the cards ---------------------------------------------------------------------------
# name -> sRGB of the paper under neutral light; hues far apart (red 358, orange 28, yellow 51,
# green 138, blue 226, purple 282 degrees) so a pixel's hue names its card.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 40),
    "green": (35, 165, 70),
    "blue": (35, 75, 215),
    "yellow": (245, 215, 35),
    "orange": (245, 130, 25),
    "purple": (135, 50, 175),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# --- the user's voices (espeak-ng voice[+variant]) ------------------------------------------
# None of them is a character's voice (CHARACTERS below) or the codec's held-out voice.
USER_VOICES: dict[Split, tuple[str, ...]] = {
    "train": ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f2", "en-us+f4",
              "en-gb+m2", "en-gb+f1", "en-gb-x-gbclan", "en-us+m3"),
    "heldout": ("en-gb-x-rp", "en-us-nyc+f5", "en-gb-x-gbcwmd+m7"),
}
USER_SPEED_WPM = (120, 190, 10)  # espeak-ng -s: low, high, step (quantised: a finite cache)
USER_PITCH = (20, 80, 5)  # espeak-ng -p (0-99)
USER_WORD_GAP = (0, 4)  # espeak-ng -g, pauses between words in 10 ms
USER_GAIN_DB = 12.0  # +- around USER_LEVEL_DBFS
USER_LEVEL_DBFS = -22.0  # RMS of voiced samples before the gain
OPUS_KBPS = (8, 12, 16, 24, 32, 48, 64)
NOISE_KINDS = ("white", "pink", "brown", "hum")
NOISE_DBFS = (-72.0, -38.0)  # RMS of the background noise

# --- the user's phrasings, by intent --------------------------------------------------------
Intent = Literal["greeting", "colour", "name", "how_are_you", "goodbye"]
INTENTS: tuple[Intent, ...] = ("greeting", "colour", "name", "how_are_you", "goodbye")

PHRASES: dict[Split, dict[Intent, tuple[str, ...]]] = {
    "train": {
        "greeting": ("hello", "hi there", "hey", "good morning", "hello there"),
        "colour": ("what colour is my card", "what color is this", "which colour am I holding up",
                   "can you tell me the colour of this card", "what colour is this card",
                   "tell me the color of my card", "what color am I showing you"),
        "name": ("what is your name", "who are you", "what are you called"),
        "how_are_you": ("how are you", "how are you doing", "how is it going"),
        "goodbye": ("goodbye", "bye", "see you later"),
    },
    "heldout": {
        "greeting": ("hi", "good evening"),
        "colour": ("which color is the card in my hand", "what is the colour of the card I hold",
                   "do you know what colour this is"),
        "name": ("tell me your name", "what should I call you"),
        "how_are_you": ("are you well", "how do you feel today"),
        "goodbye": ("bye bye", "I have to go now, goodbye"),
    },
}
# openers said before the phrase ("" most often)
OPENERS: dict[Split, tuple[str, ...]] = {
    "train": ("", "", "", "okay, ", "so, "),
    "heldout": ("", "", "well, "),
}
INTENT_WEIGHTS: dict[Intent, float] = {
    "greeting": 0.1, "colour": 0.5, "name": 0.15, "how_are_you": 0.15, "goodbye": 0.1}

# --- the camera's backgrounds (model/data/camera.py draws them) -----------------------------
BACKGROUNDS: dict[Split, tuple[str, ...]] = {
    "train": ("noise", "gradient", "person", "chromium", "stripes"),
    "heldout": ("checker", "blobs", "room"),
}


# --- the characters ---------------------------------------------------------------------
@dataclass(frozen=True)
class Face:
    """Where the drawn features sit in the character's image.png, as fractions of its width
    (x) and height (y): the mouth's centre and half-width, its largest half-opening, the eyes'
    centres and half-sizes, and the skin's colour (eyelids)."""
    mouth: tuple[float, float]
    mouth_rx: float
    mouth_ry: float
    eyes: tuple[tuple[float, float], tuple[float, float]]
    eye_rx: float
    eye_ry: float
    skin: tuple[int, int, int]
    lip: tuple[int, int, int] = (95, 10, 32)  # the open mouth's inside


@dataclass(frozen=True)
class CharacterSpec:
    id: str  # the folder under server/characters/
    name: str
    voice: str  # espeak-ng voice[+variant]
    pitch: int  # espeak-ng -p
    speed: int  # espeak-ng -s, words a minute
    face: Face
    greetings: tuple[str, ...]  # said at the start of a call
    small_talk: tuple[str, ...]  # the answer to "how are you"
    goodbyes: tuple[str, ...]
    hellos: tuple[str, ...]  # the answer to a greeting


# Ada and Bram: two voices far apart (a high US female, a low British male). Measured on the
# shipped 256 x 192 portraits: eyes at (109, 90) and (147, 90), 22 x 12 px; mouth at (128, 125).
_FACE = dict(mouth=(0.5, 0.651), mouth_rx=0.043, mouth_ry=0.045,
             eyes=((0.426, 0.469), (0.574, 0.469)), eye_rx=0.047, eye_ry=0.036)
CHARACTERS: dict[str, CharacterSpec] = {
    "ada": CharacterSpec(
        id="ada", name="Ada", voice="en-us+f3", pitch=60, speed=165,
        face=Face(skin=(234, 194, 159), **_FACE),
        greetings=("Hello, I am Ada. Show me a card.", "Hi there, I am Ada."),
        small_talk=("I am well, thank you. I love a good question.",
                    "Very well, thanks. Science is fun today."),
        goodbyes=("Goodbye, see you soon.", "Bye, it was nice talking to you."),
        hellos=("Hello there.", "Hi, nice to see you.")),
    "bram": CharacterSpec(
        id="bram", name="Bram", voice="en-gb+m3", pitch=35, speed=155,
        face=Face(skin=(199, 149, 114), **_FACE),
        greetings=("Hi, I am Bram. Show me a card.", "Hello there, I am Bram."),
        small_talk=("Very well, I just cooked a lovely soup.",
                    "I am great, thanks. I am hungry, as always."),
        goodbyes=("Goodbye, enjoy your meal.", "Bye bye, see you soon."),
        hellos=("Hello, good to see you.", "Hi there.")),
}


def answer(spec: CharacterSpec, intent: Intent, card: str | None, pick: int) -> str:
    """What the character says to `intent` with `card` (None: no card) in view; `pick` chooses
    among its variants (any int)."""
    if intent == "colour":
        return f"That card is {card}." if card else "I cannot see a card."
    if intent == "name":
        return f"I am {spec.name}."
    options = {"greeting": spec.hellos, "how_are_you": spec.small_talk, "goodbye": spec.goodbyes}[intent]
    return options[pick % len(options)]


def repertoire(spec: CharacterSpec) -> tuple[str, ...]:
    """Every answer the character can give (its greetings aside)."""
    picks = range(max(len(spec.hellos), len(spec.small_talk), len(spec.goodbyes)))
    return tuple(sorted({answer(spec, intent, card, pick) for intent in INTENTS
                         for card in (None, *COLOUR_NAMES) for pick in picks}))


def choice_points(spec: CharacterSpec, text: str) -> tuple[int, ...]:
    """The positions of `text`'s UTF-8 bytes where the character chooses what it says: those where
    the answers of its repertoire that begin as `text` does go on differently."""
    own, answers = text.encode(), [a.encode() for a in repertoire(spec)]
    return tuple(p for p in range(len(own)) if len({a[p:p + 1] for a in answers if a[:p] == own[:p]}) > 1)
