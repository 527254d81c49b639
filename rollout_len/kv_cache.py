"""A preallocated per-slot KV cache that plugs into transformers' `Cache` API.

transformers' default `DynamicCache` grows by `torch.cat`, which copies the whole cache every
decode step; at batch 64 and long contexts that copy costs as much as the attention itself.
Here each layer owns one tensor `(slots, kv_heads, capacity, head_dim)`; a decode step writes one
position per slot in place and attention reads a view. Capacity grows geometrically (rare copies).

Running samples occupy slots 0..R-1 contiguously, so the view `keys[:R, :, :L]` needs no gather;
when a sample leaves, the engine moves the last slot into the hole (`move_slot`).

Before each forward the engine calls `plan_prefill` or `plan_decode`, which says where the new
keys/values go and how much of the cache attention reads.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["SlotKVCache", "SLOT_ATTENTION"]

SLOT_ATTENTION = "rollout_len_sdpa"


def _slot_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA over the cache view with grouped KV heads read in place.

    transformers' "sdpa" path repeats KV heads (a full copy of the cache view per layer and step)
    whenever a mask is given; `enable_gqa` lets SDPA broadcast them instead.
    """
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
    )  # (B, H, q, D)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(SLOT_ATTENTION, _slot_attention)


class _SlotLayer(CacheLayerMixin):
    def __init__(self, owner: SlotKVCache):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, heads, _, k_dim = key_states.shape
        shape = (self.owner.num_slots, heads, self.owner.capacity)
        self.keys = key_states.new_zeros(*shape, k_dim)
        self.values = value_states.new_zeros(*shape, value_states.shape[-1])
        self.is_initialized = True

    def grow(self, capacity: int) -> None:
        if not self.is_initialized:
            return
        new_keys = self.keys.new_zeros(*self.keys.shape[:2], capacity, self.keys.shape[-1])
        new_values = self.values.new_zeros(*self.values.shape[:2], capacity, self.values.shape[-1])
        old = self.keys.shape[2]
        new_keys[:, :, :old] = self.keys
        new_values[:, :, :old] = self.values
        self.keys, self.values = new_keys, new_values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.owner.plan
        lo, hi = plan.first_slot, plan.first_slot + key_states.shape[0]
        if plan.write_positions is None:  # prefill: the rows' tokens start at position 0
            q = key_states.shape[2]
            self.keys[lo:hi, :, :q] = key_states  # (B, H, q, D)
            self.values[lo:hi, :, :q] = value_states
        else:  # decode: one token per row, at that row's own position
            rows = torch.arange(lo, hi, device=key_states.device)
            self.keys[rows, :, plan.write_positions] = key_states[:, :, 0]  # (B, H, D)
            self.values[rows, :, plan.write_positions] = value_states[:, :, 0]
        return self.keys[lo:hi, :, : plan.read_length], self.values[lo:hi, :, : plan.read_length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.plan.read_length, 0

    def get_seq_length(self) -> int:
        return 0  # positions are per slot; the engine always passes position_ids and a 4D mask

    def get_max_cache_shape(self) -> int:  # transformers < 5.16 asks for this
        return self.owner.capacity

    get_max_length = get_max_cache_shape  # and >= 5.16 (the vLLM backend's environment) for this


class _Plan:
    __slots__ = ("first_slot", "write_positions", "read_length")

    def __init__(self) -> None:
        self.first_slot = 0  # rows of this forward occupy slots first_slot, first_slot+1, ...
        self.write_positions: torch.Tensor | None = None  # (B,) decode write positions; None = prefill
        self.read_length = 0  # attention reads cache positions [0, read_length)


class SlotKVCache(Cache):
    """KV storage for `num_slots` sequences of up to `max_length` tokens each."""

    def __init__(self, num_layers: int, num_slots: int, max_length: int, initial_capacity: int = 256):
        self.num_slots = num_slots
        self.max_length = max_length
        self.capacity = min(initial_capacity, max_length)
        self.plan = _Plan()
        super().__init__(layers=[_SlotLayer(self) for _ in range(num_layers)])

    @torch.inference_mode()  # the storage is made inside inference mode, so it is edited there too
    def ensure_capacity(self, length: int) -> None:
        """Make room for `length` positions per slot (doubling, capped at max_length)."""
        if length > self.max_length:
            raise ValueError(f"sequence of {length} tokens exceeds the cache's max_length {self.max_length}")
        if length <= self.capacity:
            return
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        self.capacity = min(capacity, self.max_length)
        for layer in self.layers:
            layer.grow(self.capacity)

    def plan_prefill(self, first_slot: int, length: int) -> None:
        self.ensure_capacity(length)
        self.plan.first_slot, self.plan.write_positions, self.plan.read_length = first_slot, None, length

    def plan_decode(self, first_slot: int, positions: torch.Tensor) -> None:
        read_length = int(positions.max()) + 1
        self.ensure_capacity(read_length)
        self.plan.first_slot, self.plan.write_positions, self.plan.read_length = first_slot, positions, read_length

    @torch.inference_mode()
    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst (compaction after a release)."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys[dst, :, :length] = layer.keys[src, :, :length]
                layer.values[dst, :, :length] = layer.values[src, :, :length]

    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers if layer.is_initialized)
