"""The turn detector on recorded speech: where turns start and stop, whatever the chunking."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from omniserve.realtime.vad import SpeechStarted, SpeechStopped, TurnDetector, probability_threshold
from omniserve.speech.pcm import parse_wav, resample_pcm16


def speech(text: str) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm, rate, _ = parse_wav(wav)
    return resample_pcm16(pcm, rate, 16_000)


def silence(ms: int) -> bytes:
    return bytes(ms * 32)  # 16 kHz PCM16: 32 bytes a millisecond


SPEECH = speech("What is the capital of France?")
SPEECH_MS = len(SPEECH) // 32


def feed(pcm: bytes, chunk: int, **settings: int | float) -> list[SpeechStarted | SpeechStopped]:
    options = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 800, **settings}
    detector = TurnDetector(**options)  # type: ignore[arg-type]
    events: list[SpeechStarted | SpeechStopped] = []
    for i in range(0, len(pcm), chunk):
        events += detector.feed(pcm[i : i + chunk])
    return events


def test_the_vendors_threshold_maps_onto_a_probability() -> None:
    assert probability_threshold(-1.0) == 0.0
    assert probability_threshold(0.5) == 0.75
    assert probability_threshold(0.2) == pytest.approx(0.6)
    assert probability_threshold(1.0) == 1.0


def test_silence_is_no_turn() -> None:
    assert feed(silence(3000), 3200) == []
    noise = (np.random.default_rng(0).normal(0, 30, 48_000)).astype("<i2").tobytes()
    assert feed(noise, 3200) == []


def test_a_turn_starts_with_the_speech_and_stops_after_the_silence() -> None:
    events = feed(silence(500) + SPEECH + silence(1200), 3200)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert 450 <= started.audio_start_ms <= 650
    assert started.sample == max(0, started.audio_start_ms * 16 - 300 * 16)
    # The speech ends near where the recording does (espeak's last word fades over ~100 ms).
    assert abs(stopped.audio_end_ms - (500 + SPEECH_MS)) <= 250


def test_the_silence_it_waits_for_is_the_sessions() -> None:
    short = feed(silence(500) + SPEECH + silence(500), 3200, silence_duration_ms=800)
    assert [type(e) for e in short] == [SpeechStarted]  # still waiting
    quick = feed(silence(500) + SPEECH + silence(500), 3200, silence_duration_ms=300)
    assert [type(e) for e in quick] == [SpeechStarted, SpeechStopped]


def test_the_chunking_does_not_change_the_turns() -> None:
    audio = silence(500) + SPEECH + silence(1000) + SPEECH + silence(1000)
    by_chunk = [feed(audio, size) for size in (640, 3200, 10_000, len(audio))]
    assert all(events == by_chunk[0] for events in by_chunk)
    assert [type(e) for e in by_chunk[0]] == [SpeechStarted, SpeechStopped] * 2


def test_a_high_threshold_hears_nothing() -> None:
    assert feed(silence(500) + SPEECH + silence(1200), 3200, threshold=1.0) == []
