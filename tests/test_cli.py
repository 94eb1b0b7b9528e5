"""The ``omniserve`` command, run as a user runs it."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from helpers import serving
from omniserve.catalog import Catalog
from omniserve.cli import app
from omniserve.config import settings_from_flags

runner = CliRunner()


def test_help_everywhere() -> None:
    for args in ([], ["serve"], ["models"], ["voices"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    for flag in ("--host", "--port", "--engine", "--config", "--log-level"):
        assert flag in result.output


def test_models_lists_the_catalog() -> None:
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in Catalog.default().names():
        assert name in result.output


def test_voices_table_for_one_model() -> None:
    result = runner.invoke(app, ["voices", "--model", "qwen-omni-turbo"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for voice in ("Cherry", "Serena", "Ethan", "Chelsie"):
        assert voice in result.output
    assert "Rocky" not in result.output


def test_voices_shows_cantonese_for_rocky() -> None:
    result = runner.invoke(app, ["voices", "--model", "qwen3-omni-flash"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    rocky = next(line for line in result.output.splitlines() if "Rocky" in line)
    assert "yue" in rocky and "Cantonese" in rocky


def test_voices_says_which_voice_engine_speaks() -> None:
    plain = runner.invoke(app, ["voices", "--model", "qwen3-omni-flash"], env={"COLUMNS": "250"})
    assert plain.output.startswith("speech: espeak-ng") and "Kokoro" not in plain.output
    pytest.importorskip("onnxruntime")
    env = {"COLUMNS": "250", "OMNISERVE_SPEECH__BACKEND": "kokoro"}
    neural = runner.invoke(app, ["voices", "--model", "qwen3-omni-flash"], env=env)
    assert neural.exit_code == 0, neural.output
    assert neural.output.startswith("speech: Kokoro-82M")
    ethan = next(line for line in neural.output.splitlines() if "Ethan" in line)
    cherry = next(line for line in neural.output.splitlines() if "Cherry" in line)
    assert "jm_" in ethan and "jf_" in cherry  # each voice keeps its gender


def test_voices_unknown_model() -> None:
    result = runner.invoke(app, ["voices", "--model", "gpt-4o"])
    assert result.exit_code == 2
    assert "unknown model" in result.output


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "omniserve.toml"
    config.write_text('port = "eighty"\n')
    result = runner.invoke(app, ["models", "--config", str(config)])
    assert result.exit_code == 2
    assert "port" in result.output


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--port", "70000"], "error: port: Input should be less than or equal to 65535"),
        (
            ["--record", "a", "--replay", "b"],
            "error: cassettes: record and replay cannot be used together",
        ),
        (["--replay-pace", "slow"], "cassettes.replay_pace: Input should be 'recorded' or"),
    ],
)
def test_serve_bad_flags_are_one_clear_line(flags: list[str], says: str) -> None:
    result = runner.invoke(app, ["serve", *flags])
    assert result.exit_code == 2
    assert says in " ".join(result.output.split())
    assert "pydantic" not in result.output


def test_serve_rules_that_do_not_parse_are_one_clear_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nmatch.colour = "red"\n')
    result = runner.invoke(app, ["serve", "--port", "0", "--rules", str(rules)])
    assert result.exit_code == 1
    assert "emulator.rules: rules.toml: rules.0.match.colour" in " ".join(result.output.split())


def test_serve_starts_serves_and_stops(tmp_path: Path) -> None:
    """`omniserve serve` as the README starts it, with settings from a TOML file and flags."""
    config = tmp_path / "omniserve.toml"
    config.write_text(
        'log_level = "warning"\nmodels = ["qwen3-omni-flash", "qwen-omni-turbo"]\n'
        "[emulator]\ntokens_per_second = 0\nfirst_token_ms = 0\n"
    )
    with serving("--config", str(config)) as server:
        for prefix in ("/compatible-mode/v1", "/v1"):
            models = httpx.get(f"{server.base}{prefix}/models").json()
            assert [m["id"] for m in models["data"]] == ["qwen3-omni-flash", "qwen-omni-turbo"]
        r = httpx.post(
            f"{server.base}/v1/chat/completions",
            json={
                "model": "qwen2.5-omni-7b",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert r.status_code == 404
        assert httpx.get(f"{server.base}/").headers["content-type"].startswith("text/html")
    with serving("--config", str(config), "--no-playground") as server:
        assert httpx.get(f"{server.base}/").status_code == 404
        assert httpx.get(f"{server.base}/v1/models").status_code == 200


def test_serve_refuses_to_start_without_espeak() -> None:
    result = runner.invoke(
        app,
        ["serve", "--port", "1"],
        env={"OMNISERVE_SPEECH__ESPEAK_PATH": "/nonexistent/espeak-ng"},
    )
    assert result.exit_code == 1
    assert "cannot run '/nonexistent/espeak-ng'" in result.output
    assert "Traceback" not in result.output


def test_serve_warns_of_an_omniserve_variable_that_is_not_a_setting() -> None:
    result = runner.invoke(
        app,
        ["serve", "--port", "1"],
        env={
            "OMNISERVE_DATA_DIR": "/srv/omniserve",
            "OMNISERVE_SPEECH__ESPEAK_PATH": "/nonexistent/espeak-ng",  # stop before serving
        },
    )
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "OMNISERVE_DATA_DIR is not a setting and is ignored" in said
    assert "did you mean OMNISERVE_ACCOUNTS__DATA_DIR?" in said


def test_serve_open_weights_that_are_not_there_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "Qwen2.5-Omni-7B"
    result = runner.invoke(app, ["serve", "--port", "1", "--model", str(missing)])
    assert result.exit_code == 1
    assert "cannot read the model config" in result.output
    assert str(missing.name) in result.output
    assert "Traceback" not in result.output


def test_served_name_needs_a_model() -> None:
    result = runner.invoke(app, ["serve", "--port", "1", "--served-name", "omni"])
    assert result.exit_code == 2
    assert "--served-name needs --model" in result.output


def test_serve_open_weights_from_a_directory(tmp_path: Path) -> None:
    """`omniserve serve --model DIR`: the transformers engine, the family's catalog name."""
    from tiny_omni import QWEN25, build_tiny

    checkpoint = build_tiny(tmp_path / "Qwen2.5-Omni-Tiny", QWEN25)
    env = {"OMNISERVE_TRANSFORMERS__GENERATE_KWARGS": '{"talker_eos_token_id": [62]}'}
    args = ("--model", str(checkpoint), "--log-level", "warning")
    with serving(*args, env=env, ready_s=60) as server:
        base = server.base
        assert httpx.get(f"{base}/readyz").json()["engine"] == "transformers"
        models = httpx.get(f"{base}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["qwen2.5-omni-7b"]
        r = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": "qwen2.5-omni-7b",
                "stream": True,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}],
            },
            timeout=60,
        )
        assert r.status_code == 200
        assert r.text.rstrip().endswith("data: [DONE]")
    assert f"loaded {checkpoint}: qwen2.5-omni instruct, speaks as" in server.output


