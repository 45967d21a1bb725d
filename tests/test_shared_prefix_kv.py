"""Shared prefix KV (cascade attention): one copy of each prefix's keys and values per batch, merged
with each row's own suffix by log-sum-exp, equals softmax attention over the concatenated keys; the config rule names both keys it needs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention

from ray_spider.config import ConfigError, load_run_config
from ray_spider.shared_prefix_kv import SharedPrefixKV, attend, merge

HEADS, KV_HEADS, DIM = 4, 2, 8  # grouped-query attention: 2 query heads per KV head


def _reference(query, keys, values, mask, scaling):
    """Plain softmax attention of query (R, H, q, D) over keys (R, Hkv, S, D) under mask (R, q, S)."""
    repeat = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(repeat, dim=1), values.repeat_interleave(repeat, dim=1)
    scores = (query @ keys.transpose(-1, -2)) * scaling
    return torch.softmax(scores.masked_fill(~mask[:, None], -torch.inf), dim=-1) @ values


def _left_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.stack([torch.arange(width) >= width - length for length in lengths])


def test_merge_of_two_parts_is_softmax_over_the_concatenated_keys():
    torch.manual_seed(0)
    query = torch.randn(3, KV_HEADS, 5, DIM)
    keys, values = torch.randn(3, KV_HEADS, 9, DIM), torch.randn(3, KV_HEADS, 9, DIM)
    keys[..., :4, :] *= 4  # the parts' log-sum-exps differ widely: a plain average of the two outputs is far off
    mask = _left_padded_mask([9, 6, 2], 9)[:, None, None, :]  # the last row's keys all lie in the second part
    expected, _ = attend(query, keys, values, mask, 0.3)
    first, second = attend(query, keys[..., :4, :], values[..., :4, :], mask[..., :4], 0.3), attend(query, keys[..., 4:, :], values[..., 4:, :], mask[..., 4:], 0.3)
    assert torch.isinf(first[1][2]).all() and (first[0][2] == 0).all()  # nothing attended: lse -inf, out 0, not NaN
    torch.testing.assert_close(merge(*first, *second), expected)
    naive = (first[0] + second[0]) / 2
    assert not torch.allclose(naive, expected, atol=1e-3)


def test_cascade_attention_equals_attention_over_each_rows_prefix_and_suffix():
    """Rows of 3 groups (one group's prefix shorter: left padding), grouped-query heads, suffixes
    left-padded and causal over 3 query steps; padded query steps see the prefix only."""
    torch.manual_seed(1)
    groups, prefix_width, rows, steps, suffix_width = 3, 6, 5, 3, 4
    prefix_mask = _left_padded_mask([6, 3, 5], prefix_width)
    group_of_row = torch.tensor([2, 0, 0, 1, 0])
    prefix_keys, prefix_values = torch.randn(groups, KV_HEADS, prefix_width, DIM) * 2, torch.randn(groups, KV_HEADS, prefix_width, DIM)
    query = torch.randn(rows, HEADS, steps, DIM)
    keys, values = torch.randn(rows, KV_HEADS, suffix_width, DIM), torch.randn(rows, KV_HEADS, suffix_width, DIM)
    suffix_lengths = [4, 2, 3, 1, 4]
    padding = _left_padded_mask(suffix_lengths, suffix_width)
    causal = torch.ones(steps, suffix_width, dtype=torch.bool).tril(suffix_width - steps)  # the queries are the last 3 columns
    suffix_mask = padding[:, None, :] & causal
    module = LlamaAttention(LlamaConfig(hidden_size=HEADS * DIM, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS), layer_idx=0)
    prefix = SharedPrefixKV([prefix_keys], [prefix_values], prefix_mask, group_of_row)
    assert prefix.chunk_group.tolist() == [0, 0, 1, 2]  # 2 rows a chunk: group 0's 3 rows take two
    out, _ = prefix.attention(module, query, keys, values, suffix_mask[:, None], scaling=DIM**-0.5)

    whole_keys = torch.cat([prefix_keys[group_of_row], keys], dim=2)
    whole_values = torch.cat([prefix_values[group_of_row], values], dim=2)
    whole_mask = torch.cat([prefix_mask[group_of_row][:, None, :].expand(-1, steps, -1), suffix_mask], dim=2)
    expected = _reference(query, whole_keys, whole_values, whole_mask, DIM**-0.5)
    torch.testing.assert_close(out, expected.transpose(1, 2))

    prefix.keep(torch.tensor([4, 0, 3]))  # rows leave (pruning): the others keep their groups
    assert prefix.chunk_group is None  # a row per group: the prefixes are read in place
    out, _ = prefix.attention(module, query[[4, 0, 3]], keys[[4, 0, 3]], values[[4, 0, 3]], suffix_mask[[4, 0, 3], None], scaling=DIM**-0.5)
    torch.testing.assert_close(out, expected[[4, 0, 3]].transpose(1, 2))


@pytest.mark.parametrize("override", ["generation.prefix_cache=false", "generation.engine=hf"])
def test_shared_prefix_kv_needs_the_prefix_cache_in_the_pruned_engine(override):
    with pytest.raises(ConfigError, match=r"generation.share_prefix_kv=true needs generation.prefix_cache=true and generation.engine=pruned"):
        load_run_config(None, ["generation.share_prefix_kv=true", override])
    assert load_run_config(None, ["generation.share_prefix_kv=true"]).generation.share_prefix_kv
