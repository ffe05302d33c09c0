"""The shipped demonstrator (checkpoints/demo, what `duplex serve` loads by default) in real calls:
a user holds up a card and asks its colour, in Chromium (its fake camera and microphone play
files) and from aiortc, and cuts in on an answer. What is asserted is what a caller sees and
hears: the captions name the card's colour and no other, the grammar judge hears the right
answer in the character's voice, and an answer stops when the user talks over it.

The user's voice, phrasings and camera background are held out from training (model/data/
tables.py). The two colour tests are expected failures for now (NAMES_THE_COLOUR below). Needs espeak-ng, pocketsphinx and Chromium (tests/missing.py: CI fails without).
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import av
import numpy as np
import pytest

from bench.call_client import MIC_RATE, CallClient, CardCamera, ScriptedMicrophone
from bench.conversation_eval import answer_texts, normalise
from bench.judges import pick, write_wav
from model.data import COLOUR_NAMES, Synth, espeak_available
from model.data.camera import Camera
from model.data.speech import utterance
from model.data.tables import USER_LEVEL_DBFS
from tests.missing import missing
from tests.server.call_helpers import ARTIFACTS, chromium

PRESET = None  # the daemon's default: the shipped checkpoint
DAEMON_ARGS = ("--compile",)  # as `make run` starts it
READY_S = 300.0  # a cold compile takes 1-2 minutes on 2 cores
pytestmark = pytest.mark.timeout(420)
VOICE = "en-gb-x-rp"  # a held-out user voice
COLOUR_QUESTION = "do you know what colour this is"  # a held-out phrasing
SMALL_TALK_QUESTION = "how do you feel today"
GREETING_S = 4.0  # the character greets as a call starts; the user waits for it
STOPPED_S = 1.2  # after a barge-in's onset: 2 units to stop, a unit's rounding, the pipeline


@pytest.fixture(scope="module")
def synth() -> Synth:
    if not espeak_available():
        missing("espeak-ng is not installed: apt-get install espeak-ng")
    if importlib.util.find_spec("pocketsphinx") is None:
        missing("pocketsphinx is not installed: pip install -e '.[test]'")
    return Synth()


def spoken(synth: Synth, text: str) -> np.ndarray:
    """`text` in the held-out user voice at 48 kHz, at a user's level."""
    return utterance(synth, text, VOICE, MIC_RATE, USER_LEVEL_DBFS, speed=150)


def colours_in(text: str) -> set[str]:
    return set(normalise(text).split()) & set(COLOUR_NAMES)


def captions_between(client: CallClient, start: float, end: float) -> str:
    return "".join(e["text"] for t, e in client.got.events if e.get("type") == "caption" and start <= t <= end)


@asynccontextmanager
async def greeted_call(daemon, card: str, character: str) -> AsyncIterator[tuple[CallClient, ScriptedMicrophone]]:
    """An aiortc call that holds up a `card` card, from the end of the character's greeting."""
    mic = ScriptedMicrophone()
    client = CallClient(daemon.url, tracks=(CardCamera(card), mic), keep_audio=True)
    await client.call(character=character)
    try:
        await client.wait_media()
        await asyncio.sleep(GREETING_S)
        yield client, mic
    finally:
        await client.hangup()


def write_y4m(path: Path, colour: str, seconds: float, width: int = 320, height: int = 240) -> None:
    """A y4m clip (Chromium's fake camera file) of a hand holding up a `colour` card."""
    camera = Camera(np.random.default_rng(0), height, width, "room", colour)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(int(seconds * 25)):
            frame = av.VideoFrame.from_ndarray(camera.frame(i)[0], format="rgb24").reformat(format="yuv420p")
            f.write(b"FRAME\n" + b"".join(bytes(p) for p in frame.planes))


# What the page's camera showed and sent, sampled through the call and kept beside the screenshot
# (in CI runs the preview once read black: mean level 0, where the y4m's is about 120 of 255).
CAMERA_JS = """async () => {
  const v = document.getElementById('local'), c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  let level = null;
  if (c.width) {
    const g = c.getContext('2d'); g.drawImage(v, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;
    for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
    level = s / (d.length / 4) / 3;
  }
  const track = window.duplex.local.getVideoTracks()[0], set = track.getSettings();
  let sent = null;
  if (window.duplex.pc) (await window.duplex.pc.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'video')
      sent = {frames: r.framesSent, width: r.frameWidth, height: r.frameHeight};
  });
  return {preview_level: level, preview_size: [v.videoWidth, v.videoHeight], playing: !v.paused, sent,
          track: {state: track.readyState, muted: track.muted, frame_rate: set.frameRate}};
}"""


# Not yet true of the shipped checkpoint: the judge hears the planned answer in 7 of 19 held-out
# conversations and its captions name it in 26 % (README, "The demonstrator"). The calls must
# still work end to end: only the final assertion is expected to fail (raises=AssertionError).
NAMES_THE_COLOUR = pytest.mark.xfail(raises=AssertionError, strict=False, reason=(
    "issue 13: the demonstrator names the card's colour only at times (duplex eval model: answers 37 %)"))


