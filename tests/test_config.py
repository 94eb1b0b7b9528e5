"""Settings: defaults, then TOML, then OMNISERVE_* variables, then flags, each over the last."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from omniserve.catalog import FLASH_0915, FLASH_1201
from omniserve.config import EmulatorSettings, Settings, SpeechSettings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OMNISERVE_* variable from the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("OMNISERVE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "omniserve.toml"
    path.write_text(text, encoding="utf-8")
    return path


TOML = """
host = "0.0.0.0"
port = 9000
log_level = "debug"
flash_alias = "qwen3-omni-flash-2025-12-01"
models = ["qwen-omni-turbo", "qwen2.5-omni-7b"]
tokenizer_file = "/opt/qwen.tiktoken"
max_request_bytes = 2048

[emulator]
tokens_per_second = 7
first_token_ms = 5

[speech]
backend = "tone"
espeak_path = "/usr/local/bin/espeak-ng"
max_concurrency = 3
chunk_ms = 100
transcript = true
"""


def test_defaults() -> None:
    s = load_settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.engine == "emulator"
    assert s.log_level == "info"
    assert s.flash_alias == FLASH_0915
    assert s.models == []
    assert s.tokenizer_file is None
    assert s.max_request_bytes == 64 * 1024 * 1024
    assert s.emulator == EmulatorSettings(tokens_per_second=40.0, first_token_ms=150.0)
    assert s.speech.backend == "espeak"
    assert s.speech.espeak_path == "espeak-ng"
    assert s.speech.max_concurrency == max(2, (os.cpu_count() or 1) * 2)
    assert s.speech.chunk_ms == 200
    assert s.speech.transcript is False


def test_toml_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, TOML))
    assert s.host == "0.0.0.0"
    assert s.port == 9000
    assert s.log_level == "debug"
    assert s.flash_alias == FLASH_1201
    assert s.models == ["qwen-omni-turbo", "qwen2.5-omni-7b"]
    assert s.tokenizer_file == Path("/opt/qwen.tiktoken")
    assert s.max_request_bytes == 2048
    assert s.emulator == EmulatorSettings(tokens_per_second=7, first_token_ms=5)
    assert s.speech == SpeechSettings(
        backend="tone",
        espeak_path="/usr/local/bin/espeak-ng",
        max_concurrency=3,
        chunk_ms=100,
        transcript=True,
    )


def test_partial_toml_keeps_other_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[emulator]\nfirst_token_ms = 0\n"))
    assert s.emulator == EmulatorSettings(tokens_per_second=40.0, first_token_ms=0)
    assert s.port == 8000
    assert s.speech.backend == "espeak"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISERVE_PORT", "9100")
    monkeypatch.setenv("OMNISERVE_LOG_LEVEL", "warning")
    monkeypatch.setenv("OMNISERVE_MODELS", '["qwen-omni-turbo"]')
    monkeypatch.setenv("OMNISERVE_EMULATOR__TOKENS_PER_SECOND", "0")
    monkeypatch.setenv("OMNISERVE_SPEECH__TRANSCRIPT", "true")
    s = load_settings()
    assert s.port == 9100
    assert s.log_level == "warning"
    assert s.models == ["qwen-omni-turbo"]
    assert s.emulator.tokens_per_second == 0
    assert s.emulator.first_token_ms == 150.0
    assert s.speech.transcript is True


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISERVE_PORT", "9100")
    monkeypatch.setenv("OMNISERVE_EMULATOR__TOKENS_PER_SECOND", "3")
    s = load_settings(write(tmp_path, TOML))
    assert s.port == 9100
    # Nested: the variable replaces one key of the table, the file keeps the others.
    assert s.emulator == EmulatorSettings(tokens_per_second=3, first_token_ms=5)
    assert s.host == "0.0.0.0"
    assert s.speech.backend == "tone"


def test_flags_override_environment_and_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNISERVE_PORT", "9100")
    monkeypatch.setenv("OMNISERVE_HOST", "10.0.0.1")
    monkeypatch.setenv("OMNISERVE_EMULATOR__TOKENS_PER_SECOND", "3")
    s = load_settings(
        write(tmp_path, TOML), port=1234, emulator={"first_token_ms": 9}, speech={"chunk_ms": 40}
    )
    assert s.port == 1234
    assert s.host == "10.0.0.1"  # from the environment: no flag given
    assert s.emulator == EmulatorSettings(tokens_per_second=3, first_token_ms=9)
    assert s.speech.chunk_ms == 40
    assert s.speech.backend == "tone"  # from the file


def test_settings_does_not_read_the_environment_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag wins even though Settings itself is an env-aware BaseSettings."""
    monkeypatch.setenv("OMNISERVE_PORT", "9100")
    assert load_settings(port=0).port == 0


