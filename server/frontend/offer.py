"""What POST /offer accepts: a JSON body {sdp, type: "offer", character?} whose SDP offers an
audio and a video stream, and the bearer token when one is set.

aiortc answers a garbage SDP with an empty answer instead of an error, so the offer is checked
here first, and every refusal is an `OfferError` with the HTTP status and a reason the page
can show. Pure parsing: no peer connection, no engine, no I/O.
"""
from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

MEDIA_NEEDED = ("audio", "video")


class OfferError(Exception):
    """A refused offer: `status` is the HTTP status, the message says what to fix."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Offer:
    sdp: str
    character: str | None  # a character id from GET /characters; None: the default one


def check_token(header: str | None, token: str | None) -> None:
    """With a token set, the request must carry `Authorization: Bearer <token>`."""
    if token is None:
        return
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise OfferError(401, "this server needs an access token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise OfferError(401, "the access token is not valid")


def media_kinds(sdp: str) -> list[str]:
    """The kinds of the SDP's media sections that are offered (port not 0)."""
    kinds = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) >= 4 and fields[1] != "0":
                kinds.append(fields[0])
    return kinds


def check_sdp(sdp: str) -> None:
    lines = [ln.strip() for ln in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        raise OfferError(400, "the SDP must start with 'v=0' (RFC 8866); send the browser's "
                              "RTCPeerConnection.localDescription.sdp")
    if not any(ln.startswith("o=") for ln in lines) or not any(ln.startswith("m=") for ln in lines):
        raise OfferError(400, "the SDP has no 'o=' origin or no 'm=' media line; it is not an offer")
    kinds = media_kinds(sdp)
    missing = [k for k in MEDIA_NEEDED if k not in kinds]
    if missing:
        raise OfferError(400, f"the offer has no {' and no '.join(missing)} stream; a call needs the "
                              f"camera (video) and the microphone (audio): add both tracks before "
                              f"createOffer()")
    if not any(ln.startswith("a=fingerprint:") for ln in lines):
        raise OfferError(400, "the SDP has no DTLS fingerprint ('a=fingerprint:'); WebRTC media "
                              "must be encrypted")


def parse_offer(body: bytes, max_bytes: int) -> Offer:
    """Check a POST /offer body; raises OfferError with the status and reason."""
    if len(body) > max_bytes:
        raise OfferError(413, f"the request body is {len(body)} bytes; at most {max_bytes} are accepted")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OfferError(400, f"the body is not valid JSON ({e}); send "
                              f'{{"sdp": "...", "type": "offer", "character": "<id>"}}') from None
    if not isinstance(data, dict):
        raise OfferError(400, f"the body must be a JSON object, got {type(data).__name__}")
    if data.get("type") != "offer":
        raise OfferError(400, f'"type" must be "offer", got {data.get("type")!r}')
    sdp, character = data.get("sdp"), data.get("character")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, '"sdp" must be a non-empty string')
    if character is not None and not isinstance(character, str):
        raise OfferError(400, f'"character" must be a character id string, got {character!r}')
    check_sdp(sdp)
    return Offer(sdp, character or None)
