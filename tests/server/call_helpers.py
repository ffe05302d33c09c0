"""Helpers of the call tests: `duplex serve` as a child process on a free loopback port,
waiting for it, reading its metrics, stopping it, and where test artifacts go; and the front
end alone, in-process on a fake engine (`front_end`), for the front end's own tests.

The daemon is started through the `duplex` CLI module (`python -m server.cli serve ...`), the
same entry point as the console script, with the `tiny` preset unless a test asks otherwise.
"""
from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import web

from model.config import preset
from server.frontend.app import FrontEnd
from server.frontend.characters import load_characters
from server.frontend.routes import make_app
from server.metrics import Metrics
from server.settings import SHIPPED_CHARACTERS, Settings
from tests.missing import missing
from tests.server.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DUPLEX_TEST_ARTIFACTS", REPO / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_binary(path: str, package: str) -> str:
    """The binary, or: a failure under CI=true (.ci/run installs it), a skip elsewhere."""
    if not shutil.which(path):
        missing(f"{path} not found: apt-get install {package} (.ci/run installs it)")
    return path


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required"]
FAKE_MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@asynccontextmanager
async def chromium(fake_media: bool = True, extra_flags: tuple[str, ...] = ()) -> AsyncIterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (never `playwright install`); with a
    fake camera and microphone whose permission is granted, unless `fake_media` is False
    (`extra_flags`, e.g. --use-file-for-fake-video-capture=x.y4m, make them play files)."""
    path = need_binary("/usr/bin/chromium", "chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("the playwright Python package is missing: pip install playwright (the test extra)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=path,
                                          args=CHROMIUM_FLAGS + (FAKE_MEDIA if fake_media else []) + list(extra_flags))
        try:
            yield browser
        finally:
            await browser.close()


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """status, headers, body; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of the Prometheus text `text` (0.0 if absent)."""
    m = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90.0) -> None:
    """Until the daemon `proc` at `url` answers /readyz 200; raises, with its `log`, if it exits
    or is not ready within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"duplex serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if http(url + "/readyz", timeout=1.0)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"duplex serve not ready within {timeout} s:\n{log.read_text()}")


class Daemon:
    def __init__(self, *args: str, preset: str | None = "tiny", env: dict[str, str] | None = None):
        """preset None: the daemon's default weights (the shipped checkpoint)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ARTIFACTS / f"daemon-{self.port}.log"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), *(("--preset", preset) if preset else ()), *args]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self._log = open(self.log, "wb")
        # its own process group, as a daemon started from a terminal: Ctrl-C reaches the group
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_ready(self.proc, self.url, self.log, timeout)

    def metrics(self) -> str:
        return http(self.url + "/metrics")[2].decode()

    def ready(self) -> bool:
        return http(self.url + "/readyz")[0] == 200

    def descendants(self) -> list[int]:
        """Every process below the daemon (the workers of each pair, multiprocessing's helpers)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" ", 1)
            except OSError:
                continue
            ppid = int(rest.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        found, todo = [], [self.proc.pid]
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        return found

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text()


def write_artifact(name: str, data: dict) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@asynccontextmanager
async def front_end(capacity: int = 1, start: bool = True, **settings: object) -> AsyncIterator[tuple[FrontEnd, str]]:
    """The front end on a FakeEngine (tiny preset), served on a free loopback port: (front, url)."""
    cfg = preset("tiny")
    engine = FakeEngine(cfg.video.width, cfg.video.height, capacity=capacity)
    if start:
        await engine.start()
    s = Settings(preset="tiny", **settings)  # type: ignore[arg-type]
    metrics = Metrics("tiny", "fake")
    front = FrontEnd(s, engine, load_characters(SHIPPED_CHARACTERS, cfg), cfg, metrics)
    runner = web.AppRunner(make_app(front))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield front, f"http://127.0.0.1:{port}"
    finally:
        await front.shutdown("the test is over")
        await engine.stop()
        await runner.cleanup()


async def until(cond, what: str, timeout: float = 10.0) -> float:
    """Wait for `cond()` (polled every 20 ms); the seconds it took, or TimeoutError naming `what`."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start
