"""``omniserve keys …``, ``omniserve usage`` and the public-bind check, run as a user runs them."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from helpers import chat_body, serving
from omniserve.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=WIDE)
    return result.exit_code, result.output


def create(data: Path, *args: str) -> tuple[str, str]:
    code, out = cli("keys", "create", "--data-dir", str(data), *args)
    assert code == 0, out
    key_id = re.search(r"created (key_[0-9a-f]+)", out)
    secret = re.search(r"^(sk-[0-9a-f]{64})$", out, re.M)
    assert key_id and secret, out
    return key_id.group(1), secret.group(1)


def test_keys_lifecycle(tmp_path: Path) -> None:
    key_id, secret = create(
        tmp_path,
        "--name",
        "ci bot",
        "--rpm",
        "30",
        "--tpm",
        "0",
        "--models",
        "qwen-omni-turbo, qwen3-omni-flash",
    )
    code, out = cli("keys", "list", "--data-dir", str(tmp_path))
    assert code == 0 and key_id in out and "ci bot" in out
    assert secret not in out and f"sk-…{secret[-4:]}" in out
    assert "qwen-omni-turbo,qwen3-omni-flash" in out
    line = next(x for x in out.splitlines() if key_id in x)
    assert " 30 " in line and " none " in line  # tpm 0: no limit
    code, out = cli(
        "keys",
        "update",
        key_id,
        "--data-dir",
        str(tmp_path),
        "--rpm",
        "default",
        "--quota-tokens",
        "5000",
        "--sessions",
        "3",
        "--name",
        "renamed",
    )
    assert code == 0, out
    code, out = cli("keys", "list", "--data-dir", str(tmp_path))
    assert "renamed" in out and "5,000" in out
    line = next(x for x in out.splitlines() if key_id in x)
    assert " 3 " in line  # realtime sessions at once
    code, out = cli("keys", "revoke", key_id, "--data-dir", str(tmp_path))
    assert code == 0 and "revoked" in out
    code, out = cli("keys", "list", "--data-dir", str(tmp_path))
    assert key_id not in out
    code, out = cli("keys", "list", "--all", "--data-dir", str(tmp_path))
    assert key_id in out and "revoked" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--rpm", "fast"], "--rpm must be N, 0 for no limit"),
        (["keys", "create", "--name", "  "], "--name must not be empty"),
        (["keys", "create", "--name", "x", "--tpm", "9" * 12], "--tpm must be at most"),
        (["keys", "update", "key_nope", "--rpm", "5"], "no key 'key_nope'"),
        (["keys", "update", "key_nope"], "nothing to change"),
        (["keys", "revoke", "key_nope"], "no key 'key_nope'"),
        (["usage", "--by", "week"], "--by must be model, key or day"),
        (["usage", "--since", "yesterday"], "--since must be like 7d"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    code, out = cli(*args, "--data-dir", str(tmp_path))
    assert code in (1, 2) and message in out and "Traceback" not in out


def test_unreachable_database_is_one_clear_line() -> None:
    code, out = cli("keys", "list", "--database-url", "postgresql://u:pw@127.0.0.1:1/x")
    assert code == 1 and "cannot open the database" in out and "pw" not in out


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    code, out = cli("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path))
    assert code == 2
    assert "refusing to serve 0.0.0.0 without API keys" in out


def test_serve_public_with_insecure_flag_warns(tmp_path: Path) -> None:
    with serving("--host", "0.0.0.0", "--insecure-no-auth", "--data-dir", str(tmp_path)) as s:
        assert httpx.post(f"{s.base}/v1/chat/completions", json=chat_body()).status_code == 200
    assert "without API keys (--insecure-no-auth)" in s.output


def test_keys_created_by_the_cli_guard_a_running_server_and_usage_adds_up(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    key_id, secret = create(tmp_path, "--name", "app")
    with serving(
        "--host", "0.0.0.0", "--tokens-per-second", "0", "--first-token-ms", "0", *data
    ) as s:
        url = f"{s.base}/v1/chat/completions"
        assert httpx.post(url, json=chat_body()).status_code == 401
        auth = {"Authorization": f"Bearer {secret}"}
        for _ in range(3):
            assert httpx.post(url, json=chat_body(), headers=auth).status_code == 200
        later_id, later = create(tmp_path, "--name", "later")  # while the server runs
        assert (
            httpx.post(
                url,
                json=chat_body(model="qwen-omni-turbo"),
                headers={"Authorization": f"Bearer {later}"},
            ).status_code
            == 200
        )
        code, _ = cli("keys", "revoke", key_id, *data)
        assert code == 0
        assert httpx.post(url, json=chat_body(), headers=auth).status_code == 401
    code, out = cli("usage", "--by", "key", *data)
    assert code == 0, out
    rows = {line.split()[1]: line for line in out.splitlines() if "key_" in line}
    assert set(rows) == {key_id, later_id}
    assert re.search(r"\b3\b", rows[key_id]) and re.search(r"\b1\b", rows[later_id])
    assert "total" in out and "CNY, cn-beijing" in out
    code, out = cli("usage", "--by", "model", "--since", "1d", "--key", later_id, *data)
    assert "qwen-omni-turbo" in out and "qwen3-omni-flash" not in out
    code, out = cli("usage", "--by", "day", *data)
    assert code == 0 and re.search(r"\d{4}-\d{2}-\d{2}", out)
    code, out = cli("usage", "--since", "2999-01-01", *data)
    assert "no requests on the ledger" in out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_streams_cut_by_kill_9_are_closed_as_interrupted_when_a_server_starts(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A server killed mid-stream leaves its row running with the usage so far; the next
    server to start closes it as interrupted before it serves, and the usage counts."""
    import time

    import sqlalchemy as sa

    from omniserve.accounts.database import database_url, open_database
    from omniserve.accounts.keys import KeyStore
    from omniserve.accounts.schema import ledger

    if backend == "sqlite":
        where = ["--data-dir", str(tmp_path)]
        url = database_url(None, tmp_path)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
        where = ["--database-url", url]
    engine = open_database(url)
    key, secret = KeyStore(engine).create("app")
    auth = {"Authorization": f"Bearer {secret}"}
    pace = ["--tokens-per-second", "8", "--first-token-ms", "0"]  # a reply of about 10 s
    with (
        serving(*pace, *where) as s,
        httpx.stream(
            "POST",
            f"{s.base}/v1/chat/completions",
            json=chat_body(max_tokens=1000),
            headers=auth,
            timeout=30,
        ) as r,
    ):
        assert r.status_code == 200
        began = time.monotonic()
        for _ in r.iter_lines():
            if time.monotonic() - began > 6.5:  # past the first write of the usage so far
                break
        s.kill()
    with engine.connect() as conn:
        row = conn.execute(sa.select(ledger)).one()._mapping
    assert row["status"] == "running" and row["owner"], str(dict(row))
    assert row["prompt_text"] > 0 and row["completion_text"] > 0  # the usage so far
    code, out = cli("usage", *where)
    assert "no requests on the ledger" in out  # running rows are not on the report

    with serving(*pace, *where):
        with engine.connect() as conn:
            closed = conn.execute(sa.select(ledger)).one()._mapping
        assert closed["status"] == "interrupted"
        assert closed["completion_text"] >= row["completion_text"]
        tokens = sum(
            closed[c.name] for c in ledger.c if c.name.startswith(("prompt_", "completion_"))
        )
        assert KeyStore(engine).get(key.id).used_tokens == tokens > 0
    code, out = cli("usage", "--by", "key", *where)
    assert code == 0 and key.id in out, out
    engine.dispose()
