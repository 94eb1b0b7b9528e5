"""Streaming vocoders: speech codes -> audio chunk by chunk, before the talker has finished."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from omniserve.engines.hf.render import CodecRenderer, DitRenderer, DitSettings
from omniserve.engines.hf.voice import ChunkPlan, Qwen3Voice, Qwen25Voice
from tiny_omni import QWEN3, QWEN25


class Clock:
    """A clock the test moves by hand, so the listener's lead is what the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _feed(voice: Any, codes: list[Any]) -> tuple[list[np.ndarray], list[int], np.ndarray | None]:
    """Chunks from ``add`` (and after how many codes each came), then ``finish``'s."""
    chunks: list[np.ndarray] = []
    after: list[int] = []
    for i, code in enumerate(codes, start=1):
        out = voice.add(code)
        if out is not None:
            chunks.append(out)
            after.append(i)
    return chunks, after, voice.finish()


# -- the chunk plan --------------------------------------------------------------------------


def test_chunks_grow_with_the_listeners_lead() -> None:
    clock = Clock()
    plan = ChunkPlan((4, 8, 16), rate=12.5, clock=clock)
    assert plan.due() == 4  # nothing sent yet: the first size
    plan.sent(24_000)  # one second of audio, at t=0
    assert plan.due() == 8  # the next size: its codes come well within the lead
    plan.sent(24_000)
    assert plan.due() == 16
    plan.sent(24_000)
    assert plan.due() == 16  # the largest size stays
    clock.now = 2.9  # 0.1 s of audio left to play
    assert plan.due() == 4


def test_a_short_lead_keeps_chunks_small() -> None:
    clock = Clock()
    plan = ChunkPlan((4, 8, 16, 32), rate=12.5, clock=clock)
    plan.sent(24_000)
    plan.sent(24_000)
    clock.now = 1.5  # half a second left: 6 codes' worth at real time
    assert plan.due() == 4
    clock.now = 0.0  # two seconds left: 25 codes' worth, 80 % of it is 20
    assert plan.due() == 16


def test_a_fast_talker_earns_larger_chunks() -> None:
    clock = Clock()
    plan = ChunkPlan((4, 8, 16, 32, 64), rate=12.5, clock=clock)
    for i in range(40):  # 40 codes (3.2 s of speech) in 0.8 s: four times real time
        clock.now = i * 0.02
        plan.arrived()
    plan.sent(24_000)  # three seconds of audio leave at once
    plan.sent(24_000)
    plan.sent(24_000)
    assert plan.speed() == pytest.approx(4.0, rel=0.05)
    clock.now += 2.5  # half a second of audio left: 6 codes at real time, 25 at this speed
    assert plan.due() == 16


@pytest.mark.parametrize("speed", [1.25, 1.5, 3.0, 10.0])
def test_a_talker_faster_than_real_time_never_leaves_a_gap(models: Any, speed: float) -> None:
    """Codes arrive at ``speed`` x real time; whenever a chunk leaves, the audio sent before it
    has not run out yet, and faster talkers get larger chunks."""
    code2wav = models[QWEN3].code2wav
    clock = Clock()
    voice = Qwen3Voice(CodecRenderer(code2wav), clock=clock)
    codes = _qwen3_codes(code2wav, 150, seed=1)
    played_until, sizes, last = None, [], 0
    for i, code in enumerate(codes, start=1):
        clock.now = i / (12.5 * speed)
        out = voice.add(code)
        if out is None:
            continue
        if played_until is not None:
            assert clock.now <= played_until + 1e-9, f"a gap before the chunk after code {i}"
        played_until = max(played_until or clock.now, clock.now) + len(out) / 24_000
        sizes.append(i - last)
        last = i
    assert sizes[0] == 4
    assert max(sizes) >= (32 if speed >= 3 else 4)


# -- Qwen3-Omni: causal code2wav -------------------------------------------------------------


def _qwen3_codes(code2wav: Any, n: int, seed: int) -> torch.Tensor:
    cfg = code2wav.config
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.codebook_size, (n, cfg.num_quantizers), generator=gen)


