"""``omniserve keys …`` and ``omniserve usage``: API keys and the ledger, from the shell.

They work on the same database as the server (``--database-url`` or the SQLite file in the data
directory), so a key created or revoked here counts on every running server at its next request.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import Engine

from omniserve.config import Settings, settings_from_flags

console = Console()
keys_app = typer.Typer(help="Create, list, update and revoke API keys.", no_args_is_help=True)

DatabaseOption = Annotated[
    str | None,
    typer.Option(help="postgresql://… or sqlite:///… \\[default: SQLite in the data directory]."),
]
DataDirOption = Annotated[Path | None, typer.Option(help="Where the SQLite database lives.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (flags and OMNISERVE_* win over it)."),
]
LIMIT_HELP = "N, 0 for no limit, or 'default'"


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def accounts_settings(
    config: Path | None, database_url: str | None, data_dir: Path | None
) -> Settings:
    try:
        return settings_from_flags(config, database_url=database_url, data_dir=data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    """The accounts database, its connections closed when the command is done with it."""
    from omniserve.accounts.database import DatabaseError, database_url, open_database

    url = database_url(settings.accounts.database_url, settings.accounts.data_dir.expanduser())
    try:
        engine = open_database(url)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    try:
        yield engine
    finally:
        engine.dispose()


def parse_limit(value: str | None, option: str) -> tuple[bool, int | None]:
    """(given, value): 'default' → None (the catalog's or none), '0' → no limit, N → N."""
    if value is None:
        return False, None
    if value.strip().lower() == "default":
        return True, None
    if not value.strip().isdigit():
        raise fail(f"{option} must be {LIMIT_HELP}, not {value!r}", 2)
    number = int(value)
    # rpm, tpm and concurrency are 32-bit columns; the quota is 64-bit.
    top = 2**63 - 1 if option == "--quota-tokens" else 2**31 - 1
    if number > top:
        raise fail(f"{option} must be at most {top:,}", 2)
    return True, number


def parse_models(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(m for m in (x.strip() for x in value.split(",")) if m)


def _limit(value: int | None, default: str) -> str:
    if value is None:
        return default
    return "none" if value == 0 else f"{value:,}"


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    rpm: Annotated[str | None, typer.Option(help=f"Requests per minute: {LIMIT_HELP}.")] = None,
    tpm: Annotated[str | None, typer.Option(help=f"Tokens per minute: {LIMIT_HELP}.")] = None,
    concurrency: Annotated[str | None, typer.Option(help=f"Streams at once: {LIMIT_HELP}.")] = None,
    quota_tokens: Annotated[
        str | None, typer.Option(help=f"Tokens in all (then 403): {LIMIT_HELP}.")
    ] = None,
    sessions: Annotated[
        str | None, typer.Option(help=f"Realtime sessions at once: {LIMIT_HELP}.")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use \\[default: all].")
    ] = None,
    admin: Annotated[bool, typer.Option(help="May use /admin and /metrics.")] = False,
    database_url: DatabaseOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print its secret (shown this once, stored only as a hash)."""
    from omniserve.accounts.keys import KeyStore

    if not name.strip():
        raise fail("--name must not be empty", 2)
    limits = {
        field: parse_limit(value, f"--{field.replace('_', '-')}")[1]
        for field, value in (
            ("rpm", rpm),
            ("tpm", tpm),
            ("concurrency", concurrency),
            ("quota_tokens", quota_tokens),
            ("sessions", sessions),
        )
    }
    with database(accounts_settings(config, database_url, data_dir)) as engine:
        key, secret = KeyStore(engine).create(
            name.strip(), models=parse_models(models) or (), admin=admin, **limits
        )
    console.print(f"created {key.id} ({escape(key.name)})")
    console.print("secret (shown once; store it now):")
    # Plain print: no wrapping or markup, so the line can be copied or piped as it is.
    print(secret)


@keys_app.command("list")
def list_keys(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    database_url: DatabaseOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List keys with their limits and the tokens they used (never their secrets)."""
    from omniserve.accounts.keys import KeyStore

    with database(accounts_settings(config, database_url, data_dir)) as engine:
        keys = KeyStore(engine).all(include_revoked=all_)
    table = Table(title="API keys")
    for column in ("id", "name", "key", "created", "status", "rpm", "tpm", "streams"):
        table.add_column(column)
    for column in ("sessions", "quota", "used", "models"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.id,
            escape(k.name),
            k.hint,
            _when(k.created_ms),
            "active" if k.active else f"revoked {_when(k.revoked_ms)}",
            _limit(k.rpm, "model"),
            _limit(k.tpm, "model"),
            _limit(k.concurrency, "none"),
            _limit(k.sessions, "server"),
            _limit(k.quota_tokens, "none"),
            f"{k.used_tokens:,}",
            escape(",".join(k.models)) or "all",
        )
        if k.admin:
            table.rows[-1].style = "bold"
    console.print(table)


@keys_app.command("update")
def update(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    rpm: Annotated[str | None, typer.Option(help=f"Requests per minute: {LIMIT_HELP}.")] = None,
    tpm: Annotated[str | None, typer.Option(help=f"Tokens per minute: {LIMIT_HELP}.")] = None,
    concurrency: Annotated[str | None, typer.Option(help=f"Streams at once: {LIMIT_HELP}.")] = None,
    quota_tokens: Annotated[str | None, typer.Option(help=f"Tokens in all: {LIMIT_HELP}.")] = None,
    sessions: Annotated[
        str | None, typer.Option(help=f"Realtime sessions at once: {LIMIT_HELP}.")
    ] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models; '' for all.")] = None,
    admin: Annotated[bool | None, typer.Option("--admin/--no-admin")] = None,
    database_url: DatabaseOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Change a key's name, limits or models; running servers apply it at the next request."""
    from omniserve.accounts.keys import KeyNotFound, KeyStore

    changes: dict[str, Any] = {}
    for field, value in (
        ("rpm", rpm),
        ("tpm", tpm),
        ("concurrency", concurrency),
        ("quota_tokens", quota_tokens),
        ("sessions", sessions),
    ):
        given, parsed = parse_limit(value, f"--{field.replace('_', '-')}")
        if given:
            changes[field] = parsed
    if name is not None:
        if not name.strip():
            raise fail("--name must not be empty", 2)
        changes["name"] = name.strip()
    if models is not None:
        changes["models"] = parse_models(models)
    if admin is not None:
        changes["admin"] = admin
    if not changes:
        raise fail("nothing to change: give at least one option", 2)
    with database(accounts_settings(config, database_url, data_dir)) as engine:
        try:
            key = KeyStore(engine).update(key_id, **changes)
        except KeyNotFound:
            raise fail(f"no key {key_id!r}; see `omniserve keys list --all`") from None
    console.print(f"updated {key.id} ({escape(key.name)})")


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    database_url: DatabaseOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: every server refuses it from its next request on."""
    from omniserve.accounts.keys import KeyNotFound, KeyStore

    with database(accounts_settings(config, database_url, data_dir)) as engine:
        try:
            key = KeyStore(engine).revoke(key_id)
        except KeyNotFound:
            raise fail(f"no key {key_id!r}; see `omniserve keys list --all`") from None
    console.print(f"revoked {key.id} ({escape(key.name)})")


def parse_since(value: str | None) -> int | None:
    """``7d``, ``12h``, ``30m`` ago, or a date / ISO time (UTC); as epoch milliseconds."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", value)
    now = dt.datetime.now(dt.UTC)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"d": dt.timedelta(days=amount), "h": dt.timedelta(hours=amount)}.get(
            unit, dt.timedelta(minutes=amount)
        )
        return int((now - delta).timestamp() * 1000)
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(f"--since must be like 7d, 12h, 30m or 2026-11-01, not {value!r}", 2) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def usage(
    key: Annotated[str | None, typer.Option(help="Only this key (key_…).")] = None,
    since: Annotated[
        str | None, typer.Option(help="From 7d / 12h / 30m ago or a date (UTC) \\[default: all].")
    ] = None,
    by: Annotated[str, typer.Option(help="Group by model, key or day.")] = "model",
    database_url: DatabaseOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Requests, tokens, audio and cost from the ledger, with totals."""
    from omniserve.accounts.usage import totals, usage_report
    from omniserve.catalog import Catalog

    if by not in ("model", "key", "day"):
        raise fail("--by must be model, key or day", 2)
    settings = accounts_settings(config, database_url, data_dir)
    since_ms = parse_since(since)
    with database(settings) as engine:
        lines = usage_report(engine, by=by, key_id=key, since_ms=since_ms)  # type: ignore[arg-type]
    region = settings.accounts.price_region
    currency = next(
        (p.currency for m in Catalog.default() for p in m.prices if p.region == region), ""
    )
    table = Table(title=f"Usage by {by}", show_footer=bool(lines))
    total = totals(lines)
    columns = (
        (by, "total", "left"),
        ("requests", f"{total.requests:,}", "right"),
        ("failed", f"{total.failed:,}", "right"),
        ("prompt tokens", f"{total.prompt_tokens:,}", "right"),
        ("completion tokens", f"{total.completion_tokens:,}", "right"),
        ("audio in (s)", f"{total.input_audio_seconds:,.1f}", "right"),
        ("audio out (s)", f"{total.audio_seconds:,.1f}", "right"),
        (f"cost ({currency}, {region})", f"{total.cost:,.4f}", "right"),
    )
    for i, (header, footer, justify) in enumerate(columns):
        # The group (a key id, a model) is what the line is for: never cut it.
        table.add_column(header, footer=footer, justify=justify, no_wrap=i == 0)  # type: ignore[arg-type]
    for line in lines:
        table.add_row(
            escape(line.group),
            f"{line.requests:,}",
            f"{line.failed:,}",
            f"{line.prompt_tokens:,}",
            f"{line.completion_tokens:,}",
            f"{line.input_audio_seconds:,.1f}",
            f"{line.audio_seconds:,.1f}",
            f"{line.cost:,.4f}",
        )
    if not lines:
        console.print("no requests on the ledger for this selection")
        return
    console.print(table)
