"""The daemon's HTTP routes, and `make_app`, the aiohttp application that serves them.

  GET  /                          the web client (server/static/)
  POST /offer                     {sdp, type: "offer", character?} -> {sdp, type: "answer", session}
                                  400 malformed JSON / SDP, an offer without audio or video, an
                                  unknown character; 401 without the token when one is set; 413
                                  over the body limit; 503 + Retry-After past capacity
  GET  /characters                the characters, the default first
  GET  /characters/{id}/image.png a character's reference image
  GET  /config                    what the page needs to call: ICE servers, whether a token is needed
  GET  /metrics                   Prometheus
  GET  /healthz                   the process is up
  GET  /readyz                    the workers are loaded and a call slot is free (503 otherwise)
Every refusal is JSON {"error": reason}; a refused request changes nothing else.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.engine import AtCapacity
from server.frontend.app import FrontEnd
from server.frontend.offer import OfferError, check_token, parse_offer
from server.metrics import CONTENT_TYPE

STATIC = Path(__file__).resolve().parent.parent / "static"
FRONT = web.AppKey("front", FrontEnd)


def refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def offer(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    limit = front.settings.max_offer_bytes
    try:
        check_token(request.headers.get("Authorization"), front.token)
        if request.content_length is not None and request.content_length > limit:
            raise OfferError(413, f"the request body is {request.content_length} bytes; at most "
                                  f"{limit} are accepted")
        parsed = parse_offer(await request.content.read(limit + 1), limit)
        call, sdp = await front.start_call(parsed)
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
    ice = [s.model_dump(exclude_none=True) for s in front.settings.ice_servers]  # RTCIceServer
    return web.json_response({"iceServers": ice, "authRequired": front.token is not None,
                              "pingSeconds": 1.0, "livenessSeconds": front.settings.liveness_s})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[FRONT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "up"})


async def readyz(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    ready, reason = front.readiness()
    e = front.engine
    return web.json_response({"ready": ready, "reason": reason, "active": e.active,
                              "capacity": e.capacity}, status=200 if ready else 503)


def make_app(front: FrontEnd) -> web.Application:
    app = web.Application(client_max_size=front.settings.max_offer_bytes)
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
