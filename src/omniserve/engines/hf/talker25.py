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

from dataclasses import dataclass, field
from typing import Any

from omniserve.engines.hf.graphs import StepRunner, buckets, decode_kernels
from omniserve.engines.hf.kvcache import SlotCache, kv_geometry, layer_devices, step_mask


@dataclass
class ReplyFeed:
    """The text a talker row speaks: one entry per generated text token after the first."""

    parts: list[Any] = field(default_factory=list)  # [hidden] tensors not yet consumed
    ended: bool = False  # the thinker is done: the text end, then padding, follow the parts
    end_sent: bool = False

    def ready(self) -> bool:
        return bool(self.parts) or self.ended


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
        kv_heads, head_dim = kv_geometry(config)
        layers = self.talker.model.layers
        self.cache = SlotCache(
            layers=len(layers),
            slots=slots,
            kv_heads=kv_heads,
            head_dim=head_dim,
            capacity=capacity,
            dtype=self.dtype,
            devices=layer_devices(layers),
        )
        self.slots, self.capacity = slots, capacity
        self.lengths = [0] * slots
        self.deltas = [0] * slots
        self.feeds: dict[int, ReplyFeed] = {}
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
        self.lengths[slot] = self.cache.load(slot, cache)
        self.deltas[slot] = int(deltas.reshape(-1)[0])
        if self.lengths[slot] != length + 2:
            raise RuntimeError("talker prompt length mismatch")
        return logits

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.deltas[slot] = 0
        self.feeds.pop(slot, None)

    # -- decode --------------------------------------------------------------------------

    def next_part(self, slot: int) -> Any:
        """The text entry of this slot's next step (its feed must be ready)."""
        feed = self.feeds[slot]
        if feed.parts:
            return feed.parts.pop(0)
        if not feed.end_sent:
            feed.end_sent = True
            return self.text_end
        return self.text_pad

    def step(self, codes: dict[int, int]) -> Any:
        """One code per row in ``codes`` (slot -> last code); logits [batch, vocab]."""
        import torch

        rows = max(codes) + 1
        batch, span = self.runner.shape(rows, max(self.lengths[s] for s in codes) + 1)
        hidden = self.text_end.shape[-1]
        ids = [0] * batch
        write = [0] * batch
        rope = [0] * batch
        parts = torch.zeros(batch, hidden, dtype=self.dtype, device=self.device)
        for slot in range(batch):
            write[slot] = min(self.lengths[slot], self.capacity - 1)
            rope[slot] = write[slot] + self.deltas[slot]
            if slot in codes:
                ids[slot] = codes[slot]
                parts[slot] = self.next_part(slot)
        out = self.runner(
            batch,
            span,
            ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            parts=parts,
            write=torch.tensor(write, dtype=torch.long, device=self.device),
            rope=torch.tensor(rope, dtype=torch.long, device=self.device),
        )
        for slot in codes:
            self.lengths[slot] += 1
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
