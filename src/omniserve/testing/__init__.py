"""omniserve inside a test suite: a real server on a free loopback port, for the length of a
``with`` block or a pytest fixture (docs/testing.md).

    from openai import OpenAI
    from omniserve.testing import serve

    with serve(rules=[{"match": {"message": "weather"}, "reply": {"text": "Sunny."}}]) as server:
        client = OpenAI(api_key=server.api_key, base_url=server.base_url)
        ...

The server is the one ``omniserve serve`` runs (uvicorn, the emulator engine unless replaying
cassettes), on its own thread and event loop, with no pacing unless asked, its own empty
data directory, and its rules in a file of its own that ``set_rules`` rewrites (the server
reads it again on the next request). With pytest, the fixtures ``omniserve`` and
``omniserve_server`` come with the package (``omniserve.testing.pytest_plugin``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["OmniServer", "serve"]

API_KEY = "sk-omniserve-test"  # a loopback server without keys takes any key


@dataclass
class OmniServer:
    """A running server. ``base_url`` is what an OpenAI client takes (``…/compatible-mode/v1``);
    ``url`` the server's root (``/metrics``, ``/readyz``)."""

    url: str
    rules_path: Path
    api_key: str = API_KEY

    @property
    def base_url(self) -> str:
        return f"{self.url}/compatible-mode/v1"

    def set_rules(self, rules: Sequence[Mapping[str, Any]] | str | Path | None) -> None:
        """Replaces the rules: a list of rules (as in the rules file's ``rules``), a rules
        file to copy, or None for none. The next request sees them."""
        write_rules(self.rules_path, rules)


def write_rules(path: Path, rules: Sequence[Mapping[str, Any]] | str | Path | None) -> None:
    """Writes ``rules`` to ``path`` (JSON) at once, so a reader never sees half a file."""
    if isinstance(rules, (str, Path)):
        source = Path(rules)
        if source.suffix == ".json":
            text = source.read_text()
        else:
            import tomllib

            text = json.dumps(tomllib.loads(source.read_text()))
    else:
        text = json.dumps({"rules": list(rules or [])}, ensure_ascii=False, indent=1)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    # The server notices a change by the file's time and size: make the time differ even
    # when two writes fall within the file system's clock tick.
    now = time.time_ns()
    os.utime(path, ns=(now, now))


@contextmanager
def serve(
    *,
    rules: Sequence[Mapping[str, Any]] | str | Path | None = None,
    replay: str | Path | None = None,
    replay_pace: Literal["recorded", "fast"] = "fast",
    tokens_per_second: float = 0,
    first_token_ms: float = 0,
    speech: Literal["auto", "espeak", "tone", "kokoro"] = "auto",
    settings: Mapping[str, Any] | None = None,
    ready_s: float = 60,
) -> Iterator[OmniServer]:
    """A server for the ``with`` block. ``rules``: scripted replies and faults (a list, or a
    TOML/JSON file); ``replay``: a cassette directory to answer from; pacing of the emulator
    (none by default); ``speech``: the built-in voice, ``auto`` being espeak-ng where it is
    installed and a tone elsewhere; ``settings``: any other settings, as in the config file
    (``{"models": ["qwen3-omni-flash"]}``)."""
    import uvicorn

    from omniserve.api.app import create_app
    from omniserve.api.server import server_config
    from omniserve.config import load_settings
    from omniserve.service import ChatService

    workdir = Path(tempfile.mkdtemp(prefix="omniserve-testing-"))
    try:
        rules_path = workdir / "rules.json"
        write_rules(rules_path, rules)
        overrides: dict[str, Any] = dict(settings or {})
        emulator = dict(overrides.pop("emulator", {}))
        emulator.setdefault("tokens_per_second", tokens_per_second)
        emulator.setdefault("first_token_ms", first_token_ms)
        if overrides.get("engine", "emulator") == "emulator":  # rules script the emulator
            emulator.setdefault("rules", str(rules_path))
        accounts = {"data_dir": str(workdir / "data"), **overrides.pop("accounts", {})}
        speech_settings = dict(overrides.pop("speech", {}))
        if speech == "auto":
            speech_settings.setdefault("backend", "espeak" if _has_espeak() else "tone")
        else:
            speech_settings.setdefault("backend", speech)
        cassettes = dict(overrides.pop("cassettes", {}))
        if replay is not None:
            cassettes.update(replay=str(replay), replay_pace=replay_pace)
        overrides.setdefault("playground", False)
        config = load_settings(
            None,
            emulator=emulator,
            accounts=accounts,
            speech=speech_settings,
            cassettes=cassettes,
            **overrides,
        )
        service = ChatService(config)
        app = create_app(service=service)
        uv = uvicorn.Server(
            server_config(app, config, host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=uv.run, name="omniserve-testing", daemon=True)
        thread.start()
        deadline = time.monotonic() + ready_s
        while not uv.started:
            if not thread.is_alive():
                raise RuntimeError("omniserve did not start: see the log above")
            if time.monotonic() > deadline:
                uv.should_exit = True
                raise RuntimeError(f"omniserve did not start within {ready_s} s")
            time.sleep(0.01)
        port = uv.servers[0].sockets[0].getsockname()[1]
        try:
            yield OmniServer(url=f"http://127.0.0.1:{port}", rules_path=rules_path)
        finally:
            uv.should_exit = True
            thread.join(timeout=30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _has_espeak() -> bool:
    return shutil.which("espeak-ng") is not None