@pytest.mark.parametrize(
    "text",
    [
        "bogus = 1\n",
        "[emulator]\nbogus = 1\n",
        "[speech]\nvoice = 'Cherry'\n",
        "[nonsense]\nx = 1\n",
    ],
)
def test_unknown_toml_keys_are_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        load_settings(write(tmp_path, text))


def test_unknown_flags_and_nested_variables_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        load_settings(bogus=1)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        load_settings(emulator={"bogus": 1})
    monkeypatch.setenv("OMNISERVE_EMULATOR__BOGUS", "1")
    with pytest.raises(ValidationError, match=r"emulator\.bogus"):
        load_settings()


@pytest.mark.parametrize(
    "overrides",
    [
        {"port": 70000},
        {"port": -1},
        {"engine": "vllm"},
        {"transformers": {"queue_size": -1}},
        {"transformers": {"audio_output": "maybe"}},
        {"transformers": {"dtype": "int3"}},
        {"transformers": {"models": [{"checkpoint": "x", "kind": "base"}]}},
        {"transformers": {"models": [{"name": "x"}]}},
        {"log_level": "verbose"},
        {"max_request_bytes": 10},
        {"emulator": {"tokens_per_second": -1}},
        {"speech": {"backend": "piper"}},
        {"speech": {"chunk_ms": 5}},
        {"speech": {"max_concurrency": 0}},
    ],
)
def test_out_of_range_values_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        load_settings(**overrides)


def test_transformers_settings_from_toml_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "omniserve.toml"
    config.write_text(
        'engine = "transformers"\n[transformers]\ndtype = "bfloat16"\nqueue_size = 4\n'
        '[[transformers.models]]\nname = "qwen3-omni-flash"\n'
        'checkpoint = "Qwen/Qwen3-Omni-30B-A3B-Instruct"\nvoices = { Dylan = "Aiden" }\n'
    )
    monkeypatch.setenv("OMNISERVE_TRANSFORMERS__DEVICE", "cuda:1")
    settings = load_settings(config, transformers={"queue_size": 2})
    hf = settings.transformers
    assert settings.engine == "transformers"
    assert (hf.dtype, hf.device, hf.queue_size) == ("bfloat16", "cuda:1", 2)
    [served] = hf.models
    assert served.checkpoint == "Qwen/Qwen3-Omni-30B-A3B-Instruct"
    assert served.voices == {"Dylan": "Aiden"}
    assert served.kind is None  # inferred from the checkpoint's name later


def test_bad_environment_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISERVE_PORT", "eighty")
    with pytest.raises(ValidationError, match="port"):
        load_settings()


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(missing)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path)  # a directory is not a config file


def test_settings_is_the_one_type() -> None:
    assert isinstance(load_settings(), Settings)


def test_unknown_environment_variables_name_the_closest_setting() -> None:
    from omniserve.config import environment_names, unknown_environment

    known = environment_names()
    assert {"OMNISERVE_PORT", "OMNISERVE_ACCOUNTS__DATA_DIR", "OMNISERVE_TRANSFORMERS"} <= known
    found = unknown_environment(
        {
            "OMNISERVE_DATA_DIR": "/srv",  # a setting's name without its section
            "OMNISERVE_PROT": "9000",  # a typo
            "OMNISERVE_ZZZZZZZZZZZZ": "1",  # nothing like any setting
            "OMNISERVE_PORT": "8001",  # real
            "omniserve_log_level": "debug",  # real, in any case (as the settings read it)
            "PATH": "/usr/bin",
        }
    )
    assert found == [
        ("OMNISERVE_DATA_DIR", "OMNISERVE_ACCOUNTS__DATA_DIR"),
        ("OMNISERVE_PROT", "OMNISERVE_PORT"),
        ("OMNISERVE_ZZZZZZZZZZZZ", None),
    ]