def test_serve_upstream_needs_upstreams_and_their_keys(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--port", "1", "--engine", "upstream"])
    assert result.exit_code == 1
    assert "[[upstream.upstreams]]" in result.output and "Traceback" not in result.output
    config = tmp_path / "omniserve.toml"
    config.write_text(
        'engine = "upstream"\n[[upstream.upstreams]]\nname = "omni"\nkind = "vllm-omni"\n'
        'base_urls = ["http://127.0.0.1:9/v1"]\napi_key_env = "OMNISERVE_TEST_NO_SUCH_KEY"\n'
        'models = { "qwen3-omni-flash" = "Qwen/Qwen3-Omni-30B-A3B-Instruct" }\n'
    )
    result = runner.invoke(app, ["serve", "--port", "1", "--config", str(config)])
    assert result.exit_code == 1
    assert "OMNISERVE_TEST_NO_SUCH_KEY is not set" in " ".join(result.output.split())


def test_serve_with_an_unusable_database_is_one_clear_line() -> None:
    result = runner.invoke(
        app, ["serve", "--port", "1", "--database-url", "mysql://u:pw@127.0.0.1/x"]
    )
    assert result.exit_code == 1
    assert "unsupported database 'mysql'" in result.output
    assert "Traceback" not in result.output and "pw" not in result.output


def test_serve_upstream_health_checks_go_on_while_serving(tmp_path: Path) -> None:
    """The engine starts before the port opens, in the event loop that then serves: what it
    starts there (an upstream's health checks) lives on while the server serves."""
    hits: list[str] = []

    class Upstream(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = tmp_path / "omniserve.toml"
    config.write_text(
        'engine = "upstream"\nlog_level = "warning"\n[[upstream.upstreams]]\nname = "u"\n'
        f'kind = "openai"\nbase_urls = ["http://127.0.0.1:{upstream.server_port}/v1"]\n'
        'health_path = "/health"\nhealth_interval_s = 0.1\n'
        'models = { "qwen3-omni-flash" = "m" }\n'
    )
    try:
        with serving("--config", str(config), "--data-dir", str(tmp_path)):
            seen = len(hits)
            deadline = time.monotonic() + 10
            while len(hits) < seen + 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(hits) >= seen + 3, "no health checks while serving"
        assert set(hits) == {"/health"}
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_flat_flags_land_in_their_sections(tmp_path: Path) -> None:
    settings = settings_from_flags(
        None,
        port=9000,
        model="Qwen/Qwen2.5-Omni-7B",
        served_name="omni",
        flash_attn=True,
        max_batch=4,
        tokens_per_second=0.0,
        database_url="sqlite:///x.db",
        data_dir=tmp_path,
        redis_url=None,  # not given
    )
    assert settings.port == 9000 and settings.engine == "transformers"
    hf = settings.transformers
    assert hf.max_batch == 4 and hf.attn_implementation == "flash_attention_2"
    assert [(m.name, m.checkpoint) for m in hf.models] == [("omni", "Qwen/Qwen2.5-Omni-7B")]
    assert settings.emulator.tokens_per_second == 0
    assert settings.accounts.database_url == "sqlite:///x.db"
    assert settings.accounts.data_dir == tmp_path and settings.accounts.redis_url is None
    assert settings_from_flags(None, flash_attn=False).transformers.attn_implementation is None