def _whole(code2wav: Any, codes: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        wav: np.ndarray = code2wav(codes.T.unsqueeze(0)).reshape(-1).float().numpy()
    return wav


@pytest.mark.parametrize(
    ("kwargs", "n", "due"),
    [
        # The defaults: 4 codes first, then 8, 16... (the clock stands still: an instant talker
        # and a listener with all the audio sent still ahead)
        ({}, 17, [4, 12]),
        ({"sizes": (2, 4), "left_context": 3}, 15, [2, 6, 10, 14]),  # little left context
    ],
)
def test_qwen3_chunks_join_into_the_whole_clip(
    models: Any, kwargs: dict[str, Any], n: int, due: list[int]
) -> None:
    code2wav = models[QWEN3].code2wav
    codes = _qwen3_codes(code2wav, n, seed=n)
    voice = Qwen3Voice(CodecRenderer(code2wav), clock=Clock(), **kwargs)

    chunks, after, last = _feed(voice, list(codes))

    assert after == due  # audio leaves while codes are still coming
    assert all(len(c) > 0 for c in chunks)
    assert last is not None and len(last) > 0  # the codes after the last chunk
    assert voice.codes == n
    streamed = np.concatenate([*chunks, last])
    whole = _whole(code2wav, codes)
    assert len(streamed) == len(whole)
    assert float(np.max(np.abs(streamed - whole))) < 1e-4
    # code2wav's causal transposed convolutions leave less than one code's samples unrendered.
    upsample = int(code2wav.total_upsample)
    assert n * upsample - upsample < len(streamed) <= n * upsample


def test_qwen3_finish_without_new_codes_sends_nothing(models: Any) -> None:
    code2wav = models[QWEN3].code2wav
    voice = Qwen3Voice(CodecRenderer(code2wav), sizes=(2,), clock=Clock())
    assert voice.finish() is None
    codes = _qwen3_codes(code2wav, 2, seed=3)
    assert voice.add(codes[0]) is None
    assert voice.add(codes[1]) is not None
    assert voice.finish() is None


def test_qwen3_a_short_utterance_leaves_at_finish(models: Any) -> None:
    code2wav = models[QWEN3].code2wav
    codes = _qwen3_codes(code2wav, 3, seed=4)
    chunks, _, last = _feed(Qwen3Voice(CodecRenderer(code2wav), clock=Clock()), list(codes))
    assert chunks == []
    assert last is not None
    np.testing.assert_allclose(last, _whole(code2wav, codes), atol=1e-4)


# -- Qwen2.5-Omni: windowed token2wav --------------------------------------------------------


def _qwen25_codes(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return [int(c) for c in torch.randint(0, 60, (n,), generator=gen)]  # 60..63: codec specials


def _renderer(model: Any) -> DitRenderer:
    return DitRenderer(model.token2wav, settings=DitSettings(num_steps=2))


@pytest.mark.parametrize(
    ("kwargs", "n", "due"),
    [
        ({}, 37, [36]),  # the defaults: the first 24 codes with 12 of look-ahead
        ({"sizes": (4,), "look_back": 4, "look_ahead": 2, "overlap": 1}, 16, [6, 10, 14]),
        ({"sizes": (4, 8), "look_back": 4, "look_ahead": 2, "overlap": 1}, 30, [6, 14, 22, 30]),
    ],
)
def test_qwen25_chunks_cover_every_code(
    models: Any, kwargs: dict[str, Any], n: int, due: list[int]
) -> None:
    model = models[QWEN25]
    renderer = _renderer(model)
    codes = _qwen25_codes(n, seed=n)
    voice = Qwen25Voice(renderer, model.speaker_map["Chelsie"], seed=1, clock=Clock(), **kwargs)

    chunks, after, last = _feed(voice, codes)

    assert after == due
    assert all(len(c) > 0 for c in chunks)
    assert last is not None
    streamed = np.concatenate([*chunks, last])
    assert streamed.dtype == np.float32
    per_code = renderer.samples_per_code
    assert abs(len(streamed) - n * per_code) <= per_code
    assert np.isfinite(streamed).all()
    assert np.any(streamed != 0)
    assert voice.codes == n


def test_qwen25_same_seed_same_audio(models: Any) -> None:
    model = models[QWEN25]
    renderer = _renderer(model)
    codes = _qwen25_codes(40, seed=2)

    def speak(seed: int) -> np.ndarray:
        voice = Qwen25Voice(renderer, model.speaker_map["Ethan"], seed=seed, clock=Clock())
        chunks, _, last = _feed(voice, codes)
        return np.concatenate([*chunks, *([last] if last is not None else [])])

    first = speak(7)
    np.testing.assert_array_equal(speak(7), first)
    assert not np.array_equal(speak(8), first)


def test_qwen25_finish_after_a_chunk_sends_the_held_tail(models: Any) -> None:
    model = models[QWEN25]
    voice = Qwen25Voice(
        _renderer(model),
        model.speaker_map["Ethan"],
        sizes=(4,),
        look_back=4,
        look_ahead=0,
        overlap=2,
        clock=Clock(),
    )
    codes = _qwen25_codes(4, seed=5)
    chunks, after, last = _feed(voice, codes)
    assert after == [4]
    sent, held = len(chunks[0]), len(last) if last is not None else 0
    assert sent > 0
    assert held == sent  # 2 codes sent, the last 2 (the overlap) held back for a cross-fade
    assert voice.finish() is None
