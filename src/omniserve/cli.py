"""The ``omniserve`` command: serve, and look at the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omniserve.catalog import LANGUAGE_NAMES, Catalog
from omniserve.config import Settings, settings_from_flags, validation_problems
from omniserve.logs import configure as configure_logging

if TYPE_CHECKING:
    from omniserve.service import ChatService

app = typer.Typer(
    help="omniserve: the Qwen-Omni API (OpenAI-compatible mode) on your own machine.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (flags and OMNISERVE_* win over it)."),
]


def _settings(config: Path | None, **flags: Any) -> Settings:
    """The settings from the flags (``settings_from_flags``); a mistake is one line, status 2."""
    from pydantic import ValidationError

    try:
        return settings_from_flags(config, **flags)
    except ValidationError as exc:
        console.print(f"[red]error:[/red] {escape(validation_problems(exc))}")
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


# The flags of ``serve``.
HostOption = Annotated[str | None, typer.Option(help="Address to bind \\[default: 127.0.0.1].")]
PortOption = Annotated[int | None, typer.Option(help="Port \\[default: 8000].")]
EngineOption = Annotated[
    str | None, typer.Option(help="Engine: emulator \\[default], transformers or upstream.")
]
ModelOption = Annotated[
    str | None,
    typer.Option(help="Open weights for the transformers engine: a Hub id or a directory."),
]
ServedNameOption = Annotated[
    str | None,
    typer.Option(help="Name clients use for --model \\[default: the family's catalog name]."),
]
DeviceOption = Annotated[
    str | None, typer.Option(help="transformers: auto \\[default], cpu, cuda, cuda:1.")
]
DtypeOption = Annotated[
    str | None, typer.Option(help="transformers: auto \\[default], bfloat16, float16, float32.")
]
DeviceMapOption = Annotated[
    str | None, typer.Option(help="transformers: spread over GPUs, e.g. auto.")
]
FlashAttnOption = Annotated[
    bool | None, typer.Option("--flash-attn/--no-flash-attn", help="FlashAttention 2.")
]
AudioOutputOption = Annotated[
    str | None,
    typer.Option(help="transformers: auto \\[default]; off never loads the talker."),
]
MaxBatchOption = Annotated[
    int | None,
    typer.Option(help="transformers: requests decoded together \\[default: 8]."),
]
LoadFormatOption = Annotated[
    str | None,
    typer.Option(help="transformers: auto \\[default]; dummy: random weights (benchmarks)."),
]
LogLevelOption = Annotated[str | None, typer.Option(help="critical|error|warning|info|debug.")]
LogFormatOption = Annotated[
    str | None,
    typer.Option(help="text \\[default] or json (one object per line, for collectors)."),
]
TokensPerSecondOption = Annotated[
    float | None, typer.Option(help="Emulator pacing; 0 streams as fast as possible.")
]
FirstTokenMsOption = Annotated[
    float | None, typer.Option(help="Emulator delay before the first token.")
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(help="Keys and ledger in PostgreSQL (postgresql://…) \\[default: SQLite]."),
]
RedisUrlOption = Annotated[
    str | None, typer.Option(help="Share rate limits between replicas (redis://…).")
]
DataDirOption = Annotated[Path | None, typer.Option(help="Where the SQLite database lives.")]
InsecureNoAuthOption = Annotated[
    bool | None,
    typer.Option("--insecure-no-auth", help="Serve a non-loopback address without any API key."),
]
DrainTimeoutOption = Annotated[
    float | None,
    typer.Option(help="On SIGTERM, seconds running streams may go on \\[default: 30]."),
]
RulesOption = Annotated[
    Path | None,
    typer.Option(help="Emulator: scripted replies and faults (TOML or JSON; docs/testing.md)."),
]
RecordOption = Annotated[
    Path | None, typer.Option(help="Record each chat completion into this cassette directory.")
]
ReplayOption = Annotated[
    Path | None,
    typer.Option(help="Answer chat completions from this cassette directory, byte for byte."),
]
ReplayPaceOption = Annotated[
    str | None,
    typer.Option(help="Replay: recorded \\[default] keeps the timing; fast sends at once."),
]
PlaygroundOption = Annotated[
    bool | None,
    typer.Option("--playground/--no-playground", help="The browser playground at /."),
]


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    engine: EngineOption = None,
    model: ModelOption = None,
    served_name: ServedNameOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    device_map: DeviceMapOption = None,
    flash_attn: FlashAttnOption = None,
    audio_output: AudioOutputOption = None,
    max_batch: MaxBatchOption = None,
    load_format: LoadFormatOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
    tokens_per_second: TokensPerSecondOption = None,
    first_token_ms: FirstTokenMsOption = None,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    data_dir: DataDirOption = None,
    insecure_no_auth: InsecureNoAuthOption = None,
    drain_timeout: DrainTimeoutOption = None,
    playground: PlaygroundOption = None,
    rules: RulesOption = None,
    record: RecordOption = None,
    replay: ReplayOption = None,
    replay_pace: ReplayPaceOption = None,
    config: ConfigOption = None,
) -> None:
    """Start the API server."""
    settings = _settings(
        config,
        host=host,
        port=port,
        engine=engine,
        model=model,
        served_name=served_name,
        device=device,
        dtype=dtype,
        device_map=device_map,
        flash_attn=flash_attn,
        audio_output=audio_output,
        max_batch=max_batch,
        load_format=load_format,
        log_level=log_level,
        log_format=log_format,
        drain_timeout_s=drain_timeout,
        playground=playground,
        tokens_per_second=tokens_per_second,
        first_token_ms=first_token_ms,
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        insecure_no_auth=insecure_no_auth,
        rules=rules,
        record=record,
        replay=replay,
        replay_pace=replay_pace,
    )
    log_config = configure_logging(settings.log_level, settings.log_format)
    _warn_unknown_environment()
    from omniserve.errors import StartupError
    from omniserve.service import ChatService

    try:
        _run(ChatService(settings), log_config)
    except StartupError as exc:  # the checks before the port opens: one line for the operator
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _run(service: ChatService, log_config: dict[str, Any]) -> None:
    """Serves until a signal stops the server.

    Before the port opens, built-in speech is checked and the engine starts (weights load,
    with progress), so that a failure is one line; then the database opens and a public
    address is refused without keys. All this runs in the event loop that then serves: what
    the engine starts there (an upstream's health checks) must live on while it serves. The
    app's lifespan finds the service started."""
    from omniserve.api.app import create_app
    from omniserve.api.drain import DrainingServer
    from omniserve.api.server import server_config

    settings = service.settings
    app = create_app(service=service)

    class Server(DrainingServer):
        async def serve(self, sockets: Any = None) -> None:
            await service.start()
            _check_exposure(settings)
            _announce(settings)
            await super().serve(sockets)

    config = server_config(app, settings, log_config=log_config)
    Server(config, app.state.drain, settings.drain_timeout_s).run()


def _announce(settings: Settings) -> None:
    base = f"http://{settings.host}:{settings.port}"
    console.print(f"omniserve on {base}/compatible-mode/v1 (engine: {settings.engine})")
    if settings.playground:
        console.print(f"playground on {base}/")


def _warn_unknown_environment() -> None:
    """A mistyped ``OMNISERVE_*`` variable changes nothing: say so, with the closest real one."""
    import os

    from omniserve.config import unknown_environment

    for variable, closest in unknown_environment(os.environ):
        hint = f"; did you mean {closest}?" if closest else ""
        console.print(
            f"[yellow]warning:[/yellow] {escape(variable)} is not a setting and is ignored{hint}"
        )


def _check_exposure(settings: Settings) -> None:
    """The database opens (migrated), and a public address is never served without keys."""
    from omniserve.accounts.database import database_url, open_database
    from omniserve.accounts.keys import KeyStore

    accounts = settings.accounts
    # A DatabaseError is a StartupError: ``serve`` says it in one line.
    engine = open_database(database_url(accounts.database_url, accounts.data_dir.expanduser()))
    try:
        _, _, any_key = KeyStore(engine).active()
    finally:
        engine.dispose()
    if any_key or is_loopback(settings.host):
        return
    if not accounts.insecure_no_auth:
        console.print(
            f"[red]error:[/red] refusing to serve {escape(settings.host)} without API keys: "
            "anyone who can reach it could use it. Create a key first (`omniserve keys create "
            "--name …`), bind 127.0.0.1, or pass --insecure-no-auth."
        )
        raise typer.Exit(2)
    console.print(
        f"[yellow]warning:[/yellow] serving {escape(settings.host)} without API keys "
        "(--insecure-no-auth): anyone who can reach this port can use it."
    )


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the models in the catalog with their limits."""
    settings = _settings(config)
    table = Table(title="Models")
    table.add_column("model", no_wrap=True)
    table.add_column("alias of", no_wrap=True)
    for column in ("context", "max input", "max output", "thinking", "voices", "languages"):
        table.add_column(column, justify="right")
    for m in Catalog.default(settings.flash_alias):
        table.add_row(
            m.name,
            m.snapshot or "",
            f"{m.limits.context:,}",
            f"{m.limits.max_input:,}",
            f"{m.limits.max_output:,}",
            "yes" if m.supports_thinking else "no",
            str(len(m.voices)),
            str(len(m.output_languages)),
        )
    console.print(table)


@app.command()
def voices(
    model: Annotated[str | None, typer.Option(help="Only this model's voices.")] = None,
    config: ConfigOption = None,
) -> None:
    """List every voice, its languages, and how the built-in speech renders it."""
    from omniserve.speech.voices import voice_settings

    settings = _settings(config)
    neural: list[str] = []
    if settings.speech.backend == "kokoro":
        from omniserve.speech.kokoro import choose_voice, voice_names
        from omniserve.speech.synth import SpeechError

        try:
            neural = voice_names(settings.speech)
        except SpeechError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
        console.print(
            "speech: Kokoro-82M reads Mandarin, English, French, Spanish, Italian and "
            "Portuguese; espeak-ng the other languages"
        )
    else:
        console.print(f"speech: {'espeak-ng' if settings.speech.backend == 'espeak' else 'a tone'}")
    catalog = Catalog.default(settings.flash_alias)
    if model is not None and model not in catalog:
        console.print(f"[red]error:[/red] unknown model {model!r}; see `omniserve models`")
        raise typer.Exit(2)
    table = Table(title="Voices")
    for column in (
        "model",
        "voice",
        "name",
        "gender",
        "dialect",
        "languages",
        "espeak-ng (zh / en)",
        *(["Kokoro (zh / en)"] if neural else []),
        "description",
    ):
        table.add_column(column)
    for m in catalog:
        if model is not None and m.name != model:
            continue
        for v in m.voices:
            zh = voice_settings(v, v.languages[0])
            en = voice_settings(v, v.languages[1]) if len(v.languages) > 1 else zh
            table.add_row(
                m.name,
                v.name,
                v.display_name,
                v.gender,
                v.dialect or "",
                ", ".join(LANGUAGE_NAMES[lang] for lang in v.languages),
                f"{' '.join(zh.args())} / {' '.join(en.args())}",
                *(
                    [f"{choose_voice(neural, zh, 'zh')} / {choose_voice(neural, en, 'en')}"]
                    if neural
                    else []
                ),
                v.description,
            )
    console.print(table)


def _register_accounts() -> None:
    from omniserve.cli_accounts import keys_app, usage

    app.add_typer(keys_app, name="keys")
    app.command()(usage)


_register_accounts()


def main() -> None:
    app()
