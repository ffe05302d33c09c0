"""What POST /offer accepts: a JSON body {sdp, type: "offer", character?} whose SDP offers an
audio and a video stream the caller can receive, the bearer token when one is set, and an
Origin that is the page's own or an allowed one.

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
    # bytes on both sides: compare_digest refuses non-ASCII str, and a header may carry any byte
    # (surrogatepass: no str is refused)
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"),
                               token.encode("utf-8", "surrogatepass")):
        raise OfferError(401, "the access token is not valid")


def _host_port(netloc: str, scheme: str) -> str:
    """`netloc` without the scheme's default port: https://x:443 is https://x."""
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def check_origin(origin: str | None, host: str | None, allowed: list[str]) -> None:
    """A browser's request must come from the daemon's own page (its Origin's host is the
    request's Host) or from an origin in `allowed` ("*": any); a request without an Origin (not
    a browser's: curl, aiortc) passes. Behind a TLS proxy the page is https:// while the daemon
    sees http://, so the scheme is not compared; the host (and port) is."""
    if origin is None or "*" in allowed:
        return
    given = origin.strip().lower()
    if given in allowed:
        return
    scheme, sep, netloc = given.partition("://")
    if sep and scheme in ("http", "https") and host is not None and netloc \
            and _host_port(netloc, scheme) == _host_port(host.strip().lower(), scheme):
        return
    raise OfferError(403, f"a page from origin {origin[:200]!r} may not call this server: only its own "
                          f"pages (host {(host or '')[:200]!r}) and the allowed origins ({allowed or 'none'}) "
                          f"may; add the origin to DUPLEX_ALLOWED_ORIGINS to allow it")


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def media_sections(sdp: str) -> list[tuple[str, str]]:
    """(kind, direction) of each media section that is offered (port not 0); the direction is
    the section's own a=<direction>, else the session's, else sendrecv (RFC 8866 6.7)."""
    session_dir, sections = "sendrecv", []
    current: list[str] | None = None  # [kind, direction] of the section being read
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("m="):
            fields = line[2:].split()
            current = [fields[0], session_dir] if len(fields) >= 4 and fields[1] != "0" else None
            if current is not None:
                sections.append(current)
        elif line[2:] in DIRECTIONS and line.startswith("a="):
            if current is not None:
                current[1] = line[2:]
            elif not sections:
                session_dir = line[2:]
    return [(kind, direction) for kind, direction in sections]


def media_kinds(sdp: str) -> list[str]:
    """The kinds of the SDP's media sections that are offered (port not 0)."""
    return [kind for kind, _ in media_sections(sdp)]


def check_sdp(sdp: str) -> None:
    lines = [ln.strip() for ln in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        raise OfferError(400, "the SDP must start with 'v=0' (RFC 8866); send the browser's "
                              "RTCPeerConnection.localDescription.sdp")
    if not any(ln.startswith("o=") for ln in lines) or not any(ln.startswith("m=") for ln in lines):
        raise OfferError(400, "the SDP has no 'o=' origin or no 'm=' media line; it is not an offer")
    sections = media_sections(sdp)
    missing = [k for k in MEDIA_NEEDED if k not in (kind for kind, _ in sections)]
    if missing:
        raise OfferError(400, f"the offer has no {' and no '.join(missing)} stream; a call needs the "
                              f"camera (video) and the microphone (audio): add both tracks before "
                              f"createOffer()")
    deaf = [k for k in MEDIA_NEEDED
            if not any(kind == k and d in ("sendrecv", "recvonly") for kind, d in sections)]
    if deaf:
        found = ", ".join(f"{kind} {d}" for kind, d in sections if kind in deaf)
        raise OfferError(400, f"the offer cannot receive {' or '.join(deaf)} ({found}): the avatar comes "
                              f"back as audio and video, so each must be sendrecv or recvonly; add the "
                              f"tracks with addTrack() or a transceiver of direction 'sendrecv'")
    if not any(ln.startswith("a=fingerprint:") for ln in lines):
        raise OfferError(400, "the SDP has no DTLS fingerprint ('a=fingerprint:'); WebRTC media "
                              "must be encrypted")


def parse_offer(body: bytes, max_bytes: int) -> Offer:
    """Check a POST /offer body; raises OfferError with the status and reason."""
    if len(body) > max_bytes:
        raise OfferError(413, f"the request body is {len(body)} bytes; at most {max_bytes} are accepted")
    try:
        data = json.loads(body)
    except RecursionError:
        raise OfferError(400, "the body's JSON is nested too deeply; send "
                              '{"sdp": "...", "type": "offer", "character": "<id>"}') from None
    except ValueError as e:  # not UTF-8, not JSON, an integer of more than 4300 digits
        raise OfferError(400, f"the body is not valid JSON ({str(e)[:200]}); send "
                              f'{{"sdp": "...", "type": "offer", "character": "<id>"}}') from None
    if not isinstance(data, dict):
        raise OfferError(400, f"the body must be a JSON object, got {type(data).__name__}")
    if data.get("type") != "offer":
        raise OfferError(400, f'"type" must be "offer", got {data.get("type")!r}')
    sdp, character = data.get("sdp"), data.get("character")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, '"sdp" must be a non-empty string')
    if character is not None and not isinstance(character, str):
        raise OfferError(400, f'"character" must be a character id string, got {type(character).__name__}')
    for name, value in (("sdp", sdp), ("character", character or "")):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise OfferError(400, f'"{name}" is not text: it holds an unpaired surrogate (\\ud800-'
                                  f'\\udfff); send it as the browser gives it') from None
    check_sdp(sdp)
    return Offer(sdp, character or None)
