"""Vocoder passes over windows of a few fixed sizes, replayable as CUDA graphs.

A streamed utterance is vocoded window by window. Launched kernel by kernel, each window costs
the GPU about as much time as a whole clip (the vocoders are many small layers); with the window
rounded up to one of a few sizes, each size is captured once as a CUDA graph and every window
is one replay. Rounding up pads on the right, which leaves the real codes' audio unchanged:

- Qwen3-Omni's code2wav is causal, so padding after the window changes nothing before it;
- Qwen2.5-Omni's token2wav is a diffusion transformer that attends one block ahead: the padding
  (the last code repeated) only reaches frames past the window's look-ahead, which are not sent.

The diffusion sampler (``sample``) is the model's own ``sample`` with two changes that streaming
needs: the starting noise is given (one noise sequence per utterance, so overlapping windows
agree), and the solver's time points are fixed up front, so no value is read back mid-pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniserve.engines.hf.graphs import StepRunner, round_up


class CodecRenderer:
    """Qwen3-Omni code2wav over windows of ``sizes`` codes."""

    def __init__(self, code2wav: Any, *, sizes: tuple[int, ...] = (8, 16, 32, 48, 64, 96, 128)):
        import torch

        self.code2wav = code2wav
        self.device = next(code2wav.parameters()).device
        self.groups = int(code2wav.config.num_quantizers)
        self.upsample = int(code2wav.total_upsample)
        self.sizes = list(sizes)
        self.runner = StepRunner("code2wav", self._render, batches=[1], spans=self.sizes)
        with torch.inference_mode():
            probe = self.code2wav(
                torch.zeros(1, self.groups, 2, dtype=torch.long, device=self.device)
            )
        # Samples a decode of n codes leaves unfinished at its end (causal transposed convs).
        self.tail = 2 * self.upsample - int(probe.shape[-1])

    def samples(self, codes: int) -> int:
        """Samples a decode of ``codes`` codes completes."""
        return codes * self.upsample - self.tail

    def render(self, codes: Any) -> np.ndarray:
        """``codes`` [groups, n] -> the samples a decode of exactly these codes completes."""
        import torch

        n = int(codes.shape[-1])
        size = round_up(n, self.sizes)
        window = torch.zeros(1, self.groups, size, dtype=torch.long, device=self.device)
        # (code 0 pads the window: a causal decoder never looks at it for the real codes)
        window[0, :, :n] = codes.to(self.device)
        with torch.inference_mode():
            out = self.runner(1, size, codes=window)
            wav: np.ndarray = out["wav"].reshape(-1)[: self.samples(n)].float().cpu().numpy()
        return wav

    def _render(self, *, span: int, codes: Any) -> dict[str, Any]:
        return {"wav": self.code2wav(codes)}

    def example(self, batch: int, span: int) -> dict[str, Any]:
        import torch

        return {"codes": torch.zeros(1, self.groups, span, dtype=torch.long, device=self.device)}


@dataclass
class DitSettings:
    num_steps: int = 10
    guidance_scale: float = 0.5
    sway_coefficient: float | None = -1.0


@dataclass
class _Times:
    """The solver's time points as device scalars (built once, reused by every pass)."""

    points: list[Any] = field(default_factory=list)
    steps: list[Any] = field(default_factory=list)
    third: list[Any] = field(default_factory=list)
    two_thirds: list[Any] = field(default_factory=list)


