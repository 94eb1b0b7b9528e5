"""Audio decoding: every accepted format to 16 kHz mono, token counts, limits, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from media.mediafiles import MediaFiles, flac_claiming, mutated, wav_header
from omniserve.catalog import Catalog
from omniserve.errors import InvalidMedia
from omniserve.job import AUDIO_INPUT_RATE, AudioInput
from omniserve.media.audio import EMPTY, ILLEGAL, TOO_LARGE, TOO_LONG, decode_audio
from omniserve.media.policy import billing_policy, open_policy

CATALOG = Catalog.default()
FLASH = CATALOG.get("qwen3-omni-flash")
TURBO = CATALOG.get("qwen-omni-turbo")
FLASH_POLICY, TURBO_POLICY = billing_policy(FLASH), billing_policy(TURBO)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> MediaFiles:
    return MediaFiles(tmp_path_factory.mktemp("audio"))


def decode(data: bytes, model: str = "flash") -> AudioInput:
    spec = FLASH if model == "flash" else TURBO
    return decode_audio(data, billing_policy(spec), spec.media)


def refused(data: bytes, model: str = "flash") -> str:
    with pytest.raises(InvalidMedia) as info:
        decode(data, model)
    assert info.value.status == 400
    return info.value.message


def assert_speech(audio: AudioInput, seconds: float) -> None:
    """16 kHz mono float32 of the right length, loud where espeak spoke, quiet after."""
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.seconds == pytest.approx(audio.samples.size / AUDIO_INPUT_RATE)
    assert audio.seconds == pytest.approx(seconds, abs=0.05)
    speech = audio.samples[: 4 * AUDIO_INPUT_RATE]  # espeak speaks for the first ~4.9 s
    assert float(np.sqrt(np.mean(speech**2))) > 0.02
    assert float(np.abs(audio.samples).max()) <= 1.5
    assert float(np.abs(audio.samples[6 * AUDIO_INPUT_RATE :]).max()) < 0.05  # the padding


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("wav", "wav"),
        ("mp3", "mp3"),
        ("aac", "aac"),
        ("3gp", "3gp"),
        ("flac", "flac"),
        ("m4a", "m4a"),
        ("ogg", "ogg"),
        ("opus", "ogg"),
    ],
)
def test_formats_decode_to_16k_mono(files: MediaFiles, fmt: str, name: str) -> None:
    audio = decode(files.audio(fmt))
    assert_speech(audio, 10.0)
    assert audio.format == name
    assert audio.tokens == FLASH_POLICY.audio_tokens(audio.seconds)


@pytest.mark.parametrize(("container", "name"), [("amr", "amr"), ("3gp", "3gp")])
def test_amr_nb(files: MediaFiles, container: str, name: str) -> None:
    """AMR-NB, raw and in 3GP (the ffmpeg CLI here has no AMR encoder; PyAV's build does)."""
    audio = decode(files.amr(container))
    assert_speech(audio, 10.0)
    assert audio.format == name


def test_token_counts(files: MediaFiles) -> None:
    ten = files.audio("wav")
    assert decode(ten).tokens == 125
    assert decode(ten, "turbo").tokens == 250
    short = files.audio("wav", 0.4)
    assert decode(short).seconds == pytest.approx(0.4)
    assert (decode(short).tokens, decode(short, "turbo").tokens) == (13, 25)  # at least 1 s
    minute = files.silence("minute.wav", 60, "-c:a", "pcm_s16le", rate=16000)
    assert (decode(minute).tokens, decode(minute, "turbo").tokens) == (750, 1500)


def test_open_model_token_counts(files: MediaFiles) -> None:
    ten = files.audio("flac")
    qwen25, qwen3 = open_policy("qwen2.5-omni"), open_policy("qwen3-omni")
    assert decode_audio(ten, qwen25, FLASH.media).tokens == 250
    assert decode_audio(ten, qwen3, FLASH.media).tokens == 130


def test_stereo_is_mixed_down_not_one_channel(files: MediaFiles) -> None:
    """Opposite channels cancel in a mono mix: the decoder averages, it does not pick one."""
    data = files.ffmpeg(
        "opposed.wav", "-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*440*t)|-0.5*sin(2*PI*440*t):d=1"
    )
    assert float(np.abs(decode(data).samples).max()) < 1e-3


def test_sample_rate_change_midstream(files: MediaFiles) -> None:
    """Concatenated MP3s at 44.1 and 22.05 kHz: one resampler per run, all audio kept."""
    a = files.ffmpeg("a44.mp3", "-f", "lavfi", "-i", "sine=f=440:d=2", "-ar", "44100")
    b = files.ffmpeg(
        "b22.mp3", "-f", "lavfi", "-i", "sine=f=440:d=2", "-ar", "22050", "-write_xing", "0"
    )
    audio = decode(a + b)
    assert audio.seconds == pytest.approx(4.0, abs=0.1)


# -- limits -------------------------------------------------------------------------------------


def test_too_long_for_turbo_from_the_header(files: MediaFiles) -> None:
    data = files.silence("long.mp3", 181, "-c:a", "libmp3lame", "-b:a", "8k")
    assert refused(data, "turbo") == TOO_LONG
    assert decode(data).seconds == pytest.approx(181, abs=0.1)  # flash allows 20 minutes


def test_too_long_while_decoding_when_the_header_lies(files: MediaFiles) -> None:
    """A FLAC whose STREAMINFO claims 1 s but which holds 200 s: refused while decoding."""
    honest = files.silence("200s.flac", 200, "-c:a", "flac")
    liar = flac_claiming(honest, 8000)
    assert refused(liar, "turbo") == TOO_LONG
    assert decode(liar).seconds == pytest.approx(200)


def test_wav_data_size_is_authoritative() -> None:
    """FFmpeg reads a WAV's samples only up to its data chunk's size: a header claiming 1 s
    over 200 s of samples decodes as 1 s, so there is nothing long to refuse."""
    rate = 8000
    pcm = np.zeros(rate * 200, "<i2").tobytes()
    short = wav_header(rate, rate * 2, 36 + rate * 2) + pcm
    assert decode(short, "turbo").seconds == pytest.approx(1.0)
    streaming = wav_header(rate, 0xFFFFFFFF, 0xFFFFFFFF) + pcm  # size unknown: all of it
    assert refused(streaming, "turbo") == TOO_LONG


def test_too_large_before_decoding() -> None:
    junk = b"\0" * (TURBO.media.audio_max_bytes + 1)  # not even audio: size is checked first
    assert refused(junk, "turbo") == TOO_LARGE
    assert refused(junk) == ILLEGAL


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>",
        np.random.default_rng(7).bytes(20_000),
        b"RIFF\x00\x00\x00\x00WAVEjunk",
    ],
    ids=["empty", "html", "random", "riff-junk"],
)
def test_garbage_is_illegal(data: bytes) -> None:
    assert refused(data) == ILLEGAL


