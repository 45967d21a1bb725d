"""Cascade attention: rows decode against ONE copy of their group's shared prefix KV cache.

With ``generation.prefix_cache`` alone, ``inference.prefill_shared_prefixes`` computes each distinct
prompt prefix (a database's chat header, system prompt and schema) once per batch, then copies its
keys and values to every row, so each decoding step still reads a full per-row copy of the long
prefix. With ``generation.share_prefix_kv`` the prefix cache stays one copy per group
(``SharedPrefixKV``), each row's cache holds only its own suffix (question, template tail and
generated tokens), and every attention layer combines two parts (cascade attention, as FlashInfer's
cascade kernels and "Hydragen", Juravsky et al. 2024, do it):

  1. the queries of all rows of a group against the group's prefix keys, as one batched matmul
     (``SharedPrefixKV.prefix_attention``: the prefix is read once per group, or once per chunk
     of a large group, not once per row);
  2. each row's queries against its own suffix keys (causal, padded as usual);

merged exactly by their log-sum-exp: with ``m = max(lse1, lse2)``,
``out = (exp(lse1 - m) o1 + exp(lse2 - m) o2) / (exp(lse1 - m) + exp(lse2 - m))``, which is softmax
attention over the concatenated keys (``merge``). Every prefix key precedes every suffix key, so the
prefix part needs no causal mask, only the group's left padding.

Positions stay those of the unshared left-padded prompt (``inference.greedy_pruned`` counts them
over the prefix mask and the suffix mask together), so the answers are those of prefix caching up
to float rounding.

The hook into transformers is its public ``AttentionInterface`` / ``AttentionMaskInterface``:
``shared_prefix_attention`` registers an attention function bound to one ``SharedPrefixKV`` (and a
mask function that always materializes the suffix mask), switches the model to it, and restores
both registries and the model's implementation in ``finally``. ``inference.greedy_pruned`` enters it
when given a ``prefix``:

    prefix = inference.prefill_shared_prefix_kv(model, batch)   # batch: a prefix_cache.SharedPrefixBatch
    tokens = inference.greedy_pruned(model, batch.rest_ids, batch.attention_mask, 48, stops, pad, prefix=prefix)

Every step is plain torch with fixed shapes between prunings, so ``StaticDecoder``'s CUDA graph
captures it too (``pad_to`` fixes the rows before the capture). The registries are process-wide;
each entry is named after its ``SharedPrefixKV``, so generations in several threads (on
different models) keep their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "ray_spider_shared_prefix"


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp.

    query (B, Hkv, L, D): the L query rows that read KV head h of batch entry b (grouped query heads
    folded into L, so keys are never repeated); key, value (B, Hkv, S, D); mask (bool, True = attend)
    broadcastable to (B, Hkv, L, S). Returns out (B, Hkv, L, D) in the query's dtype and lse
    (B, Hkv, L) in float32; a query row that attends to nothing gets out 0 and lse -inf, so that
    ``merge`` gives it the other part alone (and no NaN reaches a padded position's hidden state).
    """
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    scores = scores.masked_fill(~mask, -torch.inf)
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse.masked_fill(lse == -torch.inf, 0)[..., None])
    return torch.matmul(weights.to(value.dtype), value), lse


