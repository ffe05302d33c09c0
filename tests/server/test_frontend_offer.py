"""POST /offer's checks, without a server: each bad body is refused with its status and a reason
that says what to fix; a browser-like offer (from aiortc) passes."""
from __future__ import annotations

import json
import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from server.frontend.offer import OfferError, check_origin, check_token, media_kinds, media_sections, parse_offer
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
    pytest.param(b"[" * 5000, 400, "nested too deeply", id="deep-arrays"),
    pytest.param(b'{"a":' * 5000, 400, "nested too deeply", id="deep-objects"),
    pytest.param(b"1" * 5000, 400, "not valid JSON", id="huge-integer"),
    pytest.param(body(sdp="v=0\ud800"), 400, "unpaired surrogate", id="surrogate-in-sdp"),
    pytest.param(body(sdp=["v=0"]), 400, "non-empty string", id="sdp-not-string"),
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


@pytest.mark.parametrize("audio, video, deaf", [
    pytest.param("sendonly", "sendonly", "audio or video", id="both-sendonly"),
    pytest.param("sendrecv", "sendonly", "video", id="video-sendonly"),
    pytest.param("inactive", "sendrecv", "audio", id="audio-inactive"),
    pytest.param("recvonly", "recvonly", None, id="both-recvonly"),
])
async def test_an_offer_that_cannot_receive_the_avatar_is_refused(audio, video, deaf):
    sdp = await make_offer()
    for kind, direction in (("audio", audio), ("video", video)):
        sdp = re.sub(rf"(m={kind} [^\n]*\n(?:(?!m=)[^\n]*\n)*?)a=sendrecv", rf"\1a={direction}", sdp)
    assert sorted(media_sections(sdp)) == sorted([("application", "sendrecv"), ("audio", audio),
                                                  ("video", video)])
    if deaf is None:
        parse_offer(body(sdp=sdp), LIMIT)
        return
    e = refused(body(sdp=sdp))
    assert e.status == 400 and f"cannot receive {deaf}" in e.reason and "sendrecv or recvonly" in e.reason


def test_a_session_level_direction_applies_to_sections_without_their_own():
    sdp = "v=0\r\na=sendonly\r\nm=audio 9 UDP 0\r\nm=video 9 UDP 96\r\na=recvonly\r\n"
    assert media_sections(sdp) == [("audio", "sendonly"), ("video", "recvonly")]


async def test_an_offer_without_dtls_fingerprint_is_refused():
    sdp = "\r\n".join(ln for ln in (await make_offer()).splitlines() if not ln.startswith("a=fingerprint:"))
    assert "fingerprint" in refused(body(sdp=sdp)).reason


@pytest.mark.parametrize("header, token, ok", [
    pytest.param(None, None, True, id="no-token-set"),
    pytest.param("Bearer s3cret", "s3cret", True, id="right-token"),
    pytest.param(None, "s3cret", False, id="missing"),
    pytest.param("Bearer wrong", "s3cret", False, id="wrong"),
    pytest.param("Basic s3cret", "s3cret", False, id="wrong-scheme"),
    pytest.param("Bearer s3crét", "s3cret", False, id="non-ascii"),
    pytest.param("Bearer \udcff\ud800", "s3cret", False, id="surrogates"),
    pytest.param("Bearer pässwort", "pässwort", True, id="non-ascii-token"),
])
def test_the_token_is_checked_when_one_is_set(header, token, ok):
    if ok:
        check_token(header, token)
    else:
        with pytest.raises(OfferError) as e:
            check_token(header, token)
        assert e.value.status == 401


@pytest.mark.parametrize("origin, host, allowed, ok", [
    pytest.param(None, "127.0.0.1:8080", [], True, id="no-origin"),
    pytest.param("http://127.0.0.1:8080", "127.0.0.1:8080", [], True, id="same-origin"),
    pytest.param("https://duplex.example.org", "duplex.example.org", [], True, id="behind-tls-proxy"),
    pytest.param("https://duplex.example.org", "duplex.example.org:443", [], True, id="default-port"),
    pytest.param("http://evil.example", "127.0.0.1:8080", [], False, id="cross-site"),
    pytest.param("http://127.0.0.1:9999", "127.0.0.1:8080", [], False, id="other-port"),
    pytest.param("null", "127.0.0.1:8080", [], False, id="opaque"),
    pytest.param("http://127.0.0.1:8080", None, [], False, id="no-host"),
    pytest.param("https://App.example.org", "x", ["https://app.example.org"], True, id="allowed"),
    pytest.param("http://evil.example", "x", ["*"], True, id="any"),
])
def test_only_the_pages_own_origin_or_an_allowed_one_may_offer(origin, host, allowed, ok):
    if ok:
        check_origin(origin, host, allowed)
    else:
        with pytest.raises(OfferError) as e:
            check_origin(origin, host, allowed)
        assert e.value.status == 403 and "DUPLEX_ALLOWED_ORIGINS" in e.value.reason
