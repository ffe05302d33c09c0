"""Model configuration: one typed config per component, presets as named functions.

The numbers of tokens per segment follow from each preset's resolution and rates; they are
computed once here (`UnitLayout`) and validated with errors that name the rule. Pure data:
this module never reads the environment and never allocates weights.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

FPS = 25  # video frames per second, inside the model and on the wire
FRAMES_PER_UNIT = 4  # one unit = 4 frames = 160 ms
UNIT_SECONDS = FRAMES_PER_UNIT / FPS
LATENTS_PER_UNIT = 4  # audio latents at 25 Hz: 4 a unit

# Text: byte-level vocabulary plus specials.
PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 260  # 256 bytes + PAD, BOS, EOS + one spare, keeps the table even


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TransformerConfig(_Frozen):
    dim: int  # model width
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (GQA when < n_heads)
    ffn_dim: int  # SwiGLU hidden width
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Channels of each head given to the (time, row, column) rotary axes; each even."""
        d = self.head_dim
        quarter = (d // 4) // 2 * 2
        return d - 2 * quarter, quarter, quarter

    @model_validator(mode="after")
    def _check(self) -> "TransformerConfig":
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 8:
            raise ValueError(f"head_dim ({self.head_dim}) must be a multiple of 8 for 3-axis RoPE")
        return self


class VideoConfig(_Frozen):
    height: int  # output (and input) frame size in pixels
    width: int
    vae_spatial: Literal[8, 16]  # VAE spatial compression; time is always 4x (one latent frame a unit)
    vae_channels: int  # latent channels of a video latent frame
    patch: int  # latent pixels per token side (patch x patch latents -> one token)
    vae_width: int  # channels of the VAE's first (full resolution) stage
    obs_spatial: Literal[8, 16, 32]  # user-side encoder spatial compression (one token a cell)
    obs_width: int  # channels of the user-side encoder's first stage

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_spatial, self.width // self.vae_spatial

    @property
    def token_grid(self) -> tuple[int, int]:
        h, w = self.latent_hw
        return h // self.patch, w // self.patch

    @property
    def obs_grid(self) -> tuple[int, int]:
        return self.height // self.obs_spatial, self.width // self.obs_spatial

    @model_validator(mode="after")
    def _check(self) -> "VideoConfig":
        for name, f in (("vae_spatial * patch", self.vae_spatial * self.patch),
                        ("obs_spatial", self.obs_spatial)):
            if self.height % f or self.width % f:
                raise ValueError(
                    f"height x width ({self.height} x {self.width}) must be multiples of {name} ({f})")
        return self


class AudioConfig(_Frozen):
    sample_rate: int = 24_000  # model audio rate, mono
    vae_channels: int  # latent channels of one audio latent (25 Hz)
    vae_width: int  # channels of the audio VAE's first stage
    strides: tuple[int, ...] = (4, 4, 6, 10)  # product = samples per latent (960 at 24 kHz)
    obs_width: int  # channels of the user-side audio encoder's first stage
    # The VAE's audio path (model/vae.py, model/istft.py). conv: strided causal convs down and
    # sub-pixel convs up to samples (`strides`). stft / istft: causal STFT log-magnitudes in,
    # log-magnitude and phase per STFT hop out, then a streaming overlap-add.
    encoder: Literal["conv", "stft"] = "conv"
    decoder: Literal["conv", "istft"] = "conv"
    stft_hops_per_latent: int = 4  # STFT hops per latent (hop = samples per latent / this)
    stft_window_hops: int = 4  # STFT window length in hops (n_fft = this x hop)

    @property
    def samples_per_unit(self) -> int:
        return round(self.sample_rate * UNIT_SECONDS)

    @property
    def samples_per_latent(self) -> int:
        return self.samples_per_unit // LATENTS_PER_UNIT

    @property
    def stft_hop(self) -> int:
        return self.samples_per_latent // self.stft_hops_per_latent

    @property
    def n_fft(self) -> int:
        return self.stft_window_hops * self.stft_hop

    @model_validator(mode="after")
    def _check(self) -> "AudioConfig":
        hop = 1
        for s in self.strides:
            hop *= s
        if hop * LATENTS_PER_UNIT != self.samples_per_unit:
            raise ValueError(
                f"product of audio strides ({hop}) x {LATENTS_PER_UNIT} latents a unit must equal "
                f"the samples in 160 ms at {self.sample_rate} Hz ({self.samples_per_unit})")
        if self.samples_per_latent % self.stft_hops_per_latent:
            raise ValueError(
                f"stft_hops_per_latent ({self.stft_hops_per_latent}) must divide the samples per "
                f"latent ({self.samples_per_latent} at {self.sample_rate} Hz)")
        if self.stft_window_hops < 1:
            raise ValueError(f"stft_window_hops must be >= 1, got {self.stft_window_hops}")
        return self


class FlowConfig(_Frozen):
    steps: int = 4  # solver steps per unit
    shift: float = 3.0  # time shift: t' = s t / (1 + (s - 1) t); > 1 spends more steps near noise
    solver: Literal["euler", "heun"] = "euler"


class CharacterConfig(_Frozen):
    voice_units: int = 2  # seconds of voice reference, in units (4 audio latents each)
    persona_bytes: int = 64  # persona text, UTF-8 bytes, padded with PAD / truncated


class ModelConfig(_Frozen):
    name: str
    transformer: TransformerConfig
    video: VideoConfig
    audio: AudioConfig
    flow: FlowConfig = FlowConfig()
    character: CharacterConfig = CharacterConfig()
    text_slots: int  # k text slots per unit
    obs_dim: int  # feature width of the user-side encoder's tokens
    window_units: int  # units kept in the KV cache behind the prefill sinks

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.window_units < 1:
            raise ValueError(f"window_units must be >= 1, got {self.window_units}")
        if self.text_slots < 1:
            raise ValueError(f"text_slots must be >= 1, got {self.text_slots}")
        return self

    @property
    def layout(self) -> "UnitLayout":
        return UnitLayout.of(self)


class UnitLayout(_Frozen):
    """Token counts of one unit and of the prefill, derived once from a ModelConfig.

    A unit is [obs | text | resp]; the prefill (attention sinks) is [image | voice | persona].
    """
    obs_video: int  # user video tokens (obs grid cells)
    obs_audio: int  # user audio tokens (4 a unit)
    text: int  # k
    resp_video: int  # avatar video latent tokens
    resp_audio: int  # avatar audio latent tokens (4 a unit)
    video_token_dim: int  # latent channels * patch^2
    audio_token_dim: int
    sink_image: int
    sink_voice: int
    sink_persona: int
    window_units: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> "UnitLayout":
        gh, gw = cfg.video.token_grid
        oh, ow = cfg.video.obs_grid
        return cls(
            obs_video=oh * ow, obs_audio=LATENTS_PER_UNIT, text=cfg.text_slots,
            resp_video=gh * gw, resp_audio=LATENTS_PER_UNIT,
            video_token_dim=cfg.video.vae_channels * cfg.video.patch ** 2,
            audio_token_dim=cfg.audio.vae_channels,
            sink_image=gh * gw, sink_voice=cfg.character.voice_units * LATENTS_PER_UNIT,
            sink_persona=cfg.character.persona_bytes, window_units=cfg.window_units)

    @property
    def obs(self) -> int:
        return self.obs_video + self.obs_audio

    @property
    def resp(self) -> int:
        return self.resp_video + self.resp_audio

    @property
    def unit(self) -> int:
        """Rows a unit adds to the KV cache: obs + text + resp."""
        return self.obs + self.text + self.resp

    @property
    def sinks(self) -> int:
        return self.sink_image + self.sink_voice + self.sink_persona

    @property
    def cache_rows(self) -> int:
        """KV-cache rows per layer: the sinks plus the window; fixed whatever the call's length."""
        return self.sinks + self.window_units * self.unit


# --- presets: named functions, one table -------------------------------------------------

def tiny() -> ModelConfig:
    """Tests: milliseconds on CPU."""
    return ModelConfig(
        name="tiny",
        transformer=TransformerConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128),
        video=VideoConfig(height=32, width=48, vae_spatial=16, vae_channels=4, patch=1,
                          vae_width=8, obs_spatial=16, obs_width=8),
        audio=AudioConfig(vae_channels=4, vae_width=8, obs_width=8),
        flow=FlowConfig(steps=3),
        character=CharacterConfig(voice_units=1, persona_bytes=8),
        text_slots=3, obs_dim=32, window_units=3)