def merge(out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Attention over the keys of two parts from each part's attention: out (..., D), lse (...) each;
    the result (..., D) in out1's dtype. Rows where both lse are -inf get 0."""
    top = torch.maximum(lse1, lse2)
    top = top.masked_fill(top == -torch.inf, 0)
    weight1, weight2 = torch.exp(lse1 - top)[..., None], torch.exp(lse2 - top)[..., None]
    total = (weight1 + weight2).clamp_min(torch.finfo(torch.float32).tiny)
    return ((weight1 * out1.float() + weight2 * out2.float()) / total).to(out1.dtype)


class SharedPrefixKV:
    """One KV copy per prefix group and layer, and which group each row of the batch reads.

    Shapes: G groups, P the longest prefix, R rows. ``keys[layer]``, ``values[layer]``
    (G, Hkv, P, D); ``prefix_mask`` (G, P) bool; ``group_of_row`` (R,).

    For the prefix part, the rows of a group are packed into chunks of ``chunk_size`` rows (C) so
    that a chunk's queries read their prefix in one matmul: ``chunk_group`` (N,) is the group of
    each chunk and ``slot_of_row`` (R,) the row's place in the (N * C) packed rows. C is the mean
    rows per group, so groups of uneven size pack into fewer than 2R + G rows (padding every group
    to the largest would take G times the largest); a group of more than C rows spans several
    chunks, and its prefix is then gathered once per chunk (N <= 2G copies, still far fewer than R).
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], prefix_mask: torch.Tensor, group_of_row: torch.Tensor):
        self.keys, self.values = keys, values
        self.prefix_mask = prefix_mask.bool()
        self.width = prefix_mask.shape[1]
        self._place(group_of_row)

    @classmethod
    def of(cls, cache: DynamicCache, prefix_mask: torch.Tensor, group_of_row: torch.Tensor) -> SharedPrefixKV:
        """From the KV cache of the G prefixes (one left-padded forward over ``prefix_mask``)."""
        return cls([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], prefix_mask, group_of_row)

    def _place(self, group_of_row: torch.Tensor) -> None:
        """Chunks and slots for the rows ``group_of_row`` (computed on the CPU: once per batch and pruning)."""
        groups = group_of_row.tolist()
        counts = torch.bincount(group_of_row.cpu(), minlength=len(self.prefix_mask)).tolist()
        size = -(-len(groups) // sum(count > 0 for count in counts))
        chunk_group = [group for group, count in enumerate(counts) for _ in range(-(-count // size))]
        first_chunk = [chunk_group.index(group) if count else -1 for group, count in enumerate(counts)]
        seen = [0] * len(counts)
        slots = []
        for group in groups:
            slots.append(first_chunk[group] * size + seen[group])  # a group's chunks are consecutive
            seen[group] += 1
        self.group_of_row, self.chunk_size = group_of_row, size
        device = group_of_row.device
        self.slot_of_row = torch.tensor(slots, dtype=torch.long, device=device)
        # chunks that are the groups themselves, in order, read the prefixes without a gather
        self.chunk_group = None if chunk_group == list(range(len(self.prefix_mask))) else torch.tensor(chunk_group, device=device)
        self.chunk_mask = self.prefix_mask if self.chunk_group is None else self.prefix_mask[self.chunk_group]

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` (indices into the current rows) stay, in that order: as the per-row cache's
        ``batch_select_indices`` when ``greedy_pruned`` drops finished rows."""
        self._place(self.group_of_row[rows])

    def pad_to(self, rows: int) -> None:
        """Rows past the current ones read the first row's group (``StaticDecoder``'s padding rows:
        nobody reads their answers)."""
        padding = self.group_of_row[:1].expand(rows - len(self.group_of_row))
        self._place(torch.cat([self.group_of_row, padding]))

    def prefix_attention(self, layer: int, query: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``attend`` of query (R, Hkv, L, D) over each row's group prefix of ``layer``: out (R, Hkv, L, D), lse (R, Hkv, L)."""
        rows, kv_heads, length, dim = query.shape
        chunks, size = len(self.chunk_mask), self.chunk_size
        packed = query.new_zeros(chunks * size, kv_heads, length, dim)
        packed[self.slot_of_row] = query
        packed = packed.view(chunks, size, kv_heads, length, dim).transpose(1, 2).reshape(chunks, kv_heads, size * length, dim)
        keys, values = self.keys[layer], self.values[layer]
        if self.chunk_group is not None:
            keys, values = keys[self.chunk_group], values[self.chunk_group]
        out, lse = attend(packed, keys, values, self.chunk_mask[:, None, None, :], scaling)
        out = out.view(chunks, kv_heads, size, length, dim).transpose(1, 2).reshape(chunks * size, kv_heads, length, dim)
        lse = lse.view(chunks, kv_heads, size, length).transpose(1, 2).reshape(chunks * size, kv_heads, length)
        return out[self.slot_of_row], lse[self.slot_of_row]

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        """An ``AttentionInterface`` function: query (R, H, q, D), key and value (R, Hkv, S, D) from the
        per-row (suffix) cache, attention_mask (R, 1, q, S) bool. Returns ((R, q, H, D), None) as sdpa's."""
        rows, heads, steps, dim = query.shape
        kv_heads = key.shape[1]
        scaling = dim**-0.5 if scaling is None else scaling
        grouped = query.reshape(rows, kv_heads, heads // kv_heads * steps, dim)  # head h reads KV head h // (heads / kv_heads)
        suffix_mask = attention_mask.bool().repeat(1, 1, heads // kv_heads, 1)
        out_suffix, lse_suffix = attend(grouped, key, value, suffix_mask, scaling)
        out_prefix, lse_prefix = self.prefix_attention(module.layer_idx, grouped, scaling)
        out = merge(out_prefix, lse_prefix, out_suffix, lse_suffix)
        return out.view(rows, heads, steps, dim).transpose(1, 2).contiguous(), None


def _materialized_mask(*args, **kwargs):
    """sdpa's boolean mask, never skipped for ``is_causal``: the suffix attention always needs it."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


@contextlib.contextmanager
def shared_prefix_attention(model, prefix: SharedPrefixKV) -> Iterator[None]:
    """Inside: ``model`` (plain or PeftModel) attends with ``prefix.attention``. The registries and
    the model's attention implementation are as before afterwards, also when the body raises."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = base.config._attn_implementation
    name = f"{ATTENTION_NAME}_{id(prefix):x}"
    try:
        AttentionInterface.register(name, prefix.attention)
        AttentionMaskInterface.register(name, _materialized_mask)
        base.set_attn_implementation(name)
        if base.config._attn_implementation != name:  # a model that cannot switch only logs a warning
            raise ValueError(
                f"{type(base).__name__} cannot switch its attention implementation (transformers' AttentionInterface); "
                "generate it without generation.share_prefix_kv"
            )
        yield
    finally:
        base.set_attn_implementation(before)
        for registry in (AttentionInterface, AttentionMaskInterface):
            registry._global_mapping.pop(name, None)  # transformers has register() but no unregister
