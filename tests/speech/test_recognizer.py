"""The speech recognizer with the built-in Whisper-base, on speech from the real espeak-ng."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from omniserve.config import RecognizerSettings, load_settings
from omniserve.errors import StartupError
from omniserve.speech.pcm import parse_wav, resample_pcm16
from omniserve.speech.recognizer import (
    INSTALL_HINT,
    Recognizer,
    Transcript,
    builtin_model_dir,
)

QUESTION = "What is the capital of France?"
LONG = (
    "Hello, this is a test of offline speech recognition. "
    "The weather is nice today, and I would like a cup of coffee."
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recognizer")


@pytest.fixture(scope="module")
def recognizer(cache_dir: Path) -> Recognizer:
    # Two threads, whatever the machine: the same arithmetic, the same words, on every run.
    return Recognizer.load(RecognizerSettings(threads=2), cache_dir)


def speak(text: str) -> tuple[bytes, int]:
    """``text`` spoken by espeak-ng: PCM16 mono and its rate (22050 Hz)."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm, rate, channels = parse_wav(wav)
    assert channels == 1
    return pcm, rate


@pytest.fixture(scope="module")
def question() -> tuple[bytes, int]:
    return speak(QUESTION)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(heard: str, said: str) -> int:
    """Word-level edit distance: substitutions, insertions and deletions."""
    a, b = words(heard), words(said)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_english_comes_back_in_words(recognizer: Recognizer) -> None:
    pcm, rate = speak(LONG)
    got = recognizer.transcribe(pcm, rate)
    assert word_errors(got.text, LONG) <= 2, got.text
    assert got.language == "en"
    assert got.duration_s == pytest.approx(len(pcm) / 2 / rate)
    assert len(got.segments) >= 1
    assert " ".join(s.text for s in got.segments) == got.text
    ends = [0.0]
    for segment in got.segments:
        assert ends[-1] <= segment.start_s <= segment.end_s <= got.duration_s
        ends.append(segment.end_s)
    assert ends[-1] > got.duration_s - 1.0  # the last words are near the end


def test_a_question_with_its_language_given(
    recognizer: Recognizer, question: tuple[bytes, int]
) -> None:
    got = recognizer.transcribe(*question, language="EN-us")
    assert word_errors(got.text, QUESTION) <= 1, got.text
    assert got.language == "en"
    assert got.text.endswith("?")


def test_the_same_audio_gives_the_same_transcript(
    recognizer: Recognizer, question: tuple[bytes, int]
) -> None:
    first = recognizer.transcribe(*question, language="en")
    assert recognizer.transcribe(*question, language="en") == first


def test_24khz_input_is_resampled(recognizer: Recognizer, question: tuple[bytes, int]) -> None:
    pcm, rate = question
    pcm24 = resample_pcm16(pcm, rate, 24_000)
    got = recognizer.transcribe(pcm24, 24_000)
    assert word_errors(got.text, QUESTION) <= 1, got.text
    assert got.duration_s == pytest.approx(len(pcm24) / 2 / 24_000)
    assert got.duration_s == pytest.approx(len(pcm) / 2 / rate, abs=0.01)


def test_silence_and_nothing_give_an_empty_text(recognizer: Recognizer) -> None:
    assert recognizer.transcribe(bytes(2 * 16_000 * 3)) == Transcript("", None, 3.0)
    assert recognizer.transcribe(b"") == Transcript("", None, 0.0)
    assert recognizer.transcribe(bytes(48_000), 24_000, language="zh") == Transcript("", "zh", 1.0)


def test_malformed_input_is_refused(recognizer: Recognizer) -> None:
    with pytest.raises(ValueError, match="even number"):
        recognizer.transcribe(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="positive"):
        recognizer.transcribe(b"", 0)
    with pytest.raises(ValueError, match="language"):
        recognizer.transcribe(b"", language="klingon")