class DitRenderer:
    """Qwen2.5-Omni token2wav (diffusion transformer + BigVGAN) over windows of codes.

    The transformer's sampling runs over a window rounded up to ``sizes`` (multiples of its
    block) and is the captured part; BigVGAN then runs on the window's real frames.
    """

    def __init__(
        self,
        token2wav: Any,
        *,
        sizes: tuple[int, ...] = (36, 60, 84, 108, 132, 180, 228),
        settings: DitSettings | None = None,
        reference_lengths: list[int] | None = None,
    ) -> None:
        self.token2wav = token2wav
        self.dit = token2wav.code2wav_dit_model
        self.vocoder = token2wav.code2wav_bigvgan_model
        self.device = next(token2wav.parameters()).device
        self.repeats = int(self.dit.repeats)
        self.mel_dim = int(self.dit.mel_dim)
        rates = token2wav.config.bigvgan_config.upsample_rates
        self.samples_per_code = self.repeats * int(np.prod(rates))
        self.sizes = list(sizes)
        self.settings = settings or DitSettings()
        self.times = self._times()
        # A pass is captured per (reference mel length, window size): the speakers' reference
        # lengths stand in the runner's batch sizes.
        self.runner = StepRunner(
            "token2wav", self._sample, batches=sorted(set(reference_lengths or [1])),
            spans=self.sizes,
        )  # fmt: skip

    def _times(self) -> _Times:
        import torch

        s = self.settings
        points = torch.linspace(0, 1, s.num_steps, device=self.device, dtype=torch.float32)
        if s.sway_coefficient is not None:
            points = points + s.sway_coefficient * (torch.cos(torch.pi / 2 * points) - 1 + points)
        out = _Times(points=[points[i] for i in range(s.num_steps)])
        for start, end in zip(out.points[:-1], out.points[1:], strict=True):
            step = end - start
            out.steps.append(step)
            out.third.append(start + step * (1 / 3))
            out.two_thirds.append(start + step * (2 / 3))
        return out

    def frames(self, codes: int) -> int:
        return codes * self.repeats

    def size(self, codes: int) -> int:
        return round_up(codes, self.sizes)

    def render(self, codes: list[int], noise: Any, speaker: dict[str, Any]) -> np.ndarray:
        """``codes`` (one window), ``noise`` [frames of the padded window, mel] -> audio."""
        import torch

        n = len(codes)
        size = self.size(n)
        padded = codes + [codes[-1]] * (size - n)
        inputs = {
            "codes": torch.tensor([padded], dtype=torch.long, device=self.device),
            "noise": noise[: self.frames(size)].unsqueeze(0).to(self.device, torch.float32),
            "cond": speaker["cond"].to(self.device).float().view(1, -1),
            "ref_mel": speaker["ref_mel"].to(self.device).float(),
        }
        if inputs["ref_mel"].dim() == 2:
            inputs["ref_mel"] = inputs["ref_mel"].unsqueeze(0)
        reference = int(inputs["ref_mel"].shape[1])
        with torch.inference_mode():
            mel = self.runner(reference, size, **inputs)["mel"][:, :, : self.frames(n)]
            wav = self.vocoder(mel)
            out = np.asarray(wav.reshape(-1).float().cpu().numpy(), dtype=np.float32)
        return out

    def _sample(
        self, *, span: int, codes: Any, noise: Any, cond: Any, ref_mel: Any
    ) -> dict[str, Any]:
        """The transformer's sampling (as its own ``sample``), from the given noise."""
        s = self.settings
        frames = noise.shape[1]
        condition = cond.unsqueeze(1).repeat(1, frames, 1)

        def velocity(time: Any, state: Any) -> Any:
            if s.guidance_scale < 1e-5:
                return self.dit(
                    hidden_states=state, speaker_embedding=condition, condition_vector=ref_mel,
                    quantized_code=codes, time_step=time, drop_audio_conditioning=False,
                    drop_code=False, apply_cfg=False,
                )  # fmt: skip
            out = self.dit(
                hidden_states=state, quantized_code=codes, speaker_embedding=condition,
                condition_vector=ref_mel, time_step=time, apply_cfg=True,
            )  # fmt: skip
            guided, null = out.chunk(2, dim=0)
            return guided + (guided - null) * s.guidance_scale

        t = self.times
        state = noise
        for i in range(len(t.steps)):
            step = t.steps[i]
            k1 = velocity(t.points[i], state)
            k2 = velocity(t.third[i], state + step * k1 * (1 / 3))
            k3 = velocity(t.two_thirds[i], state + step * (k2 - k1 * (1 / 3)))
            k4 = velocity(t.points[i + 1], state + step * (k1 - k2 + k3))
            state = state + (k1 + 3 * (k2 + k3) + k4) * step / 8
        return {"mel": state.permute(0, 2, 1)}

    def example(self, batch: int, span: int) -> dict[str, Any]:
        """Inputs of a window of ``span`` codes, for speakers whose reference is ``batch``
        frames long."""
        import torch

        return {
            "codes": torch.zeros(1, span, dtype=torch.long, device=self.device),
            "noise": torch.zeros(1, self.frames(span), self.mel_dim, device=self.device),
            "cond": torch.zeros(1, int(self.dit.config.enc_emb_dim), device=self.device),
            "ref_mel": torch.zeros(1, batch, self.mel_dim, device=self.device),
        }


def noise_frames(generator: Any, frames: int, mel_dim: int, device: Any) -> Any:
    import torch

    return torch.randn(frames, mel_dim, generator=generator, device=device)
