"""Prometheus metrics of the daemon: the front end's and both workers', in one registry that
`GET /metrics` renders. Names follow DESIGN.md: prefix `duplex_`, seconds and bytes.

The workers' stage timings reach this process as the runtime's per-unit records
(server/runtime/timings.py UnitRecord) and are turned into samples here; the front end counts
its own fills, underruns, drops and sessions. Histogram buckets are dense around the 160 ms
unit and the 200 ms signal-to-signal budget. Every method is cheap and thread-safe (the
runtime's monitor thread calls `observe_record`); nothing here starts a server.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, generate_latest)

from server.runtime.timings import UnitRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Signal-to-signal: the 200 ms budget in the middle, 10 ms steps around it.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.12, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2,
                   0.21, 0.22, 0.24, 0.26, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
# One stage of one unit: all must fit in the 160 ms unit together.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.12,
                 0.14, 0.16, 0.2, 0.3, 0.5, 1.0)
TRANSFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
# The front end's own share: goal <= 10 ms added beyond the model.
FRONTEND_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06,
                    0.08, 0.16, 0.32)
# ended: ok (hung up), dropped, max_length, error, shutdown (ended by the drain);
# refused: rejected (at capacity, not ready), draining (refused while draining)
# where a call's media can fail (server/frontend/call.py's tasks, the output tracks)
MEDIA_PATHS = ("video input", "audio input", "unit clock", "playout", "watchdog", "video output",
               "audio output")
OUTCOMES = ("ok", "dropped", "max_length", "error", "shutdown", "rejected", "draining")


def package_version() -> str:
    try:
        return version("duplex")
    except PackageNotFoundError:  # a source tree that was never pip-installed
        return "0+unknown"


class Metrics:
    def __init__(self, preset: str, transport: str) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        p = "duplex_"
        self.unit_latency = Histogram(
            p + "unit_latency_seconds", "Signal-to-signal per unit: input unit handed to the "
            "thinker -> its decoded output back in the daemon", registry=r, buckets=LATENCY_BUCKETS)
        self.stage_duration = Histogram(
            p + "stage_duration_seconds", "Time one worker spent on one stage of one unit",
            ["role", "stage"], registry=r, buckets=STAGE_BUCKETS)
        self.transfer_bytes = Counter(
            p + "transfer_bytes_total", "Bytes sent between the workers", ["direction"], registry=r)
        self.transfer_duration = Histogram(
            p + "transfer_duration_seconds", "Send start -> received, per message between the workers",
            ["direction"], registry=r, buckets=TRANSFER_BUCKETS)
        self.deadline_misses = Counter(
            p + "deadline_misses_total", "Units a worker handed on after the next unit was due",
            ["role"], registry=r)
        self.sessions_active = Gauge(p + "sessions_active", "Calls in progress", registry=r)
        self.sessions = Counter(p + "sessions_total", "Calls ended (or refused), by outcome",
                                ["outcome"], registry=r)
        self.input_fill = Counter(
            p + "input_fill_total", "Input filled in because it did not arrive in time: video "
            "frames repeated, 20 ms audio frames of silence", ["kind"], registry=r)
        self.input_dropped = Counter(
            p + "input_dropped_total", "Input dropped by a full receive queue (oldest first): "
            "video frames, 20 ms audio frames", ["kind"], registry=r)
        self.output_underruns = Counter(
            p + "output_underruns_total", "Output frames sent with nothing new to send: the last "
            "video frame held, 20 ms of silence played", ["kind"], registry=r)
        self.output_dropped = Counter(
            p + "output_dropped_total", "Output frames dropped so that playout latency does not "
            "build up (40 ms ticks: one video frame, two audio frames)", registry=r)
        self.media_errors = Counter(
            p + "media_errors_total", "Unexpected errors in a call's media path (a track, the unit "
            "clock, the playout), each ending its call", ["where"], registry=r)
        self.frontend_overhead = Histogram(
            p + "frontend_overhead_seconds", "The front end's share of a unit's latency: in = last "
            "input frame arrived -> unit handed to the thinker; out = output ready -> its first "
            "frame leaves the track", ["direction"], registry=r, buckets=FRONTEND_BUCKETS)
        self.solver_steps = Gauge(
            p + "solver_steps", "Solver steps of the quality ladder's rung the last unit ran at "
            "(fewer than the preset's: reduced quality, the machine is behind)", registry=r)
        self.units_skipped = Counter(
            p + "units_skipped_total", "Input units skipped because the worker pair was behind "
            "even at the lowest rung (the caller sees the last frame held, hears silence)", registry=r)
        self.realtime_margin = Gauge(
            p + "realtime_margin", "The worker pair's real-time margin measured at start-up: the "
            "unit (160 ms) / its per-unit cost, at the top and the lowest rung (> 1 holds)",
            ["rung"], registry=r)
        self.kv_cache_tokens = Gauge(
            p + "kv_cache_tokens", "KV-cache rows in use per layer, summed over the calls in progress",
            registry=r)
        self.gpu_memory = Gauge(p + "gpu_memory_bytes", "GPU memory in use", ["device"], registry=r)
        self.worker_restarts = Counter(
            p + "worker_restarts_total", "Worker faults (death, hang) after which the pair was "
            "restarted, by the worker that failed", ["role"], registry=r)
        self.session_slots = Gauge(p + "session_slots", "Calls this daemon can serve at once "
                                   "(one thinker-performer pair each)", registry=r)
        self.draining = Gauge(p + "draining", "1 while the daemon drains (SIGTERM): no new calls",
                              registry=r)
        self.build_info = Gauge(p + "build_info", "Version, model preset and transport of this daemon",
                                ["version", "preset", "transport"], registry=r)
        self.build_info.labels(package_version(), preset, transport).set(1)
        for o in OUTCOMES:
            self.sessions.labels(o)
        for kind in ("video", "audio"):
            for c in (self.input_fill, self.input_dropped, self.output_underruns):
                c.labels(kind)
        for role in ("thinker", "performer"):
            self.worker_restarts.labels(role)
            self.deadline_misses.labels(role)
        for where in MEDIA_PATHS:
            self.media_errors.labels(where)

    def observe_record(self, rec: UnitRecord) -> None:
        """One unit's record from the runtime (both workers' stages, transfers, deadlines)."""
        for role, stages in rec.stages.items():
            for stage, seconds in stages.items():
                self.stage_duration.labels(role, stage).observe(seconds)
        for direction, t in rec.transfers.items():
            self.transfer_bytes.labels(direction).inc(t.nbytes)
            self.transfer_duration.labels(direction).observe(t.seconds)
        for role, late in rec.late.items():
            if late:
                self.deadline_misses.labels(role).inc()
        self.solver_steps.set(rec.steps)

    def track_kv_cache(self, rows: Callable[[], int]) -> None:
        """Read the KV-cache gauge from `rows()` at each scrape."""
        self.kv_cache_tokens.set_function(rows)

    def track_gpu_memory(self, used: Callable[[], dict[str, int]]) -> None:
        """Read GPU memory per device from `used()` at each scrape."""
        for device, nbytes in used().items():
            self.gpu_memory.labels(device).set_function(lambda d=device: used().get(d, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
