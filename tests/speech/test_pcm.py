"""PCM16 helpers: resampling quality, aligned chunks and WAV round trips."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from omniserve.speech.pcm import (
    chunk_bytes_for,
    chunk_pcm,
    duration_seconds,
    parse_wav,
    resample_pcm16,
    wav_bytes,
)


def sine(freq: float, seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12000).astype("<i2").tobytes()


def dominant_frequency(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_resample_keeps_duration_and_pitch() -> None:
    src = sine(440.0, 1.0, 22_050)
    out = resample_pcm16(src, 22_050)
    assert len(out) % 2 == 0
    assert abs(len(out) // 2 - 24_000) <= 2
    assert dominant_frequency(out, 24_000) == pytest.approx(440.0, abs=2.0)


def test_resample_keeps_level() -> None:
    src = sine(300.0, 0.5, 22_050)
    out = resample_pcm16(src, 22_050)
    rms_in = np.sqrt(np.mean(np.frombuffer(src, "<i2").astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean(np.frombuffer(out, "<i2").astype(np.float64) ** 2))
    assert rms_out == pytest.approx(rms_in, rel=0.05)


def test_resample_down_and_identity_and_empty() -> None:
    src = sine(200.0, 0.25, 48_000)
    assert abs(len(resample_pcm16(src, 48_000)) // 2 - 6_000) <= 2
    assert resample_pcm16(src, 48_000, 48_000) == src
    assert resample_pcm16(b"", 22_050) == b""


def test_resample_rejects_half_samples_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="even"):
        resample_pcm16(b"\x00\x01\x02", 22_050)
    with pytest.raises(ValueError, match="positive"):
        resample_pcm16(b"\x00\x00", 0)


def test_chunks_are_multiples_of_six_except_the_last() -> None:
    pcm = bytes(range(256)) * 100 + b"\x01\x02"  # 25,602 bytes
    chunks = chunk_pcm(pcm, 4_800)
    assert b"".join(chunks) == pcm
    assert all(len(c) == 4_800 for c in chunks[:-1])
    assert len(chunks[-1]) == 25_602 - 5 * 4_800


def test_aligned_chunks_base64_without_padding() -> None:
    pcm = sine(500.0, 0.3, 24_000)
    chunks = chunk_pcm(pcm, chunk_bytes_for(40))
    encoded = [base64.b64encode(c).decode() for c in chunks]
    assert not any("=" in e for e in encoded[:-1])
    assert base64.b64decode("".join(encoded)) == pcm


def test_chunk_size_must_be_aligned() -> None:
    with pytest.raises(ValueError, match="multiple of 6"):
        chunk_pcm(b"\x00" * 12, 4)
    assert chunk_pcm(b"", 6) == []


@pytest.mark.parametrize(("ms", "expected"), [(200, 9_600), (20, 960), (1, 48), (33, 1_584)])
def test_chunk_bytes_for(ms: int, expected: int) -> None:
    assert chunk_bytes_for(ms) == expected
    assert expected % 6 == 0


def test_chunk_bytes_for_odd_rates_stays_aligned() -> None:
    assert chunk_bytes_for(10, 22_050) % 6 == 0
    assert chunk_bytes_for(1, 1_000) == 6


def test_wav_round_trip() -> None:
    pcm = sine(440.0, 0.1, 24_000)
    wav = wav_bytes(pcm)
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", wav, 4)[0] == len(wav) - 8
    assert struct.unpack_from("<I", wav, 40)[0] == len(pcm)
    assert parse_wav(wav) == (pcm, 24_000, 1)


def test_parse_wav_with_placeholder_lengths() -> None:
    pcm = sine(440.0, 0.1, 22_050)
    wav = bytearray(wav_bytes(pcm, 22_050))
    struct.pack_into("<I", wav, 4, 0x7FFFF024)  # what espeak-ng --stdout writes
    struct.pack_into("<I", wav, 40, 0x7FFFF000)
    assert parse_wav(bytes(wav)) == (pcm, 22_050, 1)


def test_parse_wav_skips_other_chunks_and_stops_at_declared_end() -> None:
    pcm = sine(440.0, 0.05, 24_000)
    wav = wav_bytes(pcm, 24_000, 2)
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    with_list = wav[:36] + extra + wav[36:] + b"junk"
    assert parse_wav(with_list) == (pcm, 24_000, 2)


def test_parse_wav_rejects_non_wav() -> None:
    with pytest.raises(ValueError, match="RIFF"):
        parse_wav(b"ID3\x04 not a wav file")
    header_only = wav_bytes(b"")[:36]
    with pytest.raises(ValueError, match="no data"):
        parse_wav(header_only)
    float_wav = bytearray(wav_bytes(b"\x00" * 8))
    struct.pack_into("<H", float_wav, 34, 32)
    with pytest.raises(ValueError, match="PCM16"):
        parse_wav(bytes(float_wav))


def test_duration_seconds() -> None:
    assert duration_seconds(b"\x00" * 48_000) == 1.0
    assert duration_seconds(b"\x00" * 44_100, 22_050) == 1.0
