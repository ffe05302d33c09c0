"""The daemon's settings: one typed object read from flags (`duplex serve --port 9000`) and
from the environment (`DUPLEX_PORT=9000`); a flag wins over the environment.

Runtime settings only: the model's own configuration is its preset (model/config.py), which
never reads the environment. Parsing and validation only: nothing is started here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from model.attention import Backend
from model.config import PRESETS

SHIPPED_CHARACTERS = Path(__file__).parent / "characters"
# the demonstrator (issue 13's `duplex train --stage model`), served when no weights are named
SHIPPED_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "demo"
DUMMY = "dummy"


def check_schemes(urls: list[str], schemes: tuple[str, ...], what: str) -> list[str]:
    for u in urls:
        if not u.startswith(schemes):
            raise ValueError(f"{what} {u!r} must start with {', '.join(schemes[:-1])} or {schemes[-1]}")
    return urls


class IceServer(BaseModel):
    """One STUN or TURN server, as the browser's RTCIceServer takes it."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    urls: list[str] = Field(min_length=1)  # e.g. ["stun:stun.example.org:3478"]
    username: str | None = None  # TURN only
    credential: str | None = None  # TURN only

    @field_validator("urls")
    @classmethod
    def _schemes(cls, urls: list[str]) -> list[str]:
        return check_schemes(urls, ("stun:", "stuns:", "turn:", "turns:"), "ICE server URL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUPLEX_", extra="forbid", frozen=True,
                                      cli_kebab_case=True, cli_prog_name="duplex serve",
                                      cli_implicit_flags=True)

    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port")
    preset: str | None = Field(None, description=f"serve seeded dummy weights of this model preset "
                                                 f"({', '.join(PRESETS)}); unset: the checkpoint")
    checkpoint: str | None = Field(None, description=(
        "checkpoint folder (safetensors + config.json; it carries its config, so --preset is then "
        "ignored), or 'dummy': seeded weights of --preset (cpu if unset); unset: checkpoints/demo, "
        "the trained demonstrator, unless --preset is given"))
    transport: Literal["auto", "gloo", "ipc", "nccl"] = Field(
        "auto", description="thinker<->performer transport; auto picks from the GPUs present")
    devices: str | None = Field(None, description="GPU indices the workers may use, e.g. '0,1' "
                                                  "(sets CUDA_VISIBLE_DEVICES for them)")
    threads: int = Field(1, ge=1, description="torch threads per worker on CPU")
    backend: Backend = Field("sdpa", description="the model's attention, norm and RoPE kernels: "
                                                 "reference, sdpa (torch), triton (GPU)")
    cuda_graphs: bool = Field(False, description="replay each per-unit step as a CUDA graph once the "
                                                 "KV cache is in steady state (GPU; eager on CPU)")
    compile: bool = Field(False, description="torch.compile the steady-state per-unit steps (CPU: "
                                             "inductor's C++ backend; about 1.4x faster on the cpu "
                                             "preset); compiled before /readyz says 200, cached in "
                                             "~/.cache/duplex/inductor (first start ~1 min, later a "
                                             "few s); eager wherever a compile fails")
    max_sessions: int = Field(1, ge=1, description="calls one thinker-performer pair serves at "
                                                   "once (its slots: one batched step a unit)")
    pairs: int = Field(1, ge=1, description="thinker-performer pairs (processes, weight copies); "
                                            "calls at once: pairs x max-sessions")
    auth_token: SecretStr | None = Field(None, description="if set, POST /offer needs "
                                                           "'Authorization: Bearer <token>'")
    ice_servers: list[IceServer] = Field(default_factory=list, description=(
        'STUN/TURN servers as JSON, e.g. \'[{"urls": ["stun:stun.example.org:3478"]}]\'; '
        "empty: host candidates only (loopback, LAN)"))
    turn_secret: SecretStr | None = Field(None, description=(
        "coturn's static-auth-secret (use-auth-secret): GET /config then mints short-lived TURN "
        "credentials for --turn-urls, behind the token when one is set"))
    turn_urls: list[str] = Field(default_factory=list, description=(
        'the TURN server the minted credentials are for, JSON, e.g. \'["turn:turn.example.org:3478"]\''))
    turn_ttl_s: int = Field(3600, ge=60, description=(
        "how long a minted TURN credential is valid; at least --max-call-s, since coturn checks "
        "it again on each allocation refresh"))
    allowed_origins: list[str] = Field(default_factory=list, description=(
        'browser origins that may POST /offer besides the page\'s own, JSON, e.g. '
        '\'["https://app.example.org"]\' (["*"]: any); empty: same origin only (Origin absent or '
        "the request's own host)"))
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "a connection that has not sent a whole request head this long after it opened (or after "
        "its last response) is closed"))
    body_timeout_s: float = Field(10.0, gt=0, description="POST /offer's body must arrive within this "
                                                          "long (408 otherwise)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    characters: Path = Field(SHIPPED_CHARACTERS, description="folder of characters, one sub-folder each")
    max_call_s: float = Field(600.0, gt=0, description="a call ends after this many seconds")
    liveness_s: float = Field(2.0, gt=0, description="a call whose caller sent nothing for this long "
                                                     "(no media frame, no data-channel message; the "
                                                     "page also pings every second) is ended and freed: "
                                                     "a closed tab or a lost network is gone in < 3 s")
    connect_timeout_s: float = Field(15.0, gt=0, description="a call from which nothing (media or data "
                                                             "channel) arrived this long after the answer "
                                                             "is ended")
    max_offer_bytes: int = Field(65536, ge=1024, description="largest POST /offer body accepted")
    ready_timeout_s: float = Field(900.0, gt=0, description="worker start-up limit (model load, and "
                                                            "with --compile a cold compile: the demo's took "
                                                            "4.7 min to /readyz on a slow 2-core VM)")
    drain_seconds: float = Field(30.0, ge=0, description="on SIGTERM/SIGINT: no new calls at once, "
                                                         "running calls go on for up to this long, "
                                                         "then end with 'server draining'")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str | None) -> str | None:
        if name is not None and name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return name

    @field_validator("devices")
    @classmethod
    def _device_list(cls, devices: str | None) -> str | None:
        if devices is not None and not all(d.strip().isdigit() for d in devices.split(",")):
            raise ValueError(f"devices must be comma-separated GPU indices such as '0,1', got {devices!r}")
        return devices

    @field_validator("turn_urls")
    @classmethod
    def _turn_schemes(cls, urls: list[str]) -> list[str]:
        return check_schemes(urls, ("turn:", "turns:"), "TURN URL")

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for o in origins:
            scheme, sep, rest = o.partition("://")
            if o != "*" and (not sep or scheme not in ("http", "https") or not rest or "/" in rest):
                raise ValueError(f"allowed origin {o!r} must be scheme://host[:port] (http or https, "
                                 f"no path, as a browser's Origin header says it) or '*'")
        return [o if o == "*" else o.lower() for o in origins]

    @model_validator(mode="after")
    def _turn_complete(self) -> "Settings":
        if (self.turn_secret is None) != (not self.turn_urls):
            raise ValueError("--turn-secret and --turn-urls go together: the secret mints credentials "
                             "for those TURN servers; set both or neither")
        if self.turn_secret is not None and self.turn_ttl_s < self.max_call_s:
            raise ValueError(f"--turn-ttl-s {self.turn_ttl_s} is shorter than --max-call-s "
                             f"{self.max_call_s:g}: a relayed call would lose its TURN allocation when "
                             f"the credential expires; raise --turn-ttl-s")
        return self

    @property
    def checkpoint_folder(self) -> Path | None:
        """The checkpoint served; None: seeded dummy weights of `dummy_preset`."""
        if self.checkpoint == DUMMY or (self.checkpoint is None and self.preset is not None):
            return None
        return SHIPPED_CHECKPOINT if self.checkpoint is None else Path(self.checkpoint)

    @property
    def dummy_preset(self) -> str:
        return self.preset or "cpu"

    @property
    def loopback(self) -> bool:
        """Bound to this machine only: ICE must then offer a loopback candidate too."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def parse_settings(argv: list[str]) -> Settings:
    """Flags over `DUPLEX_*` environment variables over defaults; `--help` exits with usage."""
    return CliApp.run(Settings, cli_args=argv)
