"""One session object from the front end to the pair (no processes: the pair's side is faked):
typed text goes with the next unit handed over, waits up to a bound and is refused past it; a
skipped unit's text waits for the next; close never blocks and nothing enters after it; each
output is completed once (clock unit, rung, caption across units) and reaches a thread or an
event loop through the one bounded queue, the oldest dropped when full; the KV rows a session
holds are counted until it ends."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model.config import PAD, preset
from model.flow import quality_ladder
from server.runtime.messages import UnitOutput
from server.runtime.session import MAX_TYPED_BYTES, Captions, OutputQueue, Session, SessionEnded
from server.runtime.unit_clock import UnitClock

LAYOUT = preset("tiny").layout  # 3 text slots a unit
FRAMES, AUDIO = np.zeros((1, 4, 2, 2, 3), np.uint8), np.zeros((1, 8), np.float32)


class FakePair:
    """The supervisor's side: records what each unit carried; `late` units miss their tick."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bytes]] = []  # (model unit, clock unit, typed bytes)
        self.late: set[int] = set()
        self.ended: list[Session] = []

    def send(self, n: int, c: int, f: np.ndarray, a: np.ndarray, text: bytes, rung: int) -> bool:
        if c in self.late:
            return False
        self.sent.append((n, c, text))
        return True

    def session(self, output_queue: int = 8, max_lag_units: int = 4) -> Session:
        return Session(3, "0.3", UnitClock(t0=0.0), LAYOUT, self.send, self.ended.append, None, output_queue,
                       max_lag_units, ladder=quality_ladder(4, "euler"))


def _output(n: int, text: bytes) -> UnitOutput:
    z = np.zeros((1, 1), np.float32)
    tokens = np.array(list(text) + [PAD] * (LAYOUT.text - len(text)), np.int64)
    return UnitOutput(3, n, tokens, z, z, np.zeros((4, 2, 2, 3), np.uint8), np.zeros(8, np.float32))


def test_typed_text_goes_with_the_next_unit_and_a_skipped_units_text_waits_for_the_one_after() -> None:
    pair = FakePair()
    s = pair.session()
    assert s.submit(FRAMES, AUDIO, clock_unit=0) == 0
    assert s.submit_text("hi")
    pair.late.add(1)
    assert s.submit(FRAMES, AUDIO, clock_unit=1) is None and s.skipped == 1  # its tick had gone
    assert s.submit(FRAMES, AUDIO, clock_unit=2) == 1
    assert pair.sent == [(0, 0, b""), (1, 2, b"hi")]


def test_typed_text_waiting_is_bounded_by_what_the_thinker_still_holds() -> None:
    pair = FakePair()
    s = pair.session(max_lag_units=64)
    assert s.submit_text("x" * MAX_TYPED_BYTES)
    assert not s.submit_text("y"), "past the bound: refused"
    s.submit(FRAMES, AUDIO)  # handed over; the thinker takes 3 bytes a unit
    assert not s.submit_text("y" * 4), "what the thinker still holds counts"
    assert s.submit_text("y" * 3)


def test_close_never_blocks_and_nothing_enters_after_it() -> None:
    pair = FakePair()
    s = pair.session()
    s.submit(FRAMES, AUDIO)
    s.close()
    s.close()
    assert pair.ended == [s], "the pair is asked once to end it after its units"
    with pytest.raises(SessionEnded, match="closing"):
        s.submit(FRAMES, AUDIO)
    assert not s.submit_text("late")
    s.finish(True, "closed after its last unit")
    assert s.wait(0).ok and s.kv_cache_tokens == 0


def test_each_output_is_completed_once_captions_span_units_and_kv_rows_are_counted() -> None:
    pair = FakePair()
    s = pair.session()
    for c in (0, 2):
        s.submit(FRAMES, AUDIO, clock_unit=c)
    e_acute = "é".encode()  # two bytes: the character spans units 0 and 1
    s.on_output(_output(0, b"H" + e_acute[:1]))
    s.on_output(_output(1, e_acute[1:] + b"!"))
    a, b = s.outputs.get(0), s.outputs.get(0)
    assert (a.clock_unit, b.clock_unit) == (0, 2)
    assert (a.caption, b.caption) == ("H", "é!")
    assert (a.steps, a.top_steps, b.skipped) == (4, 4, 0)
    assert s.kv_cache_tokens == LAYOUT.sinks + 2 * LAYOUT.unit


def test_an_utterance_after_a_silent_unit_is_set_apart_by_a_space() -> None:
    captions = Captions()

    def unit(text: bytes) -> np.ndarray:
        return np.array(list(text) + [PAD] * (4 - len(text)))

    said = [captions(unit(b)) for b in (b"", b"Hi.", b"", b"", b"That", b" car", b"d.", b"", b" Ok")]
    assert said == ["", "Hi.", "", "", " That", " car", "d.", "", " Ok"]
    assert "".join(said) == "Hi. That card. Ok"


async def test_an_event_loop_awaits_outputs_put_from_another_thread() -> None:
    q: OutputQueue[int] = OutputQueue(2)
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(q.next())
    await asyncio.sleep(0)
    await loop.run_in_executor(None, q.put, 1)
    assert await asyncio.wait_for(waiting, 1) == 1
    for i in (2, 3, 4):
        q.put(i)
    assert (await q.next(), await q.next(), q.dropped) == (3, 4, 1)  # the oldest went


def test_a_cancelled_wait_leaves_nothing_behind_for_a_later_put() -> None:
    """A call's pump task is cancelled when the call ends; outputs may still come after its
    loop is gone: the put must neither fail nor lose the item."""
    q: OutputQueue[int] = OutputQueue(2)
    loop = asyncio.new_event_loop()

    async def wait_then_cancel() -> None:
        task = asyncio.ensure_future(q.next())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    loop.run_until_complete(wait_then_cancel())
    loop.close()
    q.put(1)
    assert q.get(0) == 1
