"""Choosing the next token for every row of a batch, each row with its own settings.

The same logits processing ``generate()`` applies, row by row: repetition penalty over the ids a
row has seen (its prompt included, as ``generate`` counts them), suppressed and banned ids, the
end ids held back until ``min_new_tokens``, then (when sampling) temperature, top-k and top-p. A
greedy row takes the first highest logit, exactly as ``generate`` does, so a greedy request
decodes to the same tokens alone or in a batch. Sampling draws from each row's own generator
(seeded by the request's ``seed``), so a seeded request repeats whatever else is in the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens in one stage (thinker, talker, code predictor)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 1024
    min_new_tokens: int = 0
    eos: frozenset[int] = frozenset()
    banned: frozenset[int] = frozenset()  # suppressed and single-token bad words
    seed: int | None = None

    def greedy(self) -> bool:
        return not self.do_sample or self.temperature <= 0


@dataclass
class _Row:
    sampling: Sampling
    generated: int = 0
    forced: int | None = None  # the next token, decided by the engine (e.g. </think>)
    generator: Any = None
    seen: set[int] = field(default_factory=set)


class RowSampler:
    """Per-slot sampling state for one stage; ``pick`` chooses the next token of every row."""

    def __init__(self, slots: int, vocab: int, device: Any) -> None:
        import torch

        self.vocab, self.device = vocab, device
        self.rows: dict[int, _Row] = {}
        self.seen = torch.zeros(slots, vocab, dtype=torch.bool, device=device)
        self.banned = torch.zeros(slots, vocab, dtype=torch.bool, device=device)
        self.eos = torch.zeros(slots, vocab, dtype=torch.bool, device=device)
        self.penalty = torch.ones(slots, device=device)

    def assign(self, slot: int, sampling: Sampling, seen: list[int] | None = None) -> None:
        """Give ``slot`` to a request; ``seen`` are the ids the repetition penalty starts with."""
        import torch

        row = _Row(sampling=sampling)
        if not sampling.greedy():
            row.generator = torch.Generator(device=self.device)
            seed = sampling.seed if sampling.seed is not None else _fresh_seed()
            row.generator.manual_seed(seed)
        self.rows[slot] = row
        self.seen[slot].zero_()
        self.banned[slot].zero_()
        self.eos[slot].zero_()
        self.penalty[slot] = float(sampling.repetition_penalty)
        if seen and sampling.repetition_penalty != 1.0:
            self.mark_seen(slot, seen)
        if sampling.banned:
            self.banned[slot, self._ids(sampling.banned)] = True
        if sampling.eos:
            self.eos[slot, self._ids(sampling.eos)] = True

    def _ids(self, ids: frozenset[int]) -> Any:
        import torch

        return torch.tensor(sorted(i for i in ids if 0 <= i < self.vocab), dtype=torch.long)

    def release(self, slot: int) -> None:
        self.rows.pop(slot, None)

    def mark_seen(self, slot: int, ids: list[int]) -> None:
        import torch

        row = self.rows[slot]
        new = [i for i in ids if i not in row.seen and 0 <= i < self.vocab]
        if new:
            row.seen.update(new)
            self.seen[slot, torch.tensor(new, dtype=torch.long)] = True

    def force(self, slot: int, token: int | None) -> None:
        self.rows[slot].forced = token

    def generated(self, slot: int) -> int:
        return self.rows[slot].generated

    def sampling(self, slot: int) -> Sampling:
        return self.rows[slot].sampling

    def pick(self, logits: Any, slots: list[int]) -> list[int]:
        """Next token of each slot in ``slots``; row ``slot`` of ``logits`` is that slot's."""
        import torch

        index = torch.tensor(slots, device=logits.device)
        return self._pick(logits.index_select(0, index), slots)

    def pick_one(self, slot: int, logits: Any) -> int:
        """Next token of one slot from its own logits ``[vocab]``."""
        return self._pick(logits.view(1, -1), [slot])[0]

    def _pick(self, logits: Any, slots: list[int]) -> list[int]:
        import torch

        index = torch.tensor(slots, device=logits.device)
        scores = logits.float()
        rows = index.to(self.seen.device)
        penalty = self.penalty.index_select(0, rows).view(-1, 1)
        penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(self.seen.index_select(0, rows), penalized, scores)
        scores = scores.masked_fill(self.banned.index_select(0, rows), NEG_INF)
        holding = [self.rows[s].generated < self.rows[s].sampling.min_new_tokens for s in slots]
        if any(holding):
            hold = torch.tensor(holding, device=scores.device).view(-1, 1)
            scores = scores.masked_fill(self.eos.index_select(0, rows) & hold, NEG_INF)
        chosen = scores.argmax(dim=-1)
        sampled = [i for i, s in enumerate(slots) if not self.rows[s].sampling.greedy()]
        if sampled:
            chosen = self._sample(scores, [slots[i] for i in sampled], sampled, chosen)
        ids: list[int] = chosen.tolist()
        out = []
        for slot, token in zip(slots, ids, strict=True):
            row = self.rows[slot]
            if row.forced is not None:
                token, row.forced = row.forced, None
            row.generated += 1
            out.append(token)
            if row.sampling.repetition_penalty != 1.0 and token not in row.seen:
                self.mark_seen(slot, [token])
        return out

    def _sample(self, scores: Any, slots: list[int], positions: list[int], greedy: Any) -> Any:
        import torch

        index = torch.tensor(positions, device=scores.device)
        picked = scores.index_select(0, index)
        params = [self.rows[s].sampling for s in slots]
        temperature = torch.tensor([p.temperature for p in params], device=scores.device)
        picked = picked / temperature.view(-1, 1)
        ks = [min(p.top_k, self.vocab) if p.top_k > 0 else self.vocab for p in params]
        if min(ks) < self.vocab:
            top = torch.topk(picked, max(ks), dim=-1).values
            kth = top.gather(1, torch.tensor(ks, device=scores.device).view(-1, 1) - 1)
            picked = picked.masked_fill(picked < kth, NEG_INF)
        if any(p.top_p < 1.0 for p in params):
            top_p = torch.tensor([p.top_p for p in params], device=scores.device).view(-1, 1)
            ordered, order = torch.sort(picked, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - top_p)
            remove[:, -1] = False
            picked = picked.masked_fill(remove.scatter(1, order, remove), NEG_INF)
        probs = picked.softmax(dim=-1)
        noise = torch.empty_like(probs)
        for i, slot in enumerate(slots):
            noise[i].exponential_(generator=self.rows[slot].generator)
        drawn = (probs / noise).argmax(dim=-1)
        out = greedy.clone()
        out[index] = drawn
        return out

    def noise(self, slot: int, shape: tuple[int, ...]) -> Any:
        """Exponential noise from the slot's own generator (sampling done inside a graph)."""
        import torch

        out = torch.empty(shape, device=self.device)
        return out.exponential_(generator=self.rows[slot].generator)


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)
