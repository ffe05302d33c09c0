"""The call's data channel: JSON events to the page, typed messages from it.

Server -> page (one JSON object a message, `type` first):
  hello    {session, character}               the call is up
  caption  {unit, text}                       what the avatar says, sent as its unit starts playing
  latency  {unit, model_ms, in_ms, out_ms,    signal-to-signal of the model and the front end's share
            wait_ms}                          (wait_ms: the part of out_ms spent in the playout delay)
  text     {delivered, text}                  typed text received; whether it entered the stream
  ended    {reason}                           the call is over, and why
Page -> server:
  ping     {t}                                every second: the page is alive (liveness)
  text     {text}                             typed text, at most MAX_TEXT characters
  bye      {}                                 hang up
No sockets are opened here: `Channel` wraps aiortc's RTCDataChannel once the page opens it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiortc import RTCDataChannel

MAX_TEXT = 500  # characters of one typed message
MAX_MESSAGE = 4096  # bytes of one page message


class PageMessageError(ValueError):
    """A page message this server does not understand; the channel stays open."""


@dataclass(frozen=True)
class PageMessage:
    type: str  # ping | text | bye
    text: str = ""


def parse_message(raw: str | bytes) -> PageMessage:
    if len(raw) > MAX_MESSAGE:
        raise PageMessageError(f"message of {len(raw)} bytes; at most {MAX_MESSAGE}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PageMessageError(f"not JSON: {e}") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind in ("ping", "bye"):
        return PageMessage(kind)
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise PageMessageError('a "text" message needs a non-empty "text" string')
        return PageMessage("text", text.strip()[:MAX_TEXT])
    raise PageMessageError(f'unknown message type {kind!r}; expected "ping", "text" or "bye"')


class Channel:
    """The server's end: sends events while the channel is open, drops them otherwise."""

    def __init__(self) -> None:
        self.dc: RTCDataChannel | None = None
        self.sent = 0

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
