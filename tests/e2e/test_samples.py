"""The vendor's client samples (examples/), run unchanged except for the server's address."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import LiveServer, median_pitch, read_sse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_URL = "http://127.0.0.1:8000/compatible-mode/v1"


def localize(src: Path, dst_dir: Path, server: LiveServer) -> Path:
    """Copy a sample, pointing it at the test server instead of the documented default."""
    text = src.read_text(encoding="utf-8")
    assert DEFAULT_URL in text, f"{src.name} must use the README's base URL"
    dst = dst_dir / src.name
    dst.write_text(text.replace(DEFAULT_URL, server.api), encoding="utf-8")
    return dst


def run(cmd: list[str], cwd: Path, timeout: float = 60) -> str:
    env = {**os.environ, "DASHSCOPE_API_KEY": "sk-omniserve-test"}
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def assert_speech_wav(path: Path, min_seconds: float = 1.0) -> None:
    audio, rate = sf.read(path, dtype="int16")
    assert rate == 24_000
    assert audio.ndim == 1
    seconds = len(audio) / rate
    assert seconds >= min_seconds, seconds
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert rms > 300, f"audio is nearly silent (RMS {rms:.0f})"
    # Speech has pauses and bursts: the loudness of 50 ms frames varies a lot.
    frames = audio[: len(audio) // 1200 * 1200].reshape(-1, 1200).astype(np.float64)
    frame_rms = np.sqrt((frames**2).mean(axis=1))
    assert (frame_rms < rms * 0.2).mean() > 0.05, "no pauses: not speech-like"
    assert (frame_rms > rms).mean() > 0.2


def test_python_text_and_audio(server: LiveServer, tmp_path: Path) -> None:
    script = localize(EXAMPLES / "python" / "text_and_audio.py", tmp_path, server)
    out = run([sys.executable, str(script)], tmp_path)
    assert "请求失败" not in out, out
    assert "omniserve" in out and "音频文件已保存至:audio_assistant.wav" in out
    assert_speech_wav(tmp_path / "audio_assistant.wav")


def test_python_decode_audio(server: LiveServer, tmp_path: Path) -> None:
    script = localize(EXAMPLES / "python" / "decode_audio.py", tmp_path, server)
    out = run([sys.executable, str(script)], tmp_path)
    assert "audio_tokens" in out
    assert_speech_wav(tmp_path / "audio_assistant_py.wav")


def test_python_thinking(server: LiveServer, tmp_path: Path) -> None:
    script = localize(EXAMPLES / "python" / "thinking.py", tmp_path, server)
    out = run([sys.executable, str(script)], tmp_path)
    assert "reasoning_tokens" in out
    lines = out.splitlines()
    first_content = next(i for i, line in enumerate(lines) if "content='你好" in line)
    last_reasoning = max(
        i
        for i, line in enumerate(lines)
        if "reasoning_content='" in line and "reasoning_content=''" not in line
    )
    assert last_reasoning < first_content


def test_python_multi_turn(server: LiveServer, tmp_path: Path) -> None:
    script = localize(EXAMPLES / "python" / "multi_turn.py", tmp_path, server)
    out = run([sys.executable, str(script)], tmp_path)
    assert "3 条消息" in "".join(re.findall(r"content='([^']*)'", out))


def _curl(script: Path, tmp_path: Path, server: LiveServer) -> list[object]:
    local = localize(script, tmp_path, server)
    out = run(["sh", str(local)], tmp_path)
    return read_sse(iter(out.split("\n")))


def test_curl_text_and_audio(server: LiveServer, tmp_path: Path) -> None:
    events = _curl(EXAMPLES / "curl" / "text_and_audio.sh", tmp_path, server)
    assert events[-1] == "[DONE]"
    audio = [
        e["choices"][0]["delta"]["audio"]
        for e in events[:-1]
        if isinstance(e, dict) and e["choices"] and "audio" in e["choices"][0]["delta"]
    ]
    assert audio and all(a["id"].startswith("audio_") for a in audio)
    usage = events[-2]["usage"]  # type: ignore[index]
    assert usage["completion_tokens_details"]["audio_tokens"] > 0


def test_curl_thinking_and_multi_turn(server: LiveServer, tmp_path: Path) -> None:
    events = _curl(EXAMPLES / "curl" / "thinking.sh", tmp_path, server)
    role = events[0]["choices"][0]["delta"]  # type: ignore[index]
    assert role == {"content": None, "role": "assistant", "reasoning_content": ""}
    events = _curl(EXAMPLES / "curl" / "multi_turn.sh", tmp_path, server)
    assert events[0]["model"] == "qwen-omni-turbo"  # type: ignore[index]
    assert json.dumps(events[-2]["usage"])  # type: ignore[index]


NODE = shutil.which("node")
NPM = shutil.which("npm")


# The samples' own pin (openai 4.x) on the system's Node, and the current major of the openai
# package (7.x, which wants Node 22 or later) on Node 22 from npm's "node" package.
NODE_SETUPS = {
    "openai-4": {},
    "openai-7": {"openai": "^7.60.0", "node": "^22"},
}


@dataclass
class NodeDir:
    path: Path
    node: str


@pytest.fixture(scope="module", params=list(NODE_SETUPS))
def node_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> NodeDir:
    if NODE is None or NPM is None:
        pytest.fail("node and npm are needed for the Node.js samples: run scripts/bootstrap --dev")
    work = tmp_path_factory.mktemp(f"node-{request.param}")
    package = json.loads((EXAMPLES / "node" / "package.json").read_text())
    package["dependencies"].update(NODE_SETUPS[request.param])
    (work / "package.json").write_text(json.dumps(package))
    proc = subprocess.run(
        [NPM, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"npm install failed: {proc.stderr}")
    local = work / "node_modules" / ".bin" / "node"
    return NodeDir(work, str(local) if local.exists() else NODE)


def test_node_text_and_audio(server: LiveServer, node_dir: NodeDir) -> None:
    script = localize(EXAMPLES / "node" / "text_and_audio.mjs", node_dir.path, server)
    out = run([node_dir.node, str(script)], node_dir.path)
    assert "omniserve" in out and "音频文件已成功保存为 audio_assistant.wav" in out
    assert_speech_wav(node_dir.path / "audio_assistant.wav")


def test_node_thinking(server: LiveServer, node_dir: NodeDir) -> None:
    script = localize(EXAMPLES / "node" / "thinking.mjs", node_dir.path, server)
    out = run([node_dir.node, str(script)], node_dir.path)
    assert "reasoning_content" in out and "reasoning_tokens" in out


def test_node_multi_turn(server: LiveServer, node_dir: NodeDir) -> None:
    script = localize(EXAMPLES / "node" / "multi_turn.mjs", node_dir.path, server)
    out = run([node_dir.node, str(script)], node_dir.path)
    assert "3 条消息" in "".join(re.findall(r"content: '([^']*)'", out))
    assert "prompt_tokens" in out


def test_node_setups_are_what_they_say(node_dir: NodeDir) -> None:
    version = run([node_dir.node, "--version"], node_dir.path)
    sdk = json.loads((node_dir.path / "node_modules" / "openai" / "package.json").read_text())
    if node_dir.path.name.startswith("node-openai-7"):
        assert version.startswith("v22.") and sdk["version"].startswith("7.")
    else:
        assert sdk["version"].startswith("4.")


def test_requested_voice_is_heard(server: LiveServer) -> None:
    """Cherry (female) speaks higher than Ethan (male) through the openai SDK."""
    from openai import OpenAI

    client = OpenAI(api_key="sk-test", base_url=server.api)

    def speech(voice: str) -> bytes:
        stream = client.chat.completions.create(
            model="qwen3-omni-flash",
            messages=[{"role": "user", "content": "Who are you?"}],
            modalities=["text", "audio"],
            audio={"voice": voice, "format": "wav"},
            stream=True,
        )
        pcm = b""
        for chunk in stream:
            audio = getattr(chunk.choices[0].delta, "audio", None) if chunk.choices else None
            if audio:
                pcm += base64.b64decode(audio["data"])
        return pcm

    cherry, ethan = speech("Cherry"), speech("Ethan")
    assert median_pitch(cherry) > 1.2 * median_pitch(ethan)
