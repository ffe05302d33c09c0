"""The call's data channel: JSON events to the page, typed messages from it.

Server -> page (one JSON object a message, `type` first):
  hello    {session, character}               the call is up
  caption  {unit, text}                       what the avatar says, sent as its unit starts playing
  latency  {unit, model_ms, in_ms, out_ms,    signal-to-signal of the model and the front end's share
            wait_ms}                          (wait_ms: the part of out_ms spent in the playout delay)
  text     {delivered, text}                  typed text received; whether it entered the stream
  ended    {reason}                           the call is over, and why
  error    {reason, ignored}                  a page message was not understood and was ignored
                                              (throttled: `ignored` counts them since the last)
Page -> server:
  ping     {t}                                every second: the page is alive (liveness)
  text     {text}                             typed text, at most MAX_TEXT characters
  bye      {}                                 hang up
A page message is hostile until checked: `parse_message` turns anything (not UTF-8, not JSON,
nested 100 000 deep, huge, of an unknown type or with fields of the wrong type) into a
PageMessage or a PageMessageError, never another exception: it runs inside aiortc's DTLS
receive loop, where any other exception would end the call's media.
No sockets are opened here: `Channel` wraps aiortc's RTCDataChannel once the page opens it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiortc import RTCDataChannel

MAX_TEXT = 500  # characters of one typed message
MAX_MESSAGE = 4096  # bytes of one page message
BAD_EVERY_S = 5.0  # at most one log line and one `error` event a call per this long


class PageMessageError(ValueError):
    """A page message this server does not understand; the channel stays open."""


@dataclass(frozen=True)
class PageMessage:
    type: str  # ping | text | bye
    text: str = ""


def parse_message(raw: str | bytes) -> PageMessage:
    """The page's message, or PageMessageError saying what is wrong with it (and nothing else)."""
    if not isinstance(raw, (str, bytes)):
        raise PageMessageError(f"a message of type {type(raw).__name__}; expected text")
    if len(raw) > MAX_MESSAGE:
        raise PageMessageError(f"message of {len(raw)} bytes; at most {MAX_MESSAGE}")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise PageMessageError("JSON nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON, an integer of more than 4300 digits
        raise PageMessageError(f"not JSON: {str(e)[:120]}") from None
    if not isinstance(data, dict):
        raise PageMessageError(f"a JSON {type(data).__name__}; expected an object "
                               f'{{"type": "ping" | "text" | "bye", ...}}')
    kind = data.get("type")
    if kind in ("ping", "bye"):
        return PageMessage(kind)
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise PageMessageError('a "text" message needs a non-empty "text" string')
        text = text.strip()[:MAX_TEXT]
        try:
            text.encode()
        except UnicodeEncodeError:
            raise PageMessageError('the "text" holds an unpaired surrogate (\\ud800-\\udfff); '
                                   "it is not text") from None
        return PageMessage("text", text)
    shown = repr(kind)[:40] if isinstance(kind, str) else f"of JSON type {type(kind).__name__}"
    raise PageMessageError(f'unknown message type {shown}; expected "ping", "text" or "bye"')


class BadMessages:
    """Counts a call's bad page messages and says when to speak of them: the first at once,
    then at most one report per `every_s` carrying how many came since the last, so that a
    flood costs neither the log nor the channel more than a line and an event per window."""

    def __init__(self, every_s: float = BAD_EVERY_S):
        self.every_s = every_s
        self.total = 0  # bad messages in this call
        self.unreported = 0  # since the last report
        self._last: float | None = None  # when the last report was made

    def note(self, now: float) -> int:
        """Count one; returns how many to report now (0: stay quiet)."""
        self.total += 1
        self.unreported += 1
        if self._last is not None and now - self._last < self.every_s:
            return 0
        self._last, n, self.unreported = now, self.unreported, 0
        return n


class Channel:
    """The server's end: sends events while the channel is open, drops them otherwise."""

    def __init__(self) -> None:
        self.dc: RTCDataChannel | None = None
        self.sent = 0
        self.bad = BadMessages()  # the page's messages that were ignored

    @property
    def open(self) -> bool:
        return self.dc is not None and self.dc.readyState == "open"

    def send(self, event: str, **fields: Any) -> None:
        if self.open:
            assert self.dc is not None
            self.dc.send(json.dumps({"type": event, **fields}, separators=(",", ":")))
            self.sent += 1

    @property
    def buffered(self) -> int:
        """Bytes queued but not yet sent (the ended event is flushed before the peer closes)."""
        return self.dc.bufferedAmount if self.open and self.dc is not None else 0
