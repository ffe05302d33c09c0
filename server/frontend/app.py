"""The front end as one object: the calls in progress, admission and shutdown; the HTTP
routes that drive it are in routes.py.

Admission: a call starts only while the daemon takes calls and the engine has a free slot;
otherwise AtCapacity (-> 503 with Retry-After). Drain: 1. stop taking calls (at once: /readyz
says 503, so a load balancer sends offers elsewhere), 2. the running calls go on, told how long
they have, until they end or the drain time is up, 3. `shutdown` ends the rest with the reason
and waits for them to close. Stopping the engine and the HTTP server is the caller's
(serve.py), so that tests can drive a FrontEnd on a fake engine.

ICE servers for the page (GET /config): STUN entries go to anyone; TURN credentials only to a
page that may call (no token set, or the token given). With a TURN secret, each page gets its
own credential, minted by coturn's REST scheme (use-auth-secret): username "<expiry>:<random
id>", credential base64(HMAC-SHA1(secret, username)); coturn checks the HMAC and the expiry,
so nothing is shared between daemon and coturn but the secret.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

from model.config import ModelConfig
from server.engine import AtCapacity, Engine
from server.frontend.call import Call
from server.frontend.characters import CharacterEntry
from server.frontend.offer import Offer, OfferError
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("duplex.frontend")
SHUTDOWN_WAIT_S = 5.0  # calls get this long to close on shutdown
DRAIN_RETRY_AFTER_S = 5  # a draining daemon's offers: another replica (or this one, restarted)


def turn_credential(secret: str, ttl_s: int, now: float, rid: str) -> tuple[str, str]:
    """coturn's REST credential valid until now + ttl_s: (username, credential)."""
    username = f"{int(now) + ttl_s}:{rid}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class FrontEnd:
    def __init__(self, settings: Settings, engine: Engine, characters: dict[str, CharacterEntry],
                 cfg: ModelConfig, metrics: Metrics):
        if not characters:
            raise ValueError("the front end needs at least one character")
        self.settings, self.engine, self.characters = settings, engine, characters
        self.cfg, self.metrics = cfg, metrics
        self.calls: dict[str, Call] = {}
        self.accepting = True
        metrics.track_kv_cache(lambda: engine.kv_cache_tokens)

    @property
    def default_character(self) -> str:
        return next(iter(self.characters))

    @property
    def token(self) -> str | None:
        t = self.settings.auth_token
        return None if t is None else t.get_secret_value()

    def ice_servers(self, authorized: bool) -> list[dict[str, Any]]:
        """RTCIceServer dicts for a page; `authorized`: no token is set, or the page gave it.
        Without it, no credential leaves: STUN entries only."""
        s = self.settings
        servers = [ice.model_dump(exclude_none=True) for ice in s.ice_servers
                   if authorized or (ice.username is None and ice.credential is None)]
        if authorized and s.turn_secret is not None:
            username, credential = turn_credential(s.turn_secret.get_secret_value(), s.turn_ttl_s,
                                                   time.time(), secrets.token_hex(8))
            servers.append({"urls": list(s.turn_urls), "username": username, "credential": credential})
        return servers

    def character(self, cid: str | None) -> CharacterEntry:
        entry = self.characters.get(cid or self.default_character)
        if entry is None:
            raise OfferError(400, f"unknown character {cid!r}; choose one of {sorted(self.characters)} "
                                  f"(GET /characters)")
        return entry

    def readiness(self) -> tuple[bool, str]:
        """Ready = the workers are loaded and a call slot is free."""
        e = self.engine
        if not self.accepting:
            return False, "draining: this server takes no new calls"
        if not e.ready:
            return False, "the model workers are not ready"
        if e.active >= e.capacity:
            return False, f"all {e.capacity} call slot(s) are in use"
        if e.available == 0:
            return False, "the model workers are restarting after a fault"
        return True, "ready"

    async def start_call(self, offer: Offer) -> tuple[Call, str]:
        """A new call from `offer`; returns it and the SDP answer. Raises AtCapacity, OfferError."""
        entry = self.character(offer.character)
        if not self.accepting:
            raise AtCapacity("the server is draining and takes no new calls",
                             retry_after_s=DRAIN_RETRY_AFTER_S)
        session = await self.engine.start_session(entry.character)
        call = Call(session, entry, self.cfg, self.settings, self.metrics, self._ended)
        self.calls[call.id] = call
        try:
            answer = await call.answer(offer.sdp)
        except Exception as e:  # aiortc could not negotiate what check_sdp let through
            log.warning("call %s: negotiation failed: %s", call.id, e)
            call.end(f"the offer could not be negotiated: {e}", "error")
            raise OfferError(400, f"the offer could not be negotiated: {e}") from e
        return call, answer.sdp

    def _ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)

    def stop_accepting(self, drain_s: float) -> None:
        """Step 1 of the drain (synchronous: called from the signal handler); the pages are told."""
        if self.accepting:
            self.accepting = False
            self.metrics.draining.set(1)
            for call in self.calls.values():
                call.channel.send("draining", seconds=drain_s)

    async def drain(self, drain_s: float, hurry: asyncio.Event) -> None:
        """Step 2: until every call has ended, `drain_s` has passed or `hurry` is set."""
        deadline = time.monotonic() + drain_s
        while self.calls and not hurry.is_set() and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(hurry.wait(), min(left, 0.1))
            except TimeoutError:
                pass

    async def shutdown(self, reason: str) -> None:
        # 1. stop taking calls, 2. end every call with the reason, 3. wait for them
        self.accepting = False
        calls = list(self.calls.values())
        for call in calls:
            call.end(reason, "shutdown")
        if calls:
            await asyncio.wait([asyncio.create_task(c.done.wait()) for c in calls], timeout=SHUTDOWN_WAIT_S)

