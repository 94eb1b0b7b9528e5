"""The ``omniserve`` command: serve, and look at the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omniserve.catalog import LANGUAGE_NAMES, Catalog
from omniserve.config import Settings, load_settings
from omniserve.logs import configure as configure_logging

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
    given = {k: v for k, v in flags.items() if v is not None}
    emulator = {k: given.pop(k) for k in ("tokens_per_second", "first_token_ms") if k in given}
    if emulator:
        given["emulator"] = emulator
    hf: dict[str, Any] = {
        k: given.pop(k)
        for k in ("device", "dtype", "device_map", "audio_output", "load_format", "max_batch")
        if k in given
    }
    if "flash_attn" in given and given.pop("flash_attn"):
        hf["attn_implementation"] = "flash_attention_2"
    checkpoint, served_name = given.pop("model", None), given.pop("served_name", None)
    if checkpoint is not None:
        hf["models"] = [{"name": served_name, "checkpoint": checkpoint}]
        given.setdefault("engine", "transformers")
    elif served_name is not None:
        console.print("[red]error:[/red] --served-name needs --model")
        raise typer.Exit(2)
    if hf:
        given["transformers"] = hf
    try:
        return load_settings(config, **given)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind \\[default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port \\[default: 8000].")] = None,
    engine: Annotated[
        str | None, typer.Option(help="Engine: emulator \\[default], transformers or upstream.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Open weights for the transformers engine: a Hub id or a directory."),
    ] = None,
    served_name: Annotated[
        str | None,
        typer.Option(help="Name clients use for --model \\[default: the family's catalog name]."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="transformers: auto \\[default], cpu, cuda, cuda:1.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="transformers: auto \\[default], bfloat16, float16, float32.")
    ] = None,
    device_map: Annotated[
        str | None, typer.Option(help="transformers: spread over GPUs, e.g. auto.")
    ] = None,
    flash_attn: Annotated[
        bool | None, typer.Option("--flash-attn/--no-flash-attn", help="FlashAttention 2.")
    ] = None,
    audio_output: Annotated[
        str | None,
        typer.Option(help="transformers: auto \\[default]; off never loads the talker."),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(help="transformers: requests decoded together \\[default: 8]."),
    ] = None,
    load_format: Annotated[
        str | None,
        typer.Option(help="transformers: auto \\[default]; dummy: random weights (benchmarks)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="critical|error|warning|info|debug.")
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(help="text \\[default] or json (one object per line, for collectors)."),
    ] = None,
    tokens_per_second: Annotated[
        float | None, typer.Option(help="Emulator pacing; 0 streams as fast as possible.")
    ] = None,
    first_token_ms: Annotated[
        float | None, typer.Option(help="Emulator delay before the first token.")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="Keys and ledger in PostgreSQL (postgresql://…) \\[default: SQLite]."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Share rate limits between replicas (redis://…).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the SQLite database lives.")] = None,
    insecure_no_auth: Annotated[
        bool | None,
        typer.Option(
            "--insecure-no-auth", help="Serve a non-loopback address without any API key."
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(help="On SIGTERM, seconds running streams may go on \\[default: 30]."),
    ] = None,
    playground: Annotated[
        bool | None,
        typer.Option("--playground/--no-playground", help="The browser playground at /."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Start the API server."""
    import asyncio

    from omniserve.api.app import create_app
    from omniserve.protocol.tokens import TokenizerUnavailable
    from omniserve.service import ChatService
    from omniserve.speech import SpeechError

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
        accounts={
            k: v
            for k, v in (
                ("database_url", database_url),
                ("redis_url", redis_url),
                ("data_dir", data_dir),
                ("insecure_no_auth", insecure_no_auth),
            )
            if v is not None
        }
        or None,
    )
    log_config = configure_logging(settings.log_level, settings.log_format)
    _warn_unknown_environment()
    from omniserve.engines.hf.checkpoint import CheckpointError
    from omniserve.engines.upstream import UpstreamConfigError

    try:
        service = ChatService(settings)
        asyncio.run(service.check())
        # Weights load before the port opens, with progress, so a failure is one clear line.
        asyncio.run(service.engine.start())
    except (SpeechError, TokenizerUnavailable, CheckpointError, UpstreamConfigError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _check_exposure(settings)
    console.print(
        f"omniserve on http://{settings.host}:{settings.port}/compatible-mode/v1 "
        f"(engine: {settings.engine})"
    )
    if settings.playground:
        console.print(f"playground on http://{settings.host}:{settings.port}/")
    from omniserve.api.drain import DrainingServer
    from omniserve.api.server import server_config

    app = create_app(service=service)
    uvicorn_config = server_config(app, settings, log_config=log_config)
    DrainingServer(uvicorn_config, app.state.drain, settings.drain_timeout_s).run()


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
    from omniserve.accounts.database import DatabaseError, database_url, open_database
    from omniserve.accounts.keys import KeyStore

    accounts = settings.accounts
    try:
        engine = open_database(database_url(accounts.database_url, accounts.data_dir.expanduser()))
    except DatabaseError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
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
