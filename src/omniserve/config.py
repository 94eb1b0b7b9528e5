"""Settings: one object, from CLI flags, ``OMNISERVE_*`` variables and a TOML file, in that order.

Nested sections use ``__`` in variable names (``OMNISERVE_EMULATOR__TOKENS_PER_SECOND=0``) and
tables in TOML (``[emulator]``). Nothing else in omniserve reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from omniserve.catalog import FLASH_0915


class TimeoutSettings(BaseModel):
    """How long the engine may stay silent (docs/operations.md)."""

    model_config = ConfigDict(extra="forbid")

    # Engine started -> its first event (time in the engine's queue included).
    first_event_s: float = Field(default=300.0, gt=0)
    # Between two events of a stream, counted only while the server waits on the engine (a
    # slow client holding the stream back does not count).
    idle_s: float = Field(default=60.0, gt=0)
    # A client that reads nothing of its stream for this long (its socket buffers full) is
    # dropped as if it had left.
    client_s: float = Field(default=60.0, gt=0)


class RealtimeSettings(BaseModel):
    """Realtime sessions (``/api-ws/v1/realtime``, docs/realtime.md)."""

    model_config = ConfigDict(extra="forbid")

    # A session is closed this long after it opened (the vendor's limit: 120 minutes).
    max_session_s: float = Field(default=7200.0, gt=0)
    # ... and when its client sends nothing for this long.
    idle_s: float = Field(default=300.0, gt=0)
    # Most audio one input buffer holds before a commit (16 kHz PCM16): 5 minutes.
    max_buffer_s: float = Field(default=300.0, gt=0)
    # Largest client event, in bytes of JSON: an append of 10 s of audio is about 430 KB, of
    # an image at most 683 KB.
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Audio may arrive faster than real time (a recording sent at once) but at most this far
    # ahead of the session's clock; appends beyond it are refused until time catches up.
    max_audio_lead_s: float = Field(default=60.0, gt=0)
    # Sessions one API key may hold open at once, unless the key sets its own; 0: no limit.
    sessions_per_key: int = Field(default=16, ge=0)


class HttpSettings(BaseModel):
    """What the HTTP server tolerates of a connection before any of it reaches the API
    (docs/security.md)."""

    model_config = ConfigDict(extra="forbid")

    # A request's headers must be complete this long after the connection opened (or after
    # the previous response on a kept-alive connection); slower ones are closed.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # After the first ``body_grace_s``, a body must keep arriving at this many bytes per
    # second on average (256 kbit/s: a 10 MB upload may take up to five minutes), or it is
    # answered 408; 0 turns the check off.
    body_min_rate: float = Field(default=32 * 1024, ge=0)
    body_grace_s: float = Field(default=10.0, ge=0)
    # Open connections at most; requests on connections beyond it are answered 503.
    max_connections: int = Field(default=1024, ge=1)
    # How long a kept-alive connection may sit idle between requests.
    keep_alive_s: float = Field(default=5.0, gt=0)
    # Names a server without API keys answers to beyond localhost and IP addresses
    # ("*" for any): a web page can point any name it controls at this machine.
    allowed_hosts: list[str] = Field(default_factory=list)


class EmulatorSettings(BaseModel):
    """The offline emulator: its pacing (0: as fast as possible) and its rules."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_second: float = Field(default=40.0, ge=0)
    first_token_ms: float = Field(default=150.0, ge=0)
    # Scripted replies and faults (TOML or JSON, read again when it changes; docs/testing.md).
    rules: Path | None = None


class CassetteSettings(BaseModel):
    """Record each chat completion into a cassette directory, or answer from one
    (docs/testing.md). Recording works with every engine; replay answers without one."""

    model_config = ConfigDict(extra="forbid")

    record: Path | None = None
    replay: Path | None = None
    # recorded: each event when it was sent; fast: everything at once.
    replay_pace: Literal["recorded", "fast"] = "recorded"

    @model_validator(mode="after")
    def _one_way(self) -> CassetteSettings:
        if self.record is not None and self.replay is not None:
            raise ValueError("record and replay cannot be used together")
        return self


