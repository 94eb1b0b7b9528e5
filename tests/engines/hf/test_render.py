"""Vocoder windows of fixed sizes: the same audio as the models' own decoders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from omniserve.engines.hf.graphs import no_host_sync
from omniserve.engines.hf.render import CodecRenderer, DitRenderer, DitSettings
from tiny_omni import QWEN3, QWEN25


@pytest.mark.parametrize("n", [1, 5, 8, 13, 32, 47])
def test_a_padded_code2wav_window_is_exactly_the_unpadded_decode(models: Any, n: int) -> None:
    code2wav = models[QWEN3].code2wav
    renderer = CodecRenderer(code2wav, sizes=(8, 16, 32, 48))
    gen = torch.Generator().manual_seed(n)
    codes = torch.randint(0, code2wav.config.codebook_size, (renderer.groups, n), generator=gen)
    with torch.inference_mode():
        whole = code2wav(codes.unsqueeze(0)).reshape(-1).numpy()
        rendered = renderer.render(codes)
    assert len(rendered) == len(whole) == renderer.samples(n)
    np.testing.assert_allclose(rendered, whole, atol=1e-5)


@pytest.mark.parametrize("steps", [2, 10])
def test_dit_sampling_from_given_noise_matches_the_models_own(models: Any, steps: int) -> None:
    """The model's ``sample`` draws its noise itself; from the same noise ours gives the same
    mel spectrogram."""
    model = models[QWEN25]
    dit = model.token2wav.code2wav_dit_model
    speaker = model.speaker_map["Chelsie"]
    renderer = DitRenderer(model.token2wav, settings=DitSettings(num_steps=steps))
    codes = torch.randint(0, 60, (1, 24), generator=torch.Generator().manual_seed(1))
    cond, ref = speaker["cond"].float(), speaker["ref_mel"].float()
    with torch.inference_mode():
        torch.manual_seed(5)
        expected = dit.sample(cond, ref, codes, num_steps=steps)
        torch.manual_seed(5)
        noise = torch.randn(1, codes.shape[1] * dit.repeats, dit.mel_dim)
        got = renderer._sample(span=24, codes=codes, noise=noise, cond=cond, ref_mel=ref)["mel"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_dit_window_renders_its_codes_audio(models: Any) -> None:
    model = models[QWEN25]
    renderer = DitRenderer(model.token2wav, sizes=(12, 24), settings=DitSettings(num_steps=2))
    noise = torch.randn(renderer.frames(24), renderer.mel_dim)
    with torch.inference_mode():
        wav = renderer.render([3, 4, 5, 6, 7, 8, 9], noise, model.speaker_map["Ethan"])
    assert len(wav) == 7 * renderer.samples_per_code
    assert np.isfinite(wav).all() and np.any(wav != 0)


def test_vocoder_windows_are_free_of_host_syncs(models: Any) -> None:
    """What the GPU captures per window size reads nothing back mid-pass."""
    codec = CodecRenderer(models[QWEN3].code2wav, sizes=(8,))
    dit = DitRenderer(models[QWEN25].token2wav, sizes=(12,), settings=DitSettings(num_steps=3))
    with torch.inference_mode(), no_host_sync():
        codec._render(span=8, **codec.example(1, 8))
        dit._sample(span=12, **dit.example(30, 12))
