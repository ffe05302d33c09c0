"""`duplex serve`: the daemon a person calls from a browser.

Runbook:
  1. settings from flags and DUPLEX_* variables; the model config (preset or checkpoint);
     every character loaded and checked: a bad one stops the start here, with its file named
  2. the HTTP server on host:port at once (/healthz answers; /readyz says 503 until step 3)
  3. the engine: thinker and performer, two processes per call slot, loaded in the background;
     each pair runs measured warm-up units before /readyz says 200, and the real-time margin
     at the top and the lowest rung is logged in one line and exported (never a refusal)
  4. serve until SIGTERM or SIGINT (or until the workers cannot start: exit 1)
  5. drain: at the signal, stop taking calls (/readyz 503, offers 503 + Retry-After); running
     calls go on for up to `drain_seconds` (a second signal cuts it short), then end with
     "server draining"; stop the workers, close HTTP
Exit codes: 0 after a clean drain, 1 when the server or the workers could not start,
2 for bad settings or characters. uvloop runs the event loop.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time

import uvloop
from aiohttp import web
from pydantic import ValidationError

from model.config import UNIT_SECONDS, ModelConfig, preset
from server.engine import RuntimeEngine
from server.frontend.app import FrontEnd
from server.frontend.call import use_loopback_candidates
from server.frontend.characters import CharacterEntry, CharacterError, load_characters
from server.frontend.routes import make_app
from server.metrics import Metrics
from server.runtime.supervisor import Margin, RuntimeConfig
from server.runtime.transport import pick_transport
from server.settings import Settings, parse_settings

log = logging.getLogger("duplex.serve")
DRAINED = "server draining: this server is going down; call again to reach another one"


def model_config(settings: Settings) -> ModelConfig:
    if settings.checkpoint_folder is None:
        return preset(settings.dummy_preset)
    from model.checkpoint import load_config  # safetensors only when a checkpoint is served
    cfg = load_config(settings.checkpoint_folder)
    if settings.preset is not None and settings.preset != cfg.name:
        log.warning("--preset %s ignored: serving %s, a checkpoint of preset %s",
                    settings.preset, settings.checkpoint_folder, cfg.name)
    return cfg


def gpu_memory_used() -> dict[str, int]:
    """Used memory per visible GPU, as nvidia-smi reports it (NVML); {} where none can be read."""
    import torch
    try:
        return {f"cuda:{i}": torch.cuda.device_memory_used(i) for i in range(torch.cuda.device_count())}
    except Exception:  # noqa: BLE001 - no NVML binding (pynvml) on this machine: no samples
        return {}


def single_process_margin(preset_name: str, units: int = 12) -> float:
    """A quick lower bound of a preset's margin: one thread runs the whole unit (both workers'
    steps in series) in this process; the pair, on two cores, does better."""
    import torch

    from model.duplex import build_model
    from model.streaming import Streamer
    from server.runtime.reference import run_single
    from server.runtime.synthetic import synthetic_character, synthetic_unit
    cfg = preset(preset_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        streamer = Streamer(build_model(cfg, seed=0))
        inputs = [tuple(map(torch.from_numpy, synthetic_unit(cfg, 0, n))) for n in range(units)]
        run_single(streamer, synthetic_character(cfg), 0, inputs[:2])  # first allocations
        t = time.perf_counter()
        run_single(streamer, synthetic_character(cfg), 0, inputs, rungs=[len(streamer.ladder) - 1] * units)
        return UNIT_SECONDS * units / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def describe_margins(margins: list[Margin], preset_name: str, smaller: tuple[str, float] | None) -> str:
    """The start-up line: how this machine will serve calls."""
    top, low = margins[0], margins[-1]
    line = f"real-time margin {top.margin:.2f}x at full quality ({top.steps} steps)"
    if low.rung != top.rung:
        line += f", {low.margin:.2f}x at the lowest rung ({low.steps} step{'s' * (low.steps > 1)})"
    if top.margin >= 1:
        verdict = "calls run at full quality on this machine"
    elif low.margin >= 1:
        verdict = "calls will run degraded on this machine (fewer solver steps)"
    else:
        verdict = "calls will run degraded and skip units on this machine"
    line += f": {verdict}"
    if smaller is not None:
        line += f"; --preset {smaller[0]} holds {smaller[1]:.1f}x or more"
    return line + f" (preset {preset_name})"


async def run(settings: Settings, cfg: ModelConfig, characters: dict[str, CharacterEntry],
              transport: str) -> int:
    metrics = Metrics(cfg.name, transport)
    if transport != "gloo":
        metrics.track_gpu_memory(gpu_memory_used)
    folder = settings.checkpoint_folder
    runtime = RuntimeConfig(preset=cfg.name, checkpoint=None if folder is None else str(folder),
                            transport=transport, slots=settings.max_sessions,
                            threads=settings.threads, backend=settings.backend,
                            cuda_graphs=settings.cuda_graphs, compile=settings.compile,
                            ready_timeout_s=settings.ready_timeout_s)
    engine = RuntimeEngine(runtime, pairs=settings.pairs, sink=metrics.observe_record,
                           on_fault=lambda f: metrics.worker_restarts.labels(f.role.value).inc(),
                           on_skip=lambda unit: metrics.units_skipped.inc())
    metrics.session_slots.set(engine.capacity)
    front = FrontEnd(settings, engine, characters, cfg, metrics)
    if settings.loopback:
        use_loopback_candidates()
    # 2. HTTP first, so that probes see the process while the workers load
    runner = web.AppRunner(make_app(front), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as e:
        log.error("cannot listen on %s:%d: %s; choose another --port or stop what uses it",
                  settings.host, settings.port, e)
        await runner.cleanup()
        return 1
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s again: ending the calls now", sig.name)
            hurry.set()
            return
        front.stop_accepting(settings.drain_seconds)  # here, not in a task: /readyz says 503 at once
        log.info("%s: draining: no new calls; %d call(s) may go on for up to %g s (signal again to "
                 "end them now)", sig.name, len(front.calls), settings.drain_seconds)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # 3. the workers, in the background
    loading = asyncio.create_task(engine.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if loading.done() and loading.exception() is not None:
        log.error("the model workers could not start: %s", loading.exception())
        code = 1
    elif loading.done():
        await report_margins(engine.margins, cfg.name, metrics)
        # what start-up made (modules, the model's config, aiortc) is never garbage: out of the
        # collector's sight, a full collection takes milliseconds, not a 150 ms stall of the
        # media tracks (measured on the cpu preset before this)
        gc.freeze()
        log.info("serving http://%s:%d (preset %s, transport %s, %d call slot(s), characters: %s)",
                 settings.host, settings.port, cfg.name, transport, engine.capacity,
                 ", ".join(c.name for c in characters.values()))
        await stopping  # 4. until a signal
    # 5. drain, then shut down
    await front.drain(settings.drain_seconds, hurry)
    log.info("shutting down")
    await front.shutdown(DRAINED)
    if not loading.done():
        await asyncio.wait([loading])  # a supervisor half-started must be closed too
    await engine.stop()
    await runner.cleanup()
    stopping.cancel()
    log.info("stopped")
    return code


async def report_margins(margins: list[Margin], preset_name: str, metrics: Metrics) -> None:
    """Log and export the measured margins; below 1 at full quality, also measure `tiny`."""
    for m, label in zip((margins[0], margins[-1]), ("top", "lowest")):
        metrics.realtime_margin.labels(label).set(m.margin)
    smaller = None
    if margins[0].margin < 1 and preset_name != "tiny":
        loop = asyncio.get_running_loop()
        smaller = ("tiny", await loop.run_in_executor(None, single_process_margin, "tiny"))
    (log.info if margins[0].margin >= 1 else log.warning)(describe_margins(margins, preset_name, smaller))


def main(argv: list[str]) -> int:
    # 1. settings, model config, characters
    try:
        settings = parse_settings(argv)
    except ValidationError as e:
        print(f"duplex serve: bad settings:\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.devices  # before CUDA is first touched
    try:
        cfg = model_config(settings)
        characters = load_characters(settings.characters, cfg)
        transport = pick_transport(settings.transport)
    except (CharacterError, ValueError) as e:
        print(f"duplex serve: {e}", file=sys.stderr)
        return 2
    return uvloop.run(run(settings, cfg, characters, transport))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
