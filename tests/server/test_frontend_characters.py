"""Characters: the shipped ones load at every preset's resolution and audio rate; a missing or
bad file is a clear error naming it, and `duplex serve` refuses to start with one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model.config import PRESETS, preset
from server.frontend.characters import CharacterError, load_characters
from server.serve import main as serve_main
from server.settings import SHIPPED_CHARACTERS
from tests.missing import missing


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_shipped_characters_fit_every_preset(name):
    cfg = preset(name)
    chars = load_characters(SHIPPED_CHARACTERS, cfg)
    assert [c.name for c in chars.values()] == ["Ada", "Bram"]
    for c in chars.values():
        ch = c.character
        assert tuple(ch.image.shape) == (3, cfg.video.height, cfg.video.width)
        assert tuple(ch.voice.shape) == (cfg.character.voice_units * cfg.audio.samples_per_unit,)
        assert -1 <= float(ch.image.min()) < float(ch.image.max()) <= 1
        assert 0.1 < float(ch.voice.abs().max()) <= 1 and c.persona


@pytest.mark.parametrize("name", ["demo", "base"])
def test_the_daemon_prefills_the_voice_the_conversations_were_made_with(name):
    """voice.wav is the espeak-ng voice of model/data's episodes: what training put in the voice
    sink is what a call puts there (to 16-bit rounding)."""
    from model.data import espeak_available
    from model.data.media import voice_reference
    if not espeak_available():
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    cfg = preset(name)
    for cid, c in load_characters(SHIPPED_CHARACTERS, cfg).items():
        assert float((c.character.voice - torch.from_numpy(voice_reference(cid, cfg))).abs().max()) < 2e-4, cid


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "characters"
    shutil.copytree(SHIPPED_CHARACTERS / "ada", root / "ada")
    return root


@pytest.mark.parametrize("damage, says", [
    pytest.param(lambda d: (d / "voice.wav").unlink(), "voice.wav is missing", id="missing-voice"),
    pytest.param(lambda d: (d / "image.png").write_bytes(b"not a png"), "not a readable image", id="bad-image"),
    pytest.param(lambda d: (d / "voice.wav").write_bytes(b"RIFF...."), "not a readable audio file", id="bad-voice"),
    pytest.param(lambda d: (d / "character.json").write_text("{"), "not readable JSON", id="bad-json"),
    pytest.param(lambda d: (d / "character.json").write_text(json.dumps({"name": "Ada"})),
                 "field 'persona' must be a non-empty string", id="no-persona"),
])
def test_a_bad_character_file_is_an_error_that_names_it(folder, damage, says):
    damage(folder / "ada")
    with pytest.raises(CharacterError) as e:
        load_characters(folder, preset("tiny"))
    assert says in str(e.value) and str(folder / "ada") in str(e.value)


def test_a_voice_too_short_for_the_preset_says_how_long_it_must_be(folder, tmp_path):
    import av
    import numpy as np
    with av.open(str(folder / "ada" / "voice.wav"), "w") as c:  # 0.5 s; `base` needs 0.96 s
        s = c.add_stream("pcm_s16le", rate=24_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 12_000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 24_000
        for p in list(s.encode(frame)) + list(s.encode()):
            c.mux(p)
    load_characters(folder, preset("cpu"))  # 0.32 s is enough here
    with pytest.raises(CharacterError, match=r"the voice sample is 0.50 s, the preset needs at least 0.96 s"):
        load_characters(folder, preset("base"))


def test_an_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(CharacterError, match="does not exist"):
        load_characters(tmp_path / "nope", preset("tiny"))
    with pytest.raises(CharacterError, match="no character folders"):
        load_characters(tmp_path, preset("tiny"))


def test_duplex_serve_does_not_start_with_a_bad_character(folder, capsys):
    (folder / "ada" / "image.png").unlink()
    assert serve_main(["--preset", "tiny", "--characters", str(folder)]) == 2
    assert "image.png is missing" in capsys.readouterr().err