def test_transcribe_async_leaves_the_event_loop_free(
    recognizer: Recognizer, question: tuple[bytes, int]
) -> None:
    """Two transcriptions at once (one after the other, concurrency 1) while a ticker runs:
    the loop keeps ticking, and both come back whole."""

    async def main() -> tuple[list[Transcript], list[float]]:
        times = [time.monotonic()]  # the start, each tick, the end
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                times.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        try:
            got = await asyncio.gather(
                recognizer.transcribe_async(*question, language="en"),
                recognizer.transcribe_async(*question, language="en"),
            )
        finally:
            done.set()
            await tick
        times.append(time.monotonic())
        return list(got), times

    got, times = asyncio.run(main())
    for transcript in got:
        assert word_errors(transcript.text, QUESTION) <= 1, transcript.text
    # A loop blocked by each transcription in turn would tick a few times, with gaps of half
    # the time both took.
    span = times[-1] - times[0]
    assert len(times) > span / 0.01 / 4
    assert max(b - a for a, b in itertools.pairwise(times)) < span / 3


def test_the_built_in_model_is_joined_once(recognizer: Recognizer, cache_dir: Path) -> None:
    model_dir = builtin_model_dir(cache_dir)
    assert model_dir == recognizer.model_dir
    assert model_dir.parent == cache_dir
    assert sorted(p.name for p in cache_dir.iterdir()) == [model_dir.name]  # no leftovers
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    stat = (model_dir / "model.bin").stat()
    assert builtin_model_dir(cache_dir) == model_dir
    again = (model_dir / "model.bin").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_a_damaged_built_in_model_is_joined_again(tmp_path: Path) -> None:
    model_dir = builtin_model_dir(tmp_path)
    size = (model_dir / "model.bin").stat().st_size
    os.truncate(model_dir / "model.bin", 1000)
    assert builtin_model_dir(tmp_path) == model_dir
    assert (model_dir / "model.bin").stat().st_size == size
    assert [p.name for p in tmp_path.iterdir()] == [model_dir.name]


def test_a_configured_model_directory_is_loaded(recognizer: Recognizer, cache_dir: Path) -> None:
    """Any CTranslate2 Whisper directory: here the joined built-in one, named by path."""
    settings = RecognizerSettings(model_path=recognizer.model_dir, threads=2)
    other = Recognizer.load(settings, cache_dir / "unused")
    assert other.model_dir == recognizer.model_dir
    assert not (cache_dir / "unused").exists()
    got = other.transcribe(*speak("Good morning."), language="en")
    assert word_errors(got.text, "Good morning.") == 0, got.text


def test_a_bad_model_path_says_how_to_fix_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(StartupError, match="not a directory") as caught:
        Recognizer.load(RecognizerSettings(model_path=missing), tmp_path)
    assert INSTALL_HINT in str(caught.value) and str(missing) in str(caught.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StartupError, match=r"no model\.bin, config\.json, tokenizer\.json"):
        Recognizer.load(RecognizerSettings(model_path=empty), tmp_path)

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (broken / name).write_bytes(b"not a model")
    with pytest.raises(StartupError, match="cannot load the model"):
        Recognizer.load(RecognizerSettings(model_path=broken), tmp_path)


def test_the_settings_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("OMNISERVE_"):
            monkeypatch.delenv(name)
    assert load_settings().recognizer == RecognizerSettings(
        enabled=False,
        model_path=None,
        compute_type="int8",
        threads=0,
        beam_size=1,
        concurrency=1,
    )
    toml = tmp_path / "omniserve.toml"
    toml.write_text('[recognizer]\nenabled = true\nmodel_path = "/srv/whisper"\nbeam_size = 5\n')
    monkeypatch.setenv("OMNISERVE_RECOGNIZER__CONCURRENCY", "2")
    got = load_settings(toml).recognizer
    assert (got.enabled, got.model_path, got.beam_size) == (True, Path("/srv/whisper"), 5)
    assert got.concurrency == 2
