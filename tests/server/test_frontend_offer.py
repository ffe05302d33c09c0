"""POST /offer's checks, without a server: each bad body is refused with its status and a reason
that says what to fix; a browser-like offer (from aiortc) passes."""
from __future__ import annotations

import json
import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from server.frontend.offer import OfferError, check_token, media_kinds, parse_offer
from tests.server.call_client import SyntheticCamera, SyntheticMicrophone

LIMIT = 65536


async def make_offer(audio: bool = True, video: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video:
        pc.addTrack(SyntheticCamera())
    if audio:
        pc.addTrack(SyntheticMicrophone())
    pc.createDataChannel("duplex")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def body(**fields: object) -> bytes:
    return json.dumps({"type": "offer", **fields}).encode()


def refused(raw: bytes) -> OfferError:
    with pytest.raises(OfferError) as e:
        parse_offer(raw, LIMIT)
    return e.value


async def test_a_browser_like_offer_is_accepted_with_its_character():
    sdp = await make_offer()
    offer = parse_offer(body(sdp=sdp, character="bram"), LIMIT)
    assert offer.character == "bram" and offer.sdp == sdp
    assert sorted(media_kinds(sdp)) == ["application", "audio", "video"]


@pytest.mark.parametrize("raw, status, says", [
    pytest.param(b"{not json", 400, "not valid JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe", 400, "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", 400, "JSON object", id="array"),
    pytest.param(json.dumps({"sdp": "v=0"}).encode(), 400, '"type" must be "offer"', id="no-type"),
    pytest.param(body(sdp=""), 400, "non-empty string", id="empty-sdp"),
    pytest.param(body(sdp="hello, I am not an SDP"), 400, "v=0", id="garbage-sdp"),
    pytest.param(body(sdp="v=0\r\ns=-\r\n"), 400, "no 'm=' media line", id="sdp-without-media"),
    pytest.param(body(sdp="v=0", character=7), 400, "character id string", id="character-not-string"),
    pytest.param(b" " * (LIMIT + 1), 413, f"at most {LIMIT}", id="oversize"),
])
def test_a_bad_body_is_refused_with_its_status_and_reason(raw, status, says):
    e = refused(raw)
    assert e.status == status and says in e.reason, e.reason


@pytest.mark.parametrize("audio, video, missing", [
    pytest.param(False, True, "no audio", id="video-only"),
    pytest.param(True, False, "no video", id="audio-only"),
    pytest.param(False, False, "no audio and no video", id="data-only"),
])
async def test_an_offer_without_camera_or_microphone_is_refused(audio, video, missing):
    e = refused(body(sdp=await make_offer(audio, video)))
    assert e.status == 400 and missing in e.reason and "add both tracks" in e.reason


async def test_a_rejected_media_section_counts_as_missing():
    sdp = re.sub(r"^m=audio \d+ ", "m=audio 0 ", await make_offer(), flags=re.M)
    assert "no audio" in refused(body(sdp=sdp)).reason


async def test_an_offer_without_dtls_fingerprint_is_refused():
    sdp = "\r\n".join(ln for ln in (await make_offer()).splitlines() if not ln.startswith("a=fingerprint:"))
    assert "fingerprint" in refused(body(sdp=sdp)).reason


@pytest.mark.parametrize("header, token, ok", [
    pytest.param(None, None, True, id="no-token-set"),
    pytest.param("Bearer s3cret", "s3cret", True, id="right-token"),
    pytest.param(None, "s3cret", False, id="missing"),
    pytest.param("Bearer wrong", "s3cret", False, id="wrong"),
    pytest.param("Basic s3cret", "s3cret", False, id="wrong-scheme"),
])
def test_the_token_is_checked_when_one_is_set(header, token, ok):
    if ok:
        check_token(header, token)
    else:
        with pytest.raises(OfferError) as e:
            check_token(header, token)
        assert e.value.status == 401
