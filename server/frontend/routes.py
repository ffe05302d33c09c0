"""The daemon's HTTP routes, and `make_app`, the aiohttp application that serves them.

  GET  /                          the web client (server/static/)
  POST /offer                     {sdp, type: "offer", character?} -> {sdp, type: "answer", session}
                                  400 malformed JSON / SDP, an offer without audio or video or
                                  that cannot receive both, an unknown character; 401 without the
                                  token when one is set; 403 from another site's page; 408 a body
                                  slower than body_timeout_s; 413 over the body limit (with or
                                  without Content-Length); 503 + Retry-After past capacity
  GET  /characters                the characters, the default first
  GET  /characters/{id}/image.png a character's reference image
  GET  /config                    what the page needs to call: ICE servers, whether a token is needed;
                                  TURN credentials (static or minted) only with the token when one
                                  is set (401 for a wrong one)
  GET  /metrics                   Prometheus
  GET  /healthz                   the process is up and can serve (503 once no worker pair can start)
  GET  /readyz                    the workers are loaded and a call slot is free (503 otherwise)
Every refusal is JSON {"error": reason}; a refused request changes nothing else.

Timeouts: a connection must send its request head within header_timeout_s of opening (or of
its last response; aiohttp's keep-alive timer, which also runs before the first request), and
POST /offer's body within body_timeout_s; header lines and fields are capped at 8 KiB, 64 of
them (aiohttp's parser answers 400 past those).
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from server.engine import AtCapacity
from server.frontend.app import FrontEnd
from server.frontend.datachannel import BadMessages
from server.frontend.offer import OfferError, check_origin, check_token, parse_offer
from server.metrics import CONTENT_TYPE

STATIC = Path(__file__).resolve().parent.parent / "static"
FRONT = web.AppKey("front", FrontEnd)


MAX_HEADERS = 64  # header fields of one request
MAX_FIELD = 8190  # bytes of the request line and of one header field (aiohttp's default)
LINGER_S = 2.0  # after a refusal mid-body, read (and drop) the rest this long, then close


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log. A request its parser refuses (a malformed head, a bad
    Content-Length, a line or header past the caps) or whose body is malformed (a broken chunk;
    aiohttp meets it again while draining the rest of a refused body) is the client's error:
    aiohttp would log it with a traceback; here it is one throttled line. Anything else keeps
    its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("duplex.http"), {})
        self.refused = BadMessages()

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        client = isinstance(exc_info, RequestPayloadError) or (
            isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500)
        if client:
            if n := self.refused.note(time.monotonic()):
                why = " ".join(str(exc_info).split())[:200]
                self.logger.warning("refused %d malformed request(s) (%d in all), the last: %s",
                                    n, self.refused.total, why)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    resp = web.json_response({"error": reason}, status=status, headers=headers)
    if status in (408, 413):
        resp.force_close()  # the rest of that body is not worth waiting for
    return resp


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, however it is split into segments or chunks: OfferError 413 past `limit`
    bytes (declared or sent), 408 if it has not all arrived within `timeout_s`, 400 if the
    chunked encoding is broken."""
    if request.content_length is not None and request.content_length > limit:
        raise OfferError(413, f"the request body is {request.content_length} bytes; at most {limit} "
                              f"are accepted")
    body, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise OfferError(413, f"the request body is over {limit} bytes; at most {limit} "
                                          f"are accepted")
                body.append(chunk)
    except TimeoutError:
        raise OfferError(408, f"the request body did not arrive within {timeout_s:g} s "
                              f"({size} bytes came)") from None
    except RequestPayloadError as e:
        raise OfferError(400, f"the request body is malformed: {e}") from None
    return b"".join(body)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def offer(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    s = front.settings
    try:
        # 1. who: a page of this site (or an allowed one), 2. the token, 3. the body, 4. the call
        check_origin(request.headers.get("Origin"), request.headers.get("Host"), s.allowed_origins)
        check_token(request.headers.get("Authorization"), front.token)
        body = await read_body(request, s.max_offer_bytes, s.body_timeout_s)
        call, sdp = await front.start_call(parse_offer(body, s.max_offer_bytes))
    except OfferError as e:
        return refuse(e.status, e.reason)
    except AtCapacity as e:
        front.metrics.sessions.labels("rejected" if front.accepting else "draining").inc()
        return refuse(503, f"the server is busy: {e}; try again in {e.retry_after_s} s",
                      {"Retry-After": str(e.retry_after_s)})
    return web.json_response({"sdp": sdp, "type": "answer", "session": call.id})


async def characters(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    return web.json_response({"default": front.default_character,
                              "characters": [c.public() for c in front.characters.values()]})


async def character_image(request: web.Request) -> web.StreamResponse:
    entry = request.app[FRONT].characters.get(request.match_info["cid"])
    if entry is None:
        return refuse(404, f"no character {request.match_info['cid']!r}")
    return web.FileResponse(entry.image_path)


async def config(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    header = request.headers.get("Authorization")
    authorized = front.token is None
    if header is not None and front.token is not None:
        try:
            check_token(header, front.token)
        except OfferError as e:
            return refuse(e.status, e.reason)
        authorized = True
    return web.json_response({"iceServers": front.ice_servers(authorized),  # RTCIceServer dicts
                              "authRequired": front.token is not None,
                              "pingSeconds": 1.0, "livenessSeconds": front.settings.liveness_s})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[FRONT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    """The process is up and can still serve: 503 once no worker pair can be started any more
    (an orchestrator then restarts the daemon)."""
    if not request.app[FRONT].engine.healthy:
        return web.json_response({"status": "broken", "reason": "no worker pair can be started: "
                                  "see the log; restarting the daemon may help"}, status=503)
    return web.json_response({"status": "up"})


async def readyz(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    ready, reason = front.readiness()
    e = front.engine
    return web.json_response({"ready": ready, "reason": reason, "active": e.active,
                              "capacity": e.capacity}, status=200 if ready else 503)


def make_app(front: FrontEnd) -> web.Application:
    s = front.settings
    # handler_args go to each connection's RequestHandler: its keep-alive timer closes a
    # connection that sends no whole request head in time, before the first request too
    app = web.Application(client_max_size=s.max_offer_bytes, handler_args={
        "keepalive_timeout": s.header_timeout_s, "max_headers": MAX_HEADERS,
        "max_line_size": MAX_FIELD, "max_field_size": MAX_FIELD, "lingering_time": LINGER_S,
        "auto_decompress": False, "logger": ProtocolLog()})  # no gzip bombs: bodies stay as sent
    app[FRONT] = front
    app.router.add_get("/", index)
    app.router.add_post("/offer", offer)
    app.router.add_get("/characters", characters)
    app.router.add_get("/characters/{cid}/image.png", character_image)
    app.router.add_get("/config", config)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_static("/static/", STATIC)
    return app