def cpu() -> ModelConfig:
    """Real time on 2 CPU cores shared by the two workers, the front end and a local browser
    (bench/results/2026-11-27_*: 96x64, 8 units of context); the default of `make run`."""
    return ModelConfig(
        name="cpu",
        transformer=TransformerConfig(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512),
        video=VideoConfig(height=64, width=96, vae_spatial=16, vae_channels=8, patch=1,
                          vae_width=8, obs_spatial=16, obs_width=8),
        audio=AudioConfig(vae_channels=16, vae_width=16, obs_width=16),
        flow=FlowConfig(steps=4),
        character=CharacterConfig(voice_units=2, persona_bytes=32),
        text_slots=4, obs_dim=128, window_units=8)


def demo() -> ModelConfig:
    """The shipped demonstrator: the `cpu` preset's Transformer and video, with a codec that
    speaks: a causal STFT encoder and an iSTFT decoder (32-channel latents at 25 Hz, STFT hop
    10 ms, window 40 ms; a 9.6 M-parameter audio path), trained on 2 CPU cores by `duplex train`."""
    return ModelConfig(
        name="demo",
        transformer=TransformerConfig(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512),
        video=VideoConfig(height=64, width=96, vae_spatial=16, vae_channels=8, patch=1,
                          vae_width=8, obs_spatial=16, obs_width=8),
        audio=AudioConfig(vae_channels=32, vae_width=256, obs_width=16, encoder="stft",
                          decoder="istft"),
        flow=FlowConfig(steps=4),
        character=CharacterConfig(voice_units=2, persona_bytes=32),
        text_slots=4, obs_dim=128, window_units=8)


