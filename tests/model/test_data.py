"""Procedural conversations (model/data/): deterministic by seed, labels that agree with the
media (the card's pixels, the character's silence and timing), and a held-out split that shares
no voice, phrasing or background with training. espeak-ng and PyAV are needed for episodes:
missing, the tests fail under CI and skip elsewhere (tests/missing.py)."""
from __future__ import annotations

import colorsys
import importlib.util

import numpy as np
import pytest

from model.config import PAD, AudioConfig, ModelConfig, cpu, tiny
from model.data import COLOUR_NAMES, COLOURS, Synth, conversation, espeak_available, media_batch
from model.data import tables
from model.data.episode import TEXT_LEAD_UNITS
from model.data.speech import opus_round_trip
from tests.missing import missing

UNITS = 40
TRAIN_SEEDS = range(10)
HELDOUT_SEEDS = range(4)


def _need_tools() -> None:
    if not espeak_available():
        missing("espeak-ng is not installed: apt-get install espeak-ng")
    if importlib.util.find_spec("av") is None:
        missing("PyAV is not installed: pip install -e '.[serve]'")


@pytest.fixture(scope="module")
def synth() -> Synth:
    _need_tools()
    return Synth()


@pytest.fixture(scope="module")
def cfg_cpu() -> ModelConfig:
    return cpu()


@pytest.fixture(scope="module")
def episodes(synth: Synth, cfg_cpu: ModelConfig) -> list:
    return [conversation(s, cfg_cpu, "train", UNITS, synth=synth) for s in TRAIN_SEEDS]


@pytest.fixture(scope="module")
def heldout(synth: Synth, cfg_cpu: ModelConfig) -> list:
    return [conversation(s, cfg_cpu, "heldout", UNITS, synth=synth) for s in HELDOUT_SEEDS]


def _arrays(ep) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(ep).items() if isinstance(v, np.ndarray)}


def _assert_same(a, b) -> None:
    for k, v in _arrays(a).items():
        w = getattr(b, k)
        assert v.dtype == w.dtype and v.shape == w.shape and v.tobytes() == w.tobytes(), k
    assert a.turns == b.turns and a.meta == b.meta
    assert (a.user_stops, a.answers, a.barge_ins) == (b.user_stops, b.answers, b.barge_ins)


def _hue_colour(rgb: np.ndarray) -> str:
    """The card colour whose hue is nearest the pixel's."""
    def hue(c) -> float:
        return colorsys.rgb_to_hsv(*(np.asarray(c, float) / 255))[0] * 360
    h = hue(rgb)
    return min(COLOUR_NAMES, key=lambda n: min(abs(h - hue(COLOURS[n])), 360 - abs(h - hue(COLOURS[n]))))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- determinism -------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "heldout"])
def test_same_seed_gives_the_same_episode_bit_for_bit(split: str) -> None:
    _need_tools()
    cfg = tiny()
    a = conversation(7, cfg, split, 24, synth=Synth())
    b = conversation(7, cfg, split, 24, synth=Synth())
    _assert_same(a, b)


def test_disk_cache_gives_the_same_episode_and_skips_espeak(tmp_path) -> None:
    _need_tools()
    cfg = tiny()
    fresh = conversation(11, cfg, "train", 24, synth=Synth())
    first = Synth(tmp_path)
    conversation(11, cfg, "train", 24, synth=first)
    assert first.calls > 0 and any(tmp_path.rglob("*.npy"))
    again = Synth(tmp_path)
    cached = conversation(11, cfg, "train", 24, synth=again)
    assert again.calls == 0
    _assert_same(fresh, cached)


def test_different_seeds_differ(episodes) -> None:
    a, b = episodes[0], episodes[1]
    assert not np.array_equal(a.user_frames, b.user_frames)
    assert not np.array_equal(a.user_audio, b.user_audio)
    assert a.meta != b.meta


def test_train_and_heldout_of_one_seed_differ(episodes, heldout) -> None:
    assert not np.array_equal(episodes[0].user_audio, heldout[0].user_audio)


