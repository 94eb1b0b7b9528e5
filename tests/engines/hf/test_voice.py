"""Streaming vocoders: speech codes -> audio chunk by chunk, before the talker has finished."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from omniserve.engines.hf.voice import Qwen3Voice, Qwen25Voice
from tiny_omni import QWEN3, QWEN25


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
        ({}, 17, [4, 16]),  # the defaults: 4 codes first, then 12 at a time
        # Decodes that start past the first code, with only a few codes of left context.
        ({"first_chunk": 2, "chunk": 4, "left_context": 3}, 15, [2, 6, 10, 14]),
    ],
)
def test_qwen3_chunks_join_into_the_whole_clip(
    models: Any, kwargs: dict[str, int], n: int, due: list[int]
) -> None:
    code2wav = models[QWEN3].code2wav
    codes = _qwen3_codes(code2wav, n, seed=n)
    voice = Qwen3Voice(code2wav, **kwargs)

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
    voice = Qwen3Voice(code2wav, first_chunk=2)
    assert voice.finish() is None
    codes = _qwen3_codes(code2wav, 2, seed=3)
    assert voice.add(codes[0]) is None
    assert voice.add(codes[1]) is not None
    assert voice.finish() is None


def test_qwen3_a_short_utterance_leaves_at_finish(models: Any) -> None:
    code2wav = models[QWEN3].code2wav
    codes = _qwen3_codes(code2wav, 3, seed=4)
    chunks, _, last = _feed(Qwen3Voice(code2wav), list(codes))  # fewer than first_chunk
    assert chunks == []
    assert last is not None
    np.testing.assert_allclose(last, _whole(code2wav, codes), atol=1e-4)


# -- Qwen2.5-Omni: windowed token2wav --------------------------------------------------------


def _qwen25_codes(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return [int(c) for c in torch.randint(0, 60, (n,), generator=gen)]  # 60..63: codec specials


@pytest.mark.parametrize(
    ("kwargs", "n", "due"),
    [
        ({}, 37, [36]),  # the defaults: first_chunk (24) + look_ahead (12) codes first
        (
            {
                "first_chunk": 4,
                "chunk": 4,
                "max_chunk": 4,
                "look_back": 4,
                "look_ahead": 2,
                "overlap": 1,
            },
            16,
            [6, 10, 14],
        ),
        (  # chunks grow to max_chunk after the first two
            {
                "first_chunk": 4,
                "chunk": 4,
                "max_chunk": 8,
                "look_back": 4,
                "look_ahead": 2,
                "overlap": 1,
            },
            30,
            [6, 10, 18, 26],
        ),
    ],
)
def test_qwen25_chunks_cover_every_code(
    models: Any, kwargs: dict[str, int], n: int, due: list[int]
) -> None:
    model = models[QWEN25]
    speaker = model.speaker_map["Chelsie"]
    codes = _qwen25_codes(n, seed=n)
    with torch.inference_mode():
        one = model.token2wav(
            torch.tensor([codes[:1]]),
            conditioning=speaker["cond"],
            reference_mel=speaker["ref_mel"],
            num_steps=2,
        )
    per_code = one.numel()  # samples per code
    voice = Qwen25Voice(model.token2wav, speaker, steps=2, **kwargs)

    chunks, after, last = _feed(voice, codes)

    assert after == due
    assert all(len(c) > 0 for c in chunks)
    assert last is not None
    streamed = np.concatenate([*chunks, last])
    assert streamed.dtype == np.float32
    assert abs(len(streamed) - n * per_code) <= per_code
    assert np.isfinite(streamed).all()
    assert np.any(streamed != 0)
    assert voice.codes == n


def test_qwen25_finish_after_a_chunk_sends_the_held_tail(models: Any) -> None:
    model = models[QWEN25]
    voice = Qwen25Voice(
        model.token2wav,
        model.speaker_map["Ethan"],
        steps=2,
        first_chunk=4,
        look_back=4,
        look_ahead=0,
        overlap=2,
    )
    codes = _qwen25_codes(4, seed=5)
    chunks, after, last = _feed(voice, codes)
    assert after == [4]
    sent, held = len(chunks[0]), len(last) if last is not None else 0
    assert sent > 0
    assert held == sent  # 2 codes sent, the last 2 (the overlap) held back for a cross-fade
    assert voice.finish() is None
