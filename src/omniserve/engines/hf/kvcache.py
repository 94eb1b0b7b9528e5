"""A static key/value cache with one slot per request, for decoding many requests in one step.

transformers' own caches keep one length for the whole batch. Requests in a serving batch have
different lengths, so each slot here keeps its own: a decode step writes every row's new key and
value at that row's position (``write``) and attends over the first ``kv_len`` positions, the
rows' own lengths masked in. Shapes never change between steps, which is what lets a step be
captured once as a CUDA graph and replayed.

The object speaks the one method transformers' attention layers call on a cache (``update``),
so the models' own modules run unchanged on top of it.
"""

from __future__ import annotations

from typing import Any


class SlotCache:
    """Per-layer key and value buffers ``[slots, kv_heads, capacity, head_dim]``."""

    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: Any,
        devices: list[Any],
    ) -> None:
        import torch

        self.slots, self.capacity = slots, capacity
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=devices[i]) for i in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=devices[i]) for i in range(layers)]
        # Set before each step: where each row writes (a [batch] long tensor) and how many
        # positions the step attends over.
        self.write: Any = None
        self.kv_len = capacity

    @property
    def bytes_per_slot(self) -> int:
        return sum(k[0].numel() * k.element_size() * 2 for k in self.keys)

    def update(
        self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        """Store the step's keys and values at each row's position; return the span to attend."""
        batch, heads, _, dim = key.shape
        index = self.write.view(batch, 1, 1, 1).expand(batch, heads, key.shape[2], dim)
        keys, values = self.keys[layer_idx][:batch], self.values[layer_idx][:batch]
        if key.shape[2] > 1:  # several positions per row (the code predictor's first step)
            import torch

            steps = torch.arange(key.shape[2], device=self.write.device).view(1, 1, -1, 1)
            index = index + steps
        keys.scatter_(2, index, key.to(keys.dtype))
        values.scatter_(2, index, value.to(values.dtype))
        return keys[:, :, : self.kv_len], values[:, :, : self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    def load(self, slot: int, cache: Any) -> int:
        """Copy a prefilled transformers cache (batch of one) into ``slot``; its length."""
        length = 0
        for i, layer in enumerate(cache.layers):
            length = int(layer.keys.shape[2])
            if length > self.capacity:
                raise ValueError(f"{length} positions do not fit a slot of {self.capacity}")
            self.keys[i][slot, :, :length].copy_(layer.keys[0])
            self.values[i][slot, :, :length].copy_(layer.values[0])
        return length


class DecoderSlots:
    """One decoder's slot cache, with each slot's length and rotary offset."""

    def __init__(self, layers: Any, config: Any, *, slots: int, capacity: int, dtype: Any):
        kv_heads, head_dim = kv_geometry(config)
        self.cache = SlotCache(
            layers=len(layers),
            slots=slots,
            kv_heads=kv_heads,
            head_dim=head_dim,
            capacity=capacity,
            dtype=dtype,
            devices=layer_devices(layers),
        )
        self.capacity = capacity
        self.lengths = [0] * slots  # positions each slot holds
        self.deltas = [0] * slots  # added to each slot's positions for rotary embeddings

    def hold(self, slot: int, cache: Any, delta: int) -> int:
        """Take a prefilled transformers cache into ``slot``; its length."""
        length = self.cache.load(slot, cache)
        self.lengths[slot], self.deltas[slot] = length, delta
        return length

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.deltas[slot] = 0

    def span(self, rows: Any) -> int:
        """Positions a step over ``rows`` attends to (their longest, with the new one)."""
        return int(max(self.lengths[s] for s in rows)) + 1

    def positions(self, batch: int, device: Any) -> tuple[Any, Any]:
        """Where each of the first ``batch`` slots writes this step, and its rotary position.
        A slot not stepped writes where its next real step will overwrite (or a free slot's
        first position), so rows can sit a step out without harm."""
        import torch

        write = [min(self.lengths[s], self.capacity - 1) for s in range(batch)]
        rope = [w + self.deltas[s] for s, w in enumerate(write)]
        return (
            torch.tensor(write, dtype=torch.long, device=device),
            torch.tensor(rope, dtype=torch.long, device=device),
        )

    def advance(self, rows: Any) -> None:
        for slot in rows:
            self.lengths[slot] += 1


def layer_devices(layers: Any) -> list[Any]:
    """The device of each decoder layer (a model spread over GPUs keeps each layer's cache
    where the layer is)."""
    return [next(layer.parameters()).device for layer in layers]


def kv_geometry(config: Any) -> tuple[int, int]:
    """(key/value heads, head dimension) of a decoder config."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return kv_heads, int(head_dim)


def cache_bytes(config: Any, *, slots: int, positions: int, element_size: int) -> int:
    """Bytes of a slot cache for a decoder with ``config``."""
    kv_heads, head_dim = kv_geometry(config)
    layers = int(config.num_hidden_layers)
    return slots * positions * layers * kv_heads * head_dim * 2 * element_size


def step_mask(write: Any, kv_len: int, queries: int = 1) -> Any:
    """Boolean attention mask ``[batch, 1, queries, kv_len]``: each row sees its own positions up
    to the one it writes (and, with several queries, causally within them)."""
    import torch

    positions = torch.arange(kv_len, device=write.device).view(1, 1, 1, kv_len)
    last = write.view(-1, 1, 1, 1)
    if queries == 1:
        return positions <= last
    offsets = torch.arange(queries, device=write.device).view(1, 1, queries, 1)
    return positions <= last + offsets