# --- shapes ------------------------------------------------------------------------------

def _tiny_16khz() -> ModelConfig:
    audio = AudioConfig(sample_rate=16_000, strides=(4, 4, 4, 10), vae_channels=4, vae_width=8, obs_width=8)
    return tiny().model_copy(update={"audio": audio})


@pytest.mark.parametrize("make", [pytest.param(tiny, id="tiny"), pytest.param(cpu, id="cpu"),
                                  pytest.param(_tiny_16khz, id="tiny,16kHz")])
def test_episode_has_the_presets_geometry(make) -> None:
    _need_tools()
    cfg = make()
    ep = conversation(1, cfg, "train", 6, synth=Synth())
    H, W, S, k = cfg.video.height, cfg.video.width, cfg.audio.samples_per_unit, cfg.text_slots
    assert ep.user_frames.shape == ep.char_frames.shape == (6, 4, H, W, 3)
    assert ep.user_frames.dtype == ep.char_frames.dtype == np.uint8
    assert ep.user_audio.shape == ep.char_audio.shape == (6, S) and ep.user_audio.dtype == np.float32
    assert ep.text.shape == (6, k) and ep.card_boxes.shape == (6, 4, 4)
    mb = media_batch([ep], cfg)
    assert mb.frames.shape == (1, 24, 3, H, W) and mb.audio.shape == (1, 6 * S)
    assert mb.image.shape == (1, 3, H, W) and mb.voice.shape == (1, cfg.character.voice_units * S)
    assert -1 <= float(mb.frames.min()) and float(mb.frames.max()) <= 1


# --- labels agree with the media -----------------------------------------------------------

