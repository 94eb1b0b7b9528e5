"""Qwen3-Omni's talker and code predictor, fed by the thinker as the thinker writes.

Each 12.5 Hz speech frame is one code from the talker (group 0) and the rest from the code
predictor, a small decoder run ``num_code_groups - 1`` steps per frame. The talker's prompt is
built from the thinker's prompt (user turns: text embeddings, media hidden states) and the first
text of the answer; each later step adds one more text embedding of the answer (then the text
end, then padding) to the sum of the previous frame's code embeddings. It needs only token
embeddings from the thinker, so it starts as soon as the first answer token is known.

For every frame, all rows run the code predictor together: it always starts from two positions
and runs the same number of steps, so its whole loop (sampling included, with noise drawn
beforehand from each request's own generator) is one fixed-shape step.
"""

from __future__ import annotations

from typing import Any

from omniserve.engines.hf.graphs import StepRunner, buckets, decode_kernels
from omniserve.engines.hf.kvcache import DecoderSlots, step_mask

# The code predictor samples with these (as transformers' Qwen3-Omni talker does).
PREDICTOR_TOP_K = 50
PREDICTOR_TOP_P = 0.8


class Qwen3Talker:
    """Slots and batched steps of Qwen3-Omni's talker and code predictor."""

    def __init__(self, model: Any, *, slots: int, capacity: int) -> None:
        import torch

        self.model = model
        self.talker = model.talker
        self.predictor = self.talker.code_predictor
        self.codec_embed = self.talker.get_input_embeddings()
        self.text_embed = model.thinker.get_input_embeddings()
        config = model.config
        self.config = config
        talker_config = config.talker_config
        self.groups = int(talker_config.num_code_groups)
        self.vocab = int(talker_config.text_config.vocab_size)
        self.predictor_vocab = int(talker_config.code_predictor_config.vocab_size)
        self.device = self.codec_embed.weight.device
        self.dtype = self.codec_embed.weight.dtype
        self.hidden_size = int(talker_config.text_config.hidden_size)
        self.slots = DecoderSlots(
            self.talker.model.layers,
            talker_config.text_config,
            slots=slots,
            capacity=capacity,
            dtype=self.dtype,
        )
        self.cache = self.slots.cache
        # Every row's frame starts at position 0: the predictor's slots never outlive a step.
        self.predictor_cache = DecoderSlots(
            self.predictor.model.layers,
            talker_config.code_predictor_config,
            slots=slots,
            capacity=self.groups + 1,
            dtype=self.dtype,
        ).cache
        self.media_tokens = [
            int(getattr(config.thinker_config, name))
            for name in ("audio_token_id", "image_token_id", "video_token_id")
        ]
        with torch.inference_mode():
            special = torch.tensor(
                [[config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id]],
                device=self.text_embed.weight.device,
            )
            projected = self.talker.text_projection(self.text_embed(special)).to(self.device)
            self.tts_bos, self.text_end, self.text_pad = projected[0].to(self.dtype)
        temperature = getattr(self.predictor.generation_config, "temperature", None)
        self.predictor_temperature = float(temperature or 1.0)
        self.runner = StepRunner(
            "talker",
            self._step,
            batches=buckets(slots),
            spans=buckets(capacity, smallest=min(256, capacity)),
            kernels=decode_kernels([self.talker.model], self.device),
        )
        self.predictor_runner = StepRunner(
            "code predictor",
            self._predict,
            batches=buckets(slots),
            kernels=decode_kernels([self.predictor.model], self.device),
        )

    @property
    def eos(self) -> int:
        return int(self.config.talker_config.codec_eos_token_id)

    def suppressed(self) -> frozenset[int]:
        """What ``generate`` never lets the talker say: the top 1024 ids but the end."""
        return frozenset(i for i in range(self.vocab - 1024, self.vocab) if i != self.eos)

    def project(self, token_ids: list[int]) -> Any:
        """Text embeddings as the talker reads them: [n, hidden]."""
        import torch

        ids = torch.tensor([token_ids], device=self.text_embed.weight.device)
        return self.talker.text_projection(self.text_embed(ids))[0].to(self.device, self.dtype)

    # -- prompt --------------------------------------------------------------------------

    def prefill(
        self,
        slot: int,
        *,
        tensors: dict[str, Any],
        prompt_embeds: Any,
        prompt_hidden: Any | None,
        answer: list[int],
        speaker_id: int,
    ) -> tuple[Any, Any, list[int]]:
        """The talker's prompt for one request into ``slot``.

        ``answer`` holds at least the first generated token. Returns (logits of the first
        code, last hidden state, the tokens the talker reads next, one per step: any the prompt
        holds after the assistant header beyond the first, then ``answer[1:]``).
        """
        import torch
        from transformers import DynamicCache

        input_ids = tensors["input_ids"].to(self.device)
        length = int(input_ids.shape[1])
        ids = input_ids[0].tolist()
        start = max(
            i for i in range(length - 1)
            if ids[i] == self.config.im_start_token_id
            and ids[i + 1] == self.config.assistant_token_id
        )  # fmt: skip
        stream = ids[start:] + answer
        head = stream[:3]
        embeds = prompt_embeds.to(self.device).unsqueeze(0)
        hidden = (
            prompt_hidden.to(self.device).unsqueeze(0)
            if prompt_hidden is not None
            else torch.zeros_like(embeds)
        )
        media = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in self.media_tokens:
            media |= input_ids == token
        # The user turns: every position whose turn (the token after the last <|im_start|>)
        # is the user's, in order.
        positions = torch.arange(length, device=self.device).unsqueeze(0)
        starts = torch.where(
            input_ids == self.config.im_start_token_id, positions, positions.new_full((), -1)
        )
        previous = torch.cummax(starts, dim=-1).values.clamp_min(0)
        roles = input_ids.gather(1, (previous + 1).clamp_max(length - 1))
        user = (roles == self.config.user_token_id)[0]
        user_embeds = self.model._get_talker_user_parts(0, length, media, hidden, embeds)[0, user]
        user_ids = input_ids[0, user]
        first = self.project([stream[3]])[0] if len(stream) > 3 else None
        if first is None:
            raise ValueError("the talker needs the first token of the answer")
        head_text = self.project(head)
        codec_ids = torch.tensor(
            [
                self.config.talker_config.codec_nothink_id,
                self.config.talker_config.codec_think_bos_id,
                self.config.talker_config.codec_think_eos_id,
                speaker_id,
                self.config.talker_config.codec_pad_id,
                self.config.talker_config.codec_bos_id,
            ],
            device=self.device,
        )
        text = torch.cat(
            [head_text, self.text_pad.expand(4, -1), self.tts_bos.view(1, -1), first.view(1, -1)]
        )
        codec = torch.cat(
            [torch.zeros(3, self.hidden_size, device=self.device, dtype=self.dtype),
             self.codec_embed(codec_ids)]
        )  # fmt: skip
        assistant = (text + codec).to(self.dtype)
        prompt = torch.cat([user_embeds.to(self.dtype), assistant]).unsqueeze(0)
        talker_ids = torch.cat(
            [user_ids, torch.full((assistant.shape[0],), self.config.tts_pad_token_id,
                                  device=self.device, dtype=user_ids.dtype)]
        ).unsqueeze(0)  # fmt: skip
        rope, delta = self._positions(talker_ids, tensors)
        cache = DynamicCache(config=self.config.talker_config.text_config)
        out = self.talker.model(
            inputs_embeds=prompt, position_ids=rope, cache=cache, use_cache=True
        )
        last = out.last_hidden_state[0, -1]
        logits = self.talker.codec_head(last).float()
        self.slots.hold(slot, cache, delta)
        return logits, last, stream[4:]

    def _positions(self, talker_ids: Any, tensors: dict[str, Any]) -> tuple[Any, int]:
        import torch

        audio_lengths = None
        if tensors.get("feature_attention_mask") is not None:
            audio_lengths = tensors["feature_attention_mask"].sum(dim=1)
        grids = (tensors.get("image_grid_thw"), tensors.get("video_grid_thw"))
        multimodal = audio_lengths is not None or any(
            g is not None and g.numel() > 0 for g in grids
        )
        length = int(talker_ids.shape[1])
        text = torch.arange(length, device=self.device).view(1, 1, -1)
        if not multimodal:
            return torch.cat([text, text.expand(3, 1, -1)]), 0
        # As generate() calls it: the talker is not told about audio interleaved in video.
        vision, deltas = self.talker.get_rope_index(
            talker_ids,
            grids[0],
            grids[1],
            torch.ones_like(talker_ids),
            False,
            audio_lengths,
            tensors.get("video_second_per_grid"),
        )
        return torch.cat([text, vision.to(self.device)]), int(deltas.reshape(-1)[0])

    def free(self, slot: int) -> None:
        self.slots.free(slot)

    # -- decode --------------------------------------------------------------------------

    def predict(self, rows: dict[int, tuple[int, Any]], noise: Any, sample: Any) -> tuple[Any, Any]:
        """The rest of each row's frame: rows maps slot -> (group-0 code, talker hidden).

        Returns (codes [batch, groups], summed code embeddings [batch, hidden])."""
        import torch

        batch, _ = self.predictor_runner.shape(max(rows) + 1)
        first = [0] * batch
        hidden = torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device)
        for slot, (code, state) in rows.items():
            first[slot] = code
            hidden[slot] = state
        out = self.predictor_runner(
            batch,
            0,
            first=torch.tensor(first, dtype=torch.long, device=self.device),
            hidden=hidden,
            noise=noise[:batch],
            sample=sample[:batch],
        )
        return out["codes"], out["embeds"]

    def _predict(
        self, *, span: int, first: Any, hidden: Any, noise: Any, sample: Any
    ) -> dict[str, Any]:
        import torch

        batch = first.shape[0]
        cache = self.predictor_cache
        model = self.predictor.model
        cache.kv_len = self.groups + 1
        write = torch.zeros(batch, dtype=torch.long, device=self.device)
        total = self.codec_embed(first)
        inputs = torch.stack([hidden, total], dim=1)
        codes = [first]
        for step in range(self.groups - 1):
            cache.write = write + (0 if step == 0 else step + 1)
            queries = inputs.shape[1]
            positions = cache.write.view(-1, 1) + torch.arange(queries, device=self.device)
            out = model(
                inputs_embeds=inputs,
                attention_mask=step_mask(cache.write, cache.kv_len, queries),
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            logits = self.predictor.lm_head[step](out.last_hidden_state[:, -1]).float()
            code = self._choose(logits, noise[:, step], sample)
            codes.append(code)
            embed = model.codec_embedding[step](code)
            total = total + embed
            inputs = embed.unsqueeze(1)
        return {"codes": torch.stack(codes, dim=1), "embeds": total}

    def _choose(self, logits: Any, noise: Any, sample: Any) -> Any:
        """Greedy, or top-k/top-p sampling with the row's noise (the code predictor's way)."""
        import torch

        greedy = logits.argmax(dim=-1)
        scores = logits / self.predictor_temperature
        k = min(PREDICTOR_TOP_K, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
        ordered, order = torch.sort(scores, descending=False)
        remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - PREDICTOR_TOP_P)
        remove[:, -1] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        drawn = (scores.softmax(dim=-1) / noise).argmax(dim=-1)
        return torch.where(sample, drawn, greedy)

    def step(self, embeds: dict[int, Any]) -> tuple[Any, Any]:
        """One talker step for the slots in ``embeds`` (slot -> its input: the frame's summed
        code embeddings plus the text it reads next); (logits [batch, vocab], last hidden
        [batch, hidden]), row ``i`` being slot ``i``."""
        import torch

        batch, span = self.runner.shape(max(embeds) + 1, self.slots.span(embeds))
        inputs = torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device)
        for slot, embed in embeds.items():
            inputs[slot] = embed
        write, rope = self.slots.positions(batch, self.device)
        out = self.runner(batch, span, embeds=inputs, write=write, rope=rope)
        self.slots.advance(embeds)
        return out["logits"], out["hidden"]

    def _step(self, *, span: int, embeds: Any, write: Any, rope: Any) -> dict[str, Any]:
        batch = embeds.shape[0]
        self.cache.write, self.cache.kv_len = write, span
        out = self.talker.model(
            inputs_embeds=embeds.view(batch, 1, -1),
            attention_mask=step_mask(write, span),
            position_ids=rope.view(1, batch, 1).expand(3, batch, 1),
            cache=self.cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        return {"logits": self.talker.codec_head(hidden).float(), "hidden": hidden}

    def example(self, batch: int, span: int = 0) -> dict[str, Any]:
        import torch

        zeros = torch.zeros(batch, dtype=torch.long, device=self.device)
        embeds = torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device)
        return {"embeds": embeds, "write": zeros.clone(), "rope": zeros.clone()}

    def predictor_example(self, batch: int, span: int = 0) -> dict[str, Any]:
        import torch

        return {
            "first": torch.zeros(batch, dtype=torch.long, device=self.device),
            "hidden": torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device),
            "noise": torch.ones(batch, self.groups - 1, self.predictor_vocab, device=self.device),
            "sample": torch.zeros(batch, dtype=torch.bool, device=self.device),
        }
