"""The thinker: a request's prompt in one forward pass, then one token per step for every slot.

The prompt (text, images, audio, video) goes through the model's own forward, exactly as the
first step of ``generate`` does, with a cache of its own; its keys and values are then copied
into the request's slot. From there every decode step runs the model's text decoder once for
all slots at once, over the slot cache. The step is a fixed-shape function of its inputs, so on
a GPU it is captured as CUDA graphs (see ``graphs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omniserve.engines.hf.graphs import StepRunner, buckets, decode_kernels
from omniserve.engines.hf.kvcache import DecoderSlots, step_mask


@dataclass
class ThinkerPrefill:
    """What the prompt's forward pass leaves for the rest of the request."""

    logits: Any  # [vocab] float32, for the first token
    length: int  # prompt positions
    rope_delta: int  # added to every later position (multimodal rotary positions)
    last_hidden: Any  # [length, hidden]: the last layer over the prompt (normed)
    hidden_states: tuple[Any, ...] | None  # every layer over the prompt, when asked for


class ThinkerStage:
    """The thinker's slots and its batched decode step."""

    def __init__(
        self,
        thinker: Any,
        *,
        slots: int,
        capacity: int,
        spans: list[int] | None = None,
    ) -> None:
        self.thinker = thinker
        self.text_model = thinker.model.language_model
        self.embed = thinker.get_input_embeddings()
        config = thinker.config.text_config
        self.config = config
        self.hidden_size = int(config.hidden_size)
        self.vocab = int(config.vocab_size)
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        self.slots = DecoderSlots(
            self.text_model.layers, config, slots=slots, capacity=capacity, dtype=self.dtype
        )
        self.cache = self.slots.cache
        self.capacity = capacity
        self.runner = StepRunner(
            "thinker",
            self._step,
            batches=buckets(slots),
            spans=spans or buckets(capacity, smallest=min(256, capacity)),
            kernels=decode_kernels([self.text_model], self.device),
        )

    # -- prompt --------------------------------------------------------------------------

    def prefill(
        self, slot: int, tensors: dict[str, Any], *, use_audio_in_video: bool, hidden_states: bool
    ) -> ThinkerPrefill:
        """Run the prompt of one request into ``slot``."""
        from transformers import DynamicCache

        input_ids = tensors["input_ids"]
        length = int(input_ids.shape[1])
        if length >= self.capacity:
            raise ValueError(f"a prompt of {length} tokens does not fit {self.capacity}")
        position_ids, delta = self.positions(tensors, use_audio_in_video)
        cache = DynamicCache(config=self.config)
        kwargs = {k: v for k, v in tensors.items() if k != "video_second_per_grid"}
        if "video_second_per_grid" in tensors:
            kwargs["video_second_per_grid"] = tensors["video_second_per_grid"]
        out = self.thinker.model(
            **kwargs,
            use_audio_in_video=use_audio_in_video,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            output_hidden_states=hidden_states,
        )
        last = out.last_hidden_state[0]
        logits = self.thinker.lm_head(last[-1:]).float()[0]
        self.slots.hold(slot, cache, delta)
        del cache
        return ThinkerPrefill(
            logits=logits,
            length=length,
            rope_delta=delta,
            last_hidden=last,
            hidden_states=tuple(h[0] for h in out.hidden_states) if hidden_states else None,
        )

    def positions(self, tensors: dict[str, Any], use_audio_in_video: bool) -> tuple[Any, int]:
        """The prompt's rotary positions (text, then temporal/height/width) and the offset
        every later position gets, as ``generate`` computes them."""
        import torch

        input_ids = tensors["input_ids"]
        mask = tensors.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        audio_lengths = None
        if tensors.get("feature_attention_mask") is not None:
            audio_lengths = tensors["feature_attention_mask"].sum(dim=-1)
        vision, deltas = self.thinker.get_rope_index(
            input_ids,
            image_grid_thw=tensors.get("image_grid_thw"),
            video_grid_thw=tensors.get("video_grid_thw"),
            attention_mask=mask,
            use_audio_in_video=use_audio_in_video,
            audio_seqlens=audio_lengths,
            second_per_grids=tensors.get("video_second_per_grid"),
        )
        text = torch.arange(input_ids.shape[1], device=input_ids.device).view(1, 1, -1)
        return torch.cat([text, vision.to(text.device)], dim=0), int(deltas.reshape(-1)[0])

    def free(self, slot: int) -> None:
        self.slots.free(slot)

    @property
    def lengths(self) -> list[int]:
        return self.slots.lengths

    # -- decode --------------------------------------------------------------------------

    def step(self, tokens: dict[int, int]) -> tuple[Any, Any, Any]:
        """Feed each slot's last token; (logits [batch, vocab], last hidden [batch, hidden],
        input embeddings [batch, hidden]), row ``i`` being slot ``i``."""
        import torch

        batch, span = self.runner.shape(max(tokens) + 1, self.slots.span(tokens))
        ids = [tokens.get(slot, 0) for slot in range(batch)]
        write, rope = self.slots.positions(batch, self.device)
        out = self.runner(
            batch,
            span,
            ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            write=write,
            rope=rope,
        )
        self.slots.advance(tokens)
        return out["logits"], out["hidden"], out["embeds"]

    def _step(self, *, span: int, ids: Any, write: Any, rope: Any) -> dict[str, Any]:
        batch = ids.shape[0]
        self.cache.write, self.cache.kv_len = write, span
        embeds = self.embed(ids).view(batch, 1, -1)
        positions = rope.view(1, batch, 1).expand(3, batch, 1)
        out = self.text_model(
            inputs_embeds=embeds,
            attention_mask=step_mask(write, span),
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        logits = self.thinker.lm_head(hidden).float()
        return {"logits": logits, "hidden": hidden, "embeds": embeds[:, 0]}

    def example(self, batch: int, span: int = 0) -> dict[str, Any]:
        """Inputs for capturing the step: every row writes at position 0 of its slot."""
        import torch

        zeros = torch.zeros(batch, dtype=torch.long, device=self.device)
        return {"ids": zeros.clone(), "write": zeros.clone(), "rope": zeros.clone()}