def test_answer_names_the_card_colour_seen_in_the_frames(episodes, heldout) -> None:
    checked = 0
    for ep in episodes + heldout:
        for t in ep.turns:
            if t.speaker != "character" or t.intent != "colour" or t.start_unit >= ep.units:
                continue
            if ep.card_colour is None:
                assert t.text == "I cannot see a card." and (ep.card_boxes == -1).all()
                continue
            assert ep.card_colour in t.text
            for f in range(4):
                y0, x0, y1, x1 = ep.card_boxes[t.start_unit, f].tolist()
                px = ep.user_frames[t.start_unit, f, (y0 + y1) // 2, (x0 + x1) // 2]
                assert _hue_colour(px) == ep.card_colour, (ep.seed, f, px)
            checked += 1
    assert checked >= 3, checked


def test_without_a_card_the_answer_says_it_sees_none(synth: Synth) -> None:
    cfg, answered = tiny(), 0
    for seed in range(4):
        ep = conversation(seed, cfg, "train", UNITS, card=None, synth=synth)
        assert ep.card_colour is None and (ep.card == -1).all() and (ep.card_boxes == -1).all()
        drawn = conversation(seed, cfg, "train", UNITS, synth=synth)
        assert ep.meta["user"] == drawn.meta["user"] and ep.answers == drawn.answers  # only the card changed
        colour = [t for t in ep.turns if t.speaker == "character" and t.intent == "colour"]
        assert all(t.text == "I cannot see a card." for t in colour)
        answered += len(colour)
    assert answered >= 1


def _barge_window(ep) -> np.ndarray:
    w = np.zeros(ep.units, bool)
    for onset, stop in ep.barge_ins:
        w[onset:stop] = True
    return w


def test_character_is_silent_while_the_user_speaks(episodes, heldout) -> None:
    for ep in episodes + heldout:
        listening = ep.user_speaking & ~_barge_window(ep)
        assert listening.any()
        for u in np.flatnonzero(listening):
            assert _rms(ep.char_audio[u]) < 1e-4, (ep.seed, u)
            assert (ep.text[u] == PAD).all(), (ep.seed, u)
        # and the user's microphone is louder where they speak than where they do not
        loud = np.array([_rms(x) for x in ep.user_audio])
        assert np.median(loud[ep.user_speaking]) > 2 * np.median(loud[~ep.user_speaking]), ep.seed
        # silent units carry no text; speaking ones carry the turn's bytes in order
        assert (ep.text[~ep.char_speaking] == PAD).all()


def test_character_answers_within_two_units_after_the_user_stops(episodes) -> None:
    n = 0
    for ep in episodes:
        assert ep.answers and len(ep.answers) <= len(ep.user_stops)
        for stop, start in ep.answers:
            assert 1 <= start - stop <= 2, (ep.seed, stop, start)
            assert not ep.user_speaking[stop:start].any() and not ep.char_speaking[stop:start].any()
            assert ep.char_speaking[start] and _rms(ep.char_audio[start]) > 1e-3
            n += 1
    assert n >= 10


def test_character_stops_within_two_units_of_a_barge_in(episodes) -> None:
    n = 0
    for ep in episodes:
        for onset, stop in ep.barge_ins:
            assert 1 <= stop - onset <= 2
            assert ep.user_speaking[onset] and ep.char_speaking[onset - 1] and ep.char_speaking[onset]
            assert not ep.char_speaking[stop:stop + 1].any()
            assert _rms(ep.char_audio[stop:stop + 1]) < 1e-4 and (ep.text[stop:stop + 1] == PAD).all()
            cut = [t for t in ep.turns if t.speaker == "character" and t.cut and t.end_unit == stop]
            assert cut and cut[0].text.startswith(cut[0].spoken)  # its text may have run ahead
            n += 1
    assert n >= 2, "no barge-in among the test seeds"


def test_a_crop_is_the_episodes_units_with_its_labels_shifted(episodes) -> None:
    ep = episodes[0]
    c = ep.crop(10, 20)
    for k, v in _arrays(ep).items():
        assert np.array_equal(getattr(c, k), v[10:30]), k
    spu = ep.user_audio.shape[1]
    assert all(-20 < t.start_unit < 20 and t.end_unit > 0 for t in c.turns)
    kept = [t for t in ep.turns if t.start_unit < 30 and t.end_unit > 10]
    assert [(t.start_unit - 10, t.start_sample - 10 * spu, t.text) for t in kept] == \
        [(t.start_unit, t.start_sample, t.text) for t in c.turns]
    assert all(0 <= u < 20 for pair in c.answers + c.barge_ins for u in pair)
    assert all(0 <= u < 20 for u in c.user_stops)
    with pytest.raises(ValueError, match="outside"):
        ep.crop(UNITS - 5, 10)


def test_text_slots_carry_the_answer_bytes_while_it_speaks(episodes) -> None:
    for ep in episodes:
        for t in ep.turns:
            if t.speaker != "character" or t.end_unit > ep.units:
                continue
            got = bytes(int(ep.text[s]) for s in ep.text_slots(t)).decode()
            assert got == t.spoken and (t.cut or got == t.text), (ep.seed, got, t.text)
        assert ep.turns[0].speaker == "character" and ep.turns[0].intent == "greet"
        assert ep.turns[0].start_unit <= 1


def test_an_answer_is_chosen_where_the_characters_repertoire_branches() -> None:
    ada = tables.CHARACTERS["ada"]
    assert tables.choice_points(ada, "That card is blue.") == (0, 13)  # T, then the colour
    assert tables.choice_points(ada, "I am Ada.") == (0, 2, 5)  # I; am, not cannot; Ada, not well
    assert tables.choice_points(ada, "Goodbye, see you soon.") == (0,)
    assert all(tables.choice_points(ada, a)[0] == 0 for a in tables.repertoire(ada))


def test_an_answers_text_runs_ahead_of_its_voice(episodes) -> None:
    n = 0
    for ep in episodes:
        for t in ep.turns:
            if t.speaker != "character" or t.cut or t.end_unit > ep.units:
                continue
            has_text = (ep.text[t.start_unit:t.end_unit] != PAD).any(1)
            last_text = t.start_unit + int(np.flatnonzero(has_text)[-1])
            assert has_text[0] and ep.char_speaking[t.start_unit:t.end_unit].all()
            if len(t.text.encode()) <= (t.end_unit - t.start_unit - TEXT_LEAD_UNITS) * ep.text.shape[1]:
                assert last_text == t.end_unit - 1 - TEXT_LEAD_UNITS, (ep.seed, t.text)
                n += 1
    assert n >= 5


def test_mouth_follows_the_characters_speech(episodes) -> None:
    """Per frame, the pixels of the open mouth's colour (tables: Face.lip) in the lower middle
    of the face rise and fall with the loudness of the character's audio."""
    for ep in episodes[:4]:
        f = ep.char_frames.reshape(-1, *ep.char_frames.shape[2:]).astype(np.float32)
        rms = np.sqrt(np.mean(ep.char_audio.reshape(f.shape[0], -1).astype(np.float64) ** 2, 1))
        h, w = f.shape[1:3]
        lip = np.asarray(tables.CHARACTERS[ep.character].face.lip, np.float32)
        window = f[:, int(0.5 * h):int(0.85 * h), int(0.3 * w):int(0.7 * w)]
        open_px = (np.linalg.norm(window - lip, axis=-1) < 40).sum(axis=(1, 2))
        assert np.corrcoef(rms, open_px)[0, 1] > 0.8, ep.seed
        # the portrait's own lips count too; an open mouth adds more than any silent frame has
        assert open_px[rms > 0.1].mean() > open_px[rms < 1e-4].max(), ep.seed


# --- splits ------------------------------------------------------------------------------

def test_heldout_and_train_tables_share_no_voice_phrase_or_background() -> None:
    tr, ho = "train", "heldout"
    assert not set(tables.USER_VOICES[tr]) & set(tables.USER_VOICES[ho])
    assert not set(tables.BACKGROUNDS[tr]) & set(tables.BACKGROUNDS[ho])
    train_phrases = {p for ps in tables.PHRASES[tr].values() for p in ps}
    heldout_phrases = {p for ps in tables.PHRASES[ho].values() for p in ps}
    assert not train_phrases & heldout_phrases
    assert not {o for o in tables.OPENERS[tr] if o} & {o for o in tables.OPENERS[ho] if o}
    # no user sounds like a character
    assert not {c.voice for c in tables.CHARACTERS.values()} & set(tables.USER_VOICES[tr] + tables.USER_VOICES[ho])


def test_each_split_uses_only_its_own_voices_phrases_and_backgrounds(episodes, heldout) -> None:
    for eps, split in ((episodes, "train"), (heldout, "heldout")):
        phrases = {o + p for o in tables.OPENERS[split] for ps in tables.PHRASES[split].values() for p in ps}
        for ep in eps:
            assert ep.meta["user"]["voice"] in tables.USER_VOICES[split]
            assert ep.meta["background"] in tables.BACKGROUNDS[split]
            assert set(ep.meta["phrases"]) <= phrases, ep.meta["phrases"]


# --- the microphone ----------------------------------------------------------------------

@pytest.mark.parametrize("rate", [pytest.param(16_000, id="16kHz"), pytest.param(24_000, id="24kHz")])
def test_opus_round_trip_keeps_the_timeline(rate: int) -> None:
    if importlib.util.find_spec("av") is None:
        missing("PyAV is not installed: pip install -e '.[serve]'")
    x = np.zeros(rate, np.float32)
    n = rate // 10
    x[rate // 3:rate // 3 + n] = 0.5 * np.sin(2 * np.pi * 700 * np.arange(n) / rate) * np.hanning(n)
    for kbps in tables.OPUS_KBPS:
        y = opus_round_trip(x, rate, kbps)
        assert y.shape == x.shape
        win = np.ones(rate // 100)
        env_x, env_y = np.convolve(x ** 2, win, "same"), np.convolve(y ** 2, win, "same")
        assert abs(int(np.argmax(env_y)) - int(np.argmax(env_x))) <= rate // 500, kbps  # 2 ms