def test_zero_samples_is_empty() -> None:
    assert refused(wav_header(16_000, 0, 36)) == EMPTY


def test_png_is_illegal(files: MediaFiles) -> None:
    png = files.ffmpeg("image.png", "-f", "lavfi", "-i", "testsrc=s=64x64", "-frames:v", "1")
    assert refused(png) == ILLEGAL


def test_video_without_audio_is_illegal(files: MediaFiles) -> None:
    mp4 = files.ffmpeg(
        "silent-film.mp4", "-f", "lavfi", "-i", "testsrc=s=64x64:d=1", "-c:v", "libx264"
    )
    assert refused(mp4) == ILLEGAL


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "ogg", "opus", "aac", "m4a"])
def test_truncated_files_are_shorter_or_illegal(files: MediaFiles, fmt: str) -> None:
    """Cut in half: either the part that survives (a shorter clip) or a clean 400."""
    data = files.audio(fmt)
    try:
        audio = decode(data[: len(data) // 2])
    except InvalidMedia as exc:
        assert exc.message == ILLEGAL
        assert fmt == "m4a"  # its index (moov) sits at the end, so nothing can be found
    else:
        assert 0.5 < audio.seconds < 9.0


def test_truncated_wav_keeps_what_it_holds(files: MediaFiles) -> None:
    data = files.audio("wav")
    assert decode(data[: len(data) // 2]).seconds == pytest.approx(5.0, abs=0.01)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "aac", "3gp", "flac", "m4a", "ogg", "opus"])
def test_damaged_files_never_raise_anything_else(files: MediaFiles, fmt: str) -> None:
    """Random bytes overwritten (and some files cut): audio or ``InvalidMedia``, nothing else."""
    data = files.audio(fmt)
    for seed in range(8):
        try:
            decode(mutated(data, seed))
        except InvalidMedia as exc:
            assert exc.message in (ILLEGAL, EMPTY)
