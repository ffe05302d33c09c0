"""A real browser calls `duplex serve`: headless Chromium (Debian's, driven by Playwright, with
a fake camera and microphone) loads the page, presses Call, and decodes the avatar's video
(>= 50 frames in 5 s) while its audio plays; a screenshot of the page in call is saved to
test-artifacts/. Under CI=true a missing Chromium or Playwright fails the test.
DUPLEX_TEST_PRESET=cpu runs it on the `cpu` preset (the default is `tiny`, fast);
DUPLEX_TEST_CALL_S=60 makes the measured part of the call longer (5 s by default)."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

import pytest
import torch

from bench.model_step import device_name, git_commit
from model.config import UNIT_SECONDS, preset
from tests.server.call_helpers import ARTIFACTS, chromium, metric, write_artifact

PRESET = os.environ.get("DUPLEX_TEST_PRESET", "tiny")
CALL_S = float(os.environ.get("DUPLEX_TEST_CALL_S", "5"))
pytestmark = pytest.mark.timeout(180 + CALL_S)
INBOUND = """async () => {
  const out = {};
  (await window.duplex.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") out[s.kind] = {frames: s.framesDecoded, samples: s.totalSamplesReceived,
                                                 energy: s.totalAudioEnergy, concealed: s.concealedSamples};
  });
  return out;
}"""
# The remote stream's loudness through WebAudio: the audio really reaches the page's output.
LOUDNESS = """async () => {
  const ctx = new AudioContext();
  const an = ctx.createAnalyser();
  ctx.createMediaStreamSource(document.getElementById("remote").srcObject).connect(an);
  const buf = new Float32Array(an.fftSize);
  let peak = 0;
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 50));
    an.getFloatTimeDomainData(buf);
    peak = Math.max(peak, ...buf.map(Math.abs));
  }
  await ctx.close();
  return peak;
}"""


async def test_chromium_calls_and_decodes_the_avatar_with_audio_playing(daemon):
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1100, "height": 720})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        failed: list[str] = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        await page.goto(daemon.url + "/")
        await page.wait_for_function("!document.getElementById('call').disabled", timeout=15_000)
        await page.click("label.character:has-text('Bram')")
        await page.click("#call")
        await page.wait_for_function("window.duplex.state === 'in-call'", timeout=20_000)
        await page.wait_for_function(
            "document.getElementById('remote').readyState >= 2 && !document.getElementById('remote').paused",
            timeout=15_000)
        before, units0, t0 = await page.evaluate(INBOUND), await page.evaluate("window.duplex.units"), time.monotonic()
        await asyncio.sleep(CALL_S)
        after, units1, seconds = await page.evaluate(INBOUND), await page.evaluate("window.duplex.units"), time.monotonic() - t0
        peak = await page.evaluate(LOUDNESS)
        await page.wait_for_function("document.getElementById('lat-model').textContent.endsWith('ms')")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"chromium_in_call_{PRESET}.png"))
        video = await page.evaluate("(() => { const v = document.getElementById('remote'); "
                                    "return {w: v.videoWidth, h: v.videoHeight, paused: v.paused, muted: v.muted}; })()")
        await page.click("#hangup")
        await page.wait_for_function("window.duplex.state === 'idle'")
    frames = after["video"]["frames"] - before["video"]["frames"]
    samples = after["audio"]["samples"] - before["audio"]["samples"]
    concealed = after["audio"]["concealed"] - before["audio"]["concealed"]
    assert not failed, f"the page's requests failed: {failed}"
    # the tracks always send a frame (held or silent): what proves the model is the units it delivered
    assert units1 - units0 >= 0.9 * seconds / UNIT_SECONDS, f"{units1 - units0} units delivered in {seconds:.1f} s"
    assert frames >= 10 * seconds, f"{frames} frames decoded in {seconds:.1f} s; console: {console}"
    write_artifact(f"chromium_call_{PRESET}.json", {
        "device": device_name(torch.device("cpu")), "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "preset": PRESET, "call_s": round(seconds, 2), "units_delivered": units1 - units0,
        "units_of_the_clock": round(seconds / UNIT_SECONDS, 1), "frames_decoded": frames,
        "audio_samples": samples, "concealed_samples": concealed})
    assert samples >= 0.9 * 48_000 * seconds and concealed < 0.1 * samples, (samples, concealed)
    assert after["audio"]["energy"] > before["audio"]["energy"] and peak > 0.01, "the audio is not silent"
    size = preset(PRESET).video
    assert video == {"w": size.width, "h": size.height, "paused": False, "muted": False}
    await asyncio.sleep(0.5)
    text = daemon.metrics()
    assert metric(text, "duplex_sessions_total", 'outcome="ok"') == 1, "Hang up ended the call"