@NAMES_THE_COLOUR
async def test_chromium_captions_name_the_colour_of_the_card_held_up(daemon, synth, tmp_path):
    # the greeting, the question, time for the answer (the wav loops)
    question = spoken(synth, COLOUR_QUESTION)
    wav = np.concatenate([np.zeros(int(GREETING_S * MIC_RATE)), question, np.zeros(6 * MIC_RATE)])
    write_wav(tmp_path / "question.wav", wav.astype(np.float32), MIC_RATE)
    # as long as the call: in CI, Chromium ended the camera's track when a 4 s file ran out (its
    # state "ended" 3-4 s into the call, the preview black), where here it looped
    write_y4m(tmp_path / "card.y4m", "blue", 2 * len(wav) / MIC_RATE + 5.0)
    flags = (f"--use-file-for-fake-video-capture={tmp_path / 'card.y4m'}",
             f"--use-file-for-fake-audio-capture={tmp_path / 'question.wav'}")
    seen: list[str] = []
    async with chromium(extra_flags=flags) as browser:
        page = await browser.new_page(viewport={"width": 1100, "height": 720})
        await page.goto(daemon.url + "/")
        await page.wait_for_function("!document.getElementById('call').disabled", timeout=15_000)
        await page.click("label.character:has-text('Ada')")
        await page.click("#call")
        await page.wait_for_function("window.duplex.state === 'in-call'", timeout=20_000)
        start = time.monotonic()
        deadline = start + 2 * len(wav) / MIC_RATE  # the question plays twice
        cameras = []
        while time.monotonic() < deadline and not colours_in(seen[-1] if seen else ""):
            await asyncio.sleep(0.2)
            seen.append(await page.evaluate("document.getElementById('captions').textContent"))
            if len(seen) % 5 == 0:
                cameras.append({"s": round(time.monotonic() - start, 1), **await page.evaluate(CAMERA_JS)})
        await asyncio.sleep(1.5)  # the rest of the answer
        seen.append(await page.evaluate("document.getElementById('captions').textContent"))
        camera = await page.evaluate(CAMERA_JS)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "chromium_demonstrator_call.png"))
        (ARTIFACTS / "chromium_demonstrator_call.json").write_text(json.dumps({"camera": camera, "cameras": cameras, "seen": seen}))
        await page.click("#hangup")
    said = set().union(*(colours_in(s) for s in seen))
    assert said == {"blue"}, f"the captions named {said or 'no colour'}: {seen[-1]!r}; the page's camera: {camera}"


@NAMES_THE_COLOUR
async def test_aiortc_caller_hears_the_right_answer(daemon, synth):
    async with greeted_call(daemon, "green", "bram") as (client, mic):
        _, end = mic.say(spoken(synth, COLOUR_QUESTION))
        await asyncio.sleep(end - time.monotonic() + 4.0)
        heard = client.got.heard(end, time.monotonic())
        captions = captions_between(client, end, time.monotonic())
    write_wav(ARTIFACTS / "demonstrator_answer.wav", heard, MIC_RATE)
    assert pick(heard, MIC_RATE, answer_texts("bram")) == "that card is green", f"captions: {captions!r}"
    assert colours_in(captions) == {"green"}, captions


async def test_an_answer_stops_when_the_user_talks_over_it(daemon, synth):
    """The user asks how it is, then asks about the card while it answers: its voice and its
    captions stop while the user speaks. (Its captions may hold the whole answer already: an
    answer's text runs up to 3 units ahead of its voice.)"""
    async with greeted_call(daemon, "red", "ada") as (client, mic):
        _, asked = mic.say(spoken(synth, SMALL_TALK_QUESTION))
        await until_caption(client, asked, 3.0)
        await asyncio.sleep(0.3)
        # one unbroken stretch of speech (no pause over 50 ms): a pause of a unit or more after a
        # whole question is a turn's end, which it answers, as it was taught ("..., tell me" has
        # 240 ms after "hold": CI once caught it saying "That ca" there)
        onset, done = mic.say(spoken(synth, "tell me what is the colour of the card I hold"))
        await asyncio.sleep(done - time.monotonic() + 4.0)
        talking = client.got.heard(onset - 0.4, onset)
        # it stops 1-2 units after the onset; what it said then reaches the page within ~0.5 s
        during = captions_between(client, onset + STOPPED_S, done)
        quiet = client.got.heard(onset + STOPPED_S, done)
    assert talking.size and np.sqrt(np.mean(talking ** 2)) > 0.01, "it was not talking when the user cut in"
    assert during == "", f"it went on talking over the user: {during!r}"
    assert quiet.size > 0.5 * MIC_RATE and np.sqrt(np.mean(quiet ** 2)) < 0.01, "its voice went on over the user's"


async def until_caption(client: CallClient, since: float, timeout: float) -> float:
    """When the first caption after `since` arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [t for t, e in client.got.events if e.get("type") == "caption" and t >= since and e["text"]]
        if times:
            return times[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no answer within {timeout} s of the question")
