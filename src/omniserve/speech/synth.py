"""Sentence synthesizers: espeak-ng in a subprocess, and a tone fallback for machines without it.

espeak-ng is GPL-3, so it only ever runs as a separate program. Both return PCM16 mono 24 kHz.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from omniserve.config import SpeechSettings
from omniserve.errors import StartupError
from omniserve.events import PCM_RATE
from omniserve.speech.children import ChildProcesses
from omniserve.speech.pcm import parse_wav, resample_pcm16
from omniserve.speech.priority import PrioritySemaphore
from omniserve.speech.voices import ESPEAK_LANGUAGES, EspeakVoice

_TONE_MIN_SECONDS = 0.3
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f々〆]")


class SpeechError(StartupError):
    """Speech could not be synthesized (espeak-ng missing, failing or silent)."""


@dataclass(frozen=True)
class Rescue:
    """How a slow synthesizer's late sentences are saved: when a sentence is not ready
    ``margin_s`` before its audio is needed (the reply's audio so far has played out, or, before
    the first audio, ``first_audio_s`` after the request), ``by`` reads it too, and whichever is
    done first plays."""

    by: Synthesizer
    first_audio_s: float
    margin_s: float


class Synthesizer(Protocol):
    """Turns one sentence into PCM16 mono 24 kHz."""

    # A quicker, plainer synthesizer for sentences this one would deliver late (None: this one
    # is quick already).
    rescue: Rescue | None

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        """``deadline`` (``time.monotonic()`` seconds) is when the audio is needed; the most
        urgent sentence is synthesized first. ``None`` means now. ``playing`` False: the reply's
        audio has not started yet (the deadline counts from the request)."""
        ...

    async def check(self) -> None:
        """Raises ``SpeechError`` when this synthesizer cannot work here (run at start-up)."""
        ...

    async def close(self) -> None: ...


class EspeakSynthesizer:
    """Runs ``espeak-ng`` once per sentence, at most ``max_concurrency`` at a time."""

    rescue: Rescue | None = None  # about 40 ms a sentence: nothing quicker to fall back on

    def __init__(self, settings: SpeechSettings) -> None:
        self._path = settings.espeak_path
        self._slots = PrioritySemaphore(settings.max_concurrency)
        self._children = ChildProcesses()

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        text = espeak_text(text, voice)
        if not text:
            return b""
        async with self._slots.slot(time.monotonic() if deadline is None else deadline):
            wav = await self._run(["--stdout", "--stdin", *voice.args()], text.encode())
        try:
            pcm, rate, channels = parse_wav(wav)
        except ValueError as exc:
            raise SpeechError(f"espeak-ng wrote no usable WAV for voice {voice.name}") from exc
        if channels != 1:
            raise SpeechError(f"espeak-ng wrote {channels} channels, expected mono")
        # Measured at about 1 ms per second of audio: enough to stall other streams if run on
        # the event loop, while a worker thread keeps the loop's lag under 2 ms.
        return await asyncio.to_thread(resample_pcm16, pcm, rate, PCM_RATE)

    async def check(self) -> None:
        """Speaks one word and looks for every voice we use, so gaps show at start-up."""
        wav = await self._run(["--stdout", "--stdin", "-v", "en-us"], b"ok")
        try:
            pcm, _, _ = parse_wav(wav)
        except ValueError as exc:
            raise SpeechError(f"{self._path} did not write a WAV file") from exc
        if not pcm:
            raise SpeechError(f"{self._path} wrote no audio")
        listing = await self._run(["--voices"], b"")
        rows = [line.split() for line in listing.decode().splitlines()[1:]]
        installed = {row[1] for row in rows if len(row) > 1}
        missing = sorted({*ESPEAK_LANGUAGES.values(), "yue"} - installed)
        if missing:
            raise SpeechError(f"{self._path} lacks the voices {', '.join(missing)}")

    async def close(self) -> None:
        """Kills sentences still being spoken; their callers see ``SpeechError``."""
        self._children.kill_all()

    async def _run(self, args: list[str], stdin: bytes) -> bytes:
        """espeak-ng's stdout; the process is killed and reaped if the caller is cancelled."""
        try:
            status, out, err = await self._children.run([self._path, *args], stdin)
        except OSError as exc:
            raise SpeechError(
                f"cannot run {self._path!r} ({exc.strerror or exc}): install espeak-ng, "
                "set speech.espeak_path, or choose speech.backend = 'tone'"
            ) from exc
        if status != 0:
            message = err.decode(errors="replace").strip() or "no message"
            raise SpeechError(f"{self._path} exited with status {status}: {message}")
        return out


def espeak_text(text: str, voice: EspeakVoice) -> str:
    """``text`` as espeak-ng should get it for ``voice``.

    espeak-ng's Japanese has no kanji readings and says "Chinese letter" for each one, so
    Japanese is read from its kana alone.
    """
    if voice.language == "ja":
        text = _HAN.sub("", text)
    return text.strip()


class ToneSynthesizer:
    """A soft, syllable-paced tone instead of speech: audible, deterministic, dependency-free.

    About 60 ms per CJK character and 70 ms per other word (at least 300 ms); the voice's
    variant family and pitch set the tone.
    """

    rescue: Rescue | None = None

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        return tone_pcm(text, voice)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def tone_pcm(text: str, voice: EspeakVoice) -> bytes:
    """The sound ``ToneSynthesizer`` makes for ``text``, as PCM16 mono 24 kHz."""
    durations = _syllables(text)
    if not durations:
        return b""
    stretch = max(1.0, _TONE_MIN_SECONDS / sum(durations))
    f0 = (210.0 if voice.variant.startswith("f") else 120.0) * 2.0 ** ((voice.pitch - 50) / 100)
    parts = []
    for index, seconds in enumerate(durations):
        n = max(2, round(seconds * stretch * PCM_RATE))
        # A fixed little melody, a rise-fall glide and two harmonics sound more like a voice
        # than a flat sine; the Hann envelope keeps syllable edges click-free.
        semitones = (index * 7) % 5 - 2
        glide = 1 + 0.03 * np.sin(np.pi * np.arange(n) / (n - 1))
        phase = 2 * np.pi * np.cumsum(f0 * 2.0 ** (semitones / 12) * glide) / PCM_RATE
        wave = np.sin(phase) + 0.35 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
        parts.append(wave * np.hanning(n))
    scale = 0.25 * voice.amplitude / 100 / 1.5 * 32767
    return (np.concatenate(parts) * scale).astype("<i2").tobytes()


def _syllables(text: str) -> list[float]:
    """Seconds per spoken unit: 60 ms per CJK character, 70 ms per other word."""
    units: list[float] = []
    in_word = False
    for ch in text:
        code = ord(ch)
        cjk = 0x3040 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF
        if cjk:
            units.append(0.06)
            in_word = False
        elif ch.isalnum():
            if not in_word:
                units.append(0.07)
            in_word = True
        else:
            in_word = False
    return units


def make_synthesizer(settings: SpeechSettings) -> Synthesizer:
    """The synthesizer ``settings.backend`` names (Kokoro's model loads in its ``check``)."""
    if settings.backend == "tone":
        return ToneSynthesizer()
    if settings.backend == "kokoro":
        from omniserve.speech.kokoro import KokoroSynthesizer

        return KokoroSynthesizer(settings)
    return EspeakSynthesizer(settings)