class SpeechSettings(BaseModel):
    """Built-in speech for engines without a voice of their own."""

    model_config = ConfigDict(extra="forbid")

    # "kokoro": the neural Kokoro-82M for zh, en, fr, es, it and pt, espeak-ng for the rest
    # (the voice extra, docs/voices.md).
    backend: Literal["espeak", "tone", "kokoro"] = "espeak"
    espeak_path: str = "espeak-ng"
    # A directory with Kokoro's own files (kokoro-v1.0.onnx, voices-v1.0.bin, or either): what
    # it lacks comes from the voice extra's wheels (the int8 model and five voices).
    kokoro_path: Path | None = None
    # CPU threads of one Kokoro sentence; 0: onnxruntime's default (one per core).
    kokoro_threads: int = Field(default=0, ge=0)
    # Kokoro sentences inferred at once (one shared model); more wait, most urgent first.
    kokoro_concurrency: int = Field(default=1, ge=1)
    # Quality first, never a stall: a sentence Kokoro would not finish before its audio is
    # needed is read by espeak-ng instead (per stream, at sentence boundaries). Before a reply's
    # first audio, this long may pass from its request.
    kokoro_first_audio_s: float = Field(default=1.2, gt=0)
    # Synthesis processes running at once; first sentences of a reply jump the queue.
    max_concurrency: int = Field(default_factory=lambda: max(2, (os.cpu_count() or 1) * 2), ge=1)
    chunk_ms: int = Field(default=200, ge=20, le=2000)
    # Add ``transcript`` (the sentence spoken) to audio deltas, as turbo-era streams did.
    transcript: bool = False
    # The shape of audio deltas: "dashscope" (the vendor's: id and expires_at on every chunk)
    # or "openai" (id and expires_at on the first audio chunk only, transcript on every one),
    # for clients that add the deltas up (openai's chat.completions.stream()). A request may
    # choose with the X-Omniserve-Audio-Delta header (docs/api.md).
    audio_delta: Literal["dashscope", "openai"] = "dashscope"


class RecognizerSettings(BaseModel):
    """Offline speech recognition (Whisper on the CPU; the ``asr`` extra, docs/recognizer.md)."""

    model_config = ConfigDict(extra="forbid")

    # Off by default: the server loads no recognizer (and none of its memory) unless asked.
    enabled: bool = False
    # A CTranslate2 Whisper model directory (any faster-whisper model); by default the
    # Whisper-base that the asr extra installs.
    model_path: Path | None = None
    # CTranslate2's weight type on the CPU: int8 is the fastest.
    compute_type: Literal["int8", "int8_float32", "int16", "float32"] = "int8"
    # CPU threads of one transcription; 0: the library's default (4).
    threads: int = Field(default=0, ge=0)
    # 1 decodes greedily, the fastest on a CPU; 5 is Whisper's own beam search (slower, rarely
    # better on clear speech).
    beam_size: int = Field(default=1, ge=1, le=16)
    # Transcriptions running at once (each one more loads another copy of the model); more
    # wait their turn.
    concurrency: int = Field(default=1, ge=1)


