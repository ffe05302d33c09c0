"""`rates` of a call's record: what the sender sent is judged by its pts, not by when the
receiver (a loaded test process) got round to each frame."""
from __future__ import annotations

from bench.call_client import Received, rates


def received(video_pts: list[float], last_late_s: float = 0.0) -> Received:
    """A second of video frames with the given pts (and of 20 ms audio frames), each arriving at
    its pts but the last, `last_late_s` after it (a receiver busy decoding)."""
    got = Received()
    for i, p in enumerate(video_pts):
        t = 100.0 + p + (last_late_s if i == len(video_pts) - 1 else 0.0)
        got.video.append((t, 320, 240))
        got.pts["video"].append((t, p))
    for i in range(50):
        got.audio.append((100.0 + i * 0.02, 960, 48_000))
        got.pts["audio"].append((100.0 + i * 0.02, i * 0.02))
    return got


def test_a_late_receiver_loses_no_video_but_a_skipped_frame_is_lost():
    every = [i / 25 for i in range(25)]
    late = rates(received(every, last_late_s=0.07), 99.0, 102.0)
    assert late["fps"] < 24 and late["video_lost"] == 0.0, late  # arrival jitter alone
    skipped = rates(received(every[:10] + every[12:]), 99.0, 102.0)
    assert abs(skipped["video_lost"] - 2 / 25) < 1e-9, skipped
    assert rates(received([]), 99.0, 102.0)["video_lost"] == 1.0
