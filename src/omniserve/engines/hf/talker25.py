"""Qwen2.5-Omni's talker, fed by the thinker as the thinker writes.

``generate`` runs the talker after the thinker has finished. The talker only ever needs the
thinker's output for one more text token per speech code, though: its prompt is the thinker's
prompt (last hidden state plus token embedding, media positions zeroed), the speaker's text
start token and the first generated token; each later step adds the next generated token's
hidden state and embedding to the last code's embedding, then the text end, then padding. So
the talker starts as soon as the thinker has fed its first token and runs one step behind it,
and its codes are the ones ``generate`` would produce from the same text.
"""

from __future__ import annotations

from typing import Any

from omniserve.engines.hf.graphs import StepRunner, buckets, decode_kernels
from omniserve.engines.hf.kvcache import DecoderSlots, step_mask


class Qwen25Talker:
    """Slots and the batched decode step of Qwen2.5-Omni's talker."""

    def __init__(self, model: Any, *, slots: int, capacity: int) -> None:
        import torch

        self.model = model
        self.talker = model.talker
        self.codec_embed = self.talker.get_input_embeddings()
        self.text_embed = model.thinker.get_input_embeddings()
        config = self.talker.config
        self.config = config
        self.vocab = int(config.vocab_size)
        self.device = self.codec_embed.weight.device
        self.dtype = self.codec_embed.weight.dtype
        self.slots = DecoderSlots(
            self.talker.model.layers, config, slots=slots, capacity=capacity, dtype=self.dtype
        )
        self.cache = self.slots.cache
        thinker_config = model.config.thinker_config
        self.media_tokens = [
            int(getattr(thinker_config, name))
            for name in ("audio_token_index", "image_token_index", "video_token_index")
        ]
        with torch.inference_mode():
            ids = torch.tensor(
                [self.talker.text_eos_token, self.talker.text_pad_token], device=self.device
            )
            self.text_end, self.text_pad = self.text_embed(ids).to(self.dtype)
        self.runner = StepRunner(
            "talker",
            self._step,
            batches=buckets(slots),
            spans=buckets(capacity, smallest=min(256, capacity)),
            kernels=decode_kernels([self.talker.model], self.device),
        )

    @property
    def bos(self) -> int:
        return int(self.talker.codec_bos_token)

    def prompt_ids(self, prompt_length: int) -> list[int]:
        """The talker's input ids (what its repetition penalty counts as seen)."""
        mask = int(self.talker.codec_mask_token)
        return [mask] * prompt_length + [int(self.talker.codec_pad_token), self.bos]

    # -- prompt --------------------------------------------------------------------------

    def prefill(
        self,
        slot: int,
        *,
        tensors: dict[str, Any],
        use_audio_in_video: bool,
        prompt_hidden: Any,
        first_token: int,
        first_part: Any,
        speaker_bos: int,
    ) -> Any:
        """The talker's prompt for one request into ``slot``; logits of its first code."""
        import torch
        from transformers import DynamicCache

        input_ids = tensors["input_ids"].to(self.device)
        length = int(input_ids.shape[1])
        embeds = self.text_embed(input_ids)[0]
        media = torch.zeros_like(input_ids[0], dtype=torch.bool)
        for token in self.media_tokens:
            media |= input_ids[0] == token
        embeds = embeds.masked_fill(media.unsqueeze(-1), 0.0)
        bos = torch.tensor([[speaker_bos]], device=self.device)
        prompt = torch.cat(
            [
                (prompt_hidden + embeds).unsqueeze(0),
                self.text_embed(bos),
                first_part.view(1, 1, -1),
            ],
            dim=1,
        )
        codec = self.codec_embed(
            torch.tensor([self.talker.codec_pad_token, self.bos], device=self.device)
        )
        prompt[0, -2:] += codec
        text_ids = torch.cat([input_ids, bos, torch.full_like(bos, first_token)], dim=1)
        mask = torch.ones_like(text_ids)
        audio_lengths = None
        if tensors.get("feature_attention_mask") is not None:
            audio_lengths = tensors["feature_attention_mask"].sum(dim=1)
        positions, deltas = self.talker.get_rope_index(
            text_ids,
            tensors.get("image_grid_thw"),
            tensors.get("video_grid_thw"),
            mask,
            use_audio_in_video,
            audio_lengths,
            tensors.get("video_second_per_grid"),
        )
        cache = DynamicCache(config=self.config)
        out = self.talker.model(
            inputs_embeds=self.talker.thinker_to_talker_proj(prompt),
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        logits = self.talker.codec_head(out.last_hidden_state[:, -1]).float()[0]
        if self.slots.hold(slot, cache, int(deltas.reshape(-1)[0])) != length + 2:
            raise RuntimeError("talker prompt length mismatch")
        return logits

    def free(self, slot: int) -> None:
        self.slots.free(slot)

    # -- decode --------------------------------------------------------------------------

    def step(self, rows: dict[int, tuple[int, Any]]) -> Any:
        """One step for each slot in ``rows`` (slot -> its last code and the text it reads
        next); logits [batch, vocab], row ``i`` being slot ``i``."""
        import torch

        batch, span = self.runner.shape(max(rows) + 1, self.slots.span(rows))
        ids = [0] * batch
        parts = torch.zeros(batch, self.text_end.shape[-1], dtype=self.dtype, device=self.device)
        for slot, (code, part) in rows.items():
            ids[slot] = code
            parts[slot] = part
        write, rope = self.slots.positions(batch, self.device)
        out = self.runner(
            batch,
            span,
            ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            parts=parts,
            write=write,
            rope=rope,
        )
        self.slots.advance(rows)
        return out["logits"]

    def _step(self, *, span: int, ids: Any, parts: Any, write: Any, rope: Any) -> dict[str, Any]:
        batch = ids.shape[0]
        self.cache.write, self.cache.kv_len = write, span
        embeds = (self.codec_embed(ids) + parts).view(batch, 1, -1)
        out = self.talker.model(
            inputs_embeds=self.talker.thinker_to_talker_proj(embeds),
            attention_mask=step_mask(write, span),
            position_ids=rope.view(1, batch, 1).expand(3, batch, 1),
            cache=self.cache,
            use_cache=True,
        )
        return {"logits": self.talker.codec_head(out.last_hidden_state[:, -1]).float()}

    def example(self, batch: int, span: int = 0) -> dict[str, Any]:
        import torch

        zeros = torch.zeros(batch, dtype=torch.long, device=self.device)
        parts = torch.zeros(batch, self.text_end.shape[-1], dtype=self.dtype, device=self.device)
        return {"ids": zeros.clone(), "parts": parts, "write": zeros.clone(), "rope": zeros.clone()}