def base() -> ModelConfig:
    """About 1.3 B parameters, one or two GPUs."""
    return ModelConfig(
        name="base",
        transformer=TransformerConfig(dim=2048, n_layers=26, n_heads=16, n_kv_heads=8,
                                      ffn_dim=5632),
        video=VideoConfig(height=384, width=640, vae_spatial=16, vae_channels=16, patch=2,
                          vae_width=64, obs_spatial=32, obs_width=32),
        audio=AudioConfig(vae_channels=32, vae_width=64, obs_width=32),
        flow=FlowConfig(steps=4),
        character=CharacterConfig(voice_units=6, persona_bytes=256),
        text_slots=8, obs_dim=1024, window_units=64)


def large() -> ModelConfig:
    """About 14 B parameters, GPUs."""
    return ModelConfig(
        name="large",
        transformer=TransformerConfig(dim=5120, n_layers=44, n_heads=40, n_kv_heads=40,
                                      ffn_dim=13824),
        video=VideoConfig(height=480, width=832, vae_spatial=16, vae_channels=16, patch=2,
                          vae_width=96, obs_spatial=32, obs_width=48),
        audio=AudioConfig(vae_channels=32, vae_width=96, obs_width=48),
        flow=FlowConfig(steps=4),
        character=CharacterConfig(voice_units=6, persona_bytes=256),
        text_slots=8, obs_dim=1024, window_units=64)


PRESETS = {"tiny": tiny, "cpu": cpu, "demo": demo, "base": base, "large": large}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