class MediaSettings(BaseModel):
    """Fetching and decoding of image, audio and video input."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Hosts (names) or networks (CIDR) a URL may reach although they are not public addresses:
    # LAN media servers, or 127.0.0.1 in tests. Everything else non-global is refused.
    allow_hosts: list[str] = Field(default_factory=list)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)  # between two reads
    total_timeout_s: float = Field(default=60.0, gt=0)  # one URL, redirects included
    max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_concurrency: int = Field(default=16, ge=1)  # URLs downloading at once, server-wide
    request_concurrency: int = Field(default=4, ge=1)  # URLs downloading at once, per request
    # URLs one caller (an API key; on a server without keys, a client address) downloads at
    # once, so one caller cannot hold every server-wide slot. Capped at fetch_concurrency.
    caller_concurrency: int = Field(default=8, ge=1)
    # A download that averages less than min_rate bytes a second after its first
    # min_rate_grace_s seconds is cut (a drip-feeding server would hold its slot); 0: no floor.
    min_rate: int = Field(default=16384, ge=0)
    min_rate_grace_s: float = Field(default=5.0, gt=0)
    # Decoding threads (see docs/media.md).
    workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    # Memory every decode in the server draws from at once (each is priced from its header;
    # one costs at most 400 MB); a decode waits until its price is free.
    decode_memory_mb: int = Field(default=1536, ge=400)
    # What one request's media may cost to decode in all; past it the next item is refused.
    request_decode_mb: int = Field(default=2048, ge=400)
    user_agent: str = "omniserve"


class ServedCheckpoint(BaseModel):
    """One served model name backed by open weights (a Hub id or a local directory)."""

    model_config = ConfigDict(extra="forbid")

    # The name clients send: a catalog name (its limits apply) or a new name. By default the
    # family's catalog name: qwen2.5-omni-7b for Qwen2.5-Omni, qwen3-omni-flash for Qwen3-Omni.
    name: str | None = None
    checkpoint: str
    # What the weights are: inferred from the checkpoint's name when not given.
    kind: Literal["instruct", "thinking", "captioner"] | None = None
    # Catalog voice -> model speaker, over the defaults (see docs/transformers.md).
    voices: dict[str, str] = Field(default_factory=dict)
    revision: str | None = None


class TransformersSettings(BaseModel):
    """The in-process engine for open Qwen2.5-Omni / Qwen3-Omni weights."""

    model_config = ConfigDict(extra="forbid")

    models: list[ServedCheckpoint] = Field(default_factory=list)
    # "auto": the first GPU when there is one, else the CPU; or "cpu", "cuda", "cuda:1", "mps".
    device: str = "auto"
    # "auto": bfloat16 on a GPU, float32 on the CPU.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Spread one model over several GPUs ("auto", "balanced", ...); needs accelerate.
    device_map: str | None = None
    # "flash_attention_2", "sdpa" or "eager"; transformers picks when unset.
    attn_implementation: str | None = None
    # "dummy": random weights of the checkpoint's architecture instead of its weight files (load
    # tests and benchmarks; replies are noise). The directory still needs its config, tokenizer,
    # processor files and (Qwen2.5) spk_dict.pt.
    load_format: Literal["auto", "dummy"] = "auto"
    # "auto": speak when the weights have a talker; false: never load the talker (saves memory).
    audio_output: Literal["auto", "on", "off"] = "auto"
    # Requests decoded together in one batch (each holds a slot of the key/value cache).
    max_batch: int = Field(default=8, ge=1, le=256)
    # Positions (prompt and reply) one slot holds; by default the model's context, at most
    # 32768. Longer inputs are refused as too long; lower it to spend less memory per slot.
    max_seq_len: int | None = Field(default=None, ge=64)
    # On a GPU, replay each decode step from CUDA graphs captured at start-up.
    cuda_graphs: bool = True
    # Requests waiting for a free slot; more are refused with a 429.
    queue_size: int = Field(default=16, ge=0)
    # Extra keyword arguments for generate(), e.g. {"talker_max_new_tokens" = 2048}.
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    # torch threads when the model runs on the CPU; by default every core but one, which is left
    # to the server's event loop (torch on every core starves it and slows the model too).
    cpu_threads: int | None = Field(default=None, ge=1)
    # Refuse to load when free memory is below the weights' size times this factor.
    memory_headroom: float = Field(default=1.1, ge=0)


class UpstreamSpec(BaseModel):
    """One upstream service: one or more replicas of the same server."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["vllm-omni", "dashscope", "openai"]
    # Replicas' base URLs, each ending where "/chat/completions" is appended:
    # "http://gpu1:8091/v1", "https://dashscope.aliyuncs.com/compatible-mode/v1".
    base_urls: list[str] = Field(min_length=1)
    # The environment variable that holds the upstream's API key (never the key itself).
    api_key_env: str | None = None
    # Served name -> the upstream's model id (none for an upstream that only reads text aloud
    # or only transcribes).
    models: dict[str, str] = Field(default_factory=dict)
    # Catalog voice -> the upstream's voice or speaker (vllm-omni: ethan, chelsie, aiden).
    voices: dict[str, str] = Field(default_factory=dict)
    # False for an upstream that cannot speak: omniserve's own speech is added.
    audio_output: bool = True
    # Sample rate of headerless audio from this upstream (WAV chunks carry their own).
    audio_rate: int = Field(default=24_000, ge=8_000, le=192_000)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_byte_timeout_s: float = Field(default=60.0, gt=0)  # request sent -> response headers
    idle_timeout_s: float = Field(default=60.0, gt=0)  # between two chunks of a stream
    max_connections: int = Field(default=256, ge=1)
    # Streams that may wait for one of those connections (up to connect_timeout_s); past
    # this a request is refused at once with 503 and Retry-After instead of piling up.
    max_waiting: int = Field(default=64, ge=0)
    health_path: str = "/health"  # GET on each replica's origin; "" for no health checks
    health_interval_s: float = Field(default=10.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)  # consecutive failures that open the circuit
    cooldown_s: float = Field(default=10.0, gt=0)  # how long an open circuit stays open
    # The upstream's own realtime WebSocket: realtime sessions whose chat model this upstream
    # serves are relayed to it ("wss://dashscope.aliyuncs.com/api-ws/v1/realtime",
    # "ws://gpu1:8091/v1/realtime"); unset, each turn is one chat request (docs/realtime.md).
    realtime_url: str | None = None
    # Served realtime model -> the upstream's model id there. By default Model Studio gets the
    # served name, vLLM-Omni the id of the realtime model's chat model in ``models``.
    realtime_models: dict[str, str] = Field(default_factory=dict)
    # The upstream's text-to-speech model: POST /v1/audio/speech is forwarded to its own
    # /audio/speech with this model ("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice" on vLLM-Omni,
    # "gpt-4o-mini-tts"); voices are mapped through ``voices``, others pass as sent.
    speech_model: str | None = None
    # The upstream's speech-to-text model: POST /v1/audio/transcriptions is forwarded to its
    # own /audio/transcriptions with this model ("openai/whisper-large-v3" on vLLM, "whisper-1").
    transcription_model: str | None = None

    @model_validator(mode="after")
    def _serves_something(self) -> UpstreamSpec:
        if not self.models and self.speech_model is None and self.transcription_model is None:
            raise ValueError(
                f"upstream {self.name} serves nothing: give it models, a speech_model or a "
                "transcription_model"
            )
        return self

    def api_key(self) -> str | None:
        """The key from its environment variable (read here, the one module that reads it)."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(
                f"upstream {self.name}: the environment variable {self.api_key_env} is not set"
            )
        return key


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/omniserve``, else ``~/.local/share/omniserve``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "omniserve"


class AccountsSettings(BaseModel):
    """API keys, rate limits and the usage ledger (docs/accounts.md)."""

    model_config = ConfigDict(extra="forbid")

    # Where the SQLite database lives when no database_url is given.
    data_dir: Path = Field(default_factory=default_data_dir)
    # postgresql://user:password@host/db for several replicas; SQLite in data_dir otherwise.
    database_url: str | None = None
    # redis://host:6379/0: rate limits shared by every replica; in-process otherwise.
    redis_url: str | None = None
    # Serve a non-loopback address without API keys (refused otherwise).
    insecure_no_auth: bool = False
    ledger: bool = True
    # Ledger rows older than this are deleted (0: keep forever).
    retention_days: int = Field(default=90, ge=0)
    # A "running" row of a server that died is closed as "interrupted" when the next server
    # starts (accounts/owners.py); one whose server cannot be told is closed after this long.
    stale_after_s: float = Field(default=3600.0, ge=0)
    # Whose list prices the ledger's cost uses: cn-beijing (CNY) or ap-southeast-1 (USD).
    price_region: Literal["cn-beijing", "ap-southeast-1"] = "cn-beijing"
    # When the database (keys) or Redis (limits) stops answering while serving: false answers
    # 503 until it is back; true keeps serving with the keys last read and without the limits
    # it cannot check, and the ledger keeps its rows until it can write them.
    fail_open: bool = False
    # How long a streamed answer's audio id stands for its transcript in later history
    # ({"role": "assistant", "audio": {"id": …}}); 0: not remembered (such an id is a 400).
    audio_history_s: float = Field(default=3600.0, ge=0)


class UpstreamSettings(BaseModel):
    """Remote engines: vLLM-Omni, Model Studio itself, or any OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    upstreams: list[UpstreamSpec] = Field(default_factory=list)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OMNISERVE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    engine: Literal["emulator", "transformers", "upstream"] = "emulator"
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # text: lines for a terminal; json: one JSON object per line, for log collectors.
    log_format: Literal["text", "json"] = "text"
    # Which snapshot the stable name qwen3-omni-flash points to.
    flash_alias: str = FLASH_0915
    # Serve only these model names (all of the catalog when empty).
    models: list[str] = Field(default_factory=list)
    # The Qwen BPE ranks file; by default the one the dashscope package ships.
    tokenizer_file: Path | None = None
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Messages, and content parts in all, one request may hold.
    max_messages: int = Field(default=1024, ge=1)
    max_content_parts: int = Field(default=1024, ge=1)
    # Requests parsed and validated at once, on worker threads (parsing grows with the body).
    parse_workers: int = Field(default=4, ge=1)
    # On SIGTERM: how long running streams may go on before they are ended (docs/operations).
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # The browser playground at / and /playground (docs/playground.md).
    playground: bool = True
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)
    cassettes: CassetteSettings = Field(default_factory=CassetteSettings)
    speech: SpeechSettings = Field(default_factory=SpeechSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    recognizer: RecognizerSettings = Field(default_factory=RecognizerSettings)
    transformers: TransformersSettings = Field(default_factory=TransformersSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    accounts: AccountsSettings = Field(default_factory=AccountsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``overrides`` (flags) over the environment over ``config_file`` (TOML)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        file_values = TomlConfigSettingsSource(Settings, toml_file=config_file)()
    env_values = EnvSettingsSource(Settings)()
    merged = _deep_merge(_deep_merge(file_values, env_values), overrides)
    # Build without re-reading the environment: the merge above already applied it.
    return Settings.model_validate(merged)


# The command line's flat flags that set a field of a section: flag -> section.
FLAG_SECTIONS: dict[str, str] = {
    **dict.fromkeys(("tokens_per_second", "first_token_ms", "rules"), "emulator"),
    **dict.fromkeys(("record", "replay", "replay_pace"), "cassettes"),
    **dict.fromkeys(
        ("device", "dtype", "device_map", "audio_output", "load_format", "max_batch"),
        "transformers",
    ),
    **dict.fromkeys(("database_url", "redis_url", "data_dir", "insecure_no_auth"), "accounts"),
}


def validation_problems(exc: ValidationError, whole: str = "settings") -> str:
    """A pydantic error as one line a person reads: ``where: what`` for each problem, joined
    by ``; `` (``whole`` names a problem of the whole object)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def settings_from_flags(config_file: Path | None = None, **flags: Any) -> Settings:
    """``load_settings`` with the command line's flags, flat as the commands take them; a flag
    that is None was not given. Besides the fields of ``Settings`` and of ``FLAG_SECTIONS``:
    ``model`` (open weights: the transformers engine serves them), ``served_name`` (the name
    clients use for them) and ``flash_attn`` (FlashAttention 2).

    Raises ``FileNotFoundError`` or ``ValueError`` (validation included), each with a message
    that says what is wrong in one line."""
    given = {k: v for k, v in flags.items() if v is not None}
    sections: dict[str, dict[str, Any]] = {}
    for flag, section in FLAG_SECTIONS.items():
        if flag in given:
            sections.setdefault(section, {})[flag] = given.pop(flag)
    if given.pop("flash_attn", False):
        sections.setdefault("transformers", {})["attn_implementation"] = "flash_attention_2"
    checkpoint, served_name = given.pop("model", None), given.pop("served_name", None)
    if checkpoint is not None:
        served = [{"name": served_name, "checkpoint": checkpoint}]
        sections.setdefault("transformers", {})["models"] = served
        given.setdefault("engine", "transformers")
    elif served_name is not None:
        raise ValueError("--served-name needs --model")
    return load_settings(config_file, **_deep_merge(given, sections))


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


ENV_PREFIX = "OMNISERVE_"


def environment_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    """Every ``OMNISERVE_*`` variable a setting is read from (sections too, as JSON)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        full = f"{prefix}{name.upper()}"
        names.add(full)
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= environment_names(inner, full + "__")
    return names


def unknown_environment(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``OMNISERVE_*`` variables no setting reads, each with the closest real one (or None).

    A variable that names a setting by its own name without its section
    (``OMNISERVE_DATA_DIR``) is matched to the section that has it."""
    import difflib

    known = environment_names()
    out: list[tuple[str, str | None]] = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        leaf = upper.removeprefix(ENV_PREFIX)
        by_leaf = sorted(k for k in known if k.endswith("__" + leaf))
        close = by_leaf or difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
        out.append((variable, close[0] if close else None))
    return out
